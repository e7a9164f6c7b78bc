//! `fsd3d eval`: the paper's evaluation (FSD_SPEC §6) as one resumable job.
//!
//! For every prompt × method × seed it makes (or finds) a 3D run, renders
//! `views` views around the object at the prior's own resolution, and asks
//! the embedded prior's classifier about them; for every prompt × seed it
//! draws DDIM samples from the prior itself as the reference row. Then the
//! table ([`report::evaluate`]), `results.md`, `results.json` and one
//! methods × seeds figure per prompt.
//!
//! ```text
//! OUT/
//!   results.md, results.json, figure_<prompt>.png
//!   runs/<prompt>/<method>/s<seed>/   config.toml, log.csv, checkpoint.safetensors,
//!                                     summary.json, renders.png (the classified views),
//!                                     render_0deg.png (the figure's cell), eval_views.json
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::diffusion::guidance::Method;
use crate::diffusion::sampler::{SampleRequest, ddim_sample_batch};
use crate::diffusion::size::ImageSize;
use crate::error::{Error, Result};
use crate::eval::figure::labelled_grid;
use crate::eval::metrics::Labels;
use crate::eval::report::{self, CrossFidSplit, Evaluation, RunViews};
use crate::export::{self, Rgb8};
use crate::generate::config::{ConfigFlags, ConfigOverlay};
use crate::generate::job::{self, slug};
use crate::generate::outputs::Outputs;
use crate::generate::{self as g, Finish, GenerateConfig, Generator, PriorKind, StepReport};
use crate::gpu::{DType, Gpu};
use crate::models::classifier::Classifier;
use crate::models::prior::{Prior, StableDiffusion};
use crate::ops::render::Shading;
use crate::scene::camera::eval_cameras;

/// The method label of the DDIM reference row.
pub const DDIM_LABEL: &str = "DDIM (reference)";
/// The DDIM reference row's folder name under a prompt.
pub const DDIM_SLUG: &str = "ddim";

/// File names in the output folder and in each run folder.
pub mod files {
    pub const RESULTS_MD: &str = "results.md";
    pub const RESULTS_JSON: &str = "results.json";
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
// The plan
// ---------------------------------------------------------------------------

/// One row of the table: a method with its ablation setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMethod {
    /// What the table and figure call it: "FSD", "SDS", "FSD β=0.5", "FSD Θ=120".
    pub label: String,
    /// Its folder name: "fsd", "sds", "fsd-beta-0.5", "fsd-theta-120".
    pub slug: String,
    pub method: Method,
    /// World-map blend β, when this row sets it.
    pub beta: Option<f32>,
    /// World-map patch span Θ in degrees, when this row sets it.
    pub theta_deg: Option<f64>,
}

impl EvalMethod {
    /// A method with the defaults.
    pub fn plain(method: Method) -> EvalMethod {
        let label = match method {
            Method::Sds => "SDS",
            Method::Nfsd => "NFSD",
            Method::Fsd => "FSD",
            Method::FsdConstant => "FSD constant noise",
        };
        EvalMethod { label: label.into(), slug: method.name().into(), method, beta: None, theta_deg: None }
    }

}

