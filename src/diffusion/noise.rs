//! The noise each distillation step adds to the render (FSD_SPEC §2, §4):
//! fresh Gaussian noise for SDS, one constant tensor for the ablation of
//! Fig. 6, and FSD's view-aligned world-map noise ε(c).
//!
//! The world map is a D×(H+h)×W Gaussian tensor with H = round(h·π/Θ),
//! W = round(w·2π/Θ). A camera at polar angle θ ∈ [0, π] and azimuth
//! φ ∈ [0, 2π) reads the h×w crop whose top-left corner is
//! (round(H·θ/π), round(W·φ/2π) mod W), wrapping in azimuth; pixels the object
//! does not cover (pooled opacity ≤ α0) take the fixed background noise ε_b.
//! Every stream is keyed by (seed, step, purpose), so a run is reproducible.
use std::f64::consts::PI;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::diffusion::{self as dops, NoiseKey, NoisePurpose};
use crate::ops::fsd::{WorldMapInputs, worldmap_noise};

/// Which noise the loop adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseMode {
    /// Fresh N(0, I) every step (SDS, NFSD).
    Random,
    /// FSD's world-map noise ε(c).
    WorldMap,
    /// One fixed ε for every view and step (FSD's constant-noise ablation).
    Constant,
}

/// Parameters of the world-map noise (FSD_SPEC §4 defaults).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct WorldMapConfig {
    /// Angular span Θ of one patch, degrees.
    pub theta_deg: f64,
    /// Blend β: 1 = fully deterministic, 0 = fresh noise.
    pub beta: f32,
    /// Opacity threshold α0 of the foreground mask.
    pub alpha0: f32,
    /// Keep ε_b the same for the whole run (else redrawn every step).
    pub fixed_background: bool,
}

impl Default for WorldMapConfig {
    fn default() -> Self {
        WorldMapConfig { theta_deg: 180.0, beta: 1.0, alpha0: 0.5, fixed_background: true }
    }
}

/// A camera direction as the noise sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewAngles {
    /// θ = π/2 − elevation, in [0, π].
    pub polar: f64,
    /// φ, any real (taken modulo 2π).
    pub azimuth: f64,
}

impl ViewAngles {
    pub fn from_elevation_azimuth_deg(elevation: f64, azimuth: f64) -> ViewAngles {
        ViewAngles { polar: (90.0 - elevation).to_radians(), azimuth: azimuth.to_radians() }
    }
}

/// The noise source of one run.
pub struct ViewNoise {
    pub mode: NoiseMode,
    pub config: WorldMapConfig,
    /// [D, h, w] of one noise sample.
    pub shape: [usize; 3],
    /// World-map rows H (without the extra h) and columns W.
    pub map_h: usize,
    pub map_w: usize,
    seed: u64,
    world: Option<Tensor>,
    background: Tensor,
}

impl ViewNoise {
    pub fn new(gpu: &Gpu, mode: NoiseMode, config: WorldMapConfig, shape: [usize; 3], seed: u64) -> Result<ViewNoise> {
        let [d, h, w] = shape;
        if !(config.theta_deg > 0.0 && config.theta_deg <= 360.0) {
            return Err(Error::Invalid(format!("world-map Θ = {}° must be in (0°, 360°]", config.theta_deg)));
        }
        if !(0.0..=1.0).contains(&config.beta) {
            return Err(Error::Invalid(format!("world-map β = {} must be in [0, 1]", config.beta)));
        }
        let theta = config.theta_deg.to_radians();
        let map_h = (h as f64 * PI / theta).round() as usize;
        let map_w = ((w as f64 * 2.0 * PI / theta).round() as usize).max(1);
        let key = |purpose| NoiseKey { seed, step: 0, purpose };
        let background = dops::randn(gpu, &[d, h, w], DType::F32, key(NoisePurpose::Background))?;
        let world = match mode {
            NoiseMode::WorldMap => Some(dops::randn(gpu, &[d, map_h + h, map_w], DType::F32, key(NoisePurpose::WorldMap))?),
            _ => None,
        };
        Ok(ViewNoise { mode, config, shape, map_h, map_w, seed, world, background })
    }

    /// Top-left corner (row0, col0) of a view's crop of the world map.
    pub fn origin(&self, v: ViewAngles) -> (u32, u32) {
        let polar = v.polar.clamp(0.0, PI);
        let row0 = (self.map_h as f64 * polar / PI).round() as usize;
        let az = v.azimuth.rem_euclid(2.0 * PI);
        let col0 = ((self.map_w as f64 * az / (2.0 * PI)).round() as usize) % self.map_w;
        (row0.min(self.map_h) as u32, col0 as u32)
    }

    /// The world map ε_p [D, H + h, W] (world-map mode only).
    pub fn world(&self) -> Option<&Tensor> {
        self.world.as_ref()
    }
    pub fn background(&self) -> &Tensor {
        &self.background
    }

    /// ε for a batch of views at `step`: [B, D, h, w] in `dtype`.
    /// `opacity` [B, 1, h·k, w·k] is the rendered opacity (world-map mode).
    pub fn sample(&self, gpu: &Gpu, views: &[ViewAngles], opacity: Option<&Tensor>, step: u32, dtype: DType) -> Result<Tensor> {
        let [d, h, w] = self.shape;
        let b = views.len();
        let fresh = |purpose| dops::randn(gpu, &[b, d, h, w], dtype, NoiseKey { seed: self.seed, step, purpose });
        match self.mode {
            NoiseMode::Random => fresh(NoisePurpose::Fresh),
            NoiseMode::Constant => {
                let one = self.background.reshape(&[1, d, h, w])?;
                let parts: Vec<&Tensor> = std::iter::repeat_n(&one, b).collect();
                gpu.to_dtype(&crate::ops::concat::concat(gpu, &parts, 0)?, dtype)
            }
            NoiseMode::WorldMap => {
                let opacity = opacity.ok_or_else(|| Error::Invalid("world-map noise needs the rendered opacity".into()))?;
                let origins: Vec<u32> = views.iter().flat_map(|&v| { let (r, c) = self.origin(v); [r, c] }).collect();
                let origins = gpu.upload_u32(&origins, &[b, 2])?;
                let fresh = fresh(NoisePurpose::Fresh)?;
                let fresh = gpu.to_dtype(&fresh, DType::F32)?;
                let step_bg;
                let background = if self.config.fixed_background {
                    &self.background
                } else {
                    step_bg = dops::randn(gpu, &[d, h, w], DType::F32, NoiseKey { seed: self.seed, step, purpose: NoisePurpose::Background })?;
                    &step_bg
                };
                worldmap_noise(
                    gpu,
                    &WorldMapInputs {
                        world: self.world.as_ref().expect("world map exists in world-map mode"),
                        background,
                        fresh: &fresh,
                        opacity,
                        origins: &origins,
                        beta: self.config.beta,
                        alpha0: self.config.alpha0,
                    },
                    dtype,
                )
            }
        }
    }
}
