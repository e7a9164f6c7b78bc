//! Multiresolution hash-grid encoding and the field fused on it
//! (`shaders/hashgrid.wgsl`): encode / encode_backward on their own, and
//! field_forward / field_backward (grid → density and albedo MLP heads, with
//! the density gradient for normals: analytic, or finite-difference rows)
//! for the renderer.
//!
//! The grid follows tiny-cuda-nn's `GridEncoding` (hash type, linear
//! interpolation) exactly: level scales, resolutions, dense/hashed indexing,
//! per-level table sizes and offsets (see [`GridLayout`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::grid_for;

const FAMILY: &str = "hashgrid";
/// Threads per workgroup of every hashgrid kernel.
pub const WG: u32 = 64;
/// Most levels a grid may have (the uniform holds 16).
pub const MAX_LEVELS: usize = 16;
/// Most features per point (levels × features per level) and hidden units.
pub const MAX_IN: usize = 64;
pub const MAX_HIDDEN: usize = 64;
/// Most workgroups of the row-striding field kernels.
const MAX_STRIDE_WORKGROUPS: usize = 4096;
/// The same on CPU adapters (a few per core are enough; see [`stride_workgroups`]).
const CPU_STRIDE_WORKGROUPS: usize = 64;

/// One level of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridLevel {
    /// Points map to `u·scale + 0.5` in vertex units.
    pub scale: f32,
    /// Vertices per axis (`ceil(scale) + 1`).
    pub resolution: u32,
    /// First table entry of the level.
    pub offset: u32,
    /// Entries of the level: `min(next_multiple(resolution³, 8), 2^log2_table)`.
    pub size: u32,
    /// Indexed densely (resolution³ fits the table) rather than hashed.
    pub dense: bool,
}

/// Where every level lives in the table: tcnn's GridEncoding layout.
#[derive(Clone, Debug, PartialEq)]
pub struct GridLayout {
    pub levels: Vec<GridLevel>,
    pub features_per_level: u32,
    /// Entries over all levels; the table holds `entries · features_per_level` floats.
    pub entries: u32,
}

impl GridLayout {
    /// The layout of `levels` levels of `features_per_level` features, at most
    /// `2^log2_table` entries per level, coarsest resolution `base_resolution`,
    /// each level `per_level_scale` times finer.
    pub fn new(levels: u32, features_per_level: u32, log2_table: u32, base_resolution: u32, per_level_scale: f32) -> Result<GridLayout> {
        if levels == 0 || levels as usize > MAX_LEVELS {
            return Err(Error::Invalid(format!("hash grid: {levels} levels, expected 1..={MAX_LEVELS}")));
        }
        if !matches!(features_per_level, 1 | 2 | 4 | 8) {
            return Err(Error::Invalid(format!("hash grid: {features_per_level} features per level, expected 1, 2, 4 or 8")));
        }
        if (levels * features_per_level) as usize > MAX_IN {
            return Err(Error::Invalid(format!(
                "hash grid: {levels} levels × {features_per_level} features = {} outputs, at most {MAX_IN}",
                levels * features_per_level
            )));
        }
        if !(1..=28).contains(&log2_table) {
            return Err(Error::Invalid(format!("hash grid: log2 table size {log2_table}, expected 1..=28")));
        }
        if base_resolution < 2 || !(per_level_scale >= 1.0 && per_level_scale.is_finite()) {
            return Err(Error::Invalid(format!(
                "hash grid: base resolution {base_resolution} (≥ 2) and per-level scale {per_level_scale} (≥ 1)"
            )));
        }
        let table = 1u64 << log2_table;
        let log2_scale = per_level_scale.log2();
        let mut out = Vec::with_capacity(levels as usize);
        let mut offset = 0u64;
        for l in 0..levels {
            // In f32, as tcnn computes it.
            let scale = (l as f32 * log2_scale).exp2() * base_resolution as f32 - 1.0;
            let resolution = scale.ceil() as u64 + 1;
            let dense_size = resolution.saturating_pow(3);
            let size = dense_size.div_ceil(8).saturating_mul(8).min(table);
            out.push(GridLevel { scale, resolution: resolution as u32, offset: offset as u32, size: size as u32, dense: dense_size <= size });
            offset += size;
        }
        if offset * features_per_level as u64 > u32::MAX as u64 / 2 {
            return Err(Error::Invalid(format!("hash grid: {offset} entries is too many")));
        }
        Ok(GridLayout { levels: out, features_per_level, entries: offset as u32 })
    }

