//! The UNet's backward pass: ∂L/∂sample, and the gradients of a LoRA
//! adapter's factors, for a loss L whose gradient with respect to the UNet's
//! output is given. VSD trains a LoRA copy of the UNet and needs this pass;
//! `fsd3d forward --module unet` with `sample_out_grad` exposes it so that it
//! can be checked against torch autograd.
//!
//! Memory plan: the forward keeps only each block's input (the [`Tape`], about
//! twice what the skip connections keep anyway); the backward recomputes
//! what lies inside a block from its input, one block at a time, and frees
//! it before the next. A transformer block's attention probabilities are
//! recomputed too (`attention_input_grads`).
//!
//! The UNet's own weights are frozen: only an adapter's factors get
//! gradients. Gradients are f32 whatever the model's storage type; f16
//! activations and weights are read as f16 by the backward kernels, which
//! accumulate in f32. Everything is recorded into the device's open encoder:
//! no readback, no submit.
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::lora::{CameraEmbeddingGrad, Lora, LoraGrad};
use crate::models::nn::{attention, nchw_to_tokens, tokens_to_nchw};
use crate::models::unet::{CrossAttention, Proj, ResnetBlock, SpatialTransformer, Tape, TransformerBlock, UNet, Extras};
use crate::ops::backward_misc::{attention_input_grads, geglu_input_grad, silu_input_grad};
use crate::ops::concat::narrow;
use crate::ops::elementwise::{self as ew};
use crate::ops::pool::{Pool, PoolOpts, global_avg_pool, pool2d};

/// The tape's inputs, taken from the end (the backward runs the blocks in
/// reverse order).
struct Inputs(Vec<Tensor>);

impl Inputs {
    fn pop(&mut self) -> Result<Tensor> {
        self.0.pop().ok_or_else(|| Error::Invalid("unet backward: the tape ran out of block inputs (it does not match this UNet)".into()))
    }
}

/// ∂L/∂x of `ResnetBlock::forward(x, temb)` from ∂L/∂out: out = skip(x) +
/// conv2(gn2(h1)), h1 = conv1(gn1(x)) + proj(temb), h1 recomputed.
fn resnet_backward(gpu: &Gpu, r: &ResnetBlock, x: &Tensor, temb_silu: Option<&Tensor>, d: &Tensor, ad: &mut Adapter) -> Result<Tensor> {
    let hw = (x.dim(2), x.dim(3));
    let mut h1 = r.conv1.forward(gpu, &r.norm1.forward(gpu, x, true)?)?;
    if let (Some(proj), Some(t)) = (&r.time_emb_proj, temb_silu) {
        let t = proj.forward(gpu, t)?;
        h1 = ew::add(gpu, &h1, &t.reshape(&[t.dim(0), t.dim(1), 1, 1])?)?;
    }
    let d_h1 = r.norm2.input_grad(gpu, &h1, &r.conv2.input_grad(gpu, d, hw)?, true)?;
    drop(h1);
    ad.add_temb_grad(gpu, r, &d_h1)?;
    let d_x = r.norm1.input_grad(gpu, x, &r.conv1.input_grad(gpu, &d_h1, hw)?, true)?;
    let d_skip = match &r.shortcut {
        Some(c) => c.input_grad(gpu, d, hw)?,
        None => d.clone(),
    };
    ew::add(gpu, &d_x, &d_skip)
}

/// The pass's LoRA adapter, and the gradients of its factors.
struct Adapter<'a> {
    lora: Option<&'a Lora>,
    grads: BTreeMap<String, LoraGrad>,
    /// With a camera condition: ∂L/∂silu(temb), summed over the resnets.
    d_temb_silu: Option<Tensor>,
    /// Whether the time embedding's gradient is wanted (a camera condition is in use).
    wants_temb: bool,
}

impl Adapter<'_> {
    /// Adds a resnet's share of ∂L/∂silu(temb): its projection's input
    /// gradient for ∂L/∂(proj output) = Σ over the map of ∂L/∂h1.
    fn add_temb_grad(&mut self, gpu: &Gpu, r: &ResnetBlock, d_h1: &Tensor) -> Result<()> {
        let Some(proj) = &r.time_emb_proj else { return Ok(()) };
        if !self.wants_temb {
            return Ok(());
        }
        let (b, c, h, w) = (d_h1.dim(0), d_h1.dim(1), d_h1.dim(2), d_h1.dim(3));
        let d_proj = ew::scale(gpu, &global_avg_pool(gpu, d_h1)?, (h * w) as f32)?.reshape(&[b, c])?;
        let d = proj.input_grad(gpu, &d_proj)?;
        self.d_temb_silu = Some(plus(gpu, d, self.d_temb_silu.take())?);
        Ok(())
    }

    /// The backward of projection `name`'s LoRA delta, if adapted, for input
    /// x and output gradient g: its factors' gradients are summed, and its
    /// share of ∂L/∂x returned.
    fn backward(&mut self, gpu: &Gpu, name: String, x: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        match self.lora.and_then(|l| l.pair(&name)) {
            Some(pair) => Ok(Some(pair.backward(gpu, x, g, self.grads.entry(name).or_default())?)),
            None => Ok(None),
        }
    }
}

