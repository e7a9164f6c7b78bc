//! The DDIM reference row: for each prompt × seed, samples of the prior
//! itself (drawn as one batch, or found on disk with the same settings),
//! scored like a run's views.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::diffusion::sampler::{SampleRequest, ddim_sample_batch};
use crate::diffusion::size::ImageSize;
use crate::error::{Error, Result};
use crate::export::{self, Rgb8};
use crate::models::prior::Prior;

use super::plan::DdimReference;
use super::units::score_images;
use super::plan::Unit;
use super::{Context, EvalEvent, EvalPlan, EvalSummary, UnitOutcome, Work, files};

/// The method label of the DDIM reference row.
pub const DDIM_LABEL: &str = "DDIM (reference)";
/// The DDIM reference row's folder name under a prompt.
pub const DDIM_SLUG: &str = "ddim";

/// The noise seed of DDIM sample `k` for seed `s`: `s` itself for k = 0 (so
/// sample 0 is `fsd3d sample --seed s`), then `s + k·2³²`, which no small
/// seed of another column reaches.
pub fn reference_seed(seed: u64, k: usize) -> u64 {
    seed.wrapping_add((k as u64) << 32)
}

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
pub(super) fn reference_dir(out: &Path, prompt: &str, seed: u64) -> PathBuf {
    EvalPlan::run_dir(out, prompt, DDIM_SLUG, seed)
}

/// One seed's DDIM samples: found on disk with the same settings, or drawn
/// (and written as PNGs); then scored. Without `works` (`--report`) a seed
/// with samples missing is Missing, not drawn.
#[allow(clippy::too_many_arguments)]
pub(super) fn reference_unit(
    ctx: &Context<'_>,
    reference: &DdimReference,
    unit: &Unit,
    total: usize,
    works: bool,
    stop: &AtomicBool,
    progress: &mut impl FnMut(&EvalEvent),
    summary: &mut EvalSummary,
) -> Result<UnitOutcome> {
    let (prompt, seed, index) = (unit.prompt.as_str(), unit.seed, unit.index);
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
    if !works && !missing.is_empty() {
        return Ok(UnitOutcome::Missing);
    }
    progress(&EvalEvent::Unit { index, total, label: DDIM_LABEL, prompt, seed, work, step: 0, steps: 0 });
    if !same {
        let json = serde_json::to_string_pretty(&params).map_err(|e| Error::Invalid(format!("{}: {e}", files::DDIM_PARAMS)))?;
        crate::io::write_atomic(&params_path, json.as_bytes())?;
    }
    // The missing samples in one batch (one UNet call per step for all).
    let mut drawn: Vec<Option<Rgb8>> = vec![None; params.seeds.len()];
    if !missing.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Ok(UnitOutcome::Interrupted);
        }
        let reqs: Vec<SampleRequest> = missing
            .iter()
            .map(|&k| SampleRequest { prompt: prompt.to_string(), negative: None, steps: reference.steps, cfg: reference.cfg, eta: reference.eta, seed: params.seeds[k], size: ImageSize::default(), latents: None })
            .collect();
        let n = reqs.len();
        let x = ddim_sample_batch(ctx.gpu, ctx.prior, &reqs, |step, steps| progress(&EvalEvent::Sample { samples: n, step, steps }))?;
        let values = ctx.gpu.download(&x)?;
        // A multi-view prior's sample is its views: the row keeps the front one.
        let frames = ctx.prior.num_frames().unwrap_or(1);
        for (b, &k) in missing.iter().enumerate() {
            let rgb = export::image::from_signed_nchw(&values, x.shape(), b * frames)?;
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
    let scores = score_images(ctx, &images, DDIM_LABEL, prompt, seed)?;
    Ok(UnitOutcome::Done { scores, work, steps: 0 })
}
