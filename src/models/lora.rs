//! LoRA adapters on a UNet's attention projections: each adapted projection
//! W [out, in] gets a low-rank delta, y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ with A [r, in],
//! B [out, r] and s = alpha / r, the layout of peft's `LoraConfig` on
//! diffusers' `to_q`, `to_k`, `to_v`, `to_out.0` (threestudio's
//! ProlificDreamer trains rank 4 on all of them). The adapter is an input of
//! the forward ([`crate::models::unet::Extras`]), so one UNet serves both the
//! frozen prior and its adapted copy, as peft switches adapters on and off.
//!
//! A and B are f32 whatever the UNet's storage type: they are trained.
//! Their gradients come from the UNet's backward (`unet_backward.rs`).
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::unet::UNet;
use crate::ops::elementwise as ew;
use crate::ops::matmul::{MatmulOpts, matmul};

/// The projections an adapter may cover, by their diffusers suffix.
pub const PROJECTIONS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// One adapted projection's factors.
pub struct LoraPair {
    /// [r, in], f32.
    pub a: Tensor,
    /// [out, r], f32.
    pub b: Tensor,
    /// alpha / r.
    pub scale: f32,
}

/// x [.., in] as rows [n, in].
fn rows(x: &Tensor) -> Result<Tensor> {
    let last = x.shape().last().copied().unwrap_or(1);
    x.reshape(&[x.numel() / last.max(1), last])
}

fn f32_out(trans_a: bool, trans_b: bool) -> MatmulOpts {
    MatmulOpts { trans_a, trans_b, out_dtype: Some(DType::F32), ..Default::default() }
}

impl LoraPair {
    /// y + s·(x·Aᵀ)·Bᵀ, in y's dtype and shape (x [.., in], y [.., out]).
    pub fn add_delta(&self, gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let xa = ew::scale(gpu, &matmul(gpu, &rows(x)?, &self.a, None, &f32_out(false, true))?, self.scale)?;
        let opts = MatmulOpts { trans_b: true, out_dtype: Some(y.dtype()), ..Default::default() };
        let delta = matmul(gpu, &xa, &self.b, None, &opts)?;
        ew::add(gpu, y, &delta.reshape(y.shape())?)
    }

    /// The backward of the delta for input x and output gradient g
    /// [.., out] (f32): adds ∂L/∂A and ∂L/∂B into `grads` and returns the
    /// delta's share of ∂L/∂x (f32, x's shape).
    pub fn backward(&self, gpu: &Gpu, x: &Tensor, g: &Tensor, grads: &mut LoraGrad) -> Result<Tensor> {
        let (x2, g2) = (rows(x)?, rows(g)?);
        let xa = matmul(gpu, &x2, &self.a, None, &f32_out(false, true))?; // [n, r]
        let gb = matmul(gpu, &g2, &self.b, None, &f32_out(false, false))?; // [n, r]
        let d_b = ew::scale(gpu, &matmul(gpu, &g2, &xa, None, &f32_out(true, false))?, self.scale)?; // [out, r]
        let d_a = ew::scale(gpu, &matmul(gpu, &gb, &x2, None, &f32_out(true, false))?, self.scale)?; // [r, in]
        grads.add(gpu, d_a, d_b)?;
        let dx = ew::scale(gpu, &matmul(gpu, &gb, &self.a, None, &f32_out(false, false))?, self.scale)?;
        dx.reshape(x.shape())
    }
}

/// The gradients of one pair, summed over the calls of a backward pass.
#[derive(Default)]
pub struct LoraGrad {
    pub a: Option<Tensor>,
    pub b: Option<Tensor>,
}

impl LoraGrad {
    fn add(&mut self, gpu: &Gpu, d_a: Tensor, d_b: Tensor) -> Result<()> {
        self.a = Some(match self.a.take() {
            Some(t) => ew::add(gpu, &t, &d_a)?,
            None => d_a,
        });
        self.b = Some(match self.b.take() {
            Some(t) => ew::add(gpu, &t, &d_b)?,
            None => d_b,
        });
        Ok(())
    }
}

