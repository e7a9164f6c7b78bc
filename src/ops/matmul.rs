//! Batched matrix multiply with optional transposes, bias and activation
//! (`shaders/matmul.wgsl`), and `linear` (torch's `x · Wᵀ + b`) on top of it.

use crate::gpu::autotune::{size_class, tuned_variant};
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::elementwise::Act;
use crate::ops::gemm::{self, GemmCore, GemmTiles};
use crate::ops::{expect_float, float_dtypes};

crate::ops::kernel_variants! {
    /// The kernels that compute a matmul; all give the same results up to f32 rounding.
    pub enum MatmulVariant ("matmul") {
        /// One output per invocation, 16×16 tiles in workgroup memory: the baseline.
        Simple = "simple",
        /// Register-blocked: each invocation computes a 32×16 block of C from 4×4
        /// quads of the operands (vec4 loads where aligned); no workgroup memory.
        Blocked = "blocked",
        /// Like `Blocked`, but the 8 lanes of a subgroup share 32 rows (8 columns
        /// each) and load A between them, passing it round with subgroupBroadcast.
        /// Needs subgroups of at least 8 invocations.
        Subgroup = "subgroup",
        /// For GPUs: 64×64 or 128×128 blocks staged through workgroup memory,
        /// double-buffered, 16 or 64 sums in registers per invocation
        /// (`shaders/gemm.wgsl`, [`crate::ops::gemm`]).
        Tiled = "tiled",
        /// The same staging, multiplied on the matrix units (f16 operands, f32
        /// sums) where the device has them; elsewhere their emulated twin, which
        /// is correct but slow (it exists to test the kernel without matrix units).
        Coop = "coop",
    }
}

impl MatmulVariant {
    /// Whether a device with `caps` can run this variant.
    pub fn available(self, caps: Caps) -> bool {
        match self {
            MatmulVariant::Simple | MatmulVariant::Blocked | MatmulVariant::Tiled | MatmulVariant::Coop => true,
            MatmulVariant::Subgroup => caps.features.subgroups && caps.subgroup_min_size >= 8,
        }
    }

    /// The tiled core this variant runs on, if it is one of the tiled GEMMs.
    fn gemm_core(self) -> Option<GemmCore> {
        match self {
            MatmulVariant::Tiled => Some(GemmCore::Reg),
            MatmulVariant::Coop => Some(GemmCore::Coop),
            _ => None,
        }
    }
}

/// Options of [`matmul`]. `Default` is a plain `A · B` with the default kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct MatmulOpts {
    /// A is stored [.., K, M] and used transposed.
    pub trans_a: bool,
    /// B is stored [.., N, K] and used transposed (a Linear weight).
    pub trans_b: bool,
    /// Scales the product (before the bias).
    pub alpha: f32,
    /// Applied after the bias.
    pub act: Act,
    /// The kernel to use; `None` picks [`default_variant`].
    pub variant: Option<MatmulVariant>,
    /// Storage type of the result; `None` = A's.
    pub out_dtype: Option<DType>,
}

impl Default for MatmulOpts {
    fn default() -> Self {
        MatmulOpts { trans_a: false, trans_b: false, alpha: 1.0, act: Act::None, variant: None, out_dtype: None }
    }
}

/// The kernel used when [`MatmulOpts::variant`] is `None`, by adapter class.
/// GPUs: the matrix units where the device has them (and they passed their
/// first-use check), else the workgroup-tiled kernel. CPU adapters: the
/// kernels built for llvmpipe (there `subgroup` is ~1.4× `blocked`, see
/// docs/performance.md).
pub fn default_variant(gpu: &Gpu) -> MatmulVariant {
    if gemm::coop_in_use(gpu) {
        return MatmulVariant::Coop;
    }
    if gpu.info().device_type != wgpu::DeviceType::Cpu {
        return MatmulVariant::Tiled;
    }
    if MatmulVariant::Subgroup.available(gpu.caps()) { MatmulVariant::Subgroup } else { MatmulVariant::Blocked }
}

