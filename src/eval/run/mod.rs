//! `fsd3d eval`: the paper's evaluation (FSD_SPEC §6) as one resumable job.
//!
//! For every prompt × method × seed it makes (or finds) a 3D run, renders
//! `views` views around the object at the prior's own resolution, and scores
//! them: with the prior's classifier where it has one (the embedded prior),
//! and with the paper's networks where `--clip` / `--inception` name them
//! ([`networks`]); for every prompt × seed it draws DDIM samples from the
//! prior itself as the reference row. Then the tables
//! ([`report::evaluate`], [`paper::evaluate_metrics`]), `results.md`,
//! `results.json` and one methods × seeds figure per prompt.
//!
//! ```text
//! OUT/
//!   results.md, results.json, figure_<prompt>.png
//!   runs/<prompt>/<method>/s<seed>/   config.toml, log.csv, checkpoint.safetensors,
//!                                     summary.json, renders.png (the classified views),
//!                                     render_0deg.png (the figure's cell), eval_views.json
//!                                     (classifier), metric_views.safetensors (CLIP, Inception)
//!   runs/<prompt>/ddim/s<seed>/       sample_<k>.png, ddim.json
//! ```
//!
//! Everything is resumable: a run whose checkpoint (or summary) is at the
//! configured steps is reused (its cached classifier outputs, else its
//! checkpoint re-rendered), a partial checkpoint is resumed, anything else
//! runs fresh; DDIM samples already on disk with the same settings are
//! reused. Ctrl-C (the `stop` flag) ends the current run with a checkpoint
//! and returns; the same call again continues. A folder whose run was made
//! with another config (other than its step count) is an error, not
//! silently overwritten.
//!
//! Each 3D run gets the same config layers as `fsd3d generate`: the defaults
//! for the prior and method, the `--config` overlay, then `--steps`, the seed
//! and the method's ablation setting (β, Θ). Eval runs skip the heavy
//! outputs of `generate` (turntable, mesh); `fsd3d generate --resume DIR`
//! on a run folder writes them.
//!
//! The job in parts: `plan` (what to do), `units` (one 3D run),
//! `reference` (the DDIM row), `results` (results.md / .json, figures);
//! this module drives them in order and reports progress.
mod plan;
mod reference;
mod results;
mod networks;
mod units;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::metrics::Labels;
use crate::eval::paper::{self, MetricViews};
use crate::eval::report::{self, RunViews};
use crate::generate::claims;
use crate::generate::job::{self, slug};
use crate::generate::{GenerateConfig, StepReport};
use crate::gpu::Gpu;
use crate::models::classifier::Classifier;
use crate::models::prior::{Prior, StableDiffusion};

pub use plan::{DdimReference, EvalMethod, EvalPlan, PlanFile, Selection, Unit, UnitKind, expand_methods, parse_prompts, read_prompts};
pub use reference::{DDIM_LABEL, DDIM_SLUG, reference_seed};
pub use results::{EvalResults, RunRecord, date_of_unix_days, utc_date};

use reference::reference_unit;
use results::{write_figure, write_results};
use units::run_unit;

/// File names in the output folder and in each run folder.
pub mod files {
    pub const RESULTS_MD: &str = "results.md";
    pub const RESULTS_JSON: &str = "results.json";
    /// The plan's units and settings, shared by the workers of a sweep.
    pub const PLAN: &str = "plan.json";
    /// The folder of unit claims: `locks/<unit id with / as __>.lock`.
    pub const LOCKS: &str = crate::generate::claims::LOCKS;
    /// The folder of all runs: `runs/<prompt>/<method>/s<seed>`.
    pub const RUNS: &str = "runs";
    /// Per 3D run: the classifier's outputs on its views (what a rerun reuses).
    pub const VIEWS: &str = "eval_views.json";
    /// Per 3D run: the classified views, as one grid.
    pub const VIEW_GRID: &str = "renders.png";
    /// Per 3D run: the 0° view at `figure_scale` × the prior's resolution (the figure's cell).
    pub const FRONT: &str = "render_0deg.png";
    /// Per DDIM reference: the settings its samples were drawn with.
    pub const DDIM_PARAMS: &str = "ddim.json";

