//! `fsd3d generate`: text to 3D by score distillation (Algorithm 1 of the
//! paper, FSD_SPEC §5).
//!
//! One step, all recorded into one command encoder and submitted once:
//! ```text
//! cameras (seed, step) → rays → occupancy update → render rgb + opacity
//! → image = 2·rgb − 1 → bilinear resize to the prior's input (when sizes differ)
//! → z = the image (pixel prior) or VAE mean × scaling factor (latent prior)
//! → ε: world map ε(c) (fsd) / fresh (sds, nfsd) / constant
//! → the run's Guidance (diffusion::guidance, the same as the 2D loop's):
//!   x_t = α_t·z + σ_t·ε → prior on [uncond; cond] → g = w(t)·(ε̂ − ε)
//! → ∂L/∂z = g / B → VAE encoder backward → resize backward → ×2
//! → renderer backward + regularisers → Adam
//! ```
//! The host reads back only at log steps: the gradient's RMS for the
//! progress bar and log, and the count of non-finite gradient values (a run
//! that produces NaN stops with an error that says what to change).
//!
//! Everything random is keyed by (seed, step, purpose), and the checkpoint
//! holds parameters, Adam's moments and the occupancy grid, so a resumed run
//! continues exactly where an uninterrupted one would have been.
pub mod claims;
pub mod config;
pub mod job;
pub mod outputs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::diffusion::guidance::Guidance;
use crate::diffusion::noise::{ViewAngles, ViewNoise};
use crate::diffusion::prompts::ViewDirection;
use crate::diffusion::timesteps::uniform;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::prior::{Prior, ViewCameras};
use crate::ops::elementwise as ew;
use crate::ops::resample;
use crate::ops::render::{RegulariserWeights, Shading};
use crate::scene::{CameraSampler, RayBatch, RenderOptions, Scene};

pub use config::{GenerateConfig, PriorKind};

/// File names inside a run's output folder.
pub mod files {
    pub const CONFIG: &str = "config.toml";
    pub const LOG: &str = "log.csv";
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    pub const SUMMARY: &str = "summary.json";
}

/// The log's header line.
pub const LOG_HEADER: &str = "step,t,grad_rms,step_ms,shading,orientation_weight";

/// What the progress display gets after each step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: u64,
    pub steps: u64,
    pub t: i64,
    /// RMS of the gradient on the render, at log steps.
    pub grad_rms: Option<f32>,
    pub step_ms: f64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Completed,
    /// Stopped by the caller's flag (Ctrl-C); a checkpoint was written.
    Interrupted,
}

/// The checkpoint metadata key of the run's config
/// ([`GenerateConfig::optimisation_json`]), checked on resume.
pub const RUN_CONFIG_KEY: &str = "run_config";

/// One 3D run in progress.
pub struct Generator<'a> {
    gpu: &'a Gpu,
    prior: &'a dyn Prior,
    pub cfg: GenerateConfig,
    pub scene: Scene,
    sampler: CameraSampler,
    noise: ViewNoise,
    guidance: Guidance<'a>,
    /// Steps done.
    pub step: u64,
}

