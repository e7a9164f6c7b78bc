//! Bench cases of the matmul family: square matrices (256 … 2048, f32 and f16)
//! and the projections of Stable Diffusion 1.5's UNet at a 64×64 latent.
//!
//! The kernel the op would choose is measured (the default, or the autotuned
//! or `--variant` one); the environment variable `FSD3D_MATMUL_VARIANTS` (a
//! comma list of variant names, or `all`) measures those variants instead.
//! `fsd3d bench --variants matmul` compares every variant, checked first (see
//! [`crate::bench::variants`]); this file gives it the shapes and the CPU
//! reference. The `simple` baseline is only measured up to 1024³.
use crate::bench::Case;
use crate::bench::variants::{Sample, VariantProblem, as_stored, matmul_bucket, pseudo_random};
use crate::error::Result;
use crate::gpu::{Caps, DType, Gpu, Tensor};
use crate::ops::elementwise::Act;
use crate::ops::matmul::{MatmulOpts, MatmulVariant, choose_variant, default_variant, matmul};

/// Environment variable choosing the kernels to measure (default: the one the op chooses).
pub const ENV_VARIANTS: &str = "FSD3D_MATMUL_VARIANTS";

/// One matmul problem: `[batch, M, K] · [K, N]`, or `· [N, K]ᵀ` for a Linear.
#[derive(Clone, Copy, Debug)]
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

/// SD 1.5's key and value projections of the 77 text tokens (768 wide) at the 64² level.
const TEXT_PROJECTION: Problem = Problem { batch: 2, m: 77, n: 320, k: 768, linear: true };

impl Problem {
    fn square(s: usize) -> Problem {
        Problem { batch: 1, m: s, n: s, k: s, linear: false }
    }
    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
    /// `[batch x] M x K · K x N` (or `· (N x K)ᵀ`).
    fn label(&self) -> String {
        let batch = if self.batch > 1 { format!("{}x", self.batch) } else { String::new() };
        let rhs = if self.linear { format!("({}x{})ᵀ", self.n, self.k) } else { format!("{}x{}", self.k, self.n) };
        format!("{batch}{}x{} · {rhs}", self.m, self.k)
    }
}

/// `None` measures what the op chooses.
fn variants_to_measure(gpu: &Gpu) -> Result<Vec<Option<MatmulVariant>>> {
    let Ok(list) = std::env::var(ENV_VARIANTS) else {
        return Ok(vec![None]);
    };
    if list.trim() == "all" {
        return Ok(MatmulVariant::ALL.into_iter().filter(|v| v.available(gpu.caps())).map(Some).collect());
    }
    list.split(',').map(|s| MatmulVariant::parse(s.trim()).map(Some)).collect()
}

fn inputs(gpu: &Gpu, p: &Problem, dtype: DType) -> Result<(Tensor, Tensor)> {
    // Small values keep f16 sums finite; the data does not change the timing.
    let fill = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + seed) % 17) as f32 / 17.0 - 0.5).collect() };
    let a = gpu.upload(&fill(p.batch * p.m * p.k, 1), &[p.batch, p.m, p.k], dtype)?;
    let b_shape = if p.linear { [p.n, p.k] } else { [p.k, p.n] };
    let b = gpu.upload(&fill(p.n * p.k, 2), &b_shape, dtype)?;
    Ok((a, b))
}

/// A case of `p` with `variant` (`None`: the op's own choice, named in the label).
fn case<'a>(gpu: &'a Gpu, p: &Problem, dtype: DType, variant: Option<MatmulVariant>) -> Result<Case<'a>> {
    let (a, b) = inputs(gpu, p, dtype)?;
    let opts = MatmulOpts { trans_b: p.linear, variant, ..Default::default() };
    let chosen = choose_variant(gpu, &opts, dtype, p.m, p.n, p.k)?;
    let bytes = ((p.batch * p.m * p.k + p.n * p.k + p.batch * p.m * p.n) * dtype.size()) as f64;
    Ok(Case {
        kernel: format!("matmul.{chosen}"),
        shape: p.label(),
        dtype,
        flops: p.flops(),
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
        let affordable = |flops: usize| variant != Some(MatmulVariant::Simple) || flops <= 2 * 1024 * 1024 * 1024;
        for &dtype in &dtypes {
            for &s in sizes.iter().filter(|&&s| affordable(2 * s * s * s)) {
                v.push(case(gpu, &Problem::square(s), dtype, variant)?);
            }
        }
        if !quick && affordable(usize::MAX) {
            for &dtype in &dtypes {
                for p in UNET {
                    v.push(case(gpu, &p, dtype, variant)?);
                }
            }
        }
    }
    Ok(v)
}

