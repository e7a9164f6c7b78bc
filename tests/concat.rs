//! Layout copies (concat, narrow, permute) against index arithmetic on the
//! CPU, for f32, f16 and u32, features on and off, and their shape errors.
mod common;
use common::*;
use fsd3d::gpu::{DType, Gpu, Tensor};
use fsd3d::ops::concat::{self, concat, narrow, permute, split_equal};

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Coordinates of flat index `i` in `shape`.
fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        c[d] = i % shape[d];
        i /= shape[d];
    }
    c
}

fn flat(c: &[usize], shape: &[usize]) -> usize {
    c.iter().zip(strides(shape)).map(|(a, s)| a * s).sum()
}

fn ref_concat(parts: &[(Vec<f32>, Vec<usize>)], axis: usize) -> (Vec<f32>, Vec<usize>) {
    let mut shape = parts[0].1.clone();
    shape[axis] = parts.iter().map(|p| p.1[axis]).sum();
    let mut out = vec![0.0; shape.iter().product()];
    let mut offset = 0;
    for (data, sh) in parts {
        for (i, &x) in data.iter().enumerate() {
            let mut c = coords(i, sh);
            c[axis] += offset;
            out[flat(&c, &shape)] = x;
        }
        offset += sh[axis];
    }
    (out, shape)
}

fn ref_permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    (0..x.len())
        .map(|i| {
            let oc = coords(i, &out_shape);
            let mut ic = vec![0; shape.len()];
            for (k, &p) in perm.iter().enumerate() {
                ic[p] = oc[k];
            }
            x[flat(&ic, shape)]
        })
        .collect()
}

/// Test values exactly representable in every dtype (integers below 2048).
fn values(seed: u64, n: usize) -> Vec<f32> {
    rand_vec(seed, n, 0.0, 2000.0).into_iter().map(f32::floor).collect()
}

/// The storage types to test on `gpu`: its float types and u32.
fn dtypes(gpu: &Gpu) -> Vec<DType> {
    let mut v = vec![DType::F32, DType::U32];
    if gpu.features().f16 {
        v.push(DType::F16);
    }
    v
}

fn up(gpu: &Gpu, x: &[f32], shape: &[usize], dt: DType) -> Tensor {
    gpu.upload(x, shape, dt).unwrap()
}

#[test]
fn concat_matches_reference_on_every_axis() {
    let base = [3usize, 5, 7, 2];
    for gpu in gpus() {
        for dt in dtypes(&gpu) {
            for axis in 0..base.len() {
                // Three parts with 1, 2 and 4 entries along the axis.
                let parts: Vec<(Vec<f32>, Vec<usize>)> = [1usize, 2, 4]
                    .iter()
                    .enumerate()
                    .map(|(k, &len)| {
                        let mut sh = base.to_vec();
                        sh[axis] = len;
                        (values(10 * axis as u64 + k as u64, sh.iter().product()), sh)
                    })
                    .collect();
                let tensors: Vec<Tensor> = parts.iter().map(|(x, sh)| up(&gpu, x, sh, dt)).collect();
                let refs: Vec<&Tensor> = tensors.iter().collect();
                let y = concat(&gpu, &refs, axis).unwrap();
                let (want, shape) = ref_concat(&parts, axis);
                assert_eq!(y.shape(), shape.as_slice());
                assert_eq!(y.dtype(), dt);
                assert_eq!(gpu.download(&y).unwrap(), want, "concat axis {axis} {}", label(&gpu, dt));
            }
        }
    }
}

#[test]
fn concat_of_cond_and_uncond_batches_and_empty_parts() {
    // The classifier-free guidance batch: [cond; uncond] along axis 0,
    // with an empty part in between that contributes nothing.
    let gpu = gpu();
    let a = values(1, 4 * 33);
    let b = values(2, 4 * 33);
    let ta = up(&gpu, &a, &[1, 4, 33], DType::F32);
    let empty = up(&gpu, &[], &[0, 4, 33], DType::F32);
    let tb = up(&gpu, &b, &[1, 4, 33], DType::F32);
    let y = concat(&gpu, &[&ta, &empty, &tb], 0).unwrap();
    assert_eq!(y.shape(), &[2, 4, 33]);
    assert_eq!(gpu.download(&y).unwrap(), [a, b].concat());
}