/// The methods of `--methods` (sds, nfsd, fsd, fsd-constant), with `fsd`
/// expanded into one row per β of `betas` and per Θ of `thetas` (every
/// combination when both are given: "FSD β=0.5 Θ=120"). An unknown method,
/// a repeated one, or an ablation list without `fsd` to expand is an error.
pub fn expand_methods(names: &[String], betas: &[f32], thetas: &[f64]) -> Result<Vec<EvalMethod>> {
    let mut out: Vec<EvalMethod> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let method = Method::parse(&name.to_lowercase())?;
        if out.iter().any(|m| m.method == method) {
            return Err(Error::Invalid(format!("--methods lists {name:?} twice")));
        }
        if method != Method::Fsd || (betas.is_empty() && thetas.is_empty()) {
            out.push(EvalMethod::plain(method));
            continue;
        }
        for &b in betas {
            if !(0.0..=1.0).contains(&b) {
                return Err(Error::Invalid(format!("--beta {b}: the world-map blend β must be in [0, 1]")));
            }
        }
        for &t in thetas {
            if !(t > 0.0 && t <= 360.0) {
                return Err(Error::Invalid(format!("--theta {t}: the patch span Θ must be in (0, 360] degrees")));
            }
        }
        let beta_opts: Vec<Option<f32>> = if betas.is_empty() { vec![None] } else { betas.iter().copied().map(Some).collect() };
        let theta_opts: Vec<Option<f64>> = if thetas.is_empty() { vec![None] } else { thetas.iter().copied().map(Some).collect() };
        for &beta in &beta_opts {
            for &theta_deg in &theta_opts {
                let (mut label, mut slug) = ("FSD".to_string(), "fsd".to_string());
                if let Some(b) = beta {
                    label.push_str(&format!(" β={b}"));
                    slug.push_str(&format!("-beta-{b}"));
                }
                if let Some(t) = theta_deg {
                    label.push_str(&format!(" Θ={t}"));
                    slug.push_str(&format!("-theta-{t}"));
                }
                out.push(EvalMethod { label, slug, method, beta, theta_deg });
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("--methods is empty: give a comma list such as fsd,sds (of sds, nfsd, fsd, fsd-constant)".into()));
    }
    if (!betas.is_empty() || !thetas.is_empty()) && !out.iter().any(|m| m.method == Method::Fsd) {
        return Err(Error::Invalid("--beta and --theta expand the fsd method, but --methods has no fsd; add it (e.g. --methods fsd,sds)".into()));
    }
    for (i, m) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.slug == m.slug) {
            return Err(Error::Invalid(format!("two rows are both {:?}: give --beta / --theta values only once", m.label)));
        }
    }
    Ok(out)
}

/// The prompts of a prompts file: one per line, blank lines and lines
/// starting with `#` skipped, surrounding whitespace trimmed.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("reading the prompts file {}: {e}", path.display())))?;
    parse_prompts(&text, &path.display().to_string())
}

/// [`read_prompts`] on text; `what` names the source in errors.
pub fn parse_prompts(text: &str, what: &str) -> Result<Vec<String>> {
    let prompts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if prompts.is_empty() {
        return Err(Error::Invalid(format!(
            "{what}: no prompts (every line is blank or a # comment); write one prompt per line, e.g. \"a red cube\""
        )));
    }
    Ok(prompts)
}

/// The DDIM reference row: samples of the prior itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DdimReference {
    pub steps: usize,
    pub cfg: f32,
    /// DDIM's η (0 deterministic, 1 ancestral).
    pub eta: f32,
    /// Samples per seed: sample k of seed s uses the noise seed
    /// [`reference_seed`]`(s, k)`. Cross-FID needs at least 2 images per
    /// seed half, and one image per seed gives only 1 per half with 2 seeds.
    pub samples_per_seed: usize,
}

impl Default for DdimReference {
    /// The embedded prior's sampling settings (50 steps, CFG 1.5, η = 1: it follows
    /// both words of a prompt there), 6 samples per seed.
    fn default() -> Self {
        DdimReference { steps: 50, cfg: 1.5, eta: 1.0, samples_per_seed: 6 }
    }
}

/// The noise seed of DDIM sample `k` for seed `s`: `s` itself for k = 0 (so
/// sample 0 is `fsd3d sample --seed s`), then `s + k·2³²`, which no small
/// seed of another column reaches.
pub fn reference_seed(seed: u64, k: usize) -> u64 {
    seed.wrapping_add((k as u64) << 32)
}

/// Everything `fsd3d eval` does.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    pub prompts: Vec<String>,
    pub seeds: Vec<u64>,
    /// Table rows in order (see [`expand_methods`]).
    pub methods: Vec<EvalMethod>,
    /// The prior's folder (None: `$FSD3D_MODEL`, else the embedded prior).
    pub model: Option<PathBuf>,
    /// Steps of every run (None: the prior's default).
    pub steps: Option<u64>,
    pub config: Option<ConfigOverlay>,
    /// Views per object (the paper: 24).
    pub views: usize,
    /// Side of the figure's renders (the 0° view of each run) as a multiple
    /// of the prior's resolution: 4 gives 128² for the embedded prior.
    pub figure_scale: u32,
    /// The DDIM reference row; None leaves it out.
    pub reference: Option<DdimReference>,
    /// The command that made this plan, for the results header.
    pub command_line: String,
}

