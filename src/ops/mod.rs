//! Host side of the kernel families: one module per `shaders/<family>.wgsl`.
//!
//! Every op takes tensors, checks shapes and dtypes (typed errors, never a
//! panic), allocates its output from the pool and records its dispatch; it
//! never submits. Each module also lists its kernel variants, so one test can
//! validate every variant with naga and check every variant against the CPU
//! reference.
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};

// The diffusion models' kernels.
pub mod attention;
pub mod concat;
pub mod conv2d;
pub mod diffusion;
pub mod elementwise;
pub mod embedding;
pub mod fsd;
pub mod gemm;
pub mod matmul;
pub mod norm;
pub mod reference;
pub mod pool;
pub mod resample;
pub mod softmax;
// Input gradients (the VAE encoder's backward pass).
pub mod backward_misc;
pub mod conv2d_backward;
pub mod norm_backward;
// The 3D side's kernels.
pub mod adam;
pub mod hashgrid;
pub mod mlp;
pub mod render;

/// Declares a kernel family's variants: the enum (each variant with the name
/// users give `--variant FAMILY=NAME`), `ALL`, `name`, `parse` (an unknown
/// name is an error listing the known ones) and `Display`. Whether a device
/// can run a variant, and which is the default, each family says itself.
macro_rules! kernel_variants {
    ($(#[$meta:meta])* pub enum $name:ident ($family:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The name `--variant` and the benches use.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a [`name`](Self::name).
            pub fn parse(s: &str) -> $crate::error::Result<$name> {
                Self::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                    $crate::error::Error::Invalid(format!(
                        "unknown {} variant {s:?}: expected one of {}",
                        $family,
                        names.join(", ")
                    ))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
pub(crate) use kernel_variants;

/// Every kernel variant the ops can dispatch on a device with `caps`, for
/// validation. Each family adds its own.
pub fn all_variants(caps: Caps) -> Vec<KernelKey> {
    let mut v = Vec::new();
    v.extend(elementwise::variants(caps));
    v.extend(matmul::variants(caps));
    v.extend(gemm::variants(caps));
    v.extend(conv2d::variants(caps));
    v.extend(norm::variants(caps));
    v.extend(softmax::variants(caps));
    v.extend(attention::variants(caps));
    v.extend(resample::variants(caps));
    v.extend(pool::variants(caps));
    v.extend(embedding::variants(caps));
    v.extend(concat::variants(caps));
    v.extend(diffusion::variants(caps));
    v.extend(fsd::variants(caps));
    v.extend(hashgrid::variants(caps));
    v.extend(mlp::variants(caps));
    v.extend(render::variants(caps));
    v.extend(adam::variants(caps));
    v.extend(conv2d_backward::variants(caps));
    v.extend(norm_backward::variants(caps));
    v.extend(backward_misc::variants(caps));
    v
}

/// Storage dtypes the variants are generated for on `caps`.
pub fn float_dtypes(caps: Caps) -> Vec<DType> {
    if caps.features.f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

/// Workgroup size of the simple one-thread-per-element kernels.
pub const WG_1D: u32 = 256;

/// Workgroups for one thread per element over `n` elements.
pub fn grid_for(gpu: &Gpu, n: usize, wg: u32) -> [u32; 3] {
    crate::gpu::grid_1d((n as u32).div_ceil(wg), gpu.limits().max_compute_workgroups_per_dimension)
}

/// Workgroups for a 2-D launch: x counts blocks within a row (or plane),
/// the `rows` fold into y and z.
pub(crate) fn grid_rows(gpu: &Gpu, x: u32, rows: u32) -> [u32; 3] {
    let [y, z, _] = crate::gpu::grid_1d(rows, gpu.limits().max_compute_workgroups_per_dimension);
    [x, y, z]
}

/// The dimensions of an element-by-element walk (outermost first), each with
/// its stride in the `K` tensors the walk reads or writes: size-1 dimensions
/// dropped and neighbours contiguous in every tensor merged, so that a
/// kernel finds fewer coordinates per element (the layout copies, the
/// broadcasting binaries).
pub(crate) fn merge_dims<const K: usize>(dims: impl IntoIterator<Item = (usize, [usize; K])>) -> Vec<(usize, [usize; K])> {
    let mut out: Vec<(usize, [usize; K])> = Vec::new();
    for (size, strides) in dims {
        if size == 1 {
            continue;
        }
        match out.last_mut() {
            Some(last) if (0..K).all(|k| last.1[k] == strides[k] * size) => *last = (last.0 * size, strides),
            _ => out.push((size, strides)),
        }
    }
    out
}

/// Workgroups of a grid-indexed kernel over a walk of rank ≤ 3 (`shape`
/// outermost first): x the innermost dimension in runs of `wg`, y and z the
/// other two, so that each thread reads its coordinates from its ids (no
/// division, which CPUs cannot do in SIMD). `None` past rank 3 or past the
/// device's workgroups per dimension.
pub(crate) fn grid_3d(gpu: &Gpu, shape: &[usize], wg: u32) -> Option<[u32; 3]> {
    if shape.len() > 3 {
        return None;
    }
    let dim = |back: usize| if back < shape.len() { shape[shape.len() - 1 - back] } else { 1 };
    let g = [dim(0).div_ceil(wg as usize), dim(1), dim(2)];
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    g.iter().all(|&v| v <= max).then(|| g.map(|v| v as u32))
}

/// `n` as a kernel's 32-bit index, or an error naming the op and what is too large.
pub(crate) fn u32_of(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::shape(op, format!("{what} = {n} is over the 32-bit index range")))
}

pub(crate) fn expect_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() == DType::U32 {
        return Err(Error::shape(op, format!("expected a float tensor, got {t:?}")));
    }
    Ok(())
}

pub(crate) fn expect_rank(op: &'static str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::shape(op, format!("expected a rank-{rank} tensor, got {t:?}")));
    }
    Ok(())
}
