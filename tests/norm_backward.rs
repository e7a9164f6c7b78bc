//! group_norm_input_grad against a CPU reference (the textbook chain rule
//! through mean and variance, f64), which is itself checked against central
//! finite differences of an f64 forward; and against directional finite
//! differences of the device's own group_norm. Awkward sizes (planes of 1,
//! 35 and more than one 2048-element block, rank 3 and 4), SiLU on and off,
//! γ / β present or absent, data with a large mean, both workgroup sizes, f32,
//! f16 and mixed storage, every optional feature on and off; and bad input.
mod common;
use common::*;
use fsd3d::gpu::{DType, Gpu, Tensor};
use fsd3d::ops::norm::{WORKGROUP_SIZES, group_norm};
use fsd3d::ops::norm_backward::{group_norm_input_grad, group_norm_input_grad_with_workgroup};

const EPS: f32 = 1e-5;

/// One group norm: x of `shape` = [B, C, ...], `groups` groups, x = offset + spread·U(−1, 1).
#[derive(Clone, Copy, Debug)]
struct Case {
    shape: &'static [usize],
    groups: usize,
    offset: f32,
    silu: bool,
    /// Whether γ / β are passed.
    affine: (bool, bool),
}

const fn case(shape: &'static [usize], groups: usize, silu: bool, affine: (bool, bool)) -> Case {
    Case { shape, groups, offset: 0.0, silu, affine }
}

const CASES: [Case; 9] = [
    case(&[1, 2, 1, 1], 1, false, (true, true)),  // a group of two single pixels
    case(&[2, 6, 5, 7], 3, true, (true, true)),   // the VAE's norm + SiLU
    case(&[2, 6, 5, 7], 3, false, (true, true)),
    case(&[1, 32, 9, 11], 8, true, (false, false)), // no affine
    case(&[1, 8, 13], 4, true, (true, false)),      // rank 3, γ only
    case(&[2, 4, 7, 5], 2, true, (false, true)),    // β only (reaches dx through the SiLU)
    case(&[1, 4, 50, 45], 2, true, (true, true)),   // planes of 2250: two blocks each
    case(&[3, 3, 1, 1], 3, false, (true, true)),    // groups of one element: dx = 0
    Case { shape: &[1, 4, 6, 7], groups: 2, offset: 50.0, silu: true, affine: (true, true) }, // a large mean
];

impl Case {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    fn channels(&self) -> usize {
        self.shape[1]
    }
    fn plane(&self) -> usize {
        self.shape[2..].iter().product()
    }
}

/// Host copies of one case's inputs.
struct Inputs {
    x: Vec<f32>,
    dz: Vec<f32>,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
}

fn inputs(ci: usize, c: &Case, dt_x: DType, dt_g: DType) -> Inputs {
    let spread = if c.offset != 0.0 { 0.5 } else { 2.0 };
    let x = rand_vec(10 + ci as u64, c.numel(), -spread, spread).iter().map(|v| v + c.offset).collect::<Vec<_>>();
    Inputs {
        x: quantize(&x, dt_x),
        dz: quantize(&rand_vec(20 + ci as u64, c.numel(), -1.0, 1.0), dt_g),
        gamma: c.affine.0.then(|| quantize(&rand_vec(30 + ci as u64, c.channels(), 0.5, 1.5), dt_x)),
        beta: c.affine.1.then(|| quantize(&rand_vec(40 + ci as u64, c.channels(), -1.0, 1.0), dt_x)),
    }
}

fn upload_affine(gpu: &Gpu, v: &Option<Vec<f32>>, dt: DType) -> Option<Tensor> {
    v.as_ref().map(|v| gpu.upload(v, &[v.len()], dt).unwrap())
}

/// The forward in f64: z = silu?(γ·(x − μ)·rstd + β) per (batch, group).
fn forward_f64(c: &Case, inp: &Inputs, x: &[f64]) -> Vec<f64> {
    let (b, ch, plane) = (c.shape[0], c.channels(), c.plane());
    let gc = ch / c.groups;
    let len = gc * plane;
    let mut z = vec![0.0; x.len()];
    for r in 0..b * c.groups {
        let run = &x[r * len..(r + 1) * len];
        let mean = run.iter().sum::<f64>() / len as f64;
        let var = run.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len as f64;
        let rstd = 1.0 / (var + EPS as f64).sqrt();
        for (i, v) in run.iter().enumerate() {
            let ch_i = (r % c.groups) * gc + i / plane;
            let mut y = (v - mean) * rstd * inp.gamma.as_ref().map_or(1.0, |g| g[ch_i] as f64)
                + inp.beta.as_ref().map_or(0.0, |b| b[ch_i] as f64);
            if c.silu {
                y /= 1.0 + (-y).exp();
            }
            z[r * len + i] = y;
        }
    }
    z
}

