//! Single-file checkpoints in the original latent-diffusion layout (what
//! Stable Diffusion's and MVDream's authors publish): the VAE read through
//! `models::ldm`'s checkpoint view against the original LDM AutoencoderKL
//! (tests/fixtures/ldm/vae_tiny, by tools/golden/make_ldm_vae_fixture.py).
mod common;
use std::path::Path;

use fsd3d::gpu::DType;
use fsd3d::models::forward::read_tensors;
use fsd3d::models::ldm;

const VAE: &str = "tests/fixtures/ldm/vae_tiny";

#[test]
fn the_vae_of_a_single_file_checkpoint_matches_the_ldm_autoencoder() {
    let dir = Path::new(VAE);
    let io = read_tensors(&dir.join("io.safetensors")).unwrap();
    let config = ldm::vae_config_from_yaml(&dir.join("config.yaml")).unwrap();
    assert_eq!((config.block_out_channels.clone(), config.layers_per_block, config.latent_channels), (vec![32, 64], 1, 4));
    assert_eq!(config.scaling_factor, 0.18215);
    for (gpu, dtype) in common::configs() {
        let vae = ldm::load_vae(&gpu, &dir.join("model.safetensors"), &dir.join("config.yaml"), dtype).unwrap();
        let tol = if dtype == DType::F16 { 2e-2 } else { 1e-4 };
        let up = |k: &str| gpu.to_dtype(&gpu.upload(&io[k].data, &io[k].shape, DType::F32).unwrap(), dtype).unwrap();
        let down = |t: &fsd3d::gpu::Tensor| gpu.download(&gpu.to_dtype(t, DType::F32).unwrap()).unwrap();
        let post = vae.encode(&gpu, &up("image")).unwrap();
        let what = common::label(&gpu, dtype);
        common::assert_close(&format!("posterior mean {what}"), &down(&post.mean), &io["mean"].data, tol);
        common::assert_close(&format!("posterior logvar {what}"), &down(&post.logvar), &io["logvar"].data, tol);
        let decoded = vae.decode(&gpu, &up("latents")).unwrap();
        common::assert_close(&format!("decoded {what}"), &down(&decoded), &io["decoded"].data, tol);
    }
}

#[test]
fn every_vae_tensor_of_the_checkpoint_has_one_place() {
    // 124 tensors in the file, each mapped to a distinct diffusers name, the
    // decoder's levels reversed and the 1×1 attention convolutions read as linear.
    let weights = fsd3d::models::weights::Weights::open_file(&Path::new(VAE).join("model.safetensors")).unwrap();
    let all = weights.len();
    let view = fsd3d::models::weights::Weights::open_file(&Path::new(VAE).join("model.safetensors"))
        .unwrap()
        .viewed(|name, shape| ldm::vae_view(name, shape, 2))
        .unwrap();
    assert_eq!((all, view.len()), (124, 124));
    assert_eq!(view.shape("decoder.up_blocks.0.upsamplers.0.conv.weight").unwrap(), vec![64, 64, 3, 3], "LDM's up.1 runs first");
    assert_eq!(view.shape("decoder.up_blocks.1.resnets.0.conv_shortcut.weight").unwrap(), vec![32, 64, 1, 1], "LDM's up.0 runs last");
    assert_eq!(view.shape("encoder.mid_block.attentions.0.to_q.weight").unwrap(), vec![64, 64]);
    assert_eq!(view.shape("encoder.conv_norm_out.weight").unwrap(), vec![64]);
}

