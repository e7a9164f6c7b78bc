//! The configuration of one 3D run, as written to `config.toml` in its output
//! folder: enough to reproduce it.
//!
//! Layers, later ones win: the defaults for the prior and method
//! ([`GenerateConfig::defaults`]), then a `--config FILE.toml`
//! ([`ConfigOverlay`]), then the command-line options ([`ConfigFlags`]);
//! [`GenerateConfig::layered`] stacks them for `generate` and for every run
//! of `eval`. A TOML file only needs the keys it changes.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diffusion::guidance::{GuidanceSettings, Method, Weighting};
use crate::diffusion::noise::WorldMapConfig;
use crate::diffusion::prompts::PromptSpec;
use crate::diffusion::timesteps::TimestepSchedule;
use crate::diffusion::vsd::VsdConfig;
use crate::error::{Error, Result};
use crate::models::pixel_prior::PixelPriorSpec;
use crate::scene::{BackgroundKind, CameraConfig, SceneConfig};

/// Everything a `generate` run is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    pub prompt: String,
    pub method: Method,
    pub seed: u64,
    /// Optimisation steps (one Adam step each).
    pub steps: u64,
    /// The prior's folder; absent: the embedded default prior.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Storage type of the prior's weights and activations: "f32", "f16", or
    /// "auto" (resolved by `models::resolve_dtype` before a run starts, and
    /// recorded as what it resolved to).
    pub dtype: String,
    pub guidance: GuidanceConfig,
    /// World-map noise parameters (FSD_SPEC §4); used by `fsd`.
    pub noise: WorldMapConfig,
    pub camera: CameraConfig,
    pub scene: SceneConfig,
    pub loss: LossConfig,
    pub output: OutputConfig,
    /// VSD's particle score (`--method vsd` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsd: Option<VsdConfig>,
}

/// How the prior's prediction becomes a gradient (FSD_SPEC §2, §3).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuidanceConfig {
    /// Classifier-free guidance scale (diffusers' convention).
    pub cfg: f32,
    pub weighting: Weighting,
    pub timesteps: TimestepSchedule,
    /// Clamp each gradient element to ±this (0: no clamp).
    pub grad_clip: f32,
    /// NFSD's negative prompt, and CSD's when `negative_weight` ≠ 0 (NFSD's
    /// default list when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative: Option<String>,
    /// CSD only: ω₂, the weight of the negative prompt's classifier score
    /// (0, the default: no negative term). Absent from configs where 0, so
    /// that configs and checkpoints written before it still match.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub negative_weight: f32,
    /// φ of the CFG rescale (threestudio's MVDream `recon_std_rescale`): x̂₀
    /// scaled towards the spread of the unguided x̂₀, per object (its views
    /// on a multi-view prior). 0, the default: plain CFG; sds, fsd and
    /// fsd-constant only. Absent from configs where 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rescale: f32,
    /// Append ", front view" / ", side view" / ", back view" / ", overhead view".
    pub view_dependent_prompt: bool,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

/// Regulariser weights (FSD_SPEC §5 "losses").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Orientation loss weight at step 0 and at `orientation_ramp_steps` (linear between).
    pub orientation: [f32; 2],
    pub orientation_ramp_steps: u64,
    /// mean √(opacity² + 0.01).
    pub sparsity: f32,
    /// Opacity entropy (pushes opacity to 0 or 1).
    pub opaque: f32,
}

impl LossConfig {
    /// λ_orient at `step`.
    pub fn orientation_at(&self, step: u64) -> f32 {
        let f = if self.orientation_ramp_steps == 0 { 1.0 } else { (step as f32 / self.orientation_ramp_steps as f32).min(1.0) };
        self.orientation[0] + (self.orientation[1] - self.orientation[0]) * f
    }
}

/// What the run writes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Side of the final renders (grids and turntable).
    pub render_size: u32,
    /// Views of the final render grid (evenly spaced azimuths).
    pub grid_views: usize,
    /// Frames of the turntable animation.
    pub turntable_frames: usize,
    /// Marching-cubes grid cells per axis, and the density threshold.
    pub mesh_resolution: usize,
    pub mesh_threshold: f32,
    /// Write a checkpoint every this many steps (0: only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Read the loss back and write a log line every this many steps.
    pub log_every: u64,
}

