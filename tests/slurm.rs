//! `fsd3d eval` shards on a real Slurm: `scripts/slurm-local` starts munged,
//! slurmctld and one slurmd on this machine (Debian's packages, no systemd),
//! and `deploy/slurm/eval-array.sbatch` is submitted as users submit it.
//! Checked: the merged table (`--report`) equals a serial `eval` of the same
//! plan number for number; a task warned of its time limit (SIGUSR1 to the
//! batch script) checkpoints, requeues itself and ends on the serial run's
//! checkpoint bytes, and so does a task cancelled mid-run and resubmitted; a
//! shard run twice changes nothing.
//! Where Slurm cannot be started (no root, no apt-get), the test says so and
//! passes without checking.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fsd3d");
const STEPS: u64 = 16;

/// The local Slurm, stopped on drop.
struct Slurm {
    dir: PathBuf,
    conf: String,
}

impl Slurm {
    fn start(dir: &Path) -> Option<Slurm> {
        let out = Command::new("scripts/slurm-local").arg("start").arg(dir).output().expect("scripts/slurm-local runs");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: no Slurm on this machine ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let conf = line.strip_prefix("export SLURM_CONF=").expect("slurm-local prints SLURM_CONF").to_string();
        Some(Slurm { dir: dir.to_path_buf(), conf })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Submits the array script; returns the job id.
    fn submit(&self, array: &str, shards: Option<usize>, eval_args: &[String], wait: bool) -> String {
        let mut c = self.cmd("sbatch");
        c.env("FSD3D", BIN).arg("--parsable").arg(format!("--array={array}")).args(["--cpus-per-task=1", "--mem=2G"]);
        c.arg(format!("--output={}/task-%A_%a.log", self.dir.display()));
        if wait {
            c.arg("--wait");
        }
        if let Some(n) = shards {
            c.env("FSD3D_SHARDS", n.to_string());
        }
        c.arg("deploy/slurm/eval-array.sbatch").args(eval_args);
        let out = c.output().unwrap();
        assert!(out.status.success() || wait, "sbatch: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string()
    }

    fn queue_is_empty(&self) -> bool {
        let out = self.cmd("squeue").args(["-h", "-o", "%i"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    fn wait_for_empty_queue(&self, limit: Duration) {
        let start = Instant::now();
        while !self.queue_is_empty() {
            assert!(start.elapsed() < limit, "the Slurm queue did not empty in {limit:?}: {}", self.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("task-")) {
                all.push_str(&format!("\n== {}\n{}", p.display(), std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
        all
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new("scripts/slurm-local").arg("stop").arg(&self.dir).output();
    }
}

fn fsd3d_eval(args: &[String]) -> std::process::Output {
    let out = Command::new(BIN).arg("eval").args(args).output().unwrap();
    assert!(out.status.success(), "fsd3d eval {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn evaluation_of(out: &Path) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(r.get("missing").is_none(), "complete: {:?}", r.get("missing"));
    r["evaluation"].clone()
}

/// Lines of a run's log.csv after the header: its steps so far.
fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("log.csv")).map_or(0, |t| t.lines().count().saturating_sub(1))
}

#[test]
fn eval_shards_on_a_real_slurm_merge_into_the_serial_table() {
    let root = std::env::temp_dir().join(format!("fsd3d-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let Some(slurm) = Slurm::start(&root.join("slurm")) else { return };

    let prompts = root.join("prompts.txt");
    std::fs::write(&prompts, "a red cube\n").unwrap();
    let overlay = root.join("tiny.toml");
    std::fs::write(
        &overlay,
        "[scene.render]\nsamples_per_ray = 48\n[scene.material]\nambient_only_steps = 1\n[scene.field]\nlog2_table_size = 12\n[output]\nlog_every = 1\ncheckpoint_every = 0\n",
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "--prompts", prompts.to_str().unwrap(), "--seeds", "0,1", "--methods", "fsd", "--steps", &STEPS.to_string(),
            "--config", overlay.to_str().unwrap(), "--views", "4", "--figure-scale", "2", "--ddim-steps", "2",
            "--ddim-samples", "2", "--out", out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // The serial evaluation.
    let serial = root.join("serial");
    fsd3d_eval(&args(&serial));

    // The plan: 4 units (2 reference seeds, 2 runs).
    let sweep = root.join("sweep");
    let planned = fsd3d_eval(&[args(&sweep), vec!["--plan".into()]].concat());
    assert_eq!(String::from_utf8_lossy(&planned.stdout).trim(), "4");

    // Two shards as an array: shard 0 has units 0 (DDIM seed 0) and 2 (the
    // seed-0 run), shard 1 units 1 and 3.
    let job = slurm.submit("0-1", None, &args(&sweep), false);
    let (run0, run1) = (sweep.join("runs/a-red-cube/fsd/s0"), sweep.join("runs/a-red-cube/fsd/s1"));
    let wait_for_steps = |run: &Path, what: &str| {
        let start = Instant::now();
        while logged_steps(run) < 3 {
            assert!(start.elapsed() < Duration::from_secs(300), "the run of {what} did not start: {}", slurm.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Task 0 is warned of its time limit as Slurm warns it (--signal=B:USR1):
    // it checkpoints and requeues itself.
    wait_for_steps(&run0, "task 0");
    let warn = slurm.cmd("scancel").args(["--signal=USR1", "--batch"]).arg(format!("{job}_0")).output().unwrap();
    assert!(warn.status.success());
    // Task 1 is cancelled.
    wait_for_steps(&run1, "task 1");
    let cancel = slurm.cmd("scancel").arg(format!("{job}_1")).output().unwrap();
    assert!(cancel.status.success());
    // Slurm holds a requeued task back for a while (BeginTime); release it now.
    let start = Instant::now();
    loop {
        let q = slurm.cmd("squeue").args(["-h", "-o", "%i %T"]).output().unwrap();
        let q = String::from_utf8_lossy(&q.stdout).to_string();
        if q.contains(&format!("{job}_0 PENDING")) {
            let go = slurm.cmd("scontrol").args(["update", &format!("JobId={job}_0"), "StartTime=now"]).output().unwrap();
            assert!(go.status.success(), "{}", String::from_utf8_lossy(&go.stderr));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "task 0 was not requeued: {q}\n{}", slurm.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    slurm.wait_for_empty_queue(Duration::from_secs(600));
    let log0 = std::fs::read_to_string(run0.join("log.csv")).unwrap();
    let steps0: Vec<u64> = log0.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(steps0, (1..=STEPS).collect::<Vec<_>>(), "task 0 requeued and finished, each step once");
    assert!(slurm.logs().contains("time limit near, checkpointing and requeueing"), "{}", slurm.logs());
    assert_eq!(
        std::fs::read(run0.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(serial.join("runs/a-red-cube/fsd/s0/checkpoint.safetensors")).unwrap(),
        "the requeued run ends on the serial run's bytes"
    );
    let cut_at = logged_steps(&run1);
    assert!(run1.join("checkpoint.safetensors").is_file(), "SIGTERM checkpoints the run: {}", slurm.logs());
    assert!(cut_at < STEPS as usize, "the run finished before the cancel ({cut_at} steps); raise STEPS");

    // Resubmitted alone, task 1 finishes its shard from the checkpoint.
    slurm.submit("1", Some(2), &args(&sweep), true);
    slurm.wait_for_empty_queue(Duration::from_secs(600));
    let log = std::fs::read_to_string(run1.join("log.csv")).unwrap();
    let steps: Vec<u64> = log.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "every step once, resumed after the cancel at {cut_at}");
    let checkpoint = std::fs::read(run1.join("checkpoint.safetensors")).unwrap();
    assert_eq!(checkpoint, std::fs::read(serial.join("runs/a-red-cube/fsd/s1/checkpoint.safetensors")).unwrap(), "the resumed run ends on the serial run's bytes");

    // The merged table is the serial one, number for number.
    fsd3d_eval(&[args(&sweep), vec!["--report".into()]].concat());
    assert_eq!(evaluation_of(&sweep), evaluation_of(&serial));

    // Shard 0 again: nothing changes.
    let before = std::fs::read(run0.join("checkpoint.safetensors")).unwrap();
    slurm.submit("0", Some(2), &args(&sweep), true);
    slurm.wait_for_empty_queue(Duration::from_secs(600));
    assert_eq!(std::fs::read(run0.join("checkpoint.safetensors")).unwrap(), before);
    assert_eq!(logged_steps(&run0), STEPS as usize);
    drop(slurm);
    let _ = std::fs::remove_dir_all(&root);
}