impl EvalPlan {
    /// Checks the plan before any work.
    pub fn validate(&self) -> Result<()> {
        if self.prompts.is_empty() {
            return Err(Error::Invalid("eval: no prompts".into()));
        }
        if self.seeds.is_empty() {
            return Err(Error::Invalid("eval: no seeds; give e.g. --seeds 0,1,2,3".into()));
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if self.seeds[..i].contains(s) {
                return Err(Error::Invalid(format!("eval: seed {s} is listed twice")));
            }
        }
        if self.methods.is_empty() {
            return Err(Error::Invalid("eval: no methods; give e.g. --methods fsd,sds".into()));
        }
        for (i, p) in self.prompts.iter().enumerate() {
            if let Some(q) = self.prompts[..i].iter().find(|q| slug(q) == slug(p)) {
                return Err(Error::Invalid(format!(
                    "eval: the prompts {q:?} and {p:?} share the folder name {:?}; list each prompt once (they differ only in case or punctuation)",
                    slug(p)
                )));
            }
        }
        if self.views == 0 {
            return Err(Error::Invalid("eval: --views must be at least 1 (the paper uses 24)".into()));
        }
        if !(1..=16).contains(&self.figure_scale) {
            return Err(Error::Invalid(format!("eval: --figure-scale {} must be 1 to 16 (times the prior's resolution)", self.figure_scale)));
        }
        if let Some(r) = &self.reference {
            if r.steps == 0 || r.samples_per_seed == 0 {
                return Err(Error::Invalid("eval: the DDIM reference needs at least 1 step and 1 sample per seed".into()));
            }
            if !(r.cfg.is_finite() && r.cfg > 0.0) {
                return Err(Error::Invalid(format!("eval: DDIM cfg {} must be a positive number", r.cfg)));
            }
        }
        Ok(())
    }

    /// The Cross-FID halves: the first half of the seeds against the rest
    /// (the paper's {0, 1} vs {2, 3} for seeds 0..3).
    pub fn cross_fid_split(&self) -> CrossFidSplit {
        let half = self.seeds.len() / 2;
        CrossFidSplit { a: self.seeds[..half].to_vec(), b: self.seeds[half..].to_vec() }
    }

    /// The config of one run: the layers `generate` stacks, with this
    /// plan's --steps, the seed and the row's ablation setting as the flags.
    pub fn run_config(&self, prompt: &str, method: &EvalMethod, seed: u64, kind: &PriorKind) -> Result<GenerateConfig> {
        let flags = ConfigFlags {
            model: self.model.clone(),
            seed: Some(seed),
            steps: self.steps,
            beta: method.beta,
            theta_deg: method.theta_deg,
            ..ConfigFlags::default()
        };
        GenerateConfig::layered(prompt, method.method, kind, self.config.as_ref(), &flags)
    }

    /// `OUT/runs/<prompt>/<method>/s<seed>`.
    pub fn run_dir(out: &Path, prompt: &str, method_slug: &str, seed: u64) -> PathBuf {
        out.join(files::RUNS).join(slug(prompt)).join(method_slug).join(format!("s{seed}"))
    }
}

// ---------------------------------------------------------------------------
// Progress and results
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

/// One unit in `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub method: String,
    pub prompt: String,
    pub seed: u64,
    /// Relative to the output folder.
    pub folder: String,
    pub work: Work,
    /// Optimisation steps at the end (0 for the reference).
    pub steps: u64,
}

/// `results.json`: the evaluation and what it was computed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub command: String,
    /// UTC, YYYY-MM-DD.
    pub date: String,
    pub adapter: String,
    pub model: String,
    /// The distinct step counts of the runs.
    pub steps_per_run: Vec<u64>,
    pub views: usize,
    /// Side of the classified views (the prior's resolution).
    pub view_size: usize,
    pub reference: Option<DdimReference>,
    pub wall_seconds: f64,
    pub runs: Vec<RunRecord>,
    pub evaluation: Evaluation,
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
}

// ---------------------------------------------------------------------------
// The job
// ---------------------------------------------------------------------------

