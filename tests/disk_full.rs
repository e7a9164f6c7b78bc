//! A full disk while a run writes its outputs loses nothing that was already
//! written, proved on a REAL full disk and from outside, as a user meets it.
//!
//! 1. A complete short run on the embedded prior (`fsd3d generate`, 3 steps,
//!    tiny outputs) in a scratch folder: every file's bytes are recorded.
//! 2. In a private mount namespace (`unshare -rm`: no root needed, and the
//!    mount vanishes with the shell) a tmpfs a little too small for the run
//!    gets the run's config, checkpoint and log, and `fsd3d generate --resume`
//!    on it (a finished run: it re-saves the checkpoint and writes every output
//!    again) runs out of room part-way through the outputs.
//! 3. The run must end with a clean error (exit 1, not a panic, not a signal)
//!    that says the disk is full, names the file, and says nothing was lost;
//!    the config, log and checkpoint are intact, no temporary file is left,
//!    every output that exists is complete (step 1's bytes), and at least one
//!    is missing (the disk really filled).
//! 4. With room again, `--resume` on a copy of what was left completes the
//!    run: every output is step 1's, byte for byte.
//!
//! Where user namespaces or tmpfs mounts are unavailable (not Linux, or a
//! sandbox that forbids them) the test says "skipped: ..." and passes.
//!
//! `cargo test --test disk_full -- --nocapture` prints the sizes and which
//! outputs the full disk cut.

