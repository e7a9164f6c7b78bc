//! Group norm (torch.nn.GroupNorm, optionally with a fused SiLU) and layer
//! norm (torch.nn.LayerNorm over the last dimension) (`shaders/norm.wgsl`).
//!
//! Both take their statistics relative to a shift (the first element of the
//! row / group) with Welford's update and the parallel merge, robust for data
//! with a large mean and a small variance; see the shader's header.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor, grid_1d};
use crate::ops::{expect_float, float_dtypes, grid_rows, u32_of};

/// Workgroup sizes the row / group reductions are built for (powers of two).
/// [`workgroup_size`] picks one per device; the `*_with_workgroup` functions
/// take any of them (tests run every size on one device).
pub const WORKGROUP_SIZES: [u32; 2] = [16, 128];

/// The reduction workgroup size for `gpu`. CPU adapters (llvmpipe) run a
/// workgroup on one thread in 8-wide SIMD rows, so invocations beyond a
/// couple of rows add only barrier cost: 16 there (measured on layer norm
/// [8192, 320]: 16 → 31 ms, 64 → 51 ms, 128 → 108 ms of CPU time; softmax
/// [2048, 1024]: 16 → 23 ms, 128 → 47 ms). GPUs get 128 lanes per row.
pub fn workgroup_size(gpu: &Gpu) -> u32 {
    if gpu.info().device_type == wgpu::DeviceType::Cpu { WORKGROUP_SIZES[0] } else { WORKGROUP_SIZES[1] }
}

/// Elements per group-norm statistics chunk (one workgroup each), so that a
/// 2M-element VAE group spreads over 512 workgroups.
const GN_CHUNK: u32 = 4096;
/// Elements per gn_apply workgroup: its per-channel loads (statistics, gamma,
/// beta) are amortised over these.
const GN_APPLY_BLOCK: u32 = 2048;
/// Workgroup size of gn_finalize (one invocation per group).
const WG_FINALIZE: u32 = 64;

fn check_workgroup(op: &'static str, wg: u32) -> Result<()> {
    if !WORKGROUP_SIZES.contains(&wg) {
        return Err(Error::Invalid(format!("{op}: workgroup size {wg} is not one of {WORKGROUP_SIZES:?}")));
    }
    Ok(())
}

crate::kernel_params! {
    struct Params {
        n_rows: u32,
        row_len: u32,
        chunk_len: u32,
        n_chunks: u32,
        channels: u32,
        group_channels: u32,
        eps: f32,
        _pad: u32,
    }
}

/// Which affine parameters a kernel reads, and their storage type (shared
/// with the input-gradient kernels of `norm_backward`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Affine {
    pub(crate) gamma: bool,
    pub(crate) beta: bool,
    pub(crate) dtype: DType,
}

impl Affine {
    /// Every combination the ops can dispatch on `caps`.
    pub(crate) fn all(caps: Caps) -> Vec<Affine> {
        let mut v = vec![Affine { gamma: false, beta: false, dtype: DType::F32 }];
        for dtype in float_dtypes(caps) {
            for (gamma, beta) in [(true, true), (true, false), (false, true)] {
                v.push(Affine { gamma, beta, dtype });
            }
        }
        v
    }

    /// Checks gamma / beta against the normalised dimension of length `len`.
    pub(crate) fn of(op: &'static str, gamma: Option<&Tensor>, beta: Option<&Tensor>, len: usize) -> Result<Affine> {
        for (name, t) in [("gamma", gamma), ("beta", beta)] {
            if let Some(t) = t {
                expect_float(op, t)?;
                if t.shape() != [len] {
                    return Err(Error::shape(op, format!("{name} must have shape [{len}], got {:?}", t.shape())));
                }
            }
        }
        if let (Some(g), Some(b)) = (gamma, beta)
            && g.dtype() != b.dtype()
        {
            return Err(Error::shape(op, format!("gamma ({}) and beta ({}) must have the same dtype", g.dtype(), b.dtype())));
        }
        let dtype = gamma.or(beta).map_or(DType::F32, |t| t.dtype());
        Ok(Affine { gamma: gamma.is_some(), beta: beta.is_some(), dtype })
    }

    /// Adds the defines; `first_slot` is the binding of gamma (or of beta without gamma).
    pub(crate) fn apply(self, key: KernelKey, first_slot: u32) -> KernelKey {
        key.def("TP", self.dtype.wgsl())
            .flag("GAMMA", self.gamma)
            .flag("BETA", self.beta)
            .def("BETA_SLOT", first_slot + self.gamma as u32)
    }
}

fn key(entry: &'static str, t: DType, wg: u32, subgroups: bool) -> KernelKey {
    KernelKey::new("norm", entry).params::<Params>()
        .def("T", t.wgsl())
        .def("WG", wg)
        .flag("SUBGROUP_OPS", subgroups)
        .flag("GN_STATS", entry == "gn_stats")
        .flag("GN_FINALIZE", entry == "gn_finalize")
        .flag("GN_APPLY", entry == "gn_apply")
        .flag("LAYER_NORM", entry == "layer_norm")
}

