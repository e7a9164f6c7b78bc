//! The VAE encoder's backward pass against torch autograd on the tiny
//! random-weight AutoencoderKL fixture (tools/golden/make_model_fixtures.py:
//! sample_grad = ∂(Σ mean·mean_grad)/∂sample; 20×24 input, two stride-2
//! downsamplers reaching an odd 5×6 latent, a 1×1 shortcut, mid-block
//! attention): f32 within 1e-3 of the output's scale, f16 within 2e-2, through
//! the library API and through `fsd3d forward`'s code path; the taped
//! forward equal to `encode` bit for bit; the whole backward recorded without
//! a submit; a directional finite difference of the engine's own encoder;
//! and bad input.
mod common;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fsd3d::gpu::{DType, Gpu};
use fsd3d::models::forward::{HostTensor, read_tensors, run};
use fsd3d::models::vae::Vae;

/// The tests share the two devices and one checks the submit count: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn fixture_dir() -> PathBuf {
    Path::new("tests/fixtures/models/vae").to_path_buf()
}

fn fixture() -> (HashMap<String, HostTensor>, HashMap<String, HostTensor>) {
    let dir = fixture_dir();
    (read_tensors(&dir.join("inputs_vae-encode.safetensors")).unwrap(), read_tensors(&dir.join("outputs_vae-encode.safetensors")).unwrap())
}

fn rtol(dtype: DType) -> f32 {
    if dtype == DType::F16 { 2e-2 } else { 1e-3 }
}

/// Asserts max |got − want| ≤ rtol · max |want|, as tests/models.rs does.
fn check(what: &str, got: &[f32], got_shape: &[usize], want: &HostTensor, rtol: f32) {
    assert_eq!(got_shape, want.shape.as_slice(), "{what}: shape");
    let scale = want.data.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max abs err {err:.2e}, scale {scale:.3e}");
    assert!(err <= rtol * scale, "{what}: max abs error {err} over {} (scale {scale})", rtol * scale);
}

#[test]
fn library_api_reproduces_torch_autograd() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (inputs, want) = fixture();
    let (sample, mean_grad) = (&inputs["sample"], &inputs["mean_grad"]);
    // The device with its optional features only: the fallbacks of every
    // backward kernel are checked in the kernel families' own tests, and
    // creating the ~60 pipelines of the encoder and its backward once more
    // (≈ 9 s on lavapipe) would make this file slow.
    let gpu = common::gpu();
    let dtypes: &[DType] = if gpu.features().f16 { &[DType::F32, DType::F16] } else { &[DType::F32] };
    for &dt in dtypes {
        let what = common::label(&gpu, dt);
        let vae = Vae::load(&gpu, &fixture_dir(), dt).unwrap();
        let x = gpu.upload(&sample.data, &sample.shape, dt).unwrap();
        let plain = vae.encode(&gpu, &x).unwrap();
        let (plain_mean, plain_logvar) = (gpu.download(&plain.mean).unwrap(), gpu.download(&plain.logvar).unwrap());

        let submits = gpu.submit_count();
        let (posterior, tape) = vae.encode_with_tape(&gpu, &x).unwrap();
        let d_mean = gpu.upload(&mean_grad.data, &mean_grad.shape, dt).unwrap();
        let d_sample = vae.encode_backward(&gpu, &tape, &d_mean).unwrap();
        assert_eq!(gpu.submit_count(), submits, "{what}: the taped forward and the backward must only record");
        assert_eq!(d_sample.dtype(), DType::F32, "gradients are f32");
        assert_eq!(tape.input_shape(), sample.shape.as_slice());
        assert_eq!(tape.mean_shape(), mean_grad.shape.as_slice());

        let got = gpu.download(&d_sample).unwrap();
        check(&format!("sample_grad {what}"), &got, d_sample.shape(), &want["sample_grad"], rtol(dt));
        assert_eq!(gpu.download(&posterior.mean).unwrap(), plain_mean, "{what}: taped mean differs from encode's");
        assert_eq!(gpu.download(&posterior.logvar).unwrap(), plain_logvar, "{what}: taped logvar differs from encode's");
        check(&format!("mean {what}"), &plain_mean, plain.mean.shape(), &want["mean"], rtol(dt));
    }
}

