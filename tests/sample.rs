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