// ---- `bench --variants matmul` ----

/// The matmul variants this device can run.
pub(crate) fn variant_names(caps: Caps) -> Vec<&'static str> {
    MatmulVariant::ALL.into_iter().filter(|v| v.available(caps)).map(MatmulVariant::name).collect()
}

/// Shapes every variant is timed on: quick, a small square and the text
/// projection; else also 1024³ and SD 1.5's projections.
pub(crate) fn variant_problems(quick: bool) -> Vec<Box<dyn VariantProblem>> {
    let mut v = vec![Problem::square(256), TEXT_PROJECTION];
    if !quick {
        v.push(Problem::square(1024));
        v.extend(UNET);
    }
    v.into_iter().map(|p| Box::new(p) as Box<dyn VariantProblem>).collect()
}

impl VariantProblem for Problem {
    fn shape(&self) -> String {
        self.label()
    }
    fn bucket(&self, dtype: DType) -> String {
        matmul_bucket(dtype, self.m, self.n, self.k)
    }
    fn default_variant(&self, gpu: &Gpu) -> &'static str {
        default_variant(gpu).name()
    }
    fn affordable(&self, variant: &str) -> bool {
        variant != MatmulVariant::Simple.name() || self.flops() <= 2.2e9
    }
    fn case<'a>(&self, gpu: &'a Gpu, variant: &str, dtype: DType) -> Result<Case<'a>> {
        case(gpu, self, dtype, Some(MatmulVariant::parse(variant)?))
    }
}

/// A check problem: sizes off every tile (M, N, K not multiples of 4, 16, 32
/// or 64) with a batch, and a Linear with bias, alpha and SiLU whose K is a
/// multiple of 4 (the vec4 load paths).
struct CheckCase {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_b: bool,
    bias: bool,
    alpha: f32,
    silu: bool,
}

const CHECKS: [CheckCase; 2] = [
    CheckCase { batch: 2, m: 37, n: 70, k: 19, trans_b: false, bias: false, alpha: 1.0, silu: false },
    CheckCase { batch: 2, m: 33, n: 65, k: 36, trans_b: true, bias: true, alpha: 0.5, silu: true },
];

/// Runs `variant` on the check problems next to a CPU loop nest.
pub(crate) fn check_samples(gpu: &Gpu, variant: &str, dtype: DType) -> Result<Vec<Sample>> {
    let variant = MatmulVariant::parse(variant)?;
    let mut out = Vec::new();
    for (i, c) in CHECKS.iter().enumerate() {
        let seed = 10 * i as u32;
        let a = pseudo_random(c.batch * c.m * c.k, seed + 1);
        let b = pseudo_random(c.n * c.k, seed + 2);
        let bias = pseudo_random(c.n, seed + 3);
        let b_shape = if c.trans_b { [c.n, c.k] } else { [c.k, c.n] };
        let (ta, tb) = (gpu.upload(&a, &[c.batch, c.m, c.k], dtype)?, gpu.upload(&b, &b_shape, dtype)?);
        let tbias = gpu.upload(&bias, &[c.n], dtype)?;
        let act = if c.silu { Act::Silu } else { Act::None };
        let opts = MatmulOpts { trans_b: c.trans_b, alpha: c.alpha, act, variant: Some(variant), ..Default::default() };
        let got = gpu.download(&matmul(gpu, &ta, &tb, c.bias.then_some(&tbias), &opts)?)?;
        out.push(Sample { shape: format!("{}x{}x{} · {}", c.batch, c.m, c.k, if c.trans_b { "Bᵀ" } else { "B" }), got, want: reference(c, &as_stored(&a, dtype), &as_stored(&b, dtype), &as_stored(&bias, dtype), act) });
    }
    Ok(out)
}

/// The library's reference (ops::reference::matmul) for a check case.
fn reference(c: &CheckCase, a: &[f64], b: &[f64], bias: &[f64], act: Act) -> Vec<f64> {
    let shape = crate::ops::reference::MatmulShape {
        batch: c.batch,
        m: c.m,
        n: c.n,
        k: c.k,
        trans_a: false,
        trans_b: c.trans_b,
        shared_a: false,
        shared_b: true,
    };
    crate::ops::reference::matmul(&shape, a, b, c.bias.then_some(bias), c.alpha as f64, act)
}