/// What every unit needs.
struct Context<'a> {
    gpu: &'a Gpu,
    prior: &'a StableDiffusion,
    classifier: &'a Classifier,
    labels: Labels,
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
pub fn run_eval(gpu: &Gpu, plan: &EvalPlan, out: &Path, stop: &AtomicBool, mut progress: impl FnMut(&EvalEvent)) -> Result<EvalSummary> {
    let started = Instant::now();
    plan.validate()?;
    let model_dir = crate::models::model_dir(plan.model.as_deref());
    let kind = job::prior_kind(&model_dir)?;
    if !model_dir.join("classifier").is_dir() {
        return Err(Error::Invalid(format!(
            "eval scores runs with the prior's classifier, and {} has no classifier/ folder; use the embedded prior (leave out --model)",
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
    // Every run records the storage type it ran with (as `generate` does);
    // the overlay is the same for all, so is the type.
    let dtype = job::resolve_dtype(gpu, &mut jobs[0][0].cfg)?;
    for run in jobs.iter_mut().flatten() {
        run.cfg.dtype = dtype.name().to_string();
    }
    let prior = StableDiffusion::load(gpu, &model_dir, dtype)?;
    let classifier = Classifier::load(gpu, &model_dir)?;
    let [size, _] = prior.image_size();
    let ctx = Context { gpu, prior: &prior, classifier: &classifier, labels: Labels::of(&classifier), plan, out, model_dir, size };

    let per_prompt = plan.seeds.len() * (plan.methods.len() + plan.reference.is_some() as usize);
    let total = plan.prompts.len() * per_prompt;
    let mut summary = EvalSummary { runs: plan.prompts.len() * plan.seeds.len() * plan.methods.len(), ..Default::default() };
    let mut all_views: Vec<RunViews> = Vec::new();
    let mut records: Vec<RunRecord> = Vec::new();
    let mut index = 0;
    for (prompt, runs) in plan.prompts.iter().zip(&jobs) {
        if let Some(reference) = &plan.reference {
            for &seed in &plan.seeds {
                if stop.load(Ordering::SeqCst) {
                    return Ok(interrupted(summary, started));
                }
                let Some((views, work)) = reference_unit(&ctx, reference, prompt, seed, index, total, stop, &mut progress, &mut summary)? else {
                    return Ok(interrupted(summary, started));
                };
                let folder = reference_dir(out, prompt, seed);
                records.push(RunRecord { method: DDIM_LABEL.into(), prompt: prompt.clone(), seed, folder: relative(out, &folder), work, steps: 0 });
                all_views.push(views);
                index += 1;
            }
        }
        for job in runs {
            if stop.load(Ordering::SeqCst) {
                return Ok(interrupted(summary, started));
            }
            let Some((views, work, steps)) = run_unit(&ctx, job, index, total, stop, &mut progress, &mut summary)? else {
                return Ok(interrupted(summary, started));
            };
            records.push(RunRecord {
                method: job.method.label.clone(),
                prompt: job.prompt.clone(),
                seed: job.seed,
                folder: relative(out, &job.dir),
                work,
                steps,
            });
            all_views.push(views);
            index += 1;
        }
    }

    progress(&EvalEvent::Writing);
    let evaluation = report::evaluate(&all_views, &ctx.labels, &plan.cross_fid_split())?;
    for prompt in &plan.prompts {
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
        evaluation,
    };
    let md_path = out.join(files::RESULTS_MD);
    crate::io::write_atomic(&md_path, results_markdown(&results, &summary).as_bytes())?;
    let json_path = out.join(files::RESULTS_JSON);
    let json = serde_json::to_string_pretty(&results).map_err(|e| Error::Invalid(format!("results.json: {e}")))?;
    crate::io::write_atomic(&json_path, json.as_bytes())?;
    summary.files.splice(0..0, [md_path, json_path]);
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

// ---------------------------------------------------------------------------
// 3D runs
// ---------------------------------------------------------------------------

/// Where a run folder stands.
#[derive(Debug)]
enum RunState {
    /// Nothing usable: optimise from step 0.
    Fresh,
    /// A checkpoint at this step, before the end.
    Partial(u64),
    /// A checkpoint at the configured steps.
    Complete,
    /// Complete, and the classifier's outputs for this many views are cached.
    Cached(CachedViews),
}

/// `eval_views.json`: the classifier's outputs on a run's views.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedViews {
    steps: u64,
    views: usize,
    size: usize,
    features: Vec<f32>,
    shape_logits: Vec<f32>,
    colour_logits: Vec<f32>,
}

/// One 3D run: makes, continues or finds it, then its views' classifier
/// outputs. None when `stop` interrupted it (after its checkpoint).
#[allow(clippy::too_many_arguments)]
fn run_unit(
    ctx: &Context<'_>,
    job: &RunJob,
    index: usize,
    total: usize,
    stop: &AtomicBool,
    progress: &mut impl FnMut(&EvalEvent),
    summary: &mut EvalSummary,
) -> Result<Option<(RunViews, Work, u64)>> {
    let steps = job.cfg.steps;
    let state = inspect_run(&job.dir, &job.cfg, ctx.plan.views, ctx.size, ctx.figure_side())?;
    let (work, from) = match &state {
        RunState::Fresh => (Work::Fresh, 0),
        RunState::Partial(s) => (Work::Resumed, *s),
        RunState::Complete | RunState::Cached(_) => (Work::Reused, steps),
    };
    progress(&EvalEvent::Unit { index, total, label: &job.method.label, prompt: &job.prompt, seed: job.seed, work, step: from, steps });
    let to_views = |c: &CachedViews| {
        RunViews::from_classifier_outputs(&job.method.label, &job.prompt, job.seed, &c.features, &c.shape_logits, &c.colour_logits, &ctx.labels)
    };
    if let RunState::Cached(c) = &state {
        summary.reused += 1;
        return Ok(Some((to_views(c)?, work, steps)));
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
            return Ok(None);
        }
        write_run_summary(ctx, &job.dir, &run, &outcome)?;
    }
    match work {
        Work::Fresh => summary.fresh += 1,
        Work::Resumed => summary.resumed += 1,
        _ => summary.reused += 1,
    }
    progress(&EvalEvent::Views);
    let cached = render_and_classify(ctx, &run, &job.dir)?;
    Ok(Some((to_views(&cached)?, work, steps)))
}

/// Reads a run folder: its config (which must match the plan's but for the
/// step count), checkpoint step, summary, cached classifier outputs and 0° render.
fn inspect_run(dir: &Path, cfg: &GenerateConfig, views: usize, size: usize, front_side: usize) -> Result<RunState> {
    let checkpoint_step = checkpoint_step(&dir.join(g::files::CHECKPOINT))?;
    let summary_steps = completed_summary_steps(&dir.join(g::files::SUMMARY));
    if checkpoint_step.is_none() && summary_steps.is_none() {
        return Ok(RunState::Fresh);
    }
    let config_path = dir.join(g::files::CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::Io { path: config_path.clone(), source: e })?;
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
    let cache = std::fs::read_to_string(dir.join(files::VIEWS)).ok().and_then(|t| serde_json::from_str::<CachedViews>(&t).ok());
    let front = export::image::read_png(&dir.join(files::FRONT)).is_ok_and(|f| (f.width, f.height) == (front_side, front_side));
    match cache {
        Some(c) if complete && front && c.steps == steps && c.views == views && c.size == size => Ok(RunState::Cached(c)),
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
        Err(e) => return Err(Error::Io { path: path.to_path_buf(), source: e }),
    };
    let io = |e| Error::Io { path: path.to_path_buf(), source: e };
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
        files: vec![files::VIEW_GRID.into(), files::FRONT.into(), files::VIEWS.into()],
        mesh: None,
        mesh_error: Some(format!("eval runs skip the mesh and turntable; `fsd3d generate --resume {}` writes them", dir.display())),
        verdict: None,
        seconds: 0.0,
    };
    job::write_summary(ctx.gpu, run, outcome, &outputs, dir)
}

/// Renders the views around the object at the prior's resolution (as
/// `outputs::classify_views`: diffuse shading, 8-bit) and the 0° view larger,
/// classifies the views, and writes the view grid, the 0° render and the cache.
fn render_and_classify(ctx: &Context<'_>, run: &Generator<'_>, dir: &Path) -> Result<CachedViews> {
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
    let mut cached = classify(ctx, &images)?;
    cached.steps = run.step;
    let json = serde_json::to_string(&cached).map_err(|e| Error::Invalid(format!("{}: {e}", files::VIEWS)))?;
    crate::io::write_atomic(&dir.join(files::VIEWS), json.as_bytes())?;
    Ok(cached)
}

/// The classifier on 8-bit images of the prior's size (x = byte / 127.5 − 1,
/// as the classifier was trained). `steps` is left 0 for the caller.
fn classify(ctx: &Context<'_>, images: &[Rgb8]) -> Result<CachedViews> {
    let s = ctx.size;
    if let Some(img) = images.iter().find(|img| (img.width, img.height) != (s, s)) {
        return Err(Error::Invalid(format!("eval: an image is {}x{}, the classifier reads {s}x{s}", img.width, img.height)));
    }
    let (pixels, shape) = export::image::to_signed_nchw(images)?;
    let x = ctx.gpu.upload(&pixels, &shape, DType::F32)?;
    let out = ctx.classifier.classify(ctx.gpu, &x)?;
    Ok(CachedViews {
        steps: 0,
        views: images.len(),
        size: s,
        features: ctx.gpu.download(&out.features)?,
        shape_logits: ctx.gpu.download(&out.shape_logits)?,
        colour_logits: ctx.gpu.download(&out.colour_logits)?,
    })
}

// ---------------------------------------------------------------------------
// The DDIM reference
// ---------------------------------------------------------------------------

/// `ddim.json`: what a seed's reference samples were drawn with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DdimParams {
    prompt: String,
    model: String,
    steps: usize,
    cfg: f32,
    /// The noise seed of each sample.
    seeds: Vec<u64>,
}

/// `OUT/runs/<prompt>/ddim/s<seed>`.
fn reference_dir(out: &Path, prompt: &str, seed: u64) -> PathBuf {
    EvalPlan::run_dir(out, prompt, DDIM_SLUG, seed)
}

/// One seed's DDIM samples: found on disk with the same settings, or drawn
/// (and written as PNGs); then classified. None when `stop` interrupted it.
#[allow(clippy::too_many_arguments)]
fn reference_unit(
    ctx: &Context<'_>,
    reference: &DdimReference,
    prompt: &str,
    seed: u64,
    index: usize,
    total: usize,
    stop: &AtomicBool,
    progress: &mut impl FnMut(&EvalEvent),
    summary: &mut EvalSummary,
) -> Result<Option<(RunViews, Work)>> {
    let dir = reference_dir(ctx.out, prompt, seed);
    let params = DdimParams {
        prompt: prompt.to_string(),
        model: ctx.model_dir.display().to_string(),
        steps: reference.steps,
        cfg: reference.cfg,
        seeds: (0..reference.samples_per_seed).map(|k| reference_seed(seed, k)).collect(),
    };
    let params_path = dir.join(files::DDIM_PARAMS);
    let same = std::fs::read_to_string(&params_path).ok().and_then(|t| serde_json::from_str::<DdimParams>(&t).ok()).is_some_and(|p| p == params);
    let have = |k: usize| same && dir.join(files::ddim_sample(k)).is_file();
    let missing: Vec<usize> = (0..params.seeds.len()).filter(|&k| !have(k)).collect();
    let work = if missing.is_empty() { Work::Reused } else { Work::Sampled };
    progress(&EvalEvent::Unit { index, total, label: DDIM_LABEL, prompt, seed, work, step: 0, steps: 0 });
    if !same {
        let json = serde_json::to_string_pretty(&params).map_err(|e| Error::Invalid(format!("{}: {e}", files::DDIM_PARAMS)))?;
        crate::io::write_atomic(&params_path, json.as_bytes())?;
    }
    // The missing samples in one batch (one UNet call per step for all).
    let mut drawn: Vec<Option<Rgb8>> = vec![None; params.seeds.len()];
    if !missing.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let reqs: Vec<SampleRequest> = missing
            .iter()
            .map(|&k| SampleRequest { prompt: prompt.to_string(), negative: None, steps: reference.steps, cfg: reference.cfg, eta: reference.eta, seed: params.seeds[k], size: ImageSize::default(), latents: None })
            .collect();
        let n = reqs.len();
        let x = ddim_sample_batch(ctx.gpu, ctx.prior, &reqs, |step, steps| progress(&EvalEvent::Sample { samples: n, step, steps }))?;
        let values = ctx.gpu.download(&x)?;
        for (b, &k) in missing.iter().enumerate() {
            let rgb = export::image::from_signed_nchw(&values, x.shape(), b)?;
            export::write_png(&dir.join(files::ddim_sample(k)), &rgb)?;
            drawn[k] = Some(rgb);
            summary.samples_drawn += 1;
        }
    }
    let mut images = Vec::with_capacity(params.seeds.len());
    for (k, fresh) in drawn.into_iter().enumerate() {
        match fresh {
            Some(rgb) => images.push(rgb),
            None => {
                images.push(export::image::read_png(&dir.join(files::ddim_sample(k)))?);
                summary.samples_reused += 1;
            }
        }
    }
    let c = classify(ctx, &images)?;
    let views = RunViews::from_classifier_outputs(DDIM_LABEL, prompt, seed, &c.features, &c.shape_logits, &c.colour_logits, &ctx.labels)?;
    Ok(Some((views, work)))
}

