//! SiLU, softmax and attention input gradients against CPU references (f64),
//! the references against central finite differences of f64 forwards, and
//! the device gradients against directional finite differences of the
//! device's own forward ops. Awkward sizes, f32, f16 and mixed storage,
//! both workgroup sizes, every optional feature on and off; and bad input.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::backward_misc::{attention_input_grads, silu_input_grad, softmax_input_grad, softmax_input_grad_with_workgroup};
use fsd3d::ops::elementwise::silu;
use fsd3d::ops::norm::WORKGROUP_SIZES;

fn silu_f64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Central difference of a scalar function of a vector at x, coordinate i.
fn central_difference(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize, h: f64) -> f64 {
    let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
    plus[i] += h;
    minus[i] -= h;
    (f(&plus) - f(&minus)) / (2.0 * h)
}

fn silu_reference(x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&x, &g)| {
            let x = x as f64;
            let s = 1.0 / (1.0 + (-x).exp());
            (g as f64 * (s + x * s * (1.0 - s))) as f32
        })
        .collect()
}

#[test]
fn silu_grad_matches_reference_and_finite_differences() {
    // The reference's derivative against central differences of silu.
    let xs = rand_vec(1, 50, -8.0, 8.0);
    for &x in &xs {
        let fd = (silu_f64(x as f64 + 1e-6) - silu_f64(x as f64 - 1e-6)) / 2e-6;
        assert!((silu_reference(&[x], &[1.0])[0] as f64 - fd).abs() < 1e-6, "silu'({x})");
    }
    for (gpu, dt) in configs() {
        for n in [1usize, 7, 255, 4099] {
            let x = quantize(&rand_vec(n as u64, n, -8.0, 8.0), dt);
            let dy = quantize(&rand_vec(n as u64 + 1, n, -2.0, 2.0), dt);
            let got = silu_input_grad(&gpu, &gpu.upload(&x, &[n], dt).unwrap(), &gpu.upload(&dy, &[n], dt).unwrap()).unwrap();
            assert_eq!(got.dtype(), dt);
            assert_close(&format!("silu' n={n} {}", label(&gpu, dt)), &gpu.download(&got).unwrap(), &quantize(&silu_reference(&x, &dy), dt), tol(dt));
        }
    }
    // Mixed: f16 activations, f32 gradient.
    let gpu = gpu();
    if gpu.features().f16 {
        let x = quantize(&rand_vec(9, 33, -8.0, 8.0), DType::F16);
        let dy = rand_vec(10, 33, -2.0, 2.0);
        let got = silu_input_grad(&gpu, &gpu.upload(&x, &[33], DType::F16).unwrap(), &gpu.upload(&dy, &[33], DType::F32).unwrap()).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert_close("silu' mixed", &gpu.download(&got).unwrap(), &silu_reference(&x, &dy), tol(DType::F32));
    }
}

#[test]
fn silu_grad_matches_directional_differences_of_the_device_silu() {
    for gpu in gpus() {
        let n = 333;
        let x = rand_vec(3, n, -4.0, 4.0);
        let dy = rand_vec(4, n, -1.0, 1.0);
        let u = rand_vec(5, n, -1.0, 1.0);
        let loss = |xs: &[f32]| -> f64 {
            let y = gpu.download(&silu(&gpu, &gpu.upload(xs, &[n], DType::F32).unwrap()).unwrap()).unwrap();
            y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let h = 1e-2f32;
        let plus: Vec<f32> = x.iter().zip(&u).map(|(a, b)| a + h * b).collect();
        let minus: Vec<f32> = x.iter().zip(&u).map(|(a, b)| a - h * b).collect();
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
        let dx = gpu.download(&silu_input_grad(&gpu, &gpu.upload(&x, &[n], DType::F32).unwrap(), &gpu.upload(&dy, &[n], DType::F32).unwrap()).unwrap()).unwrap();
        let analytic: f64 = dx.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
        let magnitude: f64 = dx.iter().zip(&u).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
        // O(h²) truncation and f32 rounding of the loss over 2h: 1e-3 of the magnitude.
        assert!((fd - analytic).abs() <= 1e-3 * magnitude, "finite difference {fd} vs ⟨dx, u⟩ {analytic}");
    }
}

/// softmax(scale·x) of each row of length `len` (f64).
fn softmax_rows(x: &[f64], len: usize, scale: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (row, out) in x.chunks(len).zip(y.chunks_mut(len)) {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(scale * v));
        let sum: f64 = row.iter().map(|&v| (scale * v - m).exp()).sum();
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (scale * v - m).exp() / sum;
        }
    }
    y
}

