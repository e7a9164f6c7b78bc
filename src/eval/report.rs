//! The evaluation table (FSD_SPEC §6, the paper's Tables 1–2) from the
//! classifier's view of every run: per run prompt fidelity; per (method,
//! prompt) the Inception Score over all its views and the Cross-FID between
//! the views of seeds {0, 1} and {2, 3}; per method the means ± sample std of
//! those, printed as markdown or written as JSON.
//!
//! A "method" is only a label: "DDIM" (the reference images), "SDS", "FSD",
//! and for an ablation whatever names the setting ("FSD β=0.5",
//! "FSD Θ=2", "FSD constant noise"). Rows keep the order in which methods and
//! prompts first appear in the input, so the caller decides the table's order.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::metrics::{
    Labels, MeanStd, frechet_distance, inception_score, joint_inception_score, mean_std, prompt_fidelity, rows_of, softmax_rows,
};

/// One run (a method on one prompt with one seed) as the classifier saw its
/// views: the input to [`evaluate`]. One row per view in each list.
#[derive(Clone, Debug, PartialEq)]
pub struct RunViews {
    pub method: String,
    pub prompt: String,
    pub seed: u64,
    /// Softmax of the shape head, one row per view.
    pub shape_probs: Vec<Vec<f64>>,
    /// Softmax of the colour head, one row per view.
    pub colour_probs: Vec<Vec<f64>>,
    /// Penultimate features, one row per view (for Cross-FID).
    pub features: Vec<Vec<f64>>,
}

impl RunViews {
    /// From downloaded classifier outputs of a batch of V views:
    /// features [V, F], shape logits [V, shapes], colour logits [V, colours].
    pub fn from_classifier_outputs(
        method: &str,
        prompt: &str,
        seed: u64,
        features: &[f32],
        shape_logits: &[f32],
        colour_logits: &[f32],
        labels: &Labels,
    ) -> Result<RunViews> {
        let shape_probs = softmax_rows(shape_logits, labels.shapes.len(), "shape logits")?;
        let colour_probs = softmax_rows(colour_logits, labels.colours.len(), "colour logits")?;
        let views = shape_probs.len();
        if views == 0 || !features.len().is_multiple_of(views) {
            return Err(Error::Invalid(format!(
                "{method} / {prompt:?} / seed {seed}: {} feature values do not split over {views} views",
                features.len()
            )));
        }
        let features = rows_of(features, features.len() / views, "features")?;
        Ok(RunViews { method: method.into(), prompt: prompt.into(), seed, shape_probs, colour_probs, features })
    }

    fn name(&self) -> String {
        format!("{} / {:?} / seed {}", self.method, self.prompt, self.seed)
    }
}

/// Which seeds form the two halves of Cross-FID (the paper: {0, 1} vs {2, 3}).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossFidSplit {
    pub a: Vec<u64>,
    pub b: Vec<u64>,
}

impl Default for CrossFidSplit {
    fn default() -> Self {
        CrossFidSplit { a: vec![0, 1], b: vec![2, 3] }
    }
}

/// One run's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub method: String,
    pub prompt: String,
    pub seed: u64,
    pub views: usize,
    /// Mean over the views of the prompt fidelity; None when the prompt names
    /// no shape or colour.
    pub fidelity: Option<f64>,
    /// The shape and colour with the highest mean probability over the views:
    /// what the classifier thinks the run made.
    pub predicted_shape: String,
    pub predicted_colour: String,
}

/// One method on one prompt, over all its seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptRow {
    pub method: String,
    pub prompt: String,
    pub seeds: Vec<u64>,
    /// Views over all seeds.
    pub views: usize,
    /// Mean of the runs' fidelities; None when the prompt names no attribute.
    pub fidelity: Option<f64>,
    /// IS over the joint (shape × colour) labels of all the prompt's views.
    pub inception_score: f64,
    /// IS over the shape labels alone.
    pub shape_inception_score: f64,
    /// Fréchet distance between the features of the two seed halves; None
    /// when a half has fewer than 2 views (a covariance needs 2).
    pub cross_fid: Option<f64>,
}

/// One line of the table: a method over all prompts and seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    pub method: String,
    pub runs: usize,
    pub prompts: usize,
    /// Over runs whose prompt names an attribute.
    pub fidelity: Option<MeanStd>,
    /// Over prompts.
    pub inception_score: Option<MeanStd>,
    /// Over prompts.
    pub shape_inception_score: Option<MeanStd>,
    /// Over prompts that have both seed halves.
    pub cross_fid: Option<MeanStd>,
}

