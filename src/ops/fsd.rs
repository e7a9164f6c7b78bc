//! The paper's own kernels (`shaders/fsd.wgsl`): the world-map gather of
//! FSD's view-aligned noise ε(c) (FSD_SPEC §4; the noise function itself is
//! `diffusion::noise`) and the distillation gradient on the render (§2).
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, float_dtypes, grid_for};

crate::kernel_params! {
    struct WorldMapParams {
        n: u32,
        channels: u32,
        height: u32,
        width: u32,
        beta: f32,
        alpha0: f32,
        pool: u32,
        map_rows: u32,
        map_cols: u32,
        _pad: [u32; 3],
    }
}

crate::kernel_params! {
    struct DistillGradParams {
        n: u32,
        weight: f32,
        clip: f32,
        out_scale: f32,
    }
}

fn worldmap_key(dt: DType) -> KernelKey {
    KernelKey::new("fsd", "worldmap").params::<WorldMapParams>().def("T", dt.wgsl()).def("WG", WG_1D).flag("WORLDMAP", true).flag("DISTILL_GRAD", false)
}

fn distill_grad_key() -> KernelKey {
    KernelKey::new("fsd", "distill_grad").params::<DistillGradParams>().def("WG", WG_1D).flag("WORLDMAP", false).flag("DISTILL_GRAD", true)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut v: Vec<KernelKey> = float_dtypes(caps).into_iter().map(worldmap_key).collect();
    v.push(distill_grad_key());
    v
}

/// The inputs of the world-map gather for a batch of views (see
/// `diffusion::noise` for how they are made).
pub struct WorldMapInputs<'a> {
    /// ε_p [D, H + h, W], f32.
    pub world: &'a Tensor,
    /// ε_b [D, h, w], f32.
    pub background: &'a Tensor,
    /// ε_fresh [B, D, h, w], f32 (ignored when β = 1, but always bound).
    pub fresh: &'a Tensor,
    /// Rendered opacity [B, 1, h·k, w·k], f32.
    pub opacity: &'a Tensor,
    /// Crop origins [B, 2] (row0, col0), U32.
    pub origins: &'a Tensor,
    pub beta: f32,
    pub alpha0: f32,
}

/// ε(c) [B, D, h, w] for each view (FSD_SPEC §4).
pub fn worldmap_noise(gpu: &Gpu, inp: &WorldMapInputs, dtype: DType) -> Result<Tensor> {
    const OP: &str = "worldmap_noise";
    let (w3, bg, fr, op, or) = (inp.world, inp.background, inp.fresh, inp.opacity, inp.origins);
    if w3.rank() != 3 || bg.rank() != 3 || fr.rank() != 4 || op.rank() != 4 || or.rank() != 2 {
        return Err(Error::shape(OP, format!("ranks: world {w3:?}, background {bg:?}, fresh {fr:?}, opacity {op:?}, origins {or:?}")));
    }
    let (d, h, w) = (bg.dim(0), bg.dim(1), bg.dim(2));
    let b = fr.dim(0);
    if w3.dim(0) != d || w3.dim(1) < h || fr.shape() != [b, d, h, w] || or.shape() != [b, 2] || op.dim(0) != b || op.dim(1) != 1 {
        return Err(Error::shape(OP, format!("inconsistent shapes: world {w3:?}, background {bg:?}, fresh {fr:?}, opacity {op:?}, origins {or:?}")));
    }
    if op.dim(2) % h != 0 || op.dim(3) % w != 0 || op.dim(2) / h != op.dim(3) / w {
        return Err(Error::shape(OP, format!("opacity {:?} must be an integer multiple k of the noise size {h}x{w}, the same on both axes", op.shape())));
    }
    if [w3, bg, fr, op].iter().any(|t| t.dtype() != DType::F32) || or.dtype() != DType::U32 {
        return Err(Error::shape(OP, "world, background, fresh and opacity are f32; origins are u32"));
    }
    if !(0.0..=1.0).contains(&inp.beta) {
        return Err(Error::Invalid(format!("{OP}: β = {} must be in [0, 1]", inp.beta)));
    }
    let y = gpu.empty(&[b, d, h, w], dtype)?;
    let n = y.numel();
    let p = WorldMapParams {
        n: n as u32,
        channels: d as u32,
        height: h as u32,
        width: w as u32,
        beta: inp.beta,
        alpha0: inp.alpha0,
        pool: (op.dim(2) / h) as u32,
        map_rows: w3.dim(1) as u32,
        map_cols: w3.dim(2) as u32,
        ..Default::default()
    };
    gpu.dispatch("fsd.worldmap", &worldmap_key(dtype), &p, &[w3, bg, fr, op, or, &y], grid_for(gpu, n, WG_1D))?;
    Ok(y)
}

/// How [`distill_grad`] shapes the gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillGrad {
    /// w(t).
    pub weight: f32,
    /// Clamp each element to ±clip after weighting (0: no clamp).
    pub clip: f32,
    /// Multiplies the result (e.g. 1/B, and the chain rule of a pixel mapping).
    pub out_scale: f32,
}

/// `out_scale · clamp(nan_to_zero(w·(pred − target)), ±clip)`, all f32 of one
/// shape. Every non-finite element is zeroed and counted into `nonfinite[0]`
/// (a U32 tensor the caller zeroes and reads back when it wants to know).
pub fn distill_grad(gpu: &Gpu, pred: &Tensor, target: &Tensor, g: &DistillGrad, nonfinite: &Tensor) -> Result<Tensor> {
    const OP: &str = "distill_grad";
    if pred.shape() != target.shape() || pred.dtype() != DType::F32 || target.dtype() != DType::F32 {
        return Err(Error::shape(OP, format!("pred {pred:?} and target {target:?} must be f32 of one shape")));
    }
    if nonfinite.dtype() != DType::U32 || nonfinite.numel() < 1 {
        return Err(Error::shape(OP, format!("the non-finite counter must be u32 with at least one element, got {nonfinite:?}")));
    }
    // Written so that a NaN clip is refused too.
    if g.clip.is_nan() || g.clip < 0.0 {
        return Err(Error::Invalid(format!("{OP}: clip {} must be >= 0 (0 disables it)", g.clip)));
    }
    let y = gpu.empty(pred.shape(), DType::F32)?;
    let n = y.numel();
    let p = DistillGradParams { n: n as u32, weight: g.weight, clip: g.clip, out_scale: g.out_scale };
    gpu.dispatch("fsd.distill_grad", &distill_grad_key(), &p, &[pred, target, &y, nonfinite], grid_for(gpu, n, WG_1D))?;
    Ok(y)
}
