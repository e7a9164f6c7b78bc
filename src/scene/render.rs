//! Rendering settings, the material (shading choice per step) and the
//! occupancy grid that lets rays skip empty space.
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::render::{self, Shading};
use crate::scene::camera::{gpu_seed, purpose, rng_for};
use crate::scene::field::Field;

/// Ray marching and compositing. Defaults: threestudio's nerf-volume-renderer
/// with nerfacc's occupancy grid.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RenderConfig {
    /// Samples per ray through the whole box: the step is √3·2·radius / this.
    pub samples_per_ray: u32,
    /// Capacity of the packed sample buffer of one render (samples past it are dropped).
    pub max_samples_total: usize,
    /// Occupancy grid cells per axis.
    pub occupancy_resolution: u32,
    /// A cell is occupied while max(σ·dt, decayed history) > min(mean, this).
    pub occupancy_threshold: f32,
    pub occupancy_decay: f32,
    /// Update the occupancy grid every this many steps.
    pub occupancy_interval: u64,
    /// Jitter samples along each ray during training.
    pub stratified: bool,
    /// Stop a ray once its transmittance is below this.
    pub early_stop: f32,
    /// Evaluate the density alone at every marched sample first and give
    /// the full field (albedo, normals) and its backward only the samples
    /// in front of `early_stop` (threestudio's nerfacc `sigma_fn`): the same
    /// images and gradients, with the occluded samples skipped.
    pub prune_occluded: bool,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            samples_per_ray: 512,
            max_samples_total: 1 << 21,
            occupancy_resolution: 32,
            occupancy_threshold: 0.01,
            occupancy_decay: 0.95,
            occupancy_interval: 16,
            stratified: true,
            early_stop: 1e-4,
            prune_occluded: true,
        }
    }
}

impl RenderConfig {
    /// The distance between samples in a box of half-size `radius`.
    pub fn step_size(&self, radius: f32) -> f32 {
        3f32.sqrt() * 2.0 * radius / self.samples_per_ray as f32
    }
    pub fn validate(&self) -> Result<()> {
        if self.samples_per_ray == 0 || self.max_samples_total == 0 || self.occupancy_resolution == 0 || self.occupancy_interval == 0 {
            return Err(Error::Invalid(format!("render config: counts must be positive: {self:?}")));
        }
        Ok(())
    }
}

/// Shading: threestudio's diffuse-with-point-light material.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MaterialConfig {
    pub ambient: f32,
    pub diffuse: f32,
    /// Shade with the albedo alone (ambient only) before this step.
    pub ambient_only_steps: u64,
    /// After that, textureless (white albedo) with this probability, else diffuse.
    pub textureless_probability: f32,
}

impl Default for MaterialConfig {
    fn default() -> Self {
        MaterialConfig { ambient: 0.1, diffuse: 0.9, ambient_only_steps: 2000, textureless_probability: 0.5 }
    }
}

impl MaterialConfig {
    /// The shading of training step `step` (one choice per batch, reproducible from the seed).
    pub fn shading_for(&self, seed: u64, step: u64) -> Shading {
        if step < self.ambient_only_steps {
            return Shading::Albedo;
        }
        if rng_for(seed, step, purpose::SHADING).random::<f32>() < self.textureless_probability {
            Shading::Textureless
        } else {
            Shading::Diffuse
        }
    }
}

/// One bit per cell of a res³ grid over the box, with the decayed occupancy
/// history behind it. Starts all occupied.
pub struct OccupancyGrid {
    pub resolution: u32,
    /// f32 `[res³]`.
    pub occupancy: Tensor,
    /// u32 `[res³/32]`.
    pub bits: Tensor,
}

impl OccupancyGrid {
    pub fn new(gpu: &Gpu, resolution: u32) -> Result<OccupancyGrid> {
        let cells = (resolution as usize).pow(3);
        let words = render::occupancy_words(resolution);
        Ok(OccupancyGrid {
            resolution,
            occupancy: gpu.zeros(&[cells], DType::F32)?,
            bits: gpu.upload_u32(&vec![u32::MAX; words], &[words])?,
        })
    }

    /// Re-evaluates the density at one jittered point per cell and updates the bits.
    pub fn update(&self, gpu: &Gpu, field: &Field, cfg: &RenderConfig, seed: u64, step: u64) -> Result<()> {
        let radius = field.spec.radius;
        let points = render::occupancy_points(gpu, self.resolution, radius, gpu_seed(seed, step, purpose::OCCUPANCY))?;
        let density = field.density(gpu, &points)?;
        render::occupancy_update(
            gpu,
            &density,
            &self.occupancy,
            &self.bits,
            self.resolution,
            cfg.occupancy_decay,
            cfg.step_size(radius),
            cfg.occupancy_threshold,
        )
    }

    /// Fraction of occupied cells (a readback: for logs and tests).
    pub fn occupied_fraction(&self, gpu: &Gpu) -> Result<f32> {
        let bits = gpu.download_u32(&self.bits)?;
        let cells = (self.resolution as usize).pow(3);
        let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
        Ok(set as f32 / cells as f32)
    }
}
