//! `fsd3d image`, 2D distillation (the paper's §3 and Table 3): optimise one
//! image (pixel priors) or its latent (latent priors) with a distillation
//! gradient. The gradient is the run's `diffusion::guidance::Guidance`, the
//! same as the 3D loop's (`generate`); only what is optimised differs.
//!
//! - `sds`, `nfsd`, `fsd`: Adam on x̂ with the method's gradient and noise
//!   (FSD: one fixed ε̃ for the whole run, as a single view's world-map noise is);
//! - `fsd-euler`: FSD's first-order update (Eq. 26), which reproduces DDIM
//!   (Proposition 1) from the same ε̃ and timesteps;
//! - `ddim`: the sampler itself, for reference.
use crate::diffusion::guidance::{Guidance, GuidanceSettings, Target, Weighting, noisy, predict_epsilon};
use crate::diffusion::prompts::{PromptSpec, SamplerEmbeddings, ViewDirection};
use crate::diffusion::sampler::{SampleRequest, ddim_sample};
use crate::diffusion::schedule::{Ddim, NoiseSchedule};
use crate::diffusion::size::{ImageSize, SampleGeometry};
use crate::diffusion::timesteps::{TimestepSchedule, uniform};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::prior::Prior;
use crate::ops::adam::{AdamHyper, adam_step};
use crate::ops::diffusion::{self as dops, NoiseKey, NoisePurpose};
use crate::ops::elementwise as ew;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method2d {
    Sds,
    Nfsd,
    Fsd,
    FsdEuler,
    Ddim,
    /// Classifier score distillation, without its negative term in 2D.
    Csd,
}

impl Method2d {
    /// What an Adam method's gradient compares the prediction with (None for
    /// fsd-euler and ddim, which take no gradient).
    pub fn target(self) -> Option<Target> {
        match self {
            Method2d::Sds | Method2d::Fsd => Some(Target::Noise),
            Method2d::Nfsd => Some(Target::NegativePrompt),
            Method2d::Csd => Some(Target::ClassifierScore),
            Method2d::FsdEuler | Method2d::Ddim => None,
        }
    }

    pub fn parse(s: &str) -> Result<Method2d> {
        Ok(match s {
            "sds" => Method2d::Sds,
            "nfsd" => Method2d::Nfsd,
            "fsd" => Method2d::Fsd,
            "fsd-euler" => Method2d::FsdEuler,
            "ddim" => Method2d::Ddim,
            "csd" => Method2d::Csd,
            _ => return Err(Error::Invalid(format!("unknown 2D method {s:?}: expected sds, nfsd, fsd, fsd-euler, ddim or csd"))),
        })
    }
}

/// One 2D run. [`Image2dConfig::paper_defaults`] gives Table 3's settings.
#[derive(Clone, Debug)]
pub struct Image2dConfig {
    pub method: Method2d,
    /// Optimisation steps (Adam methods) or sampler steps (fsd-euler, ddim).
    pub steps: usize,
    /// Guidance scale, diffusers' convention.
    pub cfg: f32,
    pub lr: f32,
    pub seed: u64,
    pub timesteps: TimestepSchedule,
    pub weighting: Weighting,
    /// NFSD's negative prompt; the sampler's negative prompt for ddim.
    pub negative: Option<String>,
    /// Image size in pixels; the optimised latent (latent priors) is this
    /// over the VAE's scale factor. Default: the prior's.
    pub size: ImageSize,
}

impl Image2dConfig {
    /// Table 3: 500 iterations with Adam and linear annealing; SDS CFG 100
    /// lr 2e-2; NFSD CFG 7.5 lr 2e-2; FSD CFG 7.5 lr 3e-3; DDIM 50 steps CFG 7.5.
    pub fn paper_defaults(method: Method2d) -> Image2dConfig {
        let (steps, cfg, lr) = match method {
            Method2d::Sds => (500, 100.0, 2e-2),
            Method2d::Nfsd => (500, 7.5, 2e-2),
            // Not in Table 3: NFSD's, the other method with a zero target.
            Method2d::Csd => (500, 7.5, 2e-2),
            Method2d::Fsd => (500, 7.5, 3e-3),
            Method2d::FsdEuler | Method2d::Ddim => (50, 7.5, 0.0),
        };
        Image2dConfig {
            method,
            steps,
            cfg,
            lr,
            seed: 0,
            timesteps: TimestepSchedule::Linear { t_min: 0.02, t_max: 0.98 },
            weighting: Weighting::Sds,
            negative: None,
            size: ImageSize::default(),
        }
    }
}

