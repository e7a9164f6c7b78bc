//! Cameras and rays.
//!
//! ## Convention (the one of `weights/tiny-shapes/fsd3d_prior.json`)
//! World is **z-up**, right-handed. A camera at elevation `e`, azimuth `a`,
//! distance `r` sits at `r·(cos e·cos a, cos e·sin a, sin e)`: azimuth 0 looks
//! from +x towards the origin, azimuth 90° from +y (threestudio's "x back,
//! y right, z up"). The camera frame is
//! `forward = normalize(center − position)`, `right = normalize(forward × up)`,
//! `up = right × forward` (threestudio's `c2w = [right, up, −forward]`).
//! `fovy` is the full vertical field of view; pixels are square (fovx follows
//! from the aspect ratio). Pixel (row i, column j), row 0 the **top** row, has
//! the ray `normalize(forward + u·right + v·up)` with
//! `u = (j + 0.5 − W/2)/f`, `v = (H/2 − i − 0.5)/f`, `f = (H/2)/tan(fovy/2)`.
//!
//! Training cameras follow threestudio's random-camera sampler with the
//! defaults of `FSD_SPEC.md` §5 ([`CameraConfig`]); evaluation cameras circle
//! the object at a fixed elevation ([`eval_cameras`]). Everything random is
//! drawn from [`rng_for`]`(seed, step, purpose)`, so a run is reproducible.
use glam::{Mat4, Vec3};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};

/// Floats per ray in a ray tensor: origin xyz, 0, direction xyz (unit), 0.
pub const RAY_FLOATS: usize = 8;

/// Purposes of the random streams drawn from [`rng_for`].
pub mod purpose {
    pub const CAMERAS: u64 = 1;
    pub const LIGHTS: u64 = 2;
    pub const JITTER: u64 = 3;
    pub const OCCUPANCY: u64 = 4;
    pub const INIT: u64 = 5;
    pub const SHADING: u64 = 6;
    /// VSD's particle score: its initial factors, and each step's training draw.
    pub const VSD: u64 = 7;
}

/// A random stream keyed by (seed, step, purpose): the same key always gives
/// the same numbers, different keys independent-looking ones.
pub fn rng_for(seed: u64, step: u64, purpose: u64) -> StdRng {
    let mut h = splitmix64(seed ^ 0x5EED_F5D3_D000_0001);
    h = splitmix64(h ^ step);
    h = splitmix64(h ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    StdRng::seed_from_u64(h)
}

/// A 32-bit seed for GPU-side hashing (stratified jitter, occupancy jitter).
pub fn gpu_seed(seed: u64, step: u64, purpose: u64) -> u32 {
    (splitmix64(splitmix64(seed ^ purpose.rotate_left(17)) ^ step) >> 32) as u32
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal sample (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn normal3(rng: &mut StdRng) -> Vec3 {
    Vec3::new(normal(rng), normal(rng), normal(rng))
}

fn uniform(rng: &mut StdRng, [lo, hi]: [f32; 2]) -> f32 {
    if hi > lo { lo + (hi - lo) * rng.random::<f32>() } else { lo }
}

/// The training-camera distribution (threestudio's `random-camera` data
/// module) and the evaluation orbit. Angles in degrees.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CameraConfig {
    /// Image size of a training render.
    pub width: u32,
    pub height: u32,
    /// Views per step.
    pub batch_size: usize,
    /// Views of one object (threestudio's `n_view`): a multi-view prior's
    /// views, which `batch_size` must be a multiple of. The views of an
    /// object are adjacent, 360/n° of the azimuth range apart from a random
    /// start, and share elevation, distance, fovy and the perturbations'
    /// draw; each has its own light. 1: every view drawn on its own.
    #[serde(skip_serializing_if = "is_one")]
    pub views_per_object: usize,
    /// Elevation range; half the batches are uniform in degrees, half uniform
    /// on the sphere (uniform in sin(elevation)).
    pub elevation_range: [f32; 2],
    /// Probability of the uniform-in-degrees elevation draw (0.5).
    pub elevation_degrees_probability: f32,
    pub azimuth_range: [f32; 2],
    /// Stratify azimuths over the batch: view b is uniform in the b-th of
    /// `batch_size` equal parts of the range.
    pub batch_uniform_azimuth: bool,
    pub distance_range: [f32; 2],
    pub fovy_range: [f32; 2],
    /// Position perturbation, uniform in [−p, p] per axis.
    pub camera_perturb: f32,
    /// Look-at point perturbation, N(0, p²) per axis.
    pub center_perturb: f32,
    /// Up vector perturbation, N(0, p²) per axis.
    pub up_perturb: f32,
    /// Light direction = normalize(camera position + p·N(0, I)).
    pub light_position_perturb: f32,
    /// Light distance from the origin, uniform.
    pub light_distance_range: [f32; 2],
    /// Later stages of the run (threestudio's `resolution_milestones`): from
    /// a stage's `from_step` on, its render size and views a step replace
    /// `width`, `height` and `batch_size`. Empty: one stage all run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<CameraStage>,
    /// Evaluation orbit: elevation, distance, fovy, number of views.
    pub eval_elevation: f32,
    pub eval_distance: f32,
    pub eval_fovy: f32,
    pub eval_views: usize,
    pub eval_width: u32,
    pub eval_height: u32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            width: 64,
            height: 64,
            batch_size: 1,
            views_per_object: 1,
            elevation_range: [-10.0, 45.0],
            elevation_degrees_probability: 0.5,
            azimuth_range: [-180.0, 180.0],
            batch_uniform_azimuth: true,
            distance_range: [1.5, 2.0],
            fovy_range: [40.0, 70.0],
            camera_perturb: 0.1,
            center_perturb: 0.2,
            up_perturb: 0.02,
            light_position_perturb: 1.0,
            light_distance_range: [0.8, 1.5],
            stages: Vec::new(),
            eval_elevation: 15.0,
            eval_distance: 1.5,
            eval_fovy: 70.0,
            eval_views: 120,
            eval_width: 512,
            eval_height: 512,
        }
    }
}

