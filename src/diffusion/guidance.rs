//! The distillation gradients of FSD_SPEC §2: SDS, NFSD and FSD, with the
//! weightings w(t), and the CSD baseline of the paper's Figure 9. The UNet
//! Jacobian is skipped: the gradient on the render z is w(t)·(ε̂ − ε) (or
//! NFSD's or CSD's variant), written as ∂L/∂z = grad / B.
//!
//! [`Guidance`] is the one guidance object of a run: the 2D loop
//! (`image2d`) and the 3D loop (`generate`) both hand it z, ε and t and get
//! the gradient back, so the two cannot drift apart (threestudio keeps one
//! guidance object for the same reason).
use serde::{Deserialize, Serialize};

use crate::diffusion::noise::NoiseMode;
use crate::diffusion::prompts::{NFSD_NEGATIVE, PromptBatch, PromptEmbeddings, PromptSpec, ViewDirection};
use crate::diffusion::schedule::{NoiseSchedule, Prediction};
use crate::diffusion::vsd::{ParticleScore, VsdConfig};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::prior::{Prior, ViewCameras};
use crate::ops::fsd::{CfgRescale, DistillGrad, cfg_rescale, distill_grad};
use crate::ops::concat;
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
    /// Classifier score distillation (Yu et al. 2023), a Figure 9 baseline.
    Csd,
    /// Variational score distillation (ProlificDreamer, Wang et al. 2023),
    /// a Figure 9 baseline: the prior's guided ε̂ against a LoRA particle
    /// score trained on the renders (`vsd.rs`).
    Vsd,
}

