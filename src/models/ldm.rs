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
//!
//! The VAE's (`first_stage_model.`, [`vae_view`]):
//! - `{encoder,decoder}.conv_in`, `conv_out`, `quant_conv`, `post_quant_conv`
//!   keep their names; `norm_out` → `conv_norm_out`;
//! - `encoder.down.i.block.j` → `encoder.down_blocks.i.resnets.j`,
//!   `encoder.down.i.downsample.conv` → `….downsamplers.0.conv`;
//! - `decoder.up.i` → `decoder.up_blocks.(n−1−i)`: LDM numbers the decoder's
//!   levels by resolution (0 the finest), diffusers in the order they run;
//!   `upsample.conv` → `upsamplers.0.conv`;
//! - `mid.block_{1,2}` → `mid_block.resnets.{0,1}`; `mid.attn_1.{norm, q, k,
//!   v, proj_out}` → `mid_block.attentions.0.{group_norm, to_q, to_k, to_v,
//!   to_out.0}`, the 1×1 convolutions' [C, C, 1, 1] read as [C, C];
//! - in a resnet `nin_shortcut` → `conv_shortcut`.
//!
//! The text encoder's ([`text_encoder_view`]): SD 1.x keeps transformers'
//! CLIPTextModel under `cond_stage_model.transformer.`; SD 2.x and MVDream
//! keep OpenCLIP's text tower under `cond_stage_model.model.`:
//! `token_embedding`, `positional_embedding`, `ln_final` → `embeddings.*`,
//! `final_layer_norm`; `transformer.resblocks.i.{ln_1, ln_2, mlp.c_fc,
//! mlp.c_proj, attn.out_proj}` → `encoder.layers.i.{layer_norm1, layer_norm2,
//! mlp.fc1, mlp.fc2, self_attn.out_proj}`; the fused `attn.in_proj_*` [3D, …]
//! is read as `q_proj`, `k_proj`, `v_proj` (its row thirds).

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::models::clip_text::ClipTextModel;
use crate::models::config::{ClipTextConfig, SchedulerConfig, UNetConfig, VaeConfig};
use crate::models::nn::Loader;
use crate::models::unet::UNet;
use crate::models::vae::Vae;
use crate::models::weights::{TensorView, Weights};

/// The prefix of the UNet's tensors in a whole-pipeline checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// The prefix of the VAE's.
pub const VAE_PREFIX: &str = "first_stage_model.";

/// The diffusers name of an LDM VAE tensor (with or without
/// [`VAE_PREFIX`]) of a VAE with `levels` resolution levels, and the shape
/// to read it as where diffusers' differs (the mid attention's 1×1
/// convolutions as linear layers); empty for names outside the VAE.
pub fn vae_view(ldm: &str, shape: &[usize], levels: usize) -> Vec<TensorView> {
    let key = ldm.strip_prefix(VAE_PREFIX).unwrap_or(ldm);
    let Some(name) = vae_name(key, levels) else { return vec![] };
    let as_linear = name.contains(".attentions.0.to_") && shape.len() == 4 && shape[2..] == [1, 1];
    vec![TensorView { name, rows: None, shape: as_linear.then(|| shape[..2].to_vec()) }]
}

