//! conv2d_input_grad against a CPU reference (the forward's definition run
//! backwards: every output gradient scattered onto the inputs it read, f64)
//! and against finite differences of the forward conv2d on the device, for
//! every kernel variant, on awkward sizes (channels 1, 3, 7, 33, 37; odd
//! spatial sizes; strides 1, 2 and 3 with rows no output reads; kernels 1, 2×3,
//! 3, 5), f32, f16 and mixed storage, every optional feature on and off; and
//! bad input.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::conv2d::{Conv2dOpts, conv2d};
use fsd3d::ops::conv2d_backward::{Conv2dBackwardOpts, Conv2dBackwardVariant, conv2d_input_grad};

/// One convolution: x [b, cin, h, w], weight [cout, cin, kh, kw].
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
}

#[allow(clippy::too_many_arguments)]
const fn case(b: usize, cin: usize, h: usize, w: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case { b, cin, h, w, cout, kh: k, kw: k, stride, pad }
}

const CASES: [Case; 12] = [
    case(1, 1, 1, 1, 1, 1, 1, 0),    // everything 1
    case(2, 3, 5, 7, 7, 3, 1, 1),    // 3×3 "same"
    case(1, 7, 17, 9, 33, 3, 2, 1),  // stride 2 on odd sizes
    case(1, 3, 8, 9, 5, 3, 2, 0),    // stride 2, no padding: the last row is read by no output
    case(1, 33, 11, 13, 6, 3, 2, 0), // the VAE's downsample shape (padded input), Cin past a 32-channel tile
    case(2, 33, 5, 7, 3, 1, 1, 0),   // 1×1
    case(2, 5, 9, 8, 17, 1, 2, 0),   // 1×1 stride 2: three of four pixels get no gradient
    case(1, 4, 6, 5, 8, 3, 1, 0),    // 3×3 "valid"
    case(1, 37, 19, 23, 8, 3, 1, 1), // pixels and channels no block divides
    case(2, 2, 1, 1, 3, 3, 1, 1),    // 1×1 input, all taps but the centre in the padding
    case(1, 3, 10, 7, 4, 5, 3, 2),   // stride 3, 5×5, padding 2
    Case { b: 1, cin: 2, h: 4, w: 6, cout: 3, kh: 2, kw: 3, stride: 1, pad: 1 }, // non-square kernel
];

impl Case {
    fn out_hw(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.kh) / self.stride + 1, (self.w + 2 * self.pad - self.kw) / self.stride + 1)
    }
    fn x_shape(&self) -> [usize; 4] {
        [self.b, self.cin, self.h, self.w]
    }
    fn w_shape(&self) -> [usize; 4] {
        [self.cout, self.cin, self.kh, self.kw]
    }
    fn dy_shape(&self) -> [usize; 4] {
        let (ho, wo) = self.out_hw();
        [self.b, self.cout, ho, wo]
    }
    fn opts(&self, variant: Option<Conv2dBackwardVariant>) -> Conv2dBackwardOpts {
        Conv2dBackwardOpts { stride: self.stride, padding: self.pad, variant }
    }
}

