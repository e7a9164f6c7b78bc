//! Softmax along the last dimension (`shaders/softmax.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor, grid_1d};
use crate::ops::norm::{WORKGROUP_SIZES, workgroup_size};
use crate::ops::{expect_float, float_dtypes};

crate::kernel_params! {
    struct Params {
        rows: u32,
        len: u32,
        scale: f32,
        _pad: u32,
    }
}

fn key(t: DType, wg: u32, subgroups: bool) -> KernelKey {
    KernelKey::new("softmax", "softmax").params::<Params>().def("T", t.wgsl()).def("WG", wg).flag("SUBGROUP_OPS", subgroups)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let subgroups: &[bool] = if caps.features.subgroups { &[false, true] } else { &[false] };
    let mut v = Vec::new();
    for t in float_dtypes(caps) {
        for wg in WORKGROUP_SIZES {
            for &sg in subgroups {
                v.push(key(t, wg, sg));
            }
        }
    }
    v
}

/// softmax(scale·x) along the last dimension of x `[..., D]`; same shape and
/// dtype. One workgroup per row, of the norms' [`workgroup_size`].
pub fn softmax(gpu: &Gpu, x: &Tensor, scale: f32) -> Result<Tensor> {
    softmax_with_workgroup(gpu, x, scale, workgroup_size(gpu))
}

/// [`softmax`] with an explicit workgroup size, one of [`WORKGROUP_SIZES`].
pub fn softmax_with_workgroup(gpu: &Gpu, x: &Tensor, scale: f32, wg: u32) -> Result<Tensor> {
    const OP: &str = "softmax";
    if !WORKGROUP_SIZES.contains(&wg) {
        return Err(Error::Invalid(format!("{OP}: workgroup size {wg} is not one of {WORKGROUP_SIZES:?}")));
    }
    expect_float(OP, x)?;
    let d = *x.shape().last().ok_or_else(|| Error::shape(OP, "expected x of shape [..., D], got a scalar"))?;
    let y = gpu.empty(x.shape(), x.dtype())?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let rows = u32::try_from(x.numel() / d)
        .map_err(|_| Error::shape(OP, format!("{} rows are over the 32-bit index range", x.numel() / d)))?;
    let p = Params { rows, len: d as u32, scale, _pad: 0 };
    gpu.dispatch(
        "softmax",
        &key(x.dtype(), wg, gpu.features().subgroups),
        &p,
        &[x, &y],
        grid_1d(rows, gpu.limits().max_compute_workgroups_per_dimension),
    )?;
    Ok(y)
}