/// a + b, where b may be absent.
fn plus(gpu: &Gpu, a: Tensor, b: Option<Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => ew::add(gpu, &a, &b),
        None => Ok(a),
    }
}

/// ∂L/∂x of `x + attention(x, ctx)` (a transformer block's attention with
/// its residual) from ∂L/∂out, where x is `[B, L, C]` grouped as the
/// forward grouped it. The keys and values of cross-attention come from the
/// text, which gets no gradient; self-attention's do, through x. The
/// adapter's factors get theirs either way.
fn attention_backward(gpu: &Gpu, a: &CrossAttention, x: &Tensor, ctx: Option<&Tensor>, d: &Tensor, ad: &mut Adapter) -> Result<Tensor> {
    let kv_source = ctx.unwrap_or(x);
    let lora = ad.lora;
    let (q, k, v) = (a.project(gpu, "to_q", x, lora)?, a.project(gpu, "to_k", kv_source, lora)?, a.project(gpu, "to_v", kv_source, lora)?);
    let mut d_o = a.out.input_grad(gpu, d)?;
    if lora.is_some_and(|l| l.pair(&a.projection("to_out.0")).is_some()) {
        let o = attention(gpu, &q, &k, &v, a.heads, false)?;
        d_o = plus(gpu, d_o, ad.backward(gpu, a.projection("to_out.0"), &o, d)?)?;
    }
    let g = attention_input_grads(gpu, &q, &k, &v, &d_o, a.heads)?;
    drop((q, k, v));
    let mut d_x = plus(gpu, a.q.input_grad(gpu, &g.dq)?, ad.backward(gpu, a.projection("to_q"), x, &g.dq)?)?;
    let d_k = ad.backward(gpu, a.projection("to_k"), kv_source, &g.dk)?;
    let d_v = ad.backward(gpu, a.projection("to_v"), kv_source, &g.dv)?;
    if ctx.is_none() {
        d_x = ew::add(gpu, &d_x, &plus(gpu, a.k.input_grad(gpu, &g.dk)?, d_k)?)?;
        d_x = ew::add(gpu, &d_x, &plus(gpu, a.v.input_grad(gpu, &g.dv)?, d_v)?)?;
    }
    Ok(d_x)
}

/// ∂L/∂x of `TransformerBlock::forward(x, ctx, frames)` from ∂L/∂out, its
/// intermediate sums x1, x2 and the feed-forward's input recomputed.
fn block_backward(gpu: &Gpu, b: &TransformerBlock, x: &Tensor, ctx: &Tensor, frames: usize, d: &Tensor, ad: &mut Adapter) -> Result<Tensor> {
    let (bf, l, c) = (x.dim(0), x.dim(1), x.dim(2));
    let lora = ad.lora;
    // Self-attention spans the views of an object: [B/f, f·L, C].
    let grouped = [bf / frames, frames * l, c];
    let n1 = b.norm1.forward(gpu, x)?.reshape(&grouped)?;
    let x1 = b.attn1.forward_add(gpu, &n1, &n1, &x.reshape(&grouped)?, lora)?.reshape(&[bf, l, c])?;
    let n2 = b.norm2.forward(gpu, &x1)?;
    let x2 = b.attn2.forward_add(gpu, &n2, ctx, &x1, lora)?;
    drop(n2);
    let f = b.ff_in.forward(gpu, &b.norm3.forward(gpu, &x2)?)?;

    // out = x2 + ff_out(geglu(ff_in(norm3(x2)))).
    let d_f = geglu_input_grad(gpu, &f, &b.ff_out.input_grad(gpu, d)?)?;
    drop(f);
    let d_x2 = ew::add(gpu, d, &b.norm3.input_grad(gpu, &x2, &b.ff_in.input_grad(gpu, &d_f)?)?)?;
    // x2 = x1 + attn2(norm2(x1), ctx).
    let n2 = b.norm2.forward(gpu, &x1)?;
    let d_n2 = attention_backward(gpu, &b.attn2, &n2, Some(ctx), &d_x2, ad)?;
    drop((n2, x2));
    let d_x1 = ew::add(gpu, &d_x2, &b.norm2.input_grad(gpu, &x1, &d_n2)?)?;
    // x1 = x + attn1(norm1(x)), grouped by object.
    let d_n1 = attention_backward(gpu, &b.attn1, &n1, None, &d_x1.reshape(&grouped)?, ad)?.reshape(&[bf, l, c])?;
    ew::add(gpu, &d_x1, &b.norm1.input_grad(gpu, x, &d_n1)?)
}