/// A later stage of the training cameras: from step `from_step` on, renders
/// of `width` × `height`, `batch_size` views a step.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraStage {
    pub from_step: u64,
    pub width: u32,
    pub height: u32,
    pub batch_size: usize,
}

impl CameraConfig {
    /// The render size and views a step of training step `step`: the last
    /// stage that has begun, else the base `width`, `height`, `batch_size`.
    pub fn stage_at(&self, step: u64) -> CameraStage {
        let base = CameraStage { from_step: 0, width: self.width, height: self.height, batch_size: self.batch_size };
        self.stages.iter().rev().find(|s| s.from_step <= step).copied().unwrap_or(base)
    }

    /// Every stage of the run, the base one first.
    pub fn all_stages(&self) -> Vec<CameraStage> {
        let mut all = vec![self.stage_at(0)];
        all.extend(self.stages.iter().copied().filter(|s| s.from_step > 0));
        all
    }

    /// Checks ranges (ordered, finite, in the valid domain).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, r: [f32; 2]| -> Result<()> {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] <= r[1]) {
                return Err(Error::Invalid(format!("camera config: {what} range {r:?} must be finite and ordered")));
            }
            Ok(())
        };
        bad("elevation", self.elevation_range)?;
        bad("azimuth", self.azimuth_range)?;
        bad("distance", self.distance_range)?;
        bad("fovy", self.fovy_range)?;
        bad("light distance", self.light_distance_range)?;
        if self.elevation_range[0] < -90.0 || self.elevation_range[1] > 90.0 {
            return Err(Error::Invalid(format!("camera config: elevation range {:?} must lie in [-90, 90]", self.elevation_range)));
        }
        if self.fovy_range[0] <= 0.0 || self.fovy_range[1] >= 180.0 || self.eval_fovy <= 0.0 || self.eval_fovy >= 180.0 {
            return Err(Error::Invalid("camera config: fovy must lie in (0, 180) degrees".into()));
        }
        if self.distance_range[0] <= 0.0 || self.eval_distance <= 0.0 {
            return Err(Error::Invalid("camera config: distances must be positive".into()));
        }
        if self.width == 0 || self.height == 0 || self.batch_size == 0 {
            return Err(Error::Invalid("camera config: width, height and batch_size must be positive".into()));
        }
        if self.views_per_object == 0 || !self.batch_size.is_multiple_of(self.views_per_object) {
            return Err(Error::Invalid(format!(
                "camera config: batch_size {} must be a positive multiple of views_per_object {} (whole objects a step)",
                self.batch_size, self.views_per_object
            )));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.from_step == 0 || (i > 0 && s.from_step <= self.stages[i - 1].from_step) {
                return Err(Error::Invalid(format!(
                    "camera config: stages must begin after step 0, in increasing from_step order (stage {i} begins at {})",
                    s.from_step
                )));
            }
            if s.width == 0 || s.height == 0 || s.batch_size == 0 || !s.batch_size.is_multiple_of(self.views_per_object) {
                return Err(Error::Invalid(format!(
                    "camera config: stage {i} (from step {}) needs a positive width and height and a batch_size that is a positive multiple of views_per_object {}",
                    s.from_step, self.views_per_object
                )));
            }
        }
        Ok(())
    }
}

