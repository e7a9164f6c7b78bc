//! The DDIM scheduler against diffusers' DDIMScheduler (fixture made by
//! tools/golden/make_scheduler_fixture.py).
use fsd3d::diffusion::schedule::{Ddim, SchedulerConfig};

#[test]
fn ddim_matches_diffusers() {
    let text = std::fs::read_to_string("tests/fixtures/scheduler.json").unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sample: Vec<f64> = serde_json::from_value(fx["sample"].clone()).unwrap();
    let out: Vec<f64> = serde_json::from_value(fx["model_output"].clone()).unwrap();
    let cases = fx["cases"].as_object().unwrap();
    assert!(cases.len() >= 10);
    for (name, c) in cases {
        let cfg: SchedulerConfig = serde_json::from_value(c["config"].clone()).unwrap();
        let steps = c["steps"].as_u64().unwrap() as usize;
        let ddim = Ddim::new(&cfg, steps).unwrap();
        let want_ts: Vec<i64> = serde_json::from_value(c["timesteps"].clone()).unwrap();
        assert_eq!(ddim.timesteps, want_ts, "{name}: timesteps");
        let want_ac: Vec<f64> = serde_json::from_value(c["alphas_cumprod"].clone()).unwrap();
        for (i, t) in [0usize, 1, 250, 500, 998, 999].iter().enumerate() {
            let got = ddim.schedule.alphas_cumprod[*t];
            assert!((got - want_ac[i]).abs() < 1e-6 * want_ac[i].max(1e-3), "{name}: ᾱ[{t}] {got} vs {}", want_ac[i]);
        }
        assert!((ddim.schedule.final_alpha_cumprod - c["final_alpha_cumprod"].as_f64().unwrap()).abs() < 1e-6);
        for (key, t) in [("prev_sample", c["step_t"].as_i64().unwrap()), ("last_prev_sample", *ddim.timesteps.last().unwrap())] {
            let want: Vec<f64> = serde_json::from_value(c[key].clone()).unwrap();
            let coef = ddim.coefficients(t);
            for i in 0..sample.len() {
                let got = coef.step(sample[i], out[i]);
                // diffusers steps in f32.
                assert!((got - want[i]).abs() < 2e-5 * (1.0 + want[i].abs()), "{name} {key} [{i}]: {got} vs {}", want[i]);
            }
        }
    }
}
