//! Sampler kernels (`shaders/diffusion.wgsl`): classifier-free guidance, the
//! DDIM update, and reproducible Gaussian noise keyed by (seed, step, purpose).
//! FSD's own kernels (the world-map gather, the distillation gradient) are
//! in [`crate::ops::fsd`].

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, expect_float, float_dtypes, grid_for};

crate::kernel_params! {
    struct Params {
        n: u32,
        half: u32,
        prediction: u32,
        clip: u32,
        a: f32,
        b: f32,
        clip_range: f32,
        seed_lo: u32,
        seed_hi: u32,
        step: u32,
        purpose: u32,
        sigma: f32,
    }
}

/// `ddim_noise` is the `ddim` entry point compiled with NOISE (the η > 0 step).
fn key(entry: &'static str, dt: DType) -> KernelKey {
    KernelKey::new("diffusion", if entry == "ddim_noise" { "ddim" } else { entry }).params::<Params>()
        .def("T", dt.wgsl())
        .def("WG", WG_1D)
        .flag("GUIDANCE", entry == "guidance")
        .flag("DDIM", entry == "ddim" || entry == "ddim_noise")
        .flag("NOISE", entry == "ddim_noise")
        .flag("RANDN", entry == "randn")
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}


/// The coefficients of one DDIM step (the kernel applies them; `step` is the CPU reference).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimCoefficients {
    pub alpha_bar_t: f64,
    pub alpha_bar_prev: f64,
    pub prediction: Prediction,
    /// Clamp x̂₀ to ±range (None when `clip_sample` is off).
    pub clip: Option<f64>,
    /// σ_t of the added noise: η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)); 0 is plain (deterministic) DDIM.
    pub sigma: f64,
}


impl DdimCoefficients {
    /// (x̂₀, ε̂) from the model output at x_t.
    pub fn split(&self, x_t: f64, out: f64) -> (f64, f64) {
        let (a, b) = (self.alpha_bar_t.sqrt(), (1.0 - self.alpha_bar_t).sqrt());
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => ((x_t - b * out) / a, out),
            Prediction::Sample => (out, (x_t - a * out) / b),
            Prediction::VPrediction => (a * x_t - b * out, a * out + b * x_t),
        };
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r),
            None => x0,
        };
        (x0, eps)
    }

    /// One DDIM update of one element: x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂ (σ = 0).
    pub fn step(&self, x_t: f64, out: f64) -> f64 {
        self.step_with_noise(x_t, out, 0.0)
    }

    /// One DDIM η-step of one element with the noise draw `z`:
    /// x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ²)·ε̂ + σ·z (diffusers' DDIMScheduler.step with `eta`).
    pub fn step_with_noise(&self, x_t: f64, out: f64, z: f64) -> f64 {
        let (x0, eps) = self.split(x_t, out);
        let s = self.sigma;
        self.alpha_bar_prev.sqrt() * x0 + (1.0 - self.alpha_bar_prev - s * s).max(0.0).sqrt() * eps + s * z
    }
}


pub fn variants(caps: Caps) -> Vec<KernelKey> {
    float_dtypes(caps).into_iter().flat_map(|dt| ["guidance", "ddim", "ddim_noise", "randn"].map(|e| key(e, dt))).collect()
}

/// What a noise stream is for: part of its key, so streams never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NoisePurpose {
    InitialLatents = 1,
    DistillNoise = 2,
    WorldMap = 3,
    Background = 4,
    Fresh = 5,
    /// The noise a stochastic (η > 0) DDIM step adds; `step` is the sampler step (1-based).
    SamplerNoise = 6,
}

/// The key of one noise stream: every random tensor is keyed by (seed, step, purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseKey {
    pub seed: u64,
    pub step: u32,
    pub purpose: NoisePurpose,
}

/// Standard normal noise of `shape`, a pure function of the key.
pub fn randn(gpu: &Gpu, shape: &[usize], dtype: DType, key_: NoiseKey) -> Result<Tensor> {
    let y = gpu.empty(shape, dtype)?;
    let n = y.numel();
    let p = Params {
        n: n as u32,
        seed_lo: key_.seed as u32,
        seed_hi: (key_.seed >> 32) as u32,
        step: key_.step,
        purpose: key_.purpose as u32,
        ..Default::default()
    };
    gpu.dispatch("diffusion.randn", &key("randn", dtype), &p, &[&y], grid_for(gpu, n.div_ceil(2), WG_1D))?;
    Ok(y)
}

