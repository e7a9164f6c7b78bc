//! Fused multi-head attention (`shaders/attention.wgsl`): softmax(scale·q·kᵀ)·v
//! per head with an online softmax, never storing the Lq × Lk scores.
//!
//! Inputs are in the layout linear projections produce: q [B, Lq, H·D],
//! k and v [B, Lk, H·D]; the output is [B, Lq, H·D]. Self-attention has
//! Lk = Lq, cross-attention any Lk (77 text tokens in Stable Diffusion). The
//! head dim D is compiled into the kernel: [`SUPPORTED_HEAD_DIMS`] lists the
//! variants. Storage f32 or f16, arithmetic f32; the matrix-unit kernel
//! (`shaders/attention_coop.wgsl`, [`AttentionVariant::Coop`]) multiplies f16
//! operands and keeps the softmax and the sums in f32.

use crate::gpu::autotune::{size_class, tuned_variant};
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::gemm;
use crate::ops::{expect_float, expect_rank, float_dtypes};

/// Head dims with a compiled kernel: Stable Diffusion's 40, 64, 80, 160, the
/// small ones of tiny models, and the usual powers of two.
pub const SUPPORTED_HEAD_DIMS: [usize; 11] = [8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160];

/// Largest head dim for which CPU adapters default to FusedQuad. Its fully
/// unrolled body takes llvmpipe long to compile as D grows (about 4 s at
/// D = 40, 12 s at 80, 60 s at 160, once per machine thanks to Mesa's shader
/// cache); Fused compiles in about a second at any D.
pub const QUAD_MAX_DEFAULT_HEAD_DIM: usize = 80;

/// Invocations per workgroup.
const WORKGROUP_SIZE: u32 = 64;

/// Workgroup memory the K and V tiles may use: WebGPU's guaranteed 16 KiB,
/// so every adapter runs every variant.
const TILE_BUDGET_BYTES: usize = 16 * 1024;

crate::ops::kernel_variants! {
    /// How the attention is computed. Both are the same fused online-softmax
    /// kernel shaped for different hardware.
    pub enum AttentionVariant ("attention") {
        /// One query per invocation, K/V tiles read from workgroup memory by every
        /// invocation (a broadcast read on GPUs). The default on GPUs.
        Fused = "fused",
        /// Four queries per invocation, so that each value loaded from the K/V
        /// tile serves four queries; with subgroups (of 8+ lanes) each value is
        /// loaded once per subgroup and broadcast. The default on CPU adapters
        /// (lavapipe), where every load inside a loop is a loop over the SIMD
        /// lanes, up to [`QUAD_MAX_DEFAULT_HEAD_DIM`].
        FusedQuad = "fused-quad",
        /// Flash attention on the matrix units (`shaders/attention_coop.wgsl`):
        /// Q·Kᵀ and P·V on 16×16×16 cooperative matrices, f16 operands, f32
        /// softmax and sums. Where the device has no matrix units it runs their
        /// emulated twin (correct, slow: for testing). Needs f16.
        Coop = "coop",
    }
}

impl AttentionVariant {
    /// Whether a device with `caps` can run this variant.
    pub fn available(self, caps: Caps) -> bool {
        match self {
            AttentionVariant::Coop => caps.features.f16,
            _ => true,
        }
    }

    /// The variant `attention` uses for head dim `d` when none is asked for:
    /// the matrix units where the device has them (and they passed their
    /// first-use check), else FusedQuad on CPU adapters up to
    /// [`QUAD_MAX_DEFAULT_HEAD_DIM`], Fused otherwise.
    pub fn default_for(gpu: &Gpu, d: usize) -> AttentionVariant {
        if gemm::coop_in_use(gpu) && AttentionVariant::Coop.available(gpu.caps()) {
            return AttentionVariant::Coop;
        }
        let cpu = gpu.info().device_type == wgpu::DeviceType::Cpu;
        if cpu && d <= QUAD_MAX_DEFAULT_HEAD_DIM { AttentionVariant::FusedQuad } else { AttentionVariant::Fused }
    }

    /// Queries one workgroup handles.
    fn queries_per_workgroup(self) -> u32 {
        match self {
            AttentionVariant::Fused => WORKGROUP_SIZE,
            AttentionVariant::FusedQuad => 4 * WORKGROUP_SIZE,
            AttentionVariant::Coop => unreachable!("the matrix-unit kernel chooses its own blocks"),
        }
    }
}