fn vae_name(key: &str, levels: usize) -> Option<String> {
    let (part, rest) = split_index(key)?;
    if part == "quant_conv" || part == "post_quant_conv" {
        return Some(key.to_string());
    }
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let resnet = |r: &str| r.replace("nin_shortcut", "conv_shortcut");
    let (head, tail) = split_index(rest)?;
    let inner = match head {
        "conv_in" | "conv_out" => rest.to_string(),
        "norm_out" => format!("conv_norm_out.{tail}"),
        "mid" => {
            let (block, t) = split_index(tail)?;
            match block {
                "block_1" => format!("mid_block.resnets.0.{}", resnet(t)),
                "block_2" => format!("mid_block.resnets.1.{}", resnet(t)),
                "attn_1" => {
                    let (layer, param) = split_index(t)?;
                    let to = match layer {
                        "norm" => "group_norm",
                        "q" => "to_q",
                        "k" => "to_k",
                        "v" => "to_v",
                        "proj_out" => "to_out.0",
                        _ => return None,
                    };
                    format!("mid_block.attentions.0.{to}.{param}")
                }
                _ => return None,
            }
        }
        "down" | "up" => {
            let (level, t) = split_index(tail)?;
            let level: usize = level.parse().ok()?;
            if level >= levels {
                return None;
            }
            let (blocks, index) = if head == "down" { ("down_blocks", level) } else { ("up_blocks", levels - 1 - level) };
            let (kind, t) = split_index(t)?;
            match kind {
                "block" => {
                    let (j, t) = split_index(t)?;
                    format!("{blocks}.{index}.resnets.{j}.{}", resnet(t))
                }
                "downsample" if head == "down" => format!("{blocks}.{index}.downsamplers.0.{t}"),
                "upsample" if head == "up" => format!("{blocks}.{index}.upsamplers.0.{t}"),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("{part}.{inner}"))
}

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

/// The LDM config YAML's `model.params` (the document's errors name `path`).
fn model_params(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let doc: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| Error::Invalid(format!("{}: not a readable YAML file ({e})", path.display())))?;
    Ok(doc["model"]["params"].clone())
}

/// The VAE of an LDM config YAML (`model.params.first_stage_config.params`
/// and `model.params.scale_factor`) as the diffusers config the model code reads.
pub fn vae_config_from_yaml(path: &Path) -> Result<VaeConfig> {
    let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    let params = model_params(path)?;
    let p = &params["first_stage_config"]["params"];
    let dd = &p["ddconfig"];
    if !dd.is_object() {
        return Err(bad("no model.params.first_stage_config.params.ddconfig: not an LDM model config with a KL autoencoder".into()));
    }
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().map(|x| x as usize).ok_or_else(|| bad(format!("ddconfig.{k} is missing or not a number")));
    let ch = num(dd, "ch")?;
    let mult: Vec<usize> = dd["ch_mult"]
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize * ch)).collect())
        .ok_or_else(|| bad("ddconfig.ch_mult must be a list of numbers".into()))?;
    if dd["attn_resolutions"].as_array().is_some_and(|a| !a.is_empty()) {
        return Err(bad("ddconfig.attn_resolutions is not empty: attention inside the levels is not supported (Stable Diffusion's VAE has none)".into()));
    }
    if !dd["double_z"].as_bool().unwrap_or(true) {
        return Err(bad("ddconfig.double_z is false: only the KL autoencoder (mean and log-variance) is supported".into()));
    }
    let z = num(dd, "z_channels")?;
    let embed = p["embed_dim"].as_u64().map_or(z, |x| x as usize);
    if embed != z {
        return Err(bad(format!("embed_dim {embed} differs from z_channels {z}; diffusers' AutoencoderKL has one latent width")));
    }
    let n = mult.len();
    let config = serde_json::json!({
        "in_channels": num(dd, "in_channels")?,
        "out_channels": num(dd, "out_ch")?,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "block_out_channels": mult,
        "layers_per_block": num(dd, "num_res_blocks")?,
        "latent_channels": z,
        "norm_num_groups": 32,
        "sample_size": dd["resolution"].as_u64(),
        "scaling_factor": params["scale_factor"].as_f64().unwrap_or(0.18215),
    });
    let config: VaeConfig = serde_json::from_value(config).map_err(|e| bad(format!("the VAE config it implies is not valid: {e}")))?;
    Ok(config)
}