impl<'a> Generator<'a> {
    /// A fresh run (step 0).
    pub fn new(gpu: &'a Gpu, prior: &'a dyn Prior, cfg: GenerateConfig) -> Result<Generator<'a>> {
        cfg.validate()?;
        let [c, h, w] = prior.sample_shape();
        if let Some(frames) = prior.num_frames() {
            if cfg.camera.views_per_object != frames {
                return Err(Error::Invalid(format!(
                    "the prior is a multi-view model that denoises {frames} views of an object together, but [camera] views_per_object is {}: \
                     set views_per_object = {frames} and batch_size to a multiple of it (the defaults for this prior do)",
                    cfg.camera.views_per_object
                )));
            }
        }
        for stage in cfg.camera.all_stages() {
            let (rw, rh) = (stage.width as usize, stage.height as usize);
            // The world map's mask pools the render's opacity onto the sample grid.
            if rh % h != 0 || rw % w != 0 || rh / h != rw / w {
                let which = if stage.from_step == 0 { String::new() } else { format!(" (the stage from step {})", stage.from_step) };
                return Err(Error::Invalid(format!(
                    "the training render{which} is {rw}x{rh} but the prior's samples are {w}x{h}: set [camera] width and height to the same multiple of {w} (e.g. {w})"
                )));
            }
        }
        let _phase = gpu.memory_phase(crate::gpu::MemoryPhase::CREATING_SCENE);
        let scene = Scene::new(gpu, &cfg.scene, cfg.seed)?;
        let sampler = CameraSampler::new(cfg.camera.clone(), cfg.seed)?;
        let noise = ViewNoise::new(gpu, cfg.method.noise(), cfg.noise, [c, h, w], cfg.seed)?;
        let mut guidance = Guidance::new(gpu, prior, &cfg.prompt_spec(), cfg.guidance_settings())?;
        if cfg.method == crate::diffusion::guidance::Method::Vsd {
            guidance = guidance.with_particle(gpu, &cfg.vsd.clone().unwrap_or_default(), cfg.seed)?;
        }
        Ok(Generator { gpu, prior, cfg, scene, sampler, noise, guidance, step: 0 })
    }

    /// Continues from a checkpoint written by [`Generator::save_checkpoint`].
    pub fn resume(gpu: &'a Gpu, prior: &'a dyn Prior, cfg: GenerateConfig, checkpoint: &Path) -> Result<Generator<'a>> {
        let mut g = Generator::new(gpu, prior, cfg)?;
        let meta = g.scene.load(gpu, checkpoint)?;
        // VSD's particle score continues from its own saved state.
        if let Some(p) = g.guidance.particle_mut() {
            let step = meta.get(VSD_ADAM_STEP_KEY).and_then(|s| s.parse().ok()).ok_or_else(|| {
                Error::Invalid(format!("{}: a VSD run's checkpoint without its particle score; start the run again", checkpoint.display()))
            })?;
            p.restore(gpu, &crate::scene::optim::Checkpoint::read(checkpoint)?, step)?;
        }
        // The run in the checkpoint must be this config's (checkpoints from
        // before this record was kept carry none and are taken as they are).
        if let Some(recorded) = meta.get(RUN_CONFIG_KEY) {
            let differences = config::config_differences(recorded, &g.cfg.optimisation_json()?)?;
            if !differences.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: the checkpoint was written by a run with another config (checkpoint → now): {}. Only `steps` \
                     and the [output] table may change between a run and its resume: undo the change, or start a new \
                     run in another folder",
                    checkpoint.display(),
                    differences.join("; ")
                )));
            }
        }
        // One Adam step per iteration: the optimiser's count is the run's.
        g.step = g.scene.adam.step;
        if g.step > g.cfg.steps {
            return Err(Error::Invalid(format!(
                "{}: the checkpoint is at step {} but the run has only {} steps; raise --steps to continue",
                checkpoint.display(),
                g.step,
                g.cfg.steps
            )));
        }
        Ok(g)
    }

    /// The shading of a training step.
    pub fn shading_at(&self, step: u64) -> Shading {
        self.cfg.scene.material.shading_for(self.cfg.seed, step)
    }

    /// Records and submits one optimisation step; reads back at log steps.
    pub fn step(&mut self) -> Result<StepReport> {
        let started = Instant::now();
        let gpu = self.gpu;
        let step = self.step;
        let cfg = &self.cfg;
        let cams = self.sampler.sample(step);
        let b = cams.len();
        let stage = cfg.camera.stage_at(step);
        let rays = RayBatch::new(gpu, &cams, stage.width, stage.height)?;
        self.scene.update_occupancy(gpu, step)?;
        let shading = self.shading_at(step);
        let orientation = cfg.loss.orientation_at(step);
        let r = self.scene.render(gpu, &rays, &RenderOptions::training(shading, step, orientation > 0.0))?;

        // Images [B, 3, H, W] in [-1, 1], resized to the prior's input and
        // encoded (latent priors) into its sample space z.
        let (h, w) = (stage.height as usize, stage.width as usize);
        let image = ew::affine(gpu, &r.images.rgb.reshape(&[b, 3, h, w])?, 2.0, -1.0)?;
        let opacity = r.images.opacity.reshape(&[b, 1, h, w])?;
        let [ih, iw] = self.prior.image_size();
        let resized = (ih, iw) != (h, w);
        let image = if resized { resample::resize_bilinear(gpu, &image, ih, iw)? } else { image };
        let encoded = self.prior.encode(gpu, &image)?;
        let z = &encoded.sample;
        let t = cfg.guidance.timesteps.timestep(step, cfg.steps, self.guidance.schedule().num_train_timesteps(), uniform(cfg.seed, step));
        let views: Vec<ViewAngles> = cams.iter().map(|c| ViewAngles::from_elevation_azimuth_deg(c.elevation as f64, c.azimuth as f64)).collect();
        let eps = self.noise.sample(gpu, &views, Some(&opacity), step as u32, DType::F32)?;
        // ∂L/∂z = g / B, back through the encoder and the resize; the image
        // is 2·rgb − 1, so ∂L/∂rgb = 2·∂L/∂image.
        let directions: Vec<ViewDirection> = cams.iter().map(|c| ViewDirection { elevation_deg: c.elevation, azimuth_deg: c.azimuth }).collect();
        // A multi-view prior sees each object's views together, with their
        // cameras; VSD's particle score takes each view's camera.
        let vsd = self.guidance.particle().is_some();
        let frames = self.prior.num_frames().or(vsd.then_some(1));
        let cameras = frames.map(|frames| ViewCameras::new(gpu, &cams, frames)).transpose()?;
        let d_z = self.distillation_gradient(z, &eps, t, &directions, cameras.as_ref())?;
        // VSD: then one training step of the particle score on these renders.
        self.guidance.train_particle(gpu, z, &directions, cameras.as_ref().map(|c| &c.camera), step)?;
        let d_image = self.prior.encode_backward(gpu, &encoded, &d_z)?;
        let d_image = if resized { resample::resize_bilinear_backward(gpu, &d_image, h, w)? } else { d_image };
        let d_rgb = ew::scale(gpu, &d_image, 2.0)?.reshape(r.images.rgb.shape())?;
        let reg = RegulariserWeights { orientation, sparsity: cfg.loss.sparsity, opaque: cfg.loss.opaque };
        self.scene.backward(gpu, &r, &d_rgb, None, &reg)?;
        self.scene.optimizer_step(gpu, 1.0)?;
        gpu.flush()?;
        self.step += 1;

        let log_now = self.step.is_multiple_of(cfg.output.log_every) || self.step == cfg.steps;
        let grad_rms = if log_now {
            let bad = self.guidance.nonfinite_count(gpu)?;
            if bad > 0 {
                return Err(Error::Invalid(format!(
                    "step {}: {bad} non-finite values in the distillation gradient (t = {t}); the scene is left as the last checkpoint has it. Try a lower --cfg, a lower learning rate ([scene.adam] in --config), or [guidance] grad_clip{}",
                    self.step,
                    if self.prior.dtype() == crate::gpu::DType::F16 || crate::ops::gemm::coop_in_use(gpu) {
                        "; f16 values end at 65 504: --dtype f32 and --disable-features coop-matrix keep f32 throughout"
                    } else {
                        ""
                    }
                )));
            }
            let gv = gpu.download(&d_z)?;
            // Undo the 1/B: report the RMS of g itself.
            let scale = b as f64;
            Some(((gv.iter().map(|&v| (v as f64 * scale).powi(2)).sum::<f64>() / gv.len().max(1) as f64).sqrt()) as f32)
        } else {
            None
        };
        Ok(StepReport { step: self.step, steps: cfg.steps, t, grad_rms, step_ms: started.elapsed().as_secs_f64() * 1e3 })
    }

    /// The distillation gradient ∂L/∂z = g / B on the batch z of views
    /// looking from `views` (with their cameras for a multi-view prior),
    /// for noise ε at timestep t: the run's [`Guidance`], which the 2D loop
    /// shares.
    pub fn distillation_gradient(&self, z: &Tensor, eps: &Tensor, t: i64, views: &[ViewDirection], cameras: Option<&ViewCameras>) -> Result<Tensor> {
        self.guidance.gradient(self.gpu, z, eps, t, views, cameras, 1.0 / views.len() as f32)
    }

    /// Writes the checkpoint atomically, with the config it optimises.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let meta = std::collections::HashMap::from([(RUN_CONFIG_KEY.to_string(), self.cfg.optimisation_json()?)]);
        let mut meta = meta;
        let extra = match self.guidance.particle() {
            Some(p) => {
                meta.insert(VSD_ADAM_STEP_KEY.into(), p.adam_step().to_string());
                p.state_tensors()
            }
            None => Vec::new(),
        };
        self.scene.save_with(self.gpu, path, meta, &extra)
    }
}

