//! Tensor names of single-file checkpoints in the original latent-diffusion
//! (LDM) layout, which Stable Diffusion's and MVDream's authors publish
//! (`model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`),
//! mapped to the diffusers names the model code reads
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`), so
//! that one loader serves both layouts.
//!
//! The UNet's map, per key and without looking at the others:
//! - `time_embed.{0,2}` → `time_embedding.linear_{1,2}`; `input_blocks.0.0` →
//!   `conv_in`; `out.{0,2}` → `conv_norm_out`, `conv_out`;
//! - `input_blocks.i` (i ≥ 1) is layer `(i−1) mod (L+1)` of down block
//!   `(i−1) div (L+1)`, L the res blocks per level: child 0 a resnet (or the
//!   downsampler `op` in the last layer), child 1 its attention;
//! - `middle_block.{0,1,2}` → the mid block's resnet 0, attention 0, resnet 1;
//! - `output_blocks.i` is layer `i mod (L+1)` of up block `i div (L+1)`:
//!   child 0 a resnet, then its attention, then the upsampler (child 1 when
//!   the block has no attention, which the key tells: only an upsampler has
//!   `conv` right under the child);
//! - inside a resnet `in_layers.{0,2}`, `emb_layers.1`, `out_layers.{0,3}`,
//!   `skip_connection` → `norm1`, `conv1`, `time_emb_proj`, `norm2`,
//!   `conv2`, `conv_shortcut`; attention blocks keep their inner names;
//! - MVDream's `camera_embed.{0,2}` → `camera_embedding.linear_{1,2}`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::models::config::UNetConfig;
use crate::models::unet::UNet;
use crate::models::weights::Weights;

/// The prefix of the UNet's tensors in a whole-pipeline checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

/// The diffusers name of an LDM UNet tensor (with or without
/// [`UNET_PREFIX`]), for a UNet with `layers_per_block` res blocks per
/// level; None for a name that is not part of the UNet.
pub fn unet_name(ldm: &str, layers_per_block: usize) -> Option<String> {
    let key = ldm.strip_prefix(UNET_PREFIX).unwrap_or(ldm);
    let per_level = layers_per_block + 1;
    let (head, rest) = split_index(key)?;
    match head {
        "time_embed" => embedding_mlp("time_embedding", rest),
        "camera_embed" => embedding_mlp("camera_embedding", rest),
        "out" => {
            let (i, tail) = split_index(rest)?;
            match i {
                "0" => Some(format!("conv_norm_out.{tail}")),
                "2" => Some(format!("conv_out.{tail}")),
                _ => None,
            }
        }
        "input_blocks" => {
            let (i, rest) = split_index(rest)?;
            let i: usize = i.parse().ok()?;
            let (child, tail) = split_index(rest)?;
            if i == 0 {
                return (child == "0").then(|| format!("conv_in.{tail}"));
            }
            let (block, layer) = ((i - 1) / per_level, (i - 1) % per_level);
            match child {
                "0" if tail.starts_with("op.") => Some(format!("down_blocks.{block}.downsamplers.0.conv.{}", &tail[3..])),
                "0" => Some(format!("down_blocks.{block}.resnets.{layer}.{}", resnet_tail(tail)?)),
                "1" => Some(format!("down_blocks.{block}.attentions.{layer}.{tail}")),
                _ => None,
            }
        }
        "middle_block" => {
            let (child, tail) = split_index(rest)?;
            match child {
                "0" => Some(format!("mid_block.resnets.0.{}", resnet_tail(tail)?)),
                "1" => Some(format!("mid_block.attentions.0.{tail}")),
                "2" => Some(format!("mid_block.resnets.1.{}", resnet_tail(tail)?)),
                _ => None,
            }
        }
        "output_blocks" => {
            let (i, rest) = split_index(rest)?;
            let i: usize = i.parse().ok()?;
            let (block, layer) = (i / per_level, i % per_level);
            let (child, tail) = split_index(rest)?;
            match child {
                "0" => Some(format!("up_blocks.{block}.resnets.{layer}.{}", resnet_tail(tail)?)),
                "1" | "2" if tail.starts_with("conv.") => Some(format!("up_blocks.{block}.upsamplers.0.{tail}")),
                "1" => Some(format!("up_blocks.{block}.attentions.{layer}.{tail}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An embedding MLP `Sequential(Linear, SiLU, Linear)`: children 0 and 2 are
/// diffusers' `linear_1` and `linear_2` under `name`.
fn embedding_mlp(name: &str, rest: &str) -> Option<String> {
    let (i, tail) = split_index(rest)?;
    let linear = match i {
        "0" => "linear_1",
        "2" => "linear_2",
        _ => return None,
    };
    Some(format!("{name}.{linear}.{tail}"))
}

/// A ResBlock's parameter name in diffusers' words.
fn resnet_tail(tail: &str) -> Option<String> {
    let (part, rest) = split_index(tail)?;
    let renamed = match part {
        "in_layers" => match split_index(rest)? {
            ("0", t) => format!("norm1.{t}"),
            ("2", t) => format!("conv1.{t}"),
            _ => return None,
        },
        "out_layers" => match split_index(rest)? {
            ("0", t) => format!("norm2.{t}"),
            ("3", t) => format!("conv2.{t}"),
            _ => return None,
        },
        "emb_layers" => match split_index(rest)? {
            ("1", t) => format!("time_emb_proj.{t}"),
            _ => return None,
        },
        "skip_connection" => format!("conv_shortcut.{rest}"),
        _ => return None,
    };
    Some(renamed)
}

/// "a.b.c" → ("a", "b.c"); None without a dot.
fn split_index(s: &str) -> Option<(&str, &str)> {
    s.split_once('.')
}

/// The UNet of an LDM config YAML (`model.params.unet_config.params`, as
/// Stable Diffusion's `v2-inference.yaml` and MVDream's `sd-v2-base.yaml`
/// write it) as the diffusers config the model code reads.
pub fn unet_config_from_yaml(path: &Path) -> Result<UNetConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    let doc: serde_json::Value = serde_norway::from_str(&text).map_err(|e| bad(format!("not a readable YAML file ({e})")))?;
    let p = &doc["model"]["params"]["unet_config"]["params"];
    if !p.is_object() {
        return Err(bad("no model.params.unet_config.params: not an LDM model config (e.g. v1-inference.yaml, sd-v2-base.yaml)".into()));
    }
    let num = |k: &str| p[k].as_u64().map(|v| v as usize);
    let need = |k: &str| num(k).ok_or_else(|| bad(format!("unet_config.params.{k} is missing or not a number")));
    let list = |k: &str| -> Result<Vec<usize>> {
        p[k].as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad(format!("unet_config.params.{k} must be a list of numbers")))
    };
    let model_channels = need("model_channels")?;
    let mult = list("channel_mult")?;
    let attention_at = list("attention_resolutions")?;
    let layers = need("num_res_blocks")?;
    let channels: Vec<usize> = mult.iter().map(|m| m * model_channels).collect();
    if channels.is_empty() || layers == 0 {
        return Err(bad("channel_mult and num_res_blocks must not be empty or 0".into()));
    }
    // Level i works at 1/2^i of the input: attention where that factor is listed.
    let cross: Vec<bool> = (0..channels.len()).map(|i| attention_at.contains(&(1 << i))).collect();
    // Heads per level: channels / num_head_channels, or num_heads for all.
    let heads: Vec<usize> = match (p["num_head_channels"].as_i64(), p["num_heads"].as_i64()) {
        (Some(hc), _) if hc > 0 => channels
            .iter()
            .map(|c| if c % hc as usize == 0 { Ok(c / hc as usize) } else { Err(bad(format!("num_head_channels {hc} does not divide {c} channels"))) })
            .collect::<Result<_>>()?,
        (_, Some(h)) if h > 0 => vec![h as usize; channels.len()],
        _ => return Err(bad("unet_config.params needs num_head_channels or num_heads".into())),
    };
    let context_dim = need("context_dim")?;
    let config = serde_json::json!({
        "sample_size": num("image_size"),
        "in_channels": need("in_channels")?,
        "out_channels": need("out_channels")?,
        "down_block_types": cross.iter().map(|&c| if c { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect::<Vec<_>>(),
        "up_block_types": cross.iter().rev().map(|&c| if c { "CrossAttnUpBlock2D" } else { "UpBlock2D" }).collect::<Vec<_>>(),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "transformer_layers_per_block": num("transformer_depth").unwrap_or(1),
        "use_linear_projection": p["use_linear_in_transformer"].as_bool().unwrap_or(false),
        "camera_dim": num("camera_dim"),
        "norm_num_groups": 32,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
    });
    let config: UNetConfig = serde_json::from_value(config).map_err(|e| bad(format!("the UNet config it implies is not valid: {e}")))?;
    config.check().map_err(|e| bad(format!("the UNet config it implies: {e}")))?;
    Ok(config)
}

/// A single-file LDM checkpoint and its config YAML, when `path` is one: a
/// `.safetensors` file (the YAML beside it with the same stem, else
/// `config.yaml` in its folder), or a folder with `config.yaml` (and no
/// diffusers `config.json`) and `model.safetensors` or a single `.safetensors`.
pub fn single_file(path: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
        let same_stem = path.with_extension("yaml");
        let yaml = if same_stem.is_file() { same_stem } else { path.parent()?.join("config.yaml") };
        return yaml.is_file().then(|| (path.to_path_buf(), yaml));
    }
    if path.is_dir() && !path.join("config.json").is_file() && path.join("config.yaml").is_file() {
        if path.join("model.safetensors").is_file() {
            return Some((path.join("model.safetensors"), path.join("config.yaml")));
        }
        let files: Vec<_> = std::fs::read_dir(path).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "safetensors")).collect();
        if files.len() == 1 {
            return Some((files[0].clone(), path.join("config.yaml")));
        }
    }
    None
}

/// The UNet of a single-file checkpoint in the LDM layout (`.safetensors`),
/// with its config YAML: the tensors are read under their diffusers names.
pub fn load_unet(gpu: &Gpu, checkpoint: &Path, yaml: &Path, dtype: DType) -> Result<UNet> {
    let config = unet_config_from_yaml(yaml)?;
    let layers = match &config.layers_per_block {
        crate::models::config::PerBlock::One(n) => *n,
        crate::models::config::PerBlock::Each(v) => v[0],
    };
    let weights = Weights::open_file(checkpoint)?.renamed(|name| if name.starts_with(UNET_PREFIX) { unet_name(name, layers) } else { None })?;
    if weights.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no {UNET_PREFIX}* tensors: not a single-file LDM checkpoint with a UNet",
            checkpoint.display()
        )));
    }
    UNet::from_weights(gpu, config, &weights, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_names_map_to_diffusers() {
        let cases = [
            ("model.diffusion_model.time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("model.diffusion_model.input_blocks.0.0.bias", "conv_in.bias"),
            ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight", "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight"),
            ("model.diffusion_model.input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("model.diffusion_model.input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("model.diffusion_model.middle_block.2.emb_layers.1.bias", "mid_block.resnets.1.time_emb_proj.bias"),
            ("model.diffusion_model.output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("model.diffusion_model.output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            ("model.diffusion_model.output_blocks.4.1.proj_out.weight", "up_blocks.1.attentions.1.proj_out.weight"),
            ("model.diffusion_model.output_blocks.11.0.out_layers.3.weight", "up_blocks.3.resnets.2.conv2.weight"),
            ("model.diffusion_model.out.2.weight", "conv_out.weight"),
            ("model.diffusion_model.camera_embed.2.bias", "camera_embedding.linear_2.bias"),
        ];
        for (ldm, want) in cases {
            assert_eq!(unet_name(ldm, 2).as_deref(), Some(want), "{ldm}");
        }
        for other in ["first_stage_model.encoder.conv_in.weight", "model.diffusion_model.input_blocks.1.7.x", "betas"] {
            assert_eq!(unet_name(other, 2), None, "{other}");
        }
    }

    /// Every tensor of a tiny MVDream UNet (the authors' MultiViewUNetModel,
    /// tests/fixtures/mvdream/unet_tiny, by tools/golden/make_mvdream_unet_fixture.py)
    /// gets the name diffusers' own `convert_ldm_unet_checkpoint` gives it; the
    /// camera embedding, which diffusers drops, gets ours.
    #[test]
    fn a_whole_checkpoint_maps_as_diffusers_converts_it() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mvdream/unet_tiny/ldm_to_diffusers.json");
        let pairs: Vec<(String, Option<String>)> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(pairs.len(), 290);
        let mut mapped = std::collections::HashSet::new();
        for (ldm, want) in &pairs {
            let got = unet_name(ldm, 1);
            match want {
                Some(want) => assert_eq!(got.as_deref(), Some(want.as_str()), "{ldm}"),
                None => assert!(got.as_deref().is_some_and(|g| g.starts_with("camera_embedding.")), "{ldm} -> {got:?}"),
            }
            assert!(mapped.insert(got.unwrap()), "two tensors map to one name ({ldm})");
        }
    }
}
