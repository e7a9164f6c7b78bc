//! The differentiable 3D scene FSD optimises: cameras and rays, the hash-grid
//! field with its MLPs, volume rendering forward and backward, shading,
//! regularisers and the optimiser. Uses `ops`, never `models`.
//!
//! One training step, all recorded into the one open encoder (no readback):
//! ```text
//! scene.update_occupancy(gpu, step)?;                  // every occupancy_interval steps
//! let r = scene.render(gpu, &rays, &RenderOptions::training(shading, step, true))?;
//! // ... the prior turns r.images.rgb / opacity into dL/drgb (and dL/dopacity) ...
//! scene.backward(gpu, &r, &d_rgb, None, &regularisers)?;
//! scene.optimizer_step(gpu, 1.0)?;
//! ```
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::hashgrid::{self, FieldPoints};
use crate::ops::render::{self as render_ops, CompositeSpec, Composited, MarchSpec, Marched, RegulariserWeights, Shading};

pub mod background;
pub mod camera;
pub mod field;
pub mod optim;
pub mod render;

pub use background::{Background, BackgroundConfig, BackgroundKind};
pub use camera::{Camera, CameraConfig, CameraSampler, RayBatch};
pub use field::{Field, FieldConfig};
pub use optim::{Adam, AdamConfig, Checkpoint};
pub use render::{MaterialConfig, OccupancyGrid, RenderConfig};

/// Names of the parameter groups.
pub const GROUP_GRID: &str = "geometry.encoding";
pub const GROUP_MLP: &str = "geometry.mlp";
pub const GROUP_BACKGROUND: &str = "background.mlp";

/// Everything about the scene a run config sets (`[scene]` of a TOML file).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SceneConfig {
    pub field: FieldConfig,
    pub background: BackgroundConfig,
    pub render: RenderConfig,
    pub material: MaterialConfig,
    pub adam: AdamConfig,
}

/// How one render is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenderOptions {
    pub shading: Shading,
    /// Keys the stratified jitter (vary it per step).
    pub step: u64,
    /// Evaluate the finite-difference normal rows (needed by diffuse and
    /// textureless shading, the orientation loss and the normal image).
    pub normals: bool,
    pub normal_image: bool,
    pub stratified: bool,
}

impl RenderOptions {
    /// A training render: stratified, normals when the shading or the
    /// orientation loss needs them.
    pub fn training(shading: Shading, step: u64, orientation_loss: bool) -> RenderOptions {
        RenderOptions { shading, step, normals: shading.needs_normals() || orientation_loss, normal_image: false, stratified: true }
    }
    /// An evaluation render: mid-step samples, normals for the normal image.
    pub fn eval(shading: Shading) -> RenderOptions {
        RenderOptions { shading, step: 0, normals: true, normal_image: true, stratified: false }
    }
}

/// A render and what its backward needs.
pub struct SceneRender {
    /// rgb, opacity, depth, (normal) images, NCHW.
    pub images: Composited,
    pub rays: Tensor,
    pub marched: Marched,
    /// `[capacity, K]` and `[capacity, 3]` of the field at the samples.
    pub density: Tensor,
    pub albedo: Tensor,
    /// Per-ray background colours (background MLP).
    pub background: Option<Tensor>,
    pub spec: CompositeSpec,
}

/// Images of one view on the host, channel-major `[C, H, W]`, row 0 the top row.
#[derive(Clone, Debug)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// `[3, H, W]`, background included.
    pub rgb: Vec<f32>,
    /// `[H, W]`.
    pub opacity: Vec<f32>,
    /// `[H, W]`: Σ w·t (divide by the opacity for the expected depth).
    pub depth: Vec<f32>,
    /// `[3, H, W]`: Σ w·n.
    pub normal: Vec<f32>,
}

/// The optimised scene: field, background, occupancy grid and optimiser.
pub struct Scene {
    pub cfg: SceneConfig,
    pub seed: u64,
    pub field: Field,
    pub background: Background,
    pub occupancy: OccupancyGrid,
    pub adam: Adam,
}

