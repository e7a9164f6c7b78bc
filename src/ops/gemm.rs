//! Workgroup-tiled GEMM for GPUs (`shaders/gemm.wgsl`): the matrix-unit
//! kernel and the register-tiled kernel behind the `coop` and `tiled`
//! variants of [`matmul`](crate::ops::matmul) and [`conv2d`](crate::ops::conv2d).
//!
//! - [`GemmCore::Coop`] multiplies staged f16 tiles on the matrix units
//!   (16×16×16 cooperative matrices, f32 sums) where the device has them, and
//!   runs the same kernel with the emulated twin of `shaders/coop.wgsl`
//!   where it does not: the tiling and indexing are thus tested on every
//!   adapter, lavapipe included.
//! - [`GemmCore::Reg`] keeps a TM × TN block of sums per invocation in
//!   registers: the kernel for GPUs without matrix units.
//!
//! Trust, but check: the first time a matrix-unit pipeline is used, it runs a
//! small problem of its own layout beside the register kernel
//! ([`coop_self_check`]). If the results differ, or the driver refuses the
//! shader, the device's matrix-unit path is switched off with one warning
//! and the tiled kernel takes over.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::elementwise::Act;
use crate::ops::float_dtypes;

/// How a staged tile is multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmCore {
    /// The matrix units (or their emulated twin): f16 operands, f32 sums.
    Coop,
    /// Register blocking from workgroup memory, f32 throughout.
    Reg,
}

/// The block tiling of one GEMM kernel. All sizes are compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTiles {
    /// Rows (M) and columns (N) of C per workgroup, K per staging step.
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    /// Invocations per workgroup.
    pub wg: u32,
    /// Coop: the subgroup size the warps are laid out for, warps across N,
    /// and 16×16 fragments per warp (fm × fn). Reg: sums per invocation (fm × fn
    /// are TM × TN, and sg = warps_n = 0).
    pub sg: u32,
    pub warps_n: u32,
    pub fm: u32,
    pub fn_: u32,
}

/// Padding of each staged row, in elements (16 bytes in f16, against bank conflicts).
const PAD: u32 = 8;

