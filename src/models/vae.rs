//! diffusers' AutoencoderKL: the encoder (image -> posterior mean and
//! log-variance) and the decoder (latent -> image). Latents are unscaled:
//! callers multiply by `scaling_factor` as the pipelines do.
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::chunked;
use crate::models::config::VaeConfig;
use crate::models::nn::{Conv2d, GroupNorm, Linear, Loader, attention, nchw_to_tokens, tokens_to_nchw};
use crate::models::unet::ResnetBlock;
use crate::models::weights::{Variant, Weights};
use crate::ops::concat::{concat, narrow};
use crate::ops::elementwise::{self as ew};
use crate::ops::resample::upsample_nearest2x;

const EPS: f64 = 1e-6;

/// The mid block's single-head self-attention with its own GroupNorm.
pub(crate) struct MidAttention {
    pub(crate) norm: GroupNorm,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) out: Linear,
}

impl MidAttention {
    fn load(l: &Loader, p: &str, ch: usize, groups: usize) -> Result<MidAttention> {
        Ok(MidAttention {
            norm: GroupNorm::load(l, &format!("{p}.group_norm"), ch, groups, EPS)?,
            q: Linear::load(l, &format!("{p}.to_q"), ch, ch, true)?,
            k: Linear::load(l, &format!("{p}.to_k"), ch, ch, true)?,
            v: Linear::load(l, &format!("{p}.to_v"), ch, ch, true)?,
            out: Linear::load(l, &format!("{p}.to_out.0"), ch, ch, true)?,
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let (h, w) = (x.dim(2), x.dim(3));
        let t = nchw_to_tokens(gpu, &self.norm.forward(gpu, x, false)?)?;
        let (q, k, v) = (self.q.forward(gpu, &t)?, self.k.forward(gpu, &t)?, self.v.forward(gpu, &t)?);
        let o = self.out.forward(gpu, &attention(gpu, &q, &k, &v, 1, false)?)?;
        ew::add(gpu, &tokens_to_nchw(gpu, &o, h, w)?, x)
    }
}

pub(crate) struct Mid {
    pub(crate) resnets: [ResnetBlock; 2],
    pub(crate) attention: Option<MidAttention>,
}

impl Mid {
    fn load(l: &Loader, p: &str, ch: usize, groups: usize, attn: bool) -> Result<Mid> {
        Ok(Mid {
            resnets: [
                ResnetBlock::load(l, &format!("{p}.resnets.0"), ch, ch, None, groups, EPS)?,
                ResnetBlock::load(l, &format!("{p}.resnets.1"), ch, ch, None, groups, EPS)?,
            ],
            attention: if attn { Some(MidAttention::load(l, &format!("{p}.attentions.0"), ch, groups)?) } else { None },
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(gpu, x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(gpu, &h)?;
        }
        self.resnets[1].forward(gpu, &h, None)
    }
}

pub(crate) struct Level {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) resample: Option<Conv2d>,
}

pub struct Vae {
    pub config: VaeConfig,
    dtype: DType,
    pub(crate) enc_conv_in: Conv2d,
    pub(crate) enc_down: Vec<Level>,
    pub(crate) enc_mid: Mid,
    pub(crate) enc_norm_out: GroupNorm,
    pub(crate) enc_conv_out: Conv2d,
    pub(crate) quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: Mid,
    dec_up: Vec<Level>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

/// The component folder: `DIR/vae` of a pipeline, or DIR itself.
pub fn component_dir(dir: &Path) -> std::path::PathBuf {
    let sub = dir.join("vae");
    if sub.join("config.json").is_file() { sub } else { dir.to_path_buf() }
}

/// The posterior of an image: mean and log-variance, each [B, latent, h, w].
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Vae {
    pub fn load(gpu: &Gpu, dir: &Path, dtype: DType) -> Result<Vae> {
        let dir = component_dir(dir);
        let c = VaeConfig::load(&dir.join("config.json"))?;
        let weights = Weights::open(&dir, if dtype == DType::F16 { Variant::Fp16 } else { Variant::Full })?;
        Vae::from_weights(gpu, c, &weights, dtype)
    }

    /// The autoencoder of `c` with the diffusers-named tensors of `weights`
    /// (a folder's, or a single-file checkpoint's through `models::ldm`).
    pub fn from_weights(gpu: &Gpu, c: VaeConfig, weights: &Weights, dtype: DType) -> Result<Vae> {
        let l = Loader { gpu, weights, dtype };
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let lat = c.latent_channels;

        let mut enc_down = Vec::new();
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let resnets = (0..c.layers_per_block)
                .map(|j| ResnetBlock::load(&l, &format!("encoder.down_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { out }, out, None, g, EPS))
                .collect::<Result<Vec<_>>>()?;
            // diffusers pads right/bottom by one, then a stride-2 conv without padding.
            let resample = if i + 1 < n {
                Some(Conv2d::load(&l, &format!("encoder.down_blocks.{i}.downsamplers.0.conv"), out, out, 3, 2, 0)?)
            } else {
                None
            };
            enc_down.push(Level { resnets, resample });
            prev = out;
        }
        let last = ch[n - 1];
        let mut dec_up = Vec::new();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut prev = rev[0];
        for (i, &out) in rev.iter().enumerate() {
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| ResnetBlock::load(&l, &format!("decoder.up_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { out }, out, None, g, EPS))
                .collect::<Result<Vec<_>>>()?;
            let resample = if i + 1 < n {
                Some(Conv2d::load(&l, &format!("decoder.up_blocks.{i}.upsamplers.0.conv"), out, out, 3, 1, 1)?)
            } else {
                None
            };
            dec_up.push(Level { resnets, resample });
            prev = out;
        }
        Ok(Vae {
            enc_conv_in: Conv2d::load(&l, "encoder.conv_in", c.in_channels, ch[0], 3, 1, 1)?,
            enc_down,
            enc_mid: Mid::load(&l, "encoder.mid_block", last, g, c.mid_block_add_attention)?,
            enc_norm_out: GroupNorm::load(&l, "encoder.conv_norm_out", last, g, EPS)?,
            enc_conv_out: Conv2d::load(&l, "encoder.conv_out", last, 2 * lat, 3, 1, 1)?,
            quant_conv: if c.use_quant_conv { Some(Conv2d::load(&l, "quant_conv", 2 * lat, 2 * lat, 1, 1, 0)?) } else { None },
            post_quant_conv: if c.use_post_quant_conv { Some(Conv2d::load(&l, "post_quant_conv", lat, lat, 1, 1, 0)?) } else { None },
            dec_conv_in: Conv2d::load(&l, "decoder.conv_in", lat, last, 3, 1, 1)?,
            dec_mid: Mid::load(&l, "decoder.mid_block", last, g, c.mid_block_add_attention)?,
            dec_up,
            dec_norm_out: GroupNorm::load(&l, "decoder.conv_norm_out", ch[0], g, EPS)?,
            dec_conv_out: Conv2d::load(&l, "decoder.conv_out", ch[0], c.out_channels, 3, 1, 1)?,
            config: c,
            dtype,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }
    /// Pixels per latent pixel.
    pub fn downscale(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// Image [B, 3, H, W] in [-1, 1] -> posterior (mean, logvar clamped to [-30, 20]).
    pub fn encode(&self, gpu: &Gpu, x: &Tensor) -> Result<Posterior> {
        if x.rank() != 4 || x.dim(1) != self.config.in_channels {
            return Err(Error::shape("vae encode", format!("sample must be [B, {}, H, W], got {:?}", self.config.in_channels, x.shape())));
        }
        let mut h = self.enc_conv_in.forward(gpu, x)?;
        for lv in &self.enc_down {
            for r in &lv.resnets {
                h = r.forward(gpu, &h, None)?;
            }
            if let Some(d) = &lv.resample {
                h = d.forward(gpu, &pad_right_bottom(gpu, &h)?)?;
            }
        }
        h = self.enc_mid.forward(gpu, &h)?;
        h = self.enc_conv_out.forward(gpu, &self.enc_norm_out.forward(gpu, &h, true)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(gpu, &h)?;
        }
        let lat = self.config.latent_channels;
        let mean = narrow(gpu, &h, 1, 0, lat)?;
        let logvar = crate::ops::elementwise::clamp(gpu, &narrow(gpu, &h, 1, lat, lat)?, -30.0, 20.0)?;
        Ok(Posterior { mean, logvar })
    }

    /// Latent [B, latent, h, w] (unscaled) -> image [B, 3, H, W].
    pub fn decode(&self, gpu: &Gpu, z: &Tensor) -> Result<Tensor> {
        self.decode_within(gpu, z, gpu.max_binding_bytes())
    }

    /// [`decode`](Vae::decode) with every activation at most `max_bytes`:
    /// from the first level whose maps would not fit, the decoder works on
    /// channel chunks (`models::chunked`, exact). `decode` passes the
    /// adapter's storage binding limit.
    pub fn decode_within(&self, gpu: &Gpu, z: &Tensor, max_bytes: u64) -> Result<Tensor> {
        if z.rank() != 4 || z.dim(1) != self.config.latent_channels {
            return Err(Error::shape("vae decode", format!("latent must be [B, {}, h, w], got {:?}", self.config.latent_channels, z.shape())));
        }
        let mut h = match &self.post_quant_conv {
            Some(c) => c.forward(gpu, z)?,
            None => z.clone(),
        };
        h = self.dec_conv_in.forward(gpu, &h)?;
        h = self.dec_mid.forward(gpu, &h)?;
        let widest = |lv: &Level| lv.resnets.iter().map(|r| r.conv1.weight.dim(0).max(r.conv1.weight.dim(1))).max().unwrap_or(0);
        for (i, lv) in self.dec_up.iter().enumerate() {
            // This level's maps: its resnets at the current size, and its
            // upsampled output (twice the size) when it has one.
            let (b, size) = (h.dim(0), h.dtype().size());
            let scale = if lv.resample.is_some() { 2 } else { 1 };
            let c = widest(lv).max(h.dim(1));
            if !chunked::fits(b, c, scale * h.dim(2), scale * h.dim(3), size, max_bytes) {
                return self.decode_tail_chunked(gpu, h, i, max_bytes);
            }
            for r in &lv.resnets {
                h = r.forward(gpu, &h, None)?;
            }
            if let Some(u) = &lv.resample {
                h = u.forward(gpu, &upsample_nearest2x(gpu, &h)?)?;
            }
        }
        self.dec_conv_out.forward(gpu, &self.dec_norm_out.forward(gpu, &h, true)?)
    }

    /// The up levels from `first` on, and the output layers, on channel chunks.
    fn decode_tail_chunked(&self, gpu: &Gpu, h: Tensor, first: usize, max_bytes: u64) -> Result<Tensor> {
        let split = chunked::Split { max_bytes, align: h.dim(1) / self.config.norm_num_groups };
        let sizes = chunked::chunk_sizes(h.dim(0), h.dim(1), h.dim(2), h.dim(3), h.dtype().size(), split.align, max_bytes)?;
        let mut xs = chunked::split_channels(gpu, &h, &sizes)?;
        for lv in &self.dec_up[first..] {
            for r in &lv.resnets {
                let align = r.conv1.weight.dim(0) / self.config.norm_num_groups;
                xs = chunked::resnet_chunks(gpu, r, &xs, chunked::Split { max_bytes, align })?;
            }
            if let Some(u) = &lv.resample {
                let align = u.weight.dim(0) / self.config.norm_num_groups;
                let s = chunked::Split { max_bytes, align };
                xs = chunked::conv_chunks(gpu, u, &chunked::upsample_chunks(gpu, &xs, s)?, s)?;
            }
        }
        let xs = chunked::group_norm_chunks(gpu, &self.dec_norm_out, &xs, true)?;
        // conv_out has 3 output channels: one small output chunk.
        let out = chunked::conv_chunks(gpu, &self.dec_conv_out, &xs, chunked::Split { max_bytes, align: 1 })?;
        if out.len() == 1 { Ok(out.into_iter().next().expect("one chunk")) } else { crate::ops::concat::concat(gpu, &out.iter().collect::<Vec<_>>(), 1) }
    }
}

/// Zero row at the bottom and zero column at the right: F.pad(x, (0, 1, 0, 1)).
fn pad_right_bottom(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let col = gpu.zeros(&[b, c, h, 1], x.dtype())?;
    let x = concat(gpu, &[x, &col], 3)?;
    let row = gpu.zeros(&[b, c, 1, w + 1], x.dtype())?;
    concat(gpu, &[&x, &row], 2)
}
