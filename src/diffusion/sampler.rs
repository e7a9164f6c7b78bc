//! DDIM text-to-image sampling, step for step as diffusers'
//! StableDiffusionPipeline with a DDIMScheduler (η = 0).
use crate::diffusion::schedule::Ddim;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::models::prior::Prior;
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
    pub seed: u64,
    /// Initial noise [1, C, h, w] (before `init_noise_sigma`); None = seeded.
    pub latents: Option<Vec<f32>>,
}

/// Runs the sampler; returns the image [1, 3, H, W] in [-1, 1].
/// `on_step(i, n)` is called after each step is recorded (for progress).
pub fn ddim_sample(gpu: &Gpu, prior: &dyn Prior, req: &SampleRequest, mut on_step: impl FnMut(usize, usize)) -> Result<Tensor> {
    let ddim = Ddim::new(prior.scheduler_config(), req.steps)?;
    let [c, h, w] = prior.sample_shape();
    let shape = [1, c, h, w];
    let dtype = prior.dtype();
    let noise = match &req.latents {
        Some(v) => {
            if v.len() != c * h * w {
                return Err(crate::Error::shape("sample", format!("latents have {} values, the model samples {shape:?}", v.len())));
            }
            gpu.upload(v, &shape, dtype)?
        }
        None => dops::randn(gpu, &shape, dtype, NoiseKey { seed: req.seed, step: 0, purpose: NoisePurpose::InitialLatents })?,
    };
    let mut x = ew::scale(gpu, &noise, ddim.init_noise_sigma() as f32)?;
    let cond = prior.embed(gpu, &[req.prompt.as_str()])?;
    let guided = req.cfg > 1.0;
    let uncond = if guided { Some(prior.embed(gpu, &[req.negative.as_deref().unwrap_or("")])?) } else { None };
    let n = ddim.timesteps.len();
    for (i, &t) in ddim.timesteps.iter().enumerate() {
        let out = prior.predict(gpu, &x, t as f32, &cond, uncond.as_ref(), req.cfg)?;
        x = dops::ddim_step(gpu, &x, &out, &ddim.coefficients(t))?;
        // One submit per step keeps memory bounded and the progress bar honest.
        gpu.flush()?;
        on_step(i + 1, n);
    }
    prior.to_image(gpu, &x)
}
