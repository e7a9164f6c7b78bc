//! A 3D run as a job: what `fsd3d generate` and every run of `fsd3d eval`
//! need around the loop, written once so that the two commands cannot drift
//! apart. The run folder's name ([`slug`]), the prior's kind, the config
//! layers ([`GenerateConfig::layered`]), `--dtype auto` resolved and
//! recorded, the Ctrl-C stop flag, the run driven to its end with its
//! timing, and `summary.json`. [`GenerateJob`] strings them together for
//! `generate`; `eval::run` uses the parts for its units.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::diffusion::guidance::Method;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::models::classifier::Classifier;
use crate::models::pixel_prior::PixelPriorSpec;
use crate::models::prior::{Prior, StableDiffusion};

use super::config::{ConfigFlags, ConfigOverlay};
use super::outputs::{Outputs, Summary, write_outputs};
use super::{Finish, GenerateConfig, Generator, PriorKind, StepReport, files, optimise};

/// The folder-name form of a prompt: lower-case ASCII letters and digits,
/// runs of anything else as one '-', at most 60 characters and no trailing
/// '-' ("untitled" if nothing is left). Both `generate` and `eval` name
/// their folders with it, so one prompt has one name.
pub fn slug(text: &str) -> String {
    let s: String = text.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let s: String = s.split('-').filter(|w| !w.is_empty()).collect::<Vec<_>>().join("-").chars().take(60).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() { "untitled".into() } else { s }
}

/// `runs/<prompt>-<method>-s<seed>`: where `generate` writes without `--out`.
pub fn default_run_dir(cfg: &GenerateConfig) -> PathBuf {
    PathBuf::from("runs").join(format!("{}-{}-s{}", slug(&cfg.prompt), cfg.method.name(), cfg.seed))
}

/// Which defaults the prior in `model_dir` gets: a pixel prior's own
/// distribution when it has `fsd3d_prior.json`; MVDream's when its UNet
/// takes cameras; else Stable Diffusion's.
pub fn prior_kind(model_dir: &Path) -> Result<PriorKind> {
    if let Some(spec) = PixelPriorSpec::load(model_dir)? {
        return Ok(PriorKind::Pixel(spec));
    }
    if let Some((_, yaml)) = crate::models::ldm::single_file(model_dir) {
        let camera = crate::models::ldm::unet_config_from_yaml(&yaml)?.camera_dim.is_some();
        return Ok(if camera { PriorKind::MultiViewLatent { frames: crate::models::prior::MVDREAM_FRAMES } } else { PriorKind::Latent });
    }
    let unet_config = model_dir.join("unet").join("config.json");
    if unet_config.is_file() && crate::models::config::UNetConfig::load(&unet_config)?.camera_dim.is_some() {
        return Ok(PriorKind::MultiViewLatent { frames: crate::models::prior::MVDREAM_FRAMES });
    }
    Ok(PriorKind::Latent)
}

/// Resolves the config's `dtype` ("auto": by adapter and prior, see
/// `models::resolve_dtype`) and records what it resolved to, so that a run
/// resumed on another machine keeps its storage type.
pub fn resolve_dtype(gpu: &Gpu, cfg: &mut GenerateConfig) -> Result<DType> {
    let dtype = crate::models::resolve_dtype(gpu, &cfg.dtype, &crate::models::model_dir(cfg.model.as_deref()))?;
    cfg.dtype = dtype.name().to_string();
    Ok(dtype)
}

/// The flag Ctrl-C sets: a running loop writes a checkpoint and stops; a
/// second Ctrl-C exits at once (status 130). The handler is installed on the
/// first call.
pub fn stop_on_ctrl_c() -> &'static AtomicBool {
    static STOP: AtomicBool = AtomicBool::new(false);
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Without a handler (another one was set first) Ctrl-C ends the
        // process as usual; the last checkpoint stays.
        let _ = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
    &STOP
}

/// What [`run_to_end`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunOutcome {
    pub finish: Finish,
    /// Wall time of the optimisation in this call.
    pub seconds: f64,
    /// Steps optimised in this call (a resumed run counts from its checkpoint).
    pub steps_done: u64,
    /// The gradient's RMS at the last log step of this call.
    pub last_grad_rms: Option<f32>,
}

impl RunOutcome {
    pub fn mean_step_ms(&self) -> f64 {
        1e3 * self.seconds / self.steps_done.max(1) as f64
    }
}

/// Optimises until the run's steps or until `stop` ([`optimise`]: config,
/// log and checkpoints in `out`), timing it.
pub fn run_to_end(run: &mut Generator<'_>, out: &Path, stop: &AtomicBool, mut on_step: impl FnMut(&StepReport)) -> Result<RunOutcome> {
    let started = Instant::now();
    let first = run.step;
    let mut last_grad_rms = None;
    let finish = optimise(run, out, stop, |r| {
        last_grad_rms = r.grad_rms.or(last_grad_rms);
        on_step(r);
    })?;
    Ok(RunOutcome { finish, seconds: started.elapsed().as_secs_f64(), steps_done: run.step - first, last_grad_rms })
}

