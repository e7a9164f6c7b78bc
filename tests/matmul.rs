//! The matmul kernels against a CPU reference: every variant × transposes ×
//! bias/activation × batch broadcasting, f32 and f16 storage, with the
//! optional features on and off, on awkward sizes (1, 7, 33, 65, 130: none a
//! multiple of the kernels' tile sizes); and the errors bad shapes give.
//!
//! Each distinct kernel (variant, storage types, layout, vec4 alignment) costs
//! lavapipe about a second to compile, so the cases are chosen to reach every
//! layout and alignment path with few kernels; sizes, batches, alpha, bias and
//! activation are parameters and vary freely.
mod common;
use common::*;
use fsd3d::gpu::{DType, Gpu};
use fsd3d::ops::elementwise::Act;
use fsd3d::ops::matmul::{MatmulOpts, MatmulVariant, default_variant, linear, matmul};
use fsd3d::ops::reference;

/// One problem: op(A) is [M, K], op(B) is [K, N]; a batch of 0 means a rank-2 operand.
#[derive(Clone, Copy, Debug)]
struct Problem {
    trans_a: bool,
    trans_b: bool,
    batch_a: usize,
    batch_b: usize,
    m: usize,
    n: usize,
    k: usize,
}

impl Problem {
    fn a_shape(&self) -> Vec<usize> {
        let (r, c) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        if self.batch_a == 0 { vec![r, c] } else { vec![self.batch_a, r, c] }
    }
    fn b_shape(&self) -> Vec<usize> {
        let (r, c) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        if self.batch_b == 0 { vec![r, c] } else { vec![self.batch_b, r, c] }
    }
    fn batch(&self) -> usize {
        self.batch_a.max(self.batch_b).max(1)
    }
}

/// For each transpose pair, two problems with the same vec4 alignment of A's and
/// B's contiguous dimension (so they share one kernel), between them covering
/// aligned and unaligned loads of both operands, K below and above the subgroup
/// kernel's 32-k chunk, a partial last step of K % 4, M = 1 and N = 1, and
/// batches broadcast either way.
fn problems() -> Vec<[Problem; 2]> {
    let p = |trans_a, trans_b, batch_a, batch_b, m, n, k| Problem { trans_a, trans_b, batch_a, batch_b, m, n, k };
    vec![
        // A [M, K] with K % 4 = 0 (vec4), B [K, N] with N % 4 != 0.
        [p(false, false, 3, 1, 33, 65, 36), p(false, false, 0, 0, 1, 7, 4)],
        // x · Wᵀ: K % 4 = 0, both vec4.
        [p(false, true, 1, 3, 130, 7, 36), p(false, true, 0, 3, 1, 65, 8)],
        // Aᵀ with M % 4 != 0, B with N % 4 = 0 (vec4), K % 4 != 0.
        [p(true, false, 3, 3, 7, 68, 33), p(true, false, 0, 0, 1, 4, 1)],
        // Aᵀ with M % 4 = 0 (vec4), Bᵀ with K % 4 != 0.
        [p(true, true, 0, 0, 36, 1, 65), p(true, true, 3, 0, 4, 33, 7)],
    ]
}

/// What follows the product: (alpha, with a bias, activation).
fn epilogues(case: usize) -> [(f32, bool, Act); 2] {
    [(1.0, false, Act::None), (0.5, true, Act::ALL[1 + case % (Act::ALL.len() - 1)])]
}

/// The reference: act(alpha · op(A) op(B) + bias) with f64 sums, [batch, M, N].
fn reference(p: &Problem, a: &[f32], b: &[f32], bias: Option<&[f32]>, alpha: f32, act: Act) -> Vec<f32> {
    let shape = reference::MatmulShape {
        batch: p.batch(),
        m: p.m,
        n: p.n,
        k: p.k,
        trans_a: p.trans_a,
        trans_b: p.trans_b,
        shared_a: p.batch_a <= 1,
        shared_b: p.batch_b <= 1,
    };
    let bias = bias.map(reference::widen);
    reference::narrow(&reference::matmul(&shape, &reference::widen(a), &reference::widen(b), bias.as_deref(), alpha as f64, act))
}

/// Tolerance for a K-term sum: rounding errors grow like √K; f16 storage of the
/// result dominates for f16 (it is rounded twice when there is an epilogue).
fn rtol(out: DType, k: usize) -> f32 {
    tol(out) * (k as f32 / 16.0).sqrt().max(1.0)
}

