//! diffusers' UNet2DConditionModel (SD 1.x / 2.x and smaller configs):
//! timestep embedding, down blocks (ResNet + optional cross-attention
//! transformer + downsample), the cross-attention mid block, up blocks with
//! skip connections, output head. Names mirror the diffusers safetensors keys.
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::config::UNetConfig;
use crate::models::lora::Lora;
use crate::models::nn::{Conv2d, GroupNorm, LayerNorm, Linear, Loader, attention, nchw_to_tokens, tokens_to_nchw};
use crate::models::weights::{Variant, Weights};
use crate::ops::concat::concat;
use crate::ops::elementwise::{self as ew};
use crate::ops::embedding::timestep_embedding;
use crate::ops::resample::{resize_nearest, upsample_nearest2x};

/// ResnetBlock2D: GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-conv, + shortcut.
pub struct ResnetBlock {
    pub(crate) norm1: GroupNorm,
    pub(crate) conv1: Conv2d,
    pub(crate) time_emb_proj: Option<Linear>,
    pub(crate) norm2: GroupNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// `temb` = width of the time embedding (None in the VAE).
    pub fn load(l: &Loader, p: &str, cin: usize, cout: usize, temb: Option<usize>, groups: usize, eps: f64) -> Result<ResnetBlock> {
        Ok(ResnetBlock {
            norm1: GroupNorm::load(l, &format!("{p}.norm1"), cin, groups, eps)?,
            conv1: Conv2d::load(l, &format!("{p}.conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: match temb {
                Some(t) => Some(Linear::load(l, &format!("{p}.time_emb_proj"), t, cout, true)?),
                None => None,
            },
            norm2: GroupNorm::load(l, &format!("{p}.norm2"), cout, groups, eps)?,
            conv2: Conv2d::load(l, &format!("{p}.conv2"), cout, cout, 3, 1, 1)?,
            shortcut: if cin != cout { Some(Conv2d::load(l, &format!("{p}.conv_shortcut"), cin, cout, 1, 1, 0)?) } else { None },
        })
    }

    /// `temb_silu` is SiLU(time embedding) [B, T], shared by every block.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, temb_silu: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(gpu, &self.norm1.forward(gpu, x, true)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_silu) {
            let t = proj.forward(gpu, t)?; // [B, C]
            let t = t.reshape(&[t.dim(0), t.dim(1), 1, 1])?;
            h = ew::add(gpu, &h, &t)?;
        }
        let skip = match &self.shortcut {
            Some(c) => c.forward(gpu, x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(gpu, &self.norm2.forward(gpu, &h, true)?, &skip)
    }
}

/// diffusers `Attention` as used in BasicTransformerBlock (no q/k/v bias).
pub(crate) struct CrossAttention {
    /// Its diffusers prefix (`down_blocks.0.attentions.0.transformer_blocks.0.attn1`),
    /// which names its projections for a LoRA adapter.
    pub(crate) name: String,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) out: Linear,
    pub(crate) heads: usize,
}

impl CrossAttention {
    fn load(l: &Loader, p: &str, dim: usize, ctx: usize, heads: usize) -> Result<CrossAttention> {
        Ok(CrossAttention {
            name: p.to_string(),
            q: Linear::load(l, &format!("{p}.to_q"), dim, dim, false)?,
            k: Linear::load(l, &format!("{p}.to_k"), ctx, dim, false)?,
            v: Linear::load(l, &format!("{p}.to_v"), ctx, dim, false)?,
            out: Linear::load(l, &format!("{p}.to_out.0"), dim, dim, true)?,
            heads,
        })
    }
    /// residual + attention(x, ctx), the add in the output projection's
    /// epilogue; with `lora`, its deltas on the projections it names.
    pub(crate) fn forward_add(&self, gpu: &Gpu, x: &Tensor, ctx: &Tensor, residual: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let (q, k, v) = (self.project(gpu, "to_q", x, lora)?, self.project(gpu, "to_k", ctx, lora)?, self.project(gpu, "to_v", ctx, lora)?);
        let o = attention(gpu, &q, &k, &v, self.heads, false)?;
        let y = self.out.forward_add(gpu, &o, residual)?;
        match lora.and_then(|l| l.pair(&self.projection("to_out.0"))) {
            Some(pair) => pair.add_delta(gpu, &o, &y),
            None => Ok(y),
        }
    }

