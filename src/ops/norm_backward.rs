//! The input gradient of [`group_norm`](crate::ops::norm::group_norm) with
//! frozen affine weights, optionally through the fused SiLU
//! (`shaders/norm_backward.wgsl`). It takes the forward's input and
//! recomputes the statistics, so the forward needs to keep nothing else.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor, grid_1d};
use crate::ops::norm::{Affine, WORKGROUP_SIZES, workgroup_size};
use crate::ops::{expect_float, float_dtypes, grid_rows, u32_of};

/// The op errors name.
const OP: &str = "group_norm_input_grad";

/// Elements per block (one workgroup each) of a (batch, channel) plane, so
/// that a VAE plane of 262 144 elements spreads over 128 workgroups while the
/// per-plane loads (statistics, γ, β) are amortised.
const BLOCK_LEN: u32 = 2048;
/// Workgroup size of the finalize kernels (one invocation per group).
const WG_FINALIZE: u32 = 64;

crate::kernel_params! {
    struct Params {
        n_groups: u32,
        n_planes: u32,
        plane_len: u32,
        block_len: u32,
        n_blocks: u32,
        channels: u32,
        group_channels: u32,
        eps: f32,
    }
}

/// The forward's affine parameters as the kernels read them: norm's, plus the
/// binding of γ, which these kernels read before β.
fn affine_key(affine: Affine, key: KernelKey, first_slot: u32) -> KernelKey {
    affine.apply(key, first_slot).def("GAMMA_SLOT", first_slot)
}

/// Storage types of x and of the gradients (dz, dx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Storage {
    x: DType,
    grad: DType,
}

fn key(entry: &'static str, s: Storage, wg: u32, subgroups: bool) -> KernelKey {
    KernelKey::new("norm_backward", entry).params::<Params>()
        .def("T", s.x.wgsl())
        .def("TG", s.grad.wgsl())
        .def("WG", wg)
        .flag("SUBGROUP_OPS", subgroups)
        .flag("GNB_STATS", entry == "gnb_stats")
        .flag("GNB_FINALIZE_STATS", entry == "gnb_finalize_stats")
        .flag("GNB_GRAD_SUMS", entry == "gnb_grad_sums")
        .flag("GNB_FINALIZE_GRAD", entry == "gnb_finalize_grad")
        .flag("GNB_APPLY", entry == "gnb_apply")
        .flag("BLOCK_REDUCE", entry == "gnb_stats" || entry == "gnb_grad_sums")
        .flag("ELEMENT_GRAD", entry == "gnb_grad_sums" || entry == "gnb_apply")
}

fn no_affine(k: KernelKey) -> KernelKey {
    affine_key(Affine { gamma: false, beta: false, dtype: DType::F32 }, k, 0).flag("SILU", false)
}
fn stats_key(s: Storage, wg: u32, subgroups: bool) -> KernelKey {
    no_affine(key("gnb_stats", s, wg, subgroups))
}
fn finalize_stats_key(s: Storage) -> KernelKey {
    no_affine(key("gnb_finalize_stats", s, WG_FINALIZE, false))
}
fn grad_sums_key(s: Storage, wg: u32, subgroups: bool, affine: Affine, silu: bool) -> KernelKey {
    affine_key(affine, key("gnb_grad_sums", s, wg, subgroups), 5).flag("SILU", silu)
}
fn finalize_grad_key(s: Storage) -> KernelKey {
    no_affine(key("gnb_finalize_grad", s, WG_FINALIZE, false))
}
fn apply_key(s: Storage, wg: u32, affine: Affine, silu: bool) -> KernelKey {
    affine_key(affine, key("gnb_apply", s, wg, false), 6).flag("SILU", silu)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let subgroups: &[bool] = if caps.features.subgroups { &[false, true] } else { &[false] };
    let mut v = Vec::new();
    for x in float_dtypes(caps) {
        for grad in float_dtypes(caps) {
            let s = Storage { x, grad };
            v.push(finalize_stats_key(s));
            v.push(finalize_grad_key(s));
            for wg in WORKGROUP_SIZES {
                for &sg in subgroups {
                    v.push(stats_key(s, wg, sg));
                }
                for affine in Affine::all(caps) {
                    for silu in [false, true] {
                        v.push(apply_key(s, wg, affine, silu));
                        for &sg in subgroups {
                            v.push(grad_sums_key(s, wg, sg, affine, silu));
                        }
                    }
                }
            }
        }
    }
    v
}

