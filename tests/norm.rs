//! Group norm and layer norm against a CPU reference (two-pass statistics in
//! f64), on awkward sizes, f32 and f16, with every optional feature on and off;
//! large groups, data with a large mean and a small variance, and bad input.
mod common;
use common::*;
use fsd3d::gpu::{DType, Gpu, Tensor};
use fsd3d::ops::norm;

const EPS: f32 = 1e-5;

/// Which of gamma / beta a case passes.
const AFFINE_MODES: [(bool, bool); 4] = [(true, true), (false, false), (true, false), (false, true)];

/// Normalises each of `rows` contiguous runs of `len` values of `x` (f64 two-pass);
/// `param_of(i)` maps an index within the run to its gamma/beta index.
fn reference_norm(
    x: &[f32],
    rows: usize,
    len: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    param_of: impl Fn(usize, usize) -> usize,
    silu: bool,
) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        let run = &x[r * len..(r + 1) * len];
        let mean = run.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        let var = run.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
        let rstd = 1.0 / (var + EPS as f64).sqrt();
        for (i, &v) in run.iter().enumerate() {
            let c = param_of(r, i);
            let mut y = (v as f64 - mean) * rstd;
            y *= gamma.map_or(1.0, |g| g[c] as f64);
            y += beta.map_or(0.0, |b| b[c] as f64);
            if silu {
                y /= 1.0 + (-y).exp();
            }
            out[r * len + i] = y as f32;
        }
    }
    out
}

fn reference_group_norm(x: &[f32], shape: &[usize], groups: usize, gamma: Option<&[f32]>, beta: Option<&[f32]>, silu: bool) -> Vec<f32> {
    let (b, c) = (shape[0], shape[1]);
    let plane: usize = shape[2..].iter().product();
    let group_len = c / groups * plane;
    // Run r is (batch, group) = (r / groups, r % groups); element i is channel g·C/G + i / plane.
    let param_of = |r: usize, i: usize| (r % groups) * (c / groups) + i / plane;
    reference_norm(x, b * groups, group_len, gamma, beta, param_of, silu)
}

/// (gamma, beta) as the reference sees them, and as uploaded.
type AffineParams = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Tensor>, Option<Tensor>);

/// Uploads the optional gamma [len] (around 1) and beta [len] (around 0).
fn affine_params(gpu: &Gpu, seed: u64, len: usize, mode: (bool, bool), dt: DType) -> AffineParams {
    let g = mode.0.then(|| quantize(&rand_vec(seed, len, 0.5, 1.5), dt));
    let b = mode.1.then(|| quantize(&rand_vec(seed + 1, len, -1.0, 1.0), dt));
    let gt = g.as_ref().map(|v| gpu.upload(v, &[len], dt).unwrap());
    let bt = b.as_ref().map(|v| gpu.upload(v, &[len], dt).unwrap());
    (g, b, gt, bt)
}

#[test]
fn group_norm_matches_reference() {
    // (shape, groups): channels 1, 3, 7, 33; spatial 1×1, 5×7, 17×9; no spatial dims; 3-D spatial.
    let cases: [(&[usize], usize); 7] = [
        (&[1, 1, 1, 1], 1),
        (&[2, 3, 5, 7], 3),
        (&[1, 7, 17, 9], 7),
        (&[2, 33, 5, 7], 3),
        (&[2, 32, 4, 4], 8),
        (&[3, 6], 2),
        (&[1, 4, 3, 5, 2], 2),
    ];
    for (gpu, dt) in configs() {
        for (ci, &(shape, groups)) in cases.iter().enumerate() {
            let n: usize = shape.iter().product();
            let x = quantize(&rand_vec(ci as u64, n, -3.0, 5.0), dt);
            let xt = gpu.upload(&x, shape, dt).unwrap();
            for (mi, &mode) in AFFINE_MODES.iter().enumerate() {
                let (g, b, gt, bt) = affine_params(&gpu, 100 + ci as u64, shape[1], mode, dt);
                for silu in [false, true] {
                    let want = quantize(&reference_group_norm(&x, shape, groups, g.as_deref(), b.as_deref(), silu), dt);
                    for wg in norm::WORKGROUP_SIZES {
                        let y = norm::group_norm_with_workgroup(&gpu, &xt, groups, gt.as_ref(), bt.as_ref(), EPS, silu, wg).unwrap();
                        assert_eq!(y.shape(), shape);
                        assert_eq!(y.dtype(), dt);
                        let what = format!("group_norm {shape:?} G={groups} affine#{mi} silu={silu} wg={wg} {}", label(&gpu, dt));
                        assert_close(&what, &gpu.download(&y).unwrap(), &want, tol(dt));
                    }
                }
            }
        }
    }
}