    /// The full name of one of its projections (`to_q`, `to_k`, `to_v`, `to_out.0`).
    pub(crate) fn projection(&self, which: &str) -> String {
        format!("{}.{which}", self.name)
    }

    /// The projection `which` (to_q, to_k or to_v) of x, with its LoRA delta.
    pub(crate) fn project(&self, gpu: &Gpu, which: &str, x: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let linear = match which {
            "to_q" => &self.q,
            "to_k" => &self.k,
            _ => &self.v,
        };
        let y = linear.forward(gpu, x)?;
        match lora.and_then(|l| l.pair(&self.projection(which))) {
            Some(pair) => pair.add_delta(gpu, x, &y),
            None => Ok(y),
        }
    }
}

/// BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward.
pub(crate) struct TransformerBlock {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn1: CrossAttention,
    pub(crate) norm2: LayerNorm,
    pub(crate) attn2: CrossAttention,
    pub(crate) norm3: LayerNorm,
    pub(crate) ff_in: Linear,
    pub(crate) ff_out: Linear,
}

impl TransformerBlock {
    /// `frames` > 1: the batch holds `frames` views of each object, view-inner
    /// (index = object·frames + view), and self-attention spans all views of
    /// an object (MVDream's `(b f) l c → b (f l) c`, a reshape in this layout);
    /// cross-attention and the feed-forward stay per view.
    pub(crate) fn forward(&self, gpu: &Gpu, x: &Tensor, ctx: &Tensor, frames: usize, lora: Option<&Lora>) -> Result<Tensor> {
        let n = self.norm1.forward(gpu, x)?;
        let x = if frames > 1 {
            let (bf, l, c) = (x.dim(0), x.dim(1), x.dim(2));
            let grouped = [bf / frames, frames * l, c];
            let n = n.reshape(&grouped)?;
            self.attn1.forward_add(gpu, &n, &n, &x.reshape(&grouped)?, lora)?.reshape(&[bf, l, c])?
        } else {
            self.attn1.forward_add(gpu, &n, &n, x, lora)?
        };
        let n = self.norm2.forward(gpu, &x)?;
        let x = self.attn2.forward_add(gpu, &n, ctx, &x, lora)?;
        let n = self.norm3.forward(gpu, &x)?;
        self.ff_out.forward_add(gpu, &ew::geglu(gpu, &self.ff_in.forward(gpu, &n)?)?, &x)
    }
}

/// Transformer2DModel: GroupNorm, proj_in (1×1 conv or linear), blocks, proj_out, + input.
pub(crate) struct SpatialTransformer {
    pub(crate) norm: GroupNorm,
    pub(crate) proj_in: Proj,
    pub(crate) blocks: Vec<TransformerBlock>,
    pub(crate) proj_out: Proj,
}