/// The checkpoint metadata key of VSD's particle-score optimiser step.
const VSD_ADAM_STEP_KEY: &str = "vsd_adam_step";

/// Where a run writes, and how it reports.
pub struct RunPaths {
    pub out: PathBuf,
}

impl RunPaths {
    pub fn config(&self) -> PathBuf {
        self.out.join(files::CONFIG)
    }
    pub fn log(&self) -> PathBuf {
        self.out.join(files::LOG)
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.out.join(files::CHECKPOINT)
    }
}

/// Runs (or continues) the optimisation until `cfg.steps` or until `stop`
/// is set; writes the config, the log and checkpoints into `out`.
pub fn optimise(run: &mut Generator<'_>, out: &Path, stop: &AtomicBool, mut on_step: impl FnMut(&StepReport)) -> Result<Finish> {
    let paths = RunPaths { out: out.to_path_buf() };
    std::fs::create_dir_all(out).map_err(|e| Error::Io { path: out.to_path_buf(), cause: e })?;
    // What a killed run was writing when it died is of no use.
    crate::io::remove_stale_temporaries(out)?;
    crate::io::write_atomic(&paths.config(), run.cfg.to_toml()?.as_bytes())?;
    let mut log = open_log(&paths.log(), run.step)?;
    let _phase = run.gpu.memory_phase(crate::gpu::MemoryPhase::TRAINING_STEP);
    // The step of the newest checkpoint on disk: a resumed run starts at one.
    let mut saved = (run.step > 0).then_some(run.step);
    let every = run.cfg.output.checkpoint_every;
    let result = (|| {
        while run.step < run.cfg.steps {
            if stop.load(Ordering::SeqCst) {
                run.save_checkpoint(&paths.checkpoint())?;
                return Ok(Finish::Interrupted);
            }
            let shading = run.shading_at(run.step);
            let orientation = run.cfg.loss.orientation_at(run.step);
            let rep = run.step()?;
            if let Some(rms) = rep.grad_rms {
                writeln!(log, "{},{},{rms:.6e},{:.1},{shading:?},{orientation}", rep.step, rep.t, rep.step_ms)
                    .map_err(|e| crate::io::write_error(&paths.log(), e))?;
                log.flush().map_err(|e| crate::io::write_error(&paths.log(), e))?;
            }
            on_step(&rep);
            if every > 0 && run.step.is_multiple_of(every) && run.step < run.cfg.steps {
                run.save_checkpoint(&paths.checkpoint())?;
                saved = Some(run.step);
            }
        }
        run.save_checkpoint(&paths.checkpoint())?;
        Ok(Finish::Completed)
    })();
    // The scene lives on the lost device: nothing more can be saved, so say
    // what is on disk and how to go on from it.
    result.map_err(|e| match e {
        Error::DeviceLost { reason, .. } => {
            let resume = format!("`fsd3d generate --resume {}`", out.display());
            let then = match saved {
                Some(step) => format!(
                    ". The run stopped at step {}; its checkpoint of step {step} and its log are kept in {}: \
                     once the GPU works again (a new process, after a driver reset or a reboot), {resume} continues from there",
                    run.step,
                    out.display()
                ),
                None => format!(
                    ". The run stopped at step {} before its first checkpoint: once the GPU works again, {resume} \
                     starts it again (set [output] checkpoint_every to lose fewer steps)",
                    run.step
                ),
            };
            Error::DeviceLost { reason, then }
        }
        e => e,
    })
}

