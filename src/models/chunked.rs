//! Feature maps split along channels, for activations over the adapter's
//! storage binding limit (the SD VAE decoder's 256 × 512² map is 256 MiB in
//! f32; lavapipe binds at most 128 MiB).
//!
//! The split is exact, not a tiled approximation: a chunk holds whole
//! GroupNorm groups (so each chunk normalises on its own with its slice of
//! γ and β), a convolution sums its input chunks' contributions (it is linear
//! in the input channels) and writes its output chunk by chunk, and
//! pointwise ops and nearest upsampling work chunk by chunk. Two maps with the
//! same channel count and size are always split the same way, so residual
//! additions pair up.
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::nn::{Conv2d, GroupNorm};
use crate::models::unet::ResnetBlock;
use crate::ops::concat::narrow;
use crate::ops::conv2d::{Conv2dOpts, conv2d};
use crate::ops::elementwise as ew;
use crate::ops::norm::group_norm;
use crate::ops::resample::upsample_nearest2x;

/// A map [B, C, H, W] as channel chunks [B, c_i, H, W], in order.
pub type Chunks = Vec<Tensor>;

/// Channel counts of the chunks of a [b, channels, h, w] map of `elem_bytes`
/// elements: each a multiple of `align` (channels per group), each at most
/// `max_bytes`. One chunk when the whole map fits.
pub fn chunk_sizes(b: usize, channels: usize, h: usize, w: usize, elem_bytes: usize, align: usize, max_bytes: u64) -> Result<Vec<usize>> {
    let per_channel = (b * h * w * elem_bytes) as u64;
    let align = align.max(1);
    let fit = (max_bytes / per_channel.max(1)) as usize / align * align;
    if fit == 0 {
        return Err(Error::Invalid(format!(
            "a [{b}, {channels}, {h}, {w}] map cannot be split under {max_bytes} bytes: even {align} channel(s) take {} bytes; use a smaller batch or resolution, or f16 storage",
            per_channel * align as u64
        )));
    }
    let mut sizes = Vec::new();
    let mut left = channels;
    while left > 0 {
        let c = fit.min(left);
        sizes.push(c);
        left -= c;
    }
    Ok(sizes)
}

/// Whether a [b, channels, h, w] map of `elem_bytes` fits in one binding of `max_bytes`.
pub fn fits(b: usize, channels: usize, h: usize, w: usize, elem_bytes: usize, max_bytes: u64) -> bool {
    (b * channels * h * w * elem_bytes) as u64 <= max_bytes
}

/// Splits `x` [B, C, H, W] into chunks of the given channel counts.
pub fn split_channels(gpu: &Gpu, x: &Tensor, sizes: &[usize]) -> Result<Chunks> {
    let mut at = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &c in sizes {
        out.push(if sizes.len() == 1 { x.clone() } else { narrow(gpu, x, 1, at, c)? });
        at += c;
    }
    Ok(out)
}

fn dims(xs: &[Tensor]) -> Result<(usize, usize, usize, usize)> {
    let first = xs.first().ok_or_else(|| Error::Invalid("an empty list of channel chunks".into()))?;
    let c = xs.iter().map(|t| t.dim(1)).sum();
    Ok((first.dim(0), c, first.dim(2), first.dim(3)))
}

/// How chunked ops split their outputs: the binding limit and the group alignment.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub max_bytes: u64,
    /// Channels per GroupNorm group of the maps being split.
    pub align: usize,
}

impl Split {
    fn sizes(&self, like: &Tensor, channels: usize, h: usize, w: usize) -> Result<Vec<usize>> {
        chunk_sizes(like.dim(0), channels, h, w, like.dtype().size(), self.align, self.max_bytes)
    }
}

/// GroupNorm (+SiLU) of a chunked map: each chunk holds whole groups.
pub fn group_norm_chunks(gpu: &Gpu, gn: &GroupNorm, xs: &[Tensor], silu: bool) -> Result<Chunks> {
    let (_, c, _, _) = dims(xs)?;
    let per_group = c / gn.groups;
    let mut at = 0;
    let mut out = Vec::with_capacity(xs.len());
    for x in xs {
        let ci = x.dim(1);
        if ci % per_group != 0 {
            return Err(Error::Invalid(format!("group norm over channel chunks: a chunk of {ci} channels splits a group of {per_group}")));
        }
        let gamma = narrow(gpu, &gn.gamma, 0, at, ci)?;
        let beta = narrow(gpu, &gn.beta, 0, at, ci)?;
        out.push(group_norm(gpu, x, ci / per_group, Some(&gamma), Some(&beta), gn.eps, silu)?);
        at += ci;
    }
    Ok(out)
}