/// The noise schedule of an LDM config YAML (`model.params`: `timesteps`,
/// `linear_start`, `linear_end`, `beta_schedule`, `parameterization`, with
/// LDM's `DDPM` defaults) as a diffusers scheduler config, with the sampler
/// settings diffusers' `from_single_file` gives Stable Diffusion: no sample
/// clipping, ᾱ before t = 0 taken as ᾱ_0 (`set_alpha_to_one` false), steps
/// offset by 1, "leading" spacing.
///
/// LDM's names differ from diffusers': its "linear" schedule is linear in
/// √β (diffusers' `scaled_linear`), its "sqrt_linear" is linear in β
/// (diffusers' `linear`), its "cosine" (offset 0.008) is `squaredcos_cap_v2`.
/// The prediction is what `parameterization` says ("eps" or "v"): diffusers
/// guesses v for any SD 2.x file unless its training step is 875 000, a
/// heuristic that this loader does not copy.
pub fn scheduler_config_from_yaml(path: &Path) -> Result<SchedulerConfig> {
    let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    let p = model_params(path)?;
    if !p.is_object() {
        return Err(bad("no model.params: not an LDM model config (e.g. v1-inference.yaml, sd-v2-base.yaml)".into()));
    }
    let float = |k: &str, default: f64| match &p[k] {
        serde_json::Value::Null => Ok(default),
        v => v.as_f64().ok_or_else(|| bad(format!("model.params.{k} must be a number, not {v}"))),
    };
    let timesteps = float("timesteps", 1000.0)?;
    if timesteps < 1.0 || timesteps.fract() != 0.0 {
        return Err(bad(format!("model.params.timesteps must be a positive whole number, not {timesteps}")));
    }
    let schedule = match p["beta_schedule"].as_str().unwrap_or("linear") {
        "linear" => "scaled_linear",
        "sqrt_linear" => "linear",
        "cosine" if float("cosine_s", 8e-3)? == 8e-3 => "squaredcos_cap_v2",
        other => {
            return Err(bad(format!(
                "model.params.beta_schedule {other:?} is not supported: expected linear, sqrt_linear or cosine (with the default cosine_s)"
            )));
        }
    };
    let prediction = match p["parameterization"].as_str().unwrap_or("eps") {
        "eps" => "epsilon",
        "v" => "v_prediction",
        other => return Err(bad(format!("model.params.parameterization {other:?} is not supported: expected \"eps\" or \"v\""))),
    };
    let config = serde_json::json!({
        "num_train_timesteps": timesteps as usize,
        "beta_start": float("linear_start", 1e-4)?,
        "beta_end": float("linear_end", 2e-2)?,
        "beta_schedule": schedule,
        "prediction_type": prediction,
        "clip_sample": false,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    });
    serde_json::from_value(config).map_err(|e| bad(format!("the scheduler config it implies is not valid: {e}")))
}

/// The VAE of a single-file checkpoint in the LDM layout (`.safetensors`),
/// with its config YAML: the tensors are read under their diffusers names.
pub fn load_vae(gpu: &Gpu, checkpoint: &Path, yaml: &Path, dtype: DType) -> Result<Vae> {
    let config = vae_config_from_yaml(yaml)?;
    let levels = config.block_out_channels.len();
    let weights = Weights::open_file(checkpoint)?.viewed(|name, shape| if name.starts_with(VAE_PREFIX) { vae_view(name, shape, levels) } else { vec![] })?;
    if weights.is_empty() {
        return Err(Error::Invalid(format!("{}: no {VAE_PREFIX}* tensors: the checkpoint holds no VAE", checkpoint.display())));
    }
    Vae::from_weights(gpu, config, &weights, dtype)
}

/// The prefix of SD 1.x's text encoder (transformers' CLIPTextModel).
pub const CLIP_TEXT_PREFIX: &str = "cond_stage_model.transformer.";
/// The prefix of SD 2.x's and MVDream's (OpenCLIP's text tower).
pub const OPENCLIP_TEXT_PREFIX: &str = "cond_stage_model.model.";