/// One pinhole camera with its light.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Camera {
    pub position: Vec3,
    /// Unit vectors of the camera frame (see the module docs).
    pub right: Vec3,
    pub up: Vec3,
    pub forward: Vec3,
    /// Full vertical field of view, degrees.
    pub fovy: f32,
    /// Point light position (world).
    pub light: Vec3,
    /// The unperturbed spherical coordinates the camera was drawn at, degrees
    /// (the view-dependent prompt and the noise world map use them).
    pub elevation: f32,
    pub azimuth: f32,
    pub distance: f32,
}

impl Camera {
    /// A camera at `position` looking at `center`, with `up_hint` giving the
    /// roll (it need not be orthogonal to the view direction).
    pub fn look_at(position: Vec3, center: Vec3, up_hint: Vec3, fovy: f32) -> Camera {
        let forward = (center - position).normalize();
        let right = forward.cross(up_hint).normalize();
        let up = right.cross(forward).normalize();
        let (elevation, azimuth, distance) = spherical(position);
        Camera { position, right, up, forward, fovy, light: position, elevation, azimuth, distance }
    }

    /// A camera on the sphere looking at the origin, z up, light at the camera.
    pub fn orbit(elevation: f32, azimuth: f32, distance: f32, fovy: f32) -> Camera {
        let mut c = Camera::look_at(orbit_position(elevation, azimuth, distance), Vec3::ZERO, Vec3::Z, fovy);
        c.elevation = elevation;
        c.azimuth = azimuth;
        c.distance = distance;
        c
    }

    /// Focal length in pixels for an image `height` pixels tall.
    pub fn focal(&self, height: u32) -> f32 {
        0.5 * height as f32 / (0.5 * self.fovy.to_radians()).tan()
    }

    /// Camera-to-world matrix (OpenGL camera: looks down −z, y up).
    pub fn c2w(&self) -> Mat4 {
        Mat4::from_cols(self.right.extend(0.0), self.up.extend(0.0), (-self.forward).extend(0.0), self.position.extend(1.0))
    }

    /// World-to-camera (view) matrix.
    pub fn view_matrix(&self) -> Mat4 {
        self.c2w().inverse()
    }

    /// Unit direction of the ray through the centre of pixel (row, col).
    pub fn ray_direction(&self, row: u32, col: u32, width: u32, height: u32) -> Vec3 {
        let f = self.focal(height);
        let u = (col as f32 + 0.5 - 0.5 * width as f32) / f;
        let v = (0.5 * height as f32 - row as f32 - 0.5) / f;
        (self.forward + u * self.right + v * self.up).normalize()
    }

    /// Rays of every pixel, row-major from the top row: `[H·W·RAY_FLOATS]`.
    pub fn rays(&self, width: u32, height: u32) -> Vec<f32> {
        let mut out = Vec::with_capacity((width * height) as usize * RAY_FLOATS);
        for row in 0..height {
            for col in 0..width {
                let d = self.ray_direction(row, col, width, height);
                out.extend_from_slice(&[self.position.x, self.position.y, self.position.z, 0.0, d.x, d.y, d.z, 0.0]);
            }
        }
        out
    }
}

/// The 16 numbers a camera-conditioned multi-view prior (MVDream) takes for
/// a view: the camera-to-world matrix with its translation scaled to unit
/// length (`/ (‖t‖ + 1e-8)`, MVDream's `normalize_camera`), flattened row by
/// row. fsd3d's world and camera frame are threestudio's (z up, `c2w =
/// [right, up, −forward]`), which is MVDream's "blender" convention, so no
/// axes change; MVDream's azimuth is this module's plus 90°.
pub fn mvdream_camera(camera: &Camera) -> [f32; 16] {
    let c2w = camera.c2w();
    let t = camera.position.as_dvec3();
    let t = t / (t.length() + 1e-8);
    let mut out = [0f32; 16];
    for row in 0..4 {
        for col in 0..4 {
            out[row * 4 + col] = c2w.col(col)[row];
        }
    }
    for (row, v) in [t.x, t.y, t.z].into_iter().enumerate() {
        out[row * 4 + 3] = v as f32;
    }
    out
}