    /// The figure of one prompt.
    pub fn figure(prompt_slug: &str) -> String {
        format!("figure_{prompt_slug}.png")
    }

    /// DDIM sample `k` of a seed.
    pub fn ddim_sample(k: usize) -> String {
        format!("sample_{k}.png")
    }
}

// ---------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------

/// What one unit of work (a 3D run or a seed's DDIM samples) does in this call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Optimised from step 0.
    Fresh,
    /// Continued from a partial checkpoint.
    Resumed,
    /// Already complete: nothing optimised or sampled.
    Reused,
    /// DDIM samples drawn.
    Sampled,
}

/// What [`run_eval`] reports as it goes.
#[derive(Debug)]
pub enum EvalEvent<'a> {
    /// A unit begins: `index` of `total` (0-based), with what it will do.
    Unit { index: usize, total: usize, label: &'a str, prompt: &'a str, seed: u64, work: Work, step: u64, steps: u64 },
    /// An optimisation step of the current run.
    Step(&'a StepReport),
    /// A DDIM step of the current reference seed's samples (drawn as one batch).
    Sample { samples: usize, step: usize, steps: usize },
    /// Rendering and classifying the current run's views.
    Views,
    /// Writing results.md, results.json and the figures.
    Writing,
}

/// What a call of [`run_eval`] did.
#[derive(Clone, Debug, Default)]
pub struct EvalSummary {
    /// False when `stop` ended it early (a checkpoint was written; call again to continue).
    pub finished: bool,
    /// 3D runs in the plan.
    pub runs: usize,
    pub fresh: usize,
    pub resumed: usize,
    pub reused: usize,
    /// Optimisation steps done in this call, over all runs.
    pub steps_optimised: u64,
    /// DDIM samples drawn in this call / found on disk.
    pub samples_drawn: usize,
    pub samples_reused: usize,
    pub wall_seconds: f64,
    /// results.md, results.json and the figures (when finished).
    pub files: Vec<PathBuf>,
    pub results: Option<EvalResults>,
    /// Units not in the results: not complete yet, or held by another worker (their ids).
    pub missing: Vec<String>,
    /// Units another live worker held ("id (pid P on HOST)"): skipped.
    pub busy: Vec<String>,
}

/// What became of one unit in this call.
enum UnitOutcome {
    /// Made, continued or found complete, and scored.
    Done { scores: units::Scores, work: Work, steps: u64 },
    /// Not complete, and this call does not work on it (`--report`).
    Missing,
    /// `stop` ended it after a checkpoint.
    Interrupted,
}

// ---------------------------------------------------------------------------
// The job
// ---------------------------------------------------------------------------

/// What every unit needs.
struct Context<'a> {
    gpu: &'a Gpu,
    prior: &'a StableDiffusion,
    /// The prior's classifier and its labels, where it has one.
    classifier: Option<(&'a Classifier, Labels)>,
    /// The paper's networks, where the plan names them.
    networks: Option<&'a networks::MetricNets>,
    plan: &'a EvalPlan,
    out: &'a Path,
    model_dir: PathBuf,
    /// The prior's image side (the classified views' size).
    size: usize,
}

impl Context<'_> {
    /// Side of the figure's renders.
    fn figure_side(&self) -> usize {
        self.plan.figure_scale as usize * self.size
    }
}

/// One 3D run of the plan.
struct RunJob {
    method: EvalMethod,
    prompt: String,
    seed: u64,
    cfg: GenerateConfig,
    dir: PathBuf,
}

/// Runs (or continues) the whole evaluation into `out`; see the module doc.
pub fn run_eval(gpu: &Gpu, plan: &EvalPlan, out: &Path, stop: &AtomicBool, progress: impl FnMut(&EvalEvent)) -> Result<EvalSummary> {
    run_eval_units(gpu, plan, out, Selection::All, stop, progress)
}