/// The kernel an attention with head dim `d` runs with: `requested` (the
/// call's [`AttentionOpts::variant`]), else the device's `--variant
/// attention=NAME`, else the autotuned winner for its `bucket` (see
/// `fsd3d bench --autotune`), else [`AttentionVariant::default_for`].
pub fn choose_variant(
    gpu: &Gpu,
    requested: Option<AttentionVariant>,
    d: usize,
    bucket: impl FnOnce() -> String,
) -> Result<AttentionVariant> {
    if let Some(v) = requested {
        return Ok(v);
    }
    if let Some(name) = gpu.variant_override("attention") {
        return AttentionVariant::parse(name);
    }
    let tuned = tuned_variant(gpu, "attention", bucket)
        .and_then(|name| AttentionVariant::parse(&name).ok())
        .filter(|v| v.available(gpu.caps()));
    Ok(tuned.unwrap_or_else(|| AttentionVariant::default_for(gpu, d)))
}

/// Options of [`attention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionOpts {
    /// Number of heads H; the last dim of q, k and v is H·D.
    pub heads: usize,
    /// Multiplies q·k before the softmax; `None` = 1/√D.
    pub scale: Option<f32>,
    /// Causal mask (CLIP's text encoder): query i sees keys j <= i. With
    /// Lq != Lk the mask is aligned at the top left, as torch's
    /// `scaled_dot_product_attention(is_causal=True)`.
    pub causal: bool,
    /// `None` = [`AttentionVariant::default_for`] the device and head dim.
    pub variant: Option<AttentionVariant>,
}

impl AttentionOpts {
    /// Non-causal attention with `heads` heads and the default scale.
    pub fn new(heads: usize) -> AttentionOpts {
        AttentionOpts { heads, scale: None, causal: false, variant: None }
    }
}

/// The autotune bucket of an attention: head dim exactly, query and key
/// counts by power-of-two size class.
pub fn autotune_bucket(dtype: DType, head_dim: usize, lq: usize, lk: usize) -> String {
    format!("{dtype} D{head_dim} Lq{} Lk{}", size_class(lq), size_class(lk))
}

crate::kernel_params! {
    struct Params {
        lq: u32,
        lk: u32,
        heads: u32,
        causal: u32,
        scale_log2: f32,
        pad: [u32; 3],
    }
}

/// Keys per K/V tile for head dim `d`: two f32 tiles of BK·D within the
/// budget, BK a multiple of 8 (the quad kernel takes keys eight at a time).
fn keys_per_tile(d: usize) -> usize {
    (TILE_BUDGET_BYTES / (2 * 4 * d) / 8 * 8).clamp(8, 32)
}

/// The subgroup broadcasts need every subgroup to have at least 8 lanes and
/// to be full (no larger than the workgroup).
fn subgroup_path(caps: Caps) -> bool {
    caps.features.subgroups && caps.subgroup_min_size >= 8 && caps.subgroup_max_size <= WORKGROUP_SIZE
}

fn kernel_key(variant: AttentionVariant, dtype: DType, d: usize, subgroups: bool) -> KernelKey {
    let entry = match variant {
        AttentionVariant::Fused => "attention_one",
        AttentionVariant::FusedQuad => "attention_quad",
        AttentionVariant::Coop => unreachable!("attention_coop.wgsl has its own key"),
    };
    KernelKey::new("attention", entry).params::<Params>()
        .def("T", dtype.wgsl())
        .def("D", d)
        .def("WG", WORKGROUP_SIZE)
        .def("BK", keys_per_tile(d))
        .flag("ONE", variant == AttentionVariant::Fused)
        .flag("QUAD", variant == AttentionVariant::FusedQuad)
        .flag("SUBGROUP_BCAST", subgroups && variant == AttentionVariant::FusedQuad)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut v = Vec::new();
    for dt in float_dtypes(caps) {
        for d in SUPPORTED_HEAD_DIMS {
            v.push(kernel_key(AttentionVariant::Fused, dt, d, false));
            v.push(kernel_key(AttentionVariant::FusedQuad, dt, d, false));
            if subgroup_path(caps) {
                v.push(kernel_key(AttentionVariant::FusedQuad, dt, d, true));
            }
            if AttentionVariant::Coop.available(caps) {
                for tiles in COOP_BLOCKS {
                    v.push(coop_key(dt, d, tiles, false, gemm::TWIN_SG));
                    if caps.features.coop_hw() && caps.features.subgroups {
                        // Validation has no device: warps of 32, as on NVIDIA and Apple GPUs.
                        v.push(coop_key(dt, d, tiles, true, 32));
                    }
                }
            }
        }
    }
    v
}