    /// Floats in the table.
    pub fn n_params(&self) -> usize {
        self.entries as usize * self.features_per_level as usize
    }
    /// Features per point (levels × features per level).
    pub fn output_dim(&self) -> usize {
        self.levels.len() * self.features_per_level as usize
    }
}

/// Where the normals' density gradient comes from (threestudio's `normal_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalKind {
    /// ∇σ carried through the grid's trilinear weights and the density head
    /// in the point's own row: one gather per level (FSD_SPEC §5: "normals
    /// from the density gradient").
    #[default]
    Analytic,
    /// Central differences of σ at ±normal_eps along each axis: six more
    /// rows per point.
    FiniteDifference,
}

impl NormalKind {
    /// Density values per point when normals are evaluated: σ and ∇σ (4), or
    /// σ at the point and its six offsets (7).
    pub fn values_per_point(self) -> u32 {
        match self {
            NormalKind::Analytic => 4,
            NormalKind::FiniteDifference => 7,
        }
    }
}

/// The field on top of a grid: two MLP heads of one hidden layer, the world
/// box, threestudio's density bias and how normals are computed.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldSpec {
    pub grid: GridLayout,
    /// Hidden units of the density and albedo heads.
    pub hidden: u32,
    /// The world box is [-radius, radius]³.
    pub radius: f32,
    /// How normals are computed.
    pub normals: NormalKind,
    /// Finite-difference offset of the normal rows, world units.
    pub normal_eps: f32,
    /// Density bias `blob_scale·(1 − |x|/blob_std)` (blob_magic3d).
    pub blob_scale: f32,
    pub blob_std: f32,
}

/// Offsets of the four weight matrices in the packed MLP weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpLayout {
    pub w1_density: usize,
    pub w2_density: usize,
    pub w1_albedo: usize,
    pub w2_albedo: usize,
    pub len: usize,
}

impl FieldSpec {
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.hidden as usize > MAX_HIDDEN {
            return Err(Error::Invalid(format!("field: {} hidden units, expected 1..={MAX_HIDDEN}", self.hidden)));
        }
        if !(self.radius > 0.0 && self.normal_eps > 0.0 && self.blob_std > 0.0 && self.blob_scale.is_finite()) {
            return Err(Error::Invalid(format!(
                "field: radius {}, normal eps {} and blob std {} must be positive",
                self.radius, self.normal_eps, self.blob_std
            )));
        }
        Ok(())
    }

    /// Where W1/W2 of the density and albedo heads sit in the packed weights
    /// (`[W1d (H×IN) | W2d (1×H) | W1a (H×IN) | W2a (3×H)]`, row-major [out][in]).
    pub fn mlp_layout(&self) -> MlpLayout {
        let (h, i) = (self.hidden as usize, self.grid.output_dim());
        MlpLayout { w1_density: 0, w2_density: h * i, w1_albedo: h * i + h, w2_albedo: 2 * h * i + h, len: 2 * h * i + 4 * h }
    }

    /// Density values per point (K): 1 without normals, else
    /// [`NormalKind::values_per_point`].
    pub fn values_per_point(&self, normals: bool) -> u32 {
        if normals { self.normals.values_per_point() } else { 1 }
    }

    /// Whether the kernels carry the analytic gradient.
    fn analytic(&self, normals: bool) -> bool {
        normals && self.normals == NormalKind::Analytic
    }

    /// Rows the field kernels evaluate per point: 7 with finite-difference
    /// normals, else 1 (analytic normals ride in the point's own row).
    pub fn rows_per_point(&self, normals: bool) -> u32 {
        if normals && self.normals == NormalKind::FiniteDifference { 7 } else { 1 }
    }
}

