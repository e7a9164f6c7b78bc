//! The embedded prior's image classifier (`weights/tiny-shapes/classifier/`):
//! a small CNN with a shape head and a colour head over a penultimate feature
//! layer. It plays the role CLIP and Inception play in the paper's
//! evaluation: prompt fidelity from its probabilities, IS from its
//! predictions, Fréchet distances on its features.
//!
//! `config.json` lists the layers in order (conv2d, group_norm [+ silu],
//! global_avg_pool, linear [+ silu]); layers named `*_head` read the features.
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::config::read_config;
use crate::models::nn::{Conv2d, GroupNorm, Linear, Loader};
use crate::models::weights::{Variant, Weights};
use crate::ops::elementwise as ew;
use crate::ops::matmul::{MatmulOpts, matmul};

#[derive(Debug, Deserialize)]
struct LayerSpec {
    op: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    weight_shape: Vec<usize>,
    #[serde(default)]
    stride: usize,
    #[serde(default)]
    padding: usize,
    #[serde(default)]
    groups: usize,
    #[serde(default)]
    eps: f64,
    #[serde(default)]
    shape: Vec<usize>,
    #[serde(default)]
    then: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClassifierConfig {
    format: String,
    layers: Vec<LayerSpec>,
    shape_labels: Vec<String>,
    colour_labels: Vec<String>,
}

enum Layer {
    Conv(Conv2d),
    Norm(GroupNorm, bool),
    Pool,
    Linear(Linear, bool),
}

/// What the classifier says about a batch of images.
pub struct Classified {
    /// Penultimate features [B, F].
    pub features: Tensor,
    pub shape_logits: Tensor,
    pub colour_logits: Tensor,
}

pub struct Classifier {
    body: Vec<Layer>,
    shape_head: Linear,
    colour_head: Linear,
    pub shape_labels: Vec<String>,
    pub colour_labels: Vec<String>,
}

impl Classifier {
    /// Loads from the classifier folder, or a model folder that has `classifier/`.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Classifier> {
        let dir = if dir.join("classifier").is_dir() { dir.join("classifier") } else { dir.to_path_buf() };
        let cfg: ClassifierConfig = read_config(&dir.join("config.json"))?;
        if cfg.format != "fsd3d-tiny-classifier/1" {
            return Err(Error::Invalid(format!("{}: unknown classifier format {:?}", dir.display(), cfg.format)));
        }
        let weights = Weights::open(&dir, Variant::Full)?;
        let l = Loader { gpu, weights: &weights, dtype: DType::F32 };
        let silu = |s: &LayerSpec| s.then.as_deref() == Some("silu");
        let mut body = Vec::new();
        let (mut shape_head, mut colour_head) = (None, None);
        for s in &cfg.layers {
            let bad = || Error::Invalid(format!("{}: layer {:?} ({}) is malformed", dir.display(), s.name, s.op));
            match s.op.as_str() {
                "conv2d" => {
                    let [o, i, k, _] = s.weight_shape[..] else { return Err(bad()) };
                    body.push(Layer::Conv(Conv2d::load(&l, &s.name, i, o, k, s.stride.max(1), s.padding)?));
                }
                "group_norm" => {
                    let c = *s.shape.first().ok_or_else(bad)?;
                    body.push(Layer::Norm(GroupNorm::load(&l, &s.name, c, s.groups, s.eps)?, silu(s)));
                }
                "global_avg_pool" => body.push(Layer::Pool),
                "linear" => {
                    let [o, i] = s.weight_shape[..] else { return Err(bad()) };
                    let lin = Linear::load(&l, &s.name, i, o, true)?;
                    match s.name.as_str() {
                        "shape_head" => shape_head = Some(lin),
                        "colour_head" => colour_head = Some(lin),
                        _ => body.push(Layer::Linear(lin, silu(s))),
                    }
                }
                other => return Err(Error::Invalid(format!("{}: unknown layer op {other:?}", dir.display()))),
            }
        }
        let missing = |h: &str| Error::Invalid(format!("{}: the classifier has no {h}", dir.display()));
        Ok(Classifier {
            body,
            shape_head: shape_head.ok_or_else(|| missing("shape_head"))?,
            colour_head: colour_head.ok_or_else(|| missing("colour_head"))?,
            shape_labels: cfg.shape_labels,
            colour_labels: cfg.colour_labels,
        })
    }

    /// Images [B, 3, 32, 32] in [-1, 1] (f32) -> features and logits.
    pub fn classify(&self, gpu: &Gpu, images: &Tensor) -> Result<Classified> {
        let mut h = gpu.to_dtype(images, DType::F32)?;
        for layer in &self.body {
            h = match layer {
                Layer::Conv(c) => c.forward(gpu, &h)?,
                Layer::Norm(n, silu) => n.forward(gpu, &h, *silu)?,
                Layer::Pool => global_avg_pool(gpu, &h)?,
                Layer::Linear(lin, silu) => {
                    let y = lin.forward(gpu, &h)?;
                    if *silu { ew::silu(gpu, &y)? } else { y }
                }
            };
        }
        Ok(Classified { shape_logits: self.shape_head.forward(gpu, &h)?, colour_logits: self.colour_head.forward(gpu, &h)?, features: h })
    }

    pub fn shape_index(&self, word: &str) -> Option<usize> {
        self.shape_labels.iter().position(|s| s == word)
    }
    pub fn colour_index(&self, word: &str) -> Option<usize> {
        self.colour_labels.iter().position(|s| s == word)
    }
}

/// [B, C, H, W] -> [B, C]: the mean over H and W, as a product with a ones column.
pub fn global_avg_pool(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::shape("global_avg_pool", format!("expected [B, C, H, W], got {:?}", x.shape())));
    }
    let (b, c, hw) = (x.dim(0), x.dim(1), x.dim(2) * x.dim(3));
    let ones = gpu.upload(&vec![1.0; hw], &[hw, 1], x.dtype())?;
    let opts = MatmulOpts { alpha: 1.0 / hw as f32, ..Default::default() };
    matmul(gpu, &x.reshape(&[b, c, hw])?, &ones, None, &opts)?.reshape(&[b, c])
}