#[test]
fn narrow_matches_reference_and_splits_round_trip() {
    let shape = [4usize, 6, 33];
    for gpu in gpus() {
        for dt in dtypes(&gpu) {
            let x = values(3, shape.iter().product());
            let t = up(&gpu, &x, &shape, dt);
            for axis in 0..3 {
                let size = shape[axis];
                for (start, len) in [(0, 1), (1, size - 2), (size - 1, 1), (0, size)] {
                    let y = narrow(&gpu, &t, axis, start, len).unwrap();
                    let mut out_shape = shape.to_vec();
                    out_shape[axis] = len;
                    assert_eq!(y.shape(), out_shape.as_slice());
                    let want: Vec<f32> = (0..y.numel())
                        .map(|i| {
                            let mut c = coords(i, &out_shape);
                            c[axis] += start;
                            x[flat(&c, &shape)]
                        })
                        .collect();
                    assert_eq!(gpu.download(&y).unwrap(), want, "narrow axis {axis} {start}+{len} {}", label(&gpu, dt));
                }
                // split_equal then concat gives the tensor back.
                let parts = split_equal(&gpu, &t, axis, [2, 3, 11][axis]).unwrap();
                let back = concat(&gpu, &parts.iter().collect::<Vec<_>>(), axis).unwrap();
                assert_eq!(gpu.download(&back).unwrap(), x, "split/concat axis {axis} {}", label(&gpu, dt));
            }
        }
    }
}

/// All permutations of 0..n.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for pos in 0..n {
            let mut q = p.clone();
            q.insert(pos, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn permute_matches_reference_for_every_rank4_permutation() {
    let shape = [2usize, 3, 5, 7];
    for gpu in gpus() {
        for dt in [DType::F32, DType::U32] {
            let x = values(4, shape.iter().product());
            let t = up(&gpu, &x, &shape, dt);
            for perm in permutations(4) {
                let y = permute(&gpu, &t, &perm).unwrap();
                let want_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                assert_eq!(y.shape(), want_shape.as_slice());
                assert_eq!(gpu.download(&y).unwrap(), ref_permute(&x, &shape, &perm), "perm {perm:?} {}", label(&gpu, dt));
            }
        }
    }
}

#[test]
fn permute_rank6_and_nchw_nhwc_round_trip() {
    for (gpu, dt) in configs() {
        let shape = [2usize, 1, 3, 4, 1, 5];
        let x = values(5, shape.iter().product());
        let t = up(&gpu, &x, &shape, dt);
        let perm = [5, 2, 0, 4, 3, 1];
        let y = permute(&gpu, &t, &perm).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), ref_permute(&x, &shape, &perm), "rank 6 {}", label(&gpu, dt));

        // NCHW -> NHWC -> NCHW, as around a transformer block ([B, HW, C] view).
        let nchw = [2usize, 7, 5, 3];
        let x = values(6, nchw.iter().product());
        let t = up(&gpu, &x, &nchw, dt);
        let nhwc = permute(&gpu, &t, &[0, 2, 3, 1]).unwrap();
        assert_eq!(nhwc.shape(), &[2, 5, 3, 7]);
        let tokens = nhwc.reshape(&[2, 15, 7]).unwrap();
        let back = permute(&gpu, &tokens.reshape(&[2, 5, 3, 7]).unwrap(), &[0, 3, 1, 2]).unwrap();
        assert_eq!(gpu.download(&back).unwrap(), x, "NCHW round trip {}", label(&gpu, dt));
    }
}

