//! `fsd3d bench --variants` and `--autotune`: every kernel variant of the
//! matmul, conv2d and attention families, first checked against a CPU
//! reference, then timed on the same shapes, in one table.
//!
//! - **Check.** Each variant runs on small awkward shapes (sizes that are not
//!   multiples of any tile) in every dtype that will be timed; its output is
//!   compared with a plain CPU loop nest in f64. A variant outside the
//!   tolerance is reported as WRONG with its error and is not timed. This is
//!   what makes a swapped-in shader (`--shaders DIR`) safe to measure.
//! - **Time.** The passing variants are forced one by one through the op's
//!   own `variant` option (the same choice `--variant FAMILY=NAME` makes for a
//!   whole run) and measured with [`measure`]; the table gives each one's share
//!   of the best time on that shape (100 % = the best).
//! - **Autotune.** With `--autotune` the winners are written to a cache file per
//!   adapter, keyed by shape bucket ([`matmul_bucket`] …), but only where the
//!   winner beats the built-in default by [`AUTOTUNE_MIN_GAIN`]: elsewhere the
//!   default stays. When the cache exists, the ops' default choice consults it
//!   ([`tuned_variant`]); an explicit variant (in the call or `--variant`) wins.
//!   A cache that cannot be read is reported once and ignored.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::bench::{BenchArgs, Case, measure};
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu};

// ---------------------------------------------------------------------------
// The families and what each contributes.
// ---------------------------------------------------------------------------

/// A kernel family with swappable variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Matmul,
    /// `conv` in bench names, `conv2d` in `--variant conv2d=NAME`.
    Conv,
    Attention,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Matmul, Family::Conv, Family::Attention];

    /// The bench family name (`fsd3d bench conv`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Matmul => "matmul",
            Family::Conv => "conv",
            Family::Attention => "attention",
        }
    }

    /// The op family name, as in `--variant conv2d=NAME` and the kernel labels.
    pub fn op_name(self) -> &'static str {
        match self {
            Family::Matmul => "matmul",
            Family::Conv => "conv2d",
            Family::Attention => "attention",
        }
    }

    /// Parses a bench or op family name.
    pub fn parse(s: &str) -> Result<Family> {
        match s {
            "matmul" => Ok(Family::Matmul),
            "conv" | "conv2d" => Ok(Family::Conv),
            "attention" => Ok(Family::Attention),
            _ => Err(Error::Invalid(format!(
                "{s:?} has no kernel variants to compare: --variants takes matmul, conv or attention (or nothing for all three)"
            ))),
        }
    }

    /// The variants this device can run, by name.
    pub fn variant_names(self, caps: Caps) -> Vec<&'static str> {
        match self {
            Family::Matmul => crate::bench::matmul::variant_names(caps),
            Family::Conv => crate::bench::conv::variant_names(caps),
            Family::Attention => crate::bench::attention::variant_names(caps),
        }
    }

    /// Outputs of `variant` on the check shapes next to their references.
    fn check_samples(self, gpu: &Gpu, variant: &str, dtype: DType) -> Result<Vec<Sample>> {
        match self {
            Family::Matmul => crate::bench::matmul::check_samples(gpu, variant, dtype),
            Family::Conv => crate::bench::conv::check_samples(gpu, variant, dtype),
            Family::Attention => crate::bench::attention::check_samples(gpu, variant, dtype),
        }
    }

    /// The shapes the variants are timed on; `quick` the small ones.
    fn problems(self, quick: bool) -> Vec<Box<dyn VariantProblem>> {
        match self {
            Family::Matmul => crate::bench::matmul::variant_problems(quick),
            Family::Conv => crate::bench::conv::variant_problems(quick),
            Family::Attention => crate::bench::attention::variant_problems(quick),
        }
    }
}

