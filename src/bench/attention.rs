//! Bench cases of the attention family: Stable Diffusion 1.5 at a 64×64
//! latent with batch 2 (classifier-free guidance), and the tiny prior's shapes.
use crate::bench::Case;
use crate::error::Result;
use crate::gpu::{DType, Gpu};
use crate::ops::attention::{AttentionOpts, attention};

/// One measured problem.
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

/// The attention cases (FLOPs = 4·B·H·Lq·Lk·D); `quick` keeps the smallest only.
pub fn cases(gpu: &Gpu, quick: bool) -> Result<Vec<Case<'_>>> {
    let shapes = if quick { &SHAPES[..1] } else { &SHAPES[..] };
    let mut v = Vec::new();
    for s in shapes {
        if s.f16 && !gpu.features().f16 {
            continue;
        }
        let dtype = if s.f16 { DType::F16 } else { DType::F32 };
        let (b, hd) = (s.batch, s.heads * s.d);
        let q = gpu.upload(&fill(b * s.lq * hd, 1), &[b, s.lq, hd], dtype)?;
        let k = gpu.upload(&fill(b * s.lk * hd, 2), &[b, s.lk, hd], dtype)?;
        let vv = gpu.upload(&fill(b * s.lk * hd, 3), &[b, s.lk, hd], dtype)?;
        let opts = AttentionOpts::new(s.heads);
        v.push(Case {
            kernel: format!("attention {}", s.label),
            shape: format!("B{b} Lq{} Lk{} H{} D{}", s.lq, s.lk, s.heads, s.d),
            dtype,
            flops: 4.0 * (b * s.heads * s.lq * s.lk * s.d) as f64,
            bytes: ((2 * s.lq + 2 * s.lk) * b * hd * dtype.size()) as f64,
            record: Box::new(move || attention(gpu, &q, &k, &vv, &opts).map(drop)),
        });
    }
    Ok(v)
}