impl GemmTiles {
    /// A matrix-unit tiling: warps_m × warps_n warps of `sg` lanes, each
    /// owning fm × fn fragments.
    pub const fn coop(sg: u32, warps_m: u32, warps_n: u32, fm: u32, fn_: u32, bk: u32) -> GemmTiles {
        GemmTiles { bm: warps_m * fm * 16, bn: warps_n * fn_ * 16, bk, wg: warps_m * warps_n * sg, sg, warps_n, fm, fn_ }
    }
    /// A register tiling: tm × tn sums per invocation.
    pub const fn reg(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> GemmTiles {
        GemmTiles { bm, bn, bk, wg: (bm / tm) * (bn / tn), sg: 0, warps_n: 0, fm: tm, fn_: tn }
    }

    /// Workgroup memory the kernel declares, for operands stored as `ct`.
    pub fn shared_bytes(&self, core: GemmCore, ct: DType) -> u32 {
        // The larger of the two layouts of each tile (k-major or not).
        let a = (self.bk * (self.bm + PAD)).max(self.bm * (self.bk + PAD));
        let b = (self.bk * (self.bn + PAD)).max(self.bn * (self.bk + PAD));
        let staged = 2 * (a + b) * ct.size() as u32;
        match core {
            GemmCore::Coop => staged + (self.wg / self.sg) * 256 * 4,
            GemmCore::Reg => staged,
        }
    }

    /// Whether the kernel's shape rules hold: whole fragments, the staging
    /// divides evenly, every staging invocation keeps its columns.
    fn well_formed(&self, core: GemmCore) -> bool {
        let even = (self.bm * self.bk).is_multiple_of(self.wg)
            && (self.bk * self.bn).is_multiple_of(self.wg)
            && self.wg.is_multiple_of(self.bn)
            && self.wg.is_multiple_of(self.bk);
        let shape = match core {
            GemmCore::Coop => self.sg > 0 && self.wg.is_multiple_of(self.sg) && self.bk.is_multiple_of(16),
            GemmCore::Reg => self.bm.is_multiple_of(self.fm) && self.bn.is_multiple_of(self.fn_),
        };
        even && shape
    }

    fn fits(&self, gpu: &Gpu, core: GemmCore, ct: DType) -> bool {
        let l = gpu.limits();
        self.shared_bytes(core, ct) <= l.max_compute_workgroup_storage_size
            && self.wg <= l.max_compute_invocations_per_workgroup
            && self.wg <= l.max_compute_workgroup_size_x
    }
}

/// Tilings per core, largest first; [`choose_tiles`] takes the first that
/// fits the device and is not much larger than the problem.
fn candidate_tiles(core: GemmCore, sg: u32) -> Vec<GemmTiles> {
    match core {
        GemmCore::Coop => vec![
            // 8 warps as 2 × 4, each 64 × 32 (4 × 2 fragments): 128 × 128 blocks.
            GemmTiles::coop(sg, 2, 4, 4, 2, 32),
            GemmTiles::coop(sg, 2, 4, 4, 2, 16),
            // 4 warps as 2 × 2, each 32 × 32: 64 × 64 blocks.
            GemmTiles::coop(sg, 2, 2, 2, 2, 32),
            GemmTiles::coop(sg, 2, 2, 2, 2, 16),
        ],
        GemmCore::Reg => vec![GemmTiles::reg(128, 128, 8, 8, 8), GemmTiles::reg(64, 64, 16, 4, 4)],
    }
}

/// The warp size of the emulated twin, whose warps are plain runs of
/// invocations of any size that is a multiple of 16: 64 (AMD's wave), where
/// each lane holds 4 rows of a fragment. At 32 (8 rows) lavapipe took 7 s
/// instead of 2.5 s to compile each kernel.
pub(crate) const TWIN_SG: u32 = 64;

/// The subgroup size the matrix-unit kernels are laid out for: the device's
/// (fixed) size on matrix units, else the twin's.
pub(crate) fn coop_sg(caps: Caps) -> u32 {
    if coop_hw(caps) { caps.subgroup_max_size } else { TWIN_SG }
}

/// Whether the matrix-unit twin runs on hardware: cooperative matrices with
/// f16, and subgroups of one fixed size (the kernel's warps are subgroups).
pub fn coop_hw(caps: Caps) -> bool {
    caps.features.coop_hw()
        && caps.features.subgroups
        && caps.subgroup_min_size == caps.subgroup_max_size
        && caps.subgroup_min_size >= 8
}

/// Whether the matrix-unit kernels are the device's default GEMMs now: it
/// has matrix units (or emulates them, [`Gpu::emulates_coop_matrix`]), and
/// they have not been switched off by a failed first-use check.
pub fn coop_in_use(gpu: &Gpu) -> bool {
    (coop_hw(gpu.caps()) || gpu.emulates_coop_matrix()) && !gpu.is_switched_off(COOP_PATH)
}

/// The name under which a failed self-check switches the matrix units off.
pub const COOP_PATH: &str = "coop-matrix";

/// The type the operands of a core are multiplied in on a device: f16 on
/// the matrix units (and in their twin where the device has f16), so an f32
/// input is rounded to f16 there; f32 in the register kernel.
pub fn operand_dtype(core: GemmCore, caps: Caps) -> DType {
    match core {
        GemmCore::Coop if caps.features.f16 => DType::F16,
        _ => DType::F32,
    }
}

/// The tilings of `core` that fit the device, largest first (what
/// [`choose_tiles`] chooses from; tests and benches run each).
pub fn tilings(gpu: &Gpu, core: GemmCore) -> Vec<GemmTiles> {
    let caps = gpu.caps();
    let ct = operand_dtype(core, caps);
    candidate_tiles(core, coop_sg(caps)).into_iter().filter(|t| t.well_formed(core) && t.fits(gpu, core, ct)).collect()
}

/// The tiling for an M × N problem: the largest candidate that fits the
/// device, unless the problem has fewer than 32 of its blocks (then the
/// next smaller one, so that more of the GPU is busy).
pub fn choose_tiles(gpu: &Gpu, core: GemmCore, m: usize, n: usize) -> Result<GemmTiles> {
    let fitting = tilings(gpu, core);
    let Some(&largest) = fitting.first() else {
        return Err(Error::Unsupported {
            what: format!("the {} GEMM kernel", core_name(core)),
            feature: "16 KiB of workgroup memory and 256 invocations per workgroup",
            hint: "use the matmul / conv2d variants `blocked` or `gemm8x4`",
        });
    };
    let blocks = |t: &GemmTiles| m.div_ceil(t.bm as usize) * n.div_ceil(t.bn as usize);
    Ok(fitting.iter().copied().find(|t| t.bm < largest.bm && blocks(&largest) < 32).unwrap_or(largest))
}

fn core_name(core: GemmCore) -> &'static str {
    match core {
        GemmCore::Coop => "matrix-unit",
        GemmCore::Reg => "register-tiled",
    }
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
        cin: u32,
        h: u32,
        w: u32,
        ho: u32,
        wo: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad: u32,
        has_residual: u32,
        pad_w: u32,
        _pad: u32,
    }
}