crate::kernel_params! {
    struct Params {
        n: u32,
        levels: u32,
        feats: u32,
        hidden: u32,
        k: u32,
        radius: f32,
        normal_eps: f32,
        blob_scale: f32,
        blob_std: f32,
        _pad: [u32; 3],
        level_info: [[u32; 4]; MAX_LEVELS],
        level_scale: [f32; MAX_LEVELS],
    }
}

fn grid_params(grid: &GridLayout, n: usize) -> Params {
    let mut p = Params { n: n as u32, levels: grid.levels.len() as u32, feats: grid.features_per_level, k: 1, ..Default::default() };
    for (l, lv) in grid.levels.iter().enumerate() {
        p.level_info[l] = [lv.resolution, lv.offset, lv.size, lv.dense as u32];
        p.level_scale[l] = lv.scale;
    }
    p
}

fn field_params(f: &FieldSpec, n: usize, k: u32) -> Params {
    let mut p = grid_params(&f.grid, n);
    p.hidden = f.hidden;
    p.k = k;
    p.radius = f.radius;
    p.normal_eps = f.normal_eps;
    p.blob_scale = f.blob_scale;
    p.blob_std = f.blob_std;
    p
}

/// The dimensions compiled as constants: threestudio's default field and the
/// embedded prior's small one (`generate` defaults). Every other shape runs
/// the generic variant, which reads them from the uniform, so its loops over
/// private arrays cannot be unrolled (on llvmpipe the difference was lost in
/// the noise of a shared machine; GPUs are where it should show).
const SPECIALIZED: [(u32, u32, u32); 2] = [(16, 2, 64), (8, 2, 32)];

/// Compile-time dimensions of a variant: `None` = generic.
type Dims = Option<(u32, u32, u32)>;

fn dims_for(levels: usize, feats: u32, hidden: u32) -> Dims {
    SPECIALIZED.iter().copied().find(|&d| d == (levels as u32, feats, hidden))
}

crate::ops::kernel_variants! {
    /// How the field's backward adds into the grid gradient.
    pub enum FieldVariant ("hashgrid") {
        /// One fixed-point atomic pair per (row, corner, feature) with a
        /// gradient: what CPU adapters like (no cross-lane traffic, and an
        /// atomic costs llvmpipe no more than an add).
        Atomic = "atomic",
        /// The lanes of a subgroup that share an entry (the coarse levels'
        /// cells hold runs of a ray's samples) sum in registers first, one
        /// atomic pair per group: for GPUs, whose atomics on one address
        /// serialise. The same bits as `atomic` (integer sums).
        Subgroup = "subgroup",
    }
}

impl FieldVariant {
    /// Whether a device with `caps` can run this variant.
    pub fn available(self, caps: Caps) -> bool {
        match self {
            FieldVariant::Atomic => true,
            FieldVariant::Subgroup => caps.features.subgroups,
        }
    }

    /// GPUs with subgroups: `subgroup`; CPU adapters and the rest: `atomic`.
    pub fn default_for(gpu: &Gpu) -> FieldVariant {
        if gpu.info().device_type != wgpu::DeviceType::Cpu && FieldVariant::Subgroup.available(gpu.caps()) {
            FieldVariant::Subgroup
        } else {
            FieldVariant::Atomic
        }
    }
}

/// The device's `--variant hashgrid=NAME`, else the default for its class.
pub fn choose_variant(gpu: &Gpu) -> Result<FieldVariant> {
    let v = match gpu.variant_override("hashgrid") {
        Some(name) => FieldVariant::parse(name)?,
        None => FieldVariant::default_for(gpu),
    };
    if !v.available(gpu.caps()) {
        return Err(Error::Invalid(format!("hashgrid variant {v} needs subgroups, which this device does not have (or were disabled): pick --variant hashgrid=atomic")));
    }
    Ok(v)
}

