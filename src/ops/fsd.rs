//! The paper's own kernels (`shaders/fsd.wgsl`): the world-map gather of
//! FSD's view-aligned noise ε(c) (FSD_SPEC §4; the noise function itself is
//! `diffusion::noise`), the distillation gradient on the render (§2), and
//! the guidance of a multi-view prior with its x̂0 rescaled per object
//! ([`cfg_rescale`]).
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

crate::kernel_params! {
    struct RescaleParams {
        group: u32,
        scale: f32,
        alpha: f32,
        sigma: f32,
        phi: f32,
        _pad: [u32; 3],
    }
}

fn key(entry: &'static str) -> KernelKey {
    KernelKey::new("fsd", entry)
        .def("WG", WG_1D)
        .flag("WORLDMAP", entry == "worldmap")
        .flag("DISTILL_GRAD", entry == "distill_grad")
        .flag("CFG_RESCALE", entry == "cfg_rescale")
}

fn worldmap_key(dt: DType) -> KernelKey {
    key("worldmap").params::<WorldMapParams>().def("T", dt.wgsl())
}

fn distill_grad_key() -> KernelKey {
    key("distill_grad").params::<DistillGradParams>()
}

/// The reduction runs without subgroup operations: one workgroup per object
/// and a handful of objects a step, so there is nothing to win.
fn cfg_rescale_key() -> KernelKey {
    key("cfg_rescale").params::<RescaleParams>().flag("SUBGROUP_OPS", false)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut v: Vec<KernelKey> = float_dtypes(caps).into_iter().map(worldmap_key).collect();
    v.push(distill_grad_key());
    v.push(cfg_rescale_key());
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

/// The constants of one [`cfg_rescale`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CfgRescale {
    /// The guidance scale s.
    pub scale: f32,
    /// α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t).
    pub alpha: f32,
    pub sigma: f32,
    /// φ in [0, 1]: 0 is plain classifier-free guidance.
    pub phi: f32,
}

/// Classifier-free guidance of ε-predictions with the x̂0 of each group of
/// `group` consecutive samples (one object's views) rescaled to the spread
/// of the unguided x̂0, as threestudio's MVDream guidance does
/// (`recon_std_rescale`): returns the ε̂ whose x̂0 is
/// `(φ·f + 1 − φ)·x̂0_cfg`, f = std(x̂0_cond) / std(x̂0_cfg) per group
/// (unbiased, +1e-8 on both). All tensors f32 [B, ...]; B a multiple of `group`.
pub fn cfg_rescale(gpu: &Gpu, x_t: &Tensor, eps_cond: &Tensor, eps_uncond: &Tensor, group: usize, c: &CfgRescale) -> Result<Tensor> {
    const OP: &str = "cfg_rescale";
    if x_t.shape() != eps_cond.shape() || x_t.shape() != eps_uncond.shape() || [x_t, eps_cond, eps_uncond].iter().any(|t| t.dtype() != DType::F32) {
        return Err(Error::shape(OP, format!("x_t {x_t:?}, ε_cond {eps_cond:?} and ε_uncond {eps_uncond:?} must be f32 of one shape")));
    }
    let b = x_t.shape().first().copied().unwrap_or(0);
    if group == 0 || b == 0 || !b.is_multiple_of(group) {
        return Err(Error::shape(OP, format!("the batch of {b} must be a positive multiple of the group of {group} views")));
    }
    if !(0.0..=1.0).contains(&c.phi) || !(c.alpha > 0.0 && c.sigma > 0.0) {
        return Err(Error::Invalid(format!("{OP}: φ = {} must be in [0, 1], and α = {}, σ = {} positive", c.phi, c.alpha, c.sigma)));
    }
    let groups = b / group;
    let per_group = x_t.numel() / groups;
    let y = gpu.empty(x_t.shape(), DType::F32)?;
    let p = RescaleParams { group: per_group as u32, scale: c.scale, alpha: c.alpha, sigma: c.sigma, phi: c.phi, ..Default::default() };
    gpu.dispatch("fsd.cfg_rescale", &cfg_rescale_key(), &p, &[x_t, eps_cond, eps_uncond, &y], [groups as u32, 1, 1])?;
    Ok(y)
}