/// A `--config` overlay: TOML text with any keys of the run config, read
/// once (eval lays it over every run).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigOverlay {
    /// Where it came from (for errors), e.g. the file name.
    pub name: String,
    pub text: String,
}

impl ConfigOverlay {
    pub fn read(path: &Path) -> Result<ConfigOverlay> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("reading the config {}: {e}", path.display())))?;
        Ok(ConfigOverlay { name: path.display().to_string(), text })
    }
}

/// The command-line layer: what is given replaces the overlay's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigFlags {
    /// The prior's folder (None: `$FSD3D_MODEL`, else the embedded prior).
    /// Always the command's, never the overlay's: the defaults below it were
    /// chosen for this prior.
    pub model: Option<PathBuf>,
    pub seed: Option<u64>,
    pub steps: Option<u64>,
    /// Guidance scale.
    pub cfg: Option<f32>,
    /// World-map noise: patch span Θ in degrees, blend β, opacity threshold α0.
    pub theta_deg: Option<f64>,
    pub beta: Option<f32>,
    pub alpha0: Option<f32>,
    /// Redraw the world map's background noise every step.
    pub fresh_background: bool,
    /// "f32", "f16" or "auto".
    pub dtype: Option<String>,
}

/// Which defaults a prior gets.
#[derive(Clone, Debug, PartialEq)]
pub enum PriorKind {
    /// A latent diffusion model (Stable Diffusion): FSD_SPEC §5.
    Latent,
    /// A pixel-space prior with the distribution it was trained on.
    Pixel(PixelPriorSpec),
    /// A multi-view latent diffusion model (MVDream): threestudio's
    /// `mvdream-sd21` settings, `frames` views an object.
    MultiViewLatent { frames: usize },
}

impl GenerateConfig {
    /// The defaults for a prior and method: FSD_SPEC §5 for Stable
    /// Diffusion; for a pixel prior, its own training distribution and a
    /// budget that finishes in minutes on a laptop CPU.
    pub fn defaults(prompt: &str, method: Method, kind: &PriorKind) -> GenerateConfig {
        let annealed = matches!(method, Method::Fsd | Method::FsdConstant);
        let timesteps = if annealed {
            TimestepSchedule::Sqrt { t_min: 0.02, t_max: 0.98 }
        } else {
            TimestepSchedule::Random { t_min: 0.02, t_max: 0.98 }
        };
        let mut c = GenerateConfig {
            prompt: prompt.to_string(),
            method,
            seed: 0,
            steps: 10_000,
            model: None,
            dtype: "auto".into(),
            guidance: GuidanceConfig {
                cfg: 100.0,
                weighting: Weighting::Sds,
                timesteps,
                grad_clip: 0.0,
                negative: None,
                negative_weight: 0.0,
                rescale: 0.0,
                view_dependent_prompt: true,
            },
            noise: WorldMapConfig::default(),
            camera: CameraConfig::default(),
            scene: SceneConfig::default(),
            loss: LossConfig { orientation: [10.0, 1000.0], orientation_ramp_steps: 5000, sparsity: 1.0, opaque: 0.0 },
            output: OutputConfig {
                render_size: 256,
                grid_views: 8,
                turntable_frames: 36,
                mesh_resolution: 128,
                mesh_threshold: 25.0,
                checkpoint_every: 1000,
                log_every: 10,
            },
            vsd: (method == Method::Vsd).then(VsdConfig::default),
        };
        match kind {
            PriorKind::Pixel(spec) => c.apply_pixel_prior(spec),
            PriorKind::MultiViewLatent { frames } => c.apply_multiview_latent(*frames),
            // threestudio's prolificdreamer guides with 7.5, not SDS's 100.
            PriorKind::Latent if method == Method::Vsd => c.guidance.cfg = 7.5,
            PriorKind::Latent => {}
        }
        c
    }