/// The kernel a product of op(A) `[M, K]` and op(B) `[K, N]` runs with: the
/// call's own [`MatmulOpts::variant`], else the device's `--variant
/// matmul=NAME`, else the autotuned winner for this size where
/// `fsd3d bench --autotune` found one that pays, else [`default_variant`].
pub fn choose_variant(gpu: &Gpu, opts: &MatmulOpts, dtype: DType, m: usize, n: usize, k: usize) -> Result<MatmulVariant> {
    if let Some(v) = opts.variant {
        return Ok(v);
    }
    if let Some(name) = gpu.variant_override("matmul") {
        return MatmulVariant::parse(name);
    }
    // A cache naming a variant this build or device lacks falls back to the default.
    let tuned = tuned_variant(gpu, "matmul", || autotune_bucket(dtype, m, n, k))
        .and_then(|name| MatmulVariant::parse(&name).ok())
        .filter(|v| v.available(gpu.caps()));
    Ok(tuned.unwrap_or_else(|| default_variant(gpu)))
}

/// The autotune bucket of a matmul with rows M (per batch), columns N and
/// inner size K: each by power-of-two size class.
pub fn autotune_bucket(dtype: DType, m: usize, n: usize, k: usize) -> String {
    format!("{dtype} M{} N{} K{}", size_class(m), size_class(n), size_class(k))
}

crate::kernel_params! {
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        has_bias: u32,
        a_batch: u32,
        b_batch: u32,
        alpha: f32,
        act: u32,
    }
}

/// Rows and columns of C that one workgroup of `variant` computes (fixed in the shader).
fn tile(variant: MatmulVariant) -> (u32, u32) {
    match variant {
        MatmulVariant::Simple => (16, 16),
        // 8 invocations × 32 rows × 16 columns.
        MatmulVariant::Blocked => (32, 128),
        // 8 lanes sharing 32 rows, 8 columns each.
        MatmulVariant::Subgroup => (32, 64),
        MatmulVariant::Tiled | MatmulVariant::Coop => unreachable!("the tiled GEMMs choose their own blocks"),
    }
}

/// What a kernel depends on besides the variant: storage types, transposes, alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    ta: DType,
    tb: DType,
    /// Storage type of the bias binding (A's without a bias: A is bound in its place).
    tbias: DType,
    to: DType,
    trans_a: bool,
    trans_b: bool,
    /// A's contiguous dimension is a multiple of 4: vec4 loads.
    vec_a: bool,
    vec_b: bool,
}