/// Which world MVDream's own camera helper builds its matrices in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MvdreamWorld {
    /// z up (its `blender_coord=True`, what its model was trained with): fsd3d's.
    Blender,
    /// y up (`blender_coord=False`): the same cameras with the world's y and z
    /// axes exchanged back (y ← z, z ← −y).
    OpenGl,
}

/// The matrix MVDream's `camera_utils.get_camera` makes for one view at
/// `elevation` and MVDream's `azimuth` (degrees) on the unit sphere, computed
/// in f64 as it is (at the poles the frame's sign depends on it) and rounded
/// to f32 at the end.
pub fn mvdream_view(elevation: f64, azimuth: f64, world: MvdreamWorld) -> [f32; 16] {
    let (e, a) = (elevation.to_radians(), (azimuth - 90.0).to_radians());
    // fsd3d's orbit at azimuth a − 90°: position on the unit sphere, z up.
    let position = glam::DVec3::new(e.cos() * a.cos(), e.cos() * a.sin(), e.sin());
    let forward = (-position).normalize();
    let right = forward.cross(glam::DVec3::Z).normalize();
    let up = right.cross(forward).normalize();
    let columns = [right, up, -forward, position];
    let mut out = [0f32; 16];
    for (col, v) in columns.iter().enumerate() {
        let v = match world {
            MvdreamWorld::Blender => *v,
            MvdreamWorld::OpenGl => glam::DVec3::new(v.x, v.z, -v.y),
        };
        for (row, x) in [v.x, v.y, v.z].into_iter().enumerate() {
            out[row * 4 + col] = x as f32;
        }
    }
    out[15] = 1.0;
    out
}

/// `distance·(cos e·cos a, cos e·sin a, sin e)`, angles in degrees.
pub fn orbit_position(elevation: f32, azimuth: f32, distance: f32) -> Vec3 {
    let (e, a) = (elevation.to_radians(), azimuth.to_radians());
    distance * Vec3::new(e.cos() * a.cos(), e.cos() * a.sin(), e.sin())
}

/// (elevation, azimuth, distance) of a position, degrees.
fn spherical(p: Vec3) -> (f32, f32, f32) {
    let d = p.length();
    if d == 0.0 {
        return (0.0, 0.0, 0.0);
    }
    ((p.z / d).clamp(-1.0, 1.0).asin().to_degrees(), p.y.atan2(p.x).to_degrees(), d)
}

/// Draws training cameras as threestudio's random-camera sampler does.
#[derive(Clone, Debug)]
pub struct CameraSampler {
    pub cfg: CameraConfig,
    pub seed: u64,
}

impl CameraSampler {
    pub fn new(cfg: CameraConfig, seed: u64) -> Result<CameraSampler> {
        cfg.validate()?;
        Ok(CameraSampler { cfg, seed })
    }

    /// The batch of cameras of training step `step` (always the same for the same step).
    pub fn sample(&self, step: u64) -> Vec<Camera> {
        let c = &self.cfg;
        let mut rng = rng_for(self.seed, step, purpose::CAMERAS);
        let b = c.stage_at(step).batch_size;
        // One elevation strategy for the whole batch, as threestudio.
        let in_degrees = rng.random::<f32>() < c.elevation_degrees_probability;
        let n_view = c.views_per_object.max(1);
        let objects = b / n_view;
        let [a0, a1] = c.azimuth_range;
        let mut cams = Vec::with_capacity(b);
        let mut object_draw: Option<ObjectDraw> = None;
        for i in 0..b {
            let (object, view) = (i / n_view, i % n_view);
            // A multi-view object's views share everything but the azimuth
            // and the light: drawn once, at its first view, in the order a
            // single view draws them (so n_view = 1 is the one-view sampler).
            if view == 0 {
                let elevation = if in_degrees {
                    uniform(&mut rng, c.elevation_range)
                } else {
                    // Inverse-transform sampling: uniform in sin(elevation).
                    let lo = (c.elevation_range[0] + 90.0) / 180.0;
                    let hi = (c.elevation_range[1] + 90.0) / 180.0;
                    let s = 2.0 * uniform(&mut rng, [lo, hi]) - 1.0;
                    s.clamp(-1.0, 1.0).asin().to_degrees()
                };
                // The object's start azimuth: stratified over the objects
                // (threestudio's batch-uniform azimuth) within the first
                // 1/n_view of the range; its views are then range/n_view apart.
                let start = if c.batch_uniform_azimuth {
                    (rng.random::<f32>() + object as f32) / objects as f32 / n_view as f32 * (a1 - a0)
                } else {
                    uniform(&mut rng, [0.0, (a1 - a0) / n_view as f32])
                };
                let distance = uniform(&mut rng, c.distance_range);
                let fovy = uniform(&mut rng, c.fovy_range);
                let perturb = Vec3::new(
                    uniform(&mut rng, [-c.camera_perturb, c.camera_perturb]),
                    uniform(&mut rng, [-c.camera_perturb, c.camera_perturb]),
                    uniform(&mut rng, [-c.camera_perturb, c.camera_perturb]),
                );
                let center = normal3(&mut rng) * c.center_perturb;
                let up = Vec3::Z + normal3(&mut rng) * c.up_perturb;
                object_draw = Some(ObjectDraw { elevation, start, distance, fovy, perturb, center, up });
            }
            let o = object_draw.expect("drawn at the object's first view");
            let azimuth = a0 + o.start + view as f32 * (a1 - a0) / n_view as f32;
            let position = orbit_position(o.elevation, azimuth, o.distance) + o.perturb;
            let light_distance = uniform(&mut rng, c.light_distance_range);
            let light_dir = (position + normal3(&mut rng) * c.light_position_perturb).normalize_or(Vec3::Z);
            let mut cam = Camera::look_at(position, o.center, o.up, o.fovy);
            cam.light = light_dir * light_distance;
            cam.elevation = o.elevation;
            cam.azimuth = azimuth;
            cam.distance = o.distance;
            cams.push(cam);
        }
        cams
    }
}

