//! Kernel measurements shared by `cargo bench` and `fsd3d bench`.
//!
//! Each family contributes cases (a closure that records one iteration, with
//! its FLOP and byte counts). The runner warms up, then records batches of
//! iterations with one submit each until enough time has passed, and reports
//! the mean time per iteration with GFLOP/s and GB/s.
use std::time::{Duration, Instant};

use clap::Args;

use crate::error::Result;
use crate::gpu::{DType, Gpu};

pub mod attention;
pub mod conv;
pub mod matmul;
pub mod scene;

/// Options of `fsd3d bench`.
#[derive(Args, Clone, Debug, Default)]
pub struct BenchArgs {
    /// Kernel family to measure: matmul, conv, attention, scene (all when omitted).
    pub family: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Smallest shapes only (a quick check that every case runs).
    #[arg(long)]
    pub quick: bool,
    /// Seconds to spend measuring each case (after warm-up).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
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

/// Times one case: warm-up (pipeline compilation), then batches until `seconds` pass.
pub fn measure(gpu: &Gpu, case: &mut Case<'_>, seconds: f64) -> Result<Measurement> {
    (case.record)()?;
    gpu.sync()?;
    let t0 = Instant::now();
    (case.record)()?;
    gpu.sync()?;
    let one = t0.elapsed().max(Duration::from_micros(1));
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
    let ms = start.elapsed().as_secs_f64() * 1e3 / iterations as f64;
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

/// The cases of a family (or of all when `family` is None).
pub fn cases<'a>(gpu: &'a Gpu, family: Option<&str>, quick: bool) -> Result<Vec<Case<'a>>> {
    let mut v = Vec::new();
    let want = |f: &str| family.is_none_or(|x| x == f);
    if want("matmul") {
        v.extend(matmul::cases(gpu, quick)?);
    }
    if want("conv") {
        v.extend(conv::cases(gpu, quick)?);
    }
    if want("attention") {
        v.extend(attention::cases(gpu, quick)?);
    }
    if want("scene") {
        v.extend(scene::cases(gpu, quick)?);
    }
    if let Some(f) = family {
        if !["matmul", "conv", "attention", "scene"].contains(&f) {
            return Err(crate::Error::Invalid(format!("unknown bench family {f:?}: expected matmul, conv, attention or scene")));
        }
    }
    Ok(v)
}

/// Runs and prints the cases (`fsd3d bench`, `cargo bench`).
pub fn run(gpu: &Gpu, args: &BenchArgs) -> Result<Vec<Measurement>> {
    let mut out = Vec::new();
    if !args.json {
        println!("adapter: {}", gpu.adapter_name());
        println!("{:<28} {:<28} {:<5} {:>10} {:>10} {:>9}", "kernel", "shape", "dtype", "ms", "GFLOP/s", "GB/s");
    }
    for mut case in cases(gpu, args.family.as_deref(), args.quick)? {
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