fn key(variant: MatmulVariant, s: Layout) -> KernelKey {
    // The entry points are named as the variants.
    let k = KernelKey::new("matmul", variant.name()).params::<Params>()
        .def("TA", s.ta.wgsl())
        .def("TB", s.tb.wgsl())
        .def("TBIAS", s.tbias.wgsl())
        .def("TO", s.to.wgsl())
        .flag("TRANS_A", s.trans_a)
        .flag("TRANS_B", s.trans_b)
        .flag("SIMPLE", variant == MatmulVariant::Simple)
        .flag("BLOCKED", variant == MatmulVariant::Blocked)
        .flag("SUBGROUP", variant == MatmulVariant::Subgroup);
    // The simple kernel reads single elements: the vec4 flags would only multiply its variants.
    let vec = variant != MatmulVariant::Simple;
    k.flag("VEC_A", vec && s.vec_a).flag("VEC_B", vec && s.vec_b)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let dts = float_dtypes(caps);
    let mut v = Vec::new();
    // The tiled GEMMs' kernels are listed by ops::gemm.
    for variant in MatmulVariant::ALL.into_iter().filter(|v| v.available(caps) && v.gemm_core().is_none()) {
        let vecs: &[bool] = if variant == MatmulVariant::Simple { &[false] } else { &[false, true] };
        for &ta in &dts {
            for &tb in &dts {
                for &to in &dts {
                    for &tbias in &dts {
                        for trans_a in [false, true] {
                            for trans_b in [false, true] {
                                for &vec_a in vecs {
                                    for &vec_b in vecs {
                                        let s = Layout { ta, tb, tbias, to, trans_a, trans_b, vec_a, vec_b };
                                        v.push(key(variant, s));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    v
}

/// (batch, rows, cols) of a rank-2 or rank-3 operand.
fn batch_rows_cols(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((1, r, c)),
        [b, r, c] => Ok((b, r, c)),
        _ => Err(Error::shape(op, format!("{name} must be [rows, cols] or [batch, rows, cols], got {t:?}"))),
    }
}

/// `C[b] = act(alpha · op(A[b]) · op(B[b]) + bias)`.
///
/// A is `[M, K]` or `[batch, M, K]` (`[.., K, M]` with `trans_a`), B is `[K, N]`
/// or `[batch, K, N]` (`[.., N, K]` with `trans_b`); a batch of 1 broadcasts.
/// The result is `[M, N]` when both are rank 2, else `[batch, M, N]`. `bias` is `[N]`.
/// Storage types may differ (e.g. f16 weights with f32 activations); sums are f32.
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, opts: &MatmulOpts) -> Result<Tensor> {
    matmul_with(gpu, a, b, bias, None, opts, None)
}

/// [`matmul`] with the block tiling of the `tiled` / `coop` kernels given
/// (tests and benches reach every tiling with it; `None` lets the kernel
/// choose). With another variant the tiling is an error.
pub fn matmul_tiled_as(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    opts: &MatmulOpts,
    tiles: Option<GemmTiles>,
) -> Result<Tensor> {
    matmul_with(gpu, a, b, bias, None, opts, tiles)
}

/// [`matmul`] + `residual` (shaped as the result), the add fused into the
/// epilogue of the tiled kernels (a skip connection costs no pass of its
/// own there), a separate add after the others.
pub fn matmul_add(gpu: &Gpu, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, residual: &Tensor, opts: &MatmulOpts) -> Result<Tensor> {
    matmul_with(gpu, a, b, bias, Some(residual), opts, None)
}

fn matmul_with(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    opts: &MatmulOpts,
    tiles: Option<GemmTiles>,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    expect_float(OP, a)?;
    expect_float(OP, b)?;
    let (ba, ra, ca) = batch_rows_cols(OP, "A", a)?;
    let (bb, rb, cb) = batch_rows_cols(OP, "B", b)?;
    let (m, k) = if opts.trans_a { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if opts.trans_b { (cb, rb) } else { (rb, cb) };
    if k != kb {
        return Err(Error::shape(
            OP,
            format!(
                "inner dimensions differ: op(A) is [{m}, {k}] (A {:?}, trans_a {}), op(B) is [{kb}, {n}] (B {:?}, trans_b {})",
                a.shape(),
                opts.trans_a,
                b.shape(),
                opts.trans_b
            ),
        ));
    }
    if ba != bb && ba != 1 && bb != 1 {
        return Err(Error::shape(OP, format!("batch sizes {ba} (A {:?}) and {bb} (B {:?}) differ", a.shape(), b.shape())));
    }
    let batch = ba.max(bb);
    if let Some(t) = bias {
        expect_float(OP, t)?;
        if t.shape() != [n] {
            return Err(Error::shape(OP, format!("bias must be [{n}] (N), got {t:?}")));
        }
    }
    if opts.out_dtype == Some(DType::U32) {
        return Err(Error::shape(OP, "the result must be f32 or f16, not u32"));
    }
    let out_shape: Vec<usize> = if a.rank() == 2 && b.rank() == 2 { vec![m, n] } else { vec![batch, m, n] };
    let out = gpu.empty(&out_shape, opts.out_dtype.unwrap_or(a.dtype()))?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let variant = choose_variant(gpu, opts, a.dtype(), m, n, k)?;
    if !variant.available(gpu.caps()) {
        return Err(Error::Unsupported {
            what: format!("the {variant} matmul kernel"),
            feature: "SUBGROUP (size ≥ 8)",
            hint: "use the blocked variant",
        });
    }
    let as_u32 = |x: usize| {
        u32::try_from(x).map_err(|_| Error::shape(OP, format!("size {x} is over the 32-bit index range")))
    };
    if tiles.is_some() && variant.gemm_core().is_none() {
        return Err(Error::Invalid(format!("matmul: a block tiling applies to the tiled and coop kernels, not {variant}")));
    }
    if let Some(r) = residual {
        expect_float(OP, r)?;
        if r.shape() != out.shape() {
            return Err(Error::shape(OP, format!("the residual must have the result's shape {:?}, got {r:?}", out.shape())));
        }
    }
    // The epilogue adds a residual stored as the result is; another is added apart.
    let fused_residual = residual.filter(|r| r.dtype() == out.dtype());
    if let Some(core) = variant.gemm_core() {
        let dims = (as_u32(m)?, as_u32(n)?, as_u32(k)?, as_u32(batch)?);
        let strides = (if ba == 1 { 0 } else { as_u32(m * k)? }, if bb == 1 { 0 } else { as_u32(k * n)? });
        let trans = (opts.trans_a, opts.trans_b);
        gemm::matmul(gpu, core, tiles, a, b, bias, fused_residual, &out, trans, dims, strides, opts.alpha, opts.act)?;
        return match (residual, fused_residual) {
            (Some(r), None) => crate::ops::elementwise::add(gpu, &out, r),
            _ => Ok(out),
        };
    }
    let layout = Layout {
        ta: a.dtype(),
        tb: b.dtype(),
        tbias: bias.unwrap_or(a).dtype(),
        to: out.dtype(),
        trans_a: opts.trans_a,
        trans_b: opts.trans_b,
        // The contiguous dimension: K for A, unless transposed (then M).
        vec_a: if opts.trans_a { m % 4 == 0 } else { k % 4 == 0 },
        vec_b: if opts.trans_b { k % 4 == 0 } else { n % 4 == 0 },
    };
    let p = Params {
        m: as_u32(m)?,
        n: as_u32(n)?,
        k: as_u32(k)?,
        has_bias: bias.is_some() as u32,
        a_batch: if ba == 1 { 0 } else { as_u32(m * k)? },
        b_batch: if bb == 1 { 0 } else { as_u32(k * n)? },
        alpha: opts.alpha,
        act: opts.act.code(),
    };
    let (tile_m, tile_n) = tile(variant);
    let groups = [p.n.div_ceil(tile_n), p.m.div_ceil(tile_m), as_u32(batch)?];
    // Without a bias, A stands in for the unread bias binding.
    let tensors = [a, b, bias.unwrap_or(a), &out];
    gpu.dispatch(&format!("matmul.{variant}"), &key(variant, layout), &p, &tensors, groups)?;
    match residual {
        Some(r) => crate::ops::elementwise::add(gpu, &out, r),
        None => Ok(out),
    }
}

/// [`linear`] + `residual` (shaped as the result): a transformer's skip
/// connection, fused into the GEMM's epilogue where the kernel allows.
pub fn linear_add(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    linear_with(gpu, x, weight, bias, Some(residual))
}

/// torch's Linear: `x · weightᵀ + bias` for x `[..., in]`, weight `[out, in]`,
/// bias `[out]`; gives `[..., out]` in x's dtype.
pub fn linear(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_with(gpu, x, weight, bias, None)
}

fn linear_with(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    let inner = *x.shape().last().ok_or_else(|| Error::shape(OP, "x is a scalar; expected [..., in]"))?;
    if weight.rank() != 2 || weight.shape()[1] != inner {
        return Err(Error::shape(OP, format!("weight must be [out, {inner}] for x {x:?}, got {weight:?}")));
    }
    let rows: usize = x.shape()[..x.rank() - 1].iter().product();
    let x2 = x.reshape(&[rows, inner])?;
    let opts = MatmulOpts { trans_b: true, ..Default::default() };
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = weight.shape()[0];
    let residual = match residual {
        Some(r) if r.shape() != shape.as_slice() => {
            return Err(Error::shape(OP, format!("the residual must have the result's shape {shape:?}, got {r:?}")));
        }
        Some(r) => Some(r.reshape(&[rows, weight.shape()[0]])?),
        None => None,
    };
    let y = matmul_with(gpu, &x2, weight, bias, residual.as_ref(), &opts, None)?;
    y.reshape(&shape)
}
