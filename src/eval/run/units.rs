//! One 3D run of the evaluation: made, continued or found in its folder
//! (a folder made with another config is an error), then its views rendered
//! and scored: by the classifier and/or the paper's networks, each one's
//! outputs cached beside the run.
use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::metrics::Labels;
use crate::eval::paper::MetricViews;
use crate::eval::report::RunViews;
use crate::export::{self, Rgb8};
use crate::generate::outputs::Outputs;
use crate::generate::{self as g, Finish, GenerateConfig, Generator, job};
use crate::gpu::DType;
use crate::ops::render::Shading;
use crate::scene::camera::eval_cameras;

use super::networks::{self, CacheKey, NetworkViews};
use super::{Context, EvalEvent, EvalSummary, RunJob, UnitOutcome, Work, files};

/// Where a run folder stands.
#[derive(Debug)]
enum RunState {
    /// Nothing usable: optimise from step 0.
    Fresh,
    /// A checkpoint at this step, before the end.
    Partial(u64),
    /// A checkpoint at the configured steps.
    Complete,
    /// Complete, and every scorer's outputs for these views are cached.
    Cached(Cached),
}

/// The cached outputs of the scorers an evaluation uses.
#[derive(Debug)]
struct Cached {
    classifier: Option<CachedViews>,
    networks: Option<NetworkViews>,
}

/// A run's (or a DDIM seed's) views as each scorer saw them.
pub(super) struct Scores {
    pub classifier: Option<RunViews>,
    pub metrics: Option<MetricViews>,
}

/// `eval_views.json`: the classifier's outputs on a run's views.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CachedViews {
    steps: u64,
    views: usize,
    size: usize,
    features: Vec<f32>,
    shape_logits: Vec<f32>,
    colour_logits: Vec<f32>,
}

impl CachedViews {
    /// The views as a row of the evaluation.
    pub(super) fn run_views(&self, label: &str, prompt: &str, seed: u64, labels: &Labels) -> Result<RunViews> {
        RunViews::from_classifier_outputs(label, prompt, seed, &self.features, &self.shape_logits, &self.colour_logits, labels)
    }
}

/// One 3D run: makes, continues or finds it, then its views' scores.
/// Without `works` (`--report`) a run that is not complete is Missing, not made.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_unit(
    ctx: &Context<'_>,
    job: &RunJob,
    index: usize,
    total: usize,
    works: bool,
    stop: &AtomicBool,
    progress: &mut impl FnMut(&EvalEvent),
    summary: &mut EvalSummary,
) -> Result<UnitOutcome> {
    let steps = job.cfg.steps;
    let state = inspect_run(ctx, &job.dir, &job.cfg)?;
    if !works && matches!(state, RunState::Fresh | RunState::Partial(_)) {
        return Ok(UnitOutcome::Missing);
    }
    let (work, from) = match &state {
        RunState::Fresh => (Work::Fresh, 0),
        RunState::Partial(s) => (Work::Resumed, *s),
        RunState::Complete | RunState::Cached(_) => (Work::Reused, steps),
    };
    progress(&EvalEvent::Unit { index, total, label: &job.method.label, prompt: &job.prompt, seed: job.seed, work, step: from, steps });
    if let RunState::Cached(c) = &state {
        summary.reused += 1;
        return Ok(UnitOutcome::Done { scores: scores_of(ctx, c, &job.method.label, &job.prompt, job.seed)?, work, steps });
    }

    let checkpoint = job.dir.join(g::files::CHECKPOINT);
    let mut run = match state {
        RunState::Fresh => Generator::new(ctx.gpu, ctx.prior, job.cfg.clone())?,
        _ => Generator::resume(ctx.gpu, ctx.prior, job.cfg.clone(), &checkpoint)?,
    };
    if work != Work::Reused {
        let outcome = job::run_to_end(&mut run, &job.dir, stop, |r| progress(&EvalEvent::Step(r)))?;
        summary.steps_optimised += outcome.steps_done;
        if outcome.finish == Finish::Interrupted {
            return Ok(UnitOutcome::Interrupted);
        }
        write_run_summary(ctx, &job.dir, &run, &outcome)?;
    }
    match work {
        Work::Fresh => summary.fresh += 1,
        Work::Resumed => summary.resumed += 1,
        _ => summary.reused += 1,
    }
    progress(&EvalEvent::Views);
    let cached = render_and_score(ctx, &run, &job.dir)?;
    Ok(UnitOutcome::Done { scores: scores_of(ctx, &cached, &job.method.label, &job.prompt, job.seed)?, work, steps })
}

