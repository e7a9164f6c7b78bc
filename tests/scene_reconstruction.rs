//! End to end: a scene rendered by an independent CPU ray tracer (a red
//! sphere beside a blue cube, Lambert-shaded by a fixed sun, so the colours
//! do not depend on the view) from random views; the NeRF (hash grid + MLPs,
//! occupancy grid, volume rendering, Adam) is fitted to those images by MSE
//! and must reach 25 dB PSNR on held-out views. Also: one training step
//! records without a single submit.
mod common;
use fsd3d::gpu::{DType, Gpu, GpuOptions, Tensor};
use fsd3d::ops::elementwise as ew;
use fsd3d::ops::render::{RegulariserWeights, Shading};
use fsd3d::scene::camera::Camera;
use fsd3d::scene::{BackgroundKind, FieldConfig, RayBatch, RenderOptions, Scene, SceneConfig};
use glam::Vec3;
use rand::{RngExt, SeedableRng, rngs::StdRng};

const RES: u32 = 32;
const VIEWS_PER_STEP: usize = 4;

struct Sphere {
    c: Vec3,
    r: f32,
    albedo: Vec3,
}
struct Cube {
    c: Vec3,
    h: f32,
    albedo: Vec3,
}

const SUN: Vec3 = Vec3::new(0.3, -0.4, 0.85);

/// The CPU ray tracer: nearest hit of the sphere and the cube, colour
/// albedo·(0.3 + 0.7·max(0, n·sun)), white where nothing is hit.
fn trace(o: Vec3, d: Vec3, s: &Sphere, b: &Cube) -> Vec3 {
    let mut best = (f32::INFINITY, Vec3::ZERO, Vec3::ONE);
    // Sphere: |o + t d − c|² = r².
    let oc = o - s.c;
    let (bq, cq) = (oc.dot(d), oc.dot(oc) - s.r * s.r);
    let disc = bq * bq - cq;
    if disc > 0.0 {
        let t = -bq - disc.sqrt();
        if t > 0.0 && t < best.0 {
            best = (t, (o + t * d - s.c).normalize(), s.albedo);
        }
    }
    // Cube: slabs.
    let (mut t0, mut t1, mut axis) = (f32::NEG_INFINITY, f32::INFINITY, 0);
    for a in 0..3 {
        let (lo, hi) = ((b.c[a] - b.h - o[a]) / d[a], (b.c[a] + b.h - o[a]) / d[a]);
        let (n, f) = (lo.min(hi), lo.max(hi));
        if n > t0 {
            t0 = n;
            axis = a;
        }
        t1 = t1.min(f);
    }
    if t0 < t1 && t0 > 0.0 && t0 < best.0 {
        let mut n = Vec3::ZERO;
        n[axis] = -d[axis].signum();
        best = (t0, n, b.albedo);
    }
    if best.0.is_infinite() {
        return Vec3::ONE;
    }
    best.2 * (0.3 + 0.7 * best.1.dot(SUN.normalize()).max(0.0))
}

/// NCHW [3, RES, RES] image of the scene from `cam`.
fn ground_truth(cam: &Camera) -> Vec<f32> {
    let s = Sphere { c: Vec3::new(-0.35, 0.0, 0.0), r: 0.3, albedo: Vec3::new(0.9, 0.25, 0.2) };
    let b = Cube { c: Vec3::new(0.35, 0.05, -0.05), h: 0.22, albedo: Vec3::new(0.2, 0.45, 0.9) };
    let hw = (RES * RES) as usize;
    let mut img = vec![0.0; 3 * hw];
    for i in 0..RES {
        for j in 0..RES {
            let c = trace(cam.position, cam.ray_direction(i, j, RES, RES), &s, &b);
            for ch in 0..3 {
                img[ch * hw + (i * RES + j) as usize] = c[ch];
            }
        }
    }
    img
}

fn random_views(seed: u64, n: usize) -> Vec<Camera> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| Camera::orbit(rng.random_range(-15.0..60.0), rng.random_range(-180.0..180.0), rng.random_range(2.0..2.4), 45.0))
        .collect()
}

/// Views in batches of VIEWS_PER_STEP: rays and target images on the device.
fn batches(gpu: &Gpu, cams: &[Camera]) -> Vec<(RayBatch, Tensor, Vec<f32>)> {
    cams.chunks(VIEWS_PER_STEP)
        .map(|c| {
            let target: Vec<f32> = c.iter().flat_map(ground_truth).collect();
            let t = gpu.upload(&target, &[c.len(), 3, (RES * RES) as usize], DType::F32).unwrap();
            (RayBatch::new(gpu, c, RES, RES).unwrap(), t, target)
        })
        .collect()
}

