//! Fused attention against a plain CPU softmax(q·kᵀ)·v, on awkward sequence
//! lengths (not multiples of the 64-query / BK-key tiles), 1..8 heads, the
//! supported head dims, causal on and off, f32 and f16, features on and off.
mod common;
use common::*;
use fsd3d::gpu::{DType, Gpu, Tensor};
use fsd3d::ops::attention::{self, AttentionOpts, AttentionVariant, SUPPORTED_HEAD_DIMS};
use fsd3d::ops::reference;

/// One attention problem.
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    causal: bool,
}

/// softmax(scale · q kᵀ) v per batch and head, f64 accumulation; key j is
/// visible to query i under the causal mask when j <= i.
fn reference(c: &Case, scale: f64, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let shape = reference::AttentionShape { batch: c.batch, lq: c.lq, lk: c.lk, heads: c.heads, d: c.d, causal: c.causal };
    reference::narrow(&reference::attention(&shape, scale, &reference::widen(q), &reference::widen(k), &reference::widen(v)))
}

/// Uploads random q, k, v (values in ±amp), runs the kernel, returns (got, want).
fn run_case(gpu: &Gpu, dt: DType, variant: AttentionVariant, c: &Case, seed: u64, amp: f32, scale: Option<f32>) -> (Vec<f32>, Vec<f32>) {
    let hd = c.heads * c.d;
    let q = quantize(&rand_vec(seed, c.batch * c.lq * hd, -amp, amp), dt);
    let k = quantize(&rand_vec(seed + 1, c.batch * c.lk * hd, -amp, amp), dt);
    let v = quantize(&rand_vec(seed + 2, c.batch * c.lk * hd, -1.0, 1.0), dt);
    let qt = gpu.upload(&q, &[c.batch, c.lq, hd], dt).unwrap();
    let kt = gpu.upload(&k, &[c.batch, c.lk, hd], dt).unwrap();
    let vt = gpu.upload(&v, &[c.batch, c.lk, hd], dt).unwrap();
    let opts = AttentionOpts { heads: c.heads, scale, causal: c.causal, variant: Some(variant) };
    let y = attention::attention(gpu, &qt, &kt, &vt, &opts).unwrap();
    assert_eq!(y.shape(), &[c.batch, c.lq, hd]);
    assert_eq!(y.dtype(), dt);
    let want = reference(c, scale.map_or(1.0 / (c.d as f64).sqrt(), |s| s as f64), &q, &k, &v);
    (gpu.download(&y).unwrap(), quantize(&want, dt))
}

/// f32: the outputs are convex combinations of v (|v| <= 1) with weights from
/// short dot products: a few ulp. f16: the output itself is rounded to f16.
fn attention_tol(dt: DType) -> f32 {
    match dt {
        DType::F16 => tol(DType::F16),
        _ => 1e-5,
    }
}

/// The variants run for head dim `d`. FusedQuad's body is one loop over the
/// D/8 dim groups at every D, but llvmpipe needs 9 to 60 s to compile it
/// beyond D = 40 (then cached on disk), so the tests run it up to D = 40.
/// The matrix-unit kernel (f16 operands) has its own cases below.
fn variants_for(d: usize) -> Vec<AttentionVariant> {
    AttentionVariant::ALL.into_iter().filter(|&v| v == AttentionVariant::Fused || (v == AttentionVariant::FusedQuad && d <= 40)).collect()
}

const AWKWARD: [Case; 9] = [
    Case { batch: 1, lq: 1, lk: 1, heads: 1, d: 8, causal: false },
    Case { batch: 2, lq: 7, lk: 33, heads: 3, d: 16, causal: false },
    Case { batch: 1, lq: 33, lk: 33, heads: 2, d: 40, causal: true },
    Case { batch: 1, lq: 77, lk: 77, heads: 1, d: 64, causal: true }, // CLIP's text encoder
    Case { batch: 2, lq: 130, lk: 77, heads: 2, d: 40, causal: false }, // SD cross-attention
    Case { batch: 1, lq: 130, lk: 7, heads: 8, d: 8, causal: false },
    Case { batch: 1, lq: 7, lk: 130, heads: 1, d: 80, causal: false },
    Case { batch: 1, lq: 33, lk: 130, heads: 1, d: 160, causal: true }, // Lq < Lk, causal
    Case { batch: 1, lq: 130, lk: 33, heads: 2, d: 24, causal: true }, // Lq > Lk, causal
];

