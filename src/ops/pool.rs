//! 2-D pooling of [B, C, H, W] maps as torch's `F.max_pool2d` and
//! `F.avg_pool2d` with `ceil_mode=False` (`shaders/pool.wgsl`): Inception-v3's
//! stride-2 reductions, its branch pools (averages that leave the padding out
//! of the count, as pytorch-fid's FID blocks ask) and its global average.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, expect_float, expect_rank, float_dtypes, grid_for, u32_of};

crate::kernel_params! {
    struct Params {
        n: u32,
        in_h: u32,
        in_w: u32,
        out_h: u32,
        out_w: u32,
        k_h: u32,
        k_w: u32,
        stride: u32,
        pad: u32,
        _pad: [u32; 3],
    }
}

/// What a window reduces to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// The largest value; the padding is never taken.
    Max,
    /// The mean; `count_include_pad` as torch's flag.
    Avg { count_include_pad: bool },
}

/// A square window of `kernel`, every `stride` pixels, `padding` on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOpts {
    pub pool: Pool,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

fn key(pool: Pool, dtype: DType) -> KernelKey {
    KernelKey::new("pool", "pool").params::<Params>()
        .def("T", dtype.wgsl())
        .def("WG", WG_1D)
        .flag("MAX", pool == Pool::Max)
        .flag("AVG", pool != Pool::Max)
        .flag("COUNT_PAD", pool == Pool::Avg { count_include_pad: true })
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut v = Vec::new();
    for dt in float_dtypes(caps) {
        for pool in [Pool::Max, Pool::Avg { count_include_pad: false }, Pool::Avg { count_include_pad: true }] {
            v.push(key(pool, dt));
        }
    }
    v
}

/// x [B, C, H, W] -> [B, C, Ho, Wo], Ho = (H + 2·padding − kernel) / stride + 1.
pub fn pool2d(gpu: &Gpu, x: &Tensor, opts: PoolOpts) -> Result<Tensor> {
    const OP: &str = "pool2d";
    expect_float(OP, x)?;
    expect_rank(OP, x, 4)?;
    let [b, c, h, w] = [x.dim(0), x.dim(1), x.dim(2), x.dim(3)];
    let PoolOpts { kernel: k, stride, padding, .. } = opts;
    if k == 0 || stride == 0 {
        return Err(Error::shape(OP, format!("kernel and stride must be at least 1, got {opts:?}")));
    }
    // torch's own rule: a window must keep a pixel of the input.
    if 2 * padding > k {
        return Err(Error::shape(OP, format!("padding {padding} must be at most half the kernel {k}")));
    }
    if h + 2 * padding < k || w + 2 * padding < k {
        return Err(Error::shape(OP, format!("a {k}×{k} window does not fit {x:?} padded by {padding}")));
    }
    let (ho, wo) = ((h + 2 * padding - k) / stride + 1, (w + 2 * padding - k) / stride + 1);
    pool_window(gpu, x, opts.pool, (k, k), stride, padding, (b, c, ho, wo))
}

/// The mean over each map: x [B, C, H, W] -> [B, C, 1, 1], torch's `adaptive_avg_pool2d(x, 1)`.
pub fn global_avg_pool(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    expect_float("global_avg_pool", x)?;
    expect_rank("global_avg_pool", x, 4)?;
    let [b, c, h, w] = [x.dim(0), x.dim(1), x.dim(2), x.dim(3)];
    if h == 0 || w == 0 {
        return Err(Error::shape("global_avg_pool", format!("{x:?} has no pixels")));
    }
    pool_window(gpu, x, Pool::Avg { count_include_pad: true }, (h, w), 1, 0, (b, c, 1, 1))
}

fn pool_window(gpu: &Gpu, x: &Tensor, pool: Pool, (k_h, k_w): (usize, usize), stride: usize, pad: usize, out: (usize, usize, usize, usize)) -> Result<Tensor> {
    let (b, c, ho, wo) = out;
    let y = gpu.empty(&[b, c, ho, wo], x.dtype())?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let p = Params {
        n: u32_of("pool2d", "output elements", y.numel())?,
        in_h: x.dim(2) as u32,
        in_w: x.dim(3) as u32,
        out_h: ho as u32,
        out_w: wo as u32,
        k_h: k_h as u32,
        k_w: k_w as u32,
        stride: stride as u32,
        pad: pad as u32,
        _pad: [0; 3],
    };
    u32_of("pool2d", "input elements", x.numel())?;
    gpu.dispatch("pool2d", &key(pool, x.dtype()), &p, &[x, &y], grid_for(gpu, y.numel(), WG_1D))?;
    Ok(y)
}
