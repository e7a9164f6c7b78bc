//! Elementwise kernels against the CPU reference, on awkward sizes, f32 and
//! f16, with every optional feature on and off.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::elementwise::{self as ew, Act, BinOp};

const SIZES: [usize; 6] = [1, 7, 33, 255, 1000, 4099];

#[test]
fn activations_match_reference() {
    for (gpu, dt) in configs() {
        for (k, &n) in SIZES.iter().enumerate() {
            let x = quantize(&rand_vec(k as u64, n, -6.0, 6.0), dt);
            let xt = gpu.upload(&x, &[n], dt).unwrap();
            for act in Act::ALL {
                let got = gpu.download(&ew::activation(&gpu, &xt, act).unwrap()).unwrap();
                let want = quantize(&x.iter().map(|&v| act.apply(v)).collect::<Vec<_>>(), dt);
                assert_close(&format!("{act:?} n={n} {}", label(&gpu, dt)), &got, &want, tol(dt));
            }
        }
    }
}

#[test]
fn affine_and_cast() {
    for (gpu, dt) in configs() {
        let x = quantize(&rand_vec(3, 257, -2.0, 2.0), dt);
        let xt = gpu.upload(&x, &[257], dt).unwrap();
        let got = gpu.download(&ew::affine(&gpu, &xt, -1.5, 0.25).unwrap()).unwrap();
        let want: Vec<f32> = x.iter().map(|v| v * -1.5 + 0.25).collect();
        assert_close(&format!("affine {}", label(&gpu, dt)), &got, &quantize(&want, dt), tol(dt));
        let other = if dt == DType::F32 && gpu.features().f16 { DType::F16 } else { DType::F32 };
        let c = ew::cast(&gpu, &xt, other).unwrap();
        assert_eq!(c.dtype(), other);
        assert_close("cast", &gpu.download(&c).unwrap(), &quantize(&x, other), tol(other));
    }
}

fn reference_binary(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize], op: BinOp) -> (Vec<f32>, Vec<usize>) {
    let out = ew::broadcast_shape(ash, bsh).unwrap();
    let n: usize = out.iter().product();
    let idx = |sh: &[usize], coord: &[usize]| -> usize {
        let off = out.len() - sh.len();
        let mut i = 0;
        for (d, &s) in sh.iter().enumerate() {
            let c = if s == 1 { 0 } else { coord[d + off] };
            i = i * s + c;
        }
        i
    };
    let mut res = vec![0.0; n];
    let mut coord = vec![0usize; out.len()];
    for (i, r) in res.iter_mut().enumerate() {
        let mut rem = i;
        for d in (0..out.len()).rev() {
            coord[d] = rem % out[d];
            rem /= out[d];
        }
        *r = op.apply(a[idx(ash, &coord)], b[idx(bsh, &coord)]);
    }
    (res, out)
}

#[test]
fn binary_ops_broadcast() {
    // Most merge to rank ≤ 3 (the grid kernel); [2, 3, 5, 7] ∘ [3, 1, 7]
    // stays rank 4 (the strided one); rows of 290 and 300 span two
    // workgroups of the grid.
    let cases: [(&[usize], &[usize]); 9] = [
        (&[7], &[7]),
        (&[2, 3, 5, 7], &[2, 3, 5, 7]),
        (&[2, 3, 5, 7], &[3, 1, 1]),  // per-channel bias
        (&[2, 3, 5, 7], &[2, 3, 1, 1]), // time embedding added to a feature map
        (&[1, 33], &[4, 1]),
        (&[3, 1, 5], &[1, 4, 1]),
        (&[2, 3, 5, 7], &[3, 1, 7]),
        (&[2, 300], &[1, 300]),
        (&[5, 3, 290], &[3, 1]),
    ];
    for (gpu, dt) in configs() {
        for (ci, (ash, bsh)) in cases.iter().enumerate() {
            let na: usize = ash.iter().product();
            let nb: usize = bsh.iter().product();
            let a = quantize(&rand_vec(10 + ci as u64, na, -2.0, 2.0), dt);
            let b = quantize(&rand_vec(20 + ci as u64, nb, 0.5, 2.0), dt);
            let at = gpu.upload(&a, ash, dt).unwrap();
            let bt = gpu.upload(&b, bsh, dt).unwrap();
            for op in BinOp::ALL {
                let y = ew::binary_act(&gpu, &at, &bt, op, Act::None).unwrap();
                let (want, shape) = reference_binary(&a, ash, &b, bsh, op);
                assert_eq!(y.shape(), shape.as_slice());
                assert_close(
                    &format!("{op:?} {ash:?}∘{bsh:?} {}", label(&gpu, dt)),
                    &gpu.download(&y).unwrap(),
                    &quantize(&want, dt),
                    tol(dt),
                );
            }
        }
    }
}

#[test]
fn binary_rejects_shapes_that_do_not_broadcast() {
    let gpu = gpu();
    let a = gpu.upload(&[0.0; 6], &[2, 3], DType::F32).unwrap();
    let b = gpu.upload(&[0.0; 4], &[4], DType::F32).unwrap();
    let err = ew::add(&gpu, &a, &b).unwrap_err().to_string();
    assert!(err.contains("do not broadcast"), "{err}");
}

#[test]
fn geglu_matches_reference() {
    for (gpu, dt) in configs() {
        for &(rows, f) in &[(1usize, 1usize), (3, 7), (5, 160)] {
            let x = quantize(&rand_vec(rows as u64 * 31 + f as u64, rows * 2 * f, -3.0, 3.0), dt);
            let y = ew::geglu(&gpu, &gpu.upload(&x, &[rows, 2 * f], dt).unwrap()).unwrap();
            assert_eq!(y.shape(), &[rows, f]);
            let mut want = Vec::new();
            for r in 0..rows {
                for c in 0..f {
                    want.push(x[r * 2 * f + c] * Act::Gelu.apply(x[r * 2 * f + f + c]));
                }
            }
            assert_close(&format!("geglu {rows}x{f} {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &quantize(&want, dt), tol(dt));
        }
    }
}

#[test]
fn large_launches_fold_into_two_dimensions() {
    // 17M elements need more than 65 535 workgroups of 256 in x.
    let gpu = gpu();
    let n = 65_536 * 256 + 77;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let y = gpu.download(&ew::affine(&gpu, &gpu.upload(&x, &[n], DType::F32).unwrap(), 2.0, 1.0).unwrap()).unwrap();
    for i in [0, 1, 65_535 * 256, n - 1] {
        assert_eq!(y[i], x[i] * 2.0 + 1.0, "element {i}");
    }
}

#[test]
fn axpby_matches_reference() {
    for (gpu, dt) in configs() {
        let x = quantize(&rand_vec(41, 129, -2.0, 2.0), dt);
        let y = quantize(&rand_vec(42, 129, -2.0, 2.0), dt);
        let got = ew::axpby(&gpu, 0.75, &gpu.upload(&x, &[129], dt).unwrap(), -1.5, &gpu.upload(&y, &[129], dt).unwrap()).unwrap();
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| 0.75 * a - 1.5 * b).collect();
        assert_close(&format!("axpby {}", label(&gpu, dt)), &gpu.download(&got).unwrap(), &quantize(&want, dt), tol(dt));
    }
}