impl Method {
    pub fn parse(s: &str) -> crate::Result<Method> {
        Ok(match s {
            "sds" => Method::Sds,
            "nfsd" => Method::Nfsd,
            "fsd" => Method::Fsd,
            "fsd-constant" => Method::FsdConstant,
            "csd" => Method::Csd,
            "vsd" => Method::Vsd,
            _ => return Err(crate::Error::Invalid(format!("unknown method {s:?}: expected sds, nfsd, fsd, fsd-constant, csd or vsd"))),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Sds => "sds",
            Method::Nfsd => "nfsd",
            Method::Fsd => "fsd",
            Method::FsdConstant => "fsd-constant",
            Method::Csd => "csd",
            Method::Vsd => "vsd",
        }
    }
    /// The noise each method adds.
    pub fn noise(self) -> NoiseMode {
        match self {
            Method::Sds | Method::Nfsd | Method::Csd | Method::Vsd => NoiseMode::Random,
            Method::Fsd => NoiseMode::WorldMap,
            Method::FsdConstant => NoiseMode::Constant,
        }
    }
    /// What its gradient compares the prediction with.
    pub fn target(self) -> Target {
        match self {
            Method::Nfsd => Target::NegativePrompt,
            Method::Csd => Target::ClassifierScore,
            Method::Vsd => Target::ParticleScore,
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
    /// CSD: the classifier score alone, ω₁·(ε_y − ε_∅) − ω₂·(ε_neg − ε_∅)
    /// against zero (the CSD paper's gradient with its negative-prompt term;
    /// ω₁ is the guidance scale, ω₂ [`GuidanceSettings::negative_weight`],
    /// and ε_neg is only predicted when ω₂ ≠ 0). SDS's gradient is this
    /// plus (ε_∅ − ε) at ω₂ = 0: CSD drops the part that pulls towards the
    /// unconditional prediction.
    ClassifierScore,
    /// VSD: the guided ε̂ against the particle score ε_lora(x_t, y, c), a
    /// LoRA copy of the prior trained on the renders ([`ParticleScore`]).
    ParticleScore,
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
/// model in its own dtype and converts v- or x̂₀-predictions to ε. A
/// multi-view prior takes the views' cameras.
#[allow(clippy::too_many_arguments)]
pub fn predict_epsilon(
    gpu: &Gpu,
    prior: &dyn Prior,
    s: &NoiseSchedule,
    t: i64,
    x_t: &Tensor,
    cond: &Tensor,
    uncond: Option<&Tensor>,
    cfg: f32,
    views: Option<&ViewCameras>,
) -> Result<Tensor> {
    let xin = gpu.to_dtype(x_t, prior.dtype())?;
    let out = gpu.to_dtype(&prior.predict(gpu, &xin, t as f32, cond, uncond, cfg, views)?, DType::F32)?;
    to_epsilon(gpu, s, t, x_t, &out)
}

/// The prior's unguided ε̂ (f32) at x_t for each of `embeddings`, from one
/// model call on the batch [x_t; x_t; …] (as CFG batches its pair): one
/// pass instead of one per prompt.
pub fn predict_epsilons(gpu: &Gpu, prior: &dyn Prior, s: &NoiseSchedule, t: i64, x_t: &Tensor, embeddings: &[&Tensor], views: Option<&ViewCameras>) -> Result<Vec<Tensor>> {
    let n = embeddings.len();
    let x_n = concat::concat(gpu, &vec![x_t; n], 0)?;
    let context = concat::concat(gpu, embeddings, 0)?;
    let views_n = views.map(|v| v.repeated(gpu, n)).transpose()?;
    let eps = predict_epsilon(gpu, prior, s, t, &x_n, &context, None, 1.0, views_n.as_ref())?;
    concat::split_equal(gpu, &eps, 0, n)
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
    /// CSD's ω₂, the weight of the negative prompt's classifier score
    /// (0: no negative term). Other targets ignore it.
    pub negative_weight: f32,
    /// φ of the CFG rescale of x̂₀ per object: over the views of each object
    /// for a multi-view prior, per image otherwise (threestudio's MVDream
    /// `recon_std_rescale`; 0: plain CFG). Only the ε̂ − ε target (SDS, FSD)
    /// uses it.
    pub rescale: f32,
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
    /// VSD's particle score (the ParticleScore target only).
    particle: Option<ParticleScore>,
}

impl<'a> Guidance<'a> {
    /// Embeds the prompts once. `prompt.negative` is NFSD's negative prompt,
    /// and CSD's when its ω₂ ≠ 0 (NFSD's default list when None); other
    /// targets embed none.
    pub fn new(gpu: &Gpu, prior: &'a dyn Prior, prompt: &PromptSpec, settings: GuidanceSettings) -> Result<Guidance<'a>> {
        let uses_negative = match settings.target {
            Target::NegativePrompt => true,
            Target::ClassifierScore => settings.negative_weight != 0.0,
            Target::Noise | Target::ParticleScore => false,
        };
        let negative = uses_negative.then(|| prompt.negative.unwrap_or(NFSD_NEGATIVE));
        let prompts = PromptEmbeddings::new(gpu, prior, &PromptSpec { negative, ..*prompt })?;
        let schedule = NoiseSchedule::new(prior.scheduler_config())?;
        let nonfinite = gpu.upload_u32(&[0], &[1])?;
        Ok(Guidance { prior, schedule, prompts, settings, nonfinite, particle: None })
    }

    /// Gives a VSD run its particle score: a fresh LoRA adapter on the
    /// prior's UNet. Refused for priors without one and for multi-view priors.
    pub fn with_particle(mut self, gpu: &Gpu, cfg: &VsdConfig, seed: u64) -> Result<Self> {
        if self.prior.num_frames().is_some() {
            return Err(Error::Invalid("vsd: the particle score is built for text-to-image priors; this one is multi-view".into()));
        }
        let unet = self.prior.unet().ok_or_else(|| Error::Invalid("vsd: the prior has no UNet to adapt".into()))?;
        self.particle = Some(ParticleScore::new(gpu, unet, cfg, seed)?);
        Ok(self)
    }

    /// The particle score, for VSD runs.
    pub fn particle(&self) -> Option<&ParticleScore> {
        self.particle.as_ref()
    }
    pub fn particle_mut(&mut self) -> Option<&mut ParticleScore> {
        self.particle.as_mut()
    }

    /// One training step of VSD's particle score on the renders' samples z
    /// (f32, detached) for `views`, with their cameras [B, 16]; returns its
    /// loss ([1] on the device). Nothing to do (None) for other methods.
    pub fn train_particle(&mut self, gpu: &Gpu, z: &Tensor, views: &[ViewDirection], cameras: Option<&Tensor>, step: u64) -> Result<Option<Tensor>> {
        let Some(particle) = self.particle.as_mut() else { return Ok(None) };
        let unet = self.prior.unet().ok_or_else(|| Error::Invalid("vsd: the prior has no UNet to adapt".into()))?;
        let prompts = self.prompts.batch(gpu, views)?;
        particle.train_step(gpu, unet, &self.schedule, z, &prompts.cond, cameras, step).map(Some)
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
    ///
    /// A multi-view prior takes the views' cameras in `cameras`.
    #[allow(clippy::too_many_arguments)]
    pub fn gradient(
        &self,
        gpu: &Gpu,
        z: &Tensor,
        eps: &Tensor,
        t: i64,
        views: &[ViewDirection],
        cameras: Option<&ViewCameras>,
        out_scale: f32,
    ) -> Result<Tensor> {
        if z.shape().first() != Some(&views.len()) {
            return Err(Error::Invalid(format!("guidance: z {:?} has a batch other than the {} views given", z.shape(), views.len())));
        }
        let x_t = noisy(gpu, &self.schedule, t, z, eps)?;
        let prompts = self.prompts.batch(gpu, views)?;
        let (pred, target) = self.prediction_and_target(gpu, t, &x_t, &prompts, eps, cameras)?;
        let g = DistillGrad { weight: self.settings.weighting.weight(&self.schedule, t) as f32, clip: self.settings.grad_clip, out_scale };
        distill_grad(gpu, &pred, &target, &g, &self.nonfinite)
    }

    /// The prediction and what it is compared with (FSD_SPEC §2).
    fn prediction_and_target(&self, gpu: &Gpu, t: i64, x_t: &Tensor, p: &PromptBatch, eps: &Tensor, cameras: Option<&ViewCameras>) -> Result<(Tensor, Tensor)> {
        let (prior, s, scale) = (self.prior, &self.schedule, self.settings.scale);
        match self.settings.target {
            // The rescaled CFG needs ε_y and ε_∅ apart: the same one model
            // call on [x_t; x_t], combined by the rescale kernel.
            Target::Noise if self.settings.rescale > 0.0 => {
                let frames = cameras.map_or(1, |c| c.frames);
                let e = predict_epsilons(gpu, prior, s, t, x_t, &[&p.cond, &p.uncond], cameras)?;
                let k = CfgRescale { scale, alpha: s.alpha(t) as f32, sigma: s.sigma(t) as f32, phi: self.settings.rescale };
                Ok((cfg_rescale(gpu, x_t, &e[0], &e[1], frames, &k)?, eps.clone()))
            }
            Target::Noise => Ok((predict_epsilon(gpu, prior, s, t, x_t, &p.cond, Some(&p.uncond), scale, cameras)?, eps.clone())),
            // VSD: the guided prediction against the particle score; the
            // cameras condition the particle, not the (text-to-image) prior.
            Target::ParticleScore => {
                let particle = self.particle.as_ref().ok_or_else(|| Error::Invalid("vsd: the guidance has no particle score (Guidance::with_particle)".into()))?;
                let unet = prior.unet().ok_or_else(|| Error::Invalid("vsd: the prior has no UNet to adapt".into()))?;
                let pred = predict_epsilon(gpu, prior, s, t, x_t, &p.cond, Some(&p.uncond), scale, None)?;
                let target = particle.predict(gpu, unet, s, t, x_t, &p.cond, &p.uncond, cameras.map(|c| &c.camera))?;
                Ok((pred, target))
            }
            // Both compare the classifier score s·(ε_y − ε_∅), shifted by a
            // negative prompt's, with zero. Guidance::new embeds the negative
            // prompt for NFSD, and for CSD when its ω₂ ≠ 0.
            Target::NegativePrompt | Target::ClassifierScore => {
                let mut embeddings = vec![&p.cond, &p.uncond];
                embeddings.extend(p.negative.as_ref());
                let eps_hat = predict_epsilons(gpu, prior, s, t, x_t, &embeddings, cameras)?;
                let (ey, e0) = (&eps_hat[0], &eps_hat[1]);
                let score = ew::axpby(gpu, scale, ey, -scale, e0)?;
                let pred = match (self.settings.target, eps_hat.get(2)) {
                    // NFSD: + (ε_∅ − ε_neg).
                    (Target::NegativePrompt, Some(en)) => ew::add(gpu, &score, &ew::sub(gpu, e0, en)?)?,
                    (Target::NegativePrompt, None) => return Err(Error::Invalid("NFSD without a negative prompt".into())),
                    // CSD: − ω₂·(ε_neg − ε_∅).
                    (_, Some(en)) => {
                        let w2 = self.settings.negative_weight;
                        ew::sub(gpu, &score, &ew::axpby(gpu, w2, en, -w2, e0)?)?
                    }
                    (_, None) => score,
                };
                Ok((pred, gpu.zeros(eps.shape(), DType::F32)?))
            }
        }
    }

    /// Non-finite gradient values zeroed so far (reads back: a sync point).
    pub fn nonfinite_count(&self, gpu: &Gpu) -> Result<u32> {
        Ok(gpu.download_u32(&self.nonfinite)?[0])
    }
}