/// Not Linux: no `unshare`, no tmpfs.
#[cfg(not(target_os = "linux"))]
#[test]
fn a_full_disk_while_writing_outputs_loses_nothing_written_before() {
    eprintln!("skipped: the full-disk test mounts a Linux tmpfs in a user namespace (`unshare -rm`)");
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_while_writing_outputs_loses_nothing_written_before() {
    linux::full_disk();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use fsd3d::generate::files::{CHECKPOINT, CONFIG, LOG, SUMMARY};
    use fsd3d::generate::outputs::files::{DEPTH, MESH_GLB, MESH_OBJ, NORMALS, RENDERS, TURNTABLE};
    use fsd3d::scene::optim::Checkpoint;

    const STEPS: u64 = 3;
    /// kill_resume's tiny run: 48 samples a ray, a 2^12 hash table, 16-pixel
    /// renders, 4 turntable frames and a 16³ mesh keep the run a few seconds
    /// on lavapipe. `checkpoint_every = 1` has the fresh run save checkpoints
    /// as it goes, like a real one.
    const TINY: &str = "[scene.render]\nsamples_per_ray = 48\n[scene.material]\nambient_only_steps = 1\n\
                        [scene.field]\nlog2_table_size = 12\n\
                        [output]\nlog_every = 1\ncheckpoint_every = 1\nrender_size = 16\ngrid_views = 2\n\
                        turntable_frames = 4\nmesh_resolution = 16\nmesh_threshold = 5.0\n";
    /// What the loop writes (and a resume reads): these must survive.
    const KEPT: [&str; 3] = [CONFIG, CHECKPOINT, LOG];
    /// The outputs, in the order `write_outputs` writes them (summary.json
    /// comes last and holds timings, so it is not compared).
    const OUTPUTS: [&str; 6] = [RENDERS, DEPTH, NORMALS, TURNTABLE, MESH_GLB, MESH_OBJ];

    /// A folder's files by name, with their bytes.
    type Files = BTreeMap<String, Vec<u8>>;

    fn read_files(dir: &Path) -> Files {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect()
    }

    /// `write_atomic`'s temporary files: `.NAME.tmpPID`.
    fn is_temporary(name: &str) -> bool {
        name.starts_with('.') && name.contains(".tmp")
    }

    fn fsd3d() -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fsd3d"));
        // The embedded prior, whatever the environment points at.
        c.env_remove("FSD3D_MODEL");
        c
    }

    /// Runs `fsd3d generate --resume dir` on a normal disk; it must succeed.
    fn resume(dir: &Path) {
        let out = fsd3d().args(["generate", "--resume"]).arg(dir).stdout(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "generate --resume {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }

    fn copy_files(from: &Path, to: &Path, names: &[&str]) {
        std::fs::create_dir_all(to).unwrap();
        for n in names {
            std::fs::copy(from.join(n), to.join(n)).unwrap();
        }
    }

    /// The file system's page: tmpfs takes room a page at a time.
    fn page_size() -> usize {
        Command::new("getconf")
            .arg("PAGESIZE")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096)
    }

    /// Whether this machine lets an unprivileged process mount a tmpfs in a
    /// private namespace; the reason when it does not.
    fn can_mount_tmpfs(dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).unwrap();
        let probe = Command::new("unshare")
            .args(["-rm", "sh", "-c", r#"mount -t tmpfs -o size=64k fsd3d-probe "$1""#, "sh"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run `unshare` ({e})"))?;
        if probe.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`unshare -rm sh -c 'mount -t tmpfs ...'` failed ({}): {}",
                probe.status,
                String::from_utf8_lossy(&probe.stderr).trim()
            ))
        }
    }

    /// Whether a checkpoint is step 1's, byte for byte (its header's keys are
    /// written sorted, so a re-saved scene is the same file), and reads back
    /// with its checksum.
    fn checkpoint_problem(want: &[u8], path: &Path) -> Option<String> {
        let got = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Some(format!("{CHECKPOINT}: cannot be read ({e})")),
        };
        if got != want {
            return Some(format!("{CHECKPOINT}: {} bytes that differ from step 1's {} bytes", got.len(), want.len()));
        }
        if let Err(e) = Checkpoint::read(path) {
            return Some(format!("{CHECKPOINT}: does not read back: {e}"));
        }
        None
    }

    /// What in `dir` is not as step 1 wrote it: the config and the log must
    /// be step 1's bytes (a resume of a finished run rewrites both with the
    /// same content: the log keeps its lines up to the checkpoint's step),
    /// the checkpoint the same content, every output present step 1's bytes
    /// (a half-written file under its name would differ), and no temporary
    /// file may be left.
    fn problems(step1: &Files, dir: &Path) -> Vec<String> {
        let mut p = Vec::new();
        let got = read_files(dir);
        for name in [CONFIG, LOG].into_iter().chain(OUTPUTS) {
            let must_exist = name == CONFIG || name == LOG;
            match got.get(name) {
                None if must_exist => p.push(format!("{name}: missing")),
                None => {}
                Some(b) if b != &step1[name] => {
                    let at = b.iter().zip(&step1[name]).position(|(x, y)| x != y).unwrap_or(b.len().min(step1[name].len()));
                    p.push(format!("{name}: {} bytes, differs from step 1's {} bytes at byte {at}", b.len(), step1[name].len()));
                }
                Some(_) => {}
            }
        }
        p.extend(checkpoint_problem(&step1[CHECKPOINT], &dir.join(CHECKPOINT)));
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        p.extend(names.into_iter().filter(|n| is_temporary(n)).map(|n| format!("{n}: a temporary file left behind")));
        p
    }

    /// The shell run inside the private mount namespace. Arguments:
    /// $1 the mount point, $2 tmpfs size in KiB, $3 step 1's run, $4 the
    /// fsd3d binary, $5 the folder to copy what is left into, $6 $7 $8 the
    /// files (outside the mount) for fsd3d's stdout, stderr and exit code.
    ///
    /// The run goes in $1/run. `write_atomic` re-saves the checkpoint through
    /// a temporary copy, so the disk must hold two checkpoints at once; but
    /// once the rename replaces the old one its room would be free again,
    /// far more than all the outputs need (the checkpoint is ~0.9 MB, the
    /// outputs ~75 kB). A hard link to the old checkpoint in $1/hold keeps
    /// that room taken, like other files on a disk that is nearly full.
    const SCRIPT: &str = r#"