struct Storage {
    a: DType,
    b: DType,
    bias: DType,
    out: DType,
}

fn check(gpu: &Gpu, variant: MatmulVariant, p: &Problem, st: &Storage, seed: u64, epilogue: (f32, bool, Act)) {
    let (alpha, with_bias, act) = epilogue;
    let na: usize = p.a_shape().iter().product();
    let nb: usize = p.b_shape().iter().product();
    let a = quantize(&rand_vec(seed, na, -1.0, 1.0), st.a);
    let b = quantize(&rand_vec(seed + 1, nb, -1.0, 1.0), st.b);
    let bias = quantize(&rand_vec(seed + 2, p.n, -1.0, 1.0), st.bias);
    let at = gpu.upload(&a, &p.a_shape(), st.a).unwrap();
    let bt = gpu.upload(&b, &p.b_shape(), st.b).unwrap();
    let biast = gpu.upload(&bias, &[p.n], st.bias).unwrap();
    let opts = MatmulOpts {
        trans_a: p.trans_a,
        trans_b: p.trans_b,
        alpha,
        act,
        variant: Some(variant),
        out_dtype: Some(st.out),
    };
    let c = matmul(gpu, &at, &bt, with_bias.then_some(&biast), &opts).unwrap();
    let want_shape = if p.batch_a == 0 && p.batch_b == 0 { vec![p.m, p.n] } else { vec![p.batch(), p.m, p.n] };
    assert_eq!(c.shape(), want_shape.as_slice(), "{variant} {p:?}");
    assert_eq!(c.dtype(), st.out);
    let want = quantize(&reference(p, &a, &b, with_bias.then_some(&bias[..]), alpha, act), st.out);
    let what = format!(
        "{variant} {p:?} A {} B {} bias {} out {} alpha {alpha} bias {with_bias} {act:?} [{}]",
        st.a,
        st.b,
        st.bias,
        st.out,
        gpu.features().names().join(",")
    );
    let coop = variant == MatmulVariant::Coop;
    let t = rtol(st.out, p.k).max(rtol(operand_type(gpu, coop, st.a), p.k)).max(rtol(operand_type(gpu, coop, st.b), p.k));
    assert_close(&what, &gpu.download(&c).unwrap(), &want, t);
}

/// The variants this file runs: every one the device has but `coop`, whose
/// emulated twin takes lavapipe seconds per kernel to compile; tests/gemm.rs
/// runs it on every layout and tiling.
fn available_variants(gpu: &Gpu) -> Vec<MatmulVariant> {
    MatmulVariant::ALL.into_iter().filter(|v| v.available(gpu.caps()) && *v != MatmulVariant::Coop).collect()
}

#[test]
fn every_variant_and_layout_matches_reference_f32() {
    let f32s = Storage { a: DType::F32, b: DType::F32, bias: DType::F32, out: DType::F32 };
    for gpu in gpus() {
        for variant in available_variants(&gpu) {
            for (case, pair) in problems().iter().enumerate() {
                for (i, p) in pair.iter().enumerate() {
                    for (j, epilogue) in epilogues(case).into_iter().enumerate() {
                        let seed = (case * 100 + i * 10 + j) as u64;
                        check(&gpu, variant, p, &f32s, seed, epilogue);
                    }
                }
            }
        }
    }
}

#[test]
fn f16_storage_matches_reference() {
    for gpu in gpus().into_iter().filter(|g| g.features().f16) {
        let f16s = Storage { a: DType::F16, b: DType::F16, bias: DType::F16, out: DType::F16 };
        let cases = problems();
        // All f16: x · Wᵀ (vec4 loads) and Aᵀ · B (element loads, a partial K step);
        // one of the two for each of the big kernels (a second costs a compile).
        let runs = [
            (MatmulVariant::Simple, 1),
            (MatmulVariant::Simple, 2),
            (MatmulVariant::Blocked, 2),
            (MatmulVariant::Subgroup, 1),
        ];
        for (variant, case) in runs.into_iter().filter(|(v, _)| v.available(gpu.caps())) {
            check(&gpu, variant, &cases[case][0], &f16s, 7 + case as u64, epilogues(case)[1]);
        }
        // f16 weights with f32 activations, bias and result (the default kernel).
        let mixed = Storage { a: DType::F32, b: DType::F16, bias: DType::F32, out: DType::F32 };
        check(&gpu, default_variant(&gpu), &cases[1][0], &mixed, 21, epilogues(1)[1]);
        // An f16 result of f32 operands.
        let f16_out = Storage { a: DType::F32, b: DType::F32, bias: DType::F32, out: DType::F16 };
        check(&gpu, MatmulVariant::Simple, &cases[0][0], &f16_out, 22, epilogues(0)[1]);
    }
}