impl Scene {
    /// A new scene initialised from `seed`.
    pub fn new(gpu: &Gpu, cfg: &SceneConfig, seed: u64) -> Result<Scene> {
        cfg.render.validate()?;
        let field = Field::new(gpu, &cfg.field, seed)?;
        let background = Background::new(gpu, &cfg.background, seed)?;
        let occupancy = OccupancyGrid::new(gpu, cfg.render.occupancy_resolution)?;
        let mut adam = Adam::new(&cfg.adam);
        adam.add_group(gpu, GROUP_GRID, &field.table, cfg.adam.lr_grid)?;
        adam.add_group(gpu, GROUP_MLP, &field.mlp, cfg.adam.lr_mlp)?;
        if let Some(w) = &background.weights {
            adam.add_group(gpu, GROUP_BACKGROUND, w, cfg.adam.lr_background)?;
        }
        Ok(Scene { cfg: cfg.clone(), seed, field, background, occupancy, adam })
    }

    /// The distance between samples.
    pub fn step_size(&self) -> f32 {
        self.cfg.render.step_size(self.field.spec.radius)
    }

    /// Updates the occupancy grid when `step` is a multiple of the interval.
    pub fn update_occupancy(&self, gpu: &Gpu, step: u64) -> Result<()> {
        if step.is_multiple_of(self.cfg.render.occupancy_interval) {
            self.occupancy.update(gpu, &self.field, &self.cfg.render, self.seed, step)?;
        }
        Ok(())
    }

    /// Renders `rays` (records only).
    pub fn render(&self, gpu: &Gpu, rays: &RayBatch, opts: &RenderOptions) -> Result<SceneRender> {
        let rc = &self.cfg.render;
        let n = rays.n_rays();
        let dt = self.step_size();
        let march = MarchSpec {
            radius: self.field.spec.radius,
            dt,
            max_samples: rc.samples_per_ray,
            capacity: (n * rc.samples_per_ray as usize).min(rc.max_samples_total).max(1),
            occupancy_resolution: self.occupancy.resolution,
            stratified: opts.stratified,
            seed: camera::gpu_seed(self.seed, opts.step, camera::purpose::JITTER),
        };
        let mut marched = render_ops::march(gpu, &rays.rays, &self.occupancy.bits, &march)?;
        if rc.prune_occluded && rc.early_stop > 0.0 {
            let sigma = self.field.density_at_samples(gpu, &marched.samples, &marched.info)?;
            marched = render_ops::prune_occluded(gpu, &marched, &sigma, dt, rc.early_stop)?;
        }
        let points = FieldPoints::Samples { samples: &marched.samples, info: &marched.info };
        let (density, albedo) = hashgrid::field_forward(gpu, &self.field.spec, &self.field.table, &self.field.mlp, points, opts.normals)?;
        let background = self.background.colors(gpu, &rays.rays)?;
        let spec = CompositeSpec {
            rays_per_view: rays.rays_per_view(),
            lights: rays.lights.iter().map(|l| l.to_array()).collect(),
            shading: opts.shading,
            ambient: self.cfg.material.ambient,
            diffuse: self.cfg.material.diffuse,
            dt,
            normals: opts.normals,
            normal_kind: self.field.spec.normals,
            normal_eps: self.field.spec.normal_eps,
            early_stop: rc.early_stop,
            normal_image: opts.normal_image,
        };
        let images = render_ops::composite(gpu, &rays.rays, &marched, &density, &albedo, self.background.source(background.as_ref()), &spec)?;
        Ok(SceneRender { images, rays: rays.rays.clone(), marched, density, albedo, background, spec })
    }

    /// Backward of `r` for dL/drgb `[views, 3, H, W]` (and optionally
    /// dL/dopacity), plus the regularisers: adds into the optimiser's gradients.
    pub fn backward(&self, gpu: &Gpu, r: &SceneRender, d_rgb: &Tensor, d_opacity: Option<&Tensor>, reg: &RegulariserWeights) -> Result<()> {
        let bg = self.background.source(r.background.as_ref());
        let g = render_ops::composite_backward(gpu, &r.rays, &r.marched, &r.density, &r.albedo, bg, &r.spec, &r.images, d_rgb, d_opacity, reg)?;
        let points = FieldPoints::Samples { samples: &r.marched.samples, info: &r.marched.info };
        hashgrid::field_backward(
            gpu,
            &self.field.spec,
            &self.field.table,
            &self.field.mlp,
            points,
            r.spec.normals,
            &g.density,
            &g.albedo,
            self.adam.grad(GROUP_GRID)?,
            self.adam.grad(GROUP_MLP)?,
        )?;
        if let Some(d_bg) = &g.background {
            self.background.backward(gpu, &r.rays, d_bg, self.adam.grad(GROUP_BACKGROUND)?)?;
        }
        Ok(())
    }

