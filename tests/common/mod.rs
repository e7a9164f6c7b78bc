//! Shared test helpers: the devices (every optional feature on, and all off),
//! seeded random inputs, f16 rounding and tolerance checks scaled to the dtype.
#![allow(dead_code)]
pub mod inception_formula;
use std::sync::{Arc, OnceLock};

use fsd3d::gpu::{DType, Features, Gpu, GpuOptions};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The two device configurations every kernel is tested on: all optional
/// features the adapter has, and none of them (every fallback path).
pub fn gpus() -> Vec<Arc<Gpu>> {
    static ON: OnceLock<Arc<Gpu>> = OnceLock::new();
    static OFF: OnceLock<Arc<Gpu>> = OnceLock::new();
    let on = ON.get_or_init(|| Gpu::new(&GpuOptions::default()).expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)"));
    let off = OFF.get_or_init(|| {
        Gpu::new(&GpuOptions { disable: Features::ALL, ..Default::default() }).expect("a GPU adapter")
    });
    vec![on.clone(), off.clone()]
}

/// The device with every feature the adapter has.
pub fn gpu() -> Arc<Gpu> {
    gpus().remove(0)
}

/// (device, storage dtype) pairs: f32 everywhere, f16 where the device has it.
pub fn configs() -> Vec<(Arc<Gpu>, DType)> {
    let mut v = Vec::new();
    for g in gpus() {
        v.push((g.clone(), DType::F32));
        if g.features().f16 {
            v.push((g.clone(), DType::F16));
        }
    }
    v
}

pub fn label(gpu: &Gpu, dtype: DType) -> String {
    format!("{dtype} [{}]", gpu.features().names().join(","))
}

pub fn rand_vec(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// Standard normal samples (Box-Muller).
pub fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = r.random_range(1e-12..1.0);
            let u2: f64 = r.random_range(0.0..1.0);
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Values as the device stores them in `dtype` (f16 rounding), so that the CPU
/// reference sees the same inputs as the kernel.
pub fn quantize(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Relative tolerance per storage type for results of short reductions.
pub fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 4e-3,
        _ => 2e-5,
    }
}

/// Asserts max |got − want| ≤ rtol · max(1, max |want|), printing the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let mut worst = (0usize, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if !(e <= worst.1) {
            worst = (i, if e.is_nan() { f32::INFINITY } else { e });
        }
    }
    assert!(
        worst.1 <= rtol * scale,
        "{what}: max abs error {} at {} (got {}, want {}), allowed {} (scale {scale})",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0],
        rtol * scale
    );
}

/// The type whose rounding bounds a kernel's error: the matrix-unit GEMMs
/// (`coop` variants) multiply f16 operands whatever the storage type, where
/// the device has f16; every other kernel multiplies in its storage type.
pub fn operand_type(gpu: &Gpu, coop: bool, storage: DType) -> DType {
    use fsd3d::ops::gemm::{GemmCore, operand_dtype};
    if coop && operand_dtype(GemmCore::Coop, gpu.caps()) == DType::F16 { DType::F16 } else { storage }
}