    /// threestudio's `mvdream-sd21` (docs/mvdream.md): one object of
    /// `frames` views a step, 90° apart, elevation [0°, 30°], fovy [15°, 60°]
    /// at a distance that frames the object alike whatever the fovy
    /// (0.8–1.0 / tan(fovy/2) in threestudio; here the 1.5–2.0 of
    /// FSD_SPEC at the mid fovy), no perturbations, guidance 50 with the x̂₀
    /// rescale φ = 0.5 and the σ/α weight of its reconstruction loss.
    fn apply_multiview_latent(&mut self, frames: usize) {
        let cam = &mut self.camera;
        // Two objects at 64² while the shape forms, then one at 256²
        // (threestudio's batch_size [8, 4], resolution_milestones [5000]).
        cam.batch_size = 2 * frames;
        (cam.width, cam.height) = (64, 64);
        cam.stages = vec![crate::scene::camera::CameraStage { from_step: 5000, width: 256, height: 256, batch_size: frames }];
        cam.views_per_object = frames;
        cam.elevation_range = [0.0, 30.0];
        cam.fovy_range = [15.0, 60.0];
        cam.camera_perturb = 0.0;
        cam.center_perturb = 0.0;
        cam.up_perturb = 0.0;
        self.guidance.cfg = 50.0;
        self.guidance.rescale = 0.5;
        // Random-t methods take threestudio's annealed range; FSD keeps its
        // deterministic schedule (FSD_SPEC §3).
        if matches!(self.guidance.timesteps, TimestepSchedule::Random { .. }) {
            self.guidance.timesteps = TimestepSchedule::RandomAnnealed { t_min: 0.02, t_max: 0.98, t_max_end: 0.5, anneal_steps: 8000 };
        }
        self.guidance.weighting = Weighting::Fsd;
        // MVDream was trained on plain captions of objects.
        self.guidance.view_dependent_prompt = false;
    }