/// What a GEMM kernel depends on besides its tiling and core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Layout {
    ta: DType,
    tb: DType,
    tbias: DType,
    to: DType,
    trans_a: bool,
    trans_b: bool,
    conv: bool,
    /// A's (B's) contiguous dimension is a multiple of 4: read four at a time.
    vec_a: bool,
    vec_b: bool,
}

/// The kernel key; `hw` picks the matrix units over their twin (Coop only).
fn key(core: GemmCore, hw: bool, tiles: GemmTiles, l: Layout, caps: Caps) -> KernelKey {
    let ct = operand_dtype(core, caps);
    let base = KernelKey::new("gemm", if core == GemmCore::Coop { "gemm_coop" } else { "gemm_reg" }).params::<Params>()
        .def("TA", l.ta.wgsl())
        .def("TB", l.tb.wgsl())
        .def("TBIAS", l.tbias.wgsl())
        .def("TO", l.to.wgsl())
        .def("CT", ct.wgsl())
        .def("BM", tiles.bm)
        .def("BN", tiles.bn)
        .def("BK", tiles.bk)
        .def("PAD", PAD)
        .def("WG", tiles.wg)
        .flag("CONV", l.conv)
        .flag("TRANS_A", l.trans_a)
        .flag("TRANS_B", l.trans_b)
        .flag("VEC_A", l.vec_a)
        .flag("VEC_B", l.vec_b && !l.conv);
    match core {
        // The matrix units read either layout: keep global memory's.
        GemmCore::Coop => base
            .flag("COOP", true)
            .flag("COOP_HW", hw)
            .def("SG", tiles.sg)
            .def("WARPS_N", tiles.warps_n)
            .def("FM", tiles.fm)
            .def("FN", tiles.fn_)
            .flag("SH_A_KM", l.trans_a)
            .flag("SH_B_KN", !l.trans_b),
        GemmCore::Reg => base
            .flag("COOP", false)
            .def("TM", tiles.fm)
            .def("TN", tiles.fn_)
            .flag("SH_A_KM", true)
            .flag("SH_B_KN", true),
    }
}

