//! Spatial resampling of [B, C, H, W] maps as torch's `F.interpolate`
//! (`shaders/resample.wgsl`): nearest (the UNet's 2x upsampler) and bilinear
//! with `align_corners=False, antialias=False`.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, expect_float, expect_rank, float_dtypes, grid_for};

crate::kernel_params! {
    struct Params {
        n: u32,
        in_h: u32,
        in_w: u32,
        out_h: u32,
        out_w: u32,
        scale_h: f32,
        scale_w: f32,
        pad: u32,
    }
}

impl Params {
    /// `n` threads for a resize from `input` to `output` (height, width).
    fn new(n: usize, (in_h, in_w): (usize, usize), (out_h, out_w): (usize, usize)) -> Params {
        Params {
            n: n as u32,
            in_h: in_h as u32,
            in_w: in_w as u32,
            out_h: out_h as u32,
            out_w: out_w as u32,
            // torch: (float)input_size / output_size when the output size is given.
            scale_h: in_h as f32 / out_h as f32,
            scale_w: in_w as f32 / out_w as f32,
            pad: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Nearest,
    Bilinear,
    BilinearBackward,
}

impl Mode {
    fn entry(self) -> &'static str {
        match self {
            Mode::Nearest => "nearest",
            Mode::Bilinear => "bilinear",
            Mode::BilinearBackward => "bilinear_backward",
        }
    }
}

fn key(mode: Mode, dtype: DType) -> KernelKey {
    KernelKey::new("resample", mode.entry()).params::<Params>()
        .def("T", dtype.wgsl())
        .def("WG", WG_1D)
        .flag("NEAREST", mode == Mode::Nearest)
        .flag("BILINEAR", mode == Mode::Bilinear || mode == Mode::BilinearBackward)
        .flag("BILINEAR_BACKWARD", mode == Mode::BilinearBackward)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut v = Vec::new();
    for dt in float_dtypes(caps) {
        v.push(key(Mode::Nearest, dt));
        v.push(key(Mode::Bilinear, dt));
        v.push(key(Mode::BilinearBackward, dt));
    }
    v
}

fn resize(gpu: &Gpu, op: &'static str, mode: Mode, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    expect_float(op, x)?;
    expect_rank(op, x, 4)?;
    let [b, c, in_h, in_w] = [x.dim(0), x.dim(1), x.dim(2), x.dim(3)];
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::shape(op, format!("cannot resize {x:?} to {out_h}x{out_w}: empty spatial size")));
    }
    let y = gpu.empty(&[b, c, out_h, out_w], x.dtype())?;
    let p = Params::new(y.numel(), (in_h, in_w), (out_h, out_w));
    gpu.dispatch(
        &format!("resample.{}", mode.entry()),
        &key(mode, x.dtype()),
        &p,
        &[x, &y],
        grid_for(gpu, y.numel(), WG_1D),
    )?;
    Ok(y)
}

/// Nearest-neighbour resize of x [B, C, H, W] to [B, C, out_h, out_w], as
/// `F.interpolate(x, size=(out_h, out_w), mode="nearest")`.
pub fn resize_nearest(gpu: &Gpu, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    resize(gpu, "resize_nearest", Mode::Nearest, x, out_h, out_w)
}

/// x [B, C, H, W] -> [B, C, 2H, 2W], each pixel repeated 2x2, as
/// `F.interpolate(x, scale_factor=2.0, mode="nearest")` (the UNet's Upsample2D).
pub fn upsample_nearest2x(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    expect_rank("upsample_nearest2x", x, 4)?;
    resize(gpu, "upsample_nearest2x", Mode::Nearest, x, 2 * x.dim(2), 2 * x.dim(3))
}

/// Bilinear resize of x [B, C, H, W] to [B, C, out_h, out_w], exactly as
/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False,
/// antialias=False)`: up or down, no anti-aliasing when shrinking.
pub fn resize_bilinear(gpu: &Gpu, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    resize(gpu, "resize_bilinear", Mode::Bilinear, x, out_h, out_w)
}

/// The input gradient of [`resize_bilinear`]: dy [B, C, out_h, out_w] ->
/// dx [B, C, in_h, in_w] (the adjoint of the resize from in_h × in_w), for
/// a latent prior's loop, where the render is resized to the VAE's input.
pub fn resize_bilinear_backward(gpu: &Gpu, dy: &Tensor, in_h: usize, in_w: usize) -> Result<Tensor> {
    const OP: &str = "resize_bilinear_backward";
    expect_float(OP, dy)?;
    expect_rank(OP, dy, 4)?;
    let [b, c, out_h, out_w] = [dy.dim(0), dy.dim(1), dy.dim(2), dy.dim(3)];
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::shape(OP, format!("cannot take the gradient of a resize from {in_h}x{in_w} to {dy:?}: empty spatial size")));
    }
    let dx = gpu.empty(&[b, c, in_h, in_w], dy.dtype())?;
    let p = Params::new(dx.numel(), (in_h, in_w), (out_h, out_w));
    gpu.dispatch("resample.bilinear_backward", &key(Mode::BilinearBackward, dy.dtype()), &p, &[dy, &dx], grid_for(gpu, dx.numel(), WG_1D))?;
    Ok(dx)
}