/// Runs a 2D distillation; returns the image [1, 3, H, W] in [-1, 1].
/// `on_step(done, total, t)` reports progress after each recorded step.
pub fn distill_image(gpu: &Gpu, prior: &dyn Prior, prompt: &str, c: &Image2dConfig, mut on_step: impl FnMut(usize, usize, i64)) -> Result<Tensor> {
    if c.steps == 0 {
        return Err(Error::Invalid("2D distillation needs at least one step".into()));
    }
    match c.method {
        Method2d::Ddim => {
            let req = SampleRequest {
                prompt: prompt.into(),
                negative: c.negative.clone(),
                steps: c.steps,
                cfg: c.cfg,
                // The paper's DDIM reference image is the deterministic sampler's.
                eta: 0.0,
                seed: c.seed,
                size: c.size,
                latents: None,
            };
            ddim_sample(gpu, prior, &req, |i, n| on_step(i, n, 0))
        }
        Method2d::FsdEuler => fsd_euler(gpu, prior, prompt, c, on_step),
        _ => adam_run(gpu, prior, prompt, c, on_step),
    }
}

/// The shape [1, C, h, w] of the optimised sample for the run's image size.
fn sample_shape(prior: &dyn Prior, c: &Image2dConfig) -> Result<[usize; 4]> {
    let [ch, h, w] = SampleGeometry::of(prior).resolve(c.size, None)?;
    Ok([1, ch, h, w])
}

/// The run's fixed noise ε̃: the same stream DDIM starts from with this seed.
fn fixed_noise(gpu: &Gpu, shape: &[usize; 4], seed: u64) -> Result<Tensor> {
    dops::randn(gpu, shape, DType::F32, NoiseKey { seed, step: 0, purpose: NoisePurpose::InitialLatents })
}


/// Eq. 26 with the clipping of FSD_SPEC §3: from x̂_s at timestep s,
/// x̂_gt = (x_s − σ_s·ε̂)/α_s, x̂_p = clip(x̂_gt) + (σ_p/α_p)·(ε̂ − ε̃).
fn fsd_euler(gpu: &Gpu, prior: &dyn Prior, prompt: &str, c: &Image2dConfig, mut on_step: impl FnMut(usize, usize, i64)) -> Result<Tensor> {
    let ddim = Ddim::new(prior.scheduler_config(), c.steps)?;
    let s = &ddim.schedule;
    let eps_fixed = fixed_noise(gpu, &sample_shape(prior, c)?, c.seed)?;
    // The sampler's prompts (a negative prompt is CFG's unconditional branch), as DDIM has them.
    let prompts = SamplerEmbeddings::new(gpu, prior, &[prompt], c.negative.as_deref(), c.cfg)?;
    // x̂_T = (1 − σ_T)·ε̃ / α_T makes x_T = α_T·x̂_T + σ_T·ε̃ = ε̃, DDIM's start.
    let t0 = ddim.timesteps[0];
    let mut xhat = ew::scale(gpu, &eps_fixed, ((1.0 - s.sigma(t0)) / s.alpha(t0)) as f32)?;
    let clip = prior.scheduler_config().clip_sample.then_some(prior.scheduler_config().clip_sample_range as f32);
    let n = ddim.timesteps.len();
    for (i, &t) in ddim.timesteps.iter().enumerate() {
        let x_t = noisy(gpu, s, t, &xhat, &eps_fixed)?;
        let eps = predict_epsilon(gpu, prior, s, t, &x_t, &prompts.cond, prompts.uncond.as_ref(), c.cfg, None)?;
        let mut xgt = ew::axpby(gpu, (1.0 / s.alpha(t)) as f32, &x_t, (-s.sigma(t) / s.alpha(t)) as f32, &eps)?;
        if let Some(r) = clip {
            xgt = ew::clamp(gpu, &xgt, -r, r)?;
        }
        let p = ddim.prev_timestep(t);
        let diff = ew::sub(gpu, &eps, &eps_fixed)?;
        xhat = ew::axpby(gpu, 1.0, &xgt, (s.sigma(p) / s.alpha(p)) as f32, &diff)?;
        gpu.flush()?;
        on_step(i + 1, n, t);
    }
    // The image DDIM returns: x_p = α_p·x̂_p + σ_p·ε̃ at the final ᾱ.
    let last = ddim.prev_timestep(*ddim.timesteps.last().unwrap());
    let x = noisy(gpu, s, last, &xhat, &eps_fixed)?;
    prior.to_image(gpu, &gpu.to_dtype(&x, prior.dtype())?)
}

