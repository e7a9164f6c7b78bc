//! `fsd3d generate` as a library: the config layers, the 3D loop on the
//! embedded prior (a few steps at tiny output sizes), checkpoints, Ctrl-C and
//! resume, and what a finished run leaves in its folder.
mod common;
use std::sync::atomic::AtomicBool;

use fsd3d::diffusion::guidance::Method;
use fsd3d::diffusion::prompts::view_suffix;
use fsd3d::generate::{self as g, Finish, GenerateConfig, Generator, PriorKind};
use fsd3d::gpu::DType;
use fsd3d::models::pixel_prior::PixelPriorSpec;
use fsd3d::models::prior::StableDiffusion;

fn embedded_kind() -> PriorKind {
    PriorKind::Pixel(PixelPriorSpec::load(&fsd3d::models::embedded_prior_dir()).unwrap().expect("the embedded prior has fsd3d_prior.json"))
}

/// The embedded prior's defaults, shrunk so a step and the outputs are cheap.
fn tiny_config(method: Method, steps: u64) -> GenerateConfig {
    let mut c = GenerateConfig::defaults("a red cube", method, &embedded_kind());
    c.steps = steps;
    c.scene.render.samples_per_ray = 48;
    c.scene.material.ambient_only_steps = 1;
    c.output.log_every = 2;
    c.output.checkpoint_every = 0;
    c.output.render_size = 16;
    c.output.grid_views = 2;
    c.output.turntable_frames = 4;
    c.output.mesh_resolution = 16;
    c.output.mesh_threshold = 5.0;
    c
}

#[test]
fn config_layers_round_trip_and_reject_unknown_keys() {
    let kind = embedded_kind();
    let fsd = GenerateConfig::defaults("a blue torus", Method::Fsd, &kind);
    let sds = GenerateConfig::defaults("a blue torus", Method::Sds, &kind);
    // The pixel prior's own distribution replaces the SD defaults.
    assert_eq!((fsd.camera.width, fsd.camera.height), (32, 32));
    assert_eq!(fsd.scene.background.color, [1.0, 1.0, 1.0]);
    assert_eq!(fsd.camera.fovy_range, [40.0, 45.0]);
    assert!(!fsd.guidance.view_dependent_prompt);
    // FSD anneals t, SDS draws it at random (FSD_SPEC §2).
    assert!(matches!(fsd.guidance.timesteps, fsd3d::diffusion::timesteps::TimestepSchedule::Sqrt { .. }));
    assert!(matches!(sds.guidance.timesteps, fsd3d::diffusion::timesteps::TimestepSchedule::Random { .. }));
    let sd = GenerateConfig::defaults("a blue torus", Method::Fsd, &PriorKind::Latent);
    assert_eq!((sd.steps, sd.guidance.cfg, sd.camera.width), (10_000, 100.0, 64));

    // What a run writes reads back as the same config.
    let text = fsd.to_toml().unwrap();
    assert_eq!(GenerateConfig::from_toml(&text, "round trip").unwrap(), fsd);
    // A partial file changes only its keys, nested tables merge.
    let over = fsd.overlay_toml("seed = 7\n[guidance]\ncfg = 12.5\n[scene.field]\nhidden = 16\n[noise]\nbeta = 0.5\n", "overlay").unwrap();
    assert_eq!((over.seed, over.guidance.cfg, over.scene.field.hidden, over.noise.beta), (7, 12.5, 16, 0.5));
    assert_eq!(over.scene.field.levels, fsd.scene.field.levels);
    assert_eq!(over.guidance.timesteps, fsd.guidance.timesteps);
    // Unknown keys are named.
    let err = fsd.overlay_toml("[guidance]\ncfgg = 3\n", "typo.toml").unwrap_err().to_string();
    assert!(err.contains("cfgg") && err.contains("typo.toml"), "{err}");
    let err = fsd.overlay_toml("steps = \"many\"\n", "bad.toml").unwrap_err().to_string();
    assert!(err.contains("steps"), "{err}");
    // Bad values are caught before any work.
    let mut bad = fsd.clone();
    bad.guidance.cfg = f32::NAN;
    assert!(bad.validate().is_err());
    bad = fsd.clone();
    bad.steps = 0;
    assert!(bad.validate().is_err());
}