fn check_cases(gpu: &Gpu, dt: DType, cases: &[Case], seed: u64) {
    for (n, c) in cases.iter().enumerate() {
        for variant in variants_for(c.d) {
            let (got, want) = run_case(gpu, dt, variant, c, seed + n as u64, 1.0, None);
            assert_close(&format!("{variant} {c:?} {}", label(gpu, dt)), &got, &want, attention_tol(dt));
        }
    }
}

#[test]
fn matches_reference_on_awkward_sizes() {
    // Every case in f32 with the features on; a few in f16 and without
    // features (subgroups off: FusedQuad's fallback), to bound compile time.
    for (gpu, dt) in configs() {
        let all_features = gpu.features() == gpus()[0].features();
        if all_features && dt == DType::F32 {
            check_cases(&gpu, dt, &AWKWARD, 100);
        } else {
            check_cases(&gpu, dt, &[AWKWARD[1], AWKWARD[2], AWKWARD[4]], 200);
        }
    }
}

#[test]
fn every_head_dim_runs() {
    // Each compiled head dim once (f32, features on), short sequences.
    let gpu = gpu();
    for (n, &d) in SUPPORTED_HEAD_DIMS.iter().enumerate() {
        let c = Case { batch: 1, lq: 9, lk: 35, heads: 2, d, causal: n % 2 == 0 };
        for variant in variants_for(d) {
            let (got, want) = run_case(&gpu, DType::F32, variant, &c, 300 + n as u64, 1.0, None);
            assert_close(&format!("{variant} {c:?}"), &got, &want, attention_tol(DType::F32));
        }
    }
}

#[test]
fn long_sequence_with_large_score_range() {
    // 1000 keys and scores spanning about ±50: the running max changes many
    // times and exp of unshifted scores would overflow f32.
    let c = Case { batch: 1, lq: 33, lk: 1000, heads: 2, d: 40, causal: false };
    let scale = 6.0;
    for (gpu, dt) in configs() {
        for variant in variants_for(c.d) {
            let (got, want) = run_case(&gpu, dt, variant, &c, 7, 1.0, Some(scale));
            // Scores of ±50 carry an absolute rounding of ~50·2⁻²⁴ per
            // operation: f32 results are good to a few 1e-6 of the output scale.
            let rtol = if dt == DType::F16 { tol(DType::F16) } else { 5e-5 };
            assert_close(&format!("{variant} Lk=1000 scale {scale} {}", label(&gpu, dt)), &got, &want, rtol);
        }
    }
    // The inputs do reach the intended range (q: seed 7, k: seed 8, as run_case draws them).
    let hd = c.heads * c.d;
    let q = rand_vec(7, c.lq * hd, -1.0, 1.0);
    let k = rand_vec(8, c.lk * hd, -1.0, 1.0);
    let max_score = (0..c.lq)
        .flat_map(|i| (0..c.lk).map(move |j| (i, j)))
        .map(|(i, j)| scale * (0..c.d).map(|e| q[i * hd + e] * k[j * hd + e]).sum::<f32>())
        .fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(max_score > 40.0, "scores reach only ±{max_score}");
}