/// (query rows, keys) per block of the matrix-unit kernel, largest first;
/// [`coop_blocks`] takes the first that fits the device at the head dim.
const COOP_BLOCKS: [(u32, u32); 5] = [(64, 64), (64, 32), (32, 32), (32, 16), (16, 16)];
/// Padding of each staged row (16 bytes of f16), against bank conflicts.
const COOP_PAD: u32 = 8;

/// The head dim padded to whole 16-wide fragments.
fn padded_head_dim(d: usize) -> u32 {
    (d as u32).next_multiple_of(16)
}

/// Workgroup memory of the matrix-unit kernel (its arrays, in bytes).
fn coop_shared_bytes(d: usize, (br, bc): (u32, u32)) -> u32 {
    let dp = padded_head_dim(d);
    let operands = br * (dp + COOP_PAD) + br * (bc + COOP_PAD) + 2 * bc * (dp + COOP_PAD);
    let scratch = (br / 16) * 16 * bc.max(16) + 256 + 3 * br;
    2 * operands + 4 * scratch
}

/// The largest block that fits the device for head dim `d`, with warps of `sg`.
fn coop_blocks(gpu: &Gpu, d: usize, sg: u32) -> Result<(u32, u32)> {
    let l = gpu.limits();
    COOP_BLOCKS
        .into_iter()
        .find(|&(br, bc)| {
            let wg = br / 16 * sg;
            coop_shared_bytes(d, (br, bc)) <= l.max_compute_workgroup_storage_size
                && wg <= l.max_compute_invocations_per_workgroup
                && wg <= l.max_compute_workgroup_size_x
        })
        .ok_or_else(|| Error::Unsupported {
            what: format!("the matrix-unit attention kernel at head dim {d}"),
            feature: "enough workgroup memory for 16 queries × 16 keys",
            hint: "use --variant attention=fused",
        })
}

fn coop_key(dtype: DType, d: usize, (br, bc): (u32, u32), hw: bool, sg: u32) -> KernelKey {
    KernelKey::new("attention_coop", "attention_coop").params::<Params>()
        .def("T", dtype.wgsl())
        .def("CT", DType::F16.wgsl())
        .def("D", d)
        .def("DP", padded_head_dim(d))
        .def("BR", br)
        .def("BC", bc)
        .def("PAD", COOP_PAD)
        .def("SG", sg)
        .flag("COOP_HW", hw)
}

/// The matrix-unit kernel: the matrix units themselves where the device has
/// them (checked at first use against the fused kernel), else their twin.
#[allow(clippy::too_many_arguments)]
fn attention_coop(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, p: &Params, b: usize, d: usize) -> Result<()> {
    let caps = gpu.caps();
    if !AttentionVariant::Coop.available(caps) {
        return Err(Error::Unsupported {
            what: "the matrix-unit attention kernel".into(),
            feature: "SHADER_F16",
            hint: "use --variant attention=fused",
        });
    }
    let sg = gemm::coop_sg(caps);
    let blocks = coop_blocks(gpu, d, sg)?;
    let checked = gemm::coop_in_use(gpu);
    let hw = checked && gemm::coop_hw(caps);
    let key = coop_key(q.dtype(), d, blocks, hw, sg);
    if checked && !gemm::coop_first_use_check(gpu, &key, "attention", || coop_check(gpu, q.dtype(), d, blocks))? {
        // Switched off just now: the fused kernel does this one.
        let key = kernel_key(AttentionVariant::Fused, q.dtype(), d, false);
        let groups = [p.lq.div_ceil(AttentionVariant::Fused.queries_per_workgroup()), (b as u32) * p.heads, 1];
        return gpu.dispatch("attention.fused", &key, p, &[q, k, v, out], groups);
    }
    let groups = [p.lq.div_ceil(blocks.0), (b as u32) * p.heads, 1];
    let label = if hw { "attention.coop" } else { "attention.coop-emulated" };
    gpu.dispatch(label, &key, p, &[q, k, v, out], groups)
}