fn key(entry: &'static str, dims: Dims) -> KernelKey {
    let k = KernelKey::new(FAMILY, entry).params::<Params>()
        .flag("SUBGROUP", false)
        .flag("ANALYTIC", false)
        .flag("ENCODE", entry == "encode")
        .flag("ENCODE_BACKWARD", entry == "encode_backward")
        .flag("FIELD_FORWARD", entry == "field_forward")
        .flag("FIELD_BACKWARD", entry == "field_backward")
        .flag("RESOLVE_FIXED", entry == "resolve_fixed");
    match dims {
        Some((l, f, h)) => k
            .def("LEVELS", format!("{l}u"))
            .def("FEATS", format!("{f}u"))
            .def("HIDDEN", format!("{h}u"))
            .def("MAX_IN", format!("{}u", l * f))
            .def("MAX_HIDDEN", format!("{h}u")),
        None => k
            .def("LEVELS", "p.levels")
            .def("FEATS", "p.feats")
            .def("HIDDEN", "p.hidden")
            .def("MAX_IN", format!("{MAX_IN}u"))
            .def("MAX_HIDDEN", format!("{MAX_HIDDEN}u")),
    }
}

fn encode_key() -> KernelKey {
    key("encode", None).flag("SAMPLES", false).flag("ALBEDO", false)
}
fn encode_backward_key() -> KernelKey {
    key("encode_backward", None).flag("SAMPLES", false).flag("ALBEDO", false)
}
fn field_forward_key(dims: Dims, samples: bool, albedo: bool, analytic: bool) -> KernelKey {
    key("field_forward", dims).flag("SAMPLES", samples).flag("ALBEDO", albedo).flag("ANALYTIC", analytic)
}
fn field_backward_key(dims: Dims, samples: bool, analytic: bool, variant: FieldVariant) -> KernelKey {
    key("field_backward", dims)
        .flag("SAMPLES", samples)
        .flag("ALBEDO", true)
        .flag("ANALYTIC", analytic)
        .flag("SUBGROUP", variant == FieldVariant::Subgroup)
}
fn resolve_fixed_key() -> KernelKey {
    key("resolve_fixed", None).flag("SAMPLES", false).flag("ALBEDO", false)
}

/// The table gradient's fixed-point sums (see the shader's header): the low
/// and high u32 words of each entry's 64-bit sum, zero. `resolve_fixed`
/// leaves them zero again, so a caller may keep them between passes.
struct FixedSums {
    lo: Tensor,
    hi: Tensor,
}

impl FixedSums {
    fn zeros(gpu: &Gpu, n: usize) -> Result<FixedSums> {
        Ok(FixedSums { lo: gpu.zeros(&[n], DType::U32)?, hi: gpu.zeros(&[n], DType::U32)? })
    }

    /// grad += the sums (and the sums cleared).
    fn resolve_into(&self, gpu: &Gpu, grad: &Tensor) -> Result<()> {
        let n = grad.numel();
        let p = Params { n: u32::try_from(n).map_err(|_| Error::shape("hashgrid", format!("{n} table gradients are over the 32-bit index range")))?, ..Default::default() };
        gpu.dispatch("hashgrid.resolve_fixed", &resolve_fixed_key(), &p, &[grad, &self.lo, &self.hi], grid_for(gpu, n, WG))
    }
}

/// Rows of weight-gradient partials each field_backward workgroup writes:
/// one per group of `hidden` threads (see the shader's reduction).
fn backward_parts(hidden: u32) -> usize {
    (WG / hidden).max(1) as usize
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut v = vec![encode_key(), encode_backward_key(), resolve_fixed_key()];
    let mut dims: Vec<Dims> = vec![None];
    dims.extend(SPECIALIZED.iter().map(|&d| Some(d)));
    for &d in &dims {
        v.push(field_forward_key(d, false, false, false));
        v.push(field_forward_key(d, true, false, false));
        for samples in [false, true] {
            for analytic in [false, true] {
                v.push(field_forward_key(d, samples, true, analytic));
                for variant in FieldVariant::ALL.into_iter().filter(|v| v.available(caps)) {
                    v.push(field_backward_key(d, samples, analytic, variant));
                }
            }
        }
    }
    v
}