/// dx by the chain rule on the forward's loop nest: each output gradient is
/// added to every input it was computed from (f64 sums).
fn reference_input_grad(c: &Case, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (ho, wo) = c.out_hw();
    let mut dx = vec![0.0f64; c.b * c.cin * c.h * c.w];
    for b in 0..c.b {
        for co in 0..c.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = dy[((b * c.cout + co) * ho + oy) * wo + ox] as f64;
                    for ci in 0..c.cin {
                        for ky in 0..c.kh {
                            for kx in 0..c.kw {
                                let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                                let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let wv = w[((co * c.cin + ci) * c.kh + ky) * c.kw + kx] as f64;
                                dx[((b * c.cin + ci) * c.h + iy as usize) * c.w + ix as usize] += g * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

fn inputs(ci: usize, c: &Case, dt_y: DType, dt_w: DType) -> (Vec<f32>, Vec<f32>) {
    let dy = quantize(&rand_vec(100 + ci as u64, c.dy_shape().iter().product(), -1.0, 1.0), dt_y);
    let w = quantize(&rand_vec(200 + ci as u64, c.w_shape().iter().product(), -1.0, 1.0), dt_w);
    (dy, w)
}

#[test]
fn every_variant_matches_the_reference() {
    for (gpu, dt) in configs() {
        for variant in Conv2dBackwardVariant::ALL.into_iter().filter(|v| v.available(gpu.caps())) {
            for (ci, c) in CASES.iter().enumerate() {
                let (dy, w) = inputs(ci, c, dt, dt);
                let dyt = gpu.upload(&dy, &c.dy_shape(), dt).unwrap();
                let wt = gpu.upload(&w, &c.w_shape(), dt).unwrap();
                let dx = conv2d_input_grad(&gpu, &dyt, &wt, (c.h, c.w), c.opts(Some(variant))).unwrap();
                assert_eq!(dx.shape(), c.x_shape());
                assert_eq!(dx.dtype(), dt);
                let want = quantize(&reference_input_grad(c, &dy, &w), dt);
                assert_close(
                    &format!("{} {c:?} {}", variant.name(), label(&gpu, dt)),
                    &gpu.download(&dx).unwrap(),
                    &want,
                    tol(dt),
                );
            }
        }
    }
}

#[test]
fn mixed_storage_f32_gradient_with_f16_weights() {
    // The VAE backward keeps its gradients in f32 while an f16 model's weights are f16.
    let gpu = gpu();
    if !gpu.features().f16 {
        return;
    }
    for variant in Conv2dBackwardVariant::ALL.into_iter().filter(|v| v.available(gpu.caps())) {
        for (ci, c) in CASES.iter().enumerate().skip(1).step_by(3) {
            let (dy, w) = inputs(ci, c, DType::F32, DType::F16);
            let dyt = gpu.upload(&dy, &c.dy_shape(), DType::F32).unwrap();
            let wt = gpu.upload(&w, &c.w_shape(), DType::F16).unwrap();
            let dx = conv2d_input_grad(&gpu, &dyt, &wt, (c.h, c.w), c.opts(Some(variant))).unwrap();
            assert_eq!(dx.dtype(), DType::F32);
            let want = reference_input_grad(c, &dy, &w);
            assert_close(&format!("mixed {} {c:?}", variant.name()), &gpu.download(&dx).unwrap(), &want, tol(DType::F32));
        }
    }
}

/// ⟨dx, u⟩ must equal the directional derivative of L(x) = ⟨conv2d(x), dy⟩
/// along u. The convolution is linear in x, so the central difference
/// (L(x + u) − L(x − u)) / 2 is exact up to f32 rounding of the sums: a check
/// against the forward kernel itself, independent of the CPU reference.
#[test]
fn directional_finite_differences_of_the_forward() {
    for gpu in gpus() {
        for (ci, c) in CASES.iter().enumerate() {
            let n_x: usize = c.x_shape().iter().product();
            let (dy, w) = inputs(ci, c, DType::F32, DType::F32);
            let x = rand_vec(300 + ci as u64, n_x, -1.0, 1.0);
            let wt = gpu.upload(&w, &c.w_shape(), DType::F32).unwrap();
            let fwd = Conv2dOpts { stride: c.stride, padding: c.pad, variant: None, padding_w: None };
            let loss = |xs: &[f32]| -> f64 {
                let y = conv2d(&gpu, &gpu.upload(xs, &c.x_shape(), DType::F32).unwrap(), &wt, None, fwd).unwrap();
                gpu.download(&y).unwrap().iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let dx = gpu
                .download(&conv2d_input_grad(&gpu, &gpu.upload(&dy, &c.dy_shape(), DType::F32).unwrap(), &wt, (c.h, c.w), c.opts(None)).unwrap())
                .unwrap();
            for dir in 0..3u64 {
                let u = rand_vec(400 + 10 * ci as u64 + dir, n_x, -1.0, 1.0);
                let plus: Vec<f32> = x.iter().zip(&u).map(|(a, b)| a + b).collect();
                let minus: Vec<f32> = x.iter().zip(&u).map(|(a, b)| a - b).collect();
                let fd = (loss(&plus) - loss(&minus)) / 2.0;
                let analytic: f64 = dx.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
                // Both sides sum |terms| of order n_y·K; f32 products and sums round at ~1e-6 of that.
                let magnitude: f64 = dx.iter().zip(&u).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>().max(1.0);
                assert!(
                    (fd - analytic).abs() <= 1e-5 * magnitude,
                    "{c:?} direction {dir} [{}]: finite difference {fd} vs ⟨dx, u⟩ {analytic}",
                    gpu.features().names().join(",")
                );
            }
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let c = CASES[2];
    let dy = gpu.zeros(&c.dy_shape(), DType::F32).unwrap();
    let w = gpu.zeros(&c.w_shape(), DType::F32).unwrap();
    // An input size whose forward output is not dy's.
    let err = conv2d_input_grad(&gpu, &dy, &w, (c.h + 2, c.w), c.opts(None)).unwrap_err().to_string();
    assert!(err.contains("forward input's size") && err.contains("gives"), "{err}");
    // Output channels that do not match.
    let w2 = gpu.zeros(&[c.cout + 1, c.cin, 3, 3], DType::F32).unwrap();
    let err = conv2d_input_grad(&gpu, &dy, &w2, (c.h, c.w), c.opts(None)).unwrap_err().to_string();
    assert!(err.contains("output channels"), "{err}");
    // Rank, stride, kernel larger than the padded input.
    let err = conv2d_input_grad(&gpu, &dy.reshape(&[c.cout, 9, 5]).unwrap(), &w, (c.h, c.w), c.opts(None)).unwrap_err().to_string();
    assert!(err.contains("[B, Cout, Ho, Wo]"), "{err}");
    let err = conv2d_input_grad(&gpu, &dy, &w, (c.h, c.w), Conv2dBackwardOpts { stride: 0, ..c.opts(None) }).unwrap_err().to_string();
    assert!(err.contains("stride"), "{err}");
    let err = conv2d_input_grad(&gpu, &dy, &w, (1, 1), Conv2dBackwardOpts { stride: 1, padding: 0, variant: None }).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    // The subgroup kernel on a device without subgroups.
    let off = gpus().remove(1);
    let dy = off.zeros(&c.dy_shape(), DType::F32).unwrap();
    let w = off.zeros(&c.w_shape(), DType::F32).unwrap();
    let err = conv2d_input_grad(&off, &dy, &w, (c.h, c.w), c.opts(Some(Conv2dBackwardVariant::Subgroup))).unwrap_err().to_string();
    assert!(err.contains("SUBGROUP"), "{err}");
    assert!(Conv2dBackwardVariant::parse("nope").unwrap_err().to_string().contains("simple, gemm, subgroup"));
}

/// Timings against the forward convolution of the same layer (run with
/// `cargo test --release --test conv2d_backward -- --ignored --nocapture`).
#[test]
#[ignore]
fn timing_against_the_forward() {
    let gpu = gpu();
    let time = |f: &dyn Fn()| -> f64 {
        f();
        gpu.sync().unwrap();
        let reps = 3;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        gpu.sync().unwrap();
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    };
    for c in [case(1, 128, 64, 64, 128, 3, 1, 1), case(1, 128, 65, 65, 128, 3, 2, 0), case(1, 256, 32, 32, 512, 1, 1, 0)] {
        let x = gpu.upload(&rand_vec(1, c.x_shape().iter().product(), -1.0, 1.0), &c.x_shape(), DType::F32).unwrap();
        let w = gpu.upload(&rand_vec(2, c.w_shape().iter().product(), -1.0, 1.0), &c.w_shape(), DType::F32).unwrap();
        let dy = gpu.upload(&rand_vec(3, c.dy_shape().iter().product(), -1.0, 1.0), &c.dy_shape(), DType::F32).unwrap();
        let fwd = time(&|| {
            conv2d(&gpu, &x, &w, None, Conv2dOpts { stride: c.stride, padding: c.pad, variant: None, padding_w: None }).unwrap();
        });
        eprintln!("{c:?} on {}: forward conv2d {fwd:.1} ms", gpu.adapter_name());
        for variant in Conv2dBackwardVariant::ALL.into_iter().filter(|v| v.available(gpu.caps())) {
            let ms = time(&|| {
                conv2d_input_grad(&gpu, &dy, &w, (c.h, c.w), c.opts(Some(variant))).unwrap();
            });
            eprintln!("  input grad {}: {ms:.1} ms", variant.name());
        }
    }
}

/// dW and db by their definition (f64): each output gradient times every
/// input it read, summed; db the output gradients summed per channel.
fn reference_weight_grad(c: &Case, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (ho, wo) = c.out_hw();
    let mut dw = vec![0.0f64; c.cout * c.cin * c.kh * c.kw];
    let mut db = vec![0.0f64; c.cout];
    for b in 0..c.b {
        for co in 0..c.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = dy[((b * c.cout + co) * ho + oy) * wo + ox] as f64;
                    db[co] += g;
                    for ci in 0..c.cin {
                        for ky in 0..c.kh {
                            for kx in 0..c.kw {
                                let (y, xx) = ((oy * c.stride + ky) as isize - c.pad as isize, (ox * c.stride + kx) as isize - c.pad as isize);
                                if y < 0 || xx < 0 || y as usize >= c.h || xx as usize >= c.w {
                                    continue;
                                }
                                dw[((co * c.cin + ci) * c.kh + ky) * c.kw + kx] += g * x[((b * c.cin + ci) * c.h + y as usize) * c.w + xx as usize] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dw.iter().map(|&v| v as f32).collect(), db.iter().map(|&v| v as f32).collect())
}

/// The weight and bias gradients against their definition on every case,
/// in f32, f16 and mixed storage, and against directional differences of the
/// device's forward conv2d in the weights.
#[test]
fn weight_grad_matches_the_reference_and_finite_differences() {
    use fsd3d::ops::conv2d_backward::conv2d_weight_grad;
    for (gpu, dt) in configs() {
        for (ci, c) in CASES.iter().enumerate() {
            let n_x: usize = c.x_shape().iter().product();
            let n_y: usize = c.dy_shape().iter().product();
            let x = quantize(&rand_vec(500 + ci as u64, n_x, -1.0, 1.0), dt);
            let dy = quantize(&rand_vec(600 + ci as u64, n_y, -1.0, 1.0), dt);
            let (dw, db) = conv2d_weight_grad(&gpu, &gpu.upload(&x, &c.x_shape(), dt).unwrap(), &gpu.upload(&dy, &c.dy_shape(), dt).unwrap(), (c.kh, c.kw), c.stride, c.pad).unwrap();
            assert_eq!((dw.shape(), dw.dtype()), (&c.w_shape()[..], DType::F32));
            let (want_w, want_b) = reference_weight_grad(c, &x, &dy);
            let what = format!("{c:?} {}", label(&gpu, dt));
            assert_close(&format!("dW {what}"), &gpu.download(&dw).unwrap(), &want_w, 1e-5);
            assert_close(&format!("db {what}"), &gpu.download(&db).unwrap(), &want_b, 1e-5);
        }
    }
    // Directional differences of the forward in the weights (f32).
    let gpu = gpu();
    for (ci, c) in CASES.iter().enumerate().step_by(3) {
        let n_x: usize = c.x_shape().iter().product();
        let n_w: usize = c.w_shape().iter().product();
        let x = gpu.upload(&rand_vec(700 + ci as u64, n_x, -1.0, 1.0), &c.x_shape(), DType::F32).unwrap();
        let dy = rand_vec(800 + ci as u64, c.dy_shape().iter().product(), -1.0, 1.0);
        let w = rand_vec(900 + ci as u64, n_w, -1.0, 1.0);
        let fwd = Conv2dOpts { stride: c.stride, padding: c.pad, variant: None, padding_w: None };
        let loss = |ws: &[f32]| -> f64 {
            let y = conv2d(&gpu, &x, &gpu.upload(ws, &c.w_shape(), DType::F32).unwrap(), None, fwd).unwrap();
            gpu.download(&y).unwrap().iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let (dw, _) = fsd3d::ops::conv2d_backward::conv2d_weight_grad(&gpu, &x, &gpu.upload(&dy, &c.dy_shape(), DType::F32).unwrap(), (c.kh, c.kw), c.stride, c.pad).unwrap();
        let dw = gpu.download(&dw).unwrap();
        let u = rand_vec(1000 + ci as u64, n_w, -1.0, 1.0);
        let plus: Vec<f32> = w.iter().zip(&u).map(|(a, b)| a + b).collect();
        let minus: Vec<f32> = w.iter().zip(&u).map(|(a, b)| a - b).collect();
        let fd = (loss(&plus) - loss(&minus)) / 2.0;
        let analytic: f64 = dw.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
        let magnitude: f64 = dw.iter().zip(&u).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>().max(1.0);
        assert!((fd - analytic).abs() <= 1e-5 * magnitude, "{c:?}: finite difference {fd} vs ⟨dW, u⟩ {analytic}");
    }
    // A kernel that does not map x onto dy is named.
    let e = conv2d_weight_grad(&gpu, &gpu.zeros(&[1, 2, 5, 5], DType::F32).unwrap(), &gpu.zeros(&[1, 3, 4, 4], DType::F32).unwrap(), (3, 3), 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not dy's 4×4"), "{e}");
}