/// What the views of one object share.
#[derive(Clone, Copy)]
struct ObjectDraw {
    elevation: f32,
    /// Azimuth of the first view, from the start of the range.
    start: f32,
    distance: f32,
    fovy: f32,
    perturb: Vec3,
    center: Vec3,
    up: Vec3,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `n` cameras evenly around the object (azimuth 0°, 360/n°, …) at the
/// evaluation elevation, distance and fovy, light at the camera: turntables.
pub fn eval_cameras(cfg: &CameraConfig, n: usize) -> Vec<Camera> {
    (0..n).map(|i| Camera::orbit(cfg.eval_elevation, 360.0 * i as f32 / n as f32, cfg.eval_distance, cfg.eval_fovy)).collect()
}

/// The rays of a batch of views on the device, with what rendering needs per view.
pub struct RayBatch {
    /// `[views·H·W, RAY_FLOATS]`, view-major, each view row-major from the top row.
    pub rays: Tensor,
    /// Light position of each view.
    pub lights: Vec<Vec3>,
    pub width: u32,
    pub height: u32,
}

impl RayBatch {
    /// Builds the rays of `cameras` at `width`×`height` on the host and uploads them.
    pub fn new(gpu: &Gpu, cameras: &[Camera], width: u32, height: u32) -> Result<RayBatch> {
        if cameras.is_empty() || width == 0 || height == 0 {
            return Err(Error::Invalid(format!("ray batch: {} cameras of {width}x{height} pixels", cameras.len())));
        }
        let mut data = Vec::with_capacity(cameras.len() * (width * height) as usize * RAY_FLOATS);
        for c in cameras {
            data.extend(c.rays(width, height));
        }
        let n = data.len() / RAY_FLOATS;
        let rays = gpu.upload(&data, &[n, RAY_FLOATS], DType::F32)?;
        Ok(RayBatch { rays, lights: cameras.iter().map(|c| c.light).collect(), width, height })
    }

    /// Rays from a raw `[n, RAY_FLOATS]` tensor, as one "view" of `n`×1 pixels per light.
    pub fn from_tensor(rays: Tensor, lights: Vec<Vec3>, width: u32, height: u32) -> Result<RayBatch> {
        if rays.rank() != 2 || rays.dim(1) != RAY_FLOATS || rays.dtype() != DType::F32 {
            return Err(Error::shape("ray batch", format!("expected f32 [n, {RAY_FLOATS}] rays, got {rays:?}")));
        }
        if lights.is_empty() || rays.dim(0) != lights.len() * (width * height) as usize {
            return Err(Error::shape(
                "ray batch",
                format!("{} rays for {} views of {width}x{height}", rays.dim(0), lights.len()),
            ));
        }
        Ok(RayBatch { rays, lights, width, height })
    }

    pub fn views(&self) -> usize {
        self.lights.len()
    }
    pub fn rays_per_view(&self) -> usize {
        (self.width * self.height) as usize
    }
    pub fn n_rays(&self) -> usize {
        self.rays.dim(0)
    }
}