/// Writes `summary.json` of a run into `out`.
pub fn write_summary(gpu: &Gpu, run: &Generator<'_>, outcome: &RunOutcome, outputs: &Outputs, out: &Path) -> Result<()> {
    let cfg = &run.cfg;
    let summary = Summary {
        prompt: &cfg.prompt,
        method: cfg.method.name(),
        seed: cfg.seed,
        steps: cfg.steps,
        steps_done: run.step,
        completed: run.step >= cfg.steps,
        optimise_seconds: outcome.seconds,
        outputs_seconds: outputs.seconds,
        mean_step_ms: outcome.mean_step_ms(),
        adapter: gpu.adapter_name(),
        model: crate::models::model_dir(cfg.model.as_deref()).display().to_string(),
        final_grad_rms: outcome.last_grad_rms,
        outputs,
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(format!("summary to JSON: {e}")))?;
    crate::io::write_atomic(&out.join(files::SUMMARY), json.as_bytes())
}

/// What `fsd3d generate` is asked to do.
#[derive(Clone, Debug)]
pub enum GenerateRequest {
    /// A new run of `prompt` with `method`: the config layers, written to
    /// `out` (None: [`default_run_dir`]).
    New { prompt: String, method: Method, overlay: Option<ConfigOverlay>, flags: ConfigFlags, out: Option<PathBuf> },
    /// Continue the run in `dir` from its config and checkpoint, with more steps if given.
    Resume { dir: PathBuf, steps: Option<u64> },
}

/// A `generate` run ready to start: its complete config (dtype resolved,
/// validated), its folder, and its prior's folder.
#[derive(Clone, Debug)]
pub struct GenerateJob {
    pub cfg: GenerateConfig,
    pub out: PathBuf,
    /// Continue from `out`'s checkpoint.
    pub resume: bool,
    /// `--resume` found the run's config but no checkpoint (the run was
    /// killed before it wrote its first one): it starts again from step 0.
    pub restarted: bool,
    pub model_dir: PathBuf,
}

impl GenerateJob {
    pub fn prepare(gpu: &Gpu, request: GenerateRequest) -> Result<GenerateJob> {
        let (mut cfg, out, resume, restarted) = match request {
            GenerateRequest::New { prompt, method, overlay, flags, out } => {
                let kind = prior_kind(&crate::models::model_dir(flags.model.as_deref()))?;
                let cfg = GenerateConfig::layered(&prompt, method, &kind, overlay.as_ref(), &flags)?;
                let out = out.unwrap_or_else(|| default_run_dir(&cfg));
                (cfg, out, false, false)
            }
            GenerateRequest::Resume { dir, steps } => {
                let path = dir.join(files::CONFIG);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::Invalid(format!("reading {}: {e}; --resume takes the folder of a run (where it wrote config.toml and checkpoint.safetensors)", path.display()))
                })?;
                let mut cfg = GenerateConfig::from_toml(&text, &path.display().to_string())?;
                cfg.validate().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                if let Some(s) = steps {
                    cfg.steps = s;
                }
                // A run writes its config before its first step and its first
                // checkpoint only later: a run killed in between has nothing
                // to continue, and starts over.
                let has_checkpoint = dir.join(files::CHECKPOINT).is_file();
                (cfg, dir, has_checkpoint, !has_checkpoint)
            }
        };
        resolve_dtype(gpu, &mut cfg)?;
        cfg.validate()?;
        let model_dir = crate::models::model_dir(cfg.model.as_deref());
        Ok(GenerateJob { cfg, out, resume, restarted, model_dir })
    }

    /// The prior, in the storage type the config records.
    pub fn load_prior(&self, gpu: &Gpu) -> Result<StableDiffusion> {
        StableDiffusion::load(gpu, &self.model_dir, DType::parse(&self.cfg.dtype)?)
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.out.join(files::CHECKPOINT)
    }

    /// The run at step 0, or at its checkpoint's step when resuming.
    pub fn start<'a>(&self, gpu: &'a Gpu, prior: &'a dyn Prior) -> Result<Generator<'a>> {
        if self.resume { Generator::resume(gpu, prior, self.cfg.clone(), &self.checkpoint()) } else { Generator::new(gpu, prior, self.cfg.clone()) }
    }

    /// After the run: renders, turntable, mesh, the classifier's verdict
    /// (when the prior has a classifier/) and `summary.json`.
    pub fn write_outputs(&self, gpu: &Gpu, run: &Generator<'_>, outcome: &RunOutcome, progress: impl FnMut(&str)) -> Result<Outputs> {
        let _phase = gpu.memory_phase(crate::gpu::MemoryPhase::WRITING_OUTPUTS);
        let written = (|| {
            let classifier = if self.model_dir.join("classifier").is_dir() { Some(Classifier::load(gpu, &self.model_dir)?) } else { None };
            let outputs = write_outputs(gpu, &run.scene, &run.cfg, classifier.as_ref(), &self.out, progress)?;
            write_summary(gpu, run, outcome, &outputs, &self.out)?;
            Ok(outputs)
        })();
        // The outputs come from the scene on the device; the run's last
        // checkpoint is on disk, and a resume of it writes them again.
        written.map_err(|e| match e {
            Error::DeviceLost { reason, .. } => Error::DeviceLost {
                reason,
                then: format!(
                    ". The outputs were being written; the run's checkpoint of step {} is kept in {}: once the GPU works again, \
                     `fsd3d generate --resume {}` writes them",
                    run.step,
                    self.out.display(),
                    self.out.display()
                ),
            },
            e => e,
        })
    }
}