#[test]
fn view_dependent_prompt_suffixes() {
    assert_eq!(view_suffix(10.0, 0.0), ", front view");
    assert_eq!(view_suffix(10.0, 44.0), ", front view");
    assert_eq!(view_suffix(10.0, -44.0), ", front view");
    assert_eq!(view_suffix(10.0, 90.0), ", side view");
    assert_eq!(view_suffix(10.0, 136.0), ", back view");
    assert_eq!(view_suffix(10.0, -170.0), ", back view");
    assert_eq!(view_suffix(10.0, 190.0), ", back view");
    assert_eq!(view_suffix(10.0, 320.0), ", front view");
    assert_eq!(view_suffix(10.0, 300.0), ", side view");
    assert_eq!(view_suffix(61.0, 0.0), ", overhead view");
}

fn params(gpu: &fsd3d::gpu::Gpu, run: &Generator<'_>) -> Vec<f32> {
    let mut v = gpu.download(&run.scene.field.table).unwrap();
    v.extend(gpu.download(&run.scene.field.mlp).unwrap());
    v
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / a.len() as f64
}

#[test]
fn a_run_interrupted_and_resumed_matches_an_uninterrupted_one() {
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let dir = std::env::temp_dir().join(format!("fsd3d-generate-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let never = AtomicBool::new(false);

    // Straight through: 4 steps.
    let cfg = tiny_config(Method::Fsd, 4);
    let mut straight = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    let mut reports = Vec::new();
    assert_eq!(g::optimise(&mut straight, &dir.join("straight"), &never, |r| reports.push(r.clone())).unwrap(), Finish::Completed);
    assert_eq!(reports.len(), 4);
    assert!(reports.iter().filter(|r| r.grad_rms.is_some()).all(|r| r.grad_rms.unwrap().is_finite() && r.grad_rms.unwrap() > 0.0));
    let want = params(&gpu, &straight);
    let init = params(&gpu, &Generator::new(&gpu, &prior, cfg.clone()).unwrap());

    // Interrupted after 2 steps (the flag is seen before step 3), then resumed.
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
    assert_eq!(first.step, 2);
    for f in [g::files::CONFIG, g::files::LOG, g::files::CHECKPOINT] {
        assert!(out.join(f).is_file(), "{f} after Ctrl-C");
    }
    let written = GenerateConfig::from_toml(&std::fs::read_to_string(out.join(g::files::CONFIG)).unwrap(), "config").unwrap();
    assert_eq!(written, cfg);
    let mut second = Generator::resume(&gpu, &prior, written, &out.join(g::files::CHECKPOINT)).unwrap();
    assert_eq!(second.step, 2);
    assert_eq!(g::optimise(&mut second, &out, &never, |_| {}).unwrap(), Finish::Completed);
    let got = params(&gpu, &second);
    // Same cameras, noise and timesteps from (seed, step), and the grid
    // gradient's scatter is exact in any order: the same bits.
    let moved = mean_abs_diff(&init, &want);
    assert!(moved > 1e-4, "4 steps moved the parameters by only {moved} on average");
    let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} parameters differ between the resumed and the uninterrupted run", got.len());
    // The log tells one history: steps 2 and 4, once each.
    let log = std::fs::read_to_string(out.join(g::files::LOG)).unwrap();
    let steps: Vec<&str> = log.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["2", "4"], "{log}");

    // Another seed is a different run (the comparison above can fail).
    let mut other_cfg = cfg.clone();
    other_cfg.seed = 1;
    let mut other = Generator::new(&gpu, &prior, other_cfg).unwrap();
    g::optimise(&mut other, &dir.join("other"), &never, |_| {}).unwrap();
    assert!(mean_abs_diff(&params(&gpu, &other), &want) > 0.1 * moved);

    // A checkpoint past the run's end needs more steps.
    let mut short = cfg.clone();
    short.steps = 1;
    let e = Generator::resume(&gpu, &prior, short, &out.join(g::files::CHECKPOINT)).err().expect("resume past the end").to_string();
    assert!(e.contains("--steps"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same config, same adapter, same bytes: two runs end with bit-identical
/// parameters (the grid gradient's scatter is exact in any order; the
/// resumed run's bits are checked in the test above).
#[test]
fn runs_of_one_config_are_bit_identical() {
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let dir = std::env::temp_dir().join(format!("fsd3d-generate-bits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let never = AtomicBool::new(false);
    let cfg = tiny_config(Method::Fsd, 4);
    let bits = |run: &Generator<'_>| -> Vec<u32> { params(&gpu, run).iter().map(|v| v.to_bits()).collect() };
    let mut a = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    g::optimise(&mut a, &dir.join("a"), &never, |_| {}).unwrap();
    let mut b = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    g::optimise(&mut b, &dir.join("b"), &never, |_| {}).unwrap();
    let (ba, bb) = (bits(&a), bits(&b));
    let differ = ba.iter().zip(&bb).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of {} parameters differ between two runs of one config", ba.len());
    assert_ne!(ba, bits(&Generator::new(&gpu, &prior, cfg.clone()).unwrap()), "the runs moved the parameters");
    // The files too: the same bytes, header included.
    for file in [g::files::CHECKPOINT, g::files::CONFIG] {
        let (fa, fb) = (std::fs::read(dir.join("a").join(file)).unwrap(), std::fs::read(dir.join("b").join(file)).unwrap());
        assert!(fa == fb, "{file} differs between two runs of one config");
    }

    let _ = std::fs::remove_dir_all(&dir);
}

/// `--resume` on a run killed after it wrote its config but before its first
/// checkpoint starts the run again from step 0 (and says so), instead of
/// failing on the missing checkpoint; once a checkpoint exists it continues.
#[test]
fn resuming_a_run_without_a_checkpoint_starts_it_again() {
    use fsd3d::generate::job::{GenerateJob, GenerateRequest};
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let dir = std::env::temp_dir().join(format!("fsd3d-generate-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = tiny_config(Method::Fsd, 2);
    cfg.dtype = "f32".into();
    std::fs::write(dir.join(g::files::CONFIG), cfg.to_toml().unwrap()).unwrap();

    let resume = || GenerateJob::prepare(&gpu, GenerateRequest::Resume { dir: dir.clone(), steps: None }).unwrap();
    let job = resume();
    assert!(job.restarted && !job.resume, "no checkpoint: a restart, not a resume");
    assert_eq!(job.cfg, cfg);
    let mut run = job.start(&gpu, &prior).unwrap();
    assert_eq!(run.step, 0);
    assert_eq!(g::optimise(&mut run, &dir, &AtomicBool::new(false), |_| {}).unwrap(), Finish::Completed);
    assert!(dir.join(g::files::CHECKPOINT).is_file());

    let job = GenerateJob::prepare(&gpu, GenerateRequest::Resume { dir: dir.clone(), steps: Some(3) }).unwrap();
    assert!(job.resume && !job.restarted, "a checkpoint: a resume");
    assert_eq!(job.start(&gpu, &prior).unwrap().step, 2);

    // The checkpoint knows the config it optimised: what is written may
    // change, what is optimised may not.
    let mut edited = cfg.clone();
    edited.output.render_size = 24;
    std::fs::write(dir.join(g::files::CONFIG), edited.to_toml().unwrap()).unwrap();
    assert_eq!(resume().start(&gpu, &prior).unwrap().step, 2);
    edited.guidance.cfg = 7.0;
    edited.seed = 9;
    std::fs::write(dir.join(g::files::CONFIG), edited.to_toml().unwrap()).unwrap();
    let e = resume().start(&gpu, &prior).err().expect("another config").to_string();
    assert!(e.contains("guidance.cfg") && e.contains("seed: 0 → 9") && !e.contains("render_size"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_method_runs_and_a_finished_run_writes_its_outputs() {
    let gpu = common::gpu();
    let dir = fsd3d::models::embedded_prior_dir();
    let prior = StableDiffusion::load(&gpu, &dir, DType::F32).unwrap();
    let classifier = fsd3d::models::classifier::Classifier::load(&gpu, &dir).unwrap();
    let out = std::env::temp_dir().join(format!("fsd3d-generate-outputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let never = AtomicBool::new(false);
    for method in [Method::Sds, Method::Nfsd, Method::FsdConstant, Method::Fsd] {
        let mut run = Generator::new(&gpu, &prior, tiny_config(method, 2)).unwrap();
        let mut last = None;
        g::optimise(&mut run, &out.join(method.name()), &never, |r| last = r.grad_rms).unwrap();
        let rms = last.expect("the last step is logged");
        assert!(rms.is_finite() && rms > 0.0, "{}: gradient rms {rms}", method.name());
        if method != Method::Fsd {
            continue;
        }
        let run_dir = out.join(method.name());
        let outputs = g::outputs::write_outputs(&gpu, &run.scene, &run.cfg, Some(&classifier), &run_dir, |_| {}).unwrap();
        for f in [g::outputs::files::RENDERS, g::outputs::files::DEPTH, g::outputs::files::NORMALS, g::outputs::files::TURNTABLE] {
            assert!(run_dir.join(f).is_file(), "{f}");
            assert!(outputs.files.iter().any(|x| x == f));
        }
        // Two 16² views side by side with 2 pixels of padding around each.
        let grid = fsd3d::export::image::read_png(&run_dir.join(g::outputs::files::RENDERS)).unwrap();
        assert!(grid.width > 2 * 16 && grid.height >= 16, "grid {}x{}", grid.width, grid.height);
        // The initial blob has density above 5 at its centre: a mesh.
        let mesh = outputs.mesh.as_ref().unwrap_or_else(|| panic!("no mesh: {:?}", outputs.mesh_error));
        assert!(mesh.triangles > 0 && mesh.bounds_min.iter().chain(&mesh.bounds_max).all(|v| v.abs() <= 1.0));
        assert!(run_dir.join(g::outputs::files::MESH_GLB).is_file() && run_dir.join(g::outputs::files::MESH_OBJ).is_file());
        let verdict = outputs.verdict.as_ref().expect("a classifier was given");
        assert_eq!(verdict.views.len(), 4);
        assert!(verdict.views.iter().all(|v| v.p_prompt_colour.is_some_and(|p| (0.0..=1.0).contains(&p))));
        let both = verdict.both_agreement.unwrap();
        assert!((0.0..=1.0).contains(&both));
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn tiny_latent_pipeline(gpu: &fsd3d::gpu::Gpu) -> StableDiffusion {
    StableDiffusion::load(gpu, std::path::Path::new("tests/fixtures/models/pipeline"), DType::F32).unwrap()
}

#[test]
fn a_latent_priors_encoder_gradient_matches_finite_differences() {
    use fsd3d::models::prior::Prior;
    let gpu = common::gpu();
    let prior = tiny_latent_pipeline(&gpu);
    let [ih, iw] = prior.image_size();
    let [c, h, w] = prior.sample_shape();
    let images = common::rand_vec(1, 3 * ih * iw, -0.9, 0.9);
    let probe = common::randn(2, c * h * w);
    // f(images) = Σ encode(images) · probe, and its gradient.
    let f = |x: &[f32]| -> f64 {
        let enc = prior.encode(&gpu, &gpu.upload(x, &[1, 3, ih, iw], DType::F32).unwrap()).unwrap();
        gpu.download(&enc.sample).unwrap().iter().zip(&probe).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let enc = prior.encode(&gpu, &gpu.upload(&images, &[1, 3, ih, iw], DType::F32).unwrap()).unwrap();
    assert_eq!(enc.sample.shape(), &[1, c, h, w]);
    let grad = gpu.download(&prior.encode_backward(&gpu, &enc, &gpu.upload(&probe, &[1, c, h, w], DType::F32).unwrap()).unwrap()).unwrap();
    assert_eq!(grad.len(), images.len());
    let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert!(scale > 0.0);
    let eps = 1e-2f32;
    for &i in &[0usize, 37, ih * iw + 5, 3 * ih * iw - 1] {
        let (mut up, mut down) = (images.clone(), images.clone());
        up[i] += eps;
        down[i] -= eps;
        let fd = (f(&up) - f(&down)) / (2.0 * eps as f64);
        assert!((fd - grad[i] as f64).abs() <= 2e-2 * scale, "pixel {i}: finite difference {fd}, backward {}, scale {scale}", grad[i]);
    }
    // A gradient of the wrong shape is refused.
    assert!(prior.encode_backward(&gpu, &enc, &gpu.upload(&[0.0; 4], &[1, 4, 1, 1], DType::F32).unwrap()).is_err());
}

#[test]
fn a_latent_prior_runs_the_loop_through_its_encoder() {
    use fsd3d::models::prior::Prior;
    let gpu = common::gpu();
    let prior = tiny_latent_pipeline(&gpu);
    let [_, h, _] = prior.sample_shape();
    let mut cfg = GenerateConfig::defaults("a cat", Method::Fsd, &PriorKind::Latent);
    cfg.steps = 2;
    cfg.camera.width = h as u32;
    cfg.camera.height = h as u32;
    cfg.scene.field.levels = 8;
    cfg.scene.field.hidden = 32;
    cfg.scene.field.log2_table_size = 14;
    cfg.scene.render.samples_per_ray = 48;
    cfg.output.log_every = 1;
    cfg.output.checkpoint_every = 0;
    let mut run = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    let before = params(&gpu, &run);
    let mut rms = Vec::new();
    let out = std::env::temp_dir().join(format!("fsd3d-generate-latent-{}", std::process::id()));
    g::optimise(&mut run, &out, &AtomicBool::new(false), |r| rms.push(r.grad_rms.unwrap())).unwrap();
    assert!(rms.iter().all(|v| v.is_finite() && *v > 0.0), "{rms:?}");
    assert!(mean_abs_diff(&params(&gpu, &run), &before) > 0.0);
    // A render that is no multiple of the latent grid is refused up front.
    cfg.camera.width = h as u32 + 3;
    let e = Generator::new(&gpu, &prior, cfg).err().expect("a mismatched render size").to_string();
    assert!(e.contains("width"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}
