//! The embedded multi-view prior (weights/tiny-shapes-4view, MVDream's
//! architecture on the tiny UNet) in the engine: its UNet against PyTorch
//! (golden outputs by tools/tiny_shapes/make_multiview_golden.py), the
//! sampler drawing an object's views together, the 3D loop on it, and the
//! errors of a multi-view prior used without its views.
mod common;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use fsd3d::diffusion::guidance::Method;
use fsd3d::diffusion::sampler::{SampleRequest, ddim_sample};
use fsd3d::diffusion::size::ImageSize;
use fsd3d::generate::{self as g, Finish, GenerateConfig, Generator};
use fsd3d::gpu::DType;
use fsd3d::models::forward::read_tensors;
use fsd3d::models::prior::{Prior, StableDiffusion};
use fsd3d::models::unet::Extras;

fn close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max abs err {err:.2e}, scale {scale:.3}");
    assert!(err <= rtol * scale, "{what}: {err} over {}", rtol * scale);
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn the_multiview_unet_matches_pytorch_with_and_without_cross_view_attention() {
    let dir = fsd3d::models::embedded_multiview_prior_dir();
    let gold = read_tensors(Path::new("tests/fixtures/tiny_shapes_4view/golden.safetensors")).unwrap();
    for (gpu, dtype) in common::configs() {
        let sd = StableDiffusion::load(&gpu, &dir, dtype).unwrap();
        assert_eq!(sd.num_frames(), Some(4), "fsd3d_prior.json names 4 views");
        let up = |k: &str| gpu.upload(&gold[k].data, &gold[k].shape, DType::F32).unwrap();
        let (x, t, ctx, cam) = (up("unet.sample"), up("unet.timesteps"), up("unet.encoder_hidden_states"), up("unet.camera"));
        let (x, ctx) = (gpu.to_dtype(&x, dtype).unwrap(), gpu.to_dtype(&ctx, dtype).unwrap());
        let tol = if dtype == DType::F16 { 1e-2 } else { 1e-3 };
        let mut outs = vec![];
        for (frames, key) in [(4, "unet.output"), (1, "unet.output_frames1")] {
            let y = sd.unet.forward_views(&gpu, &x, &t, &ctx, &Extras { camera: Some(&cam), frames, lora: None }).unwrap();
            let y = gpu.download(&gpu.to_dtype(&y, DType::F32).unwrap()).unwrap();
            close(&format!("{key} {}", common::label(&gpu, dtype)), &y, &gold[key].data, tol);
            outs.push(y);
        }
        // The views attend to each other: grouping them changes the output
        // (by 0.1 of 5.6 in PyTorch) far beyond the f32 error and 7× the f16 one.
        let d = max_diff(&outs[0], &outs[1]);
        assert!(d > 0.03, "frames 4 and 1 differ by only {d}");
    }
}

#[test]
fn the_sampler_draws_an_objects_views_together() {
    let gpu = common::gpu();
    let sd = StableDiffusion::load(&gpu, &fsd3d::models::embedded_multiview_prior_dir(), DType::F32).unwrap();
    let req = |seed| SampleRequest { prompt: "a red cube".into(), negative: None, steps: 8, cfg: 1.5, eta: 1.0, seed, size: ImageSize::default(), latents: None };
    let a = gpu.download(&ddim_sample(&gpu, &sd, &req(3), |_, _| {}).unwrap()).unwrap();
    assert_eq!(a.len(), 4 * 3 * 32 * 32, "four views of one object");
    // The views are distinct images, and the draw is a function of the seed.
    let view = |k: usize| &a[k * 3072..(k + 1) * 3072];
    assert!(max_diff(view(0), view(2)) > 0.1, "the front and the back view are the same image");
    let again = gpu.download(&ddim_sample(&gpu, &sd, &req(3), |_, _| {}).unwrap()).unwrap();
    assert_eq!(a, again);
    // Initial latents fix one view's noise; a multi-view draw refuses them, saying why.
    let latents = fsd3d::diffusion::size::Latents::new(&[1, 3, 32, 32], vec![0.0; 3 * 32 * 32]).unwrap();
    let e = ddim_sample(&gpu, &sd, &SampleRequest { latents: Some(latents), ..req(3) }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("multi-view"), "{e}");
}