fn gn_stats_key(t: DType, wg: u32, subgroups: bool) -> KernelKey {
    key("gn_stats", t, wg, subgroups)
}
fn gn_finalize_key(t: DType) -> KernelKey {
    key("gn_finalize", t, WG_FINALIZE, false)
}
fn gn_apply_key(t: DType, wg: u32, affine: Affine, silu: bool) -> KernelKey {
    affine.apply(key("gn_apply", t, wg, false), 4).flag("SILU", silu)
}
fn layer_norm_key(t: DType, wg: u32, affine: Affine, subgroups: bool) -> KernelKey {
    affine.apply(key("layer_norm", t, wg, subgroups), 3)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let subgroups: &[bool] = if caps.features.subgroups { &[false, true] } else { &[false] };
    let mut v = Vec::new();
    for t in float_dtypes(caps) {
        v.push(gn_finalize_key(t));
        for wg in WORKGROUP_SIZES {
            for &sg in subgroups {
                v.push(gn_stats_key(t, wg, sg));
            }
            for affine in Affine::all(caps) {
                for silu in [false, true] {
                    v.push(gn_apply_key(t, wg, affine, silu));
                }
                for &sg in subgroups {
                    v.push(layer_norm_key(t, wg, affine, sg));
                }
            }
        }
    }
    v
}

/// torch.nn.GroupNorm over x `[B, C, ...spatial]` with `groups` groups,
/// per-channel `gamma` / `beta` `[C]` (either may be absent: scale 1, shift 0),
/// then SiLU when `silu`. The output has x's shape and dtype.
pub fn group_norm(
    gpu: &Gpu,
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    group_norm_with_workgroup(gpu, x, groups, gamma, beta, eps, silu, workgroup_size(gpu))
}

/// [`group_norm`] with an explicit workgroup size, one of [`WORKGROUP_SIZES`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_with_workgroup(
    gpu: &Gpu,
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
    wg: u32,
) -> Result<Tensor> {
    const OP: &str = "group_norm";
    check_workgroup(OP, wg)?;
    expect_float(OP, x)?;
    if x.rank() < 2 {
        return Err(Error::shape(OP, format!("expected x of shape [B, C, ...], got {:?}", x.shape())));
    }
    let (batch, channels) = (x.dim(0), x.dim(1));
    if groups == 0 || channels % groups != 0 {
        return Err(Error::shape(OP, format!("{groups} groups do not divide the {channels} channels of {:?}", x.shape())));
    }
    let affine = Affine::of(OP, gamma, beta, channels)?;
    let y = gpu.empty(x.shape(), x.dtype())?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let plane = x.numel() / (batch * channels);
    let group_channels = channels / groups;
    let n_groups = u32_of(OP, "batch·groups", batch * groups)?;
    let group_len = u32_of(OP, "elements per group", group_channels * plane)?;
    let chunk_len = GN_CHUNK.max(group_len.div_ceil(gpu.limits().max_compute_workgroups_per_dimension));
    let n_chunks = group_len.div_ceil(chunk_len);
    let p = Params {
        n_rows: n_groups,
        row_len: group_len,
        chunk_len,
        n_chunks,
        channels: channels as u32,
        group_channels: group_channels as u32,
        eps,
        _pad: 0,
    };

    let partials = gpu.empty(&[n_groups as usize, n_chunks as usize, 2], DType::F32)?;
    gpu.dispatch(
        "norm.gn_stats",
        &gn_stats_key(x.dtype(), wg, gpu.features().subgroups),
        &p,
        &[x, &partials],
        grid_rows(gpu, n_chunks, n_groups),
    )?;
    let stats = gpu.empty(&[n_groups as usize, 3], DType::F32)?;
    gpu.dispatch(
        "norm.gn_finalize",
        &gn_finalize_key(x.dtype()),
        &p,
        &[x, &partials, &stats],
        grid_1d(n_groups.div_ceil(WG_FINALIZE), gpu.limits().max_compute_workgroups_per_dimension),
    )?;

    let planes = u32_of(OP, "batch·channels", batch * channels)?;
    let apply = Params { n_rows: planes, row_len: u32_of(OP, "spatial size", plane)?, chunk_len: GN_APPLY_BLOCK, ..p };
    let mut tensors = vec![x, &stats, &y];
    tensors.extend(gamma);
    tensors.extend(beta);
    gpu.dispatch(
        "norm.gn_apply",
        &gn_apply_key(x.dtype(), wg, affine, silu),
        &apply,
        &tensors,
        grid_rows(gpu, apply.row_len.div_ceil(GN_APPLY_BLOCK), planes),
    )?;
    Ok(y)
}

/// torch.nn.LayerNorm over the last dimension of x `[..., D]`, with
/// `gamma` / `beta` `[D]` (either may be absent: scale 1, shift 0). The output
/// has x's shape and dtype.
pub fn layer_norm(gpu: &Gpu, x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    layer_norm_with_workgroup(gpu, x, gamma, beta, eps, workgroup_size(gpu))
}

/// [`layer_norm`] with an explicit workgroup size, one of [`WORKGROUP_SIZES`].
pub fn layer_norm_with_workgroup(
    gpu: &Gpu,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    wg: u32,
) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    check_workgroup(OP, wg)?;
    expect_float(OP, x)?;
    let d = *x.shape().last().ok_or_else(|| Error::shape(OP, "expected x of shape [..., D], got a scalar"))?;
    let affine = Affine::of(OP, gamma, beta, d)?;
    let y = gpu.empty(x.shape(), x.dtype())?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let rows = u32_of(OP, "rows", x.numel() / d)?;
    let p = Params { n_rows: rows, row_len: d as u32, eps, ..Default::default() };
    let mut tensors = vec![x, &y];
    tensors.extend(gamma);
    tensors.extend(beta);
    gpu.dispatch(
        "norm.layer_norm",
        &layer_norm_key(x.dtype(), wg, affine, gpu.features().subgroups),
        &p,
        &tensors,
        grid_1d(rows, gpu.limits().max_compute_workgroups_per_dimension),
    )?;
    Ok(y)
}
