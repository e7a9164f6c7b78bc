//! `fsd3d bench fsd-step`: the quick bench (the tiny test pipeline's configs
//! with random weights, a small scene) runs whole `generate` iterations, Adam
//! moves the field, the timing and its breakdown are there; Stable Diffusion
//! 1.5's built-in configs fit together; missing or bad arguments are clear errors.
mod common;
use std::process::Command;

use fsd3d::bench::fsd_step::{self as fs, PriorSource, SD15_SCHEDULER_CONFIG, SD15_TEXT_ENCODER_CONFIG, SD15_VAE_CONFIG};
use fsd3d::bench::unet::SD15_UNET_CONFIG;
use fsd3d::bench::{BenchArgs, run};
use fsd3d::diffusion::schedule::SchedulerConfig;
use fsd3d::gpu::DType;
use fsd3d::models::config::{ClipTextConfig, UNetConfig, VaeConfig};

fn quick_args() -> BenchArgs {
    BenchArgs {
        family: Some(fs::FSD_STEP.into()),
        random_weights: true,
        quick: true,
        dtype: Some("f32".into()),
        steps: Some(2),
        ..Default::default()
    }
}

#[test]
fn the_quick_bench_steps_generate_and_breaks_the_time_down() {
    let gpu = common::gpu();
    let args = quick_args();
    let source = PriorSource::from_args(&args).unwrap();
    let r = fs::measure(&gpu, &source, DType::F32, &args).unwrap();
    eprint!("{}", fs::format_report(&r));
    assert_eq!((r.steps, r.first_step), (2, 1), "one warm-up step, then the two asked for");
    assert!(r.ms_per_step.is_finite() && r.ms_per_step > 0.0 && r.warmup_ms > 0.0 && r.load_s > 0.0, "{r:?}");
    // Adam applied a gradient that came through the prior and the encoder.
    assert!(r.field_change.is_finite() && r.field_change > 0.0, "the field did not move: {r:?}");
    // The tiny pipeline: 8² latents of a 4-channel VAE with 3 levels (32² images), rendered at 8².
    assert!(r.shapes.starts_with("render 8x8 -> image 32x32 -> latents 4x8x8; UNet batch 2"), "{}", r.shapes);
    if !gpu.profile_uses_timestamps() {
        assert!(r.profiled_step.is_none() && r.families.is_empty() && r.parts.is_empty());
        return;
    }
    assert_eq!(r.profiled_step, Some(3));
    let total = r.kernel_ms.unwrap();
    assert!(total > 0.0);
    let names: Vec<&str> = r.families.iter().map(|f| f.name.as_str()).collect();
    // The UNet's convolutions and products (the GPU defaults run them as gemm), the
    // VAE backward's, and every kernel family of the 3D side.
    assert!(names.iter().any(|n| ["conv2d", "gemm.conv"].contains(n)), "{names:?}");
    assert!(names.iter().any(|n| ["matmul", "gemm"].contains(n)), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("conv2d_backward")), "{names:?}");
    for scene in fs::SCENE_FAMILIES {
        assert!(names.contains(&scene), "no {scene} in {names:?}");
    }
    assert!(names.contains(&"diffusion"), "the distillation gradient and the noise: {names:?}");
    let share_sum: f64 = r.families.iter().map(|f| f.share).sum();
    assert!((share_sum - 1.0).abs() < 1e-9, "{share_sum}");
    // The parts: each of UNet, VAE and the 3D side did work, and they add up to the kernel time.
    let part = |name: &str| r.parts.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no part {name}: {:?}", r.parts));
    for name in ["unet", "vae", "scene"] {
        assert!(part(name).ms > 0.0 && part(name).calls > 0, "{:?}", part(name));
    }
    let parts_ms: f64 = r.parts.iter().map(|p| p.ms).sum();
    assert!((parts_ms - total).abs() <= 1e-6 * total.max(1.0), "{parts_ms} of {total}");
    // The UNet ran once (one CFG call), the VAE encoder forward and backward:
    // neither part holds a scene kernel, so the scene's calls are exactly its families'.
    let scene_calls: u64 = r.families.iter().filter(|f| fs::SCENE_FAMILIES.contains(&f.name.as_str())).map(|f| f.calls).sum();
    assert_eq!(part("scene").calls, scene_calls);
    // The profiler is left as it was found: off, and empty.
    assert!(!gpu.is_profiling() && gpu.profile_report().is_empty());
}

#[test]
fn stable_diffusion_1_5s_configs_fit_together() {
    let unet: UNetConfig = serde_json::from_str(SD15_UNET_CONFIG).unwrap();
    let vae: VaeConfig = serde_json::from_str(SD15_VAE_CONFIG).unwrap();
    let clip: ClipTextConfig = serde_json::from_str(SD15_TEXT_ENCODER_CONFIG).unwrap();
    let sched: SchedulerConfig = serde_json::from_str(SD15_SCHEDULER_CONFIG).unwrap();
    assert_eq!(vae.block_out_channels, [128, 256, 512, 512]);
    assert_eq!((vae.layers_per_block, vae.norm_num_groups, vae.scaling_factor), (2, 32, 0.18215));
    // 512² images, 8× down to the UNet's 64² latents of 4 channels.
    let downscale = 1 << (vae.block_out_channels.len() - 1);
    assert_eq!((vae.sample_size, unet.sample_size.map(|s| s * downscale)), (Some(512), Some(512)));
    assert_eq!((vae.latent_channels, unet.in_channels), (4, 4));
    assert_eq!(unet.cross_attention_dim.expand(1, "cross_attention_dim").unwrap()[0], clip.hidden_size);
    assert_eq!((clip.vocab_size, clip.num_hidden_layers, clip.max_position_embeddings), (49408, 12, 77));
    assert_eq!((sched.num_train_timesteps, sched.beta_schedule.as_str()), (1000, "scaled_linear"));
}

#[test]
fn without_weights_or_with_bad_arguments_it_says_what_to_pass() {
    let no_model = BenchArgs { family: Some(fs::FSD_STEP.into()), ..Default::default() };
    let err = PriorSource::from_args(&no_model).unwrap_err().to_string();
    assert!(err.contains("--random-weights") && err.contains("--model"), "{err}");
    let missing = BenchArgs { model: Some("/nonexistent/pipeline".into()), random_weights: true, ..no_model.clone() };
    let err = PriorSource::from_args(&missing).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/pipeline") && err.contains("unet"), "{err}");
    let gpu = common::gpu();
    let zero = BenchArgs { steps: Some(0), ..quick_args() };
    let err = run(&gpu, &zero).unwrap_err().to_string();
    assert!(err.contains("--steps"), "{err}");
    let forever = BenchArgs { steps: None, seconds: f64::INFINITY, ..quick_args() };
    let err = run(&gpu, &forever).unwrap_err().to_string();
    assert!(err.contains("--seconds"), "{err}");
    let elsewhere = BenchArgs { family: Some("unet".into()), steps: Some(3), ..Default::default() };
    let err = run(&gpu, &elsewhere).unwrap_err().to_string();
    assert!(err.contains("--steps") && err.contains("fsd-step"), "{err}");

    // The command line: an error message and exit status 1, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_fsd3d")).args(["bench", "fsd-step"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--random-weights") && stderr.contains("--model") && !stderr.contains("panicked"), "{stderr}");
}