    /// The config of a new run: the defaults for the prior and method, the
    /// overlay, then the prompt, the method and the flags (so an overlay
    /// cannot change what the command line names); validated.
    pub fn layered(prompt: &str, method: Method, kind: &PriorKind, overlay: Option<&ConfigOverlay>, flags: &ConfigFlags) -> Result<GenerateConfig> {
        let mut cfg = GenerateConfig::defaults(prompt, method, kind);
        if let Some(o) = overlay {
            cfg = cfg.overlay_toml(&o.text, &o.name)?;
        }
        cfg.prompt = prompt.to_string();
        cfg.method = method;
        cfg.model = flags.model.clone();
        fn set<T>(slot: &mut T, given: Option<T>) {
            if let Some(v) = given {
                *slot = v;
            }
        }
        set(&mut cfg.seed, flags.seed);
        set(&mut cfg.steps, flags.steps);
        set(&mut cfg.guidance.cfg, flags.cfg);
        set(&mut cfg.noise.theta_deg, flags.theta_deg);
        set(&mut cfg.noise.beta, flags.beta);
        set(&mut cfg.noise.alpha0, flags.alpha0);
        if flags.fresh_background {
            cfg.noise.fixed_background = false;
        }
        set(&mut cfg.dtype, flags.dtype.clone());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cameras, light, material, background and resolution of the prior's
    /// training data, and a small scene and budget for a CPU.
    fn apply_pixel_prior(&mut self, spec: &PixelPriorSpec) {
        let r = spec.resolution as u32;
        let cam = &mut self.camera;
        cam.width = r;
        cam.height = r;
        cam.batch_size = 1;
        cam.elevation_range = spec.camera.elevation_deg;
        cam.elevation_degrees_probability = 1.0;
        cam.azimuth_range = spec.camera.azimuth_deg;
        cam.distance_range = spec.camera.distance;
        cam.fovy_range = spec.camera.fovy_deg;
        // The training renders had no perturbation of camera, centre or up.
        cam.camera_perturb = 0.0;
        cam.center_perturb = 0.0;
        cam.up_perturb = 0.0;
        cam.light_position_perturb = spec.light.perturb;
        cam.light_distance_range = spec.light.distance;
        let mid = |r: [f32; 2]| 0.5 * (r[0] + r[1]);
        cam.eval_elevation = mid(spec.camera.elevation_deg).max(0.0);
        cam.eval_distance = mid(spec.camera.distance);
        cam.eval_fovy = mid(spec.camera.fovy_deg);
        cam.eval_views = 8;
        cam.eval_width = 4 * r;
        cam.eval_height = 4 * r;

        let s = &mut self.scene;
        s.background.kind = BackgroundKind::Solid;
        s.background.color = spec.background;
        s.material.ambient = spec.shading.ambient;
        s.material.diffuse = spec.shading.diffuse;
        // Flat albedo first (cheap: no normals), then the diffuse shading the
        // prior saw; white-albedo (textureless) renders look like nothing the
        // prior was trained on, so none.
        s.material.ambient_only_steps = 100;
        s.material.textureless_probability = 0.0;
        // Objects of radius 0.35–0.55 at the origin: a unit box, a grid whose
        // finest level (~190 cells across the box) is finer than a 32² view.
        s.field.radius = 1.0;
        s.field.levels = 8;
        s.field.log2_table_size = 16;
        s.field.base_resolution = 16;
        s.field.per_level_scale = 1.42;
        s.field.hidden = 32;
        s.field.normal_eps = 0.01;
        s.render.samples_per_ray = 128;
        s.render.max_samples_total = 1 << 18;
        s.render.occupancy_interval = 8;
        // Its objects stay a little translucent (densities of 20–30 over a
        // few samples): no ray of a trained "a red cube" reached the 1e-4
        // transmittance at which pruning drops samples, so the density pass
        // would only cost time.
        s.render.prune_occluded = false;
        s.adam.lr_grid = 0.01;
        s.adam.lr_mlp = 0.01;

        // 300 steps: a recognisable object; 6 min on the idle 2-core
        // reference machine under lavapipe (docs/performance.md).
        self.steps = 300;
        self.guidance.cfg = 7.5;
        // The prior knows only "a {colour} {shape}" captions.
        self.guidance.view_dependent_prompt = false;
        // A multi-view prior sees one object's views together a step,
        // with MVDream's rescale of the guided x̂₀.
        if let Some(v) = spec.views {
            self.camera.batch_size = v.num_frames;
            self.camera.views_per_object = v.num_frames;
            self.guidance.rescale = 0.5;
        }
        self.loss = LossConfig { orientation: [1.0, 10.0], orientation_ramp_steps: 300, sparsity: 0.05, opaque: 0.0 };
        // 24 frames of 3r² pixels: every third frame is a grid view.
        self.output.render_size = 3 * r;
        self.output.turntable_frames = 24;
        self.output.checkpoint_every = 200;
        self.output.log_every = 10;
        self.output.mesh_resolution = 96;
        // The small field reaches densities of 20–30 inside objects (a 32²
        // view needs less than the 512-sample renders of SD runs), so the
        // surface is taken lower than FSD_SPEC's 25.
        self.output.mesh_threshold = 10.0;
    }

    /// Checks values the parts do not check themselves.
    pub fn validate(&self) -> Result<()> {
        self.guidance.timesteps.check()?;
        self.camera.validate()?;
        self.scene.render.validate()?;
        if self.steps == 0 {
            return Err(Error::Invalid("generate: steps must be at least 1".into()));
        }
        if !(self.guidance.cfg.is_finite() && self.guidance.cfg > 0.0) {
            return Err(Error::Invalid(format!("generate: cfg {} must be a positive number", self.guidance.cfg)));
        }
        match (&self.vsd, self.method) {
            (Some(v), Method::Vsd) => v.validate()?,
            (None, Method::Vsd) => {}
            (Some(_), m) => return Err(Error::Invalid(format!("[vsd] configures VSD's particle score; this run's method is {}", m.name()))),
            (None, _) => {}
        }
        if !self.guidance.negative_weight.is_finite() || (self.guidance.negative_weight != 0.0 && self.method != Method::Csd) {
            return Err(Error::Invalid(format!(
                "generate: [guidance] negative_weight {} is CSD's weight of the negative prompt: a finite number, and 0 for methods other than csd",
                self.guidance.negative_weight
            )));
        }
        let rescale = self.guidance.rescale;
        if !(0.0..=1.0).contains(&rescale) || (rescale != 0.0 && self.method.target() != crate::diffusion::guidance::Target::Noise) {
            return Err(Error::Invalid(format!(
                "generate: [guidance] rescale {rescale} is the CFG rescale φ: a number in [0, 1], and 0 for methods other than sds, fsd and fsd-constant"
            )));
        }
        if self.guidance.grad_clip.is_nan() || self.guidance.grad_clip < 0.0 {
            return Err(Error::Invalid(format!("generate: grad_clip {} must be >= 0 (0 disables it)", self.guidance.grad_clip)));
        }
        if self.output.grid_views == 0 || self.output.turntable_frames == 0 || self.output.render_size == 0 || self.output.log_every == 0 {
            return Err(Error::Invalid("generate: output render_size, grid_views, turntable_frames and log_every must be positive".into()));
        }
        if !["f32", "f16", "auto"].contains(&self.dtype.as_str()) {
            return Err(Error::Invalid(format!("generate: dtype {:?} must be \"f32\", \"f16\" or \"auto\"", self.dtype)));
        }
        Ok(())
    }

    /// `self` with the keys of a TOML document laid over it (nested tables
    /// merge; anything else replaces). Unknown keys are errors that name them.
    pub fn overlay_toml(&self, text: &str, what: &str) -> Result<GenerateConfig> {
        let overlay: toml::Table = toml::from_str(text).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        let base = toml::Table::try_from(self).map_err(|e| Error::Invalid(format!("config to TOML: {e}")))?;
        let merged = merge(base, overlay);
        merged.try_into().map_err(|e: toml::de::Error| Error::Invalid(format!("{what}: {e}")))
    }

    /// The run's prompts for the guidance: the view-dependent suffixes when
    /// asked for, and the negative prompt (NFSD's).
    pub fn prompt_spec(&self) -> PromptSpec<'_> {
        PromptSpec { prompt: &self.prompt, view_dependent: self.guidance.view_dependent_prompt, negative: self.guidance.negative.as_deref() }
    }