/// The same stream on the CPU (reference for tests, and for host-side noise).
pub fn randn_cpu(n: usize, key_: NoiseKey) -> Vec<f32> {
    fn pcg4d(mut v: [u32; 4]) -> [u32; 4] {
        for x in &mut v {
            *x = x.wrapping_mul(1664525).wrapping_add(1013904223);
        }
        let mix = |v: &mut [u32; 4]| {
            v[0] = v[0].wrapping_add(v[1].wrapping_mul(v[3]));
            v[1] = v[1].wrapping_add(v[2].wrapping_mul(v[0]));
            v[2] = v[2].wrapping_add(v[0].wrapping_mul(v[1]));
            v[3] = v[3].wrapping_add(v[1].wrapping_mul(v[2]));
        };
        mix(&mut v);
        for x in &mut v {
            *x ^= *x >> 16;
        }
        mix(&mut v);
        v
    }
    let mut out = vec![0f32; n];
    for k in 0..n.div_ceil(2) {
        let h = pcg4d([k as u32, key_.seed as u32, ((key_.seed >> 32) as u32) ^ (key_.purpose as u32).wrapping_mul(0x9E37_79B9), key_.step]);
        let u1 = ((h[0] >> 8) as f64 + 1.0) / 16777216.0;
        let u2 = (h[1] >> 8) as f64 / 16777216.0;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        out[2 * k] = (r * th.cos()) as f32;
        if 2 * k + 1 < n {
            out[2 * k + 1] = (r * th.sin()) as f32;
        }
    }
    out
}

/// ε̂ = ε_∅ + s·(ε_y − ε_∅) from a model output [2B, ...] holding [uncond; cond].
pub fn guidance(gpu: &Gpu, eps: &Tensor, scale: f32) -> Result<Tensor> {
    expect_float("guidance", eps)?;
    if eps.rank() < 1 || eps.dim(0) % 2 != 0 {
        return Err(Error::shape("guidance", format!("expected [2B, ...] (uncond then cond), got {:?}", eps.shape())));
    }
    let mut shape = eps.shape().to_vec();
    shape[0] /= 2;
    let y = gpu.empty(&shape, eps.dtype())?;
    let n = y.numel();
    let p = Params { n: n as u32, half: n as u32, a: scale, ..Default::default() };
    gpu.dispatch("diffusion.guidance", &key("guidance", eps.dtype()), &p, &[eps, &y], grid_for(gpu, n, WG_1D))?;
    Ok(y)
}

/// One DDIM update of x_t with the (guided) model output. A stochastic step
/// (`c.sigma > 0`, DDIM's η > 0) needs `noise`, a standard normal draw shaped as x.
pub fn ddim_step(gpu: &Gpu, x: &Tensor, model_out: &Tensor, c: &DdimCoefficients, noise: Option<&Tensor>) -> Result<Tensor> {
    expect_float("ddim_step", x)?;
    if x.shape() != model_out.shape() || x.dtype() != model_out.dtype() {
        return Err(Error::shape("ddim_step", format!("x {x:?} and model output {model_out:?} differ")));
    }
    let noise = if c.sigma > 0.0 {
        let z = noise.ok_or_else(|| Error::Invalid(format!("ddim_step: σ = {} (η > 0) needs a noise tensor", c.sigma)))?;
        if z.shape() != x.shape() || z.dtype() != x.dtype() {
            return Err(Error::shape("ddim_step", format!("noise {z:?} is not shaped as x {x:?}")));
        }
        Some(z)
    } else {
        None
    };
    let y = gpu.empty(x.shape(), x.dtype())?;
    let n = y.numel();
    let p = Params {
        n: n as u32,
        prediction: match c.prediction {
            Prediction::Epsilon => 0,
            Prediction::VPrediction => 1,
            Prediction::Sample => 2,
        },
        clip: c.clip.is_some() as u32,
        clip_range: c.clip.unwrap_or(1.0) as f32,
        a: c.alpha_bar_t as f32,
        b: c.alpha_bar_prev as f32,
        sigma: c.sigma as f32,
        ..Default::default()
    };
    match noise {
        Some(z) => gpu.dispatch("diffusion.ddim", &key("ddim_noise", x.dtype()), &p, &[x, model_out, z, &y], grid_for(gpu, n, WG_1D))?,
        None => gpu.dispatch("diffusion.ddim", &key("ddim", x.dtype()), &p, &[x, model_out, &y], grid_for(gpu, n, WG_1D))?,
    }
    Ok(y)
}

