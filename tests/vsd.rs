//! VSD (ProlificDreamer) on the embedded prior: its particle score (a LoRA
//! adapter with a camera condition on the prior's own UNet) learns the
//! renders it is trained on, and a VSD run stopped and resumed ends on the
//! uninterrupted run's bits, the adapter's state restored from the
//! checkpoint.
mod common;
use std::sync::atomic::AtomicBool;

use fsd3d::diffusion::guidance::Method;
use fsd3d::diffusion::schedule::NoiseSchedule;
use fsd3d::diffusion::vsd::{ParticleScore, VsdConfig};
use fsd3d::generate::{self as g, Finish, GenerateConfig, Generator, PriorKind};
use fsd3d::gpu::DType;
use fsd3d::models::pixel_prior::PixelPriorSpec;
use fsd3d::models::prior::{Prior, StableDiffusion};

fn embedded_kind() -> PriorKind {
    PriorKind::Pixel(PixelPriorSpec::load(&fsd3d::models::embedded_prior_dir()).unwrap().expect("the embedded prior has fsd3d_prior.json"))
}

/// The adapter's denoising loss on one fixed image (a pattern the prior was
/// never trained on) falls as it trains: the mean over its last 15 steps is
/// well under the mean over its first 15 (each step draws its own t and ε,
/// from the same distribution in both windows).
#[test]
fn the_particle_scores_loss_falls_on_a_fixed_scene() {
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let unet = prior.unet().unwrap();
    let s = NoiseSchedule::new(prior.scheduler_config()).unwrap();
    let [c, h, w] = prior.sample_shape();
    // Stripes of two colours: far from the prior's shapes on a plain background.
    let z: Vec<f32> = (0..c * h * w).map(|i| if (i % w) / 4 % 2 == 0 { 0.8 } else { -0.6 }).collect();
    let z = gpu.upload(&z, &[1, c, h, w], DType::F32).unwrap();
    let cond = prior.embed(&gpu, &["a red cube"]).unwrap();
    let camera = gpu.upload(&common::rand_vec(5, 16, -1.0, 1.0), &[1, 16], DType::F32).unwrap();
    let cfg = VsdConfig { lora_lr: 3e-3, ..Default::default() };
    let mut particle = ParticleScore::new(&gpu, unet, &cfg, 0).unwrap();
    let mut losses = Vec::new();
    for step in 0..60 {
        let loss = particle.train_step(&gpu, unet, &s, &z, &cond, Some(&camera), step).unwrap();
        losses.push(gpu.download(&loss).unwrap()[0]);
    }
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (first, last) = (mean(&losses[..15]), mean(&losses[45..]));
    eprintln!("the adapter's loss: first 15 steps {first:.4}, last 15 {last:.4}");
    assert!(last < 0.7 * first, "the adapter's loss went from {first} to {last}: it does not learn the image");
}

