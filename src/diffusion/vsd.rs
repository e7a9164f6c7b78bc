//! VSD's particle score (ProlificDreamer, a baseline of the paper's Figure
//! 9): a LoRA adapter on the prior's own UNet, conditioned on the camera,
//! trained on the current renders with the denoising loss, so that it
//! scores the distribution of what the scene renders. VSD's gradient is the
//! frozen prior's guided ε̂ minus this particle score (`guidance.rs`).
//!
//! threestudio's `prolificdreamer` settings are the defaults ([`VsdConfig`]):
//! rank 4 on every attention projection (to_q, to_k, to_v, to_out), the
//! camera as the class condition (its 16 numbers through an MLP into the
//! time embedding), zeroed for the whole batch one step in ten, Adam at
//! 1e-4, t drawn uniformly over the whole training range, the loss on the
//! model's own parameterisation (ε or v).
//!
//! Differences from threestudio, by choice: one t for the batch rather than
//! one per view, and Adam without AdamW's weight decay.
use serde::{Deserialize, Serialize};

use crate::diffusion::guidance::{noisy, to_epsilon};
use crate::diffusion::schedule::{NoiseSchedule, Prediction};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::lora::{CAMERA_TENSORS, Lora};
use crate::models::unet::{Extras, UNet};
use crate::ops::elementwise as ew;
use crate::ops::pool::global_avg_pool;
use crate::scene::camera::{normal, purpose, rng_for};
use crate::scene::optim::{Adam, AdamConfig};

/// The particle score's settings (`[vsd]` of a run's config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VsdConfig {
    /// The adapter's rank r.
    pub lora_rank: usize,
    /// Its alpha: the delta is (alpha / r)·(x·Aᵀ)·Bᵀ (diffusers' LoRA
    /// attention processors without network_alpha: alpha = r).
    pub lora_alpha: f32,
    /// Adam's learning rate for the adapter.
    pub lora_lr: f32,
    /// Condition the adapter on the camera (threestudio's
    /// `camera_condition_type: extrinsics`).
    pub camera_condition: bool,
    /// The probability that a step trains the adapter without cameras.
    pub camera_dropout: f32,
    /// The adapter's guidance scale: ε_lora = ε_∅ + s·(ε_y − ε_∅); at 1 (the
    /// default) only ε_y is predicted.
    pub lora_cfg: f32,
}

impl Default for VsdConfig {
    fn default() -> Self {
        VsdConfig { lora_rank: 4, lora_alpha: 4.0, lora_lr: 1e-4, camera_condition: true, camera_dropout: 0.1, lora_cfg: 1.0 }
    }
}

impl VsdConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f32| v.is_finite() && v > 0.0;
        let valid = self.lora_rank > 0
            && positive(self.lora_alpha)
            && positive(self.lora_lr)
            && (0.0..=1.0).contains(&self.camera_dropout)
            && self.lora_cfg.is_finite();
        if !valid {
            return Err(Error::Invalid(format!(
                "[vsd]: lora_rank must be ≥ 1, lora_alpha and lora_lr > 0, camera_dropout in [0, 1] and lora_cfg finite; got {self:?}"
            )));
        }
        Ok(())
    }
}

/// The adapter, its optimiser, and the stream its training draws from.
pub struct ParticleScore {
    pub lora: Lora,
    adam: Adam,
    cfg: VsdConfig,
    seed: u64,
}

impl ParticleScore {
    /// A fresh adapter on `unet` (it starts as the UNet: B = 0).
    pub fn new(gpu: &Gpu, unet: &UNet, cfg: &VsdConfig, seed: u64) -> Result<ParticleScore> {
        cfg.validate()?;
        let lora = Lora::init(gpu, unet, cfg.lora_rank, cfg.lora_alpha, cfg.camera_condition, seed)?;
        let mut adam = Adam::new(&AdamConfig { betas: [0.9, 0.99], eps: 1e-15, ..Default::default() });
        for (name, t) in lora.parameters() {
            adam.add_group(gpu, &name, t, cfg.lora_lr)?;
        }
        Ok(ParticleScore { lora, adam, cfg: cfg.clone(), seed })
    }