// ---------------------------------------------------------------------------
// Figure and markdown
// ---------------------------------------------------------------------------

/// Methods as rows (the reference first), seeds as columns; a cell is the
/// run's 0° render at `figure_scale` × the prior's resolution, or the seed's
/// first DDIM sample (scaled up to the same cell).
fn write_figure(ctx: &Context<'_>, prompt: &str, jobs: &[Vec<RunJob>], path: &Path) -> Result<()> {
    let plan = ctx.plan;
    let mut rows: Vec<(String, Vec<Rgb8>)> = Vec::new();
    if plan.reference.is_some() {
        let cells = plan
            .seeds
            .iter()
            .map(|&s| export::image::read_png(&reference_dir(ctx.out, prompt, s).join(files::ddim_sample(0))))
            .collect::<Result<Vec<_>>>()?;
        rows.push((DDIM_LABEL.to_string(), cells));
    }
    for method in &plan.methods {
        let cells = jobs
            .iter()
            .flatten()
            .filter(|j| j.prompt == prompt && j.method.slug == method.slug)
            .map(|j| export::image::read_png(&j.dir.join(files::FRONT)))
            .collect::<Result<Vec<_>>>()?;
        rows.push((method.label.clone(), cells));
    }
    let columns: Vec<String> = plan.seeds.iter().map(|s| format!("seed {s}")).collect();
    export::write_png(path, &labelled_grid(&rows, &columns, ctx.figure_side() as u32)?)
}

