//! The implicit volume: a hash grid with a density head and an albedo head
//! (threestudio's `implicit-volume` with the DreamFusion-SD defaults).
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::hashgrid::{self, FieldSpec, GridLayout, NormalKind};
use crate::scene::camera::{purpose, rng_for};

/// Geometry and its encoding. Defaults: FSD_SPEC §5 (threestudio).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FieldConfig {
    /// The scene box is [-radius, radius]³.
    pub radius: f32,
    pub levels: u32,
    pub features_per_level: u32,
    pub log2_table_size: u32,
    pub base_resolution: u32,
    pub per_level_scale: f32,
    /// Hidden units of the density and albedo MLPs (one hidden layer, no biases).
    pub hidden: u32,
    /// Density bias `blob_scale·(1 − |x|/blob_std)` (blob_magic3d).
    pub blob_scale: f32,
    pub blob_std: f32,
    /// How normals are computed: "analytic" (the density gradient) or
    /// "finite-difference" (central differences at ±normal_eps).
    pub normal_type: NormalKind,
    /// Finite-difference offset of the normals, world units.
    pub normal_eps: f32,
    /// Table entries start uniform in ±grid_init (tcnn's 1e-4).
    pub grid_init: f32,
}

impl Default for FieldConfig {
    fn default() -> Self {
        FieldConfig {
            radius: 2.0,
            levels: 16,
            features_per_level: 2,
            log2_table_size: 19,
            base_resolution: 16,
            per_level_scale: 1.447269,
            hidden: 64,
            blob_scale: 10.0,
            blob_std: 0.5,
            normal_type: NormalKind::Analytic,
            normal_eps: 0.01,
            grid_init: 1e-4,
        }
    }
}

impl FieldConfig {
    /// The kernels' view of the field (checks the values).
    pub fn spec(&self) -> Result<FieldSpec> {
        let grid = GridLayout::new(self.levels, self.features_per_level, self.log2_table_size, self.base_resolution, self.per_level_scale)?;
        let spec = FieldSpec {
            grid,
            hidden: self.hidden,
            radius: self.radius,
            normals: self.normal_type,
            normal_eps: self.normal_eps,
            blob_scale: self.blob_scale,
            blob_std: self.blob_std,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// The field's parameters on the device.
pub struct Field {
    pub spec: FieldSpec,
    /// The hash-grid table, f32 `[entries · features]`.
    pub table: Tensor,
    /// The packed MLP weights, f32 (see [`FieldSpec::mlp_layout`]).
    pub mlp: Tensor,
}

impl Field {
    /// A freshly initialised field: the grid uniform in ±grid_init, each
    /// weight matrix uniform in ±1/√fan_in (torch.nn.Linear's default, as
    /// threestudio's VanillaMLP), from the seed.
    pub fn new(gpu: &Gpu, cfg: &FieldConfig, seed: u64) -> Result<Field> {
        let spec = cfg.spec()?;
        let mut rng = rng_for(seed, 0, purpose::INIT);
        let s = cfg.grid_init;
        let table: Vec<f32> = (0..spec.grid.n_params()).map(|_| rng.random_range(-s..=s)).collect();
        let lay = spec.mlp_layout();
        let (h, i) = (spec.hidden as usize, spec.grid.output_dim());
        let mut mlp = vec![0.0f32; lay.len];
        let mut fill = |range: std::ops::Range<usize>, fan_in: usize| {
            let b = 1.0 / (fan_in as f32).sqrt();
            for w in &mut mlp[range] {
                *w = rng.random_range(-b..=b);
            }
        };
        fill(lay.w1_density..lay.w2_density, i);
        fill(lay.w2_density..lay.w1_albedo, h);
        fill(lay.w1_albedo..lay.w2_albedo, i);
        fill(lay.w2_albedo..lay.len, h);
        Ok(Field {
            table: gpu.upload(&table, &[table.len()], DType::F32)?,
            mlp: gpu.upload(&mlp, &[mlp.len()], DType::F32)?,
            spec,
        })
    }

    /// Density at world `points` (f32 `[n, 3]`): `[n]`.
    pub fn density(&self, gpu: &Gpu, points: &Tensor) -> Result<Tensor> {
        hashgrid::field_density(gpu, &self.spec, &self.table, &self.mlp, hashgrid::FieldPoints::Points(points))
    }

    /// Density alone at the renderer's samples (the first `info[0]` of
    /// `samples`, f32 `[capacity, 4]`): `[capacity]`.
    pub fn density_at_samples(&self, gpu: &Gpu, samples: &Tensor, info: &Tensor) -> Result<Tensor> {
        hashgrid::field_density(gpu, &self.spec, &self.table, &self.mlp, hashgrid::FieldPoints::Samples { samples, info })
    }

    /// Density `[n, K]` and albedo `[n, 3]` at world `points` (f32 `[n, 3]`).
    pub fn evaluate(&self, gpu: &Gpu, points: &Tensor, normals: bool) -> Result<(Tensor, Tensor)> {
        hashgrid::field_forward(gpu, &self.spec, &self.table, &self.mlp, hashgrid::FieldPoints::Points(points), normals)
    }
}