/// The transformers CLIPTextModel names (`text_model.`…) a single-file
/// checkpoint's text encoder tensor is read as; empty outside it.
pub fn text_encoder_view(ldm: &str, shape: &[usize]) -> Vec<TensorView> {
    if let Some(rest) = ldm.strip_prefix(CLIP_TEXT_PREFIX) {
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        return vec![TensorView::whole(format!("text_model.{rest}"))];
    }
    let Some(key) = ldm.strip_prefix(OPENCLIP_TEXT_PREFIX) else { return vec![] };
    let whole = |n: String| vec![TensorView::whole(format!("text_model.{n}"))];
    match key {
        "token_embedding.weight" => return whole("embeddings.token_embedding.weight".into()),
        "positional_embedding" => return whole("embeddings.position_embedding.weight".into()),
        "ln_final.weight" | "ln_final.bias" => return whole(key.replace("ln_final", "final_layer_norm")),
        _ => {}
    }
    let Some(block) = key.strip_prefix("transformer.resblocks.") else { return vec![] };
    let Some((i, param)) = split_index(block) else { return vec![] };
    let layer = format!("encoder.layers.{i}");
    match param {
        "attn.in_proj_weight" | "attn.in_proj_bias" if shape.first().is_some_and(|r| r % 3 == 0) => {
            let d = shape[0] / 3;
            let kind = if param.ends_with("weight") { "weight" } else { "bias" };
            ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(k, proj)| TensorView { name: format!("text_model.{layer}.self_attn.{proj}.{kind}"), rows: Some(k * d..(k + 1) * d), shape: None })
                .collect()
        }
        _ => {
            let (module, kind) = match param.rsplit_once('.') {
                Some(x) => x,
                None => return vec![],
            };
            let to = match module {
                "ln_1" => "layer_norm1",
                "ln_2" => "layer_norm2",
                "mlp.c_fc" => "mlp.fc1",
                "mlp.c_proj" => "mlp.fc2",
                "attn.out_proj" => "self_attn.out_proj",
                _ => return vec![],
            };
            whole(format!("{layer}.{to}.{kind}"))
        }
    }
}

/// The text encoder of a single-file checkpoint (SD 1.x's CLIP, or SD 2.x's
/// and MVDream's OpenCLIP), with its config YAML, as the CLIPTextModel whose
/// `last_hidden_state` the UNet takes. Its config is read off the tensors'
/// shapes (heads of 64, as every CLIP and OpenCLIP text tower has); for
/// OpenCLIP, `cond_stage_config.params.layer: "penultimate"` drops the last
/// block (LDM's FrozenOpenCLIPEmbedder, then `ln_final` as after every block).
pub fn load_text_encoder(gpu: &Gpu, checkpoint: &Path, yaml: &Path, dtype: DType) -> Result<ClipTextModel> {
    let params = model_params(yaml)?;
    let weights = Weights::open_file(checkpoint)?.viewed(text_encoder_view)?;
    let bad = |what: String| Error::Invalid(format!("{}: {what}", checkpoint.display()));
    if weights.is_empty() {
        return Err(bad(format!("no {CLIP_TEXT_PREFIX}* or {OPENCLIP_TEXT_PREFIX}* tensors: the checkpoint holds no text encoder")));
    }
    let openclip = Weights::open_file(checkpoint)?.names().any(|n| n.starts_with(OPENCLIP_TEXT_PREFIX));
    let [vocab, hidden]: [usize; 2] = weights
        .shape("text_model.embeddings.token_embedding.weight")?
        .try_into()
        .map_err(|s| bad(format!("the token embedding has shape {s:?}, not [vocab, width]")))?;
    let positions = weights.shape("text_model.embeddings.position_embedding.weight")?[0];
    let intermediate = weights.shape("text_model.encoder.layers.0.mlp.fc1.weight")?[0];
    let blocks = (0..).take_while(|i| weights.contains(&format!("text_model.encoder.layers.{i}.layer_norm1.weight"))).count();
    let layer = params["cond_stage_config"]["params"]["layer"].as_str().unwrap_or("last");
    let layers = match (openclip, layer) {
        (true, "penultimate") => blocks - 1,
        (_, "last") => blocks,
        (false, other) | (true, other) => {
            return Err(Error::Invalid(format!(
                "{}: cond_stage_config.params.layer {other:?} is not supported (\"last\", or \"penultimate\" for OpenCLIP)",
                yaml.display()
            )));
        }
    };
    if hidden % 64 != 0 || layers == 0 {
        return Err(bad(format!("a text tower of width {hidden} and {blocks} blocks is not a CLIP / OpenCLIP text encoder (heads of 64)")));
    }
    let config: ClipTextConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": positions,
        // OpenAI's CLIP (SD 1.x) uses quick GELU; OpenCLIP's towers, exact GELU.
        "hidden_act": if openclip { "gelu" } else { "quick_gelu" },
        "layer_norm_eps": 1e-5,
    }))
    .map_err(|e| bad(format!("the text encoder config it implies is not valid: {e}")))?;
    let l = Loader { gpu, weights: &weights, dtype };
    ClipTextModel::from_loader(&l, "text_model.", config)
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
