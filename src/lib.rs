//! fsd3d: text-to-3D with Flow Score Distillation on raw wgpu.
//!
//! The crate is a map of rooms (see `docs/architecture.md`):
//! - [`gpu`]: the runtime (device, tensors, pool, kernel cache, recorder, profiler);
//!   it knows nothing of diffusion or NeRFs.
//! - [`ops`]: the host side of each kernel family in `shaders/`, one file each.
//! - [`models`]: diffusers-compatible networks and the `Prior` trait the loops see.
//! - [`diffusion`]: schedules, the sampler, the prompt processor and the
//!   guidance (the distillation gradient) both loops share.
//! - [`image2d`] (`fsd3d image`) and [`generate`] (`fsd3d generate`, and the
//!   job layer `eval` shares): the 2D and the 3D loop.
//! - [`scene`]: the NeRF side; [`export`]: pictures and meshes; [`eval`]: the
//!   evaluation job and its metrics.
//! - [`bench`]: kernel measurements shared by `cargo bench` and `fsd3d bench`.
pub mod bench;
pub mod diffusion;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod gpu;
pub mod image2d;
pub mod io;
pub mod models;
pub mod ops;
pub mod scene;

pub use error::{Error, Result};