#[test]
fn forward_module_writes_sample_grad() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (inputs, want) = fixture();
    let gpu = common::gpu();
    for dt in [DType::F32, DType::F16] {
        if dt == DType::F16 && !gpu.features().f16 {
            continue;
        }
        let got = run(&gpu, &fixture_dir(), "vae-encode", &inputs, dt).unwrap();
        for name in ["mean", "logvar", "sample_grad"] {
            check(&format!("forward vae-encode {name} {dt}"), &got[name].data, &got[name].shape, &want[name], rtol(dt));
        }
    }
    // Without mean_grad, only the posterior.
    let mut plain = inputs.clone();
    plain.remove("mean_grad");
    let got = run(&gpu, &fixture_dir(), "vae-encode", &plain, DType::F32).unwrap();
    assert!(got.contains_key("mean") && !got.contains_key("sample_grad"));
}

/// ⟨d_sample, u⟩ against the central difference of L(x) = Σ mean(x)·mean_grad
/// along u with the engine's own encoder (f32): the backward differentiates
/// the forward the engine runs, independently of the fixture.
#[test]
fn directional_finite_difference_of_the_encoder() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (inputs, _) = fixture();
    let (sample, mean_grad) = (&inputs["sample"], &inputs["mean_grad"]);
    let gpu: std::sync::Arc<Gpu> = common::gpu();
    let vae = Vae::load(&gpu, &fixture_dir(), DType::F32).unwrap();
    let loss = |x: &[f32]| -> f64 {
        let p = vae.encode(&gpu, &gpu.upload(x, &sample.shape, DType::F32).unwrap()).unwrap();
        gpu.download(&p.mean).unwrap().iter().zip(&mean_grad.data).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let (_, tape) = vae.encode_with_tape(&gpu, &gpu.upload(&sample.data, &sample.shape, DType::F32).unwrap()).unwrap();
    let d_mean = gpu.upload(&mean_grad.data, &mean_grad.shape, DType::F32).unwrap();
    let grad = gpu.download(&vae.encode_backward(&gpu, &tape, &d_mean).unwrap()).unwrap();
    for seed in [7u64, 8] {
        let u = common::rand_vec(seed, sample.data.len(), -1.0, 1.0);
        let h = 1e-2f32;
        let plus: Vec<f32> = sample.data.iter().zip(&u).map(|(a, b)| a + h * b).collect();
        let minus: Vec<f32> = sample.data.iter().zip(&u).map(|(a, b)| a - h * b).collect();
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
        let analytic: f64 = grad.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
        let magnitude: f64 = grad.iter().zip(&u).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
        eprintln!("direction {seed}: finite difference {fd:.6e}, ⟨d_sample, u⟩ {analytic:.6e}, Σ|terms| {magnitude:.3e}");
        // O(h²) truncation through the norms and SiLUs, and the f32 rounding of L over 2h.
        assert!((fd - analytic).abs() <= 1e-3 * magnitude, "finite difference {fd} vs ⟨d_sample, u⟩ {analytic}");
    }
}

#[test]
fn bad_gradient_is_a_clear_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (inputs, _) = fixture();
    let gpu = common::gpu();
    let vae = Vae::load(&gpu, &fixture_dir(), DType::F32).unwrap();
    let sample = &inputs["sample"];
    let (_, tape) = vae.encode_with_tape(&gpu, &gpu.upload(&sample.data, &sample.shape, DType::F32).unwrap()).unwrap();
    let wrong = gpu.zeros(&[1, 4, 6, 5], DType::F32).unwrap();
    let err = vae.encode_backward(&gpu, &tape, &wrong).err().unwrap().to_string();
    assert!(err.contains("mean's shape [1, 4, 5, 6]"), "{err}");
    let err = vae.encode_with_tape(&gpu, &gpu.zeros(&[1, 4, 8, 8], DType::F32).unwrap()).err().unwrap().to_string();
    assert!(err.contains("[B, 3, H, W]"), "{err}");
    // Through `fsd3d forward`.
    let mut bad = inputs.clone();
    bad.insert("mean_grad".into(), HostTensor { data: vec![0.0; 4 * 5 * 5], shape: vec![1, 4, 5, 5] });
    let err = run(&gpu, &fixture_dir(), "vae-encode", &bad, DType::F32).unwrap_err().to_string();
    assert!(err.contains("mean_grad must have the shape of the posterior mean"), "{err}");
}