#[test]
fn group_norm_f32_params_on_f16_activations() {
    for (gpu, dt) in configs().into_iter().filter(|(_, dt)| *dt == DType::F16) {
        let shape = [2, 6, 5, 3];
        let x = quantize(&rand_vec(7, 180, -2.0, 2.0), dt);
        let (g, b, gt, bt) = affine_params(&gpu, 8, 6, (true, true), DType::F32);
        let y = norm::group_norm(&gpu, &gpu.upload(&x, &shape, dt).unwrap(), 3, gt.as_ref(), bt.as_ref(), EPS, true).unwrap();
        let want = reference_group_norm(&x, &shape, 3, g.as_deref(), b.as_deref(), true);
        assert_close(&format!("f32 params {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &quantize(&want, dt), tol(dt));
    }
}

#[test]
fn group_norm_over_a_large_group() {
    // One group of 3×200×200 = 120 000 elements: many statistics chunks merged.
    let shape = [1, 3, 200, 200];
    for (gpu, dt) in configs() {
        let x = quantize(&randn(11, 120_000).iter().map(|v| 2.0 * v + 0.5).collect::<Vec<_>>(), dt);
        let (g, b, gt, bt) = affine_params(&gpu, 12, 3, (true, true), dt);
        let xt = gpu.upload(&x, &shape, dt).unwrap();
        let want = quantize(&reference_group_norm(&x, &shape, 1, g.as_deref(), b.as_deref(), false), dt);
        for wg in norm::WORKGROUP_SIZES {
            let y = norm::group_norm_with_workgroup(&gpu, &xt, 1, gt.as_ref(), bt.as_ref(), EPS, false, wg).unwrap();
            assert_close(&format!("large group wg={wg} {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &want, tol(dt));
        }
    }
}

/// 1000 + 0.01·randn: E[x²] − E[x]² in f32 loses every digit of the variance
/// (x² ≈ 1e6 has an ulp of 0.06 against a variance of 1e-4). f32 only: f16
/// cannot store these values apart (its ulp at 1000 is 0.5).
fn large_mean_small_variance(seed: u64, n: usize) -> Vec<f32> {
    randn(seed, n).iter().map(|v| 1000.0 + 0.01 * v).collect()
}

#[test]
fn group_norm_with_large_mean_and_small_variance() {
    // One chunk per group, and one group of several chunks.
    let cases: [(&[usize], usize); 2] = [(&[2, 4, 33, 33], 2), (&[1, 2, 100, 100], 1)];
    for gpu in gpus() {
        for (ci, &(shape, groups)) in cases.iter().enumerate() {
            let x = large_mean_small_variance(20 + ci as u64, shape.iter().product());
            let xt = gpu.upload(&x, shape, DType::F32).unwrap();
            let want = reference_group_norm(&x, shape, groups, None, None, false);
            for wg in norm::WORKGROUP_SIZES {
                let y = norm::group_norm_with_workgroup(&gpu, &xt, groups, None, None, EPS, false, wg).unwrap();
                let what = format!("large mean {shape:?} wg={wg} {}", label(&gpu, DType::F32));
                assert_close(&what, &gpu.download(&y).unwrap(), &want, tol(DType::F32));
            }
        }
    }
}

#[test]
fn layer_norm_matches_reference() {
    let shapes: [&[usize]; 7] = [&[3, 1], &[3, 7], &[3, 33], &[2, 255], &[2, 1000], &[2, 3, 33], &[1]];
    for (gpu, dt) in configs() {
        for (si, &shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let d = *shape.last().unwrap();
            let x = quantize(&rand_vec(30 + si as u64, n, -4.0, 6.0), dt);
            let xt = gpu.upload(&x, shape, dt).unwrap();
            for (mi, &mode) in AFFINE_MODES.iter().enumerate() {
                let (g, b, gt, bt) = affine_params(&gpu, 40 + si as u64, d, mode, dt);
                let want = quantize(&reference_norm(&x, n / d, d, g.as_deref(), b.as_deref(), |_, i| i, false), dt);
                for wg in norm::WORKGROUP_SIZES {
                    let y = norm::layer_norm_with_workgroup(&gpu, &xt, gt.as_ref(), bt.as_ref(), EPS, wg).unwrap();
                    assert_eq!(y.shape(), shape);
                    let what = format!("layer_norm {shape:?} affine#{mi} wg={wg} {}", label(&gpu, dt));
                    assert_close(&what, &gpu.download(&y).unwrap(), &want, tol(dt));
                }
            }
        }
    }
}

#[test]
fn layer_norm_with_large_mean_and_small_variance() {
    for gpu in gpus() {
        let (rows, d) = (4, 777);
        let x = large_mean_small_variance(50, rows * d);
        let xt = gpu.upload(&x, &[rows, d], DType::F32).unwrap();
        let want = reference_norm(&x, rows, d, None, None, |_, i| i, false);
        for wg in norm::WORKGROUP_SIZES {
            let y = norm::layer_norm_with_workgroup(&gpu, &xt, None, None, EPS, wg).unwrap();
            let what = format!("layer_norm large mean wg={wg} {}", label(&gpu, DType::F32));
            assert_close(&what, &gpu.download(&y).unwrap(), &want, tol(DType::F32));
        }
    }
}

#[test]
fn default_workgroup_size_matches_reference() {
    for (gpu, dt) in configs() {
        let shape = [2, 6, 5, 7];
        let x = quantize(&rand_vec(60, 420, -2.0, 2.0), dt);
        let xt = gpu.upload(&x, &shape, dt).unwrap();
        let (g, b, gt, bt) = affine_params(&gpu, 61, 6, (true, true), dt);
        let y = norm::group_norm(&gpu, &xt, 2, gt.as_ref(), bt.as_ref(), EPS, true).unwrap();
        let want = reference_group_norm(&x, &shape, 2, g.as_deref(), b.as_deref(), true);
        assert_close(&format!("group_norm default wg {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &quantize(&want, dt), tol(dt));
        let (g, b, gt, bt) = affine_params(&gpu, 62, 7, (true, true), dt);
        let y = norm::layer_norm(&gpu, &xt, gt.as_ref(), bt.as_ref(), EPS).unwrap();
        let want = reference_norm(&x, 60, 7, g.as_deref(), b.as_deref(), |_, i| i, false);
        assert_close(&format!("layer_norm default wg {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &quantize(&want, dt), tol(dt));
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let x = gpu.upload(&[0.0; 60], &[2, 6, 5], DType::F32).unwrap();
    let err = norm::group_norm(&gpu, &x, 4, None, None, EPS, false).unwrap_err().to_string();
    assert!(err.contains("4 groups do not divide the 6 channels"), "{err}");
    let err = norm::group_norm(&gpu, &x, 0, None, None, EPS, false).unwrap_err().to_string();
    assert!(err.contains("0 groups"), "{err}");
    let g5 = gpu.upload(&[1.0; 5], &[5], DType::F32).unwrap();
    let err = norm::group_norm(&gpu, &x, 3, Some(&g5), None, EPS, false).unwrap_err().to_string();
    assert!(err.contains("gamma must have shape [6]"), "{err}");
    let flat = gpu.upload(&[0.0; 6], &[6], DType::F32).unwrap();
    let err = norm::group_norm(&gpu, &flat, 1, None, None, EPS, false).unwrap_err().to_string();
    assert!(err.contains("[B, C, ...]"), "{err}");
    let b6 = gpu.upload(&[0.0; 6], &[6], DType::F32).unwrap();
    let err = norm::layer_norm(&gpu, &x, None, Some(&b6), EPS).unwrap_err().to_string();
    assert!(err.contains("beta must have shape [5]"), "{err}");
    let ids = gpu.upload_u32(&[1, 2, 3], &[3]).unwrap();
    assert!(norm::layer_norm(&gpu, &ids, None, None, EPS).is_err());
    let err = norm::layer_norm_with_workgroup(&gpu, &x, None, None, EPS, 48).unwrap_err().to_string();
    assert!(err.contains("workgroup size 48"), "{err}");
    if gpu.features().f16 {
        let g = gpu.upload(&[1.0; 6], &[6], DType::F32).unwrap();
        let b = gpu.upload(&[0.0; 6], &[6], DType::F16).unwrap();
        let err = norm::group_norm(&gpu, &x, 3, Some(&g), Some(&b), EPS, false).unwrap_err().to_string();
        assert!(err.contains("same dtype"), "{err}");
    }
}
