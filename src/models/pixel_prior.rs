//! `fsd3d_prior.json`: what a pixel-space prior was trained on (its cameras,
//! light, shading, background and resolution), written by the script that
//! made its data. A 3D run on such a prior renders from the same
//! distribution, so the renders look like the images the model knows
//! (FSD_SPEC §5, last paragraph).
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const FILE_NAME: &str = "fsd3d_prior.json";
pub const FORMAT: &str = "fsd3d-pixel-prior/1";

/// The parts of `fsd3d_prior.json` the 3D loop uses (the file says more, for people).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PixelPriorSpec {
    pub format: String,
    /// Square image side the model was trained at.
    pub resolution: usize,
    /// Background colour of the training renders, linear RGB in [0, 1].
    pub background: [f32; 3],
    pub up_axis: String,
    pub camera: CameraRanges,
    pub light: LightSpec,
    pub shading: ShadingSpec,
    /// The DDIM settings its samples are judged with (absent in older files).
    #[serde(default)]
    pub sampling: Option<SamplingSpec>,
    /// A multi-view prior's views (absent for text-to-image priors).
    #[serde(default)]
    pub views: Option<ViewsSpec>,
}

/// How a multi-view prior was trained: `num_frames` views of each object,
/// `azimuth_spacing_deg` apart, sharing elevation, distance and fovy.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct ViewsSpec {
    pub num_frames: usize,
    pub azimuth_spacing_deg: f32,
}

/// How to sample a prior: DDIM steps, guidance scale and η. A small prior
/// trained from scratch can want other settings than Stable Diffusion's
/// (the embedded one binds the shape word only with little guidance and a
/// stochastic sampler; see its MODEL_CARD.md).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct SamplingSpec {
    pub steps: usize,
    pub cfg: f32,
    pub eta: f32,
}

impl SamplingSpec {
    /// diffusers' StableDiffusionPipeline defaults: 50 steps, guidance 7.5, deterministic DDIM.
    pub const DIFFUSERS: SamplingSpec = SamplingSpec { steps: 50, cfg: 7.5, eta: 0.0 };

    /// The settings `dir/fsd3d_prior.json` names, else [`SamplingSpec::DIFFUSERS`].
    pub fn for_model(dir: &Path) -> Result<SamplingSpec> {
        Ok(PixelPriorSpec::load(dir)?.and_then(|s| s.sampling).unwrap_or(SamplingSpec::DIFFUSERS))
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CameraRanges {
    pub elevation_deg: [f32; 2],
    pub azimuth_deg: [f32; 2],
    pub distance: [f32; 2],
    pub fovy_deg: [f32; 2],
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LightSpec {
    /// Light direction = normalize(cam_pos + perturb·N(0, I)).
    pub perturb: f32,
    pub distance: [f32; 2],
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ShadingSpec {
    pub ambient: f32,
    pub diffuse: f32,
}

impl PixelPriorSpec {
    /// Reads `dir/fsd3d_prior.json`; `Ok(None)` when the folder has none.
    pub fn load(dir: &Path) -> Result<Option<PixelPriorSpec>> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Invalid(format!("reading {}: {e}", path.display())))?;
        let spec: PixelPriorSpec = serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        if spec.format != FORMAT {
            return Err(Error::Invalid(format!("{}: format {:?}, expected {FORMAT:?}", path.display(), spec.format)));
        }
        if spec.up_axis != "z" {
            return Err(Error::Invalid(format!("{}: up_axis {:?}; the engine's cameras are z-up", path.display(), spec.up_axis)));
        }
        if spec.resolution == 0 {
            return Err(Error::Invalid(format!("{}: resolution must be positive", path.display())));
        }
        if let Some(v) = spec.views {
            if v.num_frames == 0 || (v.azimuth_spacing_deg * v.num_frames as f32 - 360.0).abs() > 1e-3 {
                return Err(Error::Invalid(format!(
                    "{}: views: {} views {}° apart do not go once around the object; the engine draws views 360/num_frames degrees apart",
                    path.display(),
                    v.num_frames,
                    v.azimuth_spacing_deg
                )));
            }
        }
        Ok(Some(spec))
    }
}