/// ∂L/∂x of `SpatialTransformer::forward(x, ctx, frames)` from ∂L/∂out:
/// out = x + proj_out(blocks(proj_in(gn(x)))), the blocks' inputs recomputed.
fn transformer_backward(gpu: &Gpu, s: &SpatialTransformer, x: &Tensor, ctx: &Tensor, frames: usize, d: &Tensor, ad: &mut Adapter) -> Result<Tensor> {
    let (h, w) = (x.dim(2), x.dim(3));
    let n = s.norm.forward(gpu, x, false)?;
    let mut t = match &s.proj_in {
        Proj::Conv(c) => nchw_to_tokens(gpu, &c.forward(gpu, &n)?)?,
        Proj::Linear(li) => li.forward(gpu, &nchw_to_tokens(gpu, &n)?)?,
    };
    drop(n);
    let mut block_inputs = Vec::with_capacity(s.blocks.len());
    for b in &s.blocks {
        block_inputs.push(t.clone());
        t = b.forward(gpu, &t, ctx, frames, ad.lora)?;
    }
    drop(t);
    let mut d_t = match &s.proj_out {
        Proj::Conv(c) => nchw_to_tokens(gpu, &c.input_grad(gpu, d, (h, w))?)?,
        Proj::Linear(li) => li.input_grad(gpu, &nchw_to_tokens(gpu, d)?)?,
    };
    for (b, input) in s.blocks.iter().zip(block_inputs).rev() {
        d_t = block_backward(gpu, b, &input, ctx, frames, &d_t, ad)?;
    }
    let d_n = match &s.proj_in {
        Proj::Conv(c) => c.input_grad(gpu, &tokens_to_nchw(gpu, &d_t, h, w)?, (h, w))?,
        Proj::Linear(li) => tokens_to_nchw(gpu, &li.input_grad(gpu, &d_t)?, h, w)?,
    };
    ew::add(gpu, d, &s.norm.input_grad(gpu, x, &d_n, false)?)
}

/// ∂L/∂x of a nearest-neighbour ×2 upsampling: each input pixel's four copies
/// summed (4 × their mean).
fn upsample2x_backward(gpu: &Gpu, d: &Tensor) -> Result<Tensor> {
    let mean = pool2d(gpu, d, PoolOpts { pool: Pool::Avg { count_include_pad: false }, kernel: 2, stride: 2, padding: 0 })?;
    ew::scale(gpu, &mean, 4.0)
}

/// What [`UNet::forward_and_grads`] gives.
pub struct UNetGrads {
    /// The forward's output.
    pub output: Tensor,
    /// ∂L/∂sample, f32.
    pub sample: Tensor,
    /// ∂L/∂A and ∂L/∂B of each adapted projection.
    pub lora: BTreeMap<String, LoraGrad>,
    /// The gradients of the adapter's camera condition, when it had cameras.
    pub camera: Option<CameraEmbeddingGrad>,
}

impl UNet {
    /// The output for `sample` (as [`UNet::forward_views`]) and, for L = Σ
    /// output ⊙ `d_out` (`d_out` of the output's shape), ∂L/∂sample (f32)
    /// and the gradients of the adapter's factors (f32, by projection name;
    /// empty without an adapter).
    pub fn forward_and_grads(&self, gpu: &Gpu, sample: &Tensor, timesteps: &Tensor, ctx: &Tensor, extras: &Extras, d_out: &Tensor) -> Result<UNetGrads> {
        self.forward_and_grads_by(gpu, sample, timesteps, ctx, extras, |_| Ok(d_out.clone()))
    }