/// Every GEMM kernel the ops can dispatch on `caps`, for validation: both
/// cores at every tiling, the matrix units' real layer where `caps` has it
/// and the twin always, every storage type and layout.
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let dts = float_dtypes(caps);
    let mut v = Vec::new();
    let mut push = |core: GemmCore, hw: bool, sg: u32| {
        for tiles in candidate_tiles(core, sg) {
            for &ta in &dts {
                for &tb in &dts {
                    for &to in &dts {
                        for &tbias in &dts {
                            for (trans_a, trans_b, conv) in
                                [(false, false, false), (false, true, false), (true, false, false), (true, true, false), (false, false, true)]
                            {
                                for vec_a in [false, true] {
                                    for vec_b in if conv { vec![false] } else { vec![false, true] } {
                                        let l = Layout { ta, tb, tbias, to, trans_a, trans_b, conv, vec_a, vec_b };
                                        v.push(key(core, hw, tiles, l, caps));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    push(GemmCore::Reg, false, 0);
    push(GemmCore::Coop, false, TWIN_SG);
    if caps.features.coop_hw() && caps.features.subgroups {
        // Validation has no device: warps of 32, as on NVIDIA and Apple GPUs.
        push(GemmCore::Coop, true, 32);
    }
    v
}

/// One GEMM as the kernels see it, shapes already checked by the caller.
#[derive(Clone, Copy)]
struct Problem<'a> {
    a: &'a Tensor,
    b: &'a Tensor,
    bias: Option<&'a Tensor>,
    /// Added after the activation; shaped and typed as `out`.
    residual: Option<&'a Tensor>,
    out: &'a Tensor,
    layout: Layout,
    params: Params,
    batch: u32,
}

/// A batched matrix product on the tiled kernels: the `tiled` and `coop`
/// variants of [`matmul`](crate::ops::matmul::matmul), whose checks it relies on.
/// op(A) is [M, K], op(B) [K, N], batch strides in elements (0 = broadcast).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    gpu: &Gpu,
    core: GemmCore,
    tiles: Option<GemmTiles>,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    out: &Tensor,
    (trans_a, trans_b): (bool, bool),
    (m, n, k, batch): (u32, u32, u32, u32),
    (a_batch, b_batch): (u32, u32),
    alpha: f32,
    act: Act,
) -> Result<()> {
    let layout = Layout {
        ta: a.dtype(),
        tb: b.dtype(),
        tbias: bias.unwrap_or(a).dtype(),
        to: out.dtype(),
        trans_a,
        trans_b,
        conv: false,
        vec_a: (if trans_a { m } else { k }).is_multiple_of(4),
        vec_b: (if trans_b { k } else { n }).is_multiple_of(4),
    };
    let params = Params {
        m,
        n,
        k,
        has_bias: bias.is_some() as u32,
        a_batch,
        b_batch,
        alpha,
        act: act.code(),
        has_residual: residual.is_some() as u32,
        ..Default::default()
    };
    run(gpu, core, tiles, Problem { a, b, bias, residual, out, layout, params, batch })
}

/// Convolution geometry for [`conv2d`]: torch's conv2d with square stride and padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeometry {
    pub batch: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub ho: u32,
    pub wo: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    /// Zero rows above and below.
    pub pad: u32,
    /// Zero columns left and right.
    pub pad_w: u32,
}

/// A convolution as an implicit GEMM on the tiled kernels: the `tiled` and
/// `coop` variants of [`conv2d`](crate::ops::conv2d::conv2d), whose checks it relies on.
/// The weight is read as it is stored, [Cout, Cin·kh·kw].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d(
    gpu: &Gpu,
    core: GemmCore,
    tiles: Option<GemmTiles>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    out: &Tensor,
    g: ConvGeometry,
) -> Result<()> {
    let layout = Layout {
        ta: weight.dtype(),
        tb: x.dtype(),
        tbias: bias.unwrap_or(weight).dtype(),
        to: out.dtype(),
        trans_a: false,
        trans_b: false,
        conv: true,
        // The weight [Cout, Cin·kh·kw] row by row; im2col has no runs to read.
        vec_a: (g.cin * g.kh * g.kw).is_multiple_of(4),
        vec_b: false,
    };
    let params = Params {
        m: g.cout,
        n: g.batch * g.ho * g.wo,
        k: g.cin * g.kh * g.kw,
        has_bias: bias.is_some() as u32,
        alpha: 1.0,
        act: Act::None.code(),
        cin: g.cin,
        h: g.h,
        w: g.w,
        ho: g.ho,
        wo: g.wo,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        pad: g.pad,
        pad_w: g.pad_w,
        has_residual: residual.is_some() as u32,
        ..Default::default()
    };
    run(gpu, core, tiles, Problem { a: weight, b: x, bias, residual, out, layout, params, batch: 1 })
}

fn run(gpu: &Gpu, core: GemmCore, tiles: Option<GemmTiles>, p: Problem) -> Result<()> {
    let caps = gpu.caps();
    let tiles = match tiles {
        Some(t) => t,
        None => choose_tiles(gpu, core, p.params.m as usize, p.params.n as usize)?,
    };
    if !tiles.well_formed(core) {
        return Err(Error::Invalid(format!("GEMM tiling {tiles:?} breaks the {} kernel's shape rules", core_name(core))));
    }
    if !tiles.fits(gpu, core, operand_dtype(core, caps)) {
        return Err(Error::Invalid(format!("GEMM tiling {tiles:?} does not fit this device's workgroup limits")));
    }
    // The matrix units in use are checked at first use (their twin too, when
    // it stands in for them).
    let checked = core == GemmCore::Coop && coop_in_use(gpu);
    let hw = checked && coop_hw(caps) && tiles.sg == caps.subgroup_max_size;
    let key = key(core, hw, tiles, p.layout, caps);
    if checked && !coop_self_check(gpu, &key, tiles, p.layout)? {
        // Switched off just now: the register kernel does this one.
        return run(gpu, GemmCore::Reg, None, p);
    }
    let groups = [p.params.n.div_ceil(tiles.bn), p.params.m.div_ceil(tiles.bm), p.batch];
    let label = format!("gemm.{}{}", if p.layout.conv { "conv." } else { "" }, core_label(core, hw));
    let tensors = [p.a, p.b, p.bias.unwrap_or(p.a), p.residual.unwrap_or(p.a), p.out];
    gpu.dispatch(&label, &key, &p.params, &tensors, groups)
}

fn core_label(core: GemmCore, hw: bool) -> &'static str {
    match (core, hw) {
        (GemmCore::Coop, true) => "coop",
        (GemmCore::Coop, false) => "coop-emulated",
        (GemmCore::Reg, _) => "tiled",
    }
}

/// The first use of a matrix-unit pipeline on this device: a small problem of
/// the same layout (awkward sizes: partial blocks in M, N and K) on it and on
/// the register kernel. Returns whether the matrix units may be used; a
/// mismatch or a refused shader switches them off for the device, with one
/// warning. A pipeline that passed is not checked again.
fn coop_self_check(gpu: &Gpu, key: &KernelKey, tiles: GemmTiles, layout: Layout) -> Result<bool> {
    coop_first_use_check(gpu, key, "GEMM", || self_check_problem(gpu, tiles, layout))
}

/// The first-use check of any matrix-unit kernel `key` (GEMM, attention):
/// `check` runs a small problem on it and on a kernel without matrix units
/// and describes a mismatch. A mismatch, or an error (the driver refused the
/// shader), switches the matrix units off for the device with one warning;
/// returns whether they may be used. A kernel is checked once.
pub(crate) fn coop_first_use_check(
    gpu: &Gpu,
    key: &KernelKey,
    what: &str,
    check: impl FnOnce() -> Result<Option<String>>,
) -> Result<bool> {
    if gpu.is_switched_off(COOP_PATH) {
        return Ok(false);
    }
    if !gpu.first_use(key) {
        return Ok(true);
    }
    let verdict = match check() {
        Ok(None) => return Ok(true),
        Ok(Some(mismatch)) => mismatch,
        Err(e) => format!("the kernel failed: {e}"),
    };
    gpu.switch_off(
        COOP_PATH,
        &format!(
            "the matrix-unit {what} kernel [{key}] failed its first-use check on this adapter ({verdict}); \
             the kernels without matrix units run instead. Pass --disable-features coop-matrix to skip the matrix units and this check."
        ),
    );
    Ok(false)
}

/// Runs the check's problem on both cores; `Some(description)` if they differ.
fn self_check_problem(gpu: &Gpu, tiles: GemmTiles, l: Layout) -> Result<Option<String>> {
    // Operands in [-1, 1) from a fixed pattern (no RNG needed): sums of K
    // products of f16-rounded operands stay well inside f16's range.
    let pattern = |n: usize, salt: usize| -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5) - 1.0).collect()
    };
    let (m, n, k) = if l.conv { (tiles.bm + 3, tiles.bn + 5, 0) } else { (tiles.bm + 3, tiles.bn + 5, tiles.bk * 2 + 7) };
    let run_both = |run: &dyn Fn(GemmCore, Option<GemmTiles>) -> Result<Tensor>| -> Result<(Vec<f32>, Vec<f32>)> {
        let got = gpu.download(&run(GemmCore::Coop, Some(tiles))?)?;
        let want = gpu.download(&run(GemmCore::Reg, None)?)?;
        Ok((got, want))
    };
    let (got, want) = if l.conv {
        // 3×3, padding 1, stride 1 over a 2-image batch: N = 2·H·W pixels.
        let (cin, h, w) = (11u32, 7u32, n.div_ceil(14));
        let g = ConvGeometry { batch: 2, cin, h, w, cout: m, ho: h, wo: w, kh: 3, kw: 3, stride: 1, pad: 1, pad_w: 1 };
        let x = gpu.upload(&pattern((2 * cin * h * w) as usize, 1), &[2, cin as usize, h as usize, w as usize], l.tb)?;
        let wt = gpu.upload(&pattern((m * cin * 9) as usize, 2), &[m as usize, cin as usize, 3, 3], l.ta)?;
        let bias = gpu.upload(&pattern(m as usize, 3), &[m as usize], l.tbias)?;
        run_both(&|core, t| {
            let out = gpu.empty(&[2, m as usize, h as usize, w as usize], l.to)?;
            conv2d(gpu, core, t, &x, &wt, Some(&bias), None, &out, g)?;
            Ok(out)
        })?
    } else {
        let (ar, ac) = if l.trans_a { (k, m) } else { (m, k) };
        let (br, bc) = if l.trans_b { (n, k) } else { (k, n) };
        let a = gpu.upload(&pattern((ar * ac) as usize, 1), &[ar as usize, ac as usize], l.ta)?;
        let b = gpu.upload(&pattern((br * bc) as usize, 2), &[br as usize, bc as usize], l.tb)?;
        let bias = gpu.upload(&pattern(n as usize, 3), &[n as usize], l.tbias)?;
        run_both(&|core, t| {
            let out = gpu.empty(&[m as usize, n as usize], l.to)?;
            matmul(gpu, core, t, &a, &b, Some(&bias), None, &out, (l.trans_a, l.trans_b), (m, n, k, 1), (0, 0), 1.0, Act::Silu)?;
            Ok(out)
        })?
    };
    // f16 operands: each product is exact in f32, the inputs are rounded to
    // 2^-11 relative; a wrong kernel is off by O(1).
    let scale = want.iter().fold(1.0f32, |s, v| s.max(v.abs()));
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    let bad = got.iter().any(|v| !v.is_finite()) || worst > 2e-2 * scale;
    Ok(bad.then(|| format!("largest difference {worst:.3e} against the register kernel, scale {scale:.2}")))
}