/// dx of softmax(scale·x) by the Jacobian: dx_j = Σ_i dy_i · scale · y_i (δ_ij − y_j).
fn softmax_grad_reference(y: &[f32], dy: &[f32], len: usize, scale: f64) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    for r in 0..y.len() / len {
        for j in 0..len {
            let mut acc = 0.0f64;
            for i in 0..len {
                let (yi, yj) = (y[r * len + i] as f64, y[r * len + j] as f64);
                acc += dy[r * len + i] as f64 * scale * yi * (if i == j { 1.0 } else { 0.0 } - yj);
            }
            dx[r * len + j] = acc as f32;
        }
    }
    dx
}

#[test]
fn softmax_grad_matches_reference_and_finite_differences() {
    let scale = 0.7;
    // The Jacobian reference against central differences of the f64 softmax.
    let (rows, len) = (3, 9);
    let x: Vec<f64> = rand_vec(6, rows * len, -3.0, 3.0).iter().map(|&v| v as f64).collect();
    let dy = rand_vec(7, rows * len, -1.0, 1.0);
    let y: Vec<f32> = softmax_rows(&x, len, scale).iter().map(|&v| v as f32).collect();
    let want = softmax_grad_reference(&y, &dy, len, scale);
    let loss = |x: &[f64]| -> f64 { softmax_rows(x, len, scale).iter().zip(&dy).map(|(a, b)| a * *b as f64).sum() };
    for (i, &w) in want.iter().enumerate() {
        let fd = central_difference(&loss, &x, i, 1e-6);
        assert!((fd - w as f64).abs() < 1e-6, "softmax' element {i}: {fd} vs {w}");
    }

    for (gpu, dt) in configs() {
        for (ci, &(rows, len)) in [(1usize, 1usize), (3, 7), (2, 33), (5, 300)].iter().enumerate() {
            let x: Vec<f64> = rand_vec(ci as u64, rows * len, -3.0, 3.0).iter().map(|&v| v as f64).collect();
            let y = quantize(&softmax_rows(&x, len, scale).iter().map(|&v| v as f32).collect::<Vec<_>>(), dt);
            let dy = quantize(&rand_vec(ci as u64 + 10, rows * len, -1.0, 1.0), dt);
            let want = quantize(&softmax_grad_reference(&y, &dy, len, scale), dt);
            let yt = gpu.upload(&y, &[rows, len], dt).unwrap();
            let dyt = gpu.upload(&dy, &[rows, len], dt).unwrap();
            for wg in WORKGROUP_SIZES {
                let got = softmax_input_grad_with_workgroup(&gpu, &yt, &dyt, scale as f32, wg).unwrap();
                assert_close(&format!("softmax' {rows}x{len} wg {wg} {}", label(&gpu, dt)), &gpu.download(&got).unwrap(), &want, tol(dt));
            }
        }
    }
}

/// softmax(q·kᵀ·scale)·v per head for [B, L, H·D] layouts (f64).
#[allow(clippy::too_many_arguments)]
fn attention_f64(q: &[f64], k: &[f64], v: &[f64], b: usize, lq: usize, lk: usize, heads: usize, d: usize) -> Vec<f64> {
    let hd = heads * d;
    let scale = 1.0 / (d as f64).sqrt();
    let mut o = vec![0.0; b * lq * hd];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..lq {
                let s: Vec<f64> = (0..lk)
                    .map(|j| (0..d).map(|c| q[(bi * lq + i) * hd + h * d + c] * k[(bi * lk + j) * hd + h * d + c]).sum::<f64>())
                    .collect();
                let p = softmax_rows(&s, lk, scale);
                for c in 0..d {
                    o[(bi * lq + i) * hd + h * d + c] = (0..lk).map(|j| p[j] * v[(bi * lk + j) * hd + h * d + c]).sum();
                }
            }
        }
    }
    o
}