pub(crate) enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl SpatialTransformer {
    #[allow(clippy::too_many_arguments)]
    fn load(l: &Loader, p: &str, ch: usize, heads: usize, ctx: usize, layers: usize, groups: usize, linear: bool) -> Result<SpatialTransformer> {
        let proj = |name: &str| -> Result<Proj> {
            let name = format!("{p}.{name}");
            Ok(if linear { Proj::Linear(Linear::load(l, &name, ch, ch, true)?) } else { Proj::Conv(Conv2d::load(l, &name, ch, ch, 1, 1, 0)?) })
        };
        let blocks = (0..layers)
            .map(|i| {
                let b = format!("{p}.transformer_blocks.{i}");
                Ok(TransformerBlock {
                    norm1: LayerNorm::load(l, &format!("{b}.norm1"), ch, 1e-5)?,
                    attn1: CrossAttention::load(l, &format!("{b}.attn1"), ch, ch, heads)?,
                    norm2: LayerNorm::load(l, &format!("{b}.norm2"), ch, 1e-5)?,
                    attn2: CrossAttention::load(l, &format!("{b}.attn2"), ch, ctx, heads)?,
                    norm3: LayerNorm::load(l, &format!("{b}.norm3"), ch, 1e-5)?,
                    ff_in: Linear::load(l, &format!("{b}.ff.net.0.proj"), ch, ch * 8, true)?,
                    ff_out: Linear::load(l, &format!("{b}.ff.net.2"), ch * 4, ch, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpatialTransformer {
            norm: GroupNorm::load(l, &format!("{p}.norm"), ch, groups, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    pub(crate) fn forward(&self, gpu: &Gpu, x: &Tensor, ctx: &Tensor, frames: usize, lora: Option<&Lora>) -> Result<Tensor> {
        let (h, w) = (x.dim(2), x.dim(3));
        let n = self.norm.forward(gpu, x, false)?;
        let mut t = match &self.proj_in {
            Proj::Conv(c) => nchw_to_tokens(gpu, &c.forward(gpu, &n)?)?,
            Proj::Linear(li) => li.forward(gpu, &nchw_to_tokens(gpu, &n)?)?,
        };
        for b in &self.blocks {
            t = b.forward(gpu, &t, ctx, frames, lora)?;
        }
        match &self.proj_out {
            Proj::Conv(c) => c.forward_add(gpu, &tokens_to_nchw(gpu, &t, h, w)?, x),
            Proj::Linear(li) => ew::add(gpu, &tokens_to_nchw(gpu, &li.forward(gpu, &t)?, h, w)?, x),
        }
    }
}

/// One level of the down or up path.
pub(crate) struct Level {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) attentions: Vec<SpatialTransformer>,
    /// Downsample (stride-2 conv) or upsample (nearest ×2 then conv).
    pub(crate) resample: Option<Conv2d>,
}

pub struct UNet {
    pub config: UNetConfig,
    dtype: DType,
    time_linear_1: Linear,
    time_linear_2: Linear,
    /// MVDream's camera embedding (16 numbers a view → the time embedding's width).
    camera: Option<(Linear, Linear)>,
    pub(crate) conv_in: Conv2d,
    pub(crate) down: Vec<Level>,
    pub(crate) mid_resnets: [ResnetBlock; 2],
    pub(crate) mid_attention: SpatialTransformer,
    pub(crate) up: Vec<Level>,
    pub(crate) norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
}

/// The component folder: `DIR/unet` of a pipeline, or DIR itself.
pub fn component_dir(dir: &Path) -> std::path::PathBuf {
    let sub = dir.join("unet");
    if sub.join("config.json").is_file() { sub } else { dir.to_path_buf() }
}

/// What the backward keeps of a forward pass (`unet_backward.rs`): the
/// input of every block in the order the forward runs them (the sample,
/// then each resnet's, transformer's and resampler's, the up path's resnets
/// taking the joined skip), the time embedding after its SiLU, and the
/// text context. Everything inside a block is recomputed from its input.
#[derive(Default)]
pub(crate) struct Tape {
    pub(crate) inputs: Vec<Tensor>,
    /// The channels of each skip the up path joins, in that order.
    pub(crate) skip_widths: Vec<usize>,
    pub(crate) temb_silu: Option<Tensor>,
    /// The time embedding before its SiLU, and the cameras (a LoRA camera
    /// condition's backward needs them).
    pub(crate) temb: Option<Tensor>,
    pub(crate) camera: Option<Tensor>,
    pub(crate) ctx: Option<Tensor>,
    pub(crate) frames: usize,
}

/// What a forward takes besides the sample, the timesteps and the text: a
/// multi-view prior's cameras and views (MVDream), and a LoRA adapter on the
/// attention projections (VSD's particle score).
pub struct Extras<'a> {
    /// [B, 16]: each view's camera ([`crate::scene::camera::mvdream_camera`]).
    pub camera: Option<&'a Tensor>,
    /// Views of one object, adjacent in the batch (which it must divide).
    pub frames: usize,
    /// Low-rank deltas added to the attention projections it names.
    pub lora: Option<&'a Lora>,
}

impl Extras<'_> {
    /// A plain text-to-image forward: one view, no camera, no adapter.
    pub const NONE: Extras<'static> = Extras { camera: None, frames: 1, lora: None };
}

impl UNet {
    pub fn load(gpu: &Gpu, dir: &Path, dtype: DType) -> Result<UNet> {
        let dir = component_dir(dir);
        let c = UNetConfig::load(&dir.join("config.json"))?;
        let weights = Weights::open(&dir, if dtype == DType::F16 { Variant::Fp16 } else { Variant::Full })?;
        Self::from_weights(gpu, c, &weights, dtype)
    }

    /// The UNet of `c` with the diffusers-named tensors of `weights`.
    pub fn from_weights(gpu: &Gpu, c: UNetConfig, weights: &Weights, dtype: DType) -> Result<UNet> {
        let l = Loader { gpu, weights, dtype };
        let n = c.block_out_channels.len();
        let ch = &c.block_out_channels;
        let heads = c.heads()?;
        let layers = c.layers_per_block.expand(n, "layers_per_block")?;
        let ctx = c.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let tlayers = c.transformer_layers_per_block.expand(n, "transformer_layers_per_block")?;
        let (g, eps) = (c.norm_num_groups, c.norm_eps);
        let temb = c.time_embedding_dim.unwrap_or(ch[0] * 4);
        let transformer = |p: &str, chn: usize, i: usize| {
            SpatialTransformer::load(&l, p, chn, heads[i], ctx[i], tlayers[i], g, c.use_linear_projection)
        };
        let kin = c.conv_in_kernel;
        let conv_in = Conv2d::load(&l, "conv_in", c.in_channels, ch[0], kin, 1, (kin - 1) / 2)?;

        let mut down = Vec::new();
        let mut prev = ch[0];
        for i in 0..n {
            let cross = c.down_block_types[i] == "CrossAttnDownBlock2D";
            let mut lv = Level { resnets: vec![], attentions: vec![], resample: None };
            for j in 0..layers[i] {
                let cin = if j == 0 { prev } else { ch[i] };
                lv.resnets.push(ResnetBlock::load(&l, &format!("down_blocks.{i}.resnets.{j}"), cin, ch[i], Some(temb), g, eps)?);
                if cross {
                    lv.attentions.push(transformer(&format!("down_blocks.{i}.attentions.{j}"), ch[i], i)?);
                }
            }
            if i + 1 < n {
                lv.resample = Some(Conv2d::load(&l, &format!("down_blocks.{i}.downsamplers.0.conv"), ch[i], ch[i], 3, 2, c.downsample_padding)?);
            }
            prev = ch[i];
            down.push(lv);
        }

        let last = ch[n - 1];
        let mid_resnets = [
            ResnetBlock::load(&l, "mid_block.resnets.0", last, last, Some(temb), g, eps)?,
            ResnetBlock::load(&l, "mid_block.resnets.1", last, last, Some(temb), g, eps)?,
        ];
        let mid_attention = transformer("mid_block.attentions.0", last, n - 1)?;

        let mut up = Vec::new();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut prev_out = rev[0];
        for i in 0..n {
            let out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let bi = n - 1 - i; // the matching down level, for per-block settings
            let cross = c.up_block_types[i] == "CrossAttnUpBlock2D";
            let nl = layers[bi] + 1;
            let mut lv = Level { resnets: vec![], attentions: vec![], resample: None };
            for j in 0..nl {
                let skip = if j == nl - 1 { input } else { out };
                let cin = if j == 0 { prev_out } else { out };
                lv.resnets.push(ResnetBlock::load(&l, &format!("up_blocks.{i}.resnets.{j}"), cin + skip, out, Some(temb), g, eps)?);
                if cross {
                    lv.attentions.push(transformer(&format!("up_blocks.{i}.attentions.{j}"), out, bi)?);
                }
            }
            if i + 1 < n {
                lv.resample = Some(Conv2d::load(&l, &format!("up_blocks.{i}.upsamplers.0.conv"), out, out, 3, 1, 1)?);
            }
            prev_out = out;
            up.push(lv);
        }
        let kout = c.conv_out_kernel;
        Ok(UNet {
            time_linear_1: Linear::load(&l, "time_embedding.linear_1", ch[0], temb, true)?,
            time_linear_2: Linear::load(&l, "time_embedding.linear_2", temb, temb, true)?,
            camera: match c.camera_dim {
                Some(d) => Some((
                    Linear::load(&l, "camera_embedding.linear_1", d, temb, true)?,
                    Linear::load(&l, "camera_embedding.linear_2", temb, temb, true)?,
                )),
                None => None,
            },
            conv_in,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out: GroupNorm::load(&l, "conv_norm_out", ch[0], g, eps)?,
            conv_out: Conv2d::load(&l, "conv_out", ch[0], c.out_channels, kout, 1, (kout - 1) / 2)?,
            config: c,
            dtype,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The width of the time embedding (what a camera condition adds to).
    pub fn time_embedding_width(&self) -> usize {
        self.time_linear_2.weight.dim(0)
    }

    /// Every attention projection a LoRA adapter may cover, with its widths
    /// (in, out), in the order the forward runs them.
    pub fn attention_projections(&self) -> Vec<(String, (usize, usize))> {
        let transformers = self.down.iter().flat_map(|l| &l.attentions).chain([&self.mid_attention]).chain(self.up.iter().flat_map(|l| &l.attentions));
        let mut out = Vec::new();
        for t in transformers {
            for b in &t.blocks {
                for a in [&b.attn1, &b.attn2] {
                    for (which, linear) in [("to_q", &a.q), ("to_k", &a.k), ("to_v", &a.v), ("to_out.0", &a.out)] {
                        out.push((a.projection(which), (linear.weight.dim(1), linear.weight.dim(0))));
                    }
                }
            }
        }
        out
    }
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// ε̂ (or v, per the scheduler) for sample [B, C, H, W] of any H, W,
    /// timesteps [B] (f32), encoder_hidden_states [B, L, D].
    pub fn forward(&self, gpu: &Gpu, sample: &Tensor, timesteps: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        self.forward_views(gpu, sample, timesteps, ctx, &Extras::NONE)
    }

    /// [`UNet::forward`] of a multi-view prior: the cameras are embedded and
    /// added to the time embedding, and self-attention spans the views of
    /// each object.
    pub fn forward_views(&self, gpu: &Gpu, sample: &Tensor, timesteps: &Tensor, ctx: &Tensor, extras: &Extras) -> Result<Tensor> {
        self.run(gpu, sample, timesteps, ctx, extras, None)
    }

    /// The forward pass; with `tape`, each block's input is kept for the
    /// backward (`unet_backward.rs`), which recomputes the rest.
    pub(crate) fn run(&self, gpu: &Gpu, sample: &Tensor, timesteps: &Tensor, ctx: &Tensor, extras: &Extras, mut tape: Option<&mut Tape>) -> Result<Tensor> {
        let c = &self.config;
        let frames = extras.frames;
        if sample.rank() != 4 || sample.dim(1) != c.in_channels {
            return Err(Error::shape("unet", format!("sample must be [B, {}, H, W], got {:?}", c.in_channels, sample.shape())));
        }
        let b = sample.dim(0);
        if timesteps.shape() != [b] || ctx.rank() != 3 || ctx.dim(0) != b {
            return Err(Error::shape(
                "unet",
                format!("timestep must be [{b}] and encoder_hidden_states [{b}, L, D]; got {:?} and {:?}", timesteps.shape(), ctx.shape()),
            ));
        }
        let t = timestep_embedding(gpu, timesteps, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift as f32, 1.0, 10000.0)?;
        let t = gpu.to_dtype(&t, self.dtype)?;
        if frames == 0 || !b.is_multiple_of(frames) {
            return Err(Error::shape("unet", format!("num_frames {frames} must divide the batch of {b} (views of one object are adjacent)")));
        }
        let mut temb = self.time_linear_2.forward(gpu, &ew::silu(gpu, &self.time_linear_1.forward(gpu, &t)?)?)?;
        match (&self.camera, extras.camera) {
            (Some((l1, l2)), Some(cam)) => {
                if cam.shape() != [b, l1.weight.dim(1)] {
                    return Err(Error::shape("unet", format!("camera must be [{b}, {}], got {:?}", l1.weight.dim(1), cam.shape())));
                }
                let cam = gpu.to_dtype(cam, self.dtype)?;
                temb = l2.forward_add(gpu, &ew::silu(gpu, &l1.forward(gpu, &cam)?)?, &temb)?;
            }
            (None, Some(_)) if extras.lora.is_none_or(|l| l.camera.is_none()) => {
                return Err(Error::Invalid("unet: a camera was given, but neither this UNet nor its LoRA adapter has a camera embedding".into()));
            }
            _ => {}
        }
        // A LoRA adapter's camera condition (VSD's), added as a class embedding.
        if let (Some(ce), Some(cam)) = (extras.lora.and_then(|l| l.camera.as_ref()), extras.camera) {
            if cam.shape() != [b, 16] {
                return Err(Error::shape("unet", format!("camera must be [{b}, 16], got {:?}", cam.shape())));
            }
            let e = ce.forward(gpu, &gpu.to_dtype(cam, DType::F32)?)?;
            temb = ew::add(gpu, &temb, &gpu.to_dtype(&e, self.dtype)?)?;
        }
        let temb_pre = temb.clone();
        let temb = ew::silu(gpu, &temb)?;
        // Keeps a block's input on the tape (in the order the blocks run).
        let mut keep = |x: &Tensor| {
            if let Some(t) = tape.as_deref_mut() {
                t.inputs.push(x.clone());
            }
        };
        keep(sample);
        let temb_ref = Some(&temb);

        let mut h = self.conv_in.forward(gpu, sample)?;
        let mut skips = vec![h.clone()];
        let mut skip_widths = Vec::new();
        for lv in &self.down {
            for (j, r) in lv.resnets.iter().enumerate() {
                keep(&h);
                h = r.forward(gpu, &h, temb_ref)?;
                if let Some(a) = lv.attentions.get(j) {
                    keep(&h);
                    h = a.forward(gpu, &h, ctx, frames, extras.lora)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &lv.resample {
                keep(&h);
                h = d.forward(gpu, &h)?;
                skips.push(h.clone());
            }
        }
        keep(&h);
        h = self.mid_resnets[0].forward(gpu, &h, temb_ref)?;
        keep(&h);
        h = self.mid_attention.forward(gpu, &h, ctx, frames, extras.lora)?;
        keep(&h);
        h = self.mid_resnets[1].forward(gpu, &h, temb_ref)?;
        for lv in &self.up {
            for (j, r) in lv.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Invalid("unet: skip connections ran out".into()))?;
                let joined = concat(gpu, &[&h, &skip], 1)?;
                keep(&joined);
                skip_widths.push(skip.dim(1));
                h = r.forward(gpu, &joined, temb_ref)?;
                if let Some(a) = lv.attentions.get(j) {
                    keep(&h);
                    h = a.forward(gpu, &h, ctx, frames, extras.lora)?;
                }
            }
            if let Some(u) = &lv.resample {
                // Up to the size of the skip the next level joins: twice
                // this one, unless a side was odd on the way down (a
                // stride-2 conv rounds up), as diffusers forwards
                // `upsample_size` for sizes off the UNet's overall factor.
                let next = skips.last().ok_or_else(|| Error::Invalid("unet: skip connections ran out".into()))?;
                let (th, tw) = (next.dim(2), next.dim(3));
                keep(&h);
                let up = if (th, tw) == (2 * h.dim(2), 2 * h.dim(3)) { upsample_nearest2x(gpu, &h)? } else { resize_nearest(gpu, &h, th, tw)? };
                h = u.forward(gpu, &up)?;
            }
        }
        keep(&h);
        if let Some(t) = tape {
            t.temb_silu = Some(temb);
            t.temb = Some(temb_pre);
            t.camera = extras.camera.cloned();
            t.skip_widths = skip_widths;
            t.ctx = Some(ctx.clone());
            t.frames = frames;
        }
        self.conv_out.forward(gpu, &self.norm_out.forward(gpu, &h, true)?)
    }
}
