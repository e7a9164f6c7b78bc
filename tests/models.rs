//! The Stable Diffusion forward pass against diffusers / transformers on tiny
//! random-weight models (fixtures by tools/golden/make_model_fixtures.py):
//! f32 within 1e-3 of the output's scale, f16 within 2e-2.
mod common;
use std::path::Path;

use fsd3d::gpu::DType;
use fsd3d::models::forward::{read_tensors, run};

fn check(case: &str, module: &str, dtype: DType) {
    check_on(&common::gpus(), case, module, dtype, if dtype == DType::F16 { 2e-2 } else { 1e-3 });
}

/// `module` of fixture `case` on each device, within `rtol` of the output's scale.
fn check_on(gpus: &[std::sync::Arc<fsd3d::gpu::Gpu>], case: &str, module: &str, dtype: DType, rtol: f32) {
    let dir = Path::new("tests/fixtures/models").join(case);
    let mut inputs = read_tensors(&dir.join(format!("inputs_{module}.safetensors"))).unwrap();
    inputs.remove("mean_grad"); // the encoder backward pass is checked elsewhere
    let want = read_tensors(&dir.join(format!("outputs_{module}.safetensors"))).unwrap();
    for gpu in gpus {
        if dtype == DType::F16 && !gpu.features().f16 {
            continue;
        }
        let got = run(gpu, &dir, module, &inputs, dtype).unwrap_or_else(|e| panic!("{case}/{module}: {e}"));
        for (name, w) in &want {
            if name == "sample_grad" {
                continue;
            }
            let g = &got[name];
            assert_eq!(g.shape, w.shape, "{case}/{module}/{name} shape");
            let scale = w.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = g.data.iter().zip(&w.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{case}/{module}/{name} {dtype} [{}]: max abs err {err:.2e}, scale {scale:.3}", gpu.features().names().join(","));
            assert!(err <= rtol * scale, "{case}/{module}/{name} {dtype}: max abs error {err} over {} (scale {scale})", rtol * scale);
        }
    }
}

#[test]
fn clip_text_quick_gelu() {
    check("clip_quick_gelu", "text-encoder", DType::F32);
    check("clip_quick_gelu", "text-encoder", DType::F16);
}

#[test]
fn clip_text_gelu() {
    check("clip_gelu", "text-encoder", DType::F32);
}

#[test]
fn unet_sd1_style() {
    check("sd1_unet", "unet", DType::F32);
    check("sd1_unet", "unet", DType::F16);
}

#[test]
fn unet_sd2_style() {
    check("sd2_unet", "unet", DType::F32);
}

#[test]
fn vae_encode_and_decode() {
    check("vae", "vae-encode", DType::F32);
    check("vae", "vae-decode", DType::F32);
    check("vae", "vae-decode", DType::F16);
}

/// The networks on the kernels GPUs run by default: the workgroup-tiled
/// GEMMs (f32 operands: the f32 tolerance), and the matrix units through
/// their emulated twin standing in for them (GEMMs, convolutions and flash
/// attention on f16 operands: the f16 tolerance, whatever the storage type).
#[test]
fn networks_on_the_gpu_kernels_match_diffusers() {
    use fsd3d::gpu::{Gpu, GpuOptions};
    let tiled = Gpu::new(&GpuOptions {
        variants: vec![("matmul".into(), "tiled".into()), ("conv2d".into(), "tiled".into()), ("attention".into(), "fused".into())],
        ..Default::default()
    })
    .unwrap();
    check_on(std::slice::from_ref(&tiled), "sd1_unet", "unet", DType::F32, 1e-3);
    check_on(&[tiled], "vae", "vae-decode", DType::F32, 1e-3);
    let coop = Gpu::new(&GpuOptions { emulate_coop_matrix: true, ..Default::default() }).unwrap();
    if coop.features().f16 {
        // Each layer shape is a kernel of the emulated twin that lavapipe
        // compiles anew (seconds each): the SD1 UNet (convolutions, Linear
        // layers, self- and cross-attention) and the VAE decoder, in f32.
        for (case, module) in [("sd1_unet", "unet"), ("vae", "vae-decode")] {
            check_on(std::slice::from_ref(&coop), case, module, DType::F32, 2e-2);
        }
        assert!(coop.switched_off().is_empty(), "every first-use check passes: {:?}", coop.switched_off());
    }
}

#[test]
fn pipeline_folder_components_load() {
    // The same loaders find components inside a pipeline folder.
    let gpu = common::gpu();
    let dir = Path::new("tests/fixtures/models/pipeline");
    fsd3d::models::unet::UNet::load(&gpu, dir, DType::F32).unwrap();
    fsd3d::models::vae::Vae::load(&gpu, dir, DType::F32).unwrap();
    fsd3d::models::clip_text::ClipTextModel::load(&gpu, dir, DType::F32).unwrap();
}

#[test]
fn mismatched_config_is_a_clear_error() {
    let gpu = common::gpu();
    let dir = std::env::temp_dir().join(format!("fsd3d-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new("tests/fixtures/models/sd2_unet");
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap().replace("\"cross_attention_dim\": 48", "\"cross_attention_dim\": 64");
    assert!(cfg.contains("64"));
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let err = fsd3d::models::unet::UNet::load(&gpu, &dir, DType::F32).err().unwrap().to_string();
    assert!(err.contains("does not match") || err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// MVDream's multi-view UNet from a single-file checkpoint with the authors'
/// key names and config YAML, against their MultiViewUNetModel on a tiny
/// random config (tests/fixtures/mvdream/unet_tiny, by
/// tools/golden/make_mvdream_unet_fixture.py): 2 objects × 4 views with
/// cameras, self-attention across each object's views; and one view without
/// a camera, where the model is SD 2's UNet.
#[test]
fn mvdream_unet_from_its_single_file_matches_the_authors_model() {
    let dir = Path::new("tests/fixtures/mvdream/unet_tiny");
    for (inputs, outputs) in [("inputs_unet.safetensors", "outputs_unet.safetensors"), ("inputs_unet_single.safetensors", "outputs_unet_single.safetensors")] {
        let inputs = read_tensors(&dir.join(inputs)).unwrap();
        let want = &read_tensors(&dir.join(outputs)).unwrap()["sample"];
        for (gpu, dtype) in common::configs() {
            let rtol = if dtype == DType::F16 { 2e-2 } else { 1e-3 };
            let got = &run(&gpu, dir, "unet", &inputs, dtype).unwrap()["sample"];
            assert_eq!(got.shape, want.shape);
            let scale = want.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = got.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("mvdream unet ({} views) {}: max abs err {err:.2e}, scale {scale:.3}", want.shape[0], common::label(&gpu, dtype));
            assert!(err <= rtol * scale, "mvdream unet {}: max abs error {err} over {}", common::label(&gpu, dtype), rtol * scale);
        }
    }
    // The views of an object see each other: a different num_frames changes the output.
    let gpu = common::gpu();
    let mut inputs = read_tensors(&dir.join("inputs_unet.safetensors")).unwrap();
    let want = &read_tensors(&dir.join("outputs_unet.safetensors")).unwrap()["sample"];
    inputs.get_mut("num_frames").unwrap().data = vec![1.0];
    let per_view = &run(&gpu, dir, "unet", &inputs, DType::F32).unwrap()["sample"];
    let diff = per_view.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff > 1e-2, "attention across views matters ({diff})");
    // num_frames must divide the batch.
    inputs.get_mut("num_frames").unwrap().data = vec![3.0];
    let e = run(&gpu, dir, "unet", &inputs, DType::F32).unwrap_err().to_string();
    assert!(e.contains("num_frames 3") && e.contains("batch of 8"), "{e}");
}
