//! Kernel measurements shared by `cargo bench` and `fsd3d bench`.
//!
//! Each family contributes cases (a closure that records one iteration, with
//! its FLOP and byte counts). The runner warms up, then records batches of
//! iterations with one submit each until enough time has passed, and reports
//! the mean time per iteration with GFLOP/s and GB/s.
//!
//! [`variants`] compares the kernel variants of a family (checked against a
//! CPU reference first) and autotunes the ops' default choice; [`unet`] times
//! whole UNet steps, with random weights where the checkpoint is not at hand;
//! [`fsd_step`] times whole iterations of `fsd3d generate` (not part of the
//! families run when none is named: it needs `--random-weights` or `--model`).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};

pub mod attention;
pub mod conv;
pub mod fsd_step;
pub mod matmul;
pub mod metrics;
pub mod random;
pub mod scene;
pub mod unet;
pub mod variants;

/// The bench families, in the order `fsd3d bench` runs them.
pub const FAMILIES: [&str; 6] = ["matmul", "conv", "attention", "scene", "unet", "metrics"];

/// Options of `fsd3d bench`.
#[derive(Args, Clone, Debug, Default)]
pub struct BenchArgs {
    /// Family to measure: matmul, conv, attention, scene, unet, metrics (all when omitted),
    /// or fsd-step: one whole iteration of `fsd3d generate` (with --random-weights or --model).
    pub family: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Smallest shapes only (a quick check that every case runs); fsd-step:
    /// the tiny test pipeline's configs (with --random-weights) and a small scene.
    #[arg(long)]
    pub quick: bool,
    /// Seconds to spend measuring each case after warm-up; 0 = one timed iteration.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Compare every kernel variant of matmul, conv and attention (or of FAMILY):
    /// each is checked against a CPU reference first (a wrong one is reported as
    /// WRONG and not timed), then timed on the same shapes.
    // Its own id: the global `--variant` is stored under "variants".
    #[arg(id = "compare_variants", long = "variants", value_name = "FAMILY", num_args = 0..=1, default_missing_value = "all")]
    pub variants: Option<String>,
    /// Like --variants, then writes the winners that beat the default to the
    /// adapter's autotune cache, which the ops consult from then on
    /// (FSD3D_AUTOTUNE_CACHE=FILE or off; default ~/.cache/fsd3d/autotune-ADAPTER.json).
    #[arg(long)]
    pub autotune: bool,
    /// unet: also time Stable Diffusion 1.5 (or --model's config) with random
    /// weights drawn from a seeded normal: speed needs the shapes, not the values.
    /// fsd-step: Stable Diffusion 1.5's UNet, VAE and text encoder so made.
    #[arg(long)]
    pub random_weights: bool,
    /// unet: time this UNet folder (a pipeline or its unet/ folder) instead of the
    /// built-in list; with --random-weights only its config.json is read.
    /// fsd-step: this diffusers pipeline folder (with --random-weights, its configs).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Measure only this storage type (f32 or f16); default both where the adapter has f16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// fsd-step: timed iterations after the warm-up (default: as many as fit in
    /// --seconds, at least one).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
}

/// The storage types to measure: `--dtype`, else f32 and (where the adapter has it) f16.
pub fn dtypes(gpu: &Gpu, args: &BenchArgs) -> Result<Vec<DType>> {
    match args.dtype.as_deref() {
        Some(s) => {
            let d = DType::parse(s)?;
            if d == DType::U32 {
                return Err(Error::Invalid("--dtype: the kernels are measured in f32 or f16, not u32".into()));
            }
            if d == DType::F16 && !gpu.features().f16 {
                return Err(Error::Invalid(format!(
                    "--dtype f16: {} has no SHADER_F16 (or it was switched off); use --dtype f32",
                    gpu.adapter_name()
                )));
            }
            Ok(vec![d])
        }
        None if gpu.features().f16 => Ok(vec![DType::F32, DType::F16]),
        None => Ok(vec![DType::F32]),
    }
}

/// One measured case: `record` records one iteration (it must not submit).
pub struct Case<'a> {
    pub kernel: String,
    pub shape: String,
    pub dtype: DType,
    /// Floating-point operations per iteration (0 when not meaningful).
    pub flops: f64,
    /// Bytes read and written per iteration, at minimum.
    pub bytes: f64,
    pub record: Box<dyn FnMut() -> Result<()> + 'a>,
}

/// The measurement of one case, as printed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    pub kernel: String,
    pub shape: String,
    pub dtype: String,
    pub adapter: String,
    pub ms: f64,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
    pub iterations: u32,
}

