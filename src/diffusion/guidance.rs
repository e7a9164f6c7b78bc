//! The distillation gradients of FSD_SPEC §2: SDS, NFSD and FSD, with the
//! weightings w(t). The UNet Jacobian is skipped: the gradient on the render z
//! is w(t)·(ε̂ − ε) (or NFSD's variant), written as ∂L/∂z = grad / B.
use serde::{Deserialize, Serialize};

use crate::diffusion::noise::NoiseMode;
use crate::diffusion::schedule::{NoiseSchedule, Prediction};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::prior::Prior;
use crate::ops::elementwise as ew;

/// The distillation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Sds,
    Nfsd,
    Fsd,
    /// FSD with one constant noise for every view (Fig. 6 ablation).
    FsdConstant,
}

impl Method {
    pub fn parse(s: &str) -> crate::Result<Method> {
        Ok(match s {
            "sds" => Method::Sds,
            "nfsd" => Method::Nfsd,
            "fsd" => Method::Fsd,
            "fsd-constant" => Method::FsdConstant,
            _ => return Err(crate::Error::Invalid(format!("unknown method {s:?}: expected sds, nfsd, fsd or fsd-constant"))),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Sds => "sds",
            Method::Nfsd => "nfsd",
            Method::Fsd => "fsd",
            Method::FsdConstant => "fsd-constant",
        }
    }
    /// The noise each method adds.
    pub fn noise(self) -> NoiseMode {
        match self {
            Method::Sds | Method::Nfsd => NoiseMode::Random,
            Method::Fsd => NoiseMode::WorldMap,
            Method::FsdConstant => NoiseMode::Constant,
        }
    }
}

/// NFSD's default negative prompt (FSD_SPEC §2).
pub const NFSD_NEGATIVE: &str =
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy";

/// w(t).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// 1
    Uniform,
    /// 1 − ᾱ_t (threestudio's "sds")
    Sds,
    /// σ_t / α_t (FSD's natural scale, Eq. 13)
    Fsd,
}

impl Weighting {
    pub fn weight(self, s: &NoiseSchedule, t: i64) -> f64 {
        match self {
            Weighting::Uniform => 1.0,
            Weighting::Sds => 1.0 - s.alpha_bar(t),
            Weighting::Fsd => s.sigma(t) / s.alpha(t),
        }
    }
}

/// x_t = α_t·z + σ_t·ε.
pub fn noisy(gpu: &Gpu, s: &NoiseSchedule, t: i64, z: &Tensor, eps: &Tensor) -> Result<Tensor> {
    ew::axpby(gpu, s.alpha(t) as f32, z, s.sigma(t) as f32, eps)
}

/// The model's ε̂ from its output at x_t (ε = α·v + σ·x_t for v-prediction).
pub fn to_epsilon(gpu: &Gpu, s: &NoiseSchedule, t: i64, x_t: &Tensor, out: &Tensor) -> Result<Tensor> {
    match s.prediction {
        Prediction::Epsilon => Ok(out.clone()),
        Prediction::VPrediction => ew::axpby(gpu, s.alpha(t) as f32, out, s.sigma(t) as f32, x_t),
        // x̂0 = out: ε = (x_t − α·x̂0)/σ
        Prediction::Sample => ew::axpby(gpu, (1.0 / s.sigma(t)) as f32, x_t, (-s.alpha(t) / s.sigma(t)) as f32, out),
    }
}

/// ε̂ (f32) of the prior at x_t (f32), guided when `uncond` is given: runs the
/// model in its own dtype and converts v- or x̂₀-predictions to ε.
#[allow(clippy::too_many_arguments)]
pub fn predict_epsilon(gpu: &Gpu, prior: &dyn Prior, s: &NoiseSchedule, t: i64, x_t: &Tensor, cond: &Tensor, uncond: Option<&Tensor>, cfg: f32) -> Result<Tensor> {
    let xin = gpu.to_dtype(x_t, prior.dtype())?;
    let out = gpu.to_dtype(&prior.predict(gpu, &xin, t as f32, cond, uncond, cfg)?, DType::F32)?;
    to_epsilon(gpu, s, t, x_t, &out)
}
