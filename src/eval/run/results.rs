//! What a finished evaluation writes: `results.json` (the evaluation and
//! what it was computed with), `results.md` (a header, then the table of
//! `eval::report`) and one methods × seeds figure per prompt.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::figure::labelled_grid;
use crate::eval::paper::{self, MetricEvaluation};
use crate::eval::report::{self, Evaluation};
use crate::export::{self, Rgb8};

use super::plan::DdimReference;
use super::reference::{DDIM_LABEL, reference_dir};
use super::{Context, EvalSummary, RunJob, Work, files};

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
    /// Units of the plan not in these results (`--report` before every shard
    /// finished, or units another worker held): their ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The paper's metrics on CLIP and Inception-v3, where the plan named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricEvaluation>,
    /// The prior's classifier's view, where the prior has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
}

/// Methods as rows (the reference first), seeds as columns; a cell is the
/// run's 0° render at `figure_scale` × the prior's resolution, or the seed's
/// first DDIM sample (scaled up to the same cell).
pub(super) fn write_figure(ctx: &Context<'_>, prompt: &str, jobs: &[Vec<RunJob>], path: &Path) -> Result<()> {
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
        let split = r.metrics.as_ref().map(|m| &m.cross_fid_split).or(r.evaluation.as_ref().map(|e| &e.cross_fid_split)).expect("a table");
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
    md.push_str("- Θ in method labels is in degrees.\n");
    if !r.missing.is_empty() {
        md.push_str(&format!(
            "- **Incomplete: {} units of the plan are missing** and not in these tables (nor are the figures of their prompts): {}. \
             Run their shards, then `--report` again.\n",
            r.missing.len(),
            r.missing.join(", ")
        ));
    }
    md.push('\n');
    if let Some(m) = &r.metrics {
        md.push_str("## The paper's metrics (CLIP ViT, Inception-v3)\n\n");
        md.push_str(&paper::metrics_markdown(m));
        md.push('\n');
    }
    if let Some(e) = &r.evaluation {
        md.push_str("## The prior's classifier\n\nThe classifier of the embedded prior stands in for CLIP and Inception (FSD_SPEC §6).\n\n");
        md.push_str(&report::results_markdown(e));
    }
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

/// Writes `results.md` and `results.json` into `out`; returns their paths.
pub(super) fn write_results(out: &Path, results: &EvalResults, summary: &EvalSummary) -> Result<[PathBuf; 2]> {
    let md_path = out.join(files::RESULTS_MD);
    crate::io::write_atomic(&md_path, results_markdown(results, summary).as_bytes())?;
    let json_path = out.join(files::RESULTS_JSON);
    let json = serde_json::to_string_pretty(results).map_err(|e| Error::Invalid(format!("results.json: {e}")))?;
    crate::io::write_atomic(&json_path, json.as_bytes())?;
    Ok([md_path, json_path])
}
