//! Diffusers-compatible networks and what they load: configs, weights,
//! tokenizers. Module and parameter names mirror the diffusers safetensors keys.
pub mod chunked;
pub mod classifier;
pub mod clip_text;
pub mod config;
pub mod forward;
pub mod nn;
pub mod pixel_prior;
pub mod prior;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vae_backward;
pub mod weights;

use std::path::{Path, PathBuf};

/// Environment variable naming the default model folder (instead of the embedded prior).
pub const ENV_MODEL: &str = "FSD3D_MODEL";

/// Where the embedded default prior lives in the source tree.
pub fn embedded_prior_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join("tiny-shapes")
}

/// The model folder a command uses: `--model`, else `$FSD3D_MODEL`, else the embedded prior.
pub fn model_dir(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    match std::env::var_os(ENV_MODEL) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => embedded_prior_dir(),
    }
}
