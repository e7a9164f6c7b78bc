//! The embedded prior (weights/tiny-shapes) in the engine against diffusers,
//! transformers and torch (golden outputs by tools/tiny_shapes/make_golden.py):
//! tokenizer ids, text encoder, UNet and classifier.
mod common;
use std::path::Path;

use fsd3d::gpu::DType;
use fsd3d::models::classifier::Classifier;
use fsd3d::models::forward::read_tensors;
use fsd3d::models::prior::{Prior, StableDiffusion};

fn close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max abs err {err:.2e}, scale {scale:.3}");
    assert_eq!(got.len(), want.len(), "{what}");
    assert!(err <= rtol * scale, "{what}: {err} over {}", rtol * scale);
}

#[test]
fn embedded_prior_matches_its_references() {
    let dir = fsd3d::models::embedded_prior_dir();
    let g = read_tensors(Path::new("tests/fixtures/tiny_shapes/golden.safetensors")).unwrap();
    let prompts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/tiny_shapes/prompts.json").unwrap()).unwrap();
    for gpu in common::gpus() {
        let sd = StableDiffusion::load(&gpu, &dir, DType::F32).unwrap();
        assert!(sd.vae.is_none(), "the embedded prior is pixel-space");
        assert_eq!(sd.sample_shape(), [3, 32, 32]);
        // Tokenizer and text encoder.
        let text_prompts: Vec<String> = serde_json::from_value(prompts["text_prompts"].clone()).unwrap();
        let ids = &g["text.input_ids"];
        let ours: Vec<f32> = sd.tokenizer.encode_batch(&text_prompts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap().concat().iter().map(|&i| i as f32).collect();
        assert_eq!(ours, ids.data, "token ids");
        let hidden = sd.embed(&gpu, &text_prompts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        close("text encoder", &gpu.download(&hidden).unwrap(), &g["text.last_hidden_state"].data, 1e-3);
        // UNet.
        let s = &g["unet.sample"];
        let t = &g["unet.timesteps"];
        let e = &g["unet.encoder_hidden_states"];
        let out = sd
            .unet
            .forward(
                &gpu,
                &gpu.upload(&s.data, &s.shape, DType::F32).unwrap(),
                &gpu.upload(&t.data, &t.shape, DType::F32).unwrap(),
                &gpu.upload(&e.data, &e.shape, DType::F32).unwrap(),
            )
            .unwrap();
        close("unet", &gpu.download(&out).unwrap(), &g["unet.output"].data, 1e-3);
        // Classifier.
        let clf = Classifier::load(&gpu, &dir).unwrap();
        let x = &g["classifier.input"];
        let c = clf.classify(&gpu, &gpu.upload(&x.data, &x.shape, DType::F32).unwrap()).unwrap();
        close("classifier features", &gpu.download(&c.features).unwrap(), &g["classifier.features"].data, 1e-3);
        close("classifier shape logits", &gpu.download(&c.shape_logits).unwrap(), &g["classifier.shape_logits"].data, 1e-3);
        close("classifier colour logits", &gpu.download(&c.colour_logits).unwrap(), &g["classifier.colour_logits"].data, 1e-3);
    }
}
