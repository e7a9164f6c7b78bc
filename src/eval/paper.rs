//! The paper's own metrics (appendix A) from real networks, for users of
//! Stable Diffusion and other priors: the CLIP score (ViT-B/32: 100 × the
//! cosine between each view's image embedding and the prompt's text
//! embedding, mean over the views), the Inception Score of each prompt's
//! views (all seeds pooled; torch-fidelity's single-split IS on the
//! Inception's unbiased logits) and Cross-FID (the Fréchet distance between
//! the Inception pool features of seeds {0, 1} and {2, 3}). Per method the
//! means ± sample std: CLIP over runs, IS and Cross-FID over prompts, in the
//! layout of the paper's Table 1 (CLIP ↑, IS ↑, Cross-FID ↑).
//!
//! [`crate::eval::report`] is the same table from the embedded prior's
//! classifier; this module only needs the networks' outputs per view.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::metrics::{MeanStd, frechet_distance, inception_score, mean_std, softmax};
use crate::eval::report::{CrossFidSplit, cell_text, first_appearances, plus_minus};

/// One run's (or one DDIM seed's) views as the networks saw them. Each list
/// has one row per view, or is None when its network was not asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricViews {
    pub method: String,
    pub prompt: String,
    pub seed: u64,
    /// CLIP score of each view against the prompt.
    pub clip_scores: Option<Vec<f64>>,
    /// The Inception's unbiased logits of each view.
    pub inception_logits: Option<Vec<Vec<f64>>>,
    /// The Inception's pool features of each view.
    pub inception_features: Option<Vec<Vec<f64>>>,
}

impl MetricViews {
    fn name(&self) -> String {
        format!("{} / {:?} / seed {}", self.method, self.prompt, self.seed)
    }
}

/// The networks that made the numbers, as results.md names them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricNetworks {
    /// The CLIP model's folder.
    pub clip: Option<String>,
    /// The Inception's weights file.
    pub inception: Option<String>,
}

/// One run's CLIP score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRunRow {
    pub method: String,
    pub prompt: String,
    pub seed: u64,
    pub views: usize,
    /// Mean over the views.
    pub clip_score: Option<f64>,
}

/// One method on one prompt, over its seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricPromptRow {
    pub method: String,
    pub prompt: String,
    pub seeds: Vec<u64>,
    pub views: usize,
    /// Mean of the runs' CLIP scores.
    pub clip_score: Option<f64>,
    /// IS over the prompt's views, all seeds pooled.
    pub inception_score: Option<f64>,
    /// None where a seed half has fewer than 2 views.
    pub cross_fid: Option<f64>,
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricMethodRow {
    pub method: String,
    pub runs: usize,
    pub prompts: usize,
    /// Over runs.
    pub clip_score: Option<MeanStd>,
    /// Over prompts.
    pub inception_score: Option<MeanStd>,
    /// Over prompts with both seed halves.
    pub cross_fid: Option<MeanStd>,
}

/// The paper's table with its per-prompt and per-run rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricEvaluation {
    pub networks: MetricNetworks,
    pub cross_fid_split: CrossFidSplit,
    pub methods: Vec<MetricMethodRow>,
    pub prompts: Vec<MetricPromptRow>,
    pub runs: Vec<MetricRunRow>,
}

