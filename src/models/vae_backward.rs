//! The VAE encoder's backward pass, for latent priors in the 3D loop: a
//! rendered image is encoded by the frozen encoder, the distillation
//! gradient arrives on the posterior mean, and [`Vae::encode_backward`]
//! carries it back to the image pixels.
//!
//! Only input gradients: the VAE is frozen, so no weight gradient is formed.
//! [`Vae::encode_with_tape`] runs the encoder as [`Vae::encode`] does (the
//! same ops in the same order, so the same numbers: tests/vae_backward.rs
//! checks them bit for bit) while keeping what the backward needs in an
//! [`EncoderTape`]: each ResnetBlock's input and its first convolution's
//! output (the inputs of its two group norms), the mid attention's input and
//! its q, k, v, and the input of the final group norm. Convolutions and the
//! linear layers need no activations for their input gradients; the group
//! norms recompute their statistics from the kept inputs, and the attention
//! recomputes its probabilities.
//!
//! Gradients are kept in f32 whatever the model's storage type: an f16
//! model's activations and weights are read as f16 by the backward kernels,
//! which accumulate in f32 and store f32 gradients.
//!
//! Everything is recorded into the device's open encoder: no readback, no submit.
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::nn::{attention, nchw_to_tokens, tokens_to_nchw};
use crate::models::unet::ResnetBlock;
use crate::models::vae::{Level, Mid, MidAttention, Posterior, Vae};
use crate::ops::backward_misc::attention_input_grads;
use crate::ops::concat::{concat, narrow};
use crate::ops::elementwise::{self as ew};

/// The storage type of every gradient in the backward pass.
const GRAD: DType = DType::F32;

/// What one ResnetBlock's backward needs: the inputs of its two group norms.
struct ResnetTape {
    /// The block's input (norm1's).
    x: Tensor,
    /// conv1's output (norm2's input).
    h1: Tensor,
}