    /// [`UNet::forward_and_grads`] where ∂L/∂output is a function of the
    /// output (a loss on it, e.g. the LoRA's denoising loss).
    pub fn forward_and_grads_by(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        ctx: &Tensor,
        extras: &Extras,
        d_out_of: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<UNetGrads> {
        // The up path's nearest ×2 has a backward; the resize the forward
        // uses where a side halved unevenly has none yet. Refuse before the
        // forward rather than after it.
        let factor = 1 << (self.down.len() - 1);
        if sample.rank() == 4 && (sample.dim(2) % factor != 0 || sample.dim(3) % factor != 0) {
            return Err(Error::Invalid(format!(
                "unet backward: a sample whose sides halve unevenly ({}x{}) is not supported yet; use sides divisible by {factor}",
                sample.dim(2),
                sample.dim(3)
            )));
        }
        let mut tape = Tape::default();
        let out = self.run(gpu, sample, timesteps, ctx, extras, Some(&mut tape))?;
        let d_out = d_out_of(&out)?;
        if d_out.shape() != out.shape() {
            return Err(Error::shape("unet backward", format!("the output gradient {:?} must have the output's shape {:?}", d_out.shape(), out.shape())));
        }
        let d_out = gpu.to_dtype(&d_out, DType::F32)?;
        let camera_condition = extras.lora.and_then(|l| l.camera.as_ref()).filter(|_| extras.camera.is_some());
        let mut ad = Adapter { lora: extras.lora, grads: BTreeMap::new(), d_temb_silu: None, wants_temb: camera_condition.is_some() };
        let (temb, camera) = (tape.temb.clone(), tape.camera.clone());
        let sample_grad = self.backward(gpu, tape, &d_out, &mut ad)?;
        // The camera condition was added to the time embedding before its SiLU.
        let camera_grad = match (camera_condition, ad.d_temb_silu.take(), temb, camera) {
            (Some(ce), Some(d_silu), Some(temb), Some(camera)) => {
                let d_temb = silu_input_grad(gpu, &temb, &d_silu)?;
                Some(ce.backward(gpu, &gpu.to_dtype(&camera, DType::F32)?, &d_temb)?)
            }
            _ => None,
        };
        Ok(UNetGrads { output: out, sample: sample_grad, lora: ad.grads, camera: camera_grad })
    }

    /// ∂L/∂sample from ∂L/∂output and the forward's tape, the blocks in
    /// reverse order; the skip connections' gradients wait on a stack until
    /// the down path reaches the block that made them.
    fn backward(&self, gpu: &Gpu, tape: Tape, d_out: &Tensor, ad: &mut Adapter) -> Result<Tensor> {
        let temb = tape.temb_silu.as_ref();
        let ctx = tape.ctx.as_ref().ok_or_else(|| Error::Invalid("unet backward: the tape has no context".into()))?;
        let frames = tape.frames;
        let mut inputs = Inputs(tape.inputs);
        let mut skip_widths = tape.skip_widths;

        let x = inputs.pop()?;
        let mut d = self.conv_out.input_grad(gpu, d_out, (x.dim(2), x.dim(3)))?;
        d = self.norm_out.input_grad(gpu, &x, &d, true)?;

        // Gradients of the skips, in the order the down path pushed them.
        let mut d_skips: Vec<Tensor> = Vec::new();
        for lv in self.up.iter().rev() {
            if let Some(u) = &lv.resample {
                // Its input is no longer needed: the sides are checked to
                // double exactly (forward_and_grads_by).
                inputs.pop()?;
                d = u.input_grad(gpu, &d, (d.dim(2), d.dim(3)))?;
                d = upsample2x_backward(gpu, &d)?;
            }
            for (j, r) in lv.resnets.iter().enumerate().rev() {
                if let Some(a) = lv.attentions.get(j) {
                    d = transformer_backward(gpu, a, &inputs.pop()?, ctx, frames, &d, ad)?;
                }
                let joined = inputs.pop()?;
                let d_joined = resnet_backward(gpu, r, &joined, temb, &d, ad)?;
                // The joined input is [h, skip] along the channels.
                let skip_width = skip_widths.pop().ok_or_else(|| Error::Invalid("unet backward: the tape has too few skips".into()))?;
                let h_width = joined.dim(1) - skip_width;
                d = narrow(gpu, &d_joined, 1, 0, h_width)?;
                d_skips.push(narrow(gpu, &d_joined, 1, h_width, skip_width)?);
            }
        }
        d = resnet_backward(gpu, &self.mid_resnets[1], &inputs.pop()?, temb, &d, ad)?;
        d = transformer_backward(gpu, &self.mid_attention, &inputs.pop()?, ctx, frames, &d, ad)?;
        d = resnet_backward(gpu, &self.mid_resnets[0], &inputs.pop()?, temb, &d, ad)?;
        let mut skip = |d: &Tensor| -> Result<Tensor> {
            let ds = d_skips.pop().ok_or_else(|| Error::Invalid("unet backward: skip gradients ran out".into()))?;
            ew::add(gpu, d, &ds)
        };
        for lv in self.down.iter().rev() {
            if let Some(down) = &lv.resample {
                d = skip(&d)?;
                let x = inputs.pop()?;
                d = down.input_grad(gpu, &d, (x.dim(2), x.dim(3)))?;
            }
            for (j, r) in lv.resnets.iter().enumerate().rev() {
                d = skip(&d)?;
                if let Some(a) = lv.attentions.get(j) {
                    d = transformer_backward(gpu, a, &inputs.pop()?, ctx, frames, &d, ad)?;
                }
                d = resnet_backward(gpu, r, &inputs.pop()?, temb, &d, ad)?;
            }
        }
        d = skip(&d)?;
        let sample = inputs.pop()?;
        self.conv_in.input_grad(gpu, &d, (sample.dim(2), sample.dim(3)))
    }
}