#[test]
fn a_vae_config_the_engine_cannot_build_is_named() {
    let dir = std::env::temp_dir().join(format!("fsd3d-ldm-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(Path::new(VAE).join("config.yaml")).unwrap();
    let with_attn = dir.join("attn.yaml");
    std::fs::write(&with_attn, text.replace("attn_resolutions: []", "attn_resolutions: [16]")).unwrap();
    let e = ldm::vae_config_from_yaml(&with_attn).unwrap_err().to_string();
    assert!(e.contains("attn_resolutions") && e.contains("attn.yaml"), "{e}");
    let no_vae = dir.join("unet_only.yaml");
    std::fs::write(&no_vae, "model:\n  params:\n    unet_config:\n      params: {}\n").unwrap();
    let e = ldm::vae_config_from_yaml(&no_vae).unwrap_err().to_string();
    assert!(e.contains("first_stage_config"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

const OPENCLIP: &str = "tests/fixtures/ldm/openclip_text_tiny";

fn text_yaml(layer: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("fsd3d-openclip-{layer}-{}.yaml", std::process::id()));
    // cond_stage_config as SD 2.x's v2-inference.yaml and MVDream's sd-v2-base.yaml write it.
    let text = format!(
        "model:\n  params:\n    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n      params:\n        freeze: True\n        layer: \"{layer}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_openclip_text_encoder_of_a_single_file_checkpoint_matches_open_clip() {
    let dir = Path::new(OPENCLIP);
    let io = read_tensors(&dir.join("io.safetensors")).unwrap();
    let ids: Vec<u32> = io["input_ids"].data.iter().map(|&v| v as u32).collect();
    for (gpu, dtype) in common::configs() {
        for layer in ["penultimate", "last"] {
            let yaml = text_yaml(layer);
            let te = ldm::load_text_encoder(&gpu, &dir.join("model.safetensors"), &yaml, dtype).unwrap();
            let ids = gpu.upload_u32(&ids, &io["input_ids"].shape).unwrap();
            let h = gpu.download(&gpu.to_dtype(&te.forward(&gpu, &ids).unwrap(), DType::F32).unwrap()).unwrap();
            let tol = if dtype == DType::F16 { 1e-2 } else { 1e-4 };
            common::assert_close(&format!("openclip {layer} {}", common::label(&gpu, dtype)), &h, &io[layer].data, tol);
            std::fs::remove_file(&yaml).ok();
        }
    }
    // The two layers differ: the penultimate one is not the last one read twice.
    let d = io["penultimate"].data.iter().zip(&io["last"].data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d > 0.1, "{d}");
}

#[test]
fn the_fused_attention_projection_is_read_as_three() {
    let views = ldm::text_encoder_view("cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight", &[3072, 1024]);
    let got: Vec<_> = views.iter().map(|v| (v.name.as_str(), v.rows.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("text_model.encoder.layers.3.self_attn.q_proj.weight", Some(0..1024)),
            ("text_model.encoder.layers.3.self_attn.k_proj.weight", Some(1024..2048)),
            ("text_model.encoder.layers.3.self_attn.v_proj.weight", Some(2048..3072)),
        ]
    );
    // SD 1.x keeps transformers' names under its own prefix.
    let v = ldm::text_encoder_view("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.bias", &[3072]);
    assert_eq!(v[0].name, "text_model.encoder.layers.0.mlp.fc1.bias");
    // What is not the text encoder's is left out.
    assert!(ldm::text_encoder_view("cond_stage_model.model.logit_scale", &[]).is_empty());
    assert!(ldm::text_encoder_view("model.diffusion_model.out.2.weight", &[4, 320, 3, 3]).is_empty());
    // A layer the embedder does not offer is named.
    let gpu = common::gpu();
    let yaml = text_yaml("pooled");
    let e = ldm::load_text_encoder(&gpu, &Path::new(OPENCLIP).join("model.safetensors"), &yaml, DType::F32).err().unwrap().to_string();
    assert!(e.contains("pooled"), "{e}");
    std::fs::remove_file(&yaml).ok();
}

#[test]
fn forward_runs_the_modules_a_single_file_holds_and_names_the_ones_it_lacks() {
    // A file holding only a VAE, its YAML beside it with the same stem.
    let dir = std::env::temp_dir().join(format!("fsd3d-ldm-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vae_only.safetensors");
    std::fs::copy(Path::new(VAE).join("model.safetensors"), &file).unwrap();
    std::fs::copy(Path::new(VAE).join("config.yaml"), dir.join("vae_only.yaml")).unwrap();
    let io = read_tensors(&Path::new(VAE).join("io.safetensors")).unwrap();
    let gpu = common::gpu();
    let inputs = std::collections::HashMap::from([("latent".to_string(), io["latents"].clone())]);
    let out = fsd3d::models::forward::run(&gpu, &file, "vae-decode", &inputs, DType::F32).unwrap();
    common::assert_close("forward vae-decode of a single file", &out["decoded"].data, &io["decoded"].data, 1e-4);
    let ids = std::collections::HashMap::from([("input_ids".to_string(), fsd3d::models::forward::HostTensor { data: vec![1.0; 77], shape: vec![1, 77] })]);
    let e = fsd3d::models::forward::run(&gpu, &file, "text-encoder", &ids, DType::F32).err().unwrap().to_string();
    assert!(e.contains("no text encoder") && e.contains("vae_only.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

const SD2: &str = "tests/fixtures/ldm/sd2_tiny";

/// A whole Stable Diffusion pipeline from one file: `--model
/// sd2_tiny.safetensors` (its YAML and tokenizer/ beside it) samples with
/// DDIM as diffusers' StableDiffusionPipeline does when built by diffusers'
/// own single-file converters (tests/fixtures/ldm/sd{1,2}_tiny, by
/// tools/golden/make_single_file_pipeline_fixture.py), with and without a
/// negative prompt: SD 2.x's layout (OpenCLIP, penultimate layer, linear
/// projections) and SD 1.x's (CLIP, quick GELU, 1×1-conv projections).
#[test]
fn a_single_file_pipeline_samples_as_diffusers() {
    for name in ["sd2_tiny", "sd1_tiny"] {
        single_file_pipeline_samples_as_diffusers(name);
    }
}

fn single_file_pipeline_samples_as_diffusers(name: &str) {
    use fsd3d::diffusion::sampler::{SampleRequest, ddim_sample};
    use fsd3d::diffusion::size::{ImageSize, Latents};
    use fsd3d::models::prior::{Prior, StableDiffusion};
    let dir = Path::new("tests/fixtures/ldm").join(name);
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let want = read_tensors(&dir.join("expected.safetensors")).unwrap();
    let latents = Latents::new(&want["latents_in"].shape, want["latents_in"].data.clone()).unwrap();
    for (gpu, dtype) in common::configs() {
        let sd = StableDiffusion::load(&gpu, &dir.join(format!("{name}.safetensors")), dtype).unwrap();
        assert_eq!(sd.scale_factor(), 8);
        assert_eq!(sd.sample_shape(), [4, 64, 64], "512 px by default, as diffusers reads an SD file");
        for (i, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
            let req = SampleRequest {
                prompt: case["prompt"].as_str().unwrap().into(),
                negative: case["negative"].as_str().map(String::from),
                steps: case["steps"].as_u64().unwrap() as usize,
                cfg: case["cfg"].as_f64().unwrap() as f32,
                eta: 0.0,
                seed: 0,
                size: ImageSize::default(),
                latents: Some(latents.clone()),
            };
            let image = ddim_sample(&gpu, &sd, &req, |_, _| {}).unwrap();
            let got = gpu.download(&gpu.to_dtype(&image, DType::F32).unwrap()).unwrap();
            let tol = if dtype == DType::F16 { 1e-2 } else { 5e-5 };
            let worst = got.iter().zip(&want[&format!("image_{i}")].data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{name} case {i} {}: max abs difference {worst:.2e} (images span about ±3)", common::label(&gpu, dtype));
            common::assert_close(&format!("{name} case {i} image {}", common::label(&gpu, dtype)), &got, &want[&format!("image_{i}")].data, tol);
        }
    }
}

/// The scheduler read from the YAML is the one diffusers' single-file loader
/// gives the same file (LDM's "linear" is diffusers' scaled_linear).
#[test]
fn the_scheduler_of_a_single_file_is_the_one_diffusers_gives_it() {
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(SD2).join("cases.json")).unwrap()).unwrap();
    let want = &fx["scheduler"];
    let got = ldm::scheduler_config_from_yaml(&Path::new(SD2).join("sd2_tiny.yaml")).unwrap();
    assert_eq!(got.num_train_timesteps as u64, want["num_train_timesteps"].as_u64().unwrap());
    assert_eq!(got.beta_start, want["beta_start"].as_f64().unwrap());
    assert_eq!(got.beta_end, want["beta_end"].as_f64().unwrap());
    assert_eq!(got.beta_schedule, want["beta_schedule"].as_str().unwrap());
    assert_eq!(got.prediction_type, fsd3d::diffusion::schedule::Prediction::Epsilon);
    assert_eq!(want["prediction_type"], "epsilon");
    assert_eq!(got.clip_sample, want["clip_sample"].as_bool().unwrap());
    assert_eq!(got.set_alpha_to_one, want["set_alpha_to_one"].as_bool().unwrap());
    assert_eq!(got.steps_offset as u64, want["steps_offset"].as_u64().unwrap());
    assert_eq!(want["timestep_spacing"], "leading");
    assert_eq!(got.timestep_spacing, fsd3d::diffusion::schedule::Spacing::Leading);
}

/// LDM's other schedules and parameterisations, and the ones it cannot map.
#[test]
fn ldm_schedule_names_map_to_diffusers_and_unknown_ones_are_named() {
    let dir = std::env::temp_dir().join(format!("fsd3d-ldm-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = |body: &str| {
        let p = dir.join("c.yaml");
        std::fs::write(&p, format!("model:\n  params:\n{body}")).unwrap();
        p
    };
    let c = ldm::scheduler_config_from_yaml(&yaml("    beta_schedule: sqrt_linear\n    parameterization: v\n    timesteps: 500\n")).unwrap();
    assert_eq!((c.beta_schedule.as_str(), c.num_train_timesteps), ("linear", 500));
    assert_eq!(c.prediction_type, fsd3d::diffusion::schedule::Prediction::VPrediction);
    let c = ldm::scheduler_config_from_yaml(&yaml("    beta_schedule: cosine\n")).unwrap();
    assert_eq!(c.beta_schedule, "squaredcos_cap_v2");
    // LDM's defaults (its DDPM class): linear in √β from 1e-4 to 2e-2, ε.
    let c = ldm::scheduler_config_from_yaml(&yaml("    scale_factor: 0.18215\n")).unwrap();
    assert_eq!((c.beta_schedule.as_str(), c.beta_start, c.beta_end), ("scaled_linear", 1e-4, 2e-2));
    for (body, named) in [("    beta_schedule: sqrt\n", "beta_schedule \"sqrt\""), ("    parameterization: x0\n", "parameterization \"x0\""), ("    timesteps: -3\n", "timesteps")] {
        let err = ldm::scheduler_config_from_yaml(&yaml(body)).unwrap_err().to_string();
        assert!(err.contains(named) && err.contains("c.yaml"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Without a tokenizer/ folder beside it, a single file gets CLIP's own
/// vocabulary (49 408 tokens); a text tower with fewer is refused with the fix.
#[test]
fn a_single_file_without_its_tokenizer_gets_clip_s_and_a_mismatch_is_named() {
    use fsd3d::models::prior::StableDiffusion;
    let dir = std::env::temp_dir().join(format!("fsd3d-ldm-notok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["sd2_tiny.safetensors", "sd2_tiny.yaml"] {
        std::fs::copy(Path::new(SD2).join(f), dir.join(f)).unwrap();
    }
    let gpu = common::gpu();
    let err = StableDiffusion::load(&gpu, &dir.join("sd2_tiny.safetensors"), DType::F32).err().unwrap().to_string();
    assert!(err.contains("49408 tokens") && err.contains("786") && err.contains("tokenizer/ folder beside it"), "{err}");
    // A .safetensors with no YAML beside it says what it needs.
    std::fs::remove_file(dir.join("sd2_tiny.yaml")).unwrap();
    let err = StableDiffusion::load(&gpu, &dir.join("sd2_tiny.safetensors"), DType::F32).err().unwrap().to_string();
    assert!(err.contains("config YAML") && err.contains("sd2_tiny.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A single file picks its defaults by what its YAML says: a UNet with a
/// camera embedding is MVDream (threestudio's `mvdream-sd21`: 4 views an
/// object, 2 objects at 64² then 1 at 256² from step 5 000, guidance 50,
/// φ 0.5, SDS's t range annealed from 0.98 to 0.5 over 8 000 steps, FSD's own
/// schedule kept); one without is Stable Diffusion.
#[test]
fn a_single_file_gets_the_defaults_of_its_kind() {
    use fsd3d::diffusion::guidance::Method;
    use fsd3d::diffusion::timesteps::TimestepSchedule;
    use fsd3d::generate::{GenerateConfig, PriorKind, job::prior_kind};
    assert_eq!(prior_kind(&Path::new(SD2).join("sd2_tiny.safetensors")).unwrap(), PriorKind::Latent);
    let mv = prior_kind(Path::new("tests/fixtures/mvdream/unet_tiny/model.safetensors")).unwrap();
    assert_eq!(mv, PriorKind::MultiViewLatent { frames: 4 });
    let sds = GenerateConfig::defaults("a chair", Method::Sds, &mv);
    assert_eq!((sds.camera.views_per_object, sds.guidance.cfg, sds.guidance.rescale), (4, 50.0, 0.5));
    // 2 objects × 4 views at 64², then 1 × 4 at 256² from step 5000.
    let at = |step| {
        let s = sds.camera.stage_at(step);
        (s.width, s.height, s.batch_size)
    };
    assert_eq!((at(0), at(4999), at(5000), at(9999)), ((64, 64, 8), (64, 64, 8), (256, 256, 4), (256, 256, 4)));
    assert_eq!(sds.guidance.timesteps, TimestepSchedule::RandomAnnealed { t_min: 0.02, t_max: 0.98, t_max_end: 0.5, anneal_steps: 8000 });
    let fsd = GenerateConfig::defaults("a chair", Method::Fsd, &mv);
    assert!(matches!(fsd.guidance.timesteps, TimestepSchedule::Sqrt { .. }), "{:?}", fsd.guidance.timesteps);
    // The config a run writes keeps the annealed range, and reads back.
    let text = toml::to_string(&sds).unwrap();
    assert!(text.contains("random_annealed") && text.contains("t_max_end = 0.5") && text.contains("from_step = 5000"), "{text}");
    let back: GenerateConfig = toml::from_str(&text).unwrap();
    assert_eq!((&back.guidance.timesteps, &back.camera), (&sds.guidance.timesteps, &sds.camera));
}