/// Scores every run, every (method, prompt) and every method; rows keep the
/// order in which methods and prompts first appear.
pub fn evaluate_metrics(runs: &[MetricViews], networks: &MetricNetworks, split: &CrossFidSplit) -> Result<MetricEvaluation> {
    if runs.is_empty() {
        return Err(Error::Invalid("evaluate_metrics: no runs to evaluate".into()));
    }
    for (i, run) in runs.iter().enumerate() {
        check_run(run, networks)?;
        if runs[..i].iter().any(|r| r.method == run.method && r.prompt == run.prompt && r.seed == run.seed) {
            return Err(Error::Invalid(format!("evaluate_metrics: {} appears twice", run.name())));
        }
    }
    let run_rows: Vec<MetricRunRow> = runs
        .iter()
        .map(|r| MetricRunRow {
            method: r.method.clone(),
            prompt: r.prompt.clone(),
            seed: r.seed,
            views: views_of(r),
            clip_score: r.clip_scores.as_ref().and_then(|s| mean_std(s)).map(|m| m.mean),
        })
        .collect();
    let mut prompt_rows = Vec::new();
    for method in first_appearances(runs.iter().map(|r| r.method.as_str())) {
        let of_method: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].method == method).collect();
        for prompt in first_appearances(of_method.iter().map(|&i| runs[i].prompt.as_str())) {
            let members: Vec<&MetricViews> = of_method.iter().map(|&i| &runs[i]).filter(|r| r.prompt == prompt).collect();
            let pooled = |list: fn(&MetricViews) -> Option<&Vec<Vec<f64>>>, seeds: Option<&[u64]>| -> Option<Vec<Vec<f64>>> {
                let mut rows = Vec::new();
                for r in members.iter().filter(|r| seeds.is_none_or(|s| s.contains(&r.seed))) {
                    rows.extend(list(r)?.iter().cloned());
                }
                Some(rows)
            };
            let inception_score = match pooled(|r| r.inception_logits.as_ref(), None) {
                Some(logits) => Some(inception_score_of_logits(&logits)?),
                None => None,
            };
            let half_a = pooled(|r| r.inception_features.as_ref(), Some(&split.a));
            let half_b = pooled(|r| r.inception_features.as_ref(), Some(&split.b));
            let cross_fid = match (half_a, half_b) {
                (Some(a), Some(b)) if a.len() >= 2 && b.len() >= 2 => Some(frechet_distance(&a, &b)?),
                _ => None,
            };
            let clip: Vec<f64> = run_rows.iter().filter(|r| r.method == method && r.prompt == prompt).filter_map(|r| r.clip_score).collect();
            prompt_rows.push(MetricPromptRow {
                method: method.to_string(),
                prompt: prompt.to_string(),
                seeds: members.iter().map(|r| r.seed).collect(),
                views: members.iter().map(|r| views_of(r)).sum(),
                clip_score: mean_std(&clip).map(|m| m.mean),
                inception_score,
                cross_fid,
            });
        }
    }
    let methods = first_appearances(runs.iter().map(|r| r.method.as_str()))
        .into_iter()
        .map(|method| {
            let of_method: Vec<&MetricPromptRow> = prompt_rows.iter().filter(|p| p.method == method).collect();
            let over_prompts = |f: &dyn Fn(&MetricPromptRow) -> Option<f64>| mean_std(&of_method.iter().filter_map(|p| f(p)).collect::<Vec<_>>());
            let clip: Vec<f64> = run_rows.iter().filter(|r| r.method == method).filter_map(|r| r.clip_score).collect();
            MetricMethodRow {
                method: method.to_string(),
                runs: run_rows.iter().filter(|r| r.method == method).count(),
                prompts: of_method.len(),
                clip_score: mean_std(&clip),
                inception_score: over_prompts(&|p| p.inception_score),
                cross_fid: over_prompts(&|p| p.cross_fid),
            }
        })
        .collect();
    Ok(MetricEvaluation { networks: networks.clone(), cross_fid_split: split.clone(), methods, prompts: prompt_rows, runs: run_rows })
}

fn views_of(r: &MetricViews) -> usize {
    r.clip_scores.as_ref().map(Vec::len).or(r.inception_logits.as_ref().map(Vec::len)).unwrap_or(0)
}

/// Each network asked for gave one row per view, and every view has the same count.
fn check_run(run: &MetricViews, networks: &MetricNetworks) -> Result<()> {
    let counts = [
        (networks.clip.is_some(), run.clip_scores.as_ref().map(Vec::len), "CLIP scores"),
        (networks.inception.is_some(), run.inception_logits.as_ref().map(Vec::len), "Inception logits"),
        (networks.inception.is_some(), run.inception_features.as_ref().map(Vec::len), "Inception features"),
    ];
    let mut views = None;
    for (wanted, count, what) in counts {
        match (wanted, count) {
            (true, None) => return Err(Error::Invalid(format!("{}: no {what}", run.name()))),
            (false, Some(_)) => return Err(Error::Invalid(format!("{}: {what} without the network named", run.name()))),
            (true, Some(0)) => return Err(Error::Invalid(format!("{}: no views", run.name()))),
            (true, Some(n)) if views.is_some_and(|v| v != n) => {
                return Err(Error::Invalid(format!("{}: {n} rows of {what}, but {} of another network", run.name(), views.unwrap())));
            }
            (true, Some(n)) => views = Some(n),
            (false, None) => {}
        }
    }
    if views.is_none() {
        return Err(Error::Invalid("evaluate_metrics: neither a CLIP model nor an Inception was given".into()));
    }
    Ok(())
}