/// The Adam methods' guidance: what turns x̂, ε and t into the gradient,
/// the same [`Guidance`] as the 3D loop's.
pub struct AdamGuidance<'a> {
    guidance: Guidance<'a>,
}

impl<'a> AdamGuidance<'a> {
    /// The guidance of `c`'s method (sds, nfsd, fsd or csd) for `prompt`;
    /// `c.negative` is NFSD's negative prompt. A 2D image is not
    /// view-dependent and its gradient is not clamped.
    pub fn new(gpu: &Gpu, prior: &'a dyn Prior, prompt: &str, c: &Image2dConfig) -> Result<AdamGuidance<'a>> {
        let target = c.method.target().ok_or_else(|| {
            Error::Invalid(format!("2D method {:?} takes no gradient steps: only sds, nfsd, fsd and csd run Adam", c.method))
        })?;
        let spec = PromptSpec { prompt, view_dependent: false, negative: c.negative.as_deref() };
        let settings = GuidanceSettings { scale: c.cfg, target, weighting: c.weighting, grad_clip: 0.0, negative_weight: 0.0, rescale: 0.0 };
        Ok(AdamGuidance { guidance: Guidance::new(gpu, prior, &spec, settings)? })
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        self.guidance.schedule()
    }

    /// The gradient on x̂ [1, C, h, w] for noise ε at timestep t: what one Adam step gets.
    pub fn gradient(&self, gpu: &Gpu, xhat: &Tensor, eps: &Tensor, t: i64) -> Result<Tensor> {
        // A 2D image has no camera: the one view has the default direction.
        self.guidance.gradient(gpu, xhat, eps, t, &[ViewDirection::default()], None, 1.0)
    }
}

fn adam_run(gpu: &Gpu, prior: &dyn Prior, prompt: &str, c: &Image2dConfig, mut on_step: impl FnMut(usize, usize, i64)) -> Result<Tensor> {
    c.timesteps.check()?;
    let guidance = AdamGuidance::new(gpu, prior, prompt, c)?;
    let shape = sample_shape(prior, c)?;
    let xhat = gpu.zeros(&shape, DType::F32)?;
    let m = gpu.zeros(&shape, DType::F32)?;
    let v = gpu.zeros(&shape, DType::F32)?;
    let eps_fixed = fixed_noise(gpu, &shape, c.seed)?;
    let hyper = AdamHyper { lr: c.lr, beta1: 0.9, beta2: 0.99, eps: 1e-15 };
    let train_timesteps = guidance.schedule().num_train_timesteps();
    for step in 0..c.steps {
        let t = c.timesteps.timestep(step as u64, c.steps as u64, train_timesteps, uniform(c.seed, step as u64));
        let eps = match c.method {
            Method2d::Fsd => eps_fixed.clone(),
            _ => dops::randn(gpu, &shape, DType::F32, NoiseKey { seed: c.seed, step: step as u32, purpose: NoisePurpose::DistillNoise })?,
        };
        let grad = guidance.gradient(gpu, &xhat, &eps, t)?;
        adam_step(gpu, &xhat, &grad, &m, &v, &hyper, step as u64 + 1, 1.0)?;
        gpu.flush()?;
        on_step(step + 1, c.steps, t);
    }
    prior.to_image(gpu, &gpu.to_dtype(&xhat, prior.dtype())?)
}