/// One problem size of a family that can be recorded with any of its variants.
pub(crate) trait VariantProblem {
    /// How the table names the shape.
    fn shape(&self) -> String;
    /// The autotune bucket this problem falls in.
    fn bucket(&self, dtype: DType) -> String;
    /// The variant the op picks on this device without a cache or override.
    fn default_variant(&self, gpu: &Gpu) -> &'static str;
    /// Whether timing `variant` here takes reasonable time (the one-output
    /// baselines take minutes per call at Stable Diffusion sizes).
    fn affordable(&self, variant: &str) -> bool;
    /// A case that records this problem with `variant`.
    fn case<'a>(&self, gpu: &'a Gpu, variant: &str, dtype: DType) -> Result<Case<'a>>;
}

// ---------------------------------------------------------------------------
// Checking against the CPU reference.
// ---------------------------------------------------------------------------

/// A kernel's output on one check shape next to its CPU reference.
pub(crate) struct Sample {
    pub shape: String,
    pub got: Vec<f32>,
    pub want: Vec<f64>,
}

/// Allowed error of a check, relative to max(1, max |reference|): f32 sums of
/// at most ~60 terms are within a few f32 ulps (~1e-6); f16 results are
/// rounded to 11 bits once or twice (2 · 2⁻¹¹ ≈ 1e-3), with margin.
pub fn check_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 4e-3,
        _ => 5e-5,
    }
}

/// The type a variant multiplies in: the matrix-unit GEMMs (`coop`, in
/// matmul and conv2d) round their operands to f16 where the device has it,
/// whatever the storage type; the other kernels multiply in the storage type.
fn operand_dtype(gpu: &Gpu, variant: &str, dtype: DType) -> DType {
    use crate::ops::gemm::{GemmCore, operand_dtype};
    if variant == "coop" && operand_dtype(GemmCore::Coop, gpu.caps()) == DType::F16 { DType::F16 } else { dtype }
}

/// The outcome of checking one variant in one dtype.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub family: &'static str,
    pub variant: String,
    pub dtype: String,
    /// The check shapes, as the table names them.
    pub shapes: String,
    /// Worst |got − want| / max(1, max |want|) over the check shapes (NaN counts as infinite).
    pub max_error: f64,
    pub allowed: f64,
    /// Set when the variant failed to run at all (a shader that does not compile …).
    pub error: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.max_error <= self.allowed
    }

    /// `ok`, `WRONG` or `error`.
    pub fn status(&self) -> &'static str {
        match (&self.error, self.passed()) {
            (Some(_), _) => "error",
            (None, true) => "ok",
            (None, false) => "WRONG",
        }
    }

    /// One line for the log: status, error, what was checked.
    pub fn describe(&self) -> String {
        match &self.error {
            Some(e) => format!("error: {e}"),
            None => format!("{} (max err {:.2e}, allowed {:.0e}) on {}", self.status(), self.max_error, self.allowed, self.shapes),
        }
    }
}

fn relative_error(samples: &[Sample]) -> f64 {
    let mut worst = 0.0f64;
    for s in samples {
        let scale = s.want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
        for (g, w) in s.got.iter().zip(&s.want) {
            let e = (*g as f64 - w).abs() / scale;
            worst = if e.is_nan() { f64::INFINITY } else { worst.max(e) };
        }
        if s.got.len() != s.want.len() {
            worst = f64::INFINITY;
        }
    }
    worst
}

/// Runs `variant` of `family` on the check shapes and compares with the CPU
/// reference. Never fails: a variant that cannot run is a failed check.
pub fn check_variant(gpu: &Gpu, family: Family, variant: &str, dtype: DType) -> Check {
    let mut check = Check {
        family: family.name(),
        variant: variant.to_string(),
        dtype: dtype.to_string(),
        shapes: String::new(),
        max_error: f64::INFINITY,
        allowed: check_tolerance(operand_dtype(gpu, variant, dtype)),
        error: None,
    };
    match family.check_samples(gpu, variant, dtype) {
        Ok(samples) => {
            check.shapes = samples.iter().map(|s| s.shape.as_str()).collect::<Vec<_>>().join("; ");
            check.max_error = relative_error(&samples);
        }
        Err(e) => check.error = Some(e.to_string()),
    }
    check
}

