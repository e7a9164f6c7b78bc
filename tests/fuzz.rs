//! Fuzzing the parsers of user input. Each target takes a real, valid file
//! (the embedded prior's configs, tokenizer and weights; a run config; a
//! scene checkpoint; an autotune cache; a prompts file) and feeds its parser
//! seeded mutations: bit flips, truncations, inserted and deleted bytes,
//! overwritten runs, numbers made huge or negative, deep nesting, random
//! bytes. Every case must end in `Ok` or in an error that names the file,
//! never in a panic, and quickly (a hang would show as a slow case).
//!
//! The suite runs a few dozen cases per target. The long mode runs 10⁵ per
//! target (hours on a CPU adapter):
//! `cargo test --release --test fuzz -- --ignored --nocapture`, or any
//! number with `FSD3D_FUZZ_CASES=N cargo test --release --test fuzz`.
mod common;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsd3d::gpu::{DType, Gpu};

/// Cases per target in the suite.
const QUICK_CASES: usize = 300;
/// Cases per target in the long mode.
const LONG_CASES: usize = 100_000;
/// A case slower than this counts as a hang.
const SLOW_CASE: Duration = Duration::from_secs(10);

/// splitmix64: a small seeded generator, so that a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    /// Mostly near the front, where headers and the first keys are.
    fn position(&mut self, len: usize) -> usize {
        if self.below(2) == 0 { self.below(len.min(256)) } else { self.below(len) }
    }
}

/// One mutation of `valid`.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut b = valid.to_vec();
    match rng.below(9) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.position(b.len());
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
            }
        }
        1 => b.truncate(rng.position(b.len())),
        2 => {
            let i = rng.position(b.len());
            let n = 1 + rng.below(16);
            for _ in 0..n {
                b.insert(i.min(b.len()), rng.next() as u8);
            }
        }
        3 => {
            let i = rng.position(b.len());
            let n = (1 + rng.below(16)).min(b.len().saturating_sub(i));
            b.drain(i..i + n);
        }
        4 => {
            let i = rng.position(b.len());
            let n = (1 + rng.below(64)).min(b.len().saturating_sub(i));
            for x in &mut b[i..i + n] {
                *x = rng.next() as u8;
            }
        }
        5 => {
            // A number made huge, negative, fractional or not a number.
            let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit())).collect();
            if !digits.is_empty() {
                let at = digits[rng.below(digits.len())];
                let end = (at..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
                let with: &[u8] = match rng.below(6) {
                    0 => b"99999999999999999999",
                    1 => b"-1",
                    2 => b"4294967296",
                    3 => b"1e309",
                    4 => b"0",
                    _ => b"0.5",
                };
                b.splice(at..end, with.iter().copied());
            }
        }
        6 => {
            // Deep nesting where the text nests.
            let i = rng.position(b.len());
            let open = if rng.below(2) == 0 { b'[' } else { b'{' };
            b.splice(i..i, std::iter::repeat_n(open, 1 + rng.below(20_000)));
        }
        7 => {
            // Bytes of the file moved elsewhere in it (a shuffled header, a swapped key).
            if b.len() > 2 {
                let i = rng.below(b.len());
                let j = rng.below(b.len());
                let n = (1 + rng.below(32)).min(b.len() - i.max(j));
                let part: Vec<u8> = b[i..i + n].to_vec();
                b.splice(j..j + n, part);
            }
        }
        _ => {
            let n = rng.below(512);
            b = (0..n).map(|_| rng.next() as u8).collect();
        }
    }
    b
}

thread_local! {
    /// Set while a parser runs: its panics are caught and reported by the
    /// harness, so the default hook's message and backtrace are noise.
    static PARSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silences panics raised inside a parser; others reach the default hook.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PARSING.with(|p| p.get()) {
                default(info);
            }
        }));
    });
}

/// What the cases of one target ended in.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    errors: usize,
}

