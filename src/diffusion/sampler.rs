//! DDIM text-to-image sampling, step for step as diffusers'
//! StableDiffusionPipeline with a DDIMScheduler: deterministic (η = 0), or
//! stochastic (η > 0; η = 1 is DDPM's ancestral sampler on the DDIM grid),
//! whose noise is keyed by the request's seed and the step. It draws at any
//! size the model allows (`diffusion::size`), as the pipeline does.
//!
//! A multi-view prior (MVDream) draws each request as one object seen from
//! its `f` views together: [`sample_views`] cameras, elevation 15° and
//! azimuths 0°, 360/f°, … (MVDream's own sampling), one noise draw of
//! `[f, C, h, w]` per seed.
use crate::diffusion::prompts::SamplerEmbeddings;
use crate::diffusion::schedule::Ddim;
use crate::diffusion::size::{ImageSize, Latents, SampleGeometry};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::prior::{Prior, ViewCameras};
use crate::ops::concat;
use crate::ops::diffusion::{self as dops, NoiseKey, NoisePurpose};
use crate::ops::elementwise as ew;

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    pub prompt: String,
    /// Negative prompt; None encodes "" as diffusers does.
    pub negative: Option<String>,
    pub steps: usize,
    /// Guidance scale s (diffusers' convention); guidance is off for s <= 1.
    pub cfg: f32,
    /// DDIM's η: 0 deterministic, 1 ancestral (noise drawn from `seed` at every
    /// step, also when `latents` give the initial noise).
    pub eta: f32,
    pub seed: u64,
    /// Image height and width in pixels (diffusers' `height=`, `width=`);
    /// a side left out is the model's default, or the latents' own.
    pub size: ImageSize,
    /// Initial noise [1, C, h, w] (before `init_noise_sigma`), whose spatial
    /// size sets the image's; None = seeded noise at `size`.
    pub latents: Option<Latents>,
}

/// The cameras a multi-view prior's samples are drawn from: `frames` views
/// at elevation 15°, azimuths 360/frames apart from 0° (the front), at the
/// distance and fovy of the default evaluation orbit (the camera input
/// normalises the distance away).
pub fn sample_views(frames: usize) -> Vec<crate::scene::Camera> {
    (0..frames).map(|k| crate::scene::Camera::orbit(15.0, 360.0 * k as f32 / frames as f32, 1.5, 40.0)).collect()
}

/// Runs the sampler; returns the image [1, 3, H, W] in [-1, 1] (a
/// multi-view prior's `f` views: [f, 3, H, W], the front first).
/// `on_step(i, n)` is called after each step is recorded (for progress).
pub fn ddim_sample(gpu: &Gpu, prior: &dyn Prior, req: &SampleRequest, on_step: impl FnMut(usize, usize)) -> Result<Tensor> {
    ddim_sample_batch(gpu, prior, std::slice::from_ref(req), on_step)
}