/// The table in the paper's layout, a note on each column, then the per-prompt rows.
pub fn metrics_markdown(e: &MetricEvaluation) -> String {
    let clip = e.networks.clip.is_some();
    let inception = e.networks.inception.is_some();
    let mut head = vec!["Method"];
    if clip {
        head.push("CLIP ↑");
    }
    if inception {
        head.extend(["IS ↑", "Cross-FID ↑"]);
    }
    head.extend(["Prompts", "Runs"]);
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for m in &e.methods {
        let mut cells = vec![cell_text(&m.method)];
        if clip {
            cells.push(plus_minus(m.clip_score, 2));
        }
        if inception {
            cells.push(plus_minus(m.inception_score, 2));
            cells.push(plus_minus(m.cross_fid, 1));
        }
        cells.push(m.prompts.to_string());
        cells.push(m.runs.to_string());
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    let seeds = |s: &[u64]| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    out.push('\n');
    if let Some(c) = &e.networks.clip {
        out.push_str(&format!(
            "CLIP: 100 × the cosine between each view's image embedding and the prompt's text embedding ({c}), \
             mean over the views, then mean ± std over runs (prompt × seed). "
        ));
    }
    if let Some(i) = &e.networks.inception {
        out.push_str(&format!(
            "IS: Inception Score of each prompt's views, all seeds pooled (one split, the Inception's logits without the fc bias, \
             as torch-fidelity), mean ± std over prompts. Cross-FID: Fréchet distance between the Inception pool features of \
             seeds {{{}}} and {{{}}}, per prompt, mean ± std over prompts (higher = more diverse; – where a half has fewer than 2 views). \
             Inception-v3: {i}. ",
            seeds(&e.cross_fid_split.a),
            seeds(&e.cross_fid_split.b)
        ));
    }
    out.push_str("Std is the sample std (n − 1).\n\n#### Per prompt\n\n");
    let mut head = vec!["Method", "Prompt", "Seeds", "Views"];
    if clip {
        head.push("CLIP");
    }
    if inception {
        head.extend(["IS", "Cross-FID"]);
    }
    out.push_str(&format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len())));
    let num = |v: Option<f64>, d: usize| v.map_or("–".into(), |v| format!("{v:.d$}"));
    for p in &e.prompts {
        let mut cells = vec![cell_text(&p.method), cell_text(&p.prompt), seeds(&p.seeds), p.views.to_string()];
        if clip {
            cells.push(num(p.clip_score, 2));
        }
        if inception {
            cells.push(num(p.inception_score, 2));
            cells.push(num(p.cross_fid, 1));
        }
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// The views of a run from the networks' raw outputs: image embeddings
/// [V, P] and the prompt's text embedding [P] (CLIP), unbiased logits
/// [V, 1008] and pool features [V, 2048] (Inception).
pub struct NetworkOutputs<'a> {
    pub image_embeds: Option<(&'a [f32], &'a [f32])>,
    pub inception: Option<(&'a [f32], &'a [f32])>,
}

impl MetricViews {
    pub fn from_outputs(method: &str, prompt: &str, seed: u64, views: usize, out: NetworkOutputs) -> Result<MetricViews> {
        let rows = |v: &[f32], what: &str| -> Result<Vec<Vec<f64>>> {
            if views == 0 || !v.len().is_multiple_of(views) {
                return Err(Error::Invalid(format!("{method} / {prompt:?} / seed {seed}: {} {what} values do not split over {views} views", v.len())));
            }
            Ok(v.chunks(v.len() / views).map(|r| r.iter().map(|&x| x as f64).collect()).collect())
        };
        let clip_scores = match out.image_embeds {
            Some((images, text)) => {
                if views == 0 || images.len() != views * text.len() {
                    return Err(Error::Invalid(format!(
                        "{method} / {prompt:?} / seed {seed}: {} image-embedding values are not {views} views of the text embedding's {}",
                        images.len(),
                        text.len()
                    )));
                }
                Some(images.chunks(text.len()).map(|r| crate::models::clip::clip_score(r, text)).collect())
            }
            None => None,
        };
        let (inception_logits, inception_features) = match out.inception {
            Some((logits, pool)) => (Some(rows(logits, "logit")?), Some(rows(pool, "feature")?)),
            None => (None, None),
        };
        Ok(MetricViews { method: method.into(), prompt: prompt.into(), seed, clip_scores, inception_logits, inception_features })
    }
}

/// IS of one set of logits rows (softmax, then [`inception_score`]).
pub fn inception_score_of_logits(logits: &[Vec<f64>]) -> Result<f64> {
    inception_score(&logits.iter().map(|l| softmax(l)).collect::<Vec<_>>())
}