/// Runs `cases` mutations of the valid `file` (in a folder of its own, beside
/// copies of `others`) through `parse`, which gets the folder. A panic, an
/// error that does not name `file` (by its name, or its folder's), or a slow
/// case fails the test with the seed that replays it.
fn fuzz(target: &str, file: &Path, others: &[&Path], cases: usize, parse: &dyn Fn(&Path) -> fsd3d::Result<()>) -> Tally {
    let valid = std::fs::read(file).unwrap_or_else(|e| panic!("{target}: reading {}: {e}", file.display()));
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("fsd3d-fuzz-{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for o in others {
        std::fs::copy(o, dir.join(o.file_name().unwrap())).unwrap();
    }
    // The valid file itself parses: the harness is wired right.
    std::fs::write(dir.join(&name), &valid).unwrap();
    if let Err(e) = parse(&dir) {
        panic!("{target}: the valid {name} does not parse: {e}");
    }
    let base_seed = fsd3d::io::fnv1a64(&[target.as_bytes()]);
    let mut tally = Tally::default();
    for case in 0..cases {
        let seed = base_seed ^ case as u64;
        let bytes = mutate(&mut Rng(seed), &valid);
        std::fs::write(dir.join(&name), &bytes).unwrap();
        let started = Instant::now();
        PARSING.with(|p| p.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(&dir)));
        PARSING.with(|p| p.set(false));
        let took = started.elapsed();
        let replay = format!("{target} case {case} (seed {seed:#x}, {} bytes)", bytes.len());
        match outcome {
            Err(p) => {
                let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                std::fs::write(std::env::temp_dir().join(format!("fsd3d-fuzz-panic-{target}")), &bytes).unwrap();
                panic!("{replay}: panicked: {}", what.unwrap_or_default());
            }
            Ok(Ok(())) => tally.ok += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                let dir_text = dir.display().to_string();
                let shown: String = msg.chars().take(400).collect();
                assert!(msg.contains(&name) || msg.contains(&dir_text), "{replay}: the error does not name {name}: {shown}");
                tally.errors += 1;
            }
        }
        assert!(took < SLOW_CASE, "{replay}: took {took:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    tally
}

fn prior() -> PathBuf {
    fsd3d::models::embedded_prior_dir()
}

/// The targets, each as (name, valid file, other files its folder needs, parser).
type Parser = Box<dyn Fn(&Path) -> fsd3d::Result<()>>;

