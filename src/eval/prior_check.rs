//! `fsd3d prior-check`: does a prior draw what it is asked for? For a prior
//! that ships a classifier (the embedded tiny-shapes one), the engine draws
//! DDIM samples of every "a {colour} {shape}" prompt the classifier can read,
//! for each seed, and the classifier judges each (is its top shape, its top
//! colour the one asked for?); then one open prompt ("a red object") over
//! many seeds shows how many different objects the prior holds, which is the
//! diversity FSD should find in 3D.
//!
//! Writes into the output folder: `samples.png` (rows: shape × seed, columns:
//! colours), `open_prompt.png`, and `prior_check.json` / `prior_check.md`
//! (every sample's verdict and the totals).
use std::path::Path;

use serde::Serialize;

use crate::diffusion::sampler::{SampleRequest, ddim_sample_batch};
use crate::diffusion::size::ImageSize;
use crate::error::{Error, Result};
use crate::eval::figure::labelled_grid;
use crate::eval::metrics::{Labels, softmax_rows};
use crate::export::image::{Rgb8, from_signed_nchw, to_signed_nchw};
use crate::gpu::{DType, Gpu};
use crate::models::classifier::Classifier;
use crate::models::prior::Prior;

/// What to sample.
#[derive(Clone, Debug)]
pub struct PriorCheckPlan {
    /// Noise seeds: every prompt is drawn once per seed.
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub cfg: f32,
    /// DDIM's η (0 deterministic, 1 ancestral).
    pub eta: f32,
    /// Samples per sampler run (one UNet call per step for all of them).
    pub batch: usize,
    /// The open prompt and how many seeds (0..n) to draw it with; None skips it.
    pub open_prompt: Option<(String, usize)>,
    /// Side of a figure cell, in pixels (samples are scaled up to it).
    pub cell: u32,
}

/// The classifier's reading of one sample.
#[derive(Clone, Debug, Serialize)]
pub struct SampleVerdict {
    pub prompt: String,
    pub seed: u64,
    /// What the prompt asks for (None: it names no label of that kind).
    pub shape: Option<String>,
    pub colour: Option<String>,
    /// The classifier's top classes and their probabilities.
    pub top_shape: String,
    pub top_shape_p: f64,
    pub top_colour: String,
    pub top_colour_p: f64,
}

impl SampleVerdict {
    pub fn shape_right(&self) -> bool {
        self.shape.as_ref() == Some(&self.top_shape)
    }
    pub fn colour_right(&self) -> bool {
        self.colour.as_ref() == Some(&self.top_colour)
    }
}

/// How often one label came out on top.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LabelCount {
    pub label: String,
    pub count: usize,
}

