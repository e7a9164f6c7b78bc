//! Diffusion: noise schedules and samplers (later: guidance, timestep
//! annealing and the world-map noise of FSD).
pub mod noise;
pub mod sampler;
pub mod schedule;
