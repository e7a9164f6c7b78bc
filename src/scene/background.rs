//! The background behind the object: a solid colour, or threestudio's
//! `neural-environment-map-background` (spherical harmonics of the view
//! direction → a small ReLU MLP → sigmoid).
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::mlp::{self, MlpShape, OutputAct};
use crate::ops::render::Background as BackgroundSource;
use crate::scene::camera::{purpose, rng_for};

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundKind {
    /// `color` everywhere.
    Solid,
    /// Learned from the view direction.
    Mlp,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConfig {
    pub kind: BackgroundKind,
    /// The solid colour.
    pub color: [f32; 3],
    /// Spherical-harmonics degree of the direction encoding (degree² inputs).
    pub sh_degree: u32,
    pub hidden: usize,
    pub hidden_layers: usize,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig { kind: BackgroundKind::Mlp, color: [1.0, 1.0, 1.0], sh_degree: 3, hidden: 16, hidden_layers: 2 }
    }
}

/// The background's parameters (none when solid).
pub struct Background {
    pub cfg: BackgroundConfig,
    pub shape: Option<MlpShape>,
    pub weights: Option<Tensor>,
}

impl Background {
    pub fn new(gpu: &Gpu, cfg: &BackgroundConfig, seed: u64) -> Result<Background> {
        if cfg.kind == BackgroundKind::Solid {
            return Ok(Background { cfg: cfg.clone(), shape: None, weights: None });
        }
        let shape = MlpShape::new((cfg.sh_degree * cfg.sh_degree) as usize, cfg.hidden, cfg.hidden_layers, 3);
        shape.validate()?;
        let mut rng = rng_for(seed, 1, purpose::INIT);
        let mut w = Vec::with_capacity(shape.n_weights());
        for d in shape.dims.windows(2) {
            let b = 1.0 / (d[0] as f32).sqrt();
            w.extend((0..d[0] * d[1]).map(|_| rng.random_range(-b..=b)));
        }
        let weights = gpu.upload(&w, &[w.len()], DType::F32)?;
        Ok(Background { cfg: cfg.clone(), shape: Some(shape), weights: Some(weights) })
    }

    /// The colour behind each ray (f32 `[n, 8]` rays): `[n, 3]`, or None for a solid colour.
    pub fn colors(&self, gpu: &Gpu, rays: &Tensor) -> Result<Option<Tensor>> {
        let (Some(shape), Some(w)) = (&self.shape, &self.weights) else { return Ok(None) };
        let enc = mlp::sh_encode(gpu, rays, self.cfg.sh_degree)?;
        Ok(Some(mlp::forward(gpu, shape, w, &enc, OutputAct::Sigmoid)?))
    }

    /// What compositing takes, given [`Background::colors`]' result.
    pub fn source<'a>(&self, colors: Option<&'a Tensor>) -> BackgroundSource<'a> {
        match colors {
            Some(t) => BackgroundSource::PerRay(t),
            None => BackgroundSource::Solid(self.cfg.color),
        }
    }

    /// Adds dL/dweights to `grad` for dL/dcolour `[n, 3]`.
    pub fn backward(&self, gpu: &Gpu, rays: &Tensor, d_colors: &Tensor, grad: &Tensor) -> Result<()> {
        let (Some(shape), Some(w)) = (&self.shape, &self.weights) else { return Ok(()) };
        let enc = mlp::sh_encode(gpu, rays, self.cfg.sh_degree)?;
        mlp::backward(gpu, shape, w, &enc, d_colors, OutputAct::Sigmoid, grad, false)?;
        Ok(())
    }
}
