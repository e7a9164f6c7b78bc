//! Bench cases of the matmul family (filled in with the kernels).
use crate::bench::Case;
use crate::error::Result;
use crate::gpu::Gpu;

pub fn cases(_gpu: &Gpu, _quick: bool) -> Result<Vec<Case<'_>>> {
    Ok(Vec::new())
}