/// The whole evaluation: the table, its per-prompt and per-run rows, and
/// what it was computed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub labels: Labels,
    pub cross_fid_split: CrossFidSplit,
    pub methods: Vec<MethodRow>,
    pub prompts: Vec<PromptRow>,
    pub runs: Vec<EvalRow>,
}

/// Scores every run, then every (method, prompt), then every method.
pub fn evaluate(runs: &[RunViews], labels: &Labels, split: &CrossFidSplit) -> Result<Evaluation> {
    if runs.is_empty() {
        return Err(Error::Invalid("evaluate: no runs to evaluate".into()));
    }
    for (i, run) in runs.iter().enumerate() {
        check_run(run, labels)?;
        if let Some(twin) = runs[..i].iter().find(|r| r.method == run.method && r.prompt == run.prompt && r.seed == run.seed) {
            return Err(Error::Invalid(format!("evaluate: {} appears twice; give each run its own method label or seed", twin.name())));
        }
    }
    let run_rows: Vec<EvalRow> = runs.iter().map(|r| score_run(r, labels)).collect();

    let mut prompt_rows = Vec::new();
    for method in first_appearances(runs.iter().map(|r| r.method.as_str())) {
        let of_method: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].method == method).collect();
        for prompt in first_appearances(of_method.iter().map(|&i| runs[i].prompt.as_str())) {
            let members: Vec<usize> = of_method.iter().copied().filter(|&i| runs[i].prompt == prompt).collect();
            prompt_rows.push(score_prompt(runs, &run_rows, &members, split)?);
        }
    }

    let methods = first_appearances(runs.iter().map(|r| r.method.as_str()))
        .into_iter()
        .map(|method| {
            let fidelities: Vec<f64> = run_rows.iter().filter(|r| r.method == method).filter_map(|r| r.fidelity).collect();
            let of_method: Vec<&PromptRow> = prompt_rows.iter().filter(|p| p.method == method).collect();
            let over_prompts = |f: &dyn Fn(&PromptRow) -> Option<f64>| mean_std(&of_method.iter().filter_map(|p| f(p)).collect::<Vec<_>>());
            MethodRow {
                method: method.to_string(),
                runs: run_rows.iter().filter(|r| r.method == method).count(),
                prompts: of_method.len(),
                fidelity: mean_std(&fidelities),
                inception_score: over_prompts(&|p| Some(p.inception_score)),
                shape_inception_score: over_prompts(&|p| Some(p.shape_inception_score)),
                cross_fid: over_prompts(&|p| p.cross_fid),
            }
        })
        .collect();
    Ok(Evaluation { labels: labels.clone(), cross_fid_split: split.clone(), methods, prompts: prompt_rows, runs: run_rows })
}

/// Every run has views, one width per list, and head widths matching the labels.
fn check_run(run: &RunViews, labels: &Labels) -> Result<()> {
    let views = run.shape_probs.len();
    if views == 0 || run.colour_probs.len() != views || run.features.len() != views {
        return Err(Error::Invalid(format!(
            "{}: {} shape, {} colour and {} feature rows; every view needs one of each (and a run at least one view)",
            run.name(),
            views,
            run.colour_probs.len(),
            run.features.len()
        )));
    }
    let bad_width = |rows: &[Vec<f64>], width: usize| rows.iter().any(|r| r.len() != width);
    if bad_width(&run.shape_probs, labels.shapes.len()) || bad_width(&run.colour_probs, labels.colours.len()) {
        return Err(Error::Invalid(format!(
            "{}: prediction rows must have {} shape and {} colour probabilities, as the classifier's labels",
            run.name(),
            labels.shapes.len(),
            labels.colours.len()
        )));
    }
    Ok(())
}

fn score_run(run: &RunViews, labels: &Labels) -> EvalRow {
    let per_view: Vec<f64> =
        run.shape_probs.iter().zip(&run.colour_probs).filter_map(|(s, c)| prompt_fidelity(&run.prompt, s, c, labels)).collect();
    EvalRow {
        method: run.method.clone(),
        prompt: run.prompt.clone(),
        seed: run.seed,
        views: run.shape_probs.len(),
        fidelity: mean_std(&per_view).map(|m| m.mean),
        predicted_shape: labels.shapes[argmax_of_mean(&run.shape_probs)].clone(),
        predicted_colour: labels.colours[argmax_of_mean(&run.colour_probs)].clone(),
    }
}