/// [`run_eval`] on the units `selection` names: all of them then the
/// results; a shard or one unit and no results (`--shard`, `--unit`); or no
/// work and the results from the units that are complete (`--report`).
/// Every unit is claimed before it is worked on ([`claims`]): one held by
/// another live worker is skipped and reported in `busy`.
pub fn run_eval_units(
    gpu: &Gpu,
    plan: &EvalPlan,
    out: &Path,
    selection: Selection,
    stop: &AtomicBool,
    mut progress: impl FnMut(&EvalEvent),
) -> Result<EvalSummary> {
    let started = Instant::now();
    plan.validate()?;
    let units = plan.units();
    selection.check(units.len())?;
    let model_dir = crate::models::model_dir(plan.model.as_deref());
    let kind = job::prior_kind(&model_dir)?;
    let has_classifier = model_dir.join("classifier").is_dir();
    if !has_classifier && plan.clip.is_none() && plan.inception.is_none() {
        return Err(Error::Invalid(format!(
            "eval scores runs with the prior's classifier, and {} has no classifier/ folder: give the paper's networks \
             (--clip DIR, a transformers CLIPModel such as openai/clip-vit-base-patch32, and --inception FILE, converted by \
             tools/convert_inception.py), or use the embedded prior (leave out --model)",
            model_dir.display()
        )));
    }
    // Every config first, so a bad overlay stops the job before any work.
    let mut jobs: Vec<Vec<RunJob>> = Vec::new();
    for prompt in &plan.prompts {
        let mut of_prompt = Vec::new();
        for method in &plan.methods {
            for &seed in &plan.seeds {
                let cfg = plan.run_config(prompt, method, seed, &kind)?;
                let dir = EvalPlan::run_dir(out, prompt, &method.slug, seed);
                of_prompt.push(RunJob { method: method.clone(), prompt: prompt.clone(), seed, cfg, dir });
            }
        }
        jobs.push(of_prompt);
    }
    // The folder is this plan's: shards of one sweep and its report agree;
    // a plain eval runs everything itself and makes its plan the folder's.
    if selection == Selection::All {
        plan.write_plan_file(out)?;
    } else {
        plan.claim_folder(out)?;
    }
    // The networks first: a wrong path fails before any run starts.
    let nets = networks::MetricNets::load(gpu, plan.clip.as_deref(), plan.inception.as_deref())?;
    // Every run records the storage type it ran with (as `generate` does);
    // the overlay is the same for all, so is the type.
    let dtype = job::resolve_dtype(gpu, &mut jobs[0][0].cfg)?;
    for run in jobs.iter_mut().flatten() {
        run.cfg.dtype = dtype.name().to_string();
    }
    let prior = StableDiffusion::load(gpu, &model_dir, dtype)?;
    let classifier = if has_classifier { Some(Classifier::load(gpu, &model_dir)?) } else { None };
    let [size, _] = prior.image_size();
    let ctx = Context {
        gpu,
        prior: &prior,
        classifier: classifier.as_ref().map(|c| (c, Labels::of(c))),
        networks: nets.as_ref(),
        plan,
        out,
        model_dir,
        size,
    };

    let total = units.len();
    let mut summary = EvalSummary { runs: plan.prompts.len() * plan.seeds.len() * plan.methods.len(), ..Default::default() };
    let mut all_views: Vec<RunViews> = Vec::new();
    let mut all_metrics: Vec<MetricViews> = Vec::new();
    let mut records: Vec<RunRecord> = Vec::new();
    let all_jobs: Vec<&RunJob> = jobs.iter().flatten().collect();
    let mut next_job = 0;
    for unit in &units {
        let job = (unit.kind == UnitKind::Run).then(|| {
            next_job += 1;
            all_jobs[next_job - 1]
        });
        let works = selection.includes(unit);
        // A shard or a single unit scores nothing beyond its own units.
        if !works && selection != Selection::Report {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(interrupted(summary, started));
        }
        let _claim = if works {
            match claims::claim(&claims::lock_path(out, &unit.id), claims::STALE_AFTER)? {
                claims::Claimed::Mine(c) => Some(c),
                claims::Claimed::Busy(holder) => {
                    summary.busy.push(format!("{} ({holder})", unit.id));
                    summary.missing.push(unit.id.clone());
                    continue;
                }
            }
        } else {
            None
        };
        let mut on_event = |e: &EvalEvent| {
            if let (EvalEvent::Step(_), Some(c)) = (e, &_claim) {
                c.refresh();
            }
            progress(e)
        };
        let outcome = match (&unit.kind, job) {
            (UnitKind::Reference, _) => {
                let reference = plan.reference.as_ref().expect("reference units come from the plan's reference");
                reference_unit(&ctx, reference, unit, total, works, stop, &mut on_event, &mut summary)?
            }
            (UnitKind::Run, Some(job)) => run_unit(&ctx, job, unit.index, total, works, stop, &mut on_event, &mut summary)?,
            (UnitKind::Run, None) => unreachable!("every run unit has its job"),
        };
        match outcome {
            UnitOutcome::Interrupted => return Ok(interrupted(summary, started)),
            UnitOutcome::Missing => summary.missing.push(unit.id.clone()),
            UnitOutcome::Done { scores, work, steps } => {
                let folder = EvalPlan::run_dir(out, &unit.prompt, &unit.slug, unit.seed);
                records.push(RunRecord { method: unit.label.clone(), prompt: unit.prompt.clone(), seed: unit.seed, folder: relative(out, &folder), work, steps });
                all_views.extend(scores.classifier);
                all_metrics.extend(scores.metrics);
            }
        }
    }
    if matches!(selection, Selection::Shard { .. } | Selection::Unit(_)) {
        summary.finished = true;
        summary.wall_seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    if records.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: none of the plan's {total} units is complete yet (busy: {}); run the shards first",
            out.display(),
            summary.busy.len()
        )));
    }

    progress(&EvalEvent::Writing);
    let evaluation = match &ctx.classifier {
        Some((_, labels)) => Some(report::evaluate(&all_views, labels, &plan.cross_fid_split())?),
        None => None,
    };
    let metrics = match ctx.networks {
        Some(n) => Some(paper::evaluate_metrics(&all_metrics, &n.names, &plan.cross_fid_split())?),
        None => None,
    };
    for prompt in &plan.prompts {
        // A prompt with a missing unit has a hole in its figure: it waits.
        let prefix = format!("{}/", slug(prompt));
        if summary.missing.iter().any(|m| m.starts_with(&prefix)) {
            continue;
        }
        let path = out.join(files::figure(&slug(prompt)));
        write_figure(&ctx, prompt, &jobs, &path)?;
        summary.files.push(path);
    }
    let mut steps_per_run: Vec<u64> = jobs.iter().flatten().map(|j| j.cfg.steps).collect();
    steps_per_run.sort_unstable();
    steps_per_run.dedup();
    let results = EvalResults {
        command: plan.command_line.clone(),
        date: utc_date(std::time::SystemTime::now()),
        adapter: gpu.adapter_name(),
        model: ctx.model_dir.display().to_string(),
        steps_per_run,
        views: plan.views,
        view_size: size,
        reference: plan.reference.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
        runs: records,
        missing: summary.missing.clone(),
        metrics,
        evaluation,
    };
    summary.files.splice(0..0, write_results(out, &results, &summary)?);
    summary.finished = true;
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.results = Some(results);
    Ok(summary)
}

fn interrupted(mut summary: EvalSummary, started: Instant) -> EvalSummary {
    summary.finished = false;
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary
}

fn relative(out: &Path, dir: &Path) -> String {
    dir.strip_prefix(out).unwrap_or(dir).display().to_string()
}