fn expect_f32(op: &'static str, what: &str, t: &Tensor, numel: Option<usize>) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("{what} must be f32 (the field is f32), got {t:?}")));
    }
    if let Some(n) = numel.filter(|&n| n != t.numel()) {
        return Err(Error::shape(op, format!("{what} has {} elements, expected {n}: {t:?}", t.numel())));
    }
    Ok(())
}

fn expect_points(op: &'static str, points: &Tensor) -> Result<usize> {
    if points.rank() != 2 || points.dim(1) != 3 || points.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("points must be f32 [n, 3], got {points:?}")));
    }
    Ok(points.dim(0))
}

/// Features `[n, levels·features]` of `points` (f32 `[n, 3]`, in [0,1]³;
/// outside it they are clamped onto it) from `table` (f32, `layout.n_params()`).
pub fn encode(gpu: &Gpu, layout: &GridLayout, table: &Tensor, points: &Tensor) -> Result<Tensor> {
    let n = expect_points("hashgrid.encode", points)?;
    expect_f32("hashgrid.encode", "table", table, Some(layout.n_params()))?;
    let out = gpu.empty(&[n, layout.output_dim()], DType::F32)?;
    let p = grid_params(layout, n);
    gpu.dispatch("hashgrid.encode", &encode_key(), &p, &[table, points, &out], grid_for(gpu, n, WG))?;
    Ok(out)
}

/// Adds dL/dtable to `grad_table` given dL/dfeatures `[n, levels·features]`
/// (scatter-added in fixed point: the same inputs give the same bits, see
/// the shader's header).
pub fn encode_backward(gpu: &Gpu, layout: &GridLayout, points: &Tensor, d_features: &Tensor, grad_table: &Tensor) -> Result<()> {
    let n = expect_points("hashgrid.encode_backward", points)?;
    expect_f32("hashgrid.encode_backward", "d_features", d_features, Some(n * layout.output_dim()))?;
    expect_f32("hashgrid.encode_backward", "grad_table", grad_table, Some(layout.n_params()))?;
    let p = grid_params(layout, n);
    let sums = FixedSums::zeros(gpu, grad_table.numel())?;
    gpu.dispatch(
        "hashgrid.encode_backward",
        &encode_backward_key(),
        &p,
        &[&sums.lo, points, d_features, &sums.hi],
        grid_for(gpu, n, WG),
    )?;
    sums.resolve_into(gpu, grad_table)
}

/// Where the field's points come from.
#[derive(Clone, Copy, Debug)]
pub enum FieldPoints<'a> {
    /// World positions, f32 `[n, 3]`.
    Points(&'a Tensor),
    /// The renderer's samples: f32 `[capacity, 4]` (xyz, t), of which the
    /// first `info[0]` (a u32 tensor, written on the device) are valid.
    Samples { samples: &'a Tensor, info: &'a Tensor },
}

impl FieldPoints<'_> {
    /// (points or capacity, is samples) after checking shapes.
    fn check(&self, op: &'static str) -> Result<(usize, bool)> {
        match self {
            FieldPoints::Points(t) => Ok((expect_points(op, t)?, false)),
            FieldPoints::Samples { samples, info } => {
                if samples.rank() != 2 || samples.dim(1) != 4 || samples.dtype() != DType::F32 {
                    return Err(Error::shape(op, format!("samples must be f32 [capacity, 4], got {samples:?}")));
                }
                if info.dtype() != DType::U32 || info.numel() < 1 {
                    return Err(Error::shape(op, format!("info must be a u32 tensor, got {info:?}")));
                }
                Ok((samples.dim(0), true))
            }
        }
    }
    fn tensors(&self) -> (&Tensor, Option<&Tensor>) {
        match self {
            FieldPoints::Points(t) => (t, None),
            FieldPoints::Samples { samples, info } => (samples, Some(info)),
        }
    }
}

