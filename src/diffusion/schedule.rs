//! The DDPM noise schedule and the DDIM sampler's timesteps and update, read
//! from a `scheduler_config.json` the way diffusers' DDIMScheduler reads it
//! (including its defaults for keys other schedulers' configs lack).
//!
//! Notation (FSD_SPEC §1): ᾱ_t = Π(1 − β_i), α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t).
use crate::error::{Error, Result};
pub use crate::models::config::{SchedulerConfig, Spacing};
pub use crate::ops::diffusion::{DdimCoefficients, Prediction};

/// The training noise schedule: ᾱ_t for t = 0..T−1.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ used "before" t = 0 by the last DDIM step.
    pub final_alpha_cumprod: f64,
    pub prediction: Prediction,
}

impl NoiseSchedule {
    pub fn new(cfg: &SchedulerConfig) -> Result<NoiseSchedule> {
        let t = cfg.num_train_timesteps;
        let mut betas: Vec<f64> = match (&cfg.trained_betas, cfg.beta_schedule.as_str()) {
            (Some(b), _) => b.clone(),
            (None, "linear") => linspace(cfg.beta_start, cfg.beta_end, t),
            (None, "scaled_linear") => {
                linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), t).iter().map(|b| b * b).collect()
            }
            (None, "squaredcos_cap_v2") => {
                let f = |x: f64| ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..t).map(|i| (1.0 - f((i + 1) as f64 / t as f64) / f(i as f64 / t as f64)).min(0.999)).collect()
            }
            (None, other) => {
                return Err(Error::Invalid(format!(
                    "beta_schedule {other:?} is not supported: expected linear, scaled_linear or squaredcos_cap_v2"
                )));
            }
        };
        if betas.len() != t {
            return Err(Error::Invalid(format!("trained_betas has {} entries for {t} timesteps", betas.len())));
        }
        if cfg.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut acc = 1.0;
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(NoiseSchedule { alphas_cumprod, final_alpha_cumprod, prediction: cfg.prediction_type })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }
    /// ᾱ at timestep t; t < 0 means "after the last step".
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t < 0 { self.final_alpha_cumprod } else { self.alphas_cumprod[t as usize] }
    }
    /// α_t = √ᾱ_t (signal scale).
    pub fn alpha(&self, t: i64) -> f64 {
        self.alpha_bar(t).sqrt()
    }
    /// σ_t = √(1 − ᾱ_t) (noise scale).
    pub fn sigma(&self, t: i64) -> f64 {
        (1.0 - self.alpha_bar(t)).sqrt()
    }
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect()
}

/// Lin et al. 2023, Algorithm 1, as diffusers implements it.
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_ab[0], *sqrt_ab.last().unwrap());
    for v in &mut sqrt_ab {
        *v = (*v - last) * first / (first - last);
    }
    let ab: Vec<f64> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out
}

/// DDIM (η = 0) as diffusers' DDIMScheduler: timesteps and the update.
#[derive(Clone, Debug)]
pub struct Ddim {
    pub schedule: NoiseSchedule,
    pub config: SchedulerConfig,
    /// Inference timesteps, descending.
    pub timesteps: Vec<i64>,
    /// T // n, what diffusers subtracts to find the previous timestep.
    pub step_ratio: i64,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Ddim> {
        let schedule = NoiseSchedule::new(config)?;
        let t = config.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(Error::Invalid(format!("{steps} inference steps: expected 1..={t}")));
        }
        let timesteps: Vec<i64> = match config.timestep_spacing {
            Spacing::Linspace => linspace(0.0, (t - 1) as f64, steps).iter().rev().map(|x| round_half_even(*x)).collect(),
            Spacing::Leading => {
                let r = t / steps;
                (0..steps).rev().map(|i| (i * r) as i64 + config.steps_offset as i64).collect()
            }
            Spacing::Trailing => {
                let r = t as f64 / steps as f64;
                let mut v = Vec::new();
                let mut x = t as f64;
                while x > 0.0 {
                    v.push(round_half_even(x) - 1);
                    x -= r;
                }
                v
            }
        };
        if let Some(bad) = timesteps.iter().find(|&&x| x < 0 || x >= t as i64) {
            return Err(Error::Invalid(format!("timestep {bad} is outside 0..{t}: check steps_offset")));
        }
        Ok(Ddim { schedule, config: config.clone(), timesteps, step_ratio: (t / steps) as i64 })
    }

    /// The timestep the update from `t` lands on (negative after the last).
    pub fn prev_timestep(&self, t: i64) -> i64 {
        t - self.step_ratio
    }

    /// The update from `t` of plain (deterministic, η = 0) DDIM.
    pub fn coefficients(&self, t: i64) -> DdimCoefficients {
        self.coefficients_with_eta(t, 0.0)
    }

    /// The update from `t` with DDIM's η: σ_t = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))
    /// (diffusers' `_get_variance`); η = 1 is DDPM's ancestral step on this grid.
    pub fn coefficients_with_eta(&self, t: i64, eta: f64) -> DdimCoefficients {
        let (a_t, a_prev) = (self.schedule.alpha_bar(t), self.schedule.alpha_bar(self.prev_timestep(t)));
        let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
        DdimCoefficients {
            alpha_bar_t: a_t,
            alpha_bar_prev: a_prev,
            prediction: self.schedule.prediction,
            clip: self.config.clip_sample.then_some(self.config.clip_sample_range),
            sigma: eta * variance.max(0.0).sqrt(),
        }
    }

    /// DDIMScheduler's `init_noise_sigma`.
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}

