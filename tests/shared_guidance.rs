//! One guidance for both loops: on the embedded prior, for the same sample,
//! noise, timestep and method, the 3D loop's distillation gradient
//! (`Generator::distillation_gradient`, what `Generator::step` takes) equals
//! the 2D loop's (`AdamGuidance::gradient`, what `fsd3d image` takes) bit
//! for bit, for every method; and both are FSD_SPEC §2's formula, computed
//! here from the prior's own predictions and the schedule's betas.
mod common;

use fsd3d::diffusion::guidance::{Method, Weighting};
use fsd3d::diffusion::prompts::{NFSD_NEGATIVE, ViewDirection};
use fsd3d::generate::{GenerateConfig, Generator, PriorKind};
use fsd3d::gpu::{DType, Gpu, Tensor};
use fsd3d::image2d::{AdamGuidance, Image2dConfig, Method2d};
use fsd3d::models::pixel_prior::PixelPriorSpec;
use fsd3d::models::prior::{Prior, StableDiffusion};

const PROMPT: &str = "a red cube";
const SCALE: f32 = 5.0;
const T: i64 = 600;

/// ᾱ_t of the linear schedule in the embedded prior's scheduler_config.json.
fn alpha_bar(t: i64) -> f64 {
    let (start, end, n) = (1e-4f64, 2e-2f64, 1000);
    (0..=t as usize).map(|i| 1.0 - (start + (end - start) * i as f64 / (n - 1) as f64)).product()
}

/// The prior's ε̂ at x_t for one embedding, guided by `uncond` at `SCALE` when given.
fn predict(gpu: &Gpu, prior: &StableDiffusion, x_t: &Tensor, prompt: &str, uncond: Option<&str>) -> Vec<f32> {
    let cond = prior.embed(gpu, &[prompt]).unwrap();
    let uncond = uncond.map(|u| prior.embed(gpu, &[u]).unwrap());
    let scale = if uncond.is_some() { SCALE } else { 1.0 };
    gpu.download(&prior.predict(gpu, x_t, T as f32, &cond, uncond.as_ref(), scale, None).unwrap()).unwrap()
}