fn targets(gpu: &std::sync::Arc<Gpu>, work: &Path) -> Vec<(&'static str, PathBuf, Vec<PathBuf>, Parser)> {
    use fsd3d::models::config::{ClipTextConfig, UNetConfig};
    let p = prior();
    let tok = p.join("tokenizer");
    let mut t: Vec<(&'static str, PathBuf, Vec<PathBuf>, Parser)> = vec![
        ("unet-config", p.join("unet/config.json"), vec![], Box::new(|d| UNetConfig::load(&d.join("config.json")).map(drop))),
        ("clip-config", p.join("text_encoder/config.json"), vec![], Box::new(|d| ClipTextConfig::load(&d.join("config.json")).map(drop))),
        (
            "scheduler-config",
            p.join("scheduler/scheduler_config.json"),
            vec![],
            Box::new(|d| fsd3d::diffusion::schedule::SchedulerConfig::load(&d.join("scheduler_config.json")).map(drop)),
        ),
        ("pixel-prior", p.join("fsd3d_prior.json"), vec![], Box::new(|d| fsd3d::models::pixel_prior::PixelPriorSpec::load(d).map(drop))),
    ];
    let tokenizer: fn(&Path) -> fsd3d::Result<()> = |d| {
        let t = fsd3d::models::tokenizer::PromptTokenizer::from_dir(d)?;
        t.encode("a red cube, front view").map(drop)
    };
    for (target, file) in [("tokenizer-json", "tokenizer.json"), ("tokenizer-special", "special_tokens_map.json"), ("tokenizer-config", "tokenizer_config.json")] {
        let others = ["tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"].iter().filter(|f| **f != file).map(|f| tok.join(f)).collect();
        t.push((target, tok.join(file), others, Box::new(tokenizer)));
    }
    let g = gpu.clone();
    t.push((
        "safetensors",
        p.join("text_encoder/model.safetensors"),
        vec![],
        Box::new(move |d| {
            let w = fsd3d::models::weights::Weights::open(d, fsd3d::models::weights::Variant::Full)?;
            let mut names: Vec<String> = w.names().map(String::from).collect();
            names.sort();
            for n in names {
                let shape = w.shape(&n)?;
                w.load(&g, &n, &shape, DType::F32)?;
            }
            Ok(())
        }),
    ));
    // A run config as `generate` writes it.
    let kind = fsd3d::generate::job::prior_kind(&p).unwrap();
    let cfg = fsd3d::generate::GenerateConfig::defaults("a red cube", fsd3d::diffusion::guidance::Method::Fsd, &kind);
    let run_config = work.join("config.toml");
    std::fs::write(&run_config, cfg.to_toml().unwrap()).unwrap();
    // Read as `generate --resume DIR` reads it.
    let g = gpu.clone();
    t.push((
        "run-config",
        run_config,
        vec![],
        Box::new(move |d| {
            use fsd3d::generate::job::{GenerateJob, GenerateRequest};
            GenerateJob::prepare(&g, GenerateRequest::Resume { dir: d.to_path_buf(), steps: None }).map(drop)
        }),
    ));
    // A scene checkpoint: two small tensors and metadata.
    let checkpoint = work.join("checkpoint.safetensors");
    let a = gpu.upload(&common::rand_vec(1, 37, -1.0, 1.0), &[37], DType::F32).unwrap();
    let b = gpu.upload_u32(&[1, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    let meta = HashMap::from([("adam_step".to_string(), "12".to_string())]);
    fsd3d::scene::optim::save_checkpoint(gpu, &checkpoint, &[("a".into(), &a), ("b".into(), &b)], meta).unwrap();
    t.push(("checkpoint", checkpoint, vec![], Box::new(|d| fsd3d::scene::optim::Checkpoint::read(&d.join("checkpoint.safetensors")).map(drop))));
    // An autotune cache with one entry.
    let cache = work.join("autotune.json");
    let mut c = fsd3d::gpu::autotune::AutotuneCache::new(gpu);
    c.insert(fsd3d::gpu::autotune::TunedEntry {
        family: "matmul".into(),
        bucket: "f32-256".into(),
        caps: fsd3d::gpu::autotune::caps_key(gpu.caps()),
        variant: "blocked".into(),
        shape: "256x256x256".into(),
        default: "subgroup".into(),
        default_ms: Some(2.0),
        ms: 1.5,
    });
    c.save(&cache).unwrap();
    t.push(("autotune-cache", cache, vec![], Box::new(|d| fsd3d::gpu::autotune::AutotuneCache::load(&d.join("autotune.json")).map(drop))));
    let prompts = work.join("prompts.txt");
    std::fs::write(&prompts, "# eval prompts\na red cube\n\na blue sphere, front view\n").unwrap();
    t.push(("prompts", prompts, vec![], Box::new(|d| fsd3d::eval::run::read_prompts(&d.join("prompts.txt")).map(drop))));
    t
}

fn run_all(cases: usize) {
    install_quiet_hook();
    let gpu = common::gpu();
    let work = std::env::temp_dir().join(format!("fsd3d-fuzz-valid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    for (target, file, others, parse) in targets(&gpu, &work) {
        let others: Vec<&Path> = others.iter().map(PathBuf::as_path).collect();
        let started = Instant::now();
        let tally = fuzz(target, &file, &others, cases, &*parse);
        eprintln!("{target}: {cases} cases, {} parsed, {} clear errors, {:.1} s", tally.ok, tally.errors, started.elapsed().as_secs_f64());
        assert!(tally.errors > 0, "{target}: no mutation was refused: the parser is not looking");
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn mutated_inputs_give_ok_or_a_clear_error() {
    let cases = std::env::var("FSD3D_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(QUICK_CASES);
    run_all(cases);
}

#[test]
#[ignore = "long: 10⁵ cases per target"]
fn fuzz_long() {
    run_all(LONG_CASES);
}