/// `results.md`: what was run, then the table of [`report::results_markdown`].
fn results_markdown(r: &EvalResults, s: &EvalSummary) -> String {
    let steps = r.steps_per_run.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let mut md = String::from("# fsd3d evaluation\n\n");
    md.push_str(&format!("- Command: `{}`\n", r.command));
    md.push_str(&format!("- Date: {} (UTC)\n", r.date));
    md.push_str(&format!("- Adapter: {}\n", r.adapter));
    md.push_str(&format!("- Model: {}\n", r.model));
    md.push_str(&format!("- Steps per run: {steps}; {} views per object at {}×{} (evenly spaced azimuths at the evaluation elevation)\n", r.views, r.view_size, r.view_size));
    md.push_str(&format!(
        "- This call: {:.1} s wall time; runs {} fresh, {} resumed, {} reused ({} optimisation steps); DDIM samples {} drawn, {} reused\n",
        r.wall_seconds, s.fresh, s.resumed, s.reused, s.steps_optimised, s.samples_drawn, s.samples_reused
    ));
    if let Some(d) = &r.reference {
        let split = &r.evaluation.cross_fid_split;
        md.push_str(&format!(
            "- {DDIM_LABEL}: the prior's own DDIM samples ({} steps, CFG {}), {} per seed (noise seeds s, s + 2³², s + 2·2³², …). \
             Its IS pools {} samples per prompt and its Cross-FID compares {} samples per half, where a 3D row has {} views per seed: \
             fewer images, and independent samples rather than views of one object.\n",
            d.steps,
            d.cfg,
            d.samples_per_seed,
            d.samples_per_seed * (split.a.len() + split.b.len()),
            d.samples_per_seed * split.a.len().min(split.b.len()),
            r.views
        ));
    }
    md.push_str("- Θ in method labels is in degrees. The classifier of the embedded prior stands in for CLIP and Inception (FSD_SPEC §6).\n\n");
    md.push_str(&report::results_markdown(&r.evaluation));
    md
}

/// A date as YYYY-MM-DD in UTC.
pub fn utc_date(now: std::time::SystemTime) -> String {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    date_of_unix_days((secs / 86_400) as i64)
}

/// The civil (proleptic Gregorian) date of a day count since 1970-01-01:
/// shift to years starting in March so the leap day is the last of the
/// year, then split 400-year eras, years and months of 153-day halves.
pub fn date_of_unix_days(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02}")
}