    /// The guidance of the run's method with the `[guidance]` settings.
    pub fn guidance_settings(&self) -> GuidanceSettings {
        let g = &self.guidance;
        GuidanceSettings {
            scale: g.cfg,
            target: self.method.target(),
            weighting: g.weighting,
            grad_clip: g.grad_clip,
            negative_weight: g.negative_weight,
            rescale: g.rescale,
        }
    }

    /// What decides the optimisation, as JSON: the whole config but `steps`
    /// (a resume may extend a run) and `[output]` (what is written, not what
    /// is optimised). A checkpoint records it, and a resume under a config
    /// that differs in it is refused ([`config_differences`]).
    pub fn optimisation_json(&self) -> Result<String> {
        let mut v = serde_json::to_value(self).map_err(|e| Error::Invalid(format!("config to JSON: {e}")))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("steps");
            o.remove("output");
        }
        Ok(v.to_string())
    }

    /// The complete config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Invalid(format!("config to TOML: {e}")))
    }

    /// A complete config file (as a run writes it).
    pub fn from_toml(text: &str, what: &str) -> Result<GenerateConfig> {
        toml::from_str(text).map_err(|e| Error::Invalid(format!("{what}: {e}")))
    }
}

fn merge(mut base: toml::Table, overlay: toml::Table) -> toml::Table {
    for (k, v) in overlay {
        match (base.remove(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                base.insert(k, toml::Value::Table(merge(b, o)));
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

/// The keys (dotted paths) whose values differ between two configs in
/// [`GenerateConfig::optimisation_json`]'s form, each as `key: a → b`.
pub fn config_differences(a: &str, b: &str) -> Result<Vec<String>> {
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).map_err(|e| Error::Invalid(format!("a recorded config is not JSON: {e}")));
    let (a, b) = (parse(a)?, parse(b)?);
    let mut out = Vec::new();
    diff_values("", &a, &b, &mut out);
    Ok(out)
}

fn diff_values(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_values(&p, u, v, out),
                    (u, v) => out.push(format!("{p}: {} → {}", show(u), show(v))),
                }
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map_or("(absent)".to_string(), |v| v.to_string())
}