/// Deterministic inputs in [-1, 1) (xorshift), for checks and timings.
pub(crate) fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// The values as the device stores them in `dtype` (f16 rounding), as f64
/// for the references.
pub(crate) fn as_stored(v: &[f32], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect(),
        _ => v.iter().map(|&x| x as f64).collect(),
    }
}

// ---------------------------------------------------------------------------
// Timing: the table.
// ---------------------------------------------------------------------------

/// One line of the variants table.
#[derive(Clone, Debug, Serialize)]
pub struct VariantRow {
    pub family: &'static str,
    pub variant: String,
    pub shape: String,
    pub dtype: String,
    pub adapter: String,
    /// Mean time per call; None when not timed (failed check, skipped, error).
    pub ms: Option<f64>,
    pub gflops: Option<f64>,
    /// Best time on this shape and dtype ÷ this one, in percent (100 = the best).
    pub share: Option<f64>,
    /// `ok`, `WRONG`, `error` or `skipped`.
    pub status: String,
    /// The check's worst relative error.
    pub check_error: f64,
    /// Why a row was not timed, or that it is the device's default.
    pub note: String,
}

/// The autotune decision for one shape bucket.
#[derive(Clone, Debug, Serialize)]
pub struct TuneDecision {
    pub family: &'static str,
    pub bucket: String,
    pub shape: String,
    pub default: String,
    pub default_ms: Option<f64>,
    pub best: String,
    pub best_ms: f64,
    /// Whether the cache now names `best` for this bucket.
    pub written: bool,
}

/// Everything `bench --variants` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VariantsReport {
    pub checks: Vec<Check>,
    pub rows: Vec<VariantRow>,
    pub decisions: Vec<TuneDecision>,
}

/// How [`measure_variants`] reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Nothing printed (tests).
    Silent,
    /// The checks, then the table, one shape at a time.
    Table,
    /// One JSON object per table row.
    Json,
}

/// What to measure: families, dtypes, shapes, time per case.
#[derive(Clone, Debug)]
pub struct VariantsPlan {
    pub families: Vec<Family>,
    pub dtypes: Vec<DType>,
    pub quick: bool,
    pub seconds: f64,
    pub output: Output,
}

impl VariantsPlan {
    /// The plan `fsd3d bench` arguments describe.
    pub fn from_args(gpu: &Gpu, args: &BenchArgs) -> Result<VariantsPlan> {
        let chosen = match args.variants.as_deref().filter(|v| *v != "all") {
            Some(f) => Some(f),
            None => args.family.as_deref(),
        };
        let families = match chosen {
            Some(f) => vec![Family::parse(f)?],
            None => Family::ALL.to_vec(),
        };
        Ok(VariantsPlan {
            families,
            dtypes: crate::bench::dtypes(gpu, args)?,
            quick: args.quick,
            seconds: args.seconds,
            output: if args.json { Output::Json } else { Output::Table },
        })
    }
}

fn print_header() {
    println!(
        "{:<9} {:<10} {:<42} {:<5} {:>10} {:>9} {:>6}  check",
        "family", "variant", "shape", "dtype", "ms", "GFLOP/s", "share"
    );
}

fn print_row(r: &VariantRow, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("a row serialises"));
        return;
    }
    let ms = r.ms.map_or("-".into(), |v| format!("{v:.3}"));
    let gf = r.gflops.map_or("-".into(), |v| format!("{v:.2}"));
    let share = r.share.map_or("-".into(), |v| format!("{v:.0}%"));
    let check = match r.status.as_str() {
        "ok" => format!("ok {:.0e}", r.check_error),
        "WRONG" => format!("WRONG: max err {:.2e}, not timed", r.check_error),
        _ => r.status.clone(),
    };
    let note = if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) };
    println!("{:<9} {:<10} {:<42} {:<5} {:>10} {:>9} {:>6}  {check}{note}", r.family, r.variant, r.shape, r.dtype, ms, gf, share);
}

