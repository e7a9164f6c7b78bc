//! Bench cases of the matmul family: square matrices (256 … 2048, f32 and f16)
//! and the projections of Stable Diffusion 1.5's UNet at a 64×64 latent.
//!
//! The default kernel is measured; the environment variable
//! `FSD3D_MATMUL_VARIANTS` (a comma list of variant names, or `all`) measures
//! those variants instead, for comparing kernels (see docs/performance.md).
//! The `simple` baseline is only measured up to 1024³.
use crate::bench::Case;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::matmul::{MatmulOpts, MatmulVariant, default_variant, matmul};

/// Environment variable choosing the kernels to measure (default: the default kernel).
pub const ENV_VARIANTS: &str = "FSD3D_MATMUL_VARIANTS";

/// One matmul problem: `[batch, M, K] · [K, N]`, or `· [N, K]ᵀ` for a Linear.
struct Problem {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    /// B is a Linear weight `[N, K]` shared by the batch.
    linear: bool,
}

const SQUARE: [usize; 4] = [256, 512, 1024, 2048];

/// Linear layers of Stable Diffusion 1.5's UNet at a 64×64 latent, batch 2
/// (conditional and unconditional): the attention projections at the 64², 32²
/// and 16² levels and a 320 → 1280 projection.
const UNET: [Problem; 4] = [
    Problem { batch: 2, m: 4096, n: 320, k: 320, linear: true },
    Problem { batch: 2, m: 4096, n: 1280, k: 320, linear: true },
    Problem { batch: 2, m: 1024, n: 640, k: 640, linear: true },
    Problem { batch: 2, m: 256, n: 1280, k: 1280, linear: true },
];

fn variants_to_measure(gpu: &Gpu) -> Result<Vec<MatmulVariant>> {
    let Ok(list) = std::env::var(ENV_VARIANTS) else {
        return Ok(vec![default_variant(gpu.caps())]);
    };
    if list.trim() == "all" {
        return Ok(MatmulVariant::ALL.into_iter().filter(|v| v.available(gpu.caps())).collect());
    }
    list.split(',').map(|s| MatmulVariant::parse(s.trim())).collect()
}

fn inputs(gpu: &Gpu, p: &Problem, dtype: DType) -> Result<(Tensor, Tensor)> {
    // Small values keep f16 sums finite; the data does not change the timing.
    let fill = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + seed) % 17) as f32 / 17.0 - 0.5).collect() };
    let a = gpu.upload(&fill(p.batch * p.m * p.k, 1), &[p.batch, p.m, p.k], dtype)?;
    let b_shape = if p.linear { [p.n, p.k] } else { [p.k, p.n] };
    let b = gpu.upload(&fill(p.n * p.k, 2), &b_shape, dtype)?;
    Ok((a, b))
}

fn case<'a>(gpu: &'a Gpu, p: Problem, dtype: DType, variant: MatmulVariant) -> Result<Case<'a>> {
    let (a, b) = inputs(gpu, &p, dtype)?;
    let opts = MatmulOpts { trans_b: p.linear, variant: Some(variant), ..Default::default() };
    let flops = 2.0 * (p.batch * p.m * p.n * p.k) as f64;
    let bytes = ((p.batch * p.m * p.k + p.n * p.k + p.batch * p.m * p.n) * dtype.size()) as f64;
    // [batch x] M x K · K x N (or · (N x K)ᵀ).
    let batch = if p.batch > 1 { format!("{}x", p.batch) } else { String::new() };
    let rhs = if p.linear { format!("({}x{})ᵀ", p.n, p.k) } else { format!("{}x{}", p.k, p.n) };
    let shape = format!("{batch}{}x{} · {rhs}", p.m, p.k);
    Ok(Case {
        kernel: format!("matmul.{variant}"),
        shape,
        dtype,
        flops,
        bytes,
        record: Box::new(move || matmul(gpu, &a, &b, None, &opts).map(drop)),
    })
}

pub fn cases(gpu: &Gpu, quick: bool) -> Result<Vec<Case<'_>>> {
    let dtypes: Vec<DType> = if gpu.features().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] };
    let sizes: &[usize] = if quick { &SQUARE[..1] } else { &SQUARE };
    let mut v = Vec::new();
    for variant in variants_to_measure(gpu)? {
        // The baseline reaches ~0.2 GFLOP/s on lavapipe: past 1024³ one product takes minutes.
        let affordable = |flops: usize| variant != MatmulVariant::Simple || flops <= 2 * 1024 * 1024 * 1024;
        for &dtype in &dtypes {
            for &s in sizes.iter().filter(|&&s| affordable(2 * s * s * s)) {
                let p = Problem { batch: 1, m: s, n: s, k: s, linear: false };
                v.push(case(gpu, p, dtype, variant)?);
            }
        }
        if !quick && affordable(usize::MAX) {
            for &dtype in &dtypes {
                for p in UNET {
                    v.push(case(gpu, p, dtype, variant)?);
                }
            }
        }
    }
    Ok(v)
}