fn config() -> SceneConfig {
    let mut cfg = SceneConfig::default();
    cfg.field = FieldConfig {
        radius: 1.0,
        levels: 8,
        features_per_level: 2,
        log2_table_size: 14,
        base_resolution: 4,
        per_level_scale: 1.6,
        hidden: 32,
        ..Default::default()
    };
    cfg.background.kind = BackgroundKind::Solid;
    cfg.background.color = [1.0, 1.0, 1.0];
    cfg.render.samples_per_ray = 128;
    cfg.render.occupancy_interval = 8;
    cfg
}

/// Records one training step: occupancy update (every few steps), render,
/// MSE gradient, backward, Adam.
fn train_step(gpu: &Gpu, scene: &mut Scene, batch: &(RayBatch, Tensor, Vec<f32>), step: u64) {
    scene.update_occupancy(gpu, step).unwrap();
    let r = scene.render(gpu, &batch.0, &RenderOptions::training(Shading::Albedo, step, false)).unwrap();
    let n = batch.1.numel() as f32;
    let d_rgb = ew::scale(gpu, &ew::sub(gpu, &r.images.rgb, &batch.1).unwrap(), 2.0 / n).unwrap();
    scene.backward(gpu, &r, &d_rgb, None, &RegulariserWeights::default()).unwrap();
    scene.optimizer_step(gpu, 1.0).unwrap();
}

fn psnr(gpu: &Gpu, scene: &Scene, held_out: &[(RayBatch, Tensor, Vec<f32>)]) -> f64 {
    let mut se = 0.0;
    let mut count = 0usize;
    for (rays, _, target) in held_out {
        let r = scene.render(gpu, rays, &RenderOptions { normals: false, normal_image: false, ..RenderOptions::eval(Shading::Albedo) }).unwrap();
        let got = gpu.download(&r.images.rgb).unwrap();
        se += got.iter().zip(target).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        count += got.len();
    }
    10.0 * (1.0 / (se / count as f64)).log10()
}

#[test]
fn nerf_fits_a_ray_traced_scene() {
    let gpu = common::gpu();
    let train = batches(&gpu, &random_views(1, 24));
    let held_out = batches(&gpu, &random_views(2, 4));
    let mut scene = Scene::new(&gpu, &config(), 0).unwrap();
    let steps = 400u64;
    let started = std::time::Instant::now();
    let mut last = 0.0;
    for step in 0..steps {
        train_step(&gpu, &mut scene, &train[step as usize % train.len()], step);
        if step % 50 == 0 || step + 1 == steps {
            last = psnr(&gpu, &scene, &held_out);
            eprintln!(
                "step {step:4}: held-out PSNR {last:5.2} dB, occupied {:.1}% ({:.1} s)",
                100.0 * scene.occupancy.occupied_fraction(&gpu).unwrap(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    assert!(last >= 25.0, "held-out PSNR {last:.2} dB after {steps} steps");
}

#[test]
fn a_training_step_records_without_submitting() {
    // A private device: other tests' readbacks must not count.
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let train = batches(&gpu, &random_views(3, VIEWS_PER_STEP));
    let mut scene = Scene::new(&gpu, &config(), 0).unwrap();
    gpu.sync().unwrap();
    let before = gpu.submit_count();
    train_step(&gpu, &mut scene, &train[0], 0);
    assert_eq!(gpu.submit_count(), before, "ops never submit");
    gpu.flush().unwrap();
    assert_eq!(gpu.submit_count(), before + 1, "a whole step is one submit");
    gpu.sync().unwrap();
}

/// Per-kernel times of a few training steps (`cargo test --test
/// scene_reconstruction -- --ignored --nocapture profile`).
#[test]
#[ignore]
fn profile_training_steps() {
    let gpu = Gpu::new(&GpuOptions { profile: true, ..Default::default() }).unwrap();
    let train = batches(&gpu, &random_views(1, 24));
    let mut scene = Scene::new(&gpu, &config(), 0).unwrap();
    for step in 0..30u64 {
        if step == 10 {
            gpu.sync().unwrap();
            gpu.profile_reset();
        }
        train_step(&gpu, &mut scene, &train[step as usize % train.len()], step);
        gpu.sync().unwrap();
    }
    let r = scene.render(&gpu, &train[0].0, &RenderOptions::training(Shading::Albedo, 0, false)).unwrap();
    eprintln!("{:?}", fsd3d::ops::render::MarchInfo::read(&gpu, &r.marched).unwrap());
    eprintln!("{}", fsd3d::gpu::profile::format_report(&gpu.profile_report(), gpu.profile_uses_timestamps()));
}