/// Opens the log for appending from `step`: a fresh file at step 0; on
/// resume, lines past the checkpoint's step (written after it, before a
/// crash) are dropped so the log tells one consistent history.
fn open_log(path: &Path, step: u64) -> Result<std::fs::File> {
    let io_err = |e| Error::Io { path: path.to_path_buf(), cause: e };
    let mut kept = format!("{LOG_HEADER}\n");
    if step > 0
        && let Ok(text) = std::fs::read_to_string(path)
    {
        // A line without its newline was cut short (a kill or a full disk
        // mid-write) and is dropped.
        for line in text.split_inclusive('\n').skip(1).filter_map(|l| l.strip_suffix('\n')) {
            let s: Option<u64> = line.split(',').next().and_then(|v| v.parse().ok());
            if s.is_some_and(|s| s <= step) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    crate::io::write_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new().append(true).open(path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_log_keeps_whole_lines_up_to_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("fsd3d-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.csv");
        // Steps 1-3 whole, step 4 written after the checkpoint, and a line
        // cut short by a kill or a full disk ("1" of "10,..." reads as step 1).
        let text = format!("{LOG_HEADER}\n1,900,1e-1,5.0,Ambient,0\n2,880,1e-1,5.0,Ambient,0\n3,860,1e-1,5.0,Ambient,0\n4,840,1e-1,5.0,Ambient,0\n1");
        std::fs::write(&path, text).unwrap();
        drop(open_log(&path, 3).unwrap());
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, format!("{LOG_HEADER}\n1,900,1e-1,5.0,Ambient,0\n2,880,1e-1,5.0,Ambient,0\n3,860,1e-1,5.0,Ambient,0\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