/// IS over the prompt's pooled views and Cross-FID between its seed halves.
fn score_prompt(runs: &[RunViews], run_rows: &[EvalRow], members: &[usize], split: &CrossFidSplit) -> Result<PromptRow> {
    let first = &runs[members[0]];
    let pooled = |list: fn(&RunViews) -> &Vec<Vec<f64>>, seeds: Option<&[u64]>| -> Vec<Vec<f64>> {
        members.iter().map(|&i| &runs[i]).filter(|r| seeds.is_none_or(|s| s.contains(&r.seed))).flat_map(|r| list(r).iter().cloned()).collect()
    };
    let shape_probs = pooled(|r| &r.shape_probs, None);
    let colour_probs = pooled(|r| &r.colour_probs, None);
    let half_a = pooled(|r| &r.features, Some(&split.a));
    let half_b = pooled(|r| &r.features, Some(&split.b));
    let cross_fid = if half_a.len() >= 2 && half_b.len() >= 2 { Some(frechet_distance(&half_a, &half_b)?) } else { None };
    let fidelities: Vec<f64> = members.iter().filter_map(|&i| run_rows[i].fidelity).collect();
    Ok(PromptRow {
        method: first.method.clone(),
        prompt: first.prompt.clone(),
        seeds: members.iter().map(|&i| runs[i].seed).collect(),
        views: shape_probs.len(),
        fidelity: mean_std(&fidelities).map(|m| m.mean),
        inception_score: joint_inception_score(&shape_probs, &colour_probs)?,
        shape_inception_score: inception_score(&shape_probs)?,
        cross_fid,
    })
}

/// The label with the highest summed probability; the first of equals (ties go to the earlier label).
fn argmax_of_mean(rows: &[Vec<f64>]) -> usize {
    let width = rows[0].len();
    let sums: Vec<f64> = (0..width).map(|k| rows.iter().map(|r| r[k]).sum::<f64>()).collect();
    (1..width).fold(0, |best, k| if sums[k] > sums[best] { k } else { best })
}

/// The distinct items in the order they first appear.
pub(crate) fn first_appearances<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// The table as the paper prints it (one line per method, mean ± std), with
/// notes on what each column is, then the per-prompt breakdown.
pub fn results_markdown(eval: &Evaluation) -> String {
    let mut out = String::new();
    out.push_str("| Method | Fidelity ↑ | IS (shape×colour) ↑ | IS (shape) ↑ | Cross-FID ↑ | Prompts | Runs |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for m in &eval.methods {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            cell_text(&m.method),
            plus_minus(m.fidelity, 3),
            plus_minus(m.inception_score, 2),
            plus_minus(m.shape_inception_score, 2),
            plus_minus(m.cross_fid, 2),
            m.prompts,
            m.runs
        ));
    }
    let seeds = |s: &[u64]| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    out.push_str(&format!(
        "\nFidelity: the classifier's probability of the prompt's shape and colour (their product when it names both), \
         mean over views, then mean ± std over runs (prompt × seed). \
         IS: Inception Score of each prompt's views (all seeds pooled), over the joint {}×{} labels \
         (product of the two heads' softmaxes) and over shapes alone, mean ± std over prompts. \
         Cross-FID: Fréchet distance between the classifier features of seeds {{{}}} and {{{}}}, per prompt, mean ± std over prompts \
         (higher = more diverse; – where a half has fewer than 2 views). Std is the sample std (n − 1).\n",
        eval.labels.shapes.len(),
        eval.labels.colours.len(),
        seeds(&eval.cross_fid_split.a),
        seeds(&eval.cross_fid_split.b),
    ));
    out.push_str("\n### Per prompt\n\n");
    out.push_str("| Method | Prompt | Seeds | Views | Fidelity | IS (shape×colour) | IS (shape) | Cross-FID |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for p in &eval.prompts {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |\n",
            cell_text(&p.method),
            cell_text(&p.prompt),
            seeds(&p.seeds),
            p.views,
            p.fidelity.map_or("–".into(), |f| format!("{f:.3}")),
            p.inception_score,
            p.shape_inception_score,
            p.cross_fid.map_or("–".into(), |f| format!("{f:.2}")),
        ));
    }
    out
}

/// The whole evaluation as pretty-printed JSON (reads back with serde_json).
pub fn results_json(eval: &Evaluation) -> Result<String> {
    serde_json::to_string_pretty(eval).map_err(|e| Error::Invalid(format!("results_json: {e}")))
}

/// "m ± s" (just "m" from a single value, "–" from none).
pub(crate) fn plus_minus(v: Option<MeanStd>, decimals: usize) -> String {
    match v {
        None => "–".into(),
        Some(m) if m.n < 2 => format!("{:.*}", decimals, m.mean),
        Some(m) => format!("{:.*} ± {:.*}", decimals, m.mean, decimals, m.std),
    }
}

/// Markdown cell text: a pipe would end the cell, an empty prompt would vanish.
pub(crate) fn cell_text(s: &str) -> String {
    if s.is_empty() { "(empty)".into() } else { s.replace('|', "\\|") }
}
