//! Resource failures: GPU memory that runs out (a forced-small budget,
//! `--memory-limit`) and a device that is lost mid-run. Each must end in an
//! error that says what happened and what to do, never a panic, and a lost
//! device must leave the run resumable from its last checkpoint.
mod common;

use std::sync::atomic::AtomicBool;

use fsd3d::diffusion::guidance::Method;
use fsd3d::error::Error;
use fsd3d::generate::{self as g, GenerateConfig, Generator, PriorKind};
use fsd3d::gpu::{DType, Gpu, GpuOptions, MemoryPhase};
use fsd3d::models::prior::StableDiffusion;

fn gpu_with_limit(bytes: u64) -> std::sync::Arc<Gpu> {
    Gpu::new(&GpuOptions { memory_limit: Some(bytes), ..Default::default() }).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fsd3d-resources-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn an_allocation_past_the_budget_names_the_tensor_and_idle_buffers_make_room() {
    let gpu = gpu_with_limit(1 << 20);
    let a = gpu.empty(&[200_000], DType::F32).unwrap(); // 800 000 bytes
    let held = gpu.memory_held();
    assert!((800_000..1 << 20).contains(&held), "held {held}");
    let line = line!() + 1;
    let e = gpu.empty(&[100, 2000], DType::F32).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
    let text = e.to_string();
    for want in ["out of GPU memory", "[100, 2000]", "(f32)", "--memory-limit is 1.0 MiB", "--dtype f16"] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(text.contains(&format!("tests/resources.rs:{line}")), "the error names the code that asked: {text}");
    assert_eq!(gpu.memory_held(), held, "a refused allocation holds nothing");

    // Dropped, the first buffer is idle in the pool; a request of another
    // size class frees it rather than failing.
    drop(a);
    let b = gpu.upload(&vec![1.0; 180_000], &[180_000], DType::F32).unwrap();
    assert_eq!(gpu.memory_held(), 720_000, "the idle buffer was freed for the new one");
    assert_eq!(gpu.download(&b).unwrap()[179_999], 1.0);
}

#[test]
fn the_phase_names_the_work_and_the_settings_that_shrink_it() {
    let gpu = gpu_with_limit(64 << 10);
    let e = {
        let _phase = gpu.memory_phase(MemoryPhase::LOADING_PRIOR);
        StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).err().expect("64 KiB cannot hold the prior")
    };
    let text = format!("{e:#}");
    assert!(text.contains("out of GPU memory loading the prior's weights"), "{text}");
    assert!(text.contains("store the weights in f16"), "{text}");
    // The guard put the phase back.
    let e = gpu.empty(&[1 << 20], DType::F32).unwrap_err().to_string();
    assert!(e.contains("out of GPU memory: ") && e.contains("smaller images or batches"), "{e}");
}