/// dx by the textbook chain rule: dy through the SiLU, then through x̂,
/// the variance and the mean (f64).
fn reference_input_grad(c: &Case, inp: &Inputs) -> Vec<f32> {
    let (b, ch, plane) = (c.shape[0], c.channels(), c.plane());
    let gc = ch / c.groups;
    let len = gc * plane;
    let n = len as f64;
    let mut dx = vec![0.0f32; inp.x.len()];
    for r in 0..b * c.groups {
        let x: Vec<f64> = inp.x[r * len..(r + 1) * len].iter().map(|&v| v as f64).collect();
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + EPS as f64).sqrt();
        // dL/dx̂ per element.
        let dxhat: Vec<f64> = (0..len)
            .map(|i| {
                let ch_i = (r % c.groups) * gc + i / plane;
                let gamma = inp.gamma.as_ref().map_or(1.0, |g| g[ch_i] as f64);
                let beta = inp.beta.as_ref().map_or(0.0, |b| b[ch_i] as f64);
                let mut dy = inp.dz[r * len + i] as f64;
                if c.silu {
                    let y = (x[i] - mean) * rstd * gamma + beta;
                    let s = 1.0 / (1.0 + (-y).exp());
                    dy *= s + y * s * (1.0 - s);
                }
                dy * gamma
            })
            .collect();
        let dvar: f64 = (0..len).map(|i| dxhat[i] * (x[i] - mean)).sum::<f64>() * -0.5 * rstd.powi(3);
        let dmean: f64 = (0..len).map(|i| -dxhat[i] * rstd).sum::<f64>() + dvar * (0..len).map(|i| -2.0 * (x[i] - mean)).sum::<f64>() / n;
        for i in 0..len {
            dx[r * len + i] = (dxhat[i] * rstd + dvar * 2.0 * (x[i] - mean) / n + dmean / n) as f32;
        }
    }
    dx
}

#[test]
fn the_reference_matches_finite_differences() {
    // Central differences of the f64 forward, L = Σ z·dz, on the small cases.
    for (ci, c) in CASES.iter().enumerate().filter(|(_, c)| c.numel() <= 400) {
        let inp = inputs(ci, c, DType::F32, DType::F32);
        let want = reference_input_grad(c, &inp);
        let x: Vec<f64> = inp.x.iter().map(|&v| v as f64).collect();
        let loss = |x: &[f64]| -> f64 { forward_f64(c, &inp, x).iter().zip(&inp.dz).map(|(z, d)| z * *d as f64).sum() };
        let h = 1e-5;
        for i in 0..x.len() {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += h;
            minus[i] -= h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
            assert!((fd - want[i] as f64).abs() <= 1e-5 * (1.0 + fd.abs()), "{c:?} element {i}: finite difference {fd} vs {}", want[i]);
        }
    }
}

#[test]
fn matches_the_reference() {
    for (gpu, dt) in configs() {
        for (ci, c) in CASES.iter().enumerate() {
            if dt == DType::F16 && c.offset != 0.0 {
                continue; // f16 cannot hold 50 ± 0.5 finely enough to be a test of anything
            }
            let inp = inputs(ci, c, dt, dt);
            let x = gpu.upload(&inp.x, c.shape, dt).unwrap();
            let dz = gpu.upload(&inp.dz, c.shape, dt).unwrap();
            let (g, b) = (upload_affine(&gpu, &inp.gamma, dt), upload_affine(&gpu, &inp.beta, dt));
            let want = quantize(&reference_input_grad(c, &inp), dt);
            for wg in WORKGROUP_SIZES {
                let dx = group_norm_input_grad_with_workgroup(&gpu, &x, &dz, c.groups, g.as_ref(), b.as_ref(), EPS, c.silu, wg).unwrap();
                assert_eq!(dx.shape(), c.shape);
                assert_eq!(dx.dtype(), dt);
                // dx sums a group's worth of terms that cancel: 1e-4 of the scale in f32
                // (groups of up to 4500 elements), the storage rounding in f16.
                let rtol = if dt == DType::F16 { tol(dt) } else { 1e-4 };
                assert_close(&format!("{c:?} wg {wg} {}", label(&gpu, dt)), &gpu.download(&dx).unwrap(), &want, rtol);
            }
        }
    }
}

