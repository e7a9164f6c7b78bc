//! The GPU runtime. Knows nothing of diffusion or NeRFs: devices, tensors,
//! kernels and the recording of dispatches.
//!
//! Work is recorded lazily: every op appends its dispatch to the device's open
//! command encoder ([`recorder`]); nothing is submitted until a readback or an
//! explicit [`Gpu::flush`], so a whole step becomes one submit.
pub mod autotune;
pub mod device;
pub mod kernel;
pub mod memory;
pub mod params;
pub mod pool;
pub mod profile;
pub mod recorder;
pub mod tensor;

pub use device::{Caps, Features, Gpu, GpuOptions};
pub use kernel::{KernelKey, ShaderSource};
pub use memory::MemoryPhase;
pub use params::{KernelParams, NoParams};
pub use profile::ProfileEntry;
pub use tensor::{DType, Tensor};

/// Workgroup counts for `n` workgroups of a 1-D problem, folded into y when
/// `n` exceeds the per-dimension limit. Kernels recover the linear index with
/// [`LINEAR_WORKGROUP_WGSL`]-style arithmetic: `wid.x + wid.y * nwg.x`.
pub fn grid_1d(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}