/// From outside, as a user meets it: `generate` under a budget too small for
/// its training step ends with exit status 1 and the error, not a panic.
#[test]
fn generate_under_a_small_memory_limit_says_what_to_shrink() {
    let dir = scratch("cli-oom");
    let run = |limit: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fsd3d"))
            .env_remove("FSD3D_MODEL")
            .args(["generate", "a red cube", "--steps", "2", "--memory-limit", limit, "--out"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    // The embedded prior and the scene (hash grid, Adam state) take ~16 MiB
    // in f32; a training step (rays, samples, field activations and their
    // gradients) needs some 40 MiB more.
    let out = run("24MiB");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("out of GPU memory in a training step"), "{stderr}");
    assert!(stderr.contains("[camera] width, height and batch_size"), "{stderr}");
    let out = run("12 parsecs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("memory size \"12 parsecs\"") && stderr.contains("512MiB"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny_config(steps: u64) -> GenerateConfig {
    let spec = fsd3d::models::pixel_prior::PixelPriorSpec::load(&fsd3d::models::embedded_prior_dir()).unwrap().unwrap();
    let mut c = GenerateConfig::defaults("a red cube", Method::Fsd, &PriorKind::Pixel(spec));
    c.steps = steps;
    c.dtype = "f32".into();
    c.scene.render.samples_per_ray = 48;
    c.scene.material.ambient_only_steps = 1;
    c.output.log_every = 1;
    c.output.checkpoint_every = 2;
    c
}

/// A device lost at step 3 (destroyed, as a driver reset leaves it) stops the
/// run with an error that names the checkpoint of step 2 and `--resume`; on
/// a working device the run resumes from it and ends where an uninterrupted
/// run ends, bit for bit.
#[test]
fn a_lost_device_stops_the_run_at_its_last_checkpoint_and_it_resumes() {
    let dir = scratch("lost");
    let cfg = tiny_config(4);
    let doomed = Gpu::new(&GpuOptions::default()).unwrap();
    let prior = StableDiffusion::load(&doomed, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let mut run = Generator::new(&doomed, &prior, cfg.clone()).unwrap();
    let never = AtomicBool::new(false);
    let e = g::optimise(&mut run, &dir, &never, |r| {
        if r.step == 3 {
            doomed.device().destroy();
        }
    })
    .unwrap_err();
    assert!(matches!(e, Error::DeviceLost { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("device was lost (destroyed"), "{text}");
    assert!(text.contains("checkpoint of step 2"), "{text}");
    assert!(text.contains(&format!("--resume {}", dir.display())), "{text}");
    // Calls after the loss keep saying so instead of failing some other way.
    let e = doomed.upload(&[1.0], &[1], DType::F32).unwrap_err();
    assert!(matches!(e, Error::DeviceLost { .. }), "{e}");
    drop(run);
    drop(prior);

    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let checkpoint = dir.join(g::files::CHECKPOINT);
    let mut resumed = Generator::resume(&gpu, &prior, cfg.clone(), &checkpoint).unwrap();
    assert_eq!(resumed.step, 2);
    g::optimise(&mut resumed, &dir, &never, |_| {}).unwrap();
    let mut whole = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    g::optimise(&mut whole, &dir.join("whole"), &never, |_| {}).unwrap();
    let a = std::fs::read(&checkpoint).unwrap();
    let b = std::fs::read(dir.join("whole").join(g::files::CHECKPOINT)).unwrap();
    assert!(a == b, "the resumed run's checkpoint differs from the uninterrupted run's");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device lost while the outputs are written: the error says that the
/// run's checkpoint is kept and that `--resume` writes the outputs.
#[test]
fn a_device_lost_while_writing_outputs_names_the_checkpoint_and_resume() {
    use fsd3d::generate::job::{GenerateJob, RunOutcome};
    let dir = scratch("lost-outputs");
    let mut cfg = tiny_config(1);
    cfg.output.render_size = 16;
    cfg.output.turntable_frames = 2;
    cfg.output.mesh_resolution = 16;
    let doomed = Gpu::new(&GpuOptions::default()).unwrap();
    let prior = StableDiffusion::load(&doomed, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let job = GenerateJob { cfg: cfg.clone(), out: dir.clone(), resume: false, restarted: false, model_dir: fsd3d::models::embedded_prior_dir() };
    let mut run = job.start(&doomed, &prior).unwrap();
    let never = AtomicBool::new(false);
    g::optimise(&mut run, &dir, &never, |_| {}).unwrap();
    doomed.device().destroy();
    let outcome = RunOutcome { finish: g::Finish::Completed, seconds: 1.0, steps_done: 1, last_grad_rms: None };
    let e = job.write_outputs(&doomed, &run, &outcome, |_| {}).expect_err("no outputs from a lost device");
    let text = e.to_string();
    assert!(matches!(e, Error::DeviceLost { .. }), "{text}");
    assert!(text.contains("checkpoint of step 1") && text.contains(&format!("--resume {}", dir.display())), "{text}");
    assert!(dir.join(g::files::CHECKPOINT).is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