/// The adapter's camera condition (threestudio's ProlificDreamer: a
/// `TimestepEmbedding(16, temb)` as the LoRA UNet's class embedding): an MLP
/// on each view's 16 camera numbers whose output is added to the time
/// embedding, `linear_2(silu(linear_1(camera)))`. Trained with the factors.
pub struct CameraEmbedding {
    /// [temb, 16], [temb], [temb, temb], [temb]; f32.
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

/// The gradients of a [`CameraEmbedding`]'s four tensors.
pub struct CameraEmbeddingGrad {
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

/// The names of a camera embedding's tensors, as diffusers names a class embedding's.
pub const CAMERA_TENSORS: [&str; 4] = ["linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"];

impl CameraEmbedding {
    /// The embedding of cameras [B, 16] (f32): [B, temb], f32.
    pub fn forward(&self, gpu: &Gpu, camera: &Tensor) -> Result<Tensor> {
        let h = crate::ops::matmul::linear(gpu, camera, &self.w1, Some(&self.b1))?;
        crate::ops::matmul::linear(gpu, &ew::silu(gpu, &h)?, &self.w2, Some(&self.b2))
    }

    /// The gradients of its tensors for cameras [B, 16] and the output
    /// gradient `d` [B, temb] (f32); the inner activation is recomputed.
    pub fn backward(&self, gpu: &Gpu, camera: &Tensor, d: &Tensor) -> Result<CameraEmbeddingGrad> {
        let h = crate::ops::matmul::linear(gpu, camera, &self.w1, Some(&self.b1))?;
        let a = ew::silu(gpu, &h)?;
        let ones = gpu.upload(&vec![1.0f32; d.dim(0)], &[1, d.dim(0)], DType::F32)?;
        let col_sum = |t: &Tensor| -> Result<Tensor> { matmul(gpu, &ones, t, None, &f32_out(false, false))?.reshape(&[t.dim(1)]) };
        let w2 = matmul(gpu, d, &a, None, &f32_out(true, false))?;
        let b2 = col_sum(d)?;
        let d_a = matmul(gpu, d, &self.w2, None, &f32_out(false, false))?;
        let d_h = crate::ops::backward_misc::silu_input_grad(gpu, &h, &d_a)?;
        let w1 = matmul(gpu, &d_h, camera, None, &f32_out(true, false))?;
        let b1 = col_sum(&d_h)?;
        Ok(CameraEmbeddingGrad { w1, b1, w2, b2 })
    }
}

/// A LoRA adapter: its pairs by projection name
/// (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), and
/// optionally a camera condition.
pub struct Lora {
    pub rank: usize,
    pub alpha: f32,
    pairs: BTreeMap<String, LoraPair>,
    pub camera: Option<CameraEmbedding>,
}

impl Lora {
    /// The pair adapting projection `name`, if the adapter covers it.
    pub fn pair(&self, name: &str) -> Option<&LoraPair> {
        self.pairs.get(name)
    }
    pub fn pairs(&self) -> impl Iterator<Item = (&String, &LoraPair)> {
        self.pairs.iter()
    }

