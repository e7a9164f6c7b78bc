//! What `fsd3d eval` is asked to do: the prompts, the table's rows (methods
//! and their ablation settings), the seeds, the DDIM reference's settings,
//! and each run's config and folder.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diffusion::guidance::Method;
use crate::error::{Error, Result};
use crate::eval::report::CrossFidSplit;
use crate::generate::config::{ConfigFlags, ConfigOverlay};
use crate::generate::job::slug;
use crate::generate::{GenerateConfig, PriorKind};

use super::files;

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
            Method::Csd => "CSD",
            Method::Vsd => "VSD",
        };
        EvalMethod { label: label.into(), slug: method.name().into(), method, beta: None, theta_deg: None }
    }

}

/// The methods of `--methods` (sds, nfsd, fsd, fsd-constant, csd), with `fsd`
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
    /// [`reference_seed`](super::reference_seed)`(s, k)`. Cross-FID needs at least 2 images per
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
    /// A transformers CLIPModel folder: adds the paper's CLIP score.
    pub clip: Option<PathBuf>,
    /// The FID Inception's safetensors file: adds IS and Cross-FID on it.
    pub inception: Option<PathBuf>,
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
// The plan as units: what a sweep's workers share
// ---------------------------------------------------------------------------

/// What one unit makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// The DDIM reference samples of one prompt × seed.
    Reference,
    /// One 3D run: a row (method and ablation) on one prompt × seed.
    Run,
}

/// One unit of the plan: its number in the plan, a stable id (its folder
/// under `runs/`), and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub index: usize,
    /// `<prompt slug>/<row slug>/s<seed>`: the same in every plan that has the unit.
    pub id: String,
    pub kind: UnitKind,
    pub prompt: String,
    /// The row's label ("FSD β=0.5", or the reference's).
    pub label: String,
    /// The row's folder name ("fsd-beta-0.5", "ddim").
    pub slug: String,
    pub seed: u64,
}

/// Which units one call of `eval` works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every unit, then the results (the plain `eval`).
    All,
    /// Units whose index is `i` modulo `n` (`--shard I/N`): disjoint slices
    /// that together cover the plan, each prompt spread over the shards.
    Shard { i: usize, n: usize },
    /// One unit (`--unit K`).
    Unit(usize),
    /// No work: the results from the units that are complete (`--report`).
    Report,
}

impl Selection {
    /// `--shard I/N`.
    pub fn parse_shard(text: &str) -> Result<Selection> {
        let bad = || Error::Invalid(format!("--shard {text:?}: expected I/N with 0 ≤ I < N, e.g. --shard 0/4 (Slurm: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if n == 0 || i >= n {
            return Err(bad());
        }
        Ok(Selection::Shard { i, n })
    }

    /// Does this call work on `unit`?
    pub fn includes(&self, unit: &Unit) -> bool {
        match *self {
            Selection::All => true,
            Selection::Shard { i, n } => unit.index % n == i,
            Selection::Unit(k) => unit.index == k,
            Selection::Report => false,
        }
    }

    /// Checks the selection against the plan's unit count.
    pub fn check(&self, units: usize) -> Result<()> {
        match *self {
            Selection::Unit(k) if k >= units => {
                Err(Error::Invalid(format!("--unit {k}: the plan has {units} units, numbered 0 to {}", units.saturating_sub(1))))
            }
            Selection::Shard { n, .. } if n > units => Err(Error::Invalid(format!(
                "--shard .../{n}: the plan has only {units} units; use at most {units} shards (more would leave some empty)"
            ))),
            _ => Ok(()),
        }
    }
}

/// `plan.json`: the units and the settings they were planned from. Workers
/// of one sweep check that they run the plan the folder holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanFile {
    /// The format (1).
    pub fsd3d_plan: u32,
    /// FNV-1a of `settings` as JSON: two plans with the same settings are one plan.
    pub fingerprint: String,
    pub settings: serde_json::Value,
    pub units: Vec<Unit>,
}