fn check_field(op: &'static str, f: &FieldSpec, table: &Tensor, mlp: &Tensor) -> Result<()> {
    f.validate()?;
    expect_f32(op, "table", table, Some(f.grid.n_params()))?;
    expect_f32(op, "mlp weights", mlp, Some(f.mlp_layout().len))
}

/// Workgroups of a kernel that strides over `rows` rows in tiles. With the
/// renderer's samples `rows` is the buffer's capacity, while the device-side
/// count is often a small part of it: every workgroup past the last tile
/// only reads the count and leaves, which costs a GPU next to nothing but a
/// CPU adapter a whole workgroup launch each (4 096 of them were 40 % of an
/// evaluation render's field time on llvmpipe), so CPU adapters get few.
fn stride_workgroups(gpu: &Gpu, rows: usize, cap: usize) -> [u32; 3] {
    let cap = if gpu.info().device_type == wgpu::DeviceType::Cpu { cap.min(CPU_STRIDE_WORKGROUPS) } else { cap };
    let groups = rows.div_ceil(WG as usize).clamp(1, cap);
    crate::gpu::grid_1d(groups as u32, gpu.limits().max_compute_workgroups_per_dimension)
}

/// The field at `points`: density `[n, K]` and albedo `[n, 3]`. K is 1
/// without `normals`; with them 4 (σ, ∇σ) for analytic normals or 7 (σ at
/// the point and its six finite-difference neighbours).
/// In `Samples` mode `n` is the capacity; rows past `info[0]` are not written.
pub fn field_forward(gpu: &Gpu, f: &FieldSpec, table: &Tensor, mlp: &Tensor, points: FieldPoints<'_>, normals: bool) -> Result<(Tensor, Tensor)> {
    const OP: &str = "hashgrid.field_forward";
    check_field(OP, f, table, mlp)?;
    let (n, samples) = points.check(OP)?;
    let k = f.values_per_point(normals);
    let rows = n * f.rows_per_point(normals) as usize;
    let density = gpu.empty(&[n, k as usize], DType::F32)?;
    let albedo = gpu.empty(&[n, 3], DType::F32)?;
    let p = field_params(f, n, k);
    let dims = dims_for(f.grid.levels.len(), f.grid.features_per_level, f.hidden);
    let (pts, info) = points.tensors();
    let mut bind = vec![table, mlp, pts, &density, &albedo];
    bind.extend(info);
    gpu.dispatch(
        OP,
        &field_forward_key(dims, samples, true, f.analytic(normals)),
        &p,
        &bind,
        stride_workgroups(gpu, rows, MAX_STRIDE_WORKGROUPS),
    )?;
    Ok((density, albedo))
}

/// The density alone, `[n]`: at world points (the occupancy grid's and the
/// mesh's queries) or at the renderer's samples (the pruning pass; rows past
/// `info[0]` are not written).
pub fn field_density(gpu: &Gpu, f: &FieldSpec, table: &Tensor, mlp: &Tensor, points: FieldPoints<'_>) -> Result<Tensor> {
    const OP: &str = "hashgrid.field_density";
    check_field(OP, f, table, mlp)?;
    let (n, samples) = points.check(OP)?;
    let density = gpu.empty(&[n], DType::F32)?;
    let unused_albedo = gpu.empty(&[1], DType::F32)?;
    let p = field_params(f, n, 1);
    let dims = dims_for(f.grid.levels.len(), f.grid.features_per_level, f.hidden);
    let (pts, info) = points.tensors();
    let mut bind = vec![table, mlp, pts, &density, &unused_albedo];
    bind.extend(info);
    gpu.dispatch(OP, &field_forward_key(dims, samples, false, false), &p, &bind, stride_workgroups(gpu, n, MAX_STRIDE_WORKGROUPS))?;
    Ok(density)
}

