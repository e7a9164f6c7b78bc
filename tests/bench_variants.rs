//! `fsd3d bench --variants`, `--autotune` and `bench unet --random-weights`:
//! every variant passes the bench's own CPU check, a broken swapped-in shader
//! is caught as WRONG and not timed, the autotune cache round-trips and a bad
//! one is ignored with a warning, the ops follow the cache unless told
//! otherwise, and a random-weights UNet runs.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use fsd3d::bench::unet::{BENCH_RANDOM_WEIGHTS, StepInputs, random_unet, step};
use fsd3d::bench::variants::{
    self as bv, AutotuneCache, Family, Output, TunedEntry, VariantsPlan, caps_key, check_variant, matmul_bucket,
};
use fsd3d::bench::{BenchArgs, cases_for, measure};
use fsd3d::gpu::{DType, Gpu, GpuOptions, kernel};
use fsd3d::models::weights::{RandomWeights, Weights};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fsd3d-bv-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every variant on every configuration, but the matrix units' emulated
/// twin (`coop`) on the first only: each of its kernels costs lavapipe
/// seconds to compile, and tests/gemm.rs and tests/attention.rs run it in f16
/// and without features.
#[test]
fn every_variant_passes_the_bench_check() {
    for (i, (gpu, dtype)) in configs().into_iter().enumerate() {
        for family in Family::ALL {
            let names = family.variant_names(gpu.caps());
            assert!(names.len() >= 2, "{} lists {names:?}", family.name());
            for name in names.into_iter().filter(|n| i == 0 || *n != "coop") {
                let c = check_variant(&gpu, family, name, dtype);
                eprintln!("{}.{name} {}: {}", family.op_name(), label(&gpu, dtype), c.describe());
                assert!(c.passed(), "{}.{name} {}: {}", family.op_name(), label(&gpu, dtype), c.describe());
                assert!(c.max_error.is_finite() && !c.shapes.is_empty());
            }
        }
    }
}

/// A shader folder whose matmul.wgsl writes 7 for every quad of C: the
/// register-blocked variants (blocked, subgroup) store through it; `simple`
/// does not, nor do the tiled GEMMs (`tiled`, `coop`: gemm.wgsl).
fn constant_matmul_dir() -> PathBuf {
    let dir = tmp("constant-matmul");
    let good = kernel::ShaderSource::builtin().load("matmul.wgsl").unwrap().1;
    let store = "c[(bi * p.m + m + r) * p.n + n + j] = {{TO}}(q[j][r] * p.alpha);";
    assert!(good.contains(store), "matmul.wgsl changed: update this test's replacement");
    std::fs::write(dir.join("matmul.wgsl"), good.replace(store, "c[(bi * p.m + m + r) * p.n + n + j] = {{TO}}(7.0);")).unwrap();
    dir
}

#[test]
fn a_swapped_shader_that_writes_a_constant_is_wrong_and_not_timed() {
    let dir = constant_matmul_dir();
    let gpu = Gpu::new(&GpuOptions { shader_dir: Some(dir.clone()), ..Default::default() }).unwrap();
    let plan = VariantsPlan { families: vec![Family::Matmul], dtypes: vec![DType::F32], quick: true, seconds: 0.0, output: Output::Silent };
    let report = bv::measure_variants(&gpu, &plan).unwrap();
    for c in &report.checks {
        eprintln!("{}.{}: {}", c.family, c.variant, c.describe());
        if ["simple", "tiled", "coop"].contains(&c.variant.as_str()) {
            assert!(c.passed(), "{} does not use the broken store: {}", c.variant, c.describe());
        } else {
            assert_eq!(c.status(), "WRONG", "{}: {}", c.variant, c.describe());
            assert!(c.max_error > 0.5, "{}", c.describe());
        }
    }
    assert!(report.checks.iter().any(|c| c.variant == "blocked"));
    let sound = ["simple", "tiled", "coop"];
    for r in &report.rows {
        if sound.contains(&r.variant.as_str()) {
            assert!(r.ms.is_some_and(|ms| ms > 0.0), "{r:?}");
        } else {
            assert!(r.status == "WRONG" && r.ms.is_none() && r.share.is_none(), "{r:?}");
        }
    }
    // Autotune never picks a wrong variant: only the sound ones were timed.
    assert!(report.decisions.iter().all(|d| sound.contains(&d.best.as_str())), "{:?}", report.decisions);
    std::fs::remove_dir_all(&dir).ok();
}