#[test]
fn f16_activations_with_an_f32_gradient() {
    let gpu = gpu();
    if !gpu.features().f16 {
        return;
    }
    for (ci, c) in CASES.iter().enumerate().filter(|(_, c)| c.offset == 0.0) {
        let inp = inputs(ci, c, DType::F16, DType::F32);
        let x = gpu.upload(&inp.x, c.shape, DType::F16).unwrap();
        let dz = gpu.upload(&inp.dz, c.shape, DType::F32).unwrap();
        let (g, b) = (upload_affine(&gpu, &inp.gamma, DType::F16), upload_affine(&gpu, &inp.beta, DType::F16));
        let dx = group_norm_input_grad(&gpu, &x, &dz, c.groups, g.as_ref(), b.as_ref(), EPS, c.silu).unwrap();
        assert_eq!(dx.dtype(), DType::F32);
        assert_close(&format!("mixed {c:?}"), &gpu.download(&dx).unwrap(), &reference_input_grad(c, &inp), 1e-4);
    }
}

/// ⟨dx, u⟩ against the central difference of L(x) = ⟨group_norm(x), dz⟩ along
/// u with the device's forward kernel: the backward differentiates the
/// forward the engine actually runs (same ε, same grouping).
#[test]
fn directional_finite_differences_of_the_forward() {
    for gpu in gpus() {
        for (ci, c) in CASES.iter().enumerate().filter(|(_, c)| c.offset == 0.0 && c.numel() > 2) {
            let inp = inputs(ci, c, DType::F32, DType::F32);
            let (g, b) = (upload_affine(&gpu, &inp.gamma, DType::F32), upload_affine(&gpu, &inp.beta, DType::F32));
            let loss = |x: &[f32]| -> f64 {
                let z = group_norm(&gpu, &gpu.upload(x, c.shape, DType::F32).unwrap(), c.groups, g.as_ref(), b.as_ref(), EPS, c.silu).unwrap();
                gpu.download(&z).unwrap().iter().zip(&inp.dz).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let dx_t = group_norm_input_grad(
                &gpu,
                &gpu.upload(&inp.x, c.shape, DType::F32).unwrap(),
                &gpu.upload(&inp.dz, c.shape, DType::F32).unwrap(),
                c.groups,
                g.as_ref(),
                b.as_ref(),
                EPS,
                c.silu,
            )
            .unwrap();
            let dx = gpu.download(&dx_t).unwrap();
            let u = rand_vec(50 + ci as u64, c.numel(), -1.0, 1.0);
            let h = 1e-2f32;
            let plus: Vec<f32> = inp.x.iter().zip(&u).map(|(a, b)| a + h * b).collect();
            let minus: Vec<f32> = inp.x.iter().zip(&u).map(|(a, b)| a - h * b).collect();
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            let analytic: f64 = dx.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
            // O(h²) truncation and f32 rounding of L (≈ 1e-7·Σ|z·dz| / 2h): 1e-3 of the terms' magnitude.
            let magnitude: f64 = dx.iter().zip(&u).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>().max(1.0);
            assert!(
                (fd - analytic).abs() <= 1e-3 * magnitude,
                "{c:?} [{}]: finite difference {fd} vs ⟨dx, u⟩ {analytic}",
                gpu.features().names().join(",")
            );
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let x = gpu.zeros(&[1, 6, 4, 4], DType::F32).unwrap();
    let dz = gpu.zeros(&[1, 6, 4, 4], DType::F32).unwrap();
    let err = group_norm_input_grad(&gpu, &x, &dz, 4, None, None, EPS, false).unwrap_err().to_string();
    assert!(err.contains("do not divide"), "{err}");
    let err = group_norm_input_grad(&gpu, &x, &dz.reshape(&[1, 6, 16]).unwrap(), 3, None, None, EPS, false).unwrap_err().to_string();
    assert!(err.contains("shape of the forward's input"), "{err}");
    let g = gpu.zeros(&[5], DType::F32).unwrap();
    let err = group_norm_input_grad(&gpu, &x, &dz, 3, Some(&g), None, EPS, true).unwrap_err().to_string();
    assert!(err.contains("gamma must have shape [6]"), "{err}");
    let err = group_norm_input_grad_with_workgroup(&gpu, &x, &dz, 3, None, None, EPS, true, 7).unwrap_err().to_string();
    assert!(err.contains("workgroup size 7"), "{err}");
}
