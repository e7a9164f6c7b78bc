//! Softmax against a CPU reference (f64), on awkward row lengths, f32 and f16,
//! with every optional feature on and off; large logits, masked (−inf)
//! entries, and bad input.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::norm::WORKGROUP_SIZES;
use fsd3d::ops::softmax::{softmax, softmax_with_workgroup};

fn reference_softmax(x: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let v: Vec<f64> = row.iter().map(|&e| scale as f64 * e as f64).collect();
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = v.iter().map(|e| (e - m).exp()).sum();
        out.extend(v.iter().map(|e| ((e - m).exp() / s) as f32));
    }
    out
}

#[test]
fn softmax_matches_reference() {
    let shapes: [&[usize]; 7] = [&[3, 1], &[3, 7], &[2, 33], &[2, 255], &[2, 1000], &[2, 3, 77], &[5]];
    for (gpu, dt) in configs() {
        for (si, &shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let d = *shape.last().unwrap();
            let x = quantize(&rand_vec(si as u64, n, -8.0, 8.0), dt);
            let xt = gpu.upload(&x, shape, dt).unwrap();
            for scale in [1.0, 0.125, -2.0] {
                let want = quantize(&reference_softmax(&x, d, scale), dt);
                for wg in WORKGROUP_SIZES {
                    let y = softmax_with_workgroup(&gpu, &xt, scale, wg).unwrap();
                    assert_eq!(y.shape(), shape);
                    assert_eq!(y.dtype(), dt);
                    let what = format!("softmax {shape:?} scale={scale} wg={wg} {}", label(&gpu, dt));
                    assert_close(&what, &gpu.download(&y).unwrap(), &want, tol(dt));
                }
            }
        }
    }
}

#[test]
fn large_logits_do_not_overflow() {
    // exp(1000) overflows f32: only the subtraction of the maximum keeps this finite.
    for (gpu, dt) in configs() {
        let x = quantize(&rand_vec(9, 2 * 300, 990.0, 1010.0), dt);
        let xt = gpu.upload(&x, &[2, 300], dt).unwrap();
        for wg in WORKGROUP_SIZES {
            let y = gpu.download(&softmax_with_workgroup(&gpu, &xt, 1.0, wg).unwrap()).unwrap();
            assert_close(&format!("large logits wg={wg} {}", label(&gpu, dt)), &y, &quantize(&reference_softmax(&x, 300, 1.0), dt), tol(dt));
        }
    }
}

#[test]
fn masked_entries_get_zero_probability() {
    // A causal mask as CLIP's text encoder uses: row i sees columns 0..=i.
    let d = 77;
    for (gpu, dt) in configs() {
        let mut x = quantize(&rand_vec(10, d * d, -3.0, 3.0), dt);
        for i in 0..d {
            for j in i + 1..d {
                x[i * d + j] = f32::NEG_INFINITY;
            }
        }
        let y = gpu.download(&softmax(&gpu, &gpu.upload(&x, &[d, d], dt).unwrap(), 0.5).unwrap()).unwrap();
        let want = quantize(&reference_softmax(&x, d, 0.5), dt);
        assert_close(&format!("causal mask {}", label(&gpu, dt)), &y, &want, tol(dt));
        assert!((0..d).all(|i| (i + 1..d).all(|j| y[i * d + j] == 0.0)));
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let ids = gpu.upload_u32(&[1, 2, 3], &[3]).unwrap();
    let err = softmax(&gpu, &ids, 1.0).unwrap_err().to_string();
    assert!(err.contains("float"), "{err}");
    let scalar = gpu.upload(&[1.0], &[], DType::F32).unwrap();
    let err = softmax(&gpu, &scalar, 1.0).unwrap_err().to_string();
    assert!(err.contains("scalar"), "{err}");
    let x = gpu.upload(&[1.0; 4], &[4], DType::F32).unwrap();
    let err = softmax_with_workgroup(&gpu, &x, 1.0, 100).unwrap_err().to_string();
    assert!(err.contains("workgroup size 100"), "{err}");
}