/// numpy's round (half to even), which diffusers' timestep arithmetic uses.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { (r - x.signum()) as i64 } else { r as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// η = 1 on the full grid is DDPM's ancestral step: σ_t² is the posterior
    /// variance β_t·(1−ᾱ_{t−1})/(1−ᾱ_t) (Ho et al. eq. 7), from the betas.
    #[test]
    fn eta_one_is_the_ddpm_posterior_variance() {
        let mut c = SchedulerConfig::default();
        c.beta_schedule = "linear".into();
        let d = Ddim::new(&c, c.num_train_timesteps).unwrap();
        let t_max = (c.num_train_timesteps - 1) as f64;
        let betas: Vec<f64> = (0..c.num_train_timesteps).map(|i| c.beta_start + (c.beta_end - c.beta_start) * i as f64 / t_max).collect();
        for t in [1i64, 10, 500, 999] {
            let (ab, ab_prev) = (d.schedule.alpha_bar(t), d.schedule.alpha_bar(t - 1));
            let want = betas[t as usize] * (1.0 - ab_prev) / (1.0 - ab);
            let got = d.coefficients_with_eta(t, 1.0).sigma.powi(2);
            assert!((got - want).abs() <= 1e-9 * want.max(1e-12), "t={t}: σ² {got} vs posterior variance {want}");
            assert_eq!(d.coefficients_with_eta(t, 0.0).sigma, 0.0);
            assert!((d.coefficients_with_eta(t, 0.5).sigma - 0.5 * got.sqrt()).abs() < 1e-12);
        }
    }

    /// Ancestral sampling (η = 1) on the full 1000-step grid (DDPM) with the
    /// exact noise predictor of a Gaussian data distribution N(0, s²) ends with
    /// samples of variance s²; a wrong σ would leave too much or too little
    /// noise. (On a coarse grid the ancestral step loses variance by itself:
    /// 50 steps end near 0.79 s², the same in a numpy simulation of the
    /// update, so the grid here is the fine one.)
    #[test]
    fn ancestral_steps_keep_the_data_variance() {
        let mut c = SchedulerConfig::default();
        c.clip_sample = false;
        let d = Ddim::new(&c, 1000).unwrap();
        let s2 = 0.25f64;
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut gauss = move || {
            // Box–Muller on a xorshift stream: a test-local generator, independent of the engine's.
            let mut u = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (a, b) = (u(), u());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        };
        let n = 10_000;
        let mut sum2 = 0.0;
        for _ in 0..n {
            let mut x = gauss();
            for &t in &d.timesteps {
                let ab = d.schedule.alpha_bar(t);
                // E[ε | x_t] for x₀ ~ N(0, s²): x_t ~ N(0, ab·s² + 1 − ab).
                let eps = (1.0 - ab).sqrt() * x / (ab * s2 + 1.0 - ab);
                x = d.coefficients_with_eta(t, 1.0).step_with_noise(x, eps, gauss());
            }
            sum2 += x * x;
        }
        let var = sum2 / n as f64;
        assert!((var - s2).abs() < 0.04 * s2 + 3.0 * s2 * (2.0 / n as f64).sqrt(), "sample variance {var}, data variance {s2}");
        // Without the noise term (σ forced to 0 but the η = 1 direction kept) the variance collapses.
        let mut x = 1.5f64;
        for &t in &d.timesteps {
            let ab = d.schedule.alpha_bar(t);
            let eps = (1.0 - ab).sqrt() * x / (ab * s2 + 1.0 - ab);
            x = d.coefficients_with_eta(t, 1.0).step_with_noise(x, eps, 0.0);
        }
        assert!(x.abs() < 0.1, "with no noise the ancestral mean path must shrink towards 0, got {x}");
    }

    #[test]
    fn numpy_rounding() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(2.6), 3);
    }

    #[test]
    fn spacings_as_diffusers_documents_them() {
        // The table in diffusers' DDIM docs (Lin et al., Table 2): T=1000, 10 steps.
        let mut c = SchedulerConfig::default();
        c.timestep_spacing = Spacing::Leading;
        c.steps_offset = 1;
        assert_eq!(Ddim::new(&c, 10).unwrap().timesteps, vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
        c.timestep_spacing = Spacing::Trailing;
        assert_eq!(Ddim::new(&c, 10).unwrap().timesteps, vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
        c.timestep_spacing = Spacing::Linspace;
        assert_eq!(Ddim::new(&c, 10).unwrap().timesteps, vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
    }

    #[test]
    fn step_recovers_the_clean_sample_from_its_true_noise() {
        // x_t = α x0 + σ ε; with the true ε as the prediction, the final step
        // (to ᾱ = 1) returns x0 exactly, for each parameterisation.
        let cfg = SchedulerConfig { clip_sample: false, ..Default::default() };
        let s = NoiseSchedule::new(&cfg).unwrap();
        let (x0, eps, t) = (0.3, -1.2, 500i64);
        let (a, b) = (s.alpha(t), s.sigma(t));
        let xt = a * x0 + b * eps;
        for (pred, out) in [
            (Prediction::Epsilon, eps),
            (Prediction::Sample, x0),
            (Prediction::VPrediction, a * eps - b * x0),
        ] {
            let c = DdimCoefficients { alpha_bar_t: s.alpha_bar(t), alpha_bar_prev: 1.0, prediction: pred, clip: None, sigma: 0.0 };
            assert!((c.step(xt, out) - x0).abs() < 1e-12, "{pred:?}");
        }
    }
}