/// The gradient with respect to x of
/// `group_norm(x, groups, gamma, beta, eps, silu)` (see
/// [`crate::ops::norm::group_norm`]) given the gradient `dz` of its output:
/// x and dz are `[B, C, ...spatial]` of the same shape, `gamma` / `beta`
/// `[C]` are the forward's (frozen; either may be absent, as in the forward;
/// β matters only through the SiLU). The result has dz's shape and dtype; x
/// and dz may be stored differently (an f16 activation with an f32 gradient).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_input_grad(
    gpu: &Gpu,
    x: &Tensor,
    dz: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    group_norm_input_grad_with_workgroup(gpu, x, dz, groups, gamma, beta, eps, silu, workgroup_size(gpu))
}

/// [`group_norm_input_grad`] with an explicit workgroup size for the block
/// kernels, one of [`WORKGROUP_SIZES`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_input_grad_with_workgroup(
    gpu: &Gpu,
    x: &Tensor,
    dz: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
    wg: u32,
) -> Result<Tensor> {
    if !WORKGROUP_SIZES.contains(&wg) {
        return Err(Error::Invalid(format!("{OP}: workgroup size {wg} is not one of {WORKGROUP_SIZES:?}")));
    }
    expect_float(OP, x)?;
    expect_float(OP, dz)?;
    if x.rank() < 2 {
        return Err(Error::shape(OP, format!("expected x of shape [B, C, ...], got {:?}", x.shape())));
    }
    if dz.shape() != x.shape() {
        return Err(Error::shape(OP, format!("dz {:?} must have the shape of the forward's input x {:?}", dz.shape(), x.shape())));
    }
    let (batch, channels) = (x.dim(0), x.dim(1));
    if groups == 0 || channels % groups != 0 {
        return Err(Error::shape(OP, format!("{groups} groups do not divide the {channels} channels of {:?}", x.shape())));
    }
    let affine = Affine::of(OP, gamma, beta, channels)?;
    let dx = gpu.empty(dz.shape(), dz.dtype())?;
    if x.numel() == 0 {
        return Ok(dx);
    }
    let storage = Storage { x: x.dtype(), grad: dz.dtype() };
    let subgroups = gpu.features().subgroups;
    let plane_len = u32_of(OP, "spatial size", x.numel() / (batch * channels))?;
    let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
    let block_len = BLOCK_LEN.max(plane_len.div_ceil(max_dim));
    let n_blocks = plane_len.div_ceil(block_len);
    let n_planes = u32_of(OP, "batch·channels", batch * channels)?;
    let n_groups = u32_of(OP, "batch·groups", batch * groups)?;
    u32_of(OP, "elements of x", x.numel())?;
    let p = Params {
        n_groups,
        n_planes,
        plane_len,
        block_len,
        n_blocks,
        channels: channels as u32,
        group_channels: (channels / groups) as u32,
        eps,
    };
    let params = &p;
    let blocks = grid_rows(gpu, n_blocks, n_planes);
    let per_group = grid_1d(n_groups.div_ceil(WG_FINALIZE), max_dim);

    let partials = gpu.empty(&[n_planes as usize, n_blocks as usize, 2], DType::F32)?;
    gpu.dispatch("norm_backward.stats", &stats_key(storage, wg, subgroups), params, &[x, &partials], blocks)?;
    let stats = gpu.empty(&[n_groups as usize, 3], DType::F32)?;
    gpu.dispatch("norm_backward.finalize_stats", &finalize_stats_key(storage), params, &[x, &partials, &stats], per_group)?;

    let grad_partials = gpu.empty(&[n_planes as usize, n_blocks as usize, 2], DType::F32)?;
    let mut tensors = vec![x, dz, &stats, &grad_partials];
    tensors.extend(gamma);
    tensors.extend(beta);
    gpu.dispatch("norm_backward.grad_sums", &grad_sums_key(storage, wg, subgroups, affine, silu), params, &tensors, blocks)?;
    let grad_stats = gpu.empty(&[n_groups as usize, 2], DType::F32)?;
    gpu.dispatch("norm_backward.finalize_grad", &finalize_grad_key(storage), params, &[&grad_partials, &grad_stats], per_group)?;

    let mut tensors = vec![x, dz, &stats, &grad_stats, &dx];
    tensors.extend(gamma);
    tensors.extend(beta);
    gpu.dispatch("norm_backward.apply", &apply_key(storage, wg, affine, silu), params, &tensors, blocks)?;
    Ok(dx)
}