    /// A fresh adapter of rank `rank` on every attention projection of
    /// `unet`, as peft's `init_lora_weights="gaussian"` starts one (A ~
    /// N(0, 1/r²), B = 0: the adapted UNet starts as the UNet), with a camera
    /// condition initialised as torch's Linear (U(±1/√fan_in)) when
    /// `camera`; drawn from `seed`.
    pub fn init(gpu: &Gpu, unet: &UNet, rank: usize, alpha: f32, camera: bool, seed: u64) -> Result<Lora> {
        use crate::scene::camera::{normal, purpose, rng_for};
        use rand::RngExt;
        let mut rng = rng_for(seed, 0, purpose::VSD);
        let mut factors = BTreeMap::new();
        for (name, (inp, out)) in unet.attention_projections() {
            let a: Vec<f32> = (0..rank * inp).map(|_| normal(&mut rng) / rank as f32).collect();
            factors.insert(name, (a, vec![0.0; out * rank]));
        }
        let lora = Lora::from_factors(gpu, unet, rank, alpha, &factors)?;
        if !camera {
            return Ok(lora);
        }
        let temb = unet.time_embedding_width();
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let tensors: BTreeMap<String, Vec<f32>> = [
            ("linear_1.weight", uniform(temb * 16, 16)),
            ("linear_1.bias", uniform(temb, 16)),
            ("linear_2.weight", uniform(temb * temb, temb)),
            ("linear_2.bias", uniform(temb, temb)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        lora.with_camera(gpu, temb, &tensors)
    }

    /// Every trained tensor, by a name for the optimiser and the
    /// checkpoint: `lora.<projection>.A` / `.B`, `lora.camera_embedding.*`.
    pub fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut v: Vec<(String, &Tensor)> = Vec::new();
        for (name, p) in &self.pairs {
            v.push((format!("lora.{name}.A"), &p.a));
            v.push((format!("lora.{name}.B"), &p.b));
        }
        if let Some(c) = &self.camera {
            for (name, t) in CAMERA_TENSORS.iter().zip([&c.w1, &c.b1, &c.w2, &c.b2]) {
                v.push((format!("lora.camera_embedding.{name}"), t));
            }
        }
        v
    }

    /// Adds a camera condition from host tensors named as [`CAMERA_TENSORS`],
    /// for a UNet whose time embedding is `temb` wide.
    pub fn with_camera(mut self, gpu: &Gpu, temb: usize, tensors: &BTreeMap<String, Vec<f32>>) -> Result<Lora> {
        let shapes = [vec![temb, 16], vec![temb], vec![temb, temb], vec![temb]];
        let mut up = Vec::new();
        for (name, shape) in CAMERA_TENSORS.iter().zip(&shapes) {
            let data = tensors.get(*name).ok_or_else(|| Error::Invalid(format!("LoRA camera embedding: no {name}")))?;
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::Invalid(format!("LoRA camera embedding {name}: expected {shape:?} ({} numbers), got {}", shape.iter().product::<usize>(), data.len())));
            }
            up.push(gpu.upload(data, shape, DType::F32)?);
        }
        let mut it = up.into_iter();
        let mut next = || it.next().expect("four tensors");
        self.camera = Some(CameraEmbedding { w1: next(), b1: next(), w2: next(), b2: next() });
        Ok(self)
    }

    /// An adapter from host factors `name → (A [r, in], B [out, r])`,
    /// checked against the UNet's projections: every name must be one, with
    /// its widths.
    pub fn from_factors(gpu: &Gpu, unet: &UNet, rank: usize, alpha: f32, factors: &BTreeMap<String, (Vec<f32>, Vec<f32>)>) -> Result<Lora> {
        if rank == 0 {
            return Err(Error::Invalid("a LoRA adapter needs a rank of at least 1".into()));
        }
        let shapes: BTreeMap<String, (usize, usize)> = unet.attention_projections().into_iter().collect();
        let mut pairs = BTreeMap::new();
        for (name, (a, b)) in factors {
            let &(inp, out) = shapes.get(name).ok_or_else(|| {
                Error::Invalid(format!("LoRA: {name:?} is not an attention projection of this UNet (e.g. {:?})", shapes.keys().next()))
            })?;
            if a.len() != rank * inp || b.len() != out * rank {
                return Err(Error::Invalid(format!(
                    "LoRA {name}: A must be [{rank}, {inp}] and B [{out}, {rank}] ({} and {} numbers), got {} and {}",
                    rank * inp,
                    out * rank,
                    a.len(),
                    b.len()
                )));
            }
            let pair = LoraPair { a: gpu.upload(a, &[rank, inp], DType::F32)?, b: gpu.upload(b, &[out, rank], DType::F32)?, scale: alpha / rank as f32 };
            pairs.insert(name.clone(), pair);
        }
        Ok(Lora { rank, alpha, pairs, camera: None })
    }
}