/// Stopped after 2 of 4 steps and resumed, a VSD run ends on the
/// uninterrupted run's bits: the particle score (factors, camera MLP, Adam's
/// moments and step) comes back from the checkpoint. Without it the last two
/// steps would follow a fresh adapter and differ.
#[test]
fn a_vsd_run_resumes_with_its_particle_score() {
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let dir = std::env::temp_dir().join(format!("fsd3d-vsd-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let never = AtomicBool::new(false);
    let mut cfg = GenerateConfig::defaults("a red cube", Method::Vsd, &embedded_kind());
    assert!(cfg.vsd.is_some(), "a VSD run writes its [vsd] settings");
    cfg.steps = 4;
    cfg.scene.render.samples_per_ray = 48;
    cfg.output.checkpoint_every = 0;
    cfg.output.log_every = 2;
    let params = |run: &Generator<'_>| -> Vec<f32> { run.scene.adam.groups.iter().flat_map(|gr| gpu.download(&gr.param).unwrap()).collect() };

    let mut straight = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    assert_eq!(g::optimise(&mut straight, &dir.join("straight"), &never, |_| {}).unwrap(), Finish::Completed);
    let want = params(&straight);

    let out = dir.join("resumed");
    let stop = AtomicBool::new(false);
    let mut first = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    let finish = g::optimise(&mut first, &out, &stop, |r| {
        if r.step == 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(finish, Finish::Interrupted);
    let at_two = dir.join("step2.safetensors");
    std::fs::copy(out.join(g::files::CHECKPOINT), &at_two).unwrap();
    let written = GenerateConfig::from_toml(&std::fs::read_to_string(out.join(g::files::CONFIG)).unwrap(), "config").unwrap();
    assert_eq!(written, cfg);
    let mut second = Generator::resume(&gpu, &prior, written, &out.join(g::files::CHECKPOINT)).unwrap();
    assert_eq!(g::optimise(&mut second, &out, &never, |_| {}).unwrap(), Finish::Completed);
    let got = params(&second);
    let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} parameters differ between the resumed and the uninterrupted VSD run", got.len());

    // Resumed with a fresh adapter instead (the scene from the checkpoint,
    // the particle score new), the run goes elsewhere: the comparison above
    // can fail.
    let mut fresh = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    fresh.scene.load(&gpu, &at_two).unwrap();
    fresh.step = 2;
    g::optimise(&mut fresh, &dir.join("fresh"), &never, |_| {}).unwrap();
    let moved = params(&fresh).iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert!(moved > 0, "a fresh particle score gives the same run: the test cannot tell a lost adapter");
    let _ = std::fs::remove_dir_all(&dir);
}

/// VSD's gradient is the guided ε̂ minus the particle score. A fresh adapter
/// without a camera condition is the UNet itself (B = 0), whose score is
/// the conditional ε_y; so the gradient must be w(t)·(ε̂_cfg − ε_y) =
/// w(t)·(s − 1)·(ε_y − ε_∅), computed here from the prior's own two
/// predictions.
#[test]
fn vsd_with_a_fresh_adapter_is_the_guided_minus_the_conditional_prediction() {
    use fsd3d::diffusion::guidance::{Guidance, GuidanceSettings, Target, Weighting, noisy, predict_epsilons};
    use fsd3d::diffusion::prompts::{PromptSpec, ViewDirection};
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let settings = GuidanceSettings { scale: 4.0, target: Target::ParticleScore, weighting: Weighting::Sds, grad_clip: 0.0, negative_weight: 0.0, rescale: 0.0 };
    let spec = PromptSpec { prompt: "a red cube", view_dependent: false, negative: None };
    let no_camera = VsdConfig { camera_condition: false, ..Default::default() };
    let guidance = Guidance::new(&gpu, &prior, &spec, settings).unwrap().with_particle(&gpu, &no_camera, 3).unwrap();
    let [c, h, w] = prior.sample_shape();
    let n = 2 * c * h * w;
    let z = gpu.upload(&common::rand_vec(1, n, -1.0, 1.0), &[2, c, h, w], DType::F32).unwrap();
    let eps = gpu.upload(&common::randn(2, n), &[2, c, h, w], DType::F32).unwrap();
    let views = [ViewDirection { elevation_deg: 10.0, azimuth_deg: 30.0 }; 2];
    let t = 600;
    let got = gpu.download(&guidance.gradient(&gpu, &z, &eps, t, &views, None, 1.0).unwrap()).unwrap();

    let s = guidance.schedule();
    let x_t = noisy(&gpu, s, t, &z, &eps).unwrap();
    let cond = prior.embed(&gpu, &["a red cube"; 2]).unwrap();
    let uncond = prior.embed(&gpu, &[""; 2]).unwrap();
    let e = predict_epsilons(&gpu, &prior, s, t, &x_t, &[&cond, &uncond], None).unwrap();
    let (ey, e0) = (gpu.download(&e[0]).unwrap(), gpu.download(&e[1]).unwrap());
    let weight = 1.0 - s.alpha_bar(t);
    let want: Vec<f32> = ey.iter().zip(&e0).map(|(y, u)| (weight * (4.0 - 1.0) * (*y as f64 - *u as f64)) as f32).collect();
    common::assert_close("VSD gradient with a fresh adapter", &got, &want, 1e-4);
    assert!(want.iter().any(|v| v.abs() > 1e-3), "the guidance term vanished: the comparison says nothing");
}

/// A bad `[vsd]`, or one given to another method, is an error that says so.
#[test]
fn bad_vsd_settings_are_named() {
    let mut cfg = GenerateConfig::defaults("a red cube", Method::Vsd, &embedded_kind());
    cfg.vsd.as_mut().unwrap().lora_rank = 0;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("[vsd]") && e.contains("lora_rank"), "{e}");
    let mut fsd = GenerateConfig::defaults("a red cube", Method::Fsd, &embedded_kind());
    assert!(fsd.vsd.is_none(), "only VSD runs write [vsd]");
    fsd.vsd = Some(VsdConfig::default());
    let e = fsd.validate().unwrap_err().to_string();
    assert!(e.contains("[vsd]") && e.contains("fsd"), "{e}");
}
