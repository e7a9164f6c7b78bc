//! Diffusion: noise schedules and samplers, the prompt processor, the
//! guidance both distillation loops share, timestep annealing and FSD's
//! world-map noise, and the size a sampler draws at.
pub mod guidance;
pub mod noise;
pub mod prompts;
pub mod sampler;
pub mod schedule;
pub mod size;
pub mod timesteps;
pub mod vsd;
