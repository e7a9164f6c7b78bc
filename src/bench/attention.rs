//! Bench cases of the attention family: Stable Diffusion 1.5 at a 64×64
//! latent with batch 2 (classifier-free guidance), and the tiny prior's shapes.
//!
//! `fsd3d bench --variants attention` compares every attention variant,
//! checked first (see [`crate::bench::variants`]); this file gives it the
//! shapes and the CPU reference.
use crate::bench::Case;
use crate::bench::variants::{Sample, VariantProblem, as_stored, attention_bucket, pseudo_random};
use crate::error::Result;
use crate::gpu::{Caps, DType, Gpu};
use crate::ops::attention::{AttentionOpts, AttentionVariant, attention, choose_variant};

/// One measured problem.
#[derive(Clone, Copy, Debug)]
struct Shape {
    label: &'static str,
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    /// Stored as f16 (skipped where the device has no f16).
    f16: bool,
}

const fn shape(label: &'static str, batch: usize, lq: usize, lk: usize, heads: usize, d: usize, f16: bool) -> Shape {
    Shape { label, batch, lq, lk, heads, d, f16 }
}

/// Smallest first: `quick` runs the first one only.
const SHAPES: [Shape; 8] = [
    shape("tiny prior self", 2, 64, 64, 4, 16, false),
    shape("tiny prior self", 2, 256, 256, 8, 8, false),
    shape("tiny prior self", 2, 256, 256, 4, 32, false),
    shape("sd15 self 16x16", 2, 256, 256, 8, 160, false),
    shape("sd15 self 32x32", 2, 1024, 1024, 8, 80, false),
    shape("sd15 cross 64x64", 2, 4096, 77, 8, 40, false),
    shape("sd15 self 64x64", 2, 4096, 4096, 8, 40, false),
    shape("sd15 self 64x64", 2, 4096, 4096, 8, 40, true),
];

/// Deterministic inputs in [-1, 1].
fn fill(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 8.0).collect()
}

impl Shape {
    fn flops(&self) -> f64 {
        4.0 * (self.batch * self.heads * self.lq * self.lk * self.d) as f64
    }
    fn label(&self) -> String {
        format!("B{} Lq{} Lk{} H{} D{}", self.batch, self.lq, self.lk, self.heads, self.d)
    }
}

/// A case of `s` in `dtype` with `variant` (`None`: the op's own choice, named in the label).
fn case<'a>(gpu: &'a Gpu, s: &Shape, dtype: DType, variant: Option<AttentionVariant>, kernel_prefix: &str) -> Result<Case<'a>> {
    let (b, hd) = (s.batch, s.heads * s.d);
    let q = gpu.upload(&fill(b * s.lq * hd, 1), &[b, s.lq, hd], dtype)?;
    let k = gpu.upload(&fill(b * s.lk * hd, 2), &[b, s.lk, hd], dtype)?;
    let vv = gpu.upload(&fill(b * s.lk * hd, 3), &[b, s.lk, hd], dtype)?;
    let opts = AttentionOpts { variant, ..AttentionOpts::new(s.heads) };
    let chosen = choose_variant(gpu, variant, s.d, || attention_bucket(dtype, s.d, s.lq, s.lk))?;
    Ok(Case {
        kernel: format!("{kernel_prefix}{chosen}"),
        shape: s.label(),
        dtype,
        flops: s.flops(),
        bytes: ((2 * s.lq + 2 * s.lk) * b * hd * dtype.size()) as f64,
        record: Box::new(move || attention(gpu, &q, &k, &vv, &opts).map(drop)),
    })
}

/// The attention cases (FLOPs = 4·B·H·Lq·Lk·D); `quick` keeps the smallest only.
pub fn cases(gpu: &Gpu, quick: bool) -> Result<Vec<Case<'_>>> {
    let shapes = if quick { &SHAPES[..1] } else { &SHAPES[..] };
    let mut v = Vec::new();
    for s in shapes {
        if s.f16 && !gpu.features().f16 {
            continue;
        }
        let dtype = if s.f16 { DType::F16 } else { DType::F32 };
        v.push(case(gpu, s, dtype, None, &format!("attention {} ", s.label))?);
    }
    Ok(v)
}

