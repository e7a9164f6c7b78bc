//! Layout ops: concat, narrow (slice) and permute (`shaders/concat.wgsl`).
//!
//! All three are one strided-copy kernel: the op describes which elements go
//! where as an iteration shape with a source and a destination stride per
//! dimension ([`CopyPlan`]); dimensions contiguous in both tensors are merged
//! before the dispatch. Results are always fresh tensors (copies), never views.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, float_dtypes, grid_3d, grid_for, merge_dims};

/// Highest rank the layout ops accept.
pub const MAX_RANK: usize = 8;

crate::kernel_params! {
    struct Params {
        n: u32,
        first_dim: u32,
        src_offset: u32,
        dst_offset: u32,
        shape: [u32; MAX_RANK],
        src_strides: [u32; MAX_RANK],
        dst_strides: [u32; MAX_RANK],
    }
}

/// The copy kernels: `copy_strided` (any rank, coordinates by division) and
/// `copy_grid` (rank ≤ 3, coordinates from the dispatch grid).
const ENTRIES: [&str; 2] = ["copy_strided", "copy_grid"];

fn key(entry: &'static str, dtype: DType) -> KernelKey {
    KernelKey::new("concat", entry).params::<Params>().def("T", dtype.wgsl()).def("WG", WG_1D)
}

/// Every variant this family dispatches (for validation): each kernel per storage type.
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let mut dtypes = float_dtypes(caps);
    dtypes.push(DType::U32);
    dtypes.into_iter().flat_map(|t| ENTRIES.map(|e| key(e, t))).collect()
}

/// Row-major element strides of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// One strided copy: for every coordinate `c` of `shape`,
/// `dst[dst_offset + c·dst_strides] = src[src_offset + c·src_strides]`.
#[derive(Clone, Debug, PartialEq)]
struct CopyPlan {
    shape: Vec<usize>,
    src_strides: Vec<usize>,
    dst_strides: Vec<usize>,
    src_offset: usize,
    dst_offset: usize,
}

impl CopyPlan {
    /// The same copy with size-1 dimensions dropped and neighbours that are
    /// contiguous in both tensors merged (fewer divisions per element).
    fn simplified(&self) -> CopyPlan {
        let dims = (0..self.shape.len()).map(|d| (self.shape[d], [self.src_strides[d], self.dst_strides[d]]));
        let merged = merge_dims(dims);
        CopyPlan {
            shape: merged.iter().map(|d| d.0).collect(),
            src_strides: merged.iter().map(|d| d.1[0]).collect(),
            dst_strides: merged.iter().map(|d| d.1[1]).collect(),
            ..self.clone()
        }
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn params(&self) -> Params {
        let rank = self.shape.len();
        let mut p = Params {
            n: self.numel() as u32,
            first_dim: (MAX_RANK - rank) as u32,
            src_offset: self.src_offset as u32,
            dst_offset: self.dst_offset as u32,
            shape: [1; MAX_RANK],
            src_strides: [0; MAX_RANK],
            dst_strides: [0; MAX_RANK],
        };
        for d in 0..rank {
            let slot = MAX_RANK - rank + d;
            p.shape[slot] = self.shape[d] as u32;
            p.src_strides[slot] = self.src_strides[d] as u32;
            p.dst_strides[slot] = self.dst_strides[d] as u32;
        }
        p
    }
}

/// Records `plan` copying from `src` into `dst` (same dtype).
fn record_copy(gpu: &Gpu, label: &str, src: &Tensor, dst: &Tensor, plan: &CopyPlan) -> Result<()> {
    let plan = plan.simplified();
    let n = plan.numel();
    if n == 0 {
        return Ok(());
    }
    match grid_3d(gpu, &plan.shape, WG_1D) {
        Some(grid) => gpu.dispatch(label, &key("copy_grid", src.dtype()), &plan.params(), &[src, dst], grid),
        None => gpu.dispatch(label, &key("copy_strided", src.dtype()), &plan.params(), &[src, dst], grid_for(gpu, n, WG_1D)),
    }
}

fn check_rank(op: &'static str, x: &Tensor) -> Result<()> {
    if x.rank() == 0 || x.rank() > MAX_RANK {
        return Err(Error::shape(op, format!("rank {} of {x:?} is outside the supported 1..={MAX_RANK}", x.rank())));
    }
    Ok(())
}

fn check_axis(op: &'static str, x: &Tensor, axis: usize) -> Result<()> {
    if axis >= x.rank() {
        return Err(Error::shape(op, format!("axis {axis} is out of range for {x:?}")));
    }
    Ok(())
}

/// Joins tensors along `axis` (torch.cat): all inputs have the same dtype,
/// rank and sizes except along `axis`. One copy dispatch per non-empty input.
pub fn concat(gpu: &Gpu, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = *xs.first().ok_or_else(|| Error::shape("concat", "no tensors to concatenate"))?;
    check_rank("concat", first)?;
    check_axis("concat", first, axis)?;
    let mut out_shape = first.shape().to_vec();
    out_shape[axis] = 0;
    for x in xs {
        if x.dtype() != first.dtype() {
            return Err(Error::shape("concat", format!("dtypes differ: {first:?} and {x:?}")));
        }
        let same_other_dims = x.rank() == first.rank()
            && (0..first.rank()).all(|d| d == axis || x.shape()[d] == first.shape()[d]);
        if !same_other_dims {
            return Err(Error::shape(
                "concat",
                format!("{x:?} does not match {first:?} in every dimension but axis {axis}"),
            ));
        }
        out_shape[axis] += x.shape()[axis];
    }
    let y = gpu.empty(&out_shape, first.dtype())?;
    let out_strides = contiguous_strides(&out_shape);
    let mut start = 0;
    for x in xs {
        let plan = CopyPlan {
            shape: x.shape().to_vec(),
            src_strides: contiguous_strides(x.shape()),
            dst_strides: out_strides.clone(),
            src_offset: 0,
            dst_offset: start * out_strides[axis],
        };
        record_copy(gpu, "concat.concat", x, &y, &plan)?;
        start += x.shape()[axis];
    }
    Ok(y)
}

/// Copies `len` entries of `x` along `axis` starting at `start`
/// (torch.narrow, but a copy rather than a view).
pub fn narrow(gpu: &Gpu, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    check_rank("narrow", x)?;
    check_axis("narrow", x, axis)?;
    let size = x.shape()[axis];
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::shape(
            "narrow",
            format!("range {start}..{} is outside 0..{size} of axis {axis} of {x:?}", start.saturating_add(len)),
        ));
    }
    let mut out_shape = x.shape().to_vec();
    out_shape[axis] = len;
    let y = gpu.empty(&out_shape, x.dtype())?;
    let src_strides = contiguous_strides(x.shape());
    let plan = CopyPlan {
        dst_strides: contiguous_strides(&out_shape),
        shape: out_shape,
        src_offset: start * src_strides[axis],
        src_strides,
        dst_offset: 0,
    };
    record_copy(gpu, "concat.narrow", x, &y, &plan)?;
    Ok(y)
}