/// A convolution of a chunked map, written as a chunked map: output chunk j
/// is Σ_i conv(x_i, W[j-rows, i-columns]) + b[j-rows].
pub fn conv_chunks(gpu: &Gpu, conv: &Conv2d, xs: &[Tensor], split: Split) -> Result<Chunks> {
    let (_, cin, h, w) = dims(xs)?;
    let [cout, win, kh, kw] = [conv.weight.dim(0), conv.weight.dim(1), conv.weight.dim(2), conv.weight.dim(3)];
    if win != cin {
        return Err(Error::shape("conv over channel chunks", format!("the weight takes {win} channels, the chunks hold {cin}")));
    }
    let ho = (h + 2 * conv.padding - kh) / conv.stride + 1;
    let wo = (w + 2 * conv.padding - kw) / conv.stride + 1;
    let out_sizes = split.sizes(&xs[0], cout, ho, wo)?;
    let opts = Conv2dOpts { stride: conv.stride, padding: conv.padding, variant: None, padding_w: None };
    let mut out = Vec::with_capacity(out_sizes.len());
    let mut o_at = 0;
    for &oc in &out_sizes {
        let w_rows = narrow(gpu, &conv.weight, 0, o_at, oc)?;
        let bias = match &conv.bias {
            Some(b) => Some(narrow(gpu, b, 0, o_at, oc)?),
            None => None,
        };
        let mut acc: Option<Tensor> = None;
        let mut i_at = 0;
        for x in xs {
            let ic = x.dim(1);
            let wi = if xs.len() == 1 { w_rows.clone() } else { narrow(gpu, &w_rows, 1, i_at, ic)? };
            let part = conv2d(gpu, x, &wi, if acc.is_none() { bias.as_ref() } else { None }, opts)?;
            acc = Some(match acc {
                None => part,
                Some(a) => ew::add(gpu, &a, &part)?,
            });
            i_at += ic;
        }
        out.push(acc.expect("at least one input chunk"));
        o_at += oc;
    }
    Ok(out)
}

/// Element-wise sum of two maps split the same way.
pub fn add_chunks(gpu: &Gpu, a: &[Tensor], b: &[Tensor]) -> Result<Chunks> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.shape() != y.shape()) {
        return Err(Error::shape("add over channel chunks", "the two maps are split differently"));
    }
    a.iter().zip(b).map(|(x, y)| ew::add(gpu, x, y)).collect()
}

/// Nearest 2× upsampling, chunk by chunk; a chunk whose upsampled map would
/// not fit is narrowed into pieces that do (what follows is a convolution,
/// which takes any chunking).
pub fn upsample_chunks(gpu: &Gpu, xs: &[Tensor], split: Split) -> Result<Chunks> {
    let mut out = Vec::new();
    for x in xs {
        let sizes = split.sizes(x, x.dim(1), 2 * x.dim(2), 2 * x.dim(3))?;
        for piece in split_channels(gpu, x, &sizes)? {
            out.push(upsample_nearest2x(gpu, &piece)?);
        }
    }
    Ok(out)
}

/// A ResnetBlock (no time embedding) on a chunked map.
pub fn resnet_chunks(gpu: &Gpu, r: &ResnetBlock, xs: &[Tensor], split: Split) -> Result<Chunks> {
    let h = conv_chunks(gpu, &r.conv1, &group_norm_chunks(gpu, &r.norm1, xs, true)?, split)?;
    let h = conv_chunks(gpu, &r.conv2, &group_norm_chunks(gpu, &r.norm2, &h, true)?, split)?;
    let skip = match &r.shortcut {
        Some(c) => conv_chunks(gpu, c, xs, split)?,
        None => xs.to_vec(),
    };
    add_chunks(gpu, &skip, &h)
}