fn entry(caps: &str, bucket: &str, variant: &str) -> TunedEntry {
    TunedEntry {
        caps: caps.into(),
        family: "matmul".into(),
        bucket: bucket.into(),
        variant: variant.into(),
        shape: "256x256 · 256x256".into(),
        default: "subgroup".into(),
        default_ms: Some(2.0),
        ms: 1.0,
    }
}

#[test]
fn autotune_cache_round_trips_and_replaces_entries() {
    let gpu = gpu();
    let dir = tmp("cache");
    let path = dir.join("nested").join("autotune.json");
    let caps = caps_key(gpu.caps());
    let bucket = matmul_bucket(DType::F32, 256, 250, 129);
    assert_eq!(bucket, "f32 M256 N256 K256", "sizes round up to powers of two");
    let mut cache = AutotuneCache::new(&gpu);
    cache.insert(entry(&caps, &bucket, "blocked"));
    cache.insert(entry(&caps, &bucket, "simple")); // same key: replaces
    cache.insert(entry("no subgroups", &bucket, "blocked"));
    assert_eq!(cache.entries.len(), 2);
    cache.save(&path).unwrap();
    let back = AutotuneCache::load(&path).unwrap().expect("the file was written");
    assert_eq!(back, cache);
    assert!(back.is_for(&gpu));
    assert_eq!(back.lookup(gpu.caps(), "matmul", &bucket), Some("simple"));
    assert_eq!(back.lookup(gpu.caps(), "conv2d", &bucket), None);
    assert_eq!(back.lookup(gpu.caps(), "matmul", &matmul_bucket(DType::F16, 256, 256, 256)), None);
    let off = gpus().remove(1);
    assert_eq!(back.lookup(off.caps(), "matmul", &bucket), Some(if off.caps() == gpu.caps() { "simple" } else { "blocked" }));
    assert!(AutotuneCache::load(&dir.join("none.json")).unwrap().is_none(), "no file is no cache, not an error");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_corrupt_or_foreign_cache_is_a_clear_error() {
    let dir = tmp("corrupt");
    let path = dir.join("autotune.json");
    std::fs::write(&path, "{ this is not json").unwrap();
    let err = AutotuneCache::load(&path).unwrap_err().to_string();
    assert!(err.contains("autotune.json") && err.contains("autotune cache") && err.contains("--autotune"), "{err}");
    let mut cache = AutotuneCache::new(&gpu());
    cache.format = 99;
    cache.save(&path).unwrap();
    let err = AutotuneCache::load(&path).unwrap_err().to_string();
    assert!(err.contains("format 99"), "{err}");
    cache.format = 1;
    cache.adapter = "some other GPU".into();
    assert!(!cache.is_for(&gpu()));
    std::fs::remove_dir_all(&dir).ok();
}

/// `fsd3d bench matmul --quick` (f32, one iteration) with `cache` as the
/// autotune cache: (the kernel it labels the 256³ case with, stderr).
fn bench_256_kernel(cache: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fsd3d"))
        .args(extra)
        .args(["bench", "matmul", "--quick", "--seconds", "0", "--json", "--dtype", "f32"])
        .env("FSD3D_AUTOTUNE_CACHE", cache)
        .env_remove("FSD3D_VARIANTS")
        .env_remove("FSD3D_MATMUL_VARIANTS")
        .env_remove("FSD3D_DISABLE_FEATURES")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(out.status.success(), "fsd3d bench failed:\n{stdout}\n{stderr}");
    let row: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("one JSON row")).unwrap();
    (row["kernel"].as_str().unwrap().to_string(), stderr)
}