#[test]
fn attention_grads_match_finite_differences() {
    // (batch, Lq, Lk, heads, head dim): one head as the VAE's; a batch of two
    // with two heads and Lq ≠ Lk. The same alignments (D = 6, Lk = 5) for
    // both, so that they share matmul pipelines: creating pipelines is most
    // of this test's time on lavapipe.
    for &(b, lq, lk, heads, d) in &[(1usize, 5usize, 5usize, 1usize, 6usize), (2, 3, 5, 2, 6)] {
        let hd = heads * d;
        let q = rand_vec(60, b * lq * hd, -1.0, 1.0);
        let k = rand_vec(61, b * lk * hd, -1.0, 1.0);
        let v = rand_vec(62, b * lk * hd, -1.0, 1.0);
        let d_out = rand_vec(63, b * lq * hd, -1.0, 1.0);
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            attention_f64(q, k, v, b, lq, lk, heads, d).iter().zip(&d_out).map(|(o, g)| o * *g as f64).sum()
        };
        // The central differences are the reference here (f64, h = 1e-5: error ~1e-9).
        let want_q: Vec<f32> = (0..q.len()).map(|i| central_difference(&|x| loss(x, &k64, &v64), &q64, i, 1e-5) as f32).collect();
        let want_k: Vec<f32> = (0..k.len()).map(|i| central_difference(&|x| loss(&q64, x, &v64), &k64, i, 1e-5) as f32).collect();
        let want_v: Vec<f32> = (0..v.len()).map(|i| central_difference(&|x| loss(&q64, &k64, x), &v64, i, 1e-5) as f32).collect();
        for (gpu, dt) in configs() {
            let up = |x: &[f32], l: usize| gpu.upload(&quantize(x, dt), &[b, l, hd], dt).unwrap();
            // f16 storage rounds the inputs: compare f16 runs against f32 references
            // of the unrounded inputs with the rounding's effect in the tolerance.
            let g = attention_input_grads(&gpu, &up(&q, lq), &up(&k, lk), &up(&v, lk), &up(&d_out, lq), heads).unwrap();
            let rtol = if dt == DType::F16 { 2e-2 } else { 1e-4 };
            let what = format!("b{b} lq{lq} lk{lk} h{heads} d{d} {}", label(&gpu, dt));
            assert_eq!(g.dq.shape(), [b, lq, hd]);
            assert_eq!(g.dk.shape(), [b, lk, hd]);
            assert_close(&format!("dq {what}"), &gpu.download(&g.dq).unwrap(), &want_q, rtol);
            assert_close(&format!("dk {what}"), &gpu.download(&g.dk).unwrap(), &want_k, rtol);
            assert_close(&format!("dv {what}"), &gpu.download(&g.dv).unwrap(), &want_v, rtol);
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let a = gpu.zeros(&[2, 3], DType::F32).unwrap();
    let b = gpu.zeros(&[3, 2], DType::F32).unwrap();
    assert!(silu_input_grad(&gpu, &a, &b).unwrap_err().to_string().contains("shape of the forward's input"));
    assert!(softmax_input_grad(&gpu, &a, &b, 1.0).unwrap_err().to_string().contains("shape of the forward's output"));
    let q = gpu.zeros(&[1, 4, 6], DType::F32).unwrap();
    let k = gpu.zeros(&[1, 5, 6], DType::F32).unwrap();
    let err = attention_input_grads(&gpu, &q, &k, &k, &q, 4).err().unwrap().to_string();
    assert!(err.contains("heads do not divide"), "{err}");
    let err = attention_input_grads(&gpu, &q, &k, &q, &q, 1).err().unwrap().to_string();
    assert!(err.contains("[B, Lk, H·D]"), "{err}");
}

/// erf by Simpson's rule on 2/√π·e^(−t²) (error below 1e-12 for |x| ≤ 6):
/// an f64 reference independent of the shader's approximation.
fn erf_f64(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
}

/// dx of GEGLU for x [rows, 2F], dy [rows, F], from gelu'(g) = Φ(g) + g·φ(g).
fn geglu_grad_reference(x: &[f32], dy: &[f32], f: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; x.len()];
    for (i, &d) in dy.iter().enumerate() {
        let (row, col) = (i / f, i % f);
        let (h, g) = (x[row * 2 * f + col] as f64, x[row * 2 * f + f + col] as f64);
        let cdf = 0.5 * (1.0 + erf_f64(g / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * g * g).exp() / (2.0 * std::f64::consts::PI).sqrt();
        dx[row * 2 * f + col] = (d as f64 * gelu_f64(g)) as f32;
        dx[row * 2 * f + f + col] = (d as f64 * h * (cdf + g * pdf)) as f32;
    }
    dx
}

#[test]
fn geglu_grad_matches_reference_and_finite_differences() {
    use fsd3d::ops::backward_misc::geglu_input_grad;
    // The reference's gelu' against central differences of the f64 GELU.
    for &g in &rand_vec(3, 40, -6.0, 6.0) {
        let fd = (gelu_f64(g as f64 + 1e-5) - gelu_f64(g as f64 - 1e-5)) / 2e-5;
        let analytic = geglu_grad_reference(&[1.0, g], &[1.0], 1)[1] as f64;
        assert!((analytic - fd).abs() < 1e-6, "gelu'({g}): {analytic} against {fd}");
    }
    for (gpu, dt) in configs() {
        for (rows, f) in [(1usize, 1usize), (3, 7), (17, 40), (5, 257)] {
            let x = quantize(&rand_vec((rows * f) as u64, rows * 2 * f, -5.0, 5.0), dt);
            let dy = quantize(&rand_vec((rows + f) as u64, rows * f, -2.0, 2.0), dt);
            let got = geglu_input_grad(&gpu, &gpu.upload(&x, &[rows, 2 * f], dt).unwrap(), &gpu.upload(&dy, &[rows, f], dt).unwrap()).unwrap();
            assert_eq!((got.shape(), got.dtype()), (&[rows, 2 * f][..], dt));
            let want = quantize(&geglu_grad_reference(&x, &dy, f), dt);
            assert_close(&format!("geglu' {rows}x{f} {}", label(&gpu, dt)), &gpu.download(&got).unwrap(), &want, tol(dt));
        }
    }
    // Against directional differences of the device's own GEGLU forward (f32).
    let gpu = gpu();
    let (rows, f) = (4usize, 9usize);
    let x = rand_vec(21, rows * 2 * f, -3.0, 3.0);
    let dir = rand_vec(22, rows * 2 * f, -1.0, 1.0);
    let dy = rand_vec(23, rows * f, -1.0, 1.0);
    let loss = |x: &[f32]| -> f64 {
        let y = gpu.download(&fsd3d::ops::elementwise::geglu(&gpu, &gpu.upload(x, &[rows, 2 * f], DType::F32).unwrap()).unwrap()).unwrap();
        y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let h = 1e-2f32;
    let shifted = |s: f32| x.iter().zip(&dir).map(|(a, d)| a + s * d).collect::<Vec<_>>();
    let fd = (loss(&shifted(h)) - loss(&shifted(-h))) / (2.0 * h as f64);
    let g = gpu.download(&geglu_input_grad(&gpu, &gpu.upload(&x, &[rows, 2 * f], DType::F32).unwrap(), &gpu.upload(&dy, &[rows, f], DType::F32).unwrap()).unwrap()).unwrap();
    let analytic: f64 = g.iter().zip(&dir).map(|(a, d)| *a as f64 * *d as f64).sum();
    assert!((analytic - fd).abs() < 2e-3 * fd.abs().max(1.0), "directional derivative {analytic} against {fd}");
    // Bad shapes are named.
    let e = geglu_input_grad(&gpu, &gpu.zeros(&[2, 6], DType::F32).unwrap(), &gpu.zeros(&[2, 4], DType::F32).unwrap()).unwrap_err().to_string();
    assert!(e.contains("[..., 2F]"), "{e}");
}

/// In blocks of query rows (a binding limit of a few rows' scores), the
/// attention backward gives the one-block gradients: the blocks' dq side by
/// side, their dk and dv summed. Awkward sizes (7 query rows in blocks of
/// 2 and 3, cross-attention with fewer keys), one and several heads.
#[test]
fn attention_grads_in_blocks_of_rows_equal_the_whole() {
    use fsd3d::ops::backward_misc::attention_input_grads_within;
    for (gpu, dt) in configs() {
        for (b, lq, lk, heads, d) in [(2usize, 7usize, 7usize, 1usize, 8usize), (1, 7, 5, 2, 16), (3, 9, 9, 4, 8)] {
            let hd = heads * d;
            let up = |seed: u64, l: usize| gpu.upload(&quantize(&rand_vec(seed, b * l * hd, -1.0, 1.0), dt), &[b, l, hd], dt).unwrap();
            let (q, k, v, d_out) = (up(1, lq), up(2, lk), up(3, lk), up(4, lq));
            let whole = attention_input_grads_within(&gpu, &q, &k, &v, &d_out, heads, u64::MAX).unwrap();
            for rows in [2u64, 3] {
                let limit = rows * (b * heads * lk * 4) as u64;
                let blocks = attention_input_grads_within(&gpu, &q, &k, &v, &d_out, heads, limit).unwrap();
                for (name, got, want) in [("dq", &blocks.dq, &whole.dq), ("dk", &blocks.dk, &whole.dk), ("dv", &blocks.dv, &whole.dv)] {
                    assert_eq!(got.shape(), want.shape());
                    let what = format!("{name} b{b} lq{lq} lk{lk} h{heads} in blocks of {rows} {}", label(&gpu, dt));
                    assert_close(&what, &gpu.download(got).unwrap(), &gpu.download(want).unwrap(), tol(dt));
                }
            }
        }
    }
}