/// Splits `x` into `parts` equal pieces along `axis` (torch.chunk with an
/// exact division), e.g. the [cond, uncond] halves of a batch.
pub fn split_equal(gpu: &Gpu, x: &Tensor, axis: usize, parts: usize) -> Result<Vec<Tensor>> {
    check_axis("split_equal", x, axis)?;
    let size = x.shape()[axis];
    if parts == 0 || !size.is_multiple_of(parts) {
        return Err(Error::shape("split_equal", format!("axis {axis} of {x:?} does not split into {parts} equal parts")));
    }
    let len = size / parts;
    (0..parts).map(|i| narrow(gpu, x, axis, i * len, len)).collect()
}

/// Reorders dimensions (torch.permute, materialised): output dimension `i`
/// is input dimension `perm[i]`. E.g. NCHW -> NHWC is `[0, 2, 3, 1]`.
pub fn permute(gpu: &Gpu, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    check_rank("permute", x)?;
    let rank = x.rank();
    let mut seen = vec![false; rank];
    let is_permutation = perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
    if !is_permutation {
        return Err(Error::shape("permute", format!("{perm:?} is not a permutation of the {rank} dimensions of {x:?}")));
    }
    let in_strides = contiguous_strides(x.shape());
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let y = gpu.empty(&out_shape, x.dtype())?;
    let plan = CopyPlan {
        src_strides: perm.iter().map(|&p| in_strides[p]).collect(),
        dst_strides: contiguous_strides(&out_shape),
        shape: out_shape,
        src_offset: 0,
        dst_offset: 0,
    };
    record_copy(gpu, "concat.permute", x, &y, &plan)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_merge_contiguous_dimensions() {
        // A contiguous copy of [2, 3, 4] is one run of 24.
        let s = contiguous_strides(&[2, 3, 4]);
        let plan = CopyPlan { shape: vec![2, 3, 4], src_strides: s.clone(), dst_strides: s, src_offset: 0, dst_offset: 0 };
        assert_eq!(plan.simplified().shape, vec![24]);
        // Concat of [2, 3, 4] into [2, 5, 4] along axis 1: runs of 12 at stride 20.
        let plan = CopyPlan {
            shape: vec![2, 3, 4],
            src_strides: contiguous_strides(&[2, 3, 4]),
            dst_strides: contiguous_strides(&[2, 5, 4]),
            src_offset: 0,
            dst_offset: 8,
        };
        let s = plan.simplified();
        assert_eq!((s.shape, s.src_strides, s.dst_strides), (vec![2, 12], vec![12, 1], vec![20, 1]));
        // Size-1 dimensions disappear; an all-ones shape keeps no dimension.
        let plan = CopyPlan { shape: vec![1, 1], src_strides: vec![1, 1], dst_strides: vec![1, 1], src_offset: 3, dst_offset: 0 };
        assert_eq!(plan.simplified().numel(), 1);
        assert_eq!(plan.simplified().params().first_dim, MAX_RANK as u32);
    }
}