/// Checks every variant of the plan's families first, then times those that
/// passed, printing each shape's rows as soon as they are complete.
pub fn measure_variants(gpu: &Gpu, plan: &VariantsPlan) -> Result<VariantsReport> {
    let mut report = VariantsReport::default();
    let table = plan.output == Output::Table;
    if table {
        println!("adapter: {}", gpu.adapter_name());
    }
    let mut checks: HashMap<(Family, String, DType), Check> = HashMap::new();
    for &family in &plan.families {
        for &dtype in &plan.dtypes {
            for name in family.variant_names(gpu.caps()) {
                let c = check_variant(gpu, family, name, dtype);
                if table {
                    println!("check {}.{name} {dtype}: {}", family.op_name(), c.describe());
                }
                checks.insert((family, name.to_string(), dtype), c.clone());
                report.checks.push(c);
            }
        }
    }
    if table {
        print_header();
    }
    for &family in &plan.families {
        let names = family.variant_names(gpu.caps());
        for problem in family.problems(plan.quick) {
            for &dtype in &plan.dtypes {
                let check = |name: &str| &checks[&(family, name.to_string(), dtype)];
                let group = time_problem(gpu, family, problem.as_ref(), dtype, &names, check, plan.seconds);
                if plan.output != Output::Silent {
                    group.iter().for_each(|r| print_row(r, plan.output == Output::Json));
                }
                report.decisions.push(decide(family, problem.as_ref(), dtype, gpu, &group));
                report.rows.extend(group);
            }
        }
    }
    Ok(report)
}

/// The rows of one shape and dtype: every variant, timed where it passed its check.
fn time_problem<'a>(
    gpu: &Gpu,
    family: Family,
    problem: &dyn VariantProblem,
    dtype: DType,
    names: &[&'static str],
    check_of: impl Fn(&str) -> &'a Check,
    seconds: f64,
) -> Vec<VariantRow> {
    let default = problem.default_variant(gpu);
    let mut rows: Vec<VariantRow> = names
        .iter()
        .map(|&name| {
            let check = check_of(name);
            let mut row = VariantRow {
                family: family.name(),
                variant: name.to_string(),
                shape: problem.shape(),
                dtype: dtype.to_string(),
                adapter: gpu.adapter_name(),
                ms: None,
                gflops: None,
                share: None,
                status: check.status().to_string(),
                check_error: check.max_error,
                note: if name == default { "default".into() } else { String::new() },
            };
            // A variant that failed its check is not timed (a WRONG row keeps its "default" note).
            if let Some(e) = &check.error {
                row.note = format!("failed to run: {}", e.lines().next().unwrap_or_default());
            } else if !check.passed() {
                return row;
            } else if !problem.affordable(name) {
                row.status = "skipped".into();
                row.note = "a baseline that takes minutes at this size".into();
            } else {
                match problem.case(gpu, name, dtype).and_then(|mut c| measure(gpu, &mut c, seconds)) {
                    Ok(m) => {
                        row.ms = Some(m.ms);
                        row.gflops = m.gflops;
                    }
                    Err(e) => {
                        row.status = "error".into();
                        row.note = e.to_string();
                    }
                }
            }
            row
        })
        .collect();
    let best = rows.iter().filter_map(|r| r.ms).fold(f64::INFINITY, f64::min);
    for r in &mut rows {
        r.share = r.ms.map(|ms| 100.0 * best / ms);
    }
    rows
}

/// Gain over the default a variant needs before autotune records it: below
/// this the difference is within the noise of a shared machine.
pub const AUTOTUNE_MIN_GAIN: f64 = 0.10;