/// Samples a batch in one run of the sampler: image k of the result
/// `[B, 3, H, W]` (in [-1, 1]) is what [`ddim_sample`] gives for `reqs[k]`
/// alone (its own prompt, seed or latents), one UNet call per step for all of
/// them. A multi-view prior's result is `[B·f, 3, H, W]`, request k's views
/// at `k·f..(k+1)·f`. The requests must agree on the steps, the guidance scale, η, the
/// negative prompt and the size, which the batch shares.
pub fn ddim_sample_batch(gpu: &Gpu, prior: &dyn Prior, reqs: &[SampleRequest], mut on_step: impl FnMut(usize, usize)) -> Result<Tensor> {
    let first = reqs.first().ok_or_else(|| Error::Invalid("sample: an empty batch".into()))?;
    let _phase = gpu.memory_phase(crate::gpu::MemoryPhase::SAMPLING);
    if let Some(r) = reqs.iter().find(|r| r.steps != first.steps || r.cfg != first.cfg || r.eta != first.eta || r.negative != first.negative) {
        return Err(Error::Invalid(format!(
            "sample: a batch shares steps, guidance scale, eta and negative prompt; {:?} has ({}, {}, {}, {:?}), {:?} has ({}, {}, {}, {:?})",
            first.prompt, first.steps, first.cfg, first.eta, first.negative, r.prompt, r.steps, r.cfg, r.eta, r.negative
        )));
    }
    if !(first.eta.is_finite() && first.eta >= 0.0) {
        return Err(Error::Invalid(format!("sample: eta must be a number >= 0 (0 = deterministic DDIM, 1 = ancestral), got {}", first.eta)));
    }
    let ddim = Ddim::new(prior.scheduler_config(), first.steps)?;
    let geometry = SampleGeometry::of(prior);
    let shapes = reqs.iter().map(|r| geometry.resolve(r.size, r.latents.as_ref())).collect::<Result<Vec<_>>>()?;
    if let Some((r, s)) = reqs.iter().zip(&shapes).find(|(_, s)| **s != shapes[0]) {
        let f = geometry.scale_factor;
        return Err(Error::Invalid(format!(
            "sample: a batch shares its image size; {:?} is {}×{}, {:?} is {}×{}",
            first.prompt,
            shapes[0][1] * f,
            shapes[0][2] * f,
            r.prompt,
            s[1] * f,
            s[2] * f
        )));
    }
    let [c, h, w] = shapes[0];
    let frames = prior.num_frames().unwrap_or(1);
    let one = [frames, c, h, w];
    if frames > 1 && reqs.iter().any(|r| r.latents.is_some()) {
        return Err(Error::Invalid(format!("sample: a multi-view prior draws {frames} views a sample from its seed; initial latents are not supported for it")));
    }
    let dtype = prior.dtype();
    let noises = reqs
        .iter()
        .map(|req| match &req.latents {
            Some(l) => gpu.upload(l.data(), &one, dtype),
            None => dops::randn(gpu, &one, dtype, NoiseKey { seed: req.seed, step: 0, purpose: NoisePurpose::InitialLatents }),
        })
        .collect::<Result<Vec<_>>>()?;
    let noise = batch_of(gpu, noises)?;
    let mut x = ew::scale(gpu, &noise, ddim.init_noise_sigma() as f32)?;
    // Every view of a request has its prompt.
    let prompts: Vec<&str> = reqs.iter().flat_map(|r| std::iter::repeat_n(r.prompt.as_str(), frames)).collect();
    let SamplerEmbeddings { cond, uncond } = SamplerEmbeddings::new(gpu, prior, &prompts, first.negative.as_deref(), first.cfg)?;
    let views = match prior.num_frames() {
        Some(f) => Some(ViewCameras::new(gpu, &sample_views(f).repeat(reqs.len()), f)?),
        None => None,
    };
    let n = ddim.timesteps.len();
    for (i, &t) in ddim.timesteps.iter().enumerate() {
        let out = prior.predict(gpu, &x, t as f32, &cond, uncond.as_ref(), first.cfg, views.as_ref())?;
        let coefficients = ddim.coefficients_with_eta(t, first.eta as f64);
        // Each request draws its step noise from its own seed, so a sample does
        // not depend on the batch it was drawn in.
        let step_noise = if coefficients.sigma > 0.0 {
            let key = |seed| NoiseKey { seed, step: i as u32 + 1, purpose: NoisePurpose::SamplerNoise };
            Some(batch_of(gpu, reqs.iter().map(|r| dops::randn(gpu, &one, dtype, key(r.seed))).collect::<Result<Vec<_>>>()?)?)
        } else {
            None
        };
        x = dops::ddim_step(gpu, &x, &out, &coefficients, step_noise.as_ref())?;
        // One submit per step keeps memory bounded and the progress bar honest.
        gpu.flush()?;
        on_step(i + 1, n);
    }
    prior.to_image(gpu, &x)
}

/// One tensor along dim 0 from per-request tensors.
fn batch_of(gpu: &Gpu, parts: Vec<Tensor>) -> Result<Tensor> {
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap());
    }
    concat::concat(gpu, &parts.iter().collect::<Vec<_>>(), 0)
}