#[test]
fn default_variant_matches_too() {
    // variant: None picks per device and head dim (FusedQuad on lavapipe up to D = 80).
    let gpu = gpu();
    let c = AWKWARD[4];
    let hd = c.heads * c.d;
    let q = rand_vec(1, c.batch * c.lq * hd, -1.0, 1.0);
    let k = rand_vec(2, c.batch * c.lk * hd, -1.0, 1.0);
    let v = rand_vec(3, c.batch * c.lk * hd, -1.0, 1.0);
    let up = |x: &[f32], l: usize| gpu.upload(x, &[c.batch, l, hd], DType::F32).unwrap();
    let y = attention::attention(&gpu, &up(&q, c.lq), &up(&k, c.lk), &up(&v, c.lk), &AttentionOpts::new(c.heads)).unwrap();
    let want = reference(&c, 1.0 / (c.d as f64).sqrt(), &q, &k, &v);
    assert_close("default variant", &gpu.download(&y).unwrap(), &want, attention_tol(DType::F32));
    eprintln!("default variant for D={} on {}: {}", c.d, gpu.adapter_name(), AttentionVariant::default_for(&gpu, c.d));
}

#[test]
fn causal_first_query_copies_the_first_value() {
    // Under the causal mask query 0 sees key 0 alone: out[0] = v[0] exactly.
    let gpu = gpu();
    let c = Case { batch: 1, lq: 5, lk: 5, heads: 2, d: 16, causal: true };
    let v = rand_vec(13, c.lk * 32, -1.0, 1.0);
    for variant in variants_for(c.d) {
        let (got, _) = run_case(&gpu, DType::F32, variant, &c, 11, 1.0, None);
        assert_eq!(&got[..32], &v[..32], "{variant}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| gpu.upload(&vec![0.0; shape.iter().product()], shape, DType::F32).unwrap();
    let q = t(&[1, 4, 24]);
    let kv = t(&[1, 6, 24]);
    let run = |q: &Tensor, k: &Tensor, v: &Tensor, heads: usize| attention::attention(&gpu, q, k, v, &AttentionOpts::new(heads)).unwrap_err().to_string();

    let err = run(&q, &kv, &kv, 2); // D = 12
    assert!(err.contains("head dim 12") && err.contains("supported head dims"), "{err}");
    let err = run(&q, &kv, &kv, 5);
    assert!(err.contains("does not split into 5 heads"), "{err}");
    let err = run(&q, &kv, &t(&[1, 7, 24]), 3);
    assert!(err.contains("same shape"), "{err}");
    let err = run(&q, &t(&[2, 6, 24]), &t(&[2, 6, 24]), 3);
    assert!(err.contains("batch"), "{err}");
    let err = run(&t(&[4, 24]), &kv, &kv, 3);
    assert!(err.contains("[B, L, H·D]"), "{err}");
    let err = run(&q, &t(&[1, 0, 24]), &t(&[1, 0, 24]), 3);
    assert!(err.contains("Lk = 0"), "{err}");
    let ids = gpu.upload_u32(&[0; 24], &[1, 1, 24]).unwrap();
    let err = run(&ids, &kv, &kv, 3);
    assert!(err.contains("float"), "{err}");
}

#[test]
fn variant_names_round_trip() {
    for v in AttentionVariant::ALL {
        assert_eq!(AttentionVariant::parse(v.name()).unwrap(), v);
    }
    let err = AttentionVariant::parse("nope").unwrap_err().to_string();
    assert!(err.contains("fused"), "{err}");
}

/// The unfused path of the models' attention (head dims without a kernel,
/// as the VAE's 512-wide head) computes its scores in blocks of query rows
/// when all of them would pass a byte limit: the blocks, the last one short,
/// give the reference's result, self- and cross-attention alike.
#[test]
fn unfused_attention_in_query_blocks_matches_the_reference() {
    use fsd3d::models::nn::attention_within;
    let gpu = gpu();
    for (n, c) in [Case { batch: 2, lq: 37, lk: 37, heads: 2, d: 12, causal: false }, Case { batch: 1, lq: 37, lk: 13, heads: 1, d: 20, causal: false }]
        .iter()
        .enumerate()
    {
        assert!(!SUPPORTED_HEAD_DIMS.contains(&c.d), "the case must take the unfused path");
        let hd = c.heads * c.d;
        let q = rand_vec(400 + n as u64, c.batch * c.lq * hd, -1.0, 1.0);
        let k = rand_vec(500 + n as u64, c.batch * c.lk * hd, -1.0, 1.0);
        let v = rand_vec(600 + n as u64, c.batch * c.lk * hd, -1.0, 1.0);
        let want = reference(c, 1.0 / (c.d as f64).sqrt(), &q, &k, &v);
        let up = |x: &[f32], l: usize| gpu.upload(x, &[c.batch, l, hd], DType::F32).unwrap();
        let (qt, kt, vt) = (up(&q, c.lq), up(&k, c.lk), up(&v, c.lk));
        // Scores of 5 query rows fit: blocks of 5, 5, ..., 2.
        let row_bytes = (c.batch * c.heads * c.lk * 4) as u64;
        for (what, max_bytes) in [("one block", u64::MAX), ("blocks of 5 rows", 5 * row_bytes + row_bytes / 2), ("one row at a time", 1)] {
            let y = attention_within(&gpu, &qt, &kt, &vt, c.heads, false, max_bytes).unwrap();
            assert_eq!(y.shape(), &[c.batch, c.lq, hd]);
            assert_close(&format!("{c:?} {what}"), &gpu.download(&y).unwrap(), &want, attention_tol(DType::F32));
        }
    }
}

/// The matrix-unit kernel multiplies f16 operands (q, k, the probabilities
/// and v are rounded to 11 bits) with f32 sums and an f32 softmax: its
/// outputs, convex combinations of values in [-1, 1], move by ~1e-3.
const COOP_TOL: f32 = 1e-2;

/// Flash attention on the matrix units (their emulated twin on adapters
/// without them): SD's head dims 40, 64, 80 and 160, self- and
/// cross-attention lengths no block divides, causal and not, f32 and f16
/// storage, and a long sequence whose running max moves.
#[test]
fn matrix_unit_attention_matches_reference() {
    // Each head dim and storage type is a kernel that lavapipe compiles
    // anew (seconds, for the emulated twin): lengths, causality and batch
    // are parameters and vary freely within one.
    let cases = [
        Case { batch: 2, lq: 37, lk: 77, heads: 2, d: 40, causal: false }, // SD 1.5 cross-attention
        Case { batch: 1, lq: 1, lk: 1, heads: 1, d: 40, causal: false },
        Case { batch: 1, lq: 33, lk: 600, heads: 1, d: 40, causal: true }, // many key blocks, the max moves
        Case { batch: 1, lq: 77, lk: 77, heads: 1, d: 64, causal: true },  // CLIP's text encoder
        Case { batch: 1, lq: 70, lk: 45, heads: 2, d: 80, causal: false },
        Case { batch: 1, lq: 21, lk: 130, heads: 1, d: 160, causal: true }, // SD 2.1's 160, Lq < Lk causal
    ];
    for (gpu, dt) in configs().into_iter().filter(|(g, _)| AttentionVariant::Coop.available(g.caps())) {
        for (n, c) in cases.iter().enumerate() {
            if dt == DType::F16 && c.d != 40 {
                continue; // f16 storage at one head dim
            }
            let (got, want) = run_case(&gpu, dt, AttentionVariant::Coop, c, 400 + n as u64, 1.0, None);
            assert_close(&format!("coop {c:?} {}", label(&gpu, dt)), &got, &want, COOP_TOL);
        }
    }
}

#[test]
fn matrix_unit_attention_needs_f16() {
    let off = gpus().remove(1);
    assert!(!AttentionVariant::Coop.available(off.caps()));
    let x = off.upload(&[0.0; 16], &[1, 1, 16], DType::F32).unwrap();
    let opts = AttentionOpts { heads: 1, scale: None, causal: false, variant: Some(AttentionVariant::Coop) };
    let err = attention::attention(&off, &x, &x, &x, &opts).unwrap_err().to_string();
    assert!(err.contains("SHADER_F16") && err.contains("fused"), "{err}");
}
