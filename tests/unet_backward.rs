//! The UNet's backward pass to its input sample against torch autograd
//! (float64) on the tiny diffusers UNets of tests/fixtures/models (SD 1.x
//! style: 1×1-conv projections, three levels; SD 2.x style: linear
//! projections, a head count per level) and on MVDream's own multi-view
//! UNet (tests/fixtures/mvdream/unet_tiny, cameras, 4 views), through `fsd3d forward --module
//! unet` with `sample_out_grad` (fixture by
//! tools/golden/make_unet_grad_fixture.py); in f32 and f16, on every
//! adapter configuration; and against central differences of the engine's
//! own forward.
mod common;
use std::collections::HashMap;
use std::path::Path;

use fsd3d::gpu::DType;
use fsd3d::models::forward::{HostTensor, read_tensors, run};

/// The file's inputs (a multi-view case's cameras and num_frames, a LoRA
/// adapter's factors and alpha too): everything but the expected outputs.
fn inputs_of(io: &HashMap<String, HostTensor>) -> HashMap<String, HostTensor> {
    io.iter().filter(|(k, _)| !k.starts_with("expected_")).map(|(k, t)| (k.clone(), t.clone())).collect()
}

#[test]
fn unet_input_gradient_matches_torch_autograd() {
    // MVDream's multi-view UNet (the authors' code): 2 objects × 4 views,
    // self-attention across an object's views, cameras.
    for case in ["models/sd1_unet", "models/sd2_unet", "mvdream/unet_tiny"] {
        let dir = Path::new("tests/fixtures").join(case);
        let io = read_tensors(&dir.join("grad_io.safetensors")).unwrap();
        for (gpu, dtype) in common::configs() {
            let out = run(&gpu, &dir, "unet", &inputs_of(&io), dtype).unwrap();
            let what = format!("{case} {}", common::label(&gpu, dtype));
            let (out_tol, grad_tol) = if dtype == DType::F16 { (1e-2, 5e-3) } else { (1e-4, 2e-5) };
            common::assert_close(&format!("{what} output"), &out["sample"].data, &io["expected_sample"].data, out_tol);
            let got = &out["sample_grad"];
            assert_eq!(got.shape, io["sample"].shape);
            let worst = got.data.iter().zip(&io["expected_sample_grad"].data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{what}: ∂L/∂sample max abs difference {worst:.2e}");
            common::assert_close(&format!("{what} sample_grad"), &got.data, &io["expected_sample_grad"].data, grad_tol);
        }
    }
}

/// With a LoRA adapter on every attention projection (rank 4, alpha 8, A and
/// B random) and its camera condition (threestudio's class embedding, an MLP
/// from 16 camera numbers into the time embedding): the output, ∂L/∂sample,
/// every factor's gradient and the camera MLP's four against
/// torch autograd, each factor within 1e-4 of its own largest gradient in
/// f32 (3e-2 in f16).
#[test]
fn lora_factor_gradients_match_torch_autograd() {
    for case in ["sd1_unet", "sd2_unet"] {
        let dir = Path::new("tests/fixtures/models").join(case);
        let io = read_tensors(&dir.join("grad_lora_io.safetensors")).unwrap();
        let factors: Vec<&String> = io.keys().filter(|k| k.starts_with("expected_lora_grad.")).collect();
        assert!(factors.len() >= 64, "{case}: {} factor gradients in the fixture", factors.len());
        for (gpu, dtype) in common::configs() {
            let out = run(&gpu, &dir, "unet", &inputs_of(&io), dtype).unwrap();
            let what = format!("{case} with LoRA {}", common::label(&gpu, dtype));
            let (out_tol, grad_tol) = if dtype == DType::F16 { (1e-2, 1e-2) } else { (1e-4, 2e-5) };
            common::assert_close(&format!("{what} output"), &out["sample"].data, &io["expected_sample"].data, out_tol);
            common::assert_close(&format!("{what} sample_grad"), &out["sample_grad"].data, &io["expected_sample_grad"].data, grad_tol);
            let mut worst = 0.0f32;
            for key in &factors {
                let got = out.get(&key.replacen("expected_", "", 1)).unwrap_or_else(|| panic!("{what}: no {key} in the output"));
                let want = &io[*key];
                assert_eq!(got.shape, want.shape, "{key}");
                let scale = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
                let err = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
                worst = worst.max(err);
                assert!(err <= if dtype == DType::F16 { 3e-2 } else { 1e-4 }, "{what} {key}: relative error {err}");
            }
            eprintln!("{what}: {} factor gradients, worst relative error {worst:.2e}", factors.len());
        }
    }
}

/// Directional derivatives of L = Σ unet(sample)·g by central differences
/// of the engine's own forward (f32), against ⟨∂L/∂sample, direction⟩.
#[test]
fn unet_input_gradient_matches_finite_differences() {
    let dir = Path::new("tests/fixtures/models/sd2_unet");
    let io = read_tensors(&dir.join("grad_io.safetensors")).unwrap();
    let gpu = common::gpu();
    let inputs = inputs_of(&io);
    let grad = run(&gpu, dir, "unet", &inputs, DType::F32).unwrap().remove("sample_grad").unwrap();
    let g = &io["sample_out_grad"].data;
    let loss = |sample: Vec<f32>| -> f64 {
        let mut i = inputs.clone();
        i.remove("sample_out_grad");
        i.insert("sample".into(), HostTensor { data: sample, shape: io["sample"].shape.clone() });
        let y = run(&gpu, dir, "unet", &i, DType::F32).unwrap().remove("sample").unwrap();
        y.data.iter().zip(g).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let x = &io["sample"].data;
    for seed in [1u64, 2] {
        let dir_v = common::randn(seed, x.len());
        let h = 1e-2f32;
        let shifted = |s: f32| x.iter().zip(&dir_v).map(|(a, d)| a + s * d).collect::<Vec<_>>();
        let fd = (loss(shifted(h)) - loss(shifted(-h))) / (2.0 * h as f64);
        let analytic: f64 = grad.data.iter().zip(&dir_v).map(|(a, d)| *a as f64 * *d as f64).sum();
        eprintln!("direction {seed}: analytic {analytic:.6}, central difference {fd:.6}");
        assert!((analytic - fd).abs() < 1e-3 * fd.abs().max(1.0), "direction {seed}: {analytic} against {fd}");
    }
}

/// A gradient of the wrong shape is named.
#[test]
fn a_misshapen_output_gradient_is_named() {
    let dir = Path::new("tests/fixtures/models/sd2_unet");
    let io = read_tensors(&dir.join("grad_io.safetensors")).unwrap();
    let mut inputs = inputs_of(&io);
    inputs.insert("sample_out_grad".into(), HostTensor { data: vec![0.0; 4], shape: vec![1, 4, 1, 1] });
    let e = run(&common::gpu(), dir, "unet", &inputs, DType::F32).unwrap_err().to_string();
    assert!(e.contains("output gradient") && e.contains("[1, 4, 1, 1]"), "{e}");
}