#[test]
fn linear_is_x_times_weight_transposed_plus_bias() {
    for gpu in gpus() {
        let (rows, inner, out) = (2 * 33, 36, 7);
        let x = rand_vec(30, rows * inner, -1.0, 1.0);
        let w = rand_vec(31, out * inner, -1.0, 1.0);
        let bias = rand_vec(32, out, -1.0, 1.0);
        let xt = gpu.upload(&x, &[2, 33, inner], DType::F32).unwrap();
        let wt = gpu.upload(&w, &[out, inner], DType::F32).unwrap();
        let bt = gpu.upload(&bias, &[out], DType::F32).unwrap();
        let y = linear(&gpu, &xt, &wt, Some(&bt)).unwrap();
        assert_eq!(y.shape(), &[2, 33, out]);
        let p = Problem { trans_a: false, trans_b: true, batch_a: 0, batch_b: 0, m: rows, n: out, k: inner };
        let want = reference(&p, &x, &w, Some(&bias), 1.0, Act::None);
        assert_close("linear", &gpu.download(&y).unwrap(), &want, rtol(DType::F32, inner));
    }
}

#[test]
fn bad_shapes_are_clear_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| gpu.upload(&vec![0.0; shape.iter().product()], shape, DType::F32).unwrap();
    let opts = MatmulOpts::default();
    let err = |r: fsd3d::Result<fsd3d::gpu::Tensor>| r.unwrap_err().to_string();

    let e = err(matmul(&gpu, &t(&[4, 5]), &t(&[6, 3]), None, &opts));
    assert!(e.contains("inner dimensions differ") && e.contains("[4, 5]") && e.contains("[6, 3]"), "{e}");
    // Transposed, op(B) = [3, 6]: still not K = 5.
    let e = err(matmul(&gpu, &t(&[4, 5]), &t(&[6, 3]), None, &MatmulOpts { trans_b: true, ..Default::default() }));
    assert!(e.contains("inner dimensions differ"), "{e}");
    let e = err(matmul(&gpu, &t(&[4, 5]), &t(&[5, 3]), Some(&t(&[4])), &opts));
    assert!(e.contains("bias must be [3]"), "{e}");
    let e = err(matmul(&gpu, &t(&[2, 4, 5]), &t(&[3, 5, 3]), None, &opts));
    assert!(e.contains("batch sizes 2") && e.contains("3"), "{e}");
    let e = err(matmul(&gpu, &t(&[5]), &t(&[5, 3]), None, &opts));
    assert!(e.contains("[rows, cols] or [batch, rows, cols]"), "{e}");
    let e = err(linear(&gpu, &t(&[2, 5]), &t(&[3, 4]), None));
    assert!(e.contains("weight must be [out, 5]"), "{e}");
    let idx = gpu.upload_u32(&[0; 20], &[4, 5]).unwrap();
    let e = err(matmul(&gpu, &idx, &t(&[5, 3]), None, &opts));
    assert!(e.contains("float"), "{e}");

    // The subgroup kernel on a device without subgroups.
    let off = gpus().remove(1);
    let a = off.upload(&[0.0; 20], &[4, 5], DType::F32).unwrap();
    let b = off.upload(&[0.0; 15], &[5, 3], DType::F32).unwrap();
    let e = err(matmul(&off, &a, &b, None, &MatmulOpts { variant: Some(MatmulVariant::Subgroup), ..Default::default() }));
    assert!(e.contains("SUBGROUP") && e.contains("blocked"), "{e}");
}

#[test]
fn variant_names_parse_back_and_default_follows_the_device() {
    for v in MatmulVariant::ALL {
        assert_eq!(MatmulVariant::parse(v.name()).unwrap(), v);
    }
    assert!(MatmulVariant::parse("fast").unwrap_err().to_string().contains("expected one of simple, blocked, subgroup, tiled, coop"));
    let [on, off] = <[_; 2]>::try_from(gpus()).unwrap();
    assert_eq!(default_variant(&off), MatmulVariant::Blocked);
    if on.features().subgroups && on.caps().subgroup_min_size >= 8 {
        assert_eq!(default_variant(&on), MatmulVariant::Subgroup);
    }
}