#[test]
fn the_ops_follow_the_cache_an_explicit_variant_wins_a_bad_cache_is_ignored() {
    let gpu = gpu();
    let default = fsd3d::ops::matmul::default_variant(&gpu).name();
    // Tune the 256³ bucket to whichever variant is not the default.
    let tuned = if default == "blocked" { "simple" } else { "blocked" };
    let dir = tmp("ops-cache");
    let path = dir.join("autotune.json");
    let mut cache = AutotuneCache::new(&gpu);
    cache.insert(entry(&caps_key(gpu.caps()), &matmul_bucket(DType::F32, 256, 256, 256), tuned));
    cache.save(&path).unwrap();
    assert_eq!(bench_256_kernel(&path, &[]).0, format!("matmul.{tuned}"));
    assert_eq!(bench_256_kernel(&path, &["--variant", "matmul=simple"]).0, "matmul.simple");
    std::fs::write(&path, "[1, 2").unwrap();
    let (kernel, stderr) = bench_256_kernel(&path, &[]);
    assert_eq!(kernel, format!("matmul.{default}"));
    assert!(stderr.contains("warning: ignoring the autotune cache") && stderr.contains("autotune.json"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn random_weights_are_seeded_per_name_and_need_a_shape() {
    let spec = RandomWeights { seed: 3, std: 0.5 };
    let a = spec.values("down.conv.weight", &[4, 3, 3, 3]);
    assert_eq!(a, spec.values("down.conv.weight", &[4, 3, 3, 3]), "same name, same values");
    assert_ne!(a, spec.values("up.conv.weight", &[4, 3, 3, 3]), "each name its own stream");
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
    assert!(mean.abs() < 0.15 && (std - 0.5).abs() < 0.15, "mean {mean} std {std} of 108 draws");
    assert_eq!(spec.values("norm1.weight", &[5]), vec![1.0; 5], "norm scales are 1");
    let w = Weights::random(spec);
    assert!(w.contains("anything"));
    let err = w.f32("text_model.embeddings.token_embedding.weight").unwrap_err().to_string();
    assert!(err.contains("random weights") && err.contains("shape"), "{err}");
    // Named with its shape, a host-side tensor is drawn like an uploaded one.
    assert_eq!(w.f32_shaped("down.conv.weight", &[4, 3, 3, 3]).unwrap(), a);
}

fn float_dtypes(gpu: &Gpu) -> Vec<DType> {
    if gpu.features().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

#[test]
fn a_random_weights_unet_of_a_tiny_config_runs() {
    let config = std::fs::read_to_string(fixture("tests/fixtures/models/sd1_unet/config.json")).unwrap();
    // f32 and f16 (where values could overflow) on the full-featured device;
    // the kernels' fallbacks have their own tests.
    let gpu = gpu();
    for dtype in float_dtypes(&gpu) {
        let unet = random_unet(&gpu, &config, dtype, BENCH_RANDOM_WEIGHTS).unwrap();
        let inputs = StepInputs::new(&gpu, &unet, 2, None).unwrap();
        assert_eq!(inputs.context.shape(), [2, 77, 32]);
        let y = step(&gpu, &unet, &inputs).unwrap();
        assert_eq!(y.shape(), [2, 4, 8, 8], "{}", label(&gpu, dtype));
        let v = gpu.download(&y).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite output", label(&gpu, dtype));
        assert!(v.iter().any(|&x| x != 0.0), "{}: all zero", label(&gpu, dtype));
    }
}

#[test]
fn bench_unet_measures_a_config_with_random_weights() {
    let gpu = gpu();
    let args = BenchArgs {
        family: Some("unet".into()),
        model: Some(fixture("tests/fixtures/models/sd2_unet")),
        random_weights: true,
        dtype: Some("f32".into()),
        ..Default::default()
    };
    let mut cases = cases_for(&gpu, &args).unwrap();
    assert_eq!(cases.len(), 1);
    assert!(cases[0].kernel.contains("random weights") && cases[0].shape == "B2 4x8² ctx 77x48", "{} {}", cases[0].kernel, cases[0].shape);
    let m = measure(&gpu, &mut cases[0], 0.0).unwrap();
    assert!(m.ms > 0.0 && m.iterations == 1, "{m:?}");
}

#[test]
fn bad_bench_arguments_are_clear_errors() {
    let gpu = gpu();
    let args = |f: &str| BenchArgs { variants: Some(f.into()), ..Default::default() };
    let err = VariantsPlan::from_args(&gpu, &args("unet")).unwrap_err().to_string();
    assert!(err.contains("unet") && err.contains("matmul, conv or attention"), "{err}");
    let plan = VariantsPlan::from_args(&gpu, &args("conv2d")).unwrap();
    assert_eq!(plan.families, vec![Family::Conv]);
    assert_eq!(VariantsPlan::from_args(&gpu, &args("all")).unwrap().families, Family::ALL.to_vec());
    let Err(err) = cases_for(&gpu, &BenchArgs { family: Some("nope".into()), ..Default::default() }) else {
        panic!("an unknown family should be an error");
    };
    let err = err.to_string();
    assert!(err.contains("nope") && err.contains("unet"), "{err}");
    let bad_dtype = BenchArgs { dtype: Some("u32".into()), ..Default::default() };
    assert!(fsd3d::bench::dtypes(&gpu, &bad_dtype).unwrap_err().to_string().contains("f32 or f16"));
    let off = gpus().remove(1);
    let f16 = BenchArgs { dtype: Some("f16".into()), ..Default::default() };
    assert!(fsd3d::bench::dtypes(&off, &f16).unwrap_err().to_string().contains("SHADER_F16"));
}