/// The scores of a run from its scorers' outputs.
fn scores_of(ctx: &Context<'_>, c: &Cached, label: &str, prompt: &str, seed: u64) -> Result<Scores> {
    let classifier = match (&c.classifier, &ctx.classifier) {
        (Some(v), Some((_, labels))) => Some(v.run_views(label, prompt, seed, labels)?),
        _ => None,
    };
    let metrics = match (&c.networks, ctx.networks) {
        (Some(v), Some(nets)) => Some(nets.metric_views(ctx.gpu, v, label, prompt, seed)?),
        _ => None,
    };
    Ok(Scores { classifier, metrics })
}

/// Scores a DDIM seed's samples (nothing cached: the samples are on disk).
pub(super) fn score_images(ctx: &Context<'_>, images: &[Rgb8], label: &str, prompt: &str, seed: u64) -> Result<Scores> {
    let cached = Cached {
        classifier: ctx.classifier.as_ref().map(|_| classify(ctx, images)).transpose()?,
        networks: ctx.networks.map(|n| n.score(ctx.gpu, images)).transpose()?,
    };
    scores_of(ctx, &cached, label, prompt, seed)
}

/// What a run's network cache must match.
fn network_cache_key(ctx: &Context<'_>, steps: u64) -> Option<CacheKey> {
    ctx.networks.map(|n| CacheKey { steps, views: ctx.plan.views, size: ctx.size, networks: n.names.clone() })
}

/// Reads a run folder: its config (which must match the plan's but for the
/// step count), checkpoint step, summary, cached scorer outputs and 0° render.
fn inspect_run(ctx: &Context<'_>, dir: &Path, cfg: &GenerateConfig) -> Result<RunState> {
    let (views, size, front_side) = (ctx.plan.views, ctx.size, ctx.figure_side());
    let checkpoint_step = checkpoint_step(&dir.join(g::files::CHECKPOINT))?;
    let summary_steps = completed_summary_steps(&dir.join(g::files::SUMMARY));
    if checkpoint_step.is_none() && summary_steps.is_none() {
        return Ok(RunState::Fresh);
    }
    let config_path = dir.join(g::files::CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::Io { path: config_path.clone(), cause: e })?;
    let existing = GenerateConfig::from_toml(&text, &config_path.display().to_string())?;
    if let Some(key) = first_difference(&existing, cfg)? {
        return Err(Error::Invalid(format!(
            "{}: this run was made with a different config ({key} differs from this evaluation's); \
             delete the folder to redo it, or give eval another --out",
            dir.display()
        )));
    }
    let steps = cfg.steps;
    let complete = match (checkpoint_step, summary_steps) {
        (Some(s), _) if s > steps => {
            return Err(Error::Invalid(format!(
                "{}: the checkpoint is at step {s}, past this evaluation's {steps} steps; raise --steps to {s} or more, or give eval another --out",
                dir.display()
            )));
        }
        (Some(s), _) if s < steps => return Ok(RunState::Partial(s)),
        (Some(_), _) => true,
        // A summary without a checkpoint: only its cached views can serve.
        (None, Some(s)) => s == steps,
        (None, None) => false,
    };
    let classifier = std::fs::read_to_string(dir.join(files::VIEWS))
        .ok()
        .and_then(|t| serde_json::from_str::<CachedViews>(&t).ok())
        .filter(|c| c.steps == steps && c.views == views && c.size == size);
    let networks = network_cache_key(ctx, steps).and_then(|key| networks::read_cache(&dir.join(networks::CACHE), &key));
    let front = export::image::read_png(&dir.join(files::FRONT)).is_ok_and(|f| (f.width, f.height) == (front_side, front_side));
    let classifier = classifier.filter(|_| ctx.classifier.is_some());
    let all_cached = classifier.is_some() == ctx.classifier.is_some() && networks.is_some() == ctx.networks.is_some();
    match () {
        _ if complete && front && all_cached => Ok(RunState::Cached(Cached { classifier, networks })),
        _ if complete && checkpoint_step.is_some() => Ok(RunState::Complete),
        _ => Ok(RunState::Fresh),
    }
}

/// The optimiser step of a checkpoint, from its safetensors header alone
/// (8 bytes of length, then JSON with `__metadata__.adam_step`); None when
/// there is no checkpoint.
fn checkpoint_step(path: &Path) -> Result<Option<u64>> {
    use std::io::Read;
    let bad = |why: &str| Error::Invalid(format!("{}: {why}; delete it (and its run folder) to redo the run", path.display()));
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { path: path.to_path_buf(), cause: e }),
    };
    let io = |e| Error::Io { path: path.to_path_buf(), cause: e };
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("not a safetensors checkpoint (header length out of range)"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(io)?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|_| bad("not a safetensors checkpoint (unreadable header)"))?;
    let step = json.get("__metadata__").and_then(|m| m.get("adam_step")).and_then(|s| s.as_str()).and_then(|s| s.parse().ok());
    step.map(Some).ok_or_else(|| bad("the checkpoint has no adam_step"))
}