fn decide(family: Family, problem: &dyn VariantProblem, dtype: DType, gpu: &Gpu, rows: &[VariantRow]) -> TuneDecision {
    let default = problem.default_variant(gpu);
    let default_ms = rows.iter().find(|r| r.variant == default).and_then(|r| r.ms);
    let (best, best_ms) = rows
        .iter()
        .filter_map(|r| r.ms.map(|ms| (r.variant.clone(), ms)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_else(|| (default.to_string(), f64::INFINITY));
    // A winner pays when the default was not timed (failed its check) or is
    // slower by more than the margin.
    let pays = best != default && best_ms.is_finite() && default_ms.is_none_or(|d| best_ms < d * (1.0 - AUTOTUNE_MIN_GAIN));
    TuneDecision {
        family: family.name(),
        bucket: problem.bucket(dtype),
        shape: problem.shape(),
        default: default.to_string(),
        default_ms,
        best,
        best_ms,
        written: pays,
    }
}

/// `fsd3d bench --variants [FAMILY]` (and `--autotune`): prints the checks and
/// the table, writes the autotune cache when asked.
pub fn run(gpu: &Gpu, args: &BenchArgs) -> Result<VariantsReport> {
    let plan = VariantsPlan::from_args(gpu, args)?;
    let mut report = measure_variants(gpu, &plan)?;
    if args.autotune {
        let path = cache_path(gpu).ok_or_else(|| {
            Error::Invalid(format!(
                "--autotune: no cache location (set {ENV_AUTOTUNE_CACHE} to a file path, or HOME / XDG_CACHE_HOME)"
            ))
        })?;
        let written = write_autotune(gpu, &path, &mut report.decisions)?;
        if !args.json {
            print_decisions(&report.decisions, &path, written);
        }
    }
    Ok(report)
}

fn print_decisions(decisions: &[TuneDecision], path: &Path, written: usize) {
    println!("autotune ({}% margin over the default):", (AUTOTUNE_MIN_GAIN * 100.0) as u32);
    for d in decisions {
        let default_ms = d.default_ms.map_or("-".into(), |v| format!("{v:.3}"));
        let verdict = if d.written { format!("use {}", d.best) } else { "keep the default".into() };
        println!(
            "  {:<9} {:<32} default {} {} ms, best {} {:.3} ms: {verdict}",
            d.family, d.bucket, d.default, default_ms, d.best, d.best_ms
        );
    }
    println!("{written} bucket(s) tuned; cache written to {}", path.display());
}

// ---------------------------------------------------------------------------
// Autotune: buckets, the cache file, the lookup the ops make.
// ---------------------------------------------------------------------------

pub use crate::gpu::autotune::{AutotuneCache, ENV_AUTOTUNE_CACHE, TunedEntry, adapter_slug, cache_path, caps_key, tuned_variant};
pub use crate::ops::attention::autotune_bucket as attention_bucket;
pub use crate::ops::conv2d::autotune_bucket as conv_bucket;
pub use crate::ops::matmul::autotune_bucket as matmul_bucket;
use crate::gpu::autotune::remember;

/// Updates the cache at `path` with the decisions (winners in, buckets where
/// the default won out) and returns how many buckets it now tunes from this run.
fn write_autotune(gpu: &Gpu, path: &Path, decisions: &mut [TuneDecision]) -> Result<usize> {
    let mut cache = match AutotuneCache::load(path) {
        Ok(Some(c)) if c.is_for(gpu) => c,
        Ok(Some(c)) => {
            eprintln!("note: {} was tuned on {} ({}); starting it afresh for this adapter", path.display(), c.adapter, c.driver);
            AutotuneCache::new(gpu)
        }
        Ok(None) => AutotuneCache::new(gpu),
        Err(e) => {
            eprintln!("warning: {e}; starting it afresh");
            AutotuneCache::new(gpu)
        }
    };
    let caps = caps_key(gpu.caps());
    let mut written = 0;
    for d in decisions.iter() {
        let family = Family::parse(d.family)?.op_name();
        if d.written {
            written += 1;
            cache.insert(TunedEntry {
                caps: caps.clone(),
                family: family.into(),
                bucket: d.bucket.clone(),
                variant: d.best.clone(),
                shape: d.shape.clone(),
                default: d.default.clone(),
                default_ms: d.default_ms,
                ms: d.best_ms,
            });
        } else {
            cache.remove(&caps, family, &d.bucket);
        }
    }
    cache.save(path)?;
    remember(gpu, path, Some(Arc::new(cache)));
    Ok(written)
}