    /// What a checkpoint keeps of it: the factors and Adam's moments, under
    /// `vsd.` (`vsd.lora.<projection>.A`, `….exp_avg`, …).
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        self.adam.state_tensors().into_iter().map(|(n, t)| (format!("vsd.{n}"), t)).collect()
    }

    /// Adam's steps so far (the bias correction depends on it).
    pub fn adam_step(&self) -> u64 {
        self.adam.step
    }

    /// Restores what [`ParticleScore::state_tensors`] and
    /// [`ParticleScore::adam_step`] saved.
    pub fn restore(&mut self, gpu: &Gpu, ck: &crate::scene::optim::Checkpoint, adam_step: u64) -> Result<()> {
        for (name, t) in self.state_tensors() {
            ck.restore(gpu, &name, t)?;
        }
        self.adam.step = adam_step;
        self.adam.zero_grad(gpu)
    }

    /// The cameras the adapter sees, None without a camera condition.
    fn cameras<'c>(&self, cameras: Option<&'c Tensor>) -> Option<&'c Tensor> {
        cameras.filter(|_| self.lora.camera.is_some())
    }

    /// The particle score ε_lora (f32) at x_t (f32) for the text `cond`
    /// (and, when its scale is not 1, `uncond`), at timestep t, with the
    /// views' cameras [B, 16].
    #[allow(clippy::too_many_arguments)]
    pub fn predict(&self, gpu: &Gpu, unet: &UNet, s: &NoiseSchedule, t: i64, x_t: &Tensor, cond: &Tensor, uncond: &Tensor, cameras: Option<&Tensor>) -> Result<Tensor> {
        let b = x_t.dim(0);
        let cams = self.cameras(cameras);
        let run = |ctx: &Tensor| -> Result<Tensor> {
            let ts = gpu.upload(&vec![t as f32; b], &[b], DType::F32)?;
            let extras = Extras { camera: cams, frames: 1, lora: Some(&self.lora) };
            let out = unet.forward_views(gpu, &gpu.to_dtype(x_t, unet.dtype())?, &ts, ctx, &extras)?;
            to_epsilon(gpu, s, t, x_t, &gpu.to_dtype(&out, DType::F32)?)
        };
        let ey = run(cond)?;
        if self.cfg.lora_cfg == 1.0 {
            return Ok(ey);
        }
        let e0 = run(uncond)?;
        ew::axpby(gpu, 1.0 - self.cfg.lora_cfg, &e0, self.cfg.lora_cfg, &ey)
    }

    /// One training step of the adapter on the renders' samples z (f32,
    /// detached) with their text `cond` and cameras: x = α_t·z + σ_t·ε for
    /// a fresh t and ε, the loss mean((out − target)²) against the UNet's
    /// own parameterisation of (z, ε), one Adam step. Returns the loss
    /// ([1], f32, on the device).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(&mut self, gpu: &Gpu, unet: &UNet, s: &NoiseSchedule, z: &Tensor, cond: &Tensor, cameras: Option<&Tensor>, step: u64) -> Result<Tensor> {
        use rand::RngExt;
        let mut rng = rng_for(self.seed, step + 1, purpose::VSD);
        let t = rng.random_range(0..s.num_train_timesteps() as i64);
        let drop_cameras = rng.random::<f32>() < self.cfg.camera_dropout;
        let eps_host: Vec<f32> = (0..z.numel()).map(|_| normal(&mut rng)).collect();
        let eps = gpu.upload(&eps_host, z.shape(), DType::F32)?;
        let x = noisy(gpu, s, t, z, &eps)?;
        let target = match s.prediction {
            Prediction::Epsilon => eps.clone(),
            Prediction::VPrediction => ew::axpby(gpu, s.alpha(t) as f32, &eps, -(s.sigma(t) as f32), z)?,
            Prediction::Sample => z.clone(),
        };
        let b = z.dim(0);
        let zeros;
        let cams = match self.cameras(cameras) {
            Some(c) if drop_cameras => {
                zeros = gpu.zeros(c.shape(), DType::F32)?;
                Some(&zeros)
            }
            other => other,
        };
        let ts = gpu.upload(&vec![t as f32; b], &[b], DType::F32)?;
        let extras = Extras { camera: cams, frames: 1, lora: Some(&self.lora) };
        let n = z.numel();
        let mut loss = None;
        let grads = unet.forward_and_grads_by(gpu, &gpu.to_dtype(&x, unet.dtype())?, &ts, &gpu.to_dtype(cond, unet.dtype())?, &extras, |out| {
            let diff = ew::sub(gpu, &gpu.to_dtype(out, DType::F32)?, &target)?;
            loss = Some(global_avg_pool(gpu, &ew::mul(gpu, &diff, &diff)?.reshape(&[1, 1, n, 1])?)?.reshape(&[1])?);
            ew::scale(gpu, &diff, 2.0 / n as f32)
        })?;
        for (name, g) in grads.lora {
            for (factor, t) in [("A", g.a), ("B", g.b)] {
                if let Some(t) = t {
                    self.adam.set_grad(&format!("lora.{name}.{factor}"), t)?;
                }
            }
        }
        if let Some(c) = grads.camera {
            for (name, t) in CAMERA_TENSORS.iter().zip([c.w1, c.b1, c.w2, c.b2]) {
                self.adam.set_grad(&format!("lora.camera_embedding.{name}"), t)?;
            }
        }
        self.adam.step(gpu, 1.0)?;
        loss.ok_or_else(|| Error::Invalid("vsd: the adapter's loss was not formed".into()))
    }
}
