//! DDIM sampling reproduces diffusers' StableDiffusionPipeline from the same
//! initial latents: PNGs within 2/255 in every channel, in f32 (fixture by
//! tools/golden/make_model_fixtures.py: a tiny random latent pipeline with a
//! CLIP BPE tokenizer and SD's DDIM scheduler settings).
mod common;
use std::path::Path;

use fsd3d::diffusion::sampler::{SampleRequest, ddim_sample};
use fsd3d::export::image::{from_signed_nchw, read_png};
use fsd3d::gpu::DType;
use fsd3d::models::forward::read_tensors;
use fsd3d::models::prior::StableDiffusion;

#[test]
fn sample_matches_diffusers_pipeline_images() {
    let dir = Path::new("tests/fixtures/models/pipeline");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let latents = read_tensors(&dir.join("latents.safetensors")).unwrap()["latents"].data.clone();
    for gpu in common::gpus() {
        let sd = StableDiffusion::load(&gpu, dir, DType::F32).unwrap();
        for case in cases.as_array().unwrap() {
            let req = SampleRequest {
                prompt: case["prompt"].as_str().unwrap().to_string(),
                negative: case["negative"].as_str().map(String::from),
                steps: case["steps"].as_u64().unwrap() as usize,
                cfg: case["cfg"].as_f64().unwrap() as f32,
                eta: 0.0,
                seed: 0,
                latents: Some(latents.clone()),
            };
            let img = ddim_sample(&gpu, &sd, &req, |_, _| {}).unwrap();
            let got = from_signed_nchw(&gpu.download(&img).unwrap(), img.shape(), 0).unwrap();
            let want = read_png(&dir.join(case["png"].as_str().unwrap())).unwrap();
            assert_eq!((got.width, got.height), (want.width, want.height));
            let worst = got.data.iter().zip(&want.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            eprintln!("{:?} [{}]: max channel difference {worst}/255", req.prompt, gpu.features().names().join(","));
            assert!(worst <= 2, "{:?}: differs from diffusers by {worst}/255", req.prompt);
        }
    }
}

#[test]
fn not_a_pipeline_folder_is_a_clear_error() {
    let gpu = common::gpu();
    let err = StableDiffusion::load(&gpu, Path::new("tests/fixtures/models/sd1_unet"), DType::F32).err().unwrap().to_string();
    assert!(err.contains("not a diffusers pipeline folder"), "{err}");
}

/// A batch is the same as its requests one by one: each sample keeps its
/// own prompt and seed (or latents) however it is batched, with the
/// deterministic sampler and with the ancestral one (η = 1), whose per-step
/// noise comes from each request's own seed.
#[test]
fn a_batch_matches_its_samples_drawn_alone() {
    for eta in [0.0, 1.0] {
        batch_matches_alone(eta);
    }
}

fn batch_matches_alone(eta: f32) {
    use fsd3d::diffusion::sampler::ddim_sample_batch;
    let dir = Path::new("tests/fixtures/models/pipeline");
    let latents = read_tensors(&dir.join("latents.safetensors")).unwrap()["latents"].data.clone();
    let gpu = common::gpu();
    let sd = StableDiffusion::load(&gpu, dir, DType::F32).unwrap();
    let req = |prompt: &str, seed: u64, latents: Option<Vec<f32>>| SampleRequest { prompt: prompt.into(), negative: None, steps: 3, cfg: 4.0, eta, seed, latents };
    let reqs = [req("a red cube", 3, None), req("a photo of a dog", 0, Some(latents)), req("a red cube", 4, None)];
    let batch = ddim_sample_batch(&gpu, &sd, &reqs, |_, _| {}).unwrap();
    assert_eq!(batch.dim(0), 3);
    let all = gpu.download(&batch).unwrap();
    let per = all.len() / 3;
    for (k, r) in reqs.iter().enumerate() {
        let alone = gpu.download(&ddim_sample(&gpu, &sd, r, |_, _| {}).unwrap()).unwrap();
        let worst = alone.iter().zip(&all[k * per..(k + 1) * per]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("eta {eta}: batch sample {k}: max difference {worst:e}");
        assert!(worst < 1e-4, "sample {k} differs in the batch by {worst}");
    }
    // Different seeds, different samples (the comparison above is not vacuous).
    let d02 = all[..per].iter().zip(&all[2 * per..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d02 > 1e-2, "seeds 3 and 4 gave the same image");
    // A batch shares steps, guidance, η and negative prompt.
    let mut odd = reqs[0].clone();
    odd.cfg = 2.0;
    let err = ddim_sample_batch(&gpu, &sd, &[reqs[0].clone(), odd], |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("shares steps, guidance scale, eta and negative prompt"), "{err}");
    let mut odd = reqs[0].clone();
    odd.eta = eta + 0.5;
    assert!(ddim_sample_batch(&gpu, &sd, &[reqs[0].clone(), odd], |_, _| {}).is_err(), "a batch mixing η must be refused");
}

/// η = 1 adds seeded noise at every step: the same request gives the same
/// image twice, and not the image of the deterministic sampler; a negative η
/// is refused with a message that says what η is.
#[test]
fn ancestral_sampling_is_seeded_and_differs_from_ddim() {
    let dir = Path::new("tests/fixtures/models/pipeline");
    let gpu = common::gpu();
    let sd = StableDiffusion::load(&gpu, dir, DType::F32).unwrap();
    let req = |eta: f32| SampleRequest { prompt: "a red cube".into(), negative: None, steps: 4, cfg: 3.0, eta, seed: 11, latents: None };
    let run = |eta: f32| gpu.download(&ddim_sample(&gpu, &sd, &req(eta), |_, _| {}).unwrap()).unwrap();
    let (a, b, d) = (run(1.0), run(1.0), run(0.0));
    assert_eq!(a, b, "η = 1 with one seed must be reproducible");
    let diff = a.iter().zip(&d).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-2, "η = 1 gave the deterministic sampler's image (max difference {diff})");
    let err = ddim_sample(&gpu, &sd, &req(-1.0), |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("eta must be a number >= 0"), "{err}");
}
