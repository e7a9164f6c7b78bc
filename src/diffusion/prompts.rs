//! The prompt processor: text to the embeddings a loop or sampler feeds the
//! prior, computed once per run (threestudio keeps one such object per run).
//!
//! Two conventions, one place each:
//! - distillation ([`PromptEmbeddings`]): the prompt, or one per view
//!   direction (FSD_SPEC §5: "…, front view" and so on), the empty prompt as
//!   CFG's unconditional branch, and NFSD's negative prompt as a third one;
//! - sampling ([`SamplerEmbeddings`]): diffusers' pipelines, where a negative
//!   prompt *replaces* the empty one in CFG's unconditional branch, embedded
//!   only when guidance is on. The sampler and FSD's Euler update (which must
//!   equal it, Proposition 1) both use it.
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::models::prior::Prior;
use crate::ops::concat::concat;

/// NFSD's default negative prompt (FSD_SPEC §2).
pub const NFSD_NEGATIVE: &str =
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy";

/// The view-dependent suffixes, in the order they are embedded.
pub const VIEW_SUFFIXES: [&str; 4] = [", front view", ", side view", ", back view", ", overhead view"];

/// The view-dependent prompt suffix of a camera (FSD_SPEC §5): overhead
/// above 60° elevation, else front within 45° of azimuth 0, back beyond 135°,
/// side in between.
pub fn view_suffix(elevation_deg: f32, azimuth_deg: f32) -> &'static str {
    let a = (azimuth_deg + 180.0).rem_euclid(360.0) - 180.0;
    if elevation_deg > 60.0 {
        ", overhead view"
    } else if a.abs() < 45.0 {
        ", front view"
    } else if a.abs() > 135.0 {
        ", back view"
    } else {
        ", side view"
    }
}

/// Where a view looks from, as far as its prompt cares: the camera's
/// unperturbed elevation and azimuth in degrees. A 2D image has no camera and
/// uses the default (its prompt is never view-dependent).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ViewDirection {
    pub elevation_deg: f32,
    pub azimuth_deg: f32,
}

/// What a distillation run's prompts are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptSpec<'a> {
    pub prompt: &'a str,
    /// Append [`view_suffix`] of each view's direction to the prompt.
    pub view_dependent: bool,
    /// A negative prompt to embed (NFSD's third prediction); None embeds none.
    pub negative: Option<&'a str>,
}

/// A distillation run's embeddings, computed once.
pub struct PromptEmbeddings {
    /// The prompt, or one per view direction (keyed by its suffix).
    cond: Vec<(&'static str, Tensor)>,
    uncond: Tensor,
    negative: Option<Tensor>,
}

/// The embeddings of one batch of B views, each [B, L, D].
pub struct PromptBatch {
    pub cond: Tensor,
    pub uncond: Tensor,
    /// NFSD's negative prompt, when the run has one.
    pub negative: Option<Tensor>,
}

impl PromptEmbeddings {
    pub fn new(gpu: &Gpu, prior: &dyn Prior, spec: &PromptSpec) -> Result<PromptEmbeddings> {
        let suffixes: &[&'static str] = if spec.view_dependent { &VIEW_SUFFIXES } else { &[""] };
        let cond = suffixes
            .iter()
            .map(|&s| Ok((s, prior.embed(gpu, &[&format!("{}{s}", spec.prompt)])?)))
            .collect::<Result<Vec<_>>>()?;
        let uncond = prior.embed(gpu, &[""])?;
        let negative = spec.negative.map(|n| prior.embed(gpu, &[n])).transpose()?;
        Ok(PromptEmbeddings { cond, uncond, negative })
    }

    /// The embeddings for views looking from `views` (B = `views.len()`).
    pub fn batch(&self, gpu: &Gpu, views: &[ViewDirection]) -> Result<PromptBatch> {
        let pick = |v: &ViewDirection| -> &Tensor {
            if self.cond.len() == 1 {
                return &self.cond[0].1;
            }
            let s = view_suffix(v.elevation_deg, v.azimuth_deg);
            &self.cond.iter().find(|(k, _)| *k == s).expect("every suffix is embedded").1
        };
        let cond = batch_of(gpu, &views.iter().map(pick).collect::<Vec<_>>())?;
        let b = views.len();
        let uncond = batch_of(gpu, &vec![&self.uncond; b])?;
        let negative = self.negative.as_ref().map(|n| batch_of(gpu, &vec![n; b])).transpose()?;
        Ok(PromptBatch { cond, uncond, negative })
    }
}

/// One tensor along dim 0; a single part is itself (no copy).
fn batch_of(gpu: &Gpu, parts: &[&Tensor]) -> Result<Tensor> {
    match parts {
        [one] => Ok((*one).clone()),
        _ => concat(gpu, parts, 0),
    }
}

/// A sampler's embeddings, as diffusers' pipelines make them.
pub struct SamplerEmbeddings {
    /// [B, L, D]: one per prompt.
    pub cond: Tensor,
    /// The negative prompt (or "") for each prompt; None when guidance is off (scale <= 1).
    pub uncond: Option<Tensor>,
}

impl SamplerEmbeddings {
    pub fn new(gpu: &Gpu, prior: &dyn Prior, prompts: &[&str], negative: Option<&str>, scale: f32) -> Result<SamplerEmbeddings> {
        let cond = prior.embed(gpu, prompts)?;
        let uncond = if scale > 1.0 { Some(prior.embed(gpu, &vec![negative.unwrap_or(""); prompts.len()])?) } else { None };
        Ok(SamplerEmbeddings { cond, uncond })
    }
}