/// The steps of a completed run's `summary.json` (None when absent or not completed).
fn completed_summary_steps(path: &Path) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    if v.get("completed")?.as_bool()? { v.get("steps_done")?.as_u64() } else { None }
}

/// The first key (dotted path) at which two configs differ, the step count aside.
fn first_difference(a: &GenerateConfig, b: &GenerateConfig) -> Result<Option<String>> {
    let table = |c: &GenerateConfig| {
        let mut t = toml::Table::try_from(c).map_err(|e| Error::Invalid(format!("config to TOML: {e}")))?;
        t.remove("steps");
        Ok::<_, Error>(t)
    };
    Ok(table_difference(&table(a)?, &table(b)?, ""))
}

fn table_difference(a: &toml::Table, b: &toml::Table, prefix: &str) -> Option<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                if let Some(d) = table_difference(x, y, &path) {
                    return Some(d);
                }
            }
            (x, y) if x != y => return Some(path),
            _ => {}
        }
    }
    None
}

/// The generate-style `summary.json` of an eval run (no mesh or turntable).
fn write_run_summary(ctx: &Context<'_>, dir: &Path, run: &Generator<'_>, outcome: &job::RunOutcome) -> Result<()> {
    let outputs = Outputs {
        files: vec![files::VIEW_GRID.into(), files::FRONT.into(), files::VIEWS.into(), networks::CACHE.into()],
        mesh: None,
        mesh_error: Some(format!("eval runs skip the mesh and turntable; `fsd3d generate --resume {}` writes them", dir.display())),
        verdict: None,
        seconds: 0.0,
    };
    job::write_summary(ctx.gpu, run, outcome, &outputs, dir)
}

/// Renders the views around the object at the prior's resolution (as
/// `outputs::classify_views`: diffuse shading, 8-bit) and the 0° view larger,
/// scores the views, and writes the view grid, the 0° render and the caches.
fn render_and_score(ctx: &Context<'_>, run: &Generator<'_>, dir: &Path) -> Result<Cached> {
    let size = ctx.size as u32;
    let cams = eval_cameras(&run.cfg.camera, ctx.plan.views);
    let mut images = Vec::with_capacity(cams.len());
    for cam in &cams {
        images.push(export::rgb_to_rgb8(&run.scene.render_image(ctx.gpu, cam, size, size, Shading::Diffuse)?)?);
    }
    export::write_png(&dir.join(files::VIEW_GRID), &export::grid(&images, images.len().min(8), 2)?)?;
    let side = ctx.figure_side() as u32;
    let front = run.scene.render_image(ctx.gpu, &cams[0], side, side, Shading::Diffuse)?;
    export::write_png(&dir.join(files::FRONT), &export::rgb_to_rgb8(&front)?)?;
    let classifier = match ctx.classifier {
        Some(_) => {
            let mut cached = classify(ctx, &images)?;
            cached.steps = run.step;
            let json = serde_json::to_string(&cached).map_err(|e| Error::Invalid(format!("{}: {e}", files::VIEWS)))?;
            crate::io::write_atomic(&dir.join(files::VIEWS), json.as_bytes())?;
            Some(cached)
        }
        None => None,
    };
    let networks = match (ctx.networks, network_cache_key(ctx, run.step)) {
        (Some(nets), Some(key)) => {
            let v = nets.score(ctx.gpu, &images)?;
            networks::write_cache(&dir.join(networks::CACHE), &key, &v)?;
            Some(v)
        }
        _ => None,
    };
    Ok(Cached { classifier, networks })
}

/// The classifier on 8-bit images of the prior's size (x = byte / 127.5 − 1,
/// as the classifier was trained). `steps` is left 0 for the caller.
pub(super) fn classify(ctx: &Context<'_>, images: &[Rgb8]) -> Result<CachedViews> {
    let s = ctx.size;
    if let Some(img) = images.iter().find(|img| (img.width, img.height) != (s, s)) {
        return Err(Error::Invalid(format!("eval: an image is {}x{}, the classifier reads {s}x{s}", img.width, img.height)));
    }
    let (pixels, shape) = export::image::to_signed_nchw(images)?;
    let x = ctx.gpu.upload(&pixels, &shape, DType::F32)?;
    let (classifier, _) = ctx.classifier.as_ref().ok_or_else(|| Error::Invalid("eval: no classifier to classify with".into()))?;
    let out = classifier.classify(ctx.gpu, &x)?;
    Ok(CachedViews {
        steps: 0,
        views: images.len(),
        size: s,
        features: ctx.gpu.download(&out.features)?,
        shape_logits: ctx.gpu.download(&out.shape_logits)?,
        colour_logits: ctx.gpu.download(&out.colour_logits)?,
    })
}