#[test]
fn the_3d_and_2d_loops_take_the_same_gradient_for_every_method() {
    let gpu = common::gpu();
    let dir = fsd3d::models::embedded_prior_dir();
    let prior = StableDiffusion::load(&gpu, &dir, DType::F32).unwrap();
    let kind = PriorKind::Pixel(PixelPriorSpec::load(&dir).unwrap().expect("the embedded prior has fsd3d_prior.json"));
    let sc = prior.scheduler_config();
    assert_eq!((sc.beta_schedule.as_str(), sc.beta_start, sc.beta_end, sc.num_train_timesteps), ("linear", 1e-4, 2e-2, 1000));

    let [c, h, w] = prior.sample_shape();
    let shape = [1, c, h, w];
    let z_host = common::rand_vec(11, c * h * w, -0.9, 0.9);
    let eps_host = common::randn(12, c * h * w);
    let z = gpu.upload(&z_host, &shape, DType::F32).unwrap();
    let eps = gpu.upload(&eps_host, &shape, DType::F32).unwrap();

    // The spec's gradients from the prior's raw predictions at x_t = α_t·z + σ_t·ε.
    let ab = alpha_bar(T);
    let weight = 1.0 - ab; // Weighting::Sds
    let x_t: Vec<f32> = z_host.iter().zip(&eps_host).map(|(&z, &e)| (ab.sqrt() * z as f64 + (1.0 - ab).sqrt() * e as f64) as f32).collect();
    let x_t = gpu.upload(&x_t, &shape, DType::F32).unwrap();
    let guided = predict(&gpu, &prior, &x_t, PROMPT, Some(""));
    let want_noise: Vec<f32> = guided.iter().zip(&eps_host).map(|(&p, &e)| (weight * (p as f64 - e as f64)) as f32).collect();
    let (ey, e0, en) = (predict(&gpu, &prior, &x_t, PROMPT, None), predict(&gpu, &prior, &x_t, "", None), predict(&gpu, &prior, &x_t, NFSD_NEGATIVE, None));
    let want_nfsd: Vec<f32> = (0..ey.len())
        .map(|i| (weight * (SCALE as f64 * (ey[i] as f64 - e0[i] as f64) + (e0[i] as f64 - en[i] as f64))) as f32)
        .collect();

    // CSD: the classifier score alone, s·(ε_y − ε_∅), against zero.
    let want_csd: Vec<f32> = (0..ey.len()).map(|i| (weight * SCALE as f64 * (ey[i] as f64 - e0[i] as f64)) as f32).collect();

    let cases = [
        (Method::Sds, Method2d::Sds),
        (Method::Nfsd, Method2d::Nfsd),
        (Method::Fsd, Method2d::Fsd),
        (Method::FsdConstant, Method2d::Fsd),
        (Method::Csd, Method2d::Csd),
    ];
    for (method3d, method2d) in cases {
        let what = format!("{} / {method2d:?}", method3d.name());
        let mut cfg = GenerateConfig::defaults(PROMPT, method3d, &kind);
        cfg.guidance.cfg = SCALE;
        cfg.guidance.weighting = Weighting::Sds;
        cfg.guidance.grad_clip = 0.0;
        cfg.guidance.view_dependent_prompt = false;
        let run = Generator::new(&gpu, &prior, cfg).unwrap();
        let g3 = gpu.download(&run.distillation_gradient(&z, &eps, T, &[ViewDirection::default()], None).unwrap()).unwrap();

        let c2 = Image2dConfig { cfg: SCALE, weighting: Weighting::Sds, ..Image2dConfig::paper_defaults(method2d) };
        let g2 = gpu.download(&AdamGuidance::new(&gpu, &prior, PROMPT, &c2).unwrap().gradient(&gpu, &z, &eps, T).unwrap()).unwrap();

        assert_eq!(g3.len(), c * h * w, "{what}");
        let differing = g3.iter().zip(&g2).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{what}: {differing} of {} gradient values differ between the 3D and the 2D loop", g3.len());

        let want = match method3d {
            Method::Nfsd => &want_nfsd,
            Method::Csd => &want_csd,
            _ => &want_noise,
        };
        assert!(want.iter().any(|v| v.abs() > 1e-3), "{what}: a vanishing gradient proves nothing");
        // x_t is rounded differently here (f64) than by the kernel (f32).
        common::assert_close(&what, &g3, want, 1e-4);
    }
    // NFSD's and CSD's gradients are other ones: the comparison above can tell them apart.
    for (name, other) in [("NFSD", &want_nfsd), ("CSD", &want_csd)] {
        let apart = want_noise.iter().zip(other).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(apart > 1e-2, "SDS and {name} gradients differ by only {apart}");
    }

    // CSD's negative-prompt term: ω₁·(ε_y − ε_∅) − ω₂·(ε_neg − ε_∅), with
    // NFSD's default negative prompt.
    let w2 = 0.7;
    let want: Vec<f32> = (0..ey.len())
        .map(|i| (weight * (SCALE as f64 * (ey[i] as f64 - e0[i] as f64) - w2 * (en[i] as f64 - e0[i] as f64))) as f32)
        .collect();
    let mut cfg = GenerateConfig::defaults(PROMPT, Method::Csd, &kind);
    cfg.guidance.cfg = SCALE;
    cfg.guidance.weighting = Weighting::Sds;
    cfg.guidance.grad_clip = 0.0;
    cfg.guidance.view_dependent_prompt = false;
    cfg.guidance.negative_weight = w2 as f32;
    let run = Generator::new(&gpu, &prior, cfg.clone()).unwrap();
    let g3 = gpu.download(&run.distillation_gradient(&z, &eps, T, &[ViewDirection::default()], None).unwrap()).unwrap();
    common::assert_close("csd with a negative weight", &g3, &want, 1e-4);
    let apart = want.iter().zip(&want_csd).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(apart > 1e-3, "the negative term changes CSD's gradient by only {apart}");
    // Only CSD has a negative weight.
    cfg.method = Method::Fsd;
    let e = Generator::new(&gpu, &prior, cfg).err().expect("a negative weight outside CSD is refused").to_string();
    assert!(e.contains("negative_weight") && e.contains("csd"), "{e}");
}

#[test]
fn the_2d_guidance_refuses_methods_without_a_gradient() {
    let gpu = common::gpu();
    let prior = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    for m in [Method2d::FsdEuler, Method2d::Ddim] {
        let e = AdamGuidance::new(&gpu, &prior, PROMPT, &Image2dConfig::paper_defaults(m)).err().expect("no Adam guidance").to_string();
        assert!(e.contains("sds, nfsd, fsd and csd"), "{e}");
    }
}