/// What the mid block's attention backward needs.
struct AttentionTape {
    /// The attention block's input (its group norm's), [B, C, h, w].
    x: Tensor,
    /// The projections, [B, h·w, C].
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

/// One down level: its resnets, and the spatial size its downsampler read
/// before the right/bottom padding (None without a downsampler).
struct LevelTape {
    resnets: Vec<ResnetTape>,
    downsample_input_hw: Option<(usize, usize)>,
}

/// The activations of one encoder forward pass that [`Vae::encode_backward`]
/// needs (see the module docs). Made by [`Vae::encode_with_tape`]; holds
/// device tensors of the model's storage type, about two activations per
/// ResnetBlock.
pub struct EncoderTape {
    input_shape: Vec<usize>,
    /// The posterior mean's shape, [B, latent, h, w].
    mean_shape: Vec<usize>,
    levels: Vec<LevelTape>,
    mid_resnets: Vec<ResnetTape>,
    mid_attention: Option<AttentionTape>,
    /// The input of the final group norm + SiLU.
    norm_out_input: Tensor,
}

impl EncoderTape {
    /// The shape of the encoded image, [B, C, H, W].
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    /// The shape of the posterior mean, [B, latent, h, w]: that of the
    /// gradient [`Vae::encode_backward`] takes.
    pub fn mean_shape(&self) -> &[usize] {
        &self.mean_shape
    }
}

/// F.pad(x, (0, 1, 0, 1)): the zero column and row before a downsampler, as
/// vae.rs's `pad_right_bottom` (which the tape's forward must match exactly).
fn pad_right_bottom(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let col = gpu.zeros(&[b, c, h, 1], x.dtype())?;
    let x = concat(gpu, &[x, &col], 3)?;
    let row = gpu.zeros(&[b, c, 1, w + 1], x.dtype())?;
    concat(gpu, &[&x, &row], 2)
}

/// ResnetBlock::forward (without a time embedding), keeping its tape.
fn resnet_forward(gpu: &Gpu, r: &ResnetBlock, x: &Tensor) -> Result<(Tensor, ResnetTape)> {
    let h1 = r.conv1.forward(gpu, &r.norm1.forward(gpu, x, true)?)?;
    let h = r.conv2.forward(gpu, &r.norm2.forward(gpu, &h1, true)?)?;
    let skip = match &r.shortcut {
        Some(c) => c.forward(gpu, x)?,
        None => x.clone(),
    };
    Ok((ew::add(gpu, &skip, &h)?, ResnetTape { x: x.clone(), h1 }))
}

/// MidAttention::forward, keeping its tape.
fn attention_forward(gpu: &Gpu, a: &MidAttention, x: &Tensor) -> Result<(Tensor, AttentionTape)> {
    let (h, w) = (x.dim(2), x.dim(3));
    let t = nchw_to_tokens(gpu, &a.norm.forward(gpu, x, false)?)?;
    let (q, k, v) = (a.q.forward(gpu, &t)?, a.k.forward(gpu, &t)?, a.v.forward(gpu, &t)?);
    let o = a.out.forward(gpu, &attention(gpu, &q, &k, &v, 1, false)?)?;
    let y = ew::add(gpu, &tokens_to_nchw(gpu, &o, h, w)?, x)?;
    Ok((y, AttentionTape { x: x.clone(), q, k, v }))
}

/// out = skip(x) + conv2(gn2(h1)), h1 = conv1(gn1(x)): ∂/∂x from ∂/∂out.
fn resnet_backward(gpu: &Gpu, r: &ResnetBlock, t: &ResnetTape, d: &Tensor) -> Result<Tensor> {
    let hw = (t.x.dim(2), t.x.dim(3));
    let d_norm2 = r.conv2.input_grad(gpu, d, hw)?;
    let d_h1 = r.norm2.input_grad(gpu, &t.h1, &d_norm2, true)?;
    let d_norm1 = r.conv1.input_grad(gpu, &d_h1, hw)?;
    let d_x = r.norm1.input_grad(gpu, &t.x, &d_norm1, true)?;
    let d_skip = match &r.shortcut {
        Some(c) => c.input_grad(gpu, d, hw)?,
        None => d.clone(),
    };
    ew::add(gpu, &d_x, &d_skip)
}

/// out = x + tokens_to_nchw(out_proj(attention(q, k, v))), q/k/v = proj(gn(x)):
/// ∂/∂x from ∂/∂out.
fn attention_backward(gpu: &Gpu, a: &MidAttention, t: &AttentionTape, d: &Tensor) -> Result<Tensor> {
    let (h, w) = (t.x.dim(2), t.x.dim(3));
    let d_attn = a.out.input_grad(gpu, &nchw_to_tokens(gpu, d)?)?;
    let g = attention_input_grads(gpu, &t.q, &t.k, &t.v, &d_attn, 1)?;
    let d_tokens = ew::add(gpu, &ew::add(gpu, &a.q.input_grad(gpu, &g.dq)?, &a.k.input_grad(gpu, &g.dk)?)?, &a.v.input_grad(gpu, &g.dv)?)?;
    let d_norm = tokens_to_nchw(gpu, &d_tokens, h, w)?;
    ew::add(gpu, &a.norm.input_grad(gpu, &t.x, &d_norm, false)?, d)
}

impl Vae {
    /// [`Vae::encode`] that also returns the [`EncoderTape`] its backward
    /// needs. The posterior is the same, bit for bit.
    pub fn encode_with_tape(&self, gpu: &Gpu, x: &Tensor) -> Result<(Posterior, EncoderTape)> {
        if x.rank() != 4 || x.dim(1) != self.config.in_channels {
            return Err(Error::shape("vae encode", format!("sample must be [B, {}, H, W], got {:?}", self.config.in_channels, x.shape())));
        }
        let mut h = self.enc_conv_in.forward(gpu, x)?;
        let mut levels = Vec::with_capacity(self.enc_down.len());
        for Level { resnets, resample } in &self.enc_down {
            let mut level = LevelTape { resnets: Vec::with_capacity(resnets.len()), downsample_input_hw: None };
            for r in resnets {
                let (y, tape) = resnet_forward(gpu, r, &h)?;
                level.resnets.push(tape);
                h = y;
            }
            if let Some(d) = resample {
                level.downsample_input_hw = Some((h.dim(2), h.dim(3)));
                h = d.forward(gpu, &pad_right_bottom(gpu, &h)?)?;
            }
            levels.push(level);
        }
        let Mid { resnets: mid_resnets, attention: mid_attention } = &self.enc_mid;
        let (y, mid0) = resnet_forward(gpu, &mid_resnets[0], &h)?;
        h = y;
        let mut attention_tape = None;
        if let Some(a) = mid_attention {
            let (y, tape) = attention_forward(gpu, a, &h)?;
            attention_tape = Some(tape);
            h = y;
        }
        let (y, mid1) = resnet_forward(gpu, &mid_resnets[1], &h)?;
        let norm_out_input = y;
        h = self.enc_conv_out.forward(gpu, &self.enc_norm_out.forward(gpu, &norm_out_input, true)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(gpu, &h)?;
        }
        let lat = self.config.latent_channels;
        let mean = narrow(gpu, &h, 1, 0, lat)?;
        let logvar = ew::clamp(gpu, &narrow(gpu, &h, 1, lat, lat)?, -30.0, 20.0)?;
        let tape = EncoderTape {
            input_shape: x.shape().to_vec(),
            mean_shape: mean.shape().to_vec(),
            levels,
            mid_resnets: vec![mid0, mid1],
            mid_attention: attention_tape,
            norm_out_input,
        };
        Ok((Posterior { mean, logvar }, tape))
    }