/// The first-use check's problem: two heads, partial blocks of queries and
/// keys, causal, on the matrix-unit kernel and the fused one.
fn coop_check(gpu: &Gpu, dtype: DType, d: usize, (br, bc): (u32, u32)) -> Result<Option<String>> {
    let (lq, lk, heads) = (br as usize + 5, bc as usize * 2 + 7, 2);
    let pattern = |n: usize, salt: usize| -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5) - 1.0).collect()
    };
    let hd = heads * d;
    let q = gpu.upload(&pattern(lq * hd, 1), &[1, lq, hd], dtype)?;
    let k = gpu.upload(&pattern(lk * hd, 2), &[1, lk, hd], dtype)?;
    let v = gpu.upload(&pattern(lk * hd, 3), &[1, lk, hd], dtype)?;
    let run = |variant| attention(gpu, &q, &k, &v, &AttentionOpts { heads, scale: None, causal: true, variant: Some(variant) });
    let got = gpu.download(&run(AttentionVariant::Coop)?)?;
    let want = gpu.download(&run(AttentionVariant::Fused)?)?;
    // Outputs are convex combinations of values in [-1, 1]: f16 operands
    // move them by ~1e-3; a wrong kernel by O(1).
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    let bad = got.iter().any(|x| !x.is_finite()) || worst > 2e-2;
    Ok(bad.then(|| format!("largest difference {worst:.3e} against the fused kernel")))
}

/// Checks q, k, v and returns (B, Lq, Lk, D).
fn check_inputs(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<(usize, usize, usize, usize)> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        expect_float("attention", t)?;
        expect_rank("attention", t, 3).map_err(|_| {
            Error::shape("attention", format!("{name} must be [B, L, H·D], got {t:?}"))
        })?;
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(Error::shape("attention", format!("q, k, v dtypes differ: {q:?}, {k:?}, {v:?}")));
    }
    if k.shape() != v.shape() {
        return Err(Error::shape("attention", format!("k {k:?} and v {v:?} must have the same shape")));
    }
    let [b, lq, hd] = [q.dim(0), q.dim(1), q.dim(2)];
    if k.dim(0) != b || k.dim(2) != hd {
        return Err(Error::shape("attention", format!("k/v {k:?} do not match q {q:?} in batch or H·D")));
    }
    let lk = k.dim(1);
    if lk == 0 {
        return Err(Error::shape("attention", "no keys (Lk = 0): the softmax is undefined"));
    }
    if opts.heads == 0 || hd % opts.heads != 0 {
        return Err(Error::shape("attention", format!("H·D = {hd} does not split into {} heads", opts.heads)));
    }
    let d = hd / opts.heads;
    if !SUPPORTED_HEAD_DIMS.contains(&d) {
        return Err(Error::Invalid(format!(
            "attention: head dim {d} (H·D = {hd}, {} heads) has no compiled kernel; supported head dims: {SUPPORTED_HEAD_DIMS:?}",
            opts.heads
        )));
    }
    Ok((b, lq, lk, d))
}

/// Multi-head attention: q [B, Lq, H·D], k and v [B, Lk, H·D] -> [B, Lq, H·D]
/// with `softmax(scale · q_h k_hᵀ) v_h` per head h (heads are consecutive
/// D-wide slices of the last dim). See [`AttentionOpts`] for scale, causal
/// mask and variant.
pub fn attention(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Tensor> {
    let (b, lq, lk, d) = check_inputs(q, k, v, opts)?;
    let out = gpu.empty(q.shape(), q.dtype())?;
    if lq == 0 || b == 0 {
        return Ok(out);
    }
    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let variant = choose_variant(gpu, opts.variant, d, || autotune_bucket(q.dtype(), d, lq, lk))?;
    let p = Params {
        lq: lq as u32,
        lk: lk as u32,
        heads: opts.heads as u32,
        causal: opts.causal as u32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        pad: [0; 3],
    };
    if variant == AttentionVariant::Coop {
        attention_coop(gpu, q, k, v, &out, &p, b, d)?;
        return Ok(out);
    }
    let workgroups = [(lq as u32).div_ceil(variant.queries_per_workgroup()), (b * opts.heads) as u32, 1];
    let key = kernel_key(variant, q.dtype(), d, subgroup_path(gpu.caps()));
    gpu.dispatch(&format!("attention.{}", variant.name()), &key, &p, &[q, k, v, &out], workgroups)?;
    Ok(out)
}
