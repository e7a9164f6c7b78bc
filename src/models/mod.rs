//! Diffusers-compatible networks and what they load: configs, weights,
//! tokenizers. Module and parameter names mirror the diffusers safetensors keys.
pub mod chunked;
pub mod classifier;
pub mod clip;
pub mod clip_image;
pub mod clip_text;
pub mod config;
pub mod forward;
pub mod inception;
pub mod ldm;
pub mod lora;
pub mod nn;
pub mod pixel_prior;
pub mod prior;
pub mod tokenizer;
pub mod unet;
pub mod unet_backward;
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

/// The embedded multi-view prior: tiny-shapes fine-tuned on 4-view sets
/// with cameras, MVDream's architecture (`weights/tiny-shapes-4view`).
pub fn embedded_multiview_prior_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join("tiny-shapes-4view")
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

/// The storage type of a pipeline's weights and activations that `--dtype`
/// names: `f32`, `f16`, or `auto`. `auto` is f16 for a latent (VAE)
/// pipeline on a GPU that has SHADER_F16, as diffusers users run Stable
/// Diffusion (`torch_dtype=torch.float16`): half the memory and bandwidth,
/// and the matrix units' operand type anyway. Elsewhere it is f32: CPU
/// adapters compute in f32 whatever is stored, and pixel priors (the
/// embedded one) are small enough that f16 buys nothing.
pub fn resolve_dtype(gpu: &crate::gpu::Gpu, requested: &str, model_dir: &Path) -> crate::Result<crate::gpu::DType> {
    use crate::gpu::DType;
    if requested != "auto" {
        return DType::parse(requested);
    }
    let gpu_class = gpu.info().device_type != wgpu::DeviceType::Cpu;
    let latent = pixel_prior::PixelPriorSpec::load(model_dir)?.is_none();
    Ok(auto_dtype(gpu_class, latent, gpu.features().f16))
}

/// `auto`'s rule: f16 for a latent pipeline on a GPU with f16, else f32.
fn auto_dtype(gpu_class: bool, latent: bool, has_f16: bool) -> crate::gpu::DType {
    if gpu_class && latent && has_f16 { crate::gpu::DType::F16 } else { crate::gpu::DType::F32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DType;

    #[test]
    fn auto_is_f16_only_for_stable_diffusion_on_a_gpu_with_f16() {
        assert_eq!(auto_dtype(true, true, true), DType::F16);
        assert_eq!(auto_dtype(false, true, true), DType::F32, "CPU adapters compute in f32 anyway");
        assert_eq!(auto_dtype(true, false, true), DType::F32, "pixel priors stay f32");
        assert_eq!(auto_dtype(true, true, false), DType::F32, "no f16 without SHADER_F16");
    }
}