    /// The gradient with respect to the encoded image of a loss whose
    /// gradient with respect to the posterior mean is `d_mean`
    /// `[B, latent, h, w]` (any float dtype); the log-variance gets no
    /// gradient. Returns d_sample `[B, 3, H, W]`, always f32 (see the module
    /// docs). `tape` must come from [`Vae::encode_with_tape`] on this model.
    pub fn encode_backward(&self, gpu: &Gpu, tape: &EncoderTape, d_mean: &Tensor) -> Result<Tensor> {
        const OP: &str = "vae encode backward";
        if d_mean.shape() != tape.mean_shape.as_slice() {
            return Err(Error::shape(
                OP,
                format!("the mean's gradient must have the mean's shape {:?} (from the tape), got {:?}", tape.mean_shape, d_mean.shape()),
            ));
        }
        if d_mean.dtype() == DType::U32 {
            return Err(Error::shape(OP, format!("the mean's gradient must be f32 or f16, got {d_mean:?}")));
        }
        if tape.levels.len() != self.enc_down.len() || tape.mid_attention.is_some() != self.enc_mid.attention.is_some() {
            return Err(Error::Invalid(format!("{OP}: the tape was recorded by a VAE of another configuration")));
        }
        let (b, lat, lh, lw) = (d_mean.dim(0), d_mean.dim(1), d_mean.dim(2), d_mean.dim(3));
        // The moments [mean, logvar] get (d_mean, 0).
        let d_mean = gpu.to_dtype(d_mean, GRAD)?;
        let mut d = concat(gpu, &[&d_mean, &gpu.zeros(&[b, lat, lh, lw], GRAD)?], 1)?;
        if let Some(q) = &self.quant_conv {
            d = q.input_grad(gpu, &d, (lh, lw))?;
        }
        d = self.enc_conv_out.input_grad(gpu, &d, (lh, lw))?;
        d = self.enc_norm_out.input_grad(gpu, &tape.norm_out_input, &d, true)?;

        let mid = &self.enc_mid;
        d = resnet_backward(gpu, &mid.resnets[1], &tape.mid_resnets[1], &d)?;
        if let (Some(a), Some(t)) = (&mid.attention, &tape.mid_attention) {
            d = attention_backward(gpu, a, t, &d)?;
        }
        d = resnet_backward(gpu, &mid.resnets[0], &tape.mid_resnets[0], &d)?;

        for (level, lt) in self.enc_down.iter().zip(&tape.levels).rev() {
            if let (Some(down), Some((h, w))) = (&level.resample, lt.downsample_input_hw) {
                // The stride-2 conv read the padded (h + 1) × (w + 1) input;
                // the padding's gradient is dropped.
                let padded = down.input_grad(gpu, &d, (h + 1, w + 1))?;
                d = narrow(gpu, &narrow(gpu, &padded, 2, 0, h)?, 3, 0, w)?;
            }
            for (r, rt) in level.resnets.iter().zip(&lt.resnets).rev() {
                d = resnet_backward(gpu, r, rt, &d)?;
            }
        }
        self.enc_conv_in.input_grad(gpu, &d, (tape.input_shape[2], tape.input_shape[3]))
    }
}
