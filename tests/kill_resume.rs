//! Crash safety of `fsd3d generate`, from outside as a user meets it: a
//! short run on the embedded prior is killed with SIGKILL at random moments
//! (checkpoints every step, so kills land in and around checkpoint writes)
//! and continued each time with `--resume` (or started again with the
//! original command when the kill came before it wrote its config). The run
//! must always continue and end complete: a final checkpoint at the last
//! step, bit for bit the uninterrupted run's, a log that tells each step
//! once, and the outputs.
//!
//! The suite kills twice; the long mode 25 times:
//! `cargo test --release --test kill_resume -- --ignored --nocapture`.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 6;
const TINY: &str = "[scene.render]\nsamples_per_ray = 48\n[scene.material]\nambient_only_steps = 1\n\
                    [scene.field]\nlog2_table_size = 12\n\
                    [output]\nlog_every = 1\ncheckpoint_every = 1\nrender_size = 16\ngrid_views = 2\n\
                    turntable_frames = 4\nmesh_resolution = 16\nmesh_threshold = 5.0\n";

/// `fsd3d generate` for the run in `out`: its first start, or `--resume`
/// once it has written its config.
fn start(out: &Path, overlay: &Path) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fsd3d"));
    if out.join("config.toml").is_file() {
        c.args(["generate", "--resume"]).arg(out);
    } else {
        c.args(["generate", "a red cube", "--seed", "3", "--steps", &STEPS.to_string(), "--config"])
            .arg(overlay)
            .arg("--out")
            .arg(out);
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("starting fsd3d")
}

fn kill_and_resume(kills: usize, seed: u64) {
    let dir = std::env::temp_dir().join(format!("fsd3d-kill-{seed}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let overlay = dir.join("tiny.toml");
    std::fs::write(&overlay, TINY).unwrap();
    let out: PathBuf = dir.join("run");

    // How long a whole uninterrupted start takes here, to spread the kills over it.
    let t0 = Instant::now();
    let whole = start(&dir.join("timing"), &overlay).wait_with_output().unwrap();
    assert!(whole.status.success(), "an uninterrupted run failed: {}", String::from_utf8_lossy(&whole.stderr));
    let span = t0.elapsed().as_secs_f32();

    // A resumed start skips the steps already done: kill early enough to hit it.
    let delays = common::rand_vec(seed, kills, 0.0, 0.7 * span);
    for (i, &d) in delays.iter().enumerate() {
        let mut child = start(&out, &overlay);
        std::thread::sleep(Duration::from_secs_f32(d));
        let _ = child.kill(); // SIGKILL; an error means it had already ended
        let status = child.wait().unwrap();
        if status.success() {
            eprintln!("kill {i} at {d:.2} s: the run had already finished");
        }
    }
    let last = start(&out, &overlay).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&last.stderr);
    assert!(last.status.success(), "after {kills} kills, the run did not continue: {said}");

    let ck = fsd3d::scene::optim::Checkpoint::read(&out.join("checkpoint.safetensors")).expect("a final checkpoint that reads back");
    assert_eq!(ck.meta("adam_step"), Some(STEPS.to_string().as_str()), "the final checkpoint is at the last step");
    // Bit for bit the uninterrupted run's.
    let straight = fsd3d::scene::optim::Checkpoint::read(&dir.join("timing").join("checkpoint.safetensors")).unwrap();
    let mut names: Vec<&String> = straight.tensors.keys().collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        assert!(ck.tensors.get(name) == straight.tensors.get(name), "{name} differs from the uninterrupted run's after {kills} kills");
    }
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    let steps: Vec<u64> = log.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "the log tells each step once:\n{log}");
    for f in ["renders.png", "mesh.glb", "summary.json"] {
        assert!(out.join(f).is_file(), "{f} after the last resume");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files of killed writes outlive the run: {leftovers:?}");
    eprintln!("{kills} kills over {span:.1} s: the run resumed to its end each time");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_killed_at_random_moments_always_resumes_to_its_end() {
    kill_and_resume(2, 1);
}

#[test]
#[ignore = "long: 25 kills"]
fn kill_resume_long() {
    kill_and_resume(25, 2);
}

/// `generate --prompts`: a batch of assets as units. A shard makes its
/// prompts; the whole batch killed (SIGKILL) in a run leaves a lock of a dead
/// worker, which the next call takes over, resuming that run from its
/// checkpoint; finished runs are skipped, and every run ends complete.
#[test]
fn a_batch_of_prompts_skips_finished_runs_and_resumes_a_killed_one() {
    let dir = std::env::temp_dir().join(format!("fsd3d-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let overlay = dir.join("tiny.toml");
    std::fs::write(&overlay, TINY).unwrap();
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a red cube\n# not a prompt\na blue sphere\na green cone\n").unwrap();
    let out = dir.join("runs");
    let batch = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fsd3d"));
        c.args(["generate", "--prompts"]).arg(&prompts).args(["--steps", &STEPS.to_string(), "--config"]).arg(&overlay).arg("--out").arg(&out);
        c.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Shard 0 of 2: prompts 0 and 2.
    let first = batch(&["--shard", "0/2"]).output().unwrap();
    assert!(first.status.success(), "{}", said(&first));
    assert!(said(&first).contains("2 runs made, 0 already complete"), "{}", said(&first));
    assert!(out.join("a-red-cube-fsd-s0/summary.json").is_file() && out.join("a-green-cone-fsd-s0/summary.json").is_file());
    assert!(!out.join("a-blue-sphere-fsd-s0").exists());

    // The whole batch, killed inside the remaining run once it has a checkpoint.
    let mut child = batch(&[]).spawn().unwrap();
    let run = out.join("a-blue-sphere-fsd-s0");
    let start = Instant::now();
    while !run.join("checkpoint.safetensors").is_file() {
        assert!(start.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(!status.success() || run.join("summary.json").is_file());
    // Its lock names a dead pid: the next call takes it over and finishes the run.
    let last = batch(&[]).output().unwrap();
    assert!(last.status.success(), "{}", said(&last));
    assert!(said(&last).contains("already complete, 0 held by other workers"), "{}", said(&last));
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    let steps: Vec<u64> = log.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "each step once:\n{log}");
    let again = batch(&[]).output().unwrap();
    assert!(said(&again).contains("0 runs made, 3 already complete"), "{}", said(&again));
    assert!(std::fs::read_dir(out.join("locks")).unwrap().next().is_none(), "no lock outlives its run");
    // A unit the file does not have.
    let bad = batch(&["--unit", "3"]).output().unwrap();
    assert!(!bad.status.success() && said(&bad).contains("--unit 3") && said(&bad).contains("3 prompts"), "{}", said(&bad));
    let _ = std::fs::remove_dir_all(&dir);
}
