//! transformers' `CLIPModel`: both towers and their projections, for the
//! paper's CLIP score (appendix A: 100 × the cosine between a view's image
//! embedding and the prompt's text embedding, ViT-B/32).
//!
//! - The vision tower: a patch-embedding convolution (stride = patch, no
//!   bias), a learned class token in front of the patches, position
//!   embeddings, the pre-LayerNorm (`pre_layrnorm`, so spelled in the
//!   checkpoints), the transformer without a mask, the post-LayerNorm of the
//!   class token, and `visual_projection`.
//! - The text tower is [`ClipTextModel`]; its embedding is the final hidden
//!   state at the end-of-text token, through `text_projection`.
//!
//! A folder is what transformers' `save_pretrained` writes for a CLIPModel
//! (`config.json` with `text_config` and `vision_config`, `model.safetensors`),
//! e.g. openai/clip-vit-base-patch32, plus its tokenizer files and
//! `preprocessor_config.json` ([`crate::models::clip_image`]).
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::clip_text::{ClipEncoder, ClipTextModel, EncoderShape};
use crate::models::config::{ClipTextConfig, read_config};
use crate::models::nn::{LayerNorm, Linear, Loader, nchw_to_tokens};
use crate::models::weights::{Variant, Weights};
use crate::ops::concat;
use crate::ops::conv2d::{Conv2dOpts, conv2d};
use crate::ops::elementwise as ew;
use crate::ops::embedding::embedding;

/// transformers `CLIPVisionConfig`; the defaults are ViT-B/32's.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_vision_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_layers")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

fn d_vision_hidden() -> usize {
    768
}
fn d_vision_inter() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_projection() -> usize {
    512
}

/// transformers `CLIPConfig`: the two towers and the shared embedding width.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
}

impl ClipConfig {
    pub fn load(path: &Path) -> Result<ClipConfig> {
        let value: serde_json::Value = read_config(path)?;
        if value.get("vision_config").is_none() || value.get("text_config").is_none() {
            return Err(Error::Invalid(format!(
                "{}: not a CLIP model's config (a transformers CLIPModel config.json has text_config and vision_config); \
                 give the folder of a CLIPModel such as openai/clip-vit-base-patch32",
                path.display()
            )));
        }
        let c: ClipConfig = serde_json::from_value(value).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
        let (t, v) = (&c.text_config, &c.vision_config);
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(bad(format!("text_config: hidden_size {} is not a multiple of num_attention_heads {}", t.hidden_size, t.num_attention_heads)));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(bad(format!("vision_config: hidden_size {} is not a multiple of num_attention_heads {}", v.hidden_size, v.num_attention_heads)));
        }
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(bad(format!("vision_config: image_size {} is not a multiple of patch_size {}", v.image_size, v.patch_size)));
        }
        if c.projection_dim == 0 || v.num_channels == 0 {
            return Err(bad("projection_dim and num_channels must be positive".into()));
        }
        for act in [&t.hidden_act, &v.hidden_act] {
            ew::Act::parse(act).map_err(|e| bad(format!("hidden_act: {e}")))?;
        }
        Ok(c)
    }
}

/// The vision tower with its projection.
struct ClipVision {
    config: ClipVisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    encoder: ClipEncoder,
    post_ln: LayerNorm,
    projection: Linear,
}

/// A CLIP model: images and texts to embeddings in one space.
pub struct ClipModel {
    pub config: ClipConfig,
    dir: PathBuf,
    text: ClipTextModel,
    text_projection: Linear,
    vision: ClipVision,
}

impl ClipModel {
    /// Loads a transformers CLIPModel folder.
    pub fn load(gpu: &Gpu, dir: &Path, dtype: DType) -> Result<ClipModel> {
        let config = ClipConfig::load(&dir.join("config.json"))?;
        let weights = Weights::open(dir, if dtype == DType::F16 { Variant::Fp16 } else { Variant::Full })?;
        if !weights.is_random() && !weights.contains("vision_model.embeddings.class_embedding") {
            return Err(Error::Invalid(format!(
                "{}: the weights have no vision_model.* tensors; a CLIP score needs a whole transformers CLIPModel \
                 (config.json + model.safetensors, e.g. openai/clip-vit-base-patch32), not a text encoder alone",
                dir.display()
            )));
        }
        let l = Loader { gpu, weights: &weights, dtype };
        let text = ClipTextModel::from_loader(&l, "text_model.", config.text_config.clone())?;
        let text_projection = Linear::load(&l, "text_projection", config.text_config.hidden_size, config.projection_dim, false)?;
        let v = config.vision_config.clone();
        let (d, p) = (v.hidden_size, v.patch_size);
        let patches = (v.image_size / p) * (v.image_size / p);
        let vision = ClipVision {
            patch_embedding: l.tensor("vision_model.embeddings.patch_embedding.weight", &[d, v.num_channels, p, p])?,
            class_embedding: l.tensor("vision_model.embeddings.class_embedding", &[d])?,
            position_embedding: l.tensor("vision_model.embeddings.position_embedding.weight", &[patches + 1, d])?,
            pre_ln: LayerNorm::load(&l, "vision_model.pre_layrnorm", d, v.layer_norm_eps)?,
            encoder: ClipEncoder::load(
                &l,
                "vision_model.",
                EncoderShape {
                    layers: v.num_hidden_layers,
                    hidden: d,
                    intermediate: v.intermediate_size,
                    heads: v.num_attention_heads,
                    act: &v.hidden_act,
                    eps: v.layer_norm_eps,
                },
            )?,
            post_ln: LayerNorm::load(&l, "vision_model.post_layernorm", d, v.layer_norm_eps)?,
            projection: Linear::load(&l, "visual_projection", d, config.projection_dim, false)?,
            config: v,
        };
        Ok(ClipModel { config, dir: dir.to_path_buf(), text, text_projection, vision })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.vision.config.image_size
    }