/// The open prompt's samples.
#[derive(Clone, Debug, Serialize)]
pub struct OpenPromptReport {
    pub prompt: String,
    pub samples: Vec<SampleVerdict>,
    /// Top shapes over the samples, most frequent first.
    pub shapes: Vec<LabelCount>,
    pub colours: Vec<LabelCount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PriorCheckReport {
    pub model: String,
    pub adapter: String,
    pub steps: usize,
    pub cfg: f32,
    pub eta: f32,
    pub seeds: Vec<u64>,
    pub samples: Vec<SampleVerdict>,
    pub colour_right: usize,
    pub shape_right: usize,
    pub both_right: usize,
    pub open: Option<OpenPromptReport>,
    pub seconds: f64,
}

/// "a red cube", "an orange cube": the captions the embedded prior was trained on.
pub fn caption(colour: &str, shape: &str) -> String {
    let article = if colour.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {colour} {shape}")
}

/// Top-class counts, most frequent first (ties in label order).
fn count_labels(tops: impl Iterator<Item = String>, labels: &[String]) -> Vec<LabelCount> {
    let mut counts: Vec<LabelCount> = labels.iter().map(|l| LabelCount { label: l.clone(), count: 0 }).collect();
    for t in tops {
        if let Some(c) = counts.iter_mut().find(|c| c.label == t) {
            c.count += 1;
        }
    }
    counts.retain(|c| c.count > 0);
    counts.sort_by(|a, b| b.count.cmp(&a.count));
    counts
}

/// One labelled request: the prompt, its seed and what it asks for.
struct Job {
    prompt: String,
    seed: u64,
    shape: Option<String>,
    colour: Option<String>,
}

/// Samples `jobs` in batches and judges each sample; returns the images and verdicts.
fn sample_and_judge(
    gpu: &Gpu,
    prior: &dyn Prior,
    classifier: &Classifier,
    labels: &Labels,
    plan: &PriorCheckPlan,
    jobs: &[Job],
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<Rgb8>, Vec<SampleVerdict>)> {
    let mut images = Vec::with_capacity(jobs.len());
    let mut verdicts = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(plan.batch.max(1)) {
        let reqs: Vec<SampleRequest> = chunk
            .iter()
            .map(|j| SampleRequest { prompt: j.prompt.clone(), negative: None, steps: plan.steps, cfg: plan.cfg, eta: plan.eta, seed: j.seed, size: ImageSize::default(), latents: None })
            .collect();
        let x = ddim_sample_batch(gpu, prior, &reqs, |_, _| {})?;
        let values = gpu.download(&x)?;
        // A multi-view prior's sample is its views: judge the front one.
        let frames = prior.num_frames().unwrap_or(1);
        let batch: Vec<Rgb8> = (0..chunk.len()).map(|k| from_signed_nchw(&values, x.shape(), k * frames)).collect::<Result<_>>()?;
        let (pixels, shape) = to_signed_nchw(&batch)?;
        let out = classifier.classify(gpu, &gpu.upload(&pixels, &shape, DType::F32)?)?;
        let shape_p = softmax_rows(&gpu.download(&out.shape_logits)?, labels.shapes.len(), "shape logits")?;
        let colour_p = softmax_rows(&gpu.download(&out.colour_logits)?, labels.colours.len(), "colour logits")?;
        for (k, job) in chunk.iter().enumerate() {
            let top = |p: &[f64]| p.iter().enumerate().fold((0, f64::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
            let (si, sp) = top(&shape_p[k]);
            let (ci, cp) = top(&colour_p[k]);
            verdicts.push(SampleVerdict {
                prompt: job.prompt.clone(),
                seed: job.seed,
                shape: job.shape.clone(),
                colour: job.colour.clone(),
                top_shape: labels.shapes[si].clone(),
                top_shape_p: sp,
                top_colour: labels.colours[ci].clone(),
                top_colour_p: cp,
            });
        }
        images.extend(batch);
        progress(images.len());
    }
    Ok((images, verdicts))
}

/// Runs the check and writes its files into `out`; `progress(done, total)`
/// after each batch of samples.
pub fn run_prior_check(
    gpu: &Gpu,
    prior: &dyn Prior,
    classifier: &Classifier,
    model: &Path,
    plan: &PriorCheckPlan,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<PriorCheckReport> {
    if plan.seeds.is_empty() {
        return Err(Error::Invalid("prior-check: no seeds; give e.g. --seeds 0,1".into()));
    }
    if plan.steps == 0 {
        return Err(Error::Invalid("prior-check: --steps must be at least 1 (50 is the usual DDIM count)".into()));
    }
    let [_, h, w] = prior.sample_shape();
    let [ih, iw] = prior.image_size();
    if [ih, iw] != [32, 32] {
        return Err(Error::Invalid(format!(
            "prior-check: the classifier reads 32×32 images and this prior draws {ih}×{iw} (samples {h}×{w}); the check is for the embedded prior's kind of model"
        )));
    }
    let started = std::time::Instant::now();
    let labels = Labels::of(classifier);
    let mut jobs = Vec::new();
    for shape in &labels.shapes {
        for &seed in &plan.seeds {
            for colour in &labels.colours {
                jobs.push(Job { prompt: caption(colour, shape), seed, shape: Some(shape.clone()), colour: Some(colour.clone()) });
            }
        }
    }
    let grid_count = jobs.len();
    if let Some((prompt, n)) = &plan.open_prompt {
        let want = crate::eval::metrics::parse_prompt(prompt, &labels);
        for seed in 0..*n as u64 {
            jobs.push(Job {
                prompt: prompt.clone(),
                seed,
                shape: want.shape.map(|i| labels.shapes[i].clone()),
                colour: want.colour.map(|i| labels.colours[i].clone()),
            });
        }
    }
    let total = jobs.len();
    let (images, mut verdicts) = sample_and_judge(gpu, prior, classifier, &labels, plan, &jobs, &mut |done| progress(done, total))?;
    let open_verdicts = verdicts.split_off(grid_count);
    let open_images = &images[grid_count..];

    std::fs::create_dir_all(out).map_err(|e| Error::Io { path: out.to_path_buf(), cause: e })?;
    // samples.png: a row per (shape, seed), a column per colour.
    let per_row = labels.colours.len();
    let rows: Vec<(String, Vec<Rgb8>)> = images[..grid_count]
        .chunks(per_row)
        .zip(verdicts.chunks(per_row))
        .map(|(imgs, v)| (format!("{} s{}", v[0].shape.as_deref().unwrap_or("?"), v[0].seed), imgs.to_vec()))
        .collect();
    crate::export::write_png(&out.join("samples.png"), &labelled_grid(&rows, &labels.colours, plan.cell)?)?;

    let open = match &plan.open_prompt {
        Some((prompt, _)) if !open_verdicts.is_empty() => {
            let columns = open_verdicts.len().min(8);
            let rows: Vec<(String, Vec<Rgb8>)> =
                open_images.chunks(columns).enumerate().map(|(r, imgs)| (format!("s{}-{}", r * columns, r * columns + imgs.len() - 1), imgs.to_vec())).collect();
            let header: Vec<String> = (0..columns).map(|c| format!("+{c}")).collect();
            crate::export::write_png(&out.join("open_prompt.png"), &labelled_grid(&rows, &header, plan.cell)?)?;
            Some(OpenPromptReport {
                prompt: prompt.clone(),
                shapes: count_labels(open_verdicts.iter().map(|v| v.top_shape.clone()), &labels.shapes),
                colours: count_labels(open_verdicts.iter().map(|v| v.top_colour.clone()), &labels.colours),
                samples: open_verdicts,
            })
        }
        _ => None,
    };
    let report = PriorCheckReport {
        model: model.display().to_string(),
        adapter: gpu.info().name.clone(),
        steps: plan.steps,
        cfg: plan.cfg,
        eta: plan.eta,
        seeds: plan.seeds.clone(),
        colour_right: verdicts.iter().filter(|v| v.colour_right()).count(),
        shape_right: verdicts.iter().filter(|v| v.shape_right()).count(),
        both_right: verdicts.iter().filter(|v| v.shape_right() && v.colour_right()).count(),
        samples: verdicts,
        open,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(format!("prior_check.json: {e}")))?;
    crate::io::write_atomic(&out.join("prior_check.json"), json.as_bytes())?;
    crate::io::write_atomic(&out.join("prior_check.md"), report_markdown(&report, &labels).as_bytes())?;
    Ok(report)
}

/// The totals, a shape × colour table of fully right samples, and the open prompt's counts.
pub fn report_markdown(r: &PriorCheckReport, labels: &Labels) -> String {
    let n = r.samples.len();
    let pct = |k: usize| if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
    let mut md = String::from("# Prior check\n\n");
    md.push_str(&format!("- Model: {}\n- Adapter: {}\n", r.model, r.adapter));
    md.push_str(&format!(
        "- DDIM {} steps, CFG {}, η {}, seeds {:?}: {} samples in {:.1} s\n\n",
        r.steps,
        r.cfg,
        r.eta,
        r.seeds,
        n + r.open.as_ref().map_or(0, |o| o.samples.len()),
        r.seconds
    ));
    md.push_str(&format!(
        "| | right | of | % |\n|---|---:|---:|---:|\n| colour | {} | {n} | {:.1} |\n| shape | {} | {n} | {:.1} |\n| both | {} | {n} | {:.1} |\n\n",
        r.colour_right,
        pct(r.colour_right),
        r.shape_right,
        pct(r.shape_right),
        r.both_right,
        pct(r.both_right)
    ));
    md.push_str(&format!("Fully right samples per prompt (of {} seeds):\n\n| shape |", r.seeds.len()));
    for c in &labels.colours {
        md.push_str(&format!(" {c} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(labels.colours.len()));
    md.push('\n');
    for s in &labels.shapes {
        md.push_str(&format!("| {s} |"));
        for c in &labels.colours {
            let k = r.samples.iter().filter(|v| v.shape.as_ref() == Some(s) && v.colour.as_ref() == Some(c) && v.shape_right() && v.colour_right()).count();
            md.push_str(&format!(" {k} |"));
        }
        md.push('\n');
    }
    if let Some(o) = &r.open {
        let list = |c: &[LabelCount]| c.iter().map(|l| format!("{} {}", l.label, l.count)).collect::<Vec<_>>().join(", ");
        md.push_str(&format!(
            "\n\"{}\" over {} seeds: shapes {}; colours {}.\n",
            o.prompt,
            o.samples.len(),
            list(&o.shapes),
            list(&o.colours)
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_take_an_before_a_vowel() {
        assert_eq!(caption("red", "cube"), "a red cube");
        assert_eq!(caption("orange", "torus"), "an orange torus");
    }

    #[test]
    fn label_counts_are_sorted_and_drop_zeros() {
        let labels: Vec<String> = ["cube", "sphere", "cone"].iter().map(|s| s.to_string()).collect();
        let c = count_labels(["cone", "cube", "cone", "elephant"].iter().map(|s| s.to_string()), &labels);
        assert_eq!(c, vec![LabelCount { label: "cone".into(), count: 2 }, LabelCount { label: "cube".into(), count: 1 }]);
    }
}