/// Times one case: warm-up (pipeline compilation), then batches until
/// `seconds` pass; with `seconds` ≤ 0 the one iteration after the warm-up is
/// the measurement (for cases that take seconds each).
pub fn measure(gpu: &Gpu, case: &mut Case<'_>, seconds: f64) -> Result<Measurement> {
    (case.record)()?;
    gpu.sync()?;
    let t0 = Instant::now();
    (case.record)()?;
    gpu.sync()?;
    let one = t0.elapsed().max(Duration::from_micros(1));
    let (elapsed, iterations) = if seconds <= 0.0 {
        (one, 1u32)
    } else {
        let batch = ((0.1 / one.as_secs_f64()).ceil() as u32).clamp(1, 256);
        let mut iterations = 0u32;
        let start = Instant::now();
        while iterations == 0 || start.elapsed().as_secs_f64() < seconds {
            for _ in 0..batch {
                (case.record)()?;
            }
            gpu.sync()?;
            iterations += batch;
        }
        (start.elapsed(), iterations)
    };
    let ms = elapsed.as_secs_f64() * 1e3 / iterations as f64;
    let per_s = |x: f64| (x > 0.0).then(|| x / (ms * 1e-3) / 1e9);
    Ok(Measurement {
        kernel: case.kernel.clone(),
        shape: case.shape.clone(),
        dtype: case.dtype.to_string(),
        adapter: gpu.adapter_name(),
        ms,
        gflops: per_s(case.flops),
        gbps: per_s(case.bytes),
        iterations,
    })
}

/// The cases of a family (or of all when `family` is None), with the default options.
pub fn cases<'a>(gpu: &'a Gpu, family: Option<&str>, quick: bool) -> Result<Vec<Case<'a>>> {
    cases_for(gpu, &BenchArgs { family: family.map(String::from), quick, ..Default::default() })
}

/// The cases `args` ask for (family, quick, UNet options, dtype).
pub fn cases_for<'a>(gpu: &'a Gpu, args: &BenchArgs) -> Result<Vec<Case<'a>>> {
    let family = args.family.as_deref();
    if family == Some(fsd_step::FSD_STEP) {
        return Err(Error::Invalid("fsd-step times whole iterations, not kernel cases: run it through bench::run (`fsd3d bench fsd-step`)".into()));
    }
    if let Some(f) = family.filter(|f| !FAMILIES.contains(f)) {
        return Err(Error::Invalid(format!(
            "unknown bench family {f:?}: expected one of {}, or {}",
            FAMILIES.join(", "),
            fsd_step::FSD_STEP
        )));
    }
    let want = |f: &str| family.is_none_or(|x| x == f);
    let mut v = Vec::new();
    if want("matmul") {
        v.extend(matmul::cases(gpu, args.quick)?);
    }
    if want("conv") {
        v.extend(conv::cases(gpu, args.quick)?);
    }
    if want("attention") {
        v.extend(attention::cases(gpu, args.quick)?);
    }
    if want("scene") {
        v.extend(scene::cases(gpu, args.quick)?);
    }
    if want("unet") {
        v.extend(unet::cases(gpu, args)?);
    }
    if want("metrics") {
        v.extend(metrics::cases(gpu, args)?);
    }
    if args.dtype.is_some() {
        let keep = dtypes(gpu, args)?;
        v.retain(|c| keep.contains(&c.dtype));
    }
    Ok(v)
}

/// Runs and prints the cases (`fsd3d bench`, `cargo bench`); with
/// `--variants` or `--autotune` the variants table instead
/// ([`variants::run`]; its timed rows are returned).
pub fn run(gpu: &Gpu, args: &BenchArgs) -> Result<Vec<Measurement>> {
    if args.family.as_deref() == Some(fsd_step::FSD_STEP) {
        return Ok(fsd_step::run(gpu, args)?.iter().map(fsd_step::FsdStepReport::measurement).collect());
    }
    if args.steps.is_some() {
        return Err(Error::Invalid(format!("--steps counts the iterations of `bench {}`; the other benches time for --seconds", fsd_step::FSD_STEP)));
    }
    if args.variants.is_some() || args.autotune {
        let report = variants::run(gpu, args)?;
        return Ok(report
            .rows
            .into_iter()
            .filter_map(|r| {
                let ms = r.ms?;
                Some(Measurement {
                    kernel: format!("{}.{}", r.family, r.variant),
                    shape: r.shape,
                    dtype: r.dtype,
                    adapter: r.adapter,
                    ms,
                    gflops: r.gflops,
                    gbps: None,
                    iterations: 0,
                })
            })
            .collect());
    }
    let mut out = Vec::new();
    if !args.json {
        println!("adapter: {}", gpu.adapter_name());
        println!("{:<28} {:<28} {:<5} {:>10} {:>10} {:>9}", "kernel", "shape", "dtype", "ms", "GFLOP/s", "GB/s");
    }
    for mut case in cases_for(gpu, args)? {
        let m = measure(gpu, &mut case, args.seconds)?;
        if args.json {
            println!("{}", serde_json::to_string(&m).expect("measurement serialises"));
        } else {
            let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!("{:<28} {:<28} {:<5} {:>10.3} {:>10} {:>9}", m.kernel, m.shape, m.dtype, m.ms, f(m.gflops), f(m.gbps));
        }
        out.push(m);
    }
    Ok(out)
}