/// Workgroups of field_backward for `rows` rows: each writes its rows of
/// weight-gradient partials, so fewer on CPU adapters (2 cores gain nothing
/// from 1024 of them, and the reduction reads them all).
fn backward_workgroups(gpu: &Gpu, rows: usize) -> usize {
    let cap = if gpu.info().device_type == wgpu::DeviceType::Cpu { 64 } else { 1024 };
    rows.div_ceil(WG as usize).clamp(1, cap)
}

/// Backward of [`field_forward`]: given dL/d(density values) `[n, K]` and dL/dalbedo `[n, 3]`,
/// adds dL/dtable to `grad_table` and dL/dweights to `grad_mlp`.
#[allow(clippy::too_many_arguments)]
pub fn field_backward(
    gpu: &Gpu,
    f: &FieldSpec,
    table: &Tensor,
    mlp: &Tensor,
    points: FieldPoints<'_>,
    normals: bool,
    d_density: &Tensor,
    d_albedo: &Tensor,
    grad_table: &Tensor,
    grad_mlp: &Tensor,
) -> Result<()> {
    const OP: &str = "hashgrid.field_backward";
    check_field(OP, f, table, mlp)?;
    let (n, samples) = points.check(OP)?;
    let k = f.values_per_point(normals);
    let rows = n * f.rows_per_point(normals) as usize;
    expect_f32(OP, "d_density", d_density, Some(n * k as usize))?;
    expect_f32(OP, "d_albedo", d_albedo, Some(n * 3))?;
    expect_f32(OP, "grad_table", grad_table, Some(f.grid.n_params()))?;
    let layout = f.mlp_layout();
    expect_f32(OP, "grad_mlp", grad_mlp, Some(layout.len))?;
    let dims = dims_for(f.grid.levels.len(), f.grid.features_per_level, f.hidden);
    let variant = choose_variant(gpu)?;
    let groups = backward_workgroups(gpu, rows);
    let partials = gpu.empty(&[groups * backward_parts(f.hidden), layout.len], DType::F32)?;
    let p = field_params(f, n, k);
    let (pts, info) = points.tensors();
    let sums = FixedSums::zeros(gpu, grad_table.numel())?;
    let mut bind = vec![&sums.lo, mlp, table, pts, d_density, d_albedo, &partials];
    bind.extend(info);
    bind.push(&sums.hi);
    gpu.dispatch(
        OP,
        &field_backward_key(dims, samples, f.analytic(normals), variant),
        &p,
        &bind,
        crate::gpu::grid_1d(groups as u32, gpu.limits().max_compute_workgroups_per_dimension),
    )?;
    sums.resolve_into(gpu, grad_table)?;
    crate::ops::mlp::reduce_partials(gpu, &partials, grad_mlp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threestudio_layout_matches_tcnn() {
        let g = GridLayout::new(16, 2, 19, 16, 1.447269).unwrap();
        // Coarse levels dense, from level 5 (resolution 102, 102³ > 2^19) hashed.
        assert_eq!(g.levels[0].resolution, 16);
        assert!(g.levels[0].dense && g.levels[4].dense && !g.levels[5].dense);
        assert_eq!(g.levels[0].size, 4096);
        assert_eq!(g.levels[15].size, 1 << 19);
        assert_eq!(g.levels[1].offset, 4096);
        let finest = g.levels[15].scale;
        assert!((finest - 4095.0).abs() < 2.0, "finest scale {finest}");
        assert_eq!(g.output_dim(), 32);
        // ~12.6M parameters, as threestudio's geometry reports.
        assert!((12_000_000..13_000_000).contains(&g.n_params()), "{}", g.n_params());
    }

    #[test]
    fn bad_layouts_are_errors() {
        assert!(GridLayout::new(0, 2, 19, 16, 1.4).is_err());
        assert!(GridLayout::new(17, 2, 19, 16, 1.4).is_err());
        assert!(GridLayout::new(16, 3, 19, 16, 1.4).is_err());
        assert!(GridLayout::new(16, 8, 19, 16, 1.4).is_err());
        assert!(GridLayout::new(4, 2, 0, 16, 1.4).is_err());
        assert!(GridLayout::new(4, 2, 10, 16, 0.5).is_err());
    }
}