impl EvalPlan {
    /// Every unit in the order the plain `eval` runs them: per prompt, the
    /// reference seeds, then each row's seeds.
    pub fn units(&self) -> Vec<Unit> {
        let mut out = Vec::new();
        for prompt in &self.prompts {
            let mut push = |kind: UnitKind, label: &str, row_slug: &str, seed: u64| {
                let id = format!("{}/{row_slug}/s{seed}", slug(prompt));
                out.push(Unit { index: out.len(), id, kind, prompt: prompt.clone(), label: label.to_string(), slug: row_slug.to_string(), seed });
            };
            if self.reference.is_some() {
                for &seed in &self.seeds {
                    push(UnitKind::Reference, super::DDIM_LABEL, super::DDIM_SLUG, seed);
                }
            }
            for method in &self.methods {
                for &seed in &self.seeds {
                    push(UnitKind::Run, &method.label, &method.slug, seed);
                }
            }
        }
        out
    }

    /// What makes two plans the same plan: everything but the command line.
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "prompts": self.prompts,
            "seeds": self.seeds,
            "methods": self.methods,
            "model": self.model,
            "steps": self.steps,
            "config": self.config.as_ref().map(|c| &c.text),
            "views": self.views,
            "figure_scale": self.figure_scale,
            "reference": self.reference,
            "clip": self.clip,
            "inception": self.inception,
        })
    }

    /// The plan file of this plan.
    pub fn plan_file(&self) -> PlanFile {
        let settings = self.settings();
        let fingerprint = format!("{:016x}", crate::io::fnv1a64(&[settings.to_string().as_bytes()]));
        PlanFile { fsd3d_plan: 1, fingerprint, settings, units: self.units() }
    }

    /// Writes `OUT/plan.json` as this plan's, replacing another plan's: what
    /// a plain `eval` does, which runs every unit itself (each run folder
    /// still refuses a run config other than its own).
    pub fn write_plan_file(&self, out: &Path) -> Result<PlanFile> {
        let file = self.plan_file();
        std::fs::create_dir_all(out).map_err(|e| Error::Io { path: out.to_path_buf(), cause: e })?;
        let json = serde_json::to_string_pretty(&file).map_err(|e| Error::Invalid(format!("plan.json: {e}")))?;
        crate::io::write_atomic(&out.join(files::PLAN), json.as_bytes())?;
        Ok(file)
    }

    /// Writes `OUT/plan.json`, or checks that the one there is this plan's:
    /// the shards of a sweep and its report never mix two plans' units.
    pub fn claim_folder(&self, out: &Path) -> Result<PlanFile> {
        let file = self.plan_file();
        let path = out.join(files::PLAN);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let existing: PlanFile = serde_json::from_str(&text).map_err(|e| {
                    Error::Invalid(format!("{}: not a readable plan ({e}); it is not fsd3d's, or damaged: give eval another --out", path.display()))
                })?;
                if existing.fingerprint != file.fingerprint || existing.units != file.units {
                    let what = differing_setting(&existing.settings, &file.settings).unwrap_or_else(|| "the units".into());
                    return Err(Error::Invalid(format!(
                        "{} was made by a different plan ({what} differs); give this plan another --out, or repeat that plan's options",
                        out.display()
                    )));
                }
                Ok(existing)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(out).map_err(|e| Error::Io { path: out.to_path_buf(), cause: e })?;
                let json = serde_json::to_string_pretty(&file).map_err(|e| Error::Invalid(format!("plan.json: {e}")))?;
                crate::io::write_atomic(&path, json.as_bytes())?;
                Ok(file)
            }
            Err(e) => Err(Error::Io { path, cause: e }),
        }
    }
}

/// The first top-level setting in which two plans differ.
fn differing_setting(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    let (a, b) = (a.as_object()?, b.as_object()?);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().find(|k| a.get(*k) != b.get(*k)).cloned()
}
