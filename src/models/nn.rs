//! Layers shared by the networks (Linear, Conv2d, GroupNorm, LayerNorm,
//! attention), each loaded from its diffusers parameter prefix with the shape
//! the config implies, and run with the ops; with the input gradients the
//! backward passes of frozen networks need (`input_grad`: ∂L/∂x from ∂L/∂y,
//! in f32 whatever the layer's storage type, the weights left alone).
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::weights::Weights;
use crate::ops::attention::{self as attn_op, AttentionOpts};
use crate::ops::conv2d::{Conv2dOpts, PackedWeights, conv2d_frozen};
use crate::ops::conv2d_backward::{Conv2dBackwardOpts, conv2d_input_grad};
use crate::ops::norm::{group_norm, layer_norm};
use crate::ops::norm_backward::group_norm_input_grad;
use crate::ops::{concat, matmul, softmax};

/// Loads tensors of one component onto the device in one storage type.
pub struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub weights: &'a Weights,
    pub dtype: DType,
}

impl Loader<'_> {
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.load(self.gpu, name, shape, self.dtype)
    }
    pub fn has(&self, name: &str) -> bool {
        self.weights.contains(name)
    }
}

/// torch.nn.Linear: y = x·Wᵀ + b, W [out, in].
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(l: &Loader, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: l.tensor(&format!("{prefix}.weight"), &[out, inp])?,
            bias: if bias { Some(l.tensor(&format!("{prefix}.bias"), &[out])?) } else { None },
        })
    }
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        matmul::linear(gpu, x, &self.weight, self.bias.as_ref())
    }
    /// forward(x) + residual: a skip connection, fused where the kernel allows.
    pub fn forward_add(&self, gpu: &Gpu, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        matmul::linear_add(gpu, x, &self.weight, self.bias.as_ref(), residual)
    }
    pub fn out_features(&self) -> usize {
        self.weight.dim(0)
    }
    /// ∂L/∂x = dy [.., out] · W [out, in], in f32.
    pub fn input_grad(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        let (rows, out) = (dy.numel() / self.out_features(), self.out_features());
        let opts = matmul::MatmulOpts { out_dtype: Some(DType::F32), ..Default::default() };
        let dx = matmul::matmul(gpu, &dy.reshape(&[rows, out])?, &self.weight, None, &opts)?;
        let mut shape = dy.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.weight.dim(1);
        }
        dx.reshape(&shape)
    }
}

/// torch.nn.Conv2d with square kernel, symmetric padding. Its weights are
/// frozen: the kernels that read them repacked keep the packed copy.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    packed: PackedWeights,
}

impl Conv2d {
    pub fn load(l: &Loader, prefix: &str, inp: usize, out: usize, k: usize, stride: usize, padding: usize) -> Result<Conv2d> {
        Ok(Conv2d {
            weight: l.tensor(&format!("{prefix}.weight"), &[out, inp, k, k])?,
            bias: Some(l.tensor(&format!("{prefix}.bias"), &[out])?),
            stride,
            padding,
            packed: PackedWeights::default(),
        })
    }
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        conv2d_frozen(gpu, x, &self.weight, self.bias.as_ref(), None, self.opts(), &self.packed)
    }
    /// forward(x) + residual: a skip connection, fused where the kernel allows.
    pub fn forward_add(&self, gpu: &Gpu, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        conv2d_frozen(gpu, x, &self.weight, self.bias.as_ref(), Some(residual), self.opts(), &self.packed)
    }
    /// ∂L/∂x for an input of spatial size `input_hw` (several sizes give one
    /// output size under a stride), in dy's dtype.
    pub fn input_grad(&self, gpu: &Gpu, dy: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        let opts = Conv2dBackwardOpts { stride: self.stride, padding: self.padding, variant: None };
        conv2d_input_grad(gpu, dy, &self.weight, input_hw, opts)
    }
    fn opts(&self) -> Conv2dOpts {
        Conv2dOpts { stride: self.stride, padding: self.padding, variant: None, padding_w: None }
    }
}

/// torch.nn.GroupNorm (affine), optionally followed by SiLU.
pub struct GroupNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    pub fn load(l: &Loader, prefix: &str, channels: usize, groups: usize, eps: f64) -> Result<GroupNorm> {
        Ok(GroupNorm {
            gamma: l.tensor(&format!("{prefix}.weight"), &[channels])?,
            beta: l.tensor(&format!("{prefix}.bias"), &[channels])?,
            groups,
            eps: eps as f32,
        })
    }
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, silu: bool) -> Result<Tensor> {
        group_norm(gpu, x, self.groups, Some(&self.gamma), Some(&self.beta), self.eps, silu)
    }
    /// ∂L/∂x of `forward(x, silu)` from its output gradient, the statistics
    /// recomputed from x; in dz's dtype.
    pub fn input_grad(&self, gpu: &Gpu, x: &Tensor, dz: &Tensor, silu: bool) -> Result<Tensor> {
        group_norm_input_grad(gpu, x, dz, self.groups, Some(&self.gamma), Some(&self.beta), self.eps, silu)
    }
}