#[test]
fn the_3d_loop_renders_whole_objects_for_a_multiview_prior() {
    let gpu = common::gpu();
    let dir = fsd3d::models::embedded_multiview_prior_dir();
    let kind = g::job::prior_kind(&dir).unwrap();
    let mut cfg = GenerateConfig::defaults("a red cube", Method::Fsd, &kind);
    // The prior's defaults: one object's 4 views a step, with MVDream's rescale.
    assert_eq!((cfg.camera.batch_size, cfg.camera.views_per_object), (4, 4));
    assert_eq!(cfg.guidance.rescale, 0.5);
    cfg.steps = 3;
    cfg.scene.render.samples_per_ray = 32;
    cfg.output.log_every = 1;
    cfg.output.checkpoint_every = 0;
    // The last step is a later stage: two objects, at twice the render size.
    let base = cfg.camera.width;
    let stage = |width| fsd3d::scene::camera::CameraStage { from_step: 2, width, height: width, batch_size: 8 };
    cfg.camera.stages = vec![stage(2 * base)];
    let sd = StableDiffusion::load(&gpu, &dir, DType::F32).unwrap();
    let mut odd = cfg.clone();
    odd.camera.stages = vec![stage(base + 1)];
    let e = Generator::new(&gpu, &sd, odd).err().expect("a stage off the sample grid is refused").to_string();
    assert!(e.contains("the stage from step 2"), "{e}");
    let out = std::env::temp_dir().join(format!("fsd3d-mv-loop-{}", std::process::id()));
    let mut run = Generator::new(&gpu, &sd, cfg.clone()).unwrap();
    let mut rms = vec![];
    let finish = g::optimise(&mut run, &out, &AtomicBool::new(false), |r| rms.extend(r.grad_rms)).unwrap();
    assert_eq!(finish, Finish::Completed);
    assert_eq!(rms.len(), 3);
    assert!(rms.iter().all(|r| r.is_finite() && *r > 0.0), "gradient RMS {rms:?}");
    let toml = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(toml.contains("views_per_object = 4") && toml.contains("rescale = 0.5"), "{toml}");
    std::fs::remove_dir_all(&out).ok();

    // Views drawn one by one cannot feed a prior that wants objects of 4.
    let mut one_by_one = cfg.clone();
    one_by_one.camera.views_per_object = 1;
    let e = Generator::new(&gpu, &sd, one_by_one).err().expect("views_per_object 1 is refused").to_string();
    assert!(e.contains("views_per_object = 4"), "{e}");
}

#[test]
fn a_multiview_prior_without_cameras_and_cameras_without_one_are_errors() {
    let gpu = common::gpu();
    let mv = StableDiffusion::load(&gpu, &fsd3d::models::embedded_multiview_prior_dir(), DType::F32).unwrap();
    let single = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    assert_eq!(single.num_frames(), None);
    let x = gpu.zeros(&[4, 3, 32, 32], DType::F32).unwrap();
    let ctx = mv.embed(&gpu, &["a red cube"; 4]).unwrap();
    let e = mv.predict(&gpu, &x, 500.0, &ctx, None, 1.0, None).unwrap_err().to_string();
    assert!(e.contains("multi-view") && e.contains("camera"), "{e}");
    let cams: Vec<_> = fsd3d::diffusion::sampler::sample_views(4);
    let views = fsd3d::models::prior::ViewCameras::new(&gpu, &cams, 4).unwrap();
    let e = single.predict(&gpu, &x, 500.0, &ctx, None, 1.0, Some(&views)).unwrap_err().to_string();
    assert!(e.contains("not a multi-view prior"), "{e}");
    // Views that do not make whole objects.
    let e = fsd3d::models::prior::ViewCameras::new(&gpu, &cams[..3], 4).err().expect("3 views of 4").to_string();
    assert!(e.contains("objects of 4 views"), "{e}");
    // The 2D loop has one view and no camera.
    let c = fsd3d::image2d::Image2dConfig::paper_defaults(fsd3d::image2d::Method2d::parse("sds").unwrap());
    let e = fsd3d::image2d::distill_image(&gpu, &mv, "a red cube", &c, |_, _, _| {}).err().expect("the 2D loop refuses a multi-view prior").to_string();
    assert!(e.contains("multi-view"), "{e}");
}
