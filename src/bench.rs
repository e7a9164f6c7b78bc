//! Kernel measurements shared by `cargo bench` and `fsd3d bench`.
use clap::Args;

use crate::error::Result;
use crate::gpu::Gpu;

/// Options of `fsd3d bench`.
#[derive(Args, Clone, Debug, Default)]
pub struct BenchArgs {
    /// Kernel family to measure (all when omitted).
    pub family: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_gpu: &Gpu, _args: &BenchArgs) -> Result<()> {
    Ok(())
}