    /// pixel_values [B, C, S, S] (preprocessed, [`crate::models::clip_image`])
    /// -> image_embeds [B, projection_dim], not normalised.
    pub fn image_embeds(&self, gpu: &Gpu, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.vision.config;
        let s = v.image_size;
        if pixels.rank() != 4 || pixels.dim(1) != v.num_channels || pixels.dim(2) != s || pixels.dim(3) != s {
            return Err(Error::shape(
                "CLIP vision tower",
                format!(
                    "pixel_values must be [B, {}, {s}, {s}] (CLIP's preprocessing: resize, centre crop to {s}, normalise), got {:?}",
                    v.num_channels,
                    pixels.shape()
                ),
            ));
        }
        let (b, d) = (pixels.dim(0), v.hidden_size);
        let w = &self.vision;
        let opts = Conv2dOpts { stride: v.patch_size, padding: 0, variant: None, padding_w: None };
        let patches = nchw_to_tokens(gpu, &conv2d(gpu, pixels, &w.patch_embedding, None, opts)?)?;
        let class = w.class_embedding.reshape(&[1, 1, d])?;
        let classes: Vec<&Tensor> = std::iter::repeat_n(&class, b).collect();
        let class_rows = concat::concat(gpu, &classes, 0)?;
        let h = concat::concat(gpu, &[&class_rows, &patches], 1)?;
        let h = ew::add(gpu, &h, &w.position_embedding)?;
        let h = w.pre_ln.forward(gpu, &h)?;
        let h = w.encoder.forward(gpu, h, false)?;
        let pooled = concat::narrow(gpu, &h, 1, 0, 1)?.reshape(&[b, d])?;
        let pooled = w.post_ln.forward(gpu, &pooled)?;
        w.projection.forward(gpu, &pooled)
    }

    /// Token ids [B][L] -> text_embeds [B, projection_dim], not normalised:
    /// the final hidden state at each row's end-of-text token.
    pub fn text_embeds(&self, gpu: &Gpu, ids: &[Vec<u32>]) -> Result<Tensor> {
        let b = ids.len();
        let l = ids.first().map_or(0, |r| r.len());
        if b == 0 || l == 0 || ids.iter().any(|r| r.len() != l) {
            return Err(Error::shape("CLIP text tower", "input_ids must be [B, L] with B, L > 0"));
        }
        let vocab = self.text.config.vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!("input_ids: token {bad} is outside the vocabulary of {vocab}: the tokenizer does not match the CLIP model")));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let h = self.text.forward(gpu, &gpu.upload_u32(&flat, &[b, l])?)?;
        let d = self.text.hidden_size();
        let rows: Vec<u32> = ids.iter().enumerate().map(|(i, r)| (i * l + end_of_text(r, self.text.config.eos_token_id)) as u32).collect();
        let pooled = embedding(gpu, &gpu.upload_u32(&rows, &[b])?, &[h.reshape(&[b * l, d])?], b * l)?;
        self.text_projection.forward(gpu, &pooled)
    }
}

/// Where transformers' CLIPTextTransformer pools a row: checkpoints with the
/// legacy `eos_token_id` 2 (OpenAI's, whose end-of-text token is the largest
/// id) take the position of the largest id; the others the first position of
/// `eos_token_id` (0 when the row has none, as `argmax` of all-false gives).
pub fn end_of_text(ids: &[u32], eos_token_id: Option<i64>) -> usize {
    match eos_token_id {
        None | Some(2) => {
            // torch.argmax returns the first maximum.
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&t| t == max).unwrap_or(0)
        }
        Some(eos) => ids.iter().position(|&t| i64::from(t) == eos).unwrap_or(0),
    }
}

/// The paper's CLIP score of one image: 100 × cos(image embedding, text embedding).
pub fn clip_score(image_embed: &[f32], text_embed: &[f32]) -> f64 {
    let dot: f64 = image_embed.iter().zip(text_embed).map(|(&a, &b)| a as f64 * b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let denom = norm(image_embed) * norm(text_embed);
    if denom == 0.0 { 0.0 } else { 100.0 * dot / denom }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rows_pool_where_transformers_pools_them() {
        // Legacy configs: the largest id (OpenAI's end-of-text 49407), first of equals.
        assert_eq!(end_of_text(&[49406, 320, 1125, 49407, 49407, 49407], Some(2)), 3);
        assert_eq!(end_of_text(&[49406, 320, 49407, 0, 0], None), 2);
        // Newer configs: the first end-of-text token, whatever ids are larger.
        assert_eq!(end_of_text(&[784, 900, 12, 785, 785], Some(785)), 3);
        assert_eq!(end_of_text(&[784, 12, 13], Some(785)), 0);
    }

    #[test]
    fn the_score_is_a_hundred_times_the_cosine() {
        assert!((clip_score(&[1.0, 0.0], &[2.0, 0.0]) - 100.0).abs() < 1e-9);
        assert!(clip_score(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-9);
        assert!((clip_score(&[1.0, 1.0], &[-1.0, 0.0]) + 100.0 / 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(clip_score(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
