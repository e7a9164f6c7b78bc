//! Diffusion: noise schedules and samplers, the distillation gradients,
//! timestep annealing and FSD's world-map noise, and the size a sampler draws at.
pub mod guidance;
pub mod noise;
pub mod sampler;
pub mod schedule;
pub mod size;
pub mod timesteps;