/// torch.nn.LayerNorm over the last dimension.
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(l: &Loader, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: l.tensor(&format!("{prefix}.weight"), &[dim])?,
            beta: l.tensor(&format!("{prefix}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        layer_norm(gpu, x, Some(&self.gamma), Some(&self.beta), self.eps)
    }
    /// ∂L/∂x from the output gradient: a layer norm over the last dimension
    /// of [.., C] is a one-group norm of each row seen as [rows, C, 1], so
    /// the group norm's backward kernel serves; in dz's dtype.
    pub fn input_grad(&self, gpu: &Gpu, x: &Tensor, dz: &Tensor) -> Result<Tensor> {
        let c = self.gamma.dim(0);
        let rows = x.numel() / c.max(1);
        let as_groups = |t: &Tensor| t.reshape(&[rows, c, 1]);
        group_norm_input_grad(gpu, &as_groups(x)?, &as_groups(dz)?, 1, Some(&self.gamma), Some(&self.beta), self.eps, false)?.reshape(dz.shape())
    }
}

/// Multi-head attention on [B, L, H·D] tensors: the fused kernel where the
/// head dim has one, else scores by matmul, softmax and a second matmul
/// (any head dim, e.g. the VAE's single 512-wide head).
pub fn attention(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    attention_within(gpu, q, k, v, heads, causal, gpu.max_binding_bytes())
}

/// [`attention`] whose unfused path keeps each block of scores
/// [B·H, rows, Lk] within `max_bytes`: the queries go in blocks of rows
/// (exact, since softmax is per row). The scores grow with the square of
/// the sequence, i.e. with the fourth power of the image side: the VAE's
/// 512-wide head at 768² (9 216 tokens) needs 324 MiB in one piece.
pub fn attention_within(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool, max_bytes: u64) -> Result<Tensor> {
    let (b, lq, hd) = (q.dim(0), q.dim(1), q.dim(2));
    let lk = k.dim(1);
    let d = hd / heads;
    if attn_op::SUPPORTED_HEAD_DIMS.contains(&d) {
        return attn_op::attention(gpu, q, k, v, &AttentionOpts { causal, ..AttentionOpts::new(heads) });
    }
    if causal {
        return Err(crate::Error::Invalid(format!("causal attention needs a compiled head dim; {d} is not one")));
    }
    // [B, L, H, D] -> [B, H, L, D]
    let split = |t: &Tensor, l: usize| -> Result<Tensor> {
        concat::permute(gpu, &t.reshape(&[b, l, heads, d])?, &[0, 2, 1, 3])?.reshape(&[b * heads, l, d])
    };
    let (kh, vh) = (split(k, lk)?, split(v, lk)?);
    let rows_bytes = (b * heads * lk * q.dtype().size()).max(1) as u64;
    let rows = ((max_bytes / rows_bytes) as usize).clamp(1, lq.max(1));
    let block = |qb: &Tensor| -> Result<Tensor> {
        let rows = qb.dim(1);
        let scores = matmul::matmul(gpu, &split(qb, rows)?, &kh, None, &matmul::MatmulOpts { trans_b: true, ..Default::default() })?;
        let p = softmax::softmax(gpu, &scores, 1.0 / (d as f32).sqrt())?;
        let o = matmul::matmul(gpu, &p, &vh, None, &Default::default())?;
        concat::permute(gpu, &o.reshape(&[b, heads, rows, d])?, &[0, 2, 1, 3])?.reshape(&[b, rows, hd])
    };
    if rows >= lq {
        return block(q);
    }
    let parts = (0..lq).step_by(rows).map(|start| block(&concat::narrow(gpu, q, 1, start, rows.min(lq - start))?)).collect::<Result<Vec<_>>>()?;
    concat::concat(gpu, &parts.iter().collect::<Vec<_>>(), 1)
}

/// [B, C, H, W] -> [B, H·W, C]
pub fn nchw_to_tokens(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    concat::permute(gpu, x, &[0, 2, 3, 1])?.reshape(&[b, h * w, c])
}

/// [B, H·W, C] -> [B, C, H, W]
pub fn tokens_to_nchw(gpu: &Gpu, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c) = (x.dim(0), x.dim(2));
    concat::permute(gpu, &x.reshape(&[b, h, w, c])?, &[0, 3, 1, 2])
}