    /// Renders one camera at any resolution for evaluation (mid-step samples,
    /// normals), in chunks of rays small enough that no sample is dropped,
    /// and reads the images back.
    pub fn render_image(&self, gpu: &Gpu, camera: &Camera, width: u32, height: u32, shading: Shading) -> Result<Image> {
        let n = (width * height) as usize;
        let rays = camera.rays(width, height);
        let chunk = (self.cfg.render.max_samples_total / self.cfg.render.samples_per_ray as usize).clamp(1, n.max(1));
        let mut img = Image { width, height, rgb: vec![0.0; 3 * n], opacity: vec![0.0; n], depth: vec![0.0; n], normal: vec![0.0; 3 * n] };
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            let t = gpu.upload(&rays[start * camera::RAY_FLOATS..(start + m) * camera::RAY_FLOATS], &[m, camera::RAY_FLOATS], crate::gpu::DType::F32)?;
            let batch = RayBatch::from_tensor(t, vec![camera.light], m as u32, 1)?;
            let r = self.render(gpu, &batch, &RenderOptions::eval(shading))?;
            let rgb = gpu.download(&r.images.rgb)?;
            let normal_image = r.images.normal.as_ref().ok_or_else(|| Error::Invalid("eval render without a normal image".into()))?;
            let normal = gpu.download(normal_image)?;
            for c in 0..3 {
                img.rgb[c * n + start..c * n + start + m].copy_from_slice(&rgb[c * m..(c + 1) * m]);
                img.normal[c * n + start..c * n + start + m].copy_from_slice(&normal[c * m..(c + 1) * m]);
            }
            img.opacity[start..start + m].copy_from_slice(&gpu.download(&r.images.opacity)?);
            img.depth[start..start + m].copy_from_slice(&gpu.download(&r.images.depth)?);
        }
        Ok(img)
    }

    /// Regulariser values of a render (orientation, sparsity, entropy, foreground rays), f32 `[4]`.
    pub fn regulariser_values(&self, gpu: &Gpu, r: &SceneRender) -> Result<Tensor> {
        render_ops::regulariser_values(gpu, &r.marched, &r.images)
    }

    /// One Adam step on the accumulated gradients (times `grad_scale`), which it then zeroes.
    pub fn optimizer_step(&mut self, gpu: &Gpu, grad_scale: f32) -> Result<()> {
        self.adam.step(gpu, grad_scale)
    }

    /// Saves parameters, Adam's state and the occupancy grid (atomically).
    pub fn save(&self, gpu: &Gpu, path: &Path) -> Result<()> {
        self.save_with(gpu, path, HashMap::new(), &[])
    }

    /// [`Scene::save`] with the caller's own metadata beside the scene's.
    pub fn save_with(&self, gpu: &Gpu, path: &Path, mut meta: HashMap<String, String>, extra: &[(String, &Tensor)]) -> Result<()> {
        let mut tensors = self.adam.state_tensors();
        tensors.extend(extra.iter().map(|(n, t)| (n.clone(), *t)));
        tensors.push(("occupancy.history".into(), &self.occupancy.occupancy));
        tensors.push(("occupancy.bits".into(), &self.occupancy.bits));
        meta.insert("adam_step".into(), self.adam.step.to_string());
        meta.insert("seed".into(), self.seed.to_string());
        meta.insert("config".into(), serde_json::to_string(&self.cfg).map_err(|e| Error::Invalid(e.to_string()))?);
        optim::save_checkpoint(gpu, path, &tensors, meta)
    }

    /// Restores what [`Scene::save`] wrote into this scene (same config);
    /// returns the checkpoint's metadata.
    pub fn load(&mut self, gpu: &Gpu, path: &Path) -> Result<HashMap<String, String>> {
        let ck = Checkpoint::read(path)?;
        for (name, t) in self.adam.state_tensors() {
            ck.restore(gpu, &name, t)?;
        }
        ck.restore(gpu, "occupancy.history", &self.occupancy.occupancy)?;
        ck.restore(gpu, "occupancy.bits", &self.occupancy.bits)?;
        self.adam.step = ck
            .meta("adam_step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("{}: no adam_step in the checkpoint", path.display())))?;
        self.adam.zero_grad(gpu)?;
        Ok(ck.metadata)
    }
}
