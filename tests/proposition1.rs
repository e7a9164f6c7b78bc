//! Proposition 1 (Eq. 26) in the engine: FSD's first-order update from x̂_T
//! with one fixed ε̃ gives DDIM's image for the same noise, timesteps and CFG.
mod common;
use std::path::Path;

use fsd3d::diffusion::size::ImageSize;
use fsd3d::image2d::{Image2dConfig, Method2d, distill_image};
use fsd3d::gpu::DType;
use fsd3d::models::prior::StableDiffusion;

fn compare(sd: &StableDiffusion, gpu: &fsd3d::gpu::Gpu, steps: usize, cfg: f32, size: ImageSize, what: &str) {
    let run = |m| {
        let c = Image2dConfig { steps, cfg, seed: 5, size, ..Image2dConfig::paper_defaults(m) };
        let img = distill_image(gpu, sd, "a red cube", &c, |_, _, _| {}).unwrap();
        if let ImageSize { height: Some(h), width: Some(w) } = size {
            assert_eq!(img.shape(), &[1, 3, h, w], "{what}: the image has the size asked for");
        }
        gpu.download(&img).unwrap()
    };
    let (euler, ddim) = (run(Method2d::FsdEuler), run(Method2d::Ddim));
    let (lo, hi) = ddim.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let err = euler.iter().zip(&ddim).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max |fsd-euler − ddim| = {err:.2e}, image range {:.3}", hi - lo);
    assert!(hi - lo > 0.1, "{what}: a degenerate image proves nothing");
    assert!(err < 1e-3 * (hi - lo), "{what}: fsd-euler differs from ddim by {err}");
}

#[test]
fn fsd_euler_equals_ddim_on_a_latent_pipeline() {
    let gpu = common::gpu();
    let mut sd = StableDiffusion::load(&gpu, Path::new("tests/fixtures/models/pipeline"), DType::F32).unwrap();
    compare(&sd, &gpu, 8, 7.5, ImageSize::default(), "SD defaults (no clipping)");
    // At a size other than the UNet's sample_size (32×32 here) both start
    // from the same noise of the new shape.
    compare(&sd, &gpu, 8, 7.5, ImageSize::new(16, 24), "16×24");
    // With clip_sample the clipped estimate must be clipped the same way.
    sd.scheduler.clip_sample = true;
    sd.scheduler.set_alpha_to_one = true;
    compare(&sd, &gpu, 6, 4.0, ImageSize::default(), "clip_sample, set_alpha_to_one");
}