// ---- `bench --variants attention` ----

/// The attention variants the device can run.
pub(crate) fn variant_names(caps: Caps) -> Vec<&'static str> {
    AttentionVariant::ALL.into_iter().filter(|v| v.available(caps)).map(AttentionVariant::name).collect()
}

/// Shapes every variant is timed on (each dtype is the runner's): quick, the
/// smallest; else all of [`SHAPES`].
pub(crate) fn variant_problems(quick: bool) -> Vec<Box<dyn VariantProblem>> {
    let shapes = SHAPES.iter().filter(|s| !s.f16).take(if quick { 1 } else { SHAPES.len() });
    shapes.map(|s| Box::new(*s) as Box<dyn VariantProblem>).collect()
}

impl VariantProblem for Shape {
    fn shape(&self) -> String {
        format!("{} · {}", self.label, self.label())
    }
    fn bucket(&self, dtype: DType) -> String {
        attention_bucket(dtype, self.d, self.lq, self.lk)
    }
    fn default_variant(&self, gpu: &Gpu) -> &'static str {
        AttentionVariant::default_for(gpu, self.d).name()
    }
    fn affordable(&self, _variant: &str) -> bool {
        true
    }
    fn case<'a>(&self, gpu: &'a Gpu, variant: &str, dtype: DType) -> Result<Case<'a>> {
        case(gpu, self, dtype, Some(AttentionVariant::parse(variant)?), "attention.")
    }
}

/// A check problem: query and key counts off the 64/256-query workgroups and
/// the 8-key steps, cross- and self-attention, causal. One head dim: llvmpipe
/// takes seconds to compile the quad kernel at SD's (tests/attention.rs
/// covers every head dim).
struct CheckAttention {
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    causal: bool,
    scale: Option<f32>,
}

const CHECKS: [CheckAttention; 2] = [
    CheckAttention { batch: 2, lq: 37, lk: 19, heads: 2, d: 16, causal: false, scale: None },
    CheckAttention { batch: 1, lq: 67, lk: 67, heads: 3, d: 16, causal: true, scale: Some(0.3) },
];

/// Runs `variant` on the check problems next to a CPU loop nest.
pub(crate) fn check_samples(gpu: &Gpu, variant: &str, dtype: DType) -> Result<Vec<Sample>> {
    let variant = AttentionVariant::parse(variant)?;
    let mut out = Vec::new();
    for (i, c) in CHECKS.iter().enumerate() {
        let seed = 10 * i as u32 + 200;
        let hd = c.heads * c.d;
        let q = pseudo_random(c.batch * c.lq * hd, seed + 1);
        let k = pseudo_random(c.batch * c.lk * hd, seed + 2);
        let v = pseudo_random(c.batch * c.lk * hd, seed + 3);
        let tq = gpu.upload(&q, &[c.batch, c.lq, hd], dtype)?;
        let tk = gpu.upload(&k, &[c.batch, c.lk, hd], dtype)?;
        let tv = gpu.upload(&v, &[c.batch, c.lk, hd], dtype)?;
        let opts = AttentionOpts { scale: c.scale, causal: c.causal, variant: Some(variant), ..AttentionOpts::new(c.heads) };
        let got = gpu.download(&attention(gpu, &tq, &tk, &tv, &opts)?)?;
        let want = reference(c, &as_stored(&q, dtype), &as_stored(&k, dtype), &as_stored(&v, dtype));
        let causal = if c.causal { " causal" } else { "" };
        out.push(Sample { shape: format!("B{} Lq{} Lk{} H{} D{}{causal}", c.batch, c.lq, c.lk, c.heads, c.d), got, want });
    }
    Ok(out)
}

/// The library's reference (ops::reference::attention) for a check case.
fn reference(c: &CheckAttention, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let shape = crate::ops::reference::AttentionShape { batch: c.batch, lq: c.lq, lk: c.lk, heads: c.heads, d: c.d, causal: c.causal };
    let scale = c.scale.map_or(1.0 / (c.d as f64).sqrt(), |s| s as f64);
    crate::ops::reference::attention(&shape, scale, q, k, v)
}
