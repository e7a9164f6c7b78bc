//! Diffusion: noise schedules and samplers, the distillation gradients,
//! timestep annealing and FSD's world-map noise.
pub mod guidance;
pub mod noise;
pub mod sampler;
pub mod schedule;
pub mod timesteps;
