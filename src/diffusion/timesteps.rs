//! Timestep annealing t(τ) (FSD_SPEC §3): which diffusion timestep step τ of
//! τ_end uses. `t_min`, `t_max` are fractions of the training range.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimestepSchedule {
    /// t ~ U{t_min..t_max} every step (SDS).
    Random { t_min: f64, t_max: f64 },
    /// t ~ U{t_min..t_max(τ)}, the upper end moving linearly from `t_max` to
    /// `t_max_end` over the first `anneal_steps` steps and staying there
    /// (threestudio's `max_step_percent: [0, 0.98, 0.5, 8000]`, its MVDream
    /// setting: large t while the shape forms, then finer detail).
    RandomAnnealed { t_min: f64, t_max: f64, t_max_end: f64, anneal_steps: u64 },
    /// t = t_max − (t_max − t_min)·τ/τ_end (the paper's 2D runs).
    Linear { t_min: f64, t_max: f64 },
    /// t = t_min + (t_max − t_min)·(1 − √(τ/τ_end)) (HiFA; the paper's 3D runs).
    Sqrt { t_min: f64, t_max: f64 },
    /// Piecewise linear through (step, t fraction) points, sorted by step.
    Knots { points: Vec<(u64, f64)> },
}

impl TimestepSchedule {
    pub fn check(&self) -> Result<()> {
        let range_ok = |a: f64, b: f64| (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b) && a <= b;
        match self {
            TimestepSchedule::Random { t_min, t_max } | TimestepSchedule::Linear { t_min, t_max } | TimestepSchedule::Sqrt { t_min, t_max } => {
                if !range_ok(*t_min, *t_max) {
                    return Err(Error::Invalid(format!("timestep range {t_min}..{t_max} must satisfy 0 <= t_min <= t_max <= 1")));
                }
            }
            TimestepSchedule::RandomAnnealed { t_min, t_max, t_max_end, anneal_steps } => {
                if !range_ok(*t_min, *t_max) || !range_ok(*t_min, *t_max_end) || *anneal_steps == 0 {
                    return Err(Error::Invalid(format!(
                        "annealed timestep range {t_min}..{t_max} → {t_min}..{t_max_end} over {anneal_steps} steps must satisfy \
                         0 <= t_min <= t_max, t_max_end <= 1 and anneal over at least one step"
                    )));
                }
            }
            TimestepSchedule::Knots { points } => {
                if points.is_empty() || points.windows(2).any(|w| w[0].0 >= w[1].0) || points.iter().any(|p| !(0.0..=1.0).contains(&p.1)) {
                    return Err(Error::Invalid("timestep knots need increasing steps and t fractions in [0, 1]".into()));
                }
            }
        }
        Ok(())
    }

    /// The timestep (0..T−1) of step `step` out of `total`; `uniform` is a
    /// U[0, 1) draw used by `Random` (keyed by the caller: seed, step).
    pub fn timestep(&self, step: u64, total: u64, num_train: usize, uniform: f64) -> i64 {
        let frac = (step as f64 / total.max(1) as f64).clamp(0.0, 1.0);
        let tmax = (num_train - 1) as f64;
        let t = match self {
            TimestepSchedule::Random { t_min, t_max } => return uniform_between(*t_min, *t_max, tmax, uniform),
            TimestepSchedule::RandomAnnealed { t_min, t_max, t_max_end, anneal_steps } => {
                let a = (step as f64 / *anneal_steps as f64).min(1.0);
                return uniform_between(*t_min, t_max + (t_max_end - t_max) * a, tmax, uniform);
            }
            TimestepSchedule::Linear { t_min, t_max } => t_max - (t_max - t_min) * frac,
            TimestepSchedule::Sqrt { t_min, t_max } => t_min + (t_max - t_min) * (1.0 - frac.sqrt()),
            TimestepSchedule::Knots { points } => {
                let s = step;
                match points.iter().position(|p| p.0 >= s) {
                    None => points.last().unwrap().1,
                    Some(0) => points[0].1,
                    Some(i) => {
                        let (a, b) = (points[i - 1], points[i]);
                        a.1 + (b.1 - a.1) * (s - a.0) as f64 / (b.0 - a.0) as f64
                    }
                }
            }
        };
        (t * tmax).round().clamp(0.0, tmax) as i64
    }
}

/// The whole timestep in [round(lo·tmax), round(hi·tmax)] that the U[0, 1)
/// draw `uniform` picks, each equally likely.
fn uniform_between(lo: f64, hi: f64, tmax: f64, uniform: f64) -> i64 {
    let (lo, hi) = ((lo * tmax).round(), (hi * tmax).round());
    (lo + ((hi - lo + 1.0) * uniform).floor()).min(hi) as i64
}

/// A reproducible U[0, 1) from (seed, step): the same hash family as the noise.
pub fn uniform(seed: u64, step: u64) -> f64 {
    let mut x = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_hit_their_ends() {
        let lin = TimestepSchedule::Linear { t_min: 0.02, t_max: 0.98 };
        assert_eq!(lin.timestep(0, 500, 1000, 0.0), (0.98f64 * 999.0).round() as i64);
        assert_eq!(lin.timestep(500, 500, 1000, 0.0), (0.02f64 * 999.0).round() as i64);
        let sq = TimestepSchedule::Sqrt { t_min: 0.02, t_max: 0.98 };
        // At a quarter of the run √(1/4) = 1/2 of the range is gone.
        assert_eq!(sq.timestep(250, 1000, 1000, 0.0), ((0.02 + 0.96 * 0.5) * 999.0f64).round() as i64);
        let k = TimestepSchedule::Knots { points: vec![(0, 1.0), (100, 0.5), (200, 0.5)] };
        assert_eq!(k.timestep(50, 200, 1001, 0.0), 750);
        assert_eq!(k.timestep(300, 200, 1001, 0.0), 500);
        let r = TimestepSchedule::Random { t_min: 0.02, t_max: 0.98 };
        let ts: Vec<i64> = (0..2000).map(|s| r.timestep(s, 2000, 1000, uniform(1, s))).collect();
        assert!(ts.iter().all(|&t| (20..=979).contains(&t)));
        let mean = ts.iter().sum::<i64>() as f64 / ts.len() as f64;
        assert!((mean - 499.5).abs() < 15.0, "mean {mean}");
    }

    #[test]
    fn the_annealed_range_shrinks_then_stays() {
        let s = TimestepSchedule::RandomAnnealed { t_min: 0.02, t_max: 0.98, t_max_end: 0.5, anneal_steps: 8000 };
        s.check().unwrap();
        // The top of the range: a draw just under 1 lands on it.
        let top = |step| s.timestep(step, 10_000, 1000, 1.0 - 1e-12);
        assert_eq!(top(0), 979);
        assert_eq!(top(4000), (0.74f64 * 999.0).round() as i64, "half way: 0.98 → 0.74");
        assert_eq!(top(8000), 500);
        assert_eq!(top(9999), 500, "stays after the annealing");
        assert_eq!(s.timestep(4000, 10_000, 1000, 0.0), 20, "the bottom stays at t_min");
        let bad = TimestepSchedule::RandomAnnealed { t_min: 0.6, t_max: 0.98, t_max_end: 0.5, anneal_steps: 8000 };
        assert!(bad.check().unwrap_err().to_string().contains("t_max_end"));
    }
}
