//! The distillation gradients of FSD_SPEC §2: SDS, NFSD and FSD, with the
//! weightings w(t). The UNet Jacobian is skipped: the gradient on the render z
//! is w(t)·(ε̂ − ε) (or NFSD's variant), written as ∂L/∂z = grad / B.
//!
//! [`Guidance`] is the one guidance object of a run: the 2D loop
//! (`image2d`) and the 3D loop (`generate`) both hand it z, ε and t and get
//! the gradient back, so the two cannot drift apart (threestudio keeps one
//! guidance object for the same reason).
use serde::{Deserialize, Serialize};

use crate::diffusion::noise::NoiseMode;
use crate::diffusion::prompts::{NFSD_NEGATIVE, PromptBatch, PromptEmbeddings, PromptSpec, ViewDirection};
use crate::diffusion::schedule::{NoiseSchedule, Prediction};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::prior::Prior;
use crate::ops::fsd::{DistillGrad, distill_grad};
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
    /// What its gradient compares the prediction with.
    pub fn target(self) -> Target {
        match self {
            Method::Nfsd => Target::NegativePrompt,
            Method::Sds | Method::Fsd | Method::FsdConstant => Target::Noise,
        }
    }
}

/// What a method's gradient compares the prior's prediction with (FSD_SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// ε̂ − ε: the guided prediction against the noise that made x_t (SDS,
    /// and FSD with whatever noise the loop drew).
    Noise,
    /// NFSD: s·(ε_y − ε_∅) + (ε_∅ − ε_neg) against zero; ε_neg is the
    /// prediction for a negative prompt.
    NegativePrompt,
}

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

/// How a run guides: the same four numbers in 2D and 3D.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuidanceSettings {
    /// Classifier-free guidance scale s (diffusers' convention).
    pub scale: f32,
    pub target: Target,
    pub weighting: Weighting,
    /// Clamp each weighted gradient element to ±this (0: no clamp).
    pub grad_clip: f32,
}

/// A run's guidance: its prompts' embeddings, the noise schedule and the
/// settings, and the counter of non-finite gradient values.
pub struct Guidance<'a> {
    prior: &'a dyn Prior,
    schedule: NoiseSchedule,
    prompts: PromptEmbeddings,
    settings: GuidanceSettings,
    /// u32 [1]: non-finite gradient values since the run began.
    nonfinite: Tensor,
}

impl<'a> Guidance<'a> {
    /// Embeds the prompts once. `prompt.negative` is NFSD's negative prompt
    /// (its default list when None); other targets embed none.
    pub fn new(gpu: &Gpu, prior: &'a dyn Prior, prompt: &PromptSpec, settings: GuidanceSettings) -> Result<Guidance<'a>> {
        let negative = match settings.target {
            Target::NegativePrompt => Some(prompt.negative.unwrap_or(NFSD_NEGATIVE)),
            Target::Noise => None,
        };
        let prompts = PromptEmbeddings::new(gpu, prior, &PromptSpec { negative, ..*prompt })?;
        let schedule = NoiseSchedule::new(prior.scheduler_config())?;
        let nonfinite = gpu.upload_u32(&[0], &[1])?;
        Ok(Guidance { prior, schedule, prompts, settings, nonfinite })
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    pub fn settings(&self) -> &GuidanceSettings {
        &self.settings
    }

    /// The distillation gradient on z [B, ...] (f32) for noise ε at timestep
    /// t, the views' prompts picked by `views` (B of them): x_t = α_t·z + σ_t·ε
    /// → the prior's predictions → the target → `out_scale ·
    /// clamp(nan_to_zero(w(t)·(pred − target)), ±grad_clip)`. Non-finite
    /// values are zeroed and counted ([`Guidance::nonfinite_count`]).
    pub fn gradient(&self, gpu: &Gpu, z: &Tensor, eps: &Tensor, t: i64, views: &[ViewDirection], out_scale: f32) -> Result<Tensor> {
        if z.shape().first() != Some(&views.len()) {
            return Err(Error::Invalid(format!("guidance: z {:?} has a batch other than the {} views given", z.shape(), views.len())));
        }
        let x_t = noisy(gpu, &self.schedule, t, z, eps)?;
        let prompts = self.prompts.batch(gpu, views)?;
        let (pred, target) = self.prediction_and_target(gpu, t, &x_t, &prompts, eps)?;
        let g = DistillGrad { weight: self.settings.weighting.weight(&self.schedule, t) as f32, clip: self.settings.grad_clip, out_scale };
        distill_grad(gpu, &pred, &target, &g, &self.nonfinite)
    }

    /// The prediction and what it is compared with (FSD_SPEC §2).
    fn prediction_and_target(&self, gpu: &Gpu, t: i64, x_t: &Tensor, p: &PromptBatch, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        let (prior, s, scale) = (self.prior, &self.schedule, self.settings.scale);
        // Guidance::new embeds a negative prompt exactly for Target::NegativePrompt.
        match &p.negative {
            None => Ok((predict_epsilon(gpu, prior, s, t, x_t, &p.cond, Some(&p.uncond), scale)?, eps.clone())),
            Some(neg) => {
                // Three unguided predictions: s·(ε_y − ε_∅) + (ε_∅ − ε_neg), against zero.
                let ey = predict_epsilon(gpu, prior, s, t, x_t, &p.cond, None, 1.0)?;
                let e0 = predict_epsilon(gpu, prior, s, t, x_t, &p.uncond, None, 1.0)?;
                let en = predict_epsilon(gpu, prior, s, t, x_t, neg, None, 1.0)?;
                let guide = ew::axpby(gpu, scale, &ey, -scale, &e0)?;
                let shift = ew::sub(gpu, &e0, &en)?;
                Ok((ew::add(gpu, &guide, &shift)?, gpu.zeros(eps.shape(), DType::F32)?))
            }
        }
    }

    /// Non-finite gradient values zeroed so far (reads back: a sync point).
    pub fn nonfinite_count(&self, gpu: &Gpu) -> Result<u32> {
        Ok(gpu.download_u32(&self.nonfinite)?[0])
    }
}