set -e
mnt=$1 size=$2 src=$3 bin=$4 copy=$5 out=$6 err=$7 rcfile=$8
mount -t tmpfs -o "size=${size}k" fsd3d-disk-full "$mnt"
mkdir "$mnt/run" "$mnt/hold"
cp "$src/config.toml" "$src/checkpoint.safetensors" "$src/log.csv" "$mnt/run/"
ln "$mnt/run/checkpoint.safetensors" "$mnt/hold/checkpoint.safetensors"
echo "before: $(df -k "$mnt" | tail -n 1)"
rc=0
"$bin" generate --resume "$mnt/run" >"$out" 2>"$err" || rc=$?
echo "$rc" >"$rcfile"
echo "after:  $(df -k "$mnt" | tail -n 1)"
cp -a "$mnt/run/." "$copy/"
"#;

    pub fn full_disk() {
        let t0 = Instant::now();
        let dir = std::env::temp_dir().join(format!("fsd3d-disk-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mnt = dir.join("mnt");

        // Checked first: no point in a run that cannot be used.
        if let Err(why) = can_mount_tmpfs(&mnt) {
            eprintln!("skipped: no private tmpfs mount on this machine: {why}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }

        // 1. A complete short run; every file's bytes.
        let overlay = dir.join("tiny.toml");
        std::fs::write(&overlay, TINY).unwrap();
        let first = dir.join("first");
        let out = fsd3d()
            .args(["generate", "a red cube", "--seed", "3", "--steps", &STEPS.to_string(), "--config"])
            .arg(&overlay)
            .arg("--out")
            .arg(&first)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "the first run failed: {}", String::from_utf8_lossy(&out.stderr));
        let step1 = read_files(&first);
        for name in KEPT.iter().chain(&OUTPUTS).chain(&[SUMMARY]) {
            assert!(step1.contains_key(*name), "the first run wrote no {name}: {:?}", step1.keys());
        }
        let t_first = t0.elapsed().as_secs_f32();

        // The tmpfs: the kept files, room for the checkpoint's temporary copy
        // (held afterwards by the hard link), and about half the outputs'
        // pages, so some outputs fit and some do not.
        let page = page_size();
        let pages = |name: &str| step1[name].len().div_ceil(page);
        let kept_pages: usize = KEPT.iter().map(|n| pages(n)).sum();
        let output_pages: Vec<usize> = OUTPUTS.iter().map(|n| pages(n)).collect();
        let room = output_pages.iter().sum::<usize>() / 2;
        let size_kib = (kept_pages + pages(CHECKPOINT) + room) * page / 1024;
        eprintln!(
            "step 1 ({t_first:.1} s): {}; pages of {page} bytes: kept {kept_pages} (checkpoint {}), outputs {:?} = {}; tmpfs {size_kib} KiB = kept + checkpoint's temporary copy + {room} pages for outputs",
            step1.iter().map(|(n, b)| format!("{n} {}", b.len())).collect::<Vec<_>>().join(", "),
            pages(CHECKPOINT),
            OUTPUTS.iter().zip(&output_pages).map(|(n, p)| format!("{n} {p}")).collect::<Vec<_>>(),
            output_pages.iter().sum::<usize>(),
        );

        // 2. The resume on the tmpfs: one shell, so the mount lives only as long as it.
        let copy = dir.join("left");
        std::fs::create_dir_all(&copy).unwrap();
        let (so, se, rc) = (dir.join("stdout.txt"), dir.join("stderr.txt"), dir.join("rc.txt"));
        let shell = Command::new("unshare")
            .args(["-rm", "sh", "-c", SCRIPT, "sh"])
            .arg(&mnt)
            .arg(size_kib.to_string())
            .arg(&first)
            .arg(env!("CARGO_BIN_EXE_fsd3d"))
            .args([&copy, &so, &se, &rc])
            .env_remove("FSD3D_MODEL")
            .output()
            .unwrap();
        let shell_said = format!("{}{}", String::from_utf8_lossy(&shell.stdout), String::from_utf8_lossy(&shell.stderr));
        assert!(shell.status.success(), "the tmpfs script failed ({}): {shell_said}", shell.status);
        eprint!("{shell_said}");
        let code: i32 = std::fs::read_to_string(&rc).unwrap().trim().parse().unwrap();
        let said = std::fs::read_to_string(&se).unwrap();
        eprintln!("fsd3d on the full disk: exit {code}; stderr:\n{}", said.trim_end());

        // 3. A clean error: exit 1 (not 101, a panic; not 128+N, a signal).
        assert!(!said.contains("panicked"), "fsd3d panicked on a full disk:\n{said}");
        assert_eq!(code, 1, "a full disk must end the run with an error (exit 1):\n{said}");
        assert!(said.contains("disk is full") && said.contains("nothing written before was lost"), "the error does not say the disk is full and nothing was lost:\n{said}");
        let run_in_mnt = mnt.join("run");
        let named: Vec<&str> =
            KEPT.iter().chain(&OUTPUTS).chain(&[SUMMARY]).copied().filter(|n| said.contains(&run_in_mnt.join(n).display().to_string())).collect();
        assert!(!named.is_empty(), "the error names no file of the run ({}):\n{said}", run_in_mnt.display());

        let left = read_files(&copy);
        let written: Vec<&str> = OUTPUTS.iter().copied().filter(|n| left.contains_key(*n)).collect();
        let cut: Vec<&str> = OUTPUTS.iter().copied().filter(|n| !left.contains_key(*n)).collect();
        eprintln!("after the full disk: written {written:?}, cut {cut:?}, named in the error {named:?}");
        let full_disk_problems = problems(&step1, &copy);
        if !full_disk_problems.is_empty() {
            // Non-determinism or a loss? The same resume on a normal disk tells.
            let control = dir.join("control");
            copy_files(&first, &control, &KEPT);
            resume(&control);
            let control_problems = problems(&step1, &control);
            panic!(
                "after the full disk, files are not as step 1 wrote them: {full_disk_problems:#?}\n\
                 the same resume on a normal disk gives: {control_problems:#?}\n\
                 (what both lists hold is fsd3d not being deterministic, not the full disk: report it)"
            );
        }
        assert!(!cut.is_empty(), "every output fit in {size_kib} KiB: the disk never filled (the size computation is wrong)");
        assert!(!written.is_empty(), "no output fit in {size_kib} KiB: the disk filled before the outputs (the size computation is wrong)");
        assert!(named.iter().all(|n| cut.contains(n)), "the error names {named:?}, but those were written");
        assert!(!left.contains_key(SUMMARY), "summary.json was written although an output was not");

        // The checks above would catch a half-written output, a temporary
        // file left behind, or a damaged checkpoint: shown on a tampered copy.
        let tampered = dir.join("tampered");
        copy_files(&copy, &tampered, &left.keys().map(String::as_str).collect::<Vec<_>>());
        let half = &left[written[written.len() - 1]];
        std::fs::write(tampered.join(written[written.len() - 1]), &half[..half.len() / 2]).unwrap();
        std::fs::write(tampered.join(format!(".{}.tmp4242", cut[0])), b"partial").unwrap();
        let mut ck = left[CHECKPOINT].clone();
        let last = ck.len() - 1;
        ck[last] ^= 1;
        std::fs::write(tampered.join(CHECKPOINT), ck).unwrap();
        let caught = problems(&step1, &tampered);
        assert_eq!(caught.len(), 3, "the checks miss damage: {caught:#?}");

        // 4. With room again, the same command finishes the run: every output step 1's.
        let t_again = Instant::now();
        resume(&copy);
        let end = problems(&step1, &copy);
        assert!(
            end.is_empty(),
            "resumed on a normal disk after the full one, the run differs from step 1's: {end:#?} (a plain resume of step 1's run on a \
             normal disk differing too would be fsd3d not being deterministic: report it)"
        );
        let finished = read_files(&copy);
        for name in OUTPUTS.iter().chain(&[SUMMARY]) {
            assert!(finished.contains_key(*name), "{name} missing after the resume with room again");
        }
        eprintln!("with room again: the resume wrote every output ({:.1} s); whole test {:.1} s", t_again.elapsed().as_secs_f32(), t0.elapsed().as_secs_f32());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