#[test]
fn large_copies_fold_into_two_dimensions() {
    // 17M elements: more than 65 535 workgroups of 256 in x.
    let gpu = gpu();
    let n = 65_536 * 256 + 77;
    let x: Vec<f32> = (0..n).map(|i| (i % 1999) as f32).collect();
    let t = up(&gpu, &x, &[n, 1], DType::F32);
    let y = gpu.download(&narrow(&gpu, &t, 0, 5, n - 5).unwrap()).unwrap();
    for i in [0, 1, 65_535 * 256, n - 6] {
        assert_eq!(y[i], x[i + 5], "element {i}");
    }
}

#[test]
fn shape_errors_are_clear() {
    let gpu = gpu();
    let a = up(&gpu, &[0.0; 6], &[2, 3], DType::F32);
    let b = up(&gpu, &[0.0; 8], &[2, 4], DType::F32);
    let err = |r: fsd3d::Result<Tensor>| r.unwrap_err().to_string();

    assert!(err(concat(&gpu, &[&a, &b], 0)).contains("every dimension but axis 0"));
    assert!(concat(&gpu, &[&a, &b], 1).is_ok());
    assert!(err(concat(&gpu, &[&a], 2)).contains("axis 2 is out of range"));
    assert!(err(concat(&gpu, &[], 0)).contains("no tensors"));
    let ids = gpu.upload_u32(&[0; 6], &[2, 3]).unwrap();
    assert!(err(concat(&gpu, &[&a, &ids], 0)).contains("dtypes differ"));
    let r3 = up(&gpu, &[0.0; 6], &[2, 3, 1], DType::F32);
    assert!(err(concat(&gpu, &[&a, &r3], 0)).contains("every dimension"));

    assert!(err(narrow(&gpu, &a, 1, 2, 2)).contains("outside 0..3"));
    assert!(err(narrow(&gpu, &a, 2, 0, 1)).contains("out of range"));
    assert!(err(narrow(&gpu, &a, 0, usize::MAX, 2)).contains("outside"));

    assert!(err(permute(&gpu, &a, &[0, 0])).contains("not a permutation"));
    assert!(err(permute(&gpu, &a, &[1])).contains("not a permutation"));
    assert!(err(permute(&gpu, &a, &[0, 2])).contains("not a permutation"));
    let rank9 = up(&gpu, &[0.0], &[1; 9], DType::F32);
    assert!(err(permute(&gpu, &rank9, &[0, 1, 2, 3, 4, 5, 6, 7, 8])).contains(&format!("1..={}", concat::MAX_RANK)));

    let parts = split_equal(&gpu, &a, 1, 2).unwrap_err().to_string();
    assert!(parts.contains("does not split into 2 equal parts"), "{parts}");
}

/// Copies whose innermost run spans several workgroups of the grid kernel
/// (rank ≤ 3: coordinates from the dispatch grid), beside the rank-4 ones
/// that keep the strided kernel.
#[test]
fn long_rows_through_the_grid_copy() {
    for (gpu, dt) in configs() {
        let (a_shape, b_shape) = ([2usize, 3, 301], [2usize, 4, 301]);
        let a = values(7, a_shape.iter().product());
        let b = values(8, b_shape.iter().product());
        let y = concat(&gpu, &[&up(&gpu, &a, &a_shape, dt), &up(&gpu, &b, &b_shape, dt)], 1).unwrap();
        let mut want = Vec::new();
        for n in 0..2 {
            want.extend_from_slice(&a[n * 3 * 301..(n + 1) * 3 * 301]);
            want.extend_from_slice(&b[n * 4 * 301..(n + 1) * 4 * 301]);
        }
        assert_eq!(gpu.download(&y).unwrap(), want, "concat {}", label(&gpu, dt));
        let shape = [3usize, 600, 2];
        let x = values(9, shape.iter().product());
        let y = permute(&gpu, &up(&gpu, &x, &shape, dt), &[2, 0, 1]).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), ref_permute(&x, &shape, &[2, 0, 1]), "permute {}", label(&gpu, dt));
    }
}
