//! End to end: a scene rendered by an independent CPU ray tracer (a red
//! sphere beside a blue cube, Lambert-shaded by a fixed sun, so the colours
//! do not depend on the view; 3×3 supersampled) from 64 random views; the
//! NeRF (hash grid + MLPs, occupancy grid, volume rendering, Adam) is fitted
//! to random rays of those images by MSE and must reach 25 dB PSNR on
//! held-out views within 200 steps (about 29 dB; a minute on lavapipe).
//! Also: one training step records without a single submit.
mod common;
use fsd3d::gpu::{DType, Gpu, GpuOptions, Tensor};
use fsd3d::ops::elementwise as ew;
use fsd3d::ops::render::{RegulariserWeights, Shading};
use fsd3d::scene::camera::Camera;
use fsd3d::scene::{AdamConfig, BackgroundConfig, BackgroundKind, FieldConfig, RayBatch, RenderConfig, RenderOptions, Scene, SceneConfig};
use glam::Vec3;
use rand::{RngExt, SeedableRng, rngs::StdRng};

const RES: u32 = 32;
const RAYS_PER_STEP: usize = 1024;
const STEPS: u64 = 200;

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

/// Samples per pixel axis of the ground truth (box-filtered: soft edges).
const SUPERSAMPLE: u32 = 3;

/// NCHW [3, RES, RES] image of the scene from `cam`, each pixel the mean of
/// SUPERSAMPLE² rays spread over it.
fn ground_truth(cam: &Camera) -> Vec<f32> {
    let s = Sphere { c: Vec3::new(-0.35, 0.0, 0.0), r: 0.3, albedo: Vec3::new(0.9, 0.25, 0.2) };
    let b = Cube { c: Vec3::new(0.35, 0.05, -0.05), h: 0.22, albedo: Vec3::new(0.2, 0.45, 0.9) };
    let hw = (RES * RES) as usize;
    let fine = RES * SUPERSAMPLE;
    let mut img = vec![0.0; 3 * hw];
    for i in 0..fine {
        for j in 0..fine {
            let c = trace(cam.position, cam.ray_direction(i, j, fine, fine), &s, &b) / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            let pix = ((i / SUPERSAMPLE) * RES + j / SUPERSAMPLE) as usize;
            for ch in 0..3 {
                img[ch * hw + pix] += c[ch];
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

/// Whole views: rays and target images (host, NCHW per view) of each camera.
struct Views {
    rays: Vec<f32>,
    target: Vec<f32>,
    cams: Vec<Camera>,
}

fn views(cams: Vec<Camera>) -> Views {
    let mut rays = Vec::new();
    let mut target = Vec::new();
    for c in &cams {
        rays.extend(c.rays(RES, RES));
        target.extend(ground_truth(c));
    }
    Views { rays, target, cams }
}

/// `n` random pixels of random training views (instant-ngp style), as one
/// "view" of n×1 pixels: rays on the device and the targets `[1, 3, n]`.
fn ray_batch(gpu: &Gpu, v: &Views, n: usize, step: u64) -> (RayBatch, Tensor) {
    let mut rng = StdRng::seed_from_u64(1000 + step);
    let hw = (RES * RES) as usize;
    let mut rays = Vec::with_capacity(n * 8);
    let mut target = vec![0.0; 3 * n];
    for i in 0..n {
        let view = rng.random_range(0..v.cams.len());
        let pix = rng.random_range(0..hw);
        let r = view * hw + pix;
        rays.extend_from_slice(&v.rays[8 * r..8 * r + 8]);
        for c in 0..3 {
            target[c * n + i] = v.target[view * 3 * hw + c * hw + pix];
        }
    }
    let rt = gpu.upload(&rays, &[n, 8], DType::F32).unwrap();
    (RayBatch::from_tensor(rt, vec![Vec3::ZERO], n as u32, 1).unwrap(), gpu.upload(&target, &[1, 3, n], DType::F32).unwrap())
}

fn config() -> SceneConfig {
    SceneConfig {
        field: FieldConfig {
            radius: 1.0,
            levels: 8,
            features_per_level: 2,
            log2_table_size: 14,
            base_resolution: 4,
            per_level_scale: 1.6,
            hidden: 16,
            ..Default::default()
        },
        background: BackgroundConfig { kind: BackgroundKind::Solid, color: [1.0, 1.0, 1.0], ..Default::default() },
        render: RenderConfig { samples_per_ray: 64, occupancy_resolution: 16, occupancy_interval: 8, ..Default::default() },
        // A small scene fitted directly (no distillation): instant-ngp's faster rates.
        adam: AdamConfig { lr_grid: 0.03, lr_mlp: 0.03, ..Default::default() },
        ..Default::default()
    }
}

/// Records one training step: occupancy update (every few steps), render,
/// MSE gradient, backward, Adam.
fn train_step(gpu: &Gpu, scene: &mut Scene, batch: &(RayBatch, Tensor), step: u64) {
    scene.update_occupancy(gpu, step).unwrap();
    let r = scene.render(gpu, &batch.0, &RenderOptions::training(Shading::Albedo, step, false)).unwrap();
    let n = batch.1.numel() as f32;
    let d_rgb = ew::scale(gpu, &ew::sub(gpu, &r.images.rgb, &batch.1).unwrap(), 2.0 / n).unwrap();
    scene.backward(gpu, &r, &d_rgb, None, &RegulariserWeights::default()).unwrap();
    scene.optimizer_step(gpu, 1.0).unwrap();
}

/// PSNR of whole held-out views, rendered with mid-step samples.
fn psnr(gpu: &Gpu, scene: &Scene, held_out: &Views) -> f64 {
    let rb = RayBatch::new(gpu, &held_out.cams, RES, RES).unwrap();
    let r = scene.render(gpu, &rb, &RenderOptions { normals: false, normal_image: false, ..RenderOptions::eval(Shading::Albedo) }).unwrap();
    let got = gpu.download(&r.images.rgb).unwrap();
    let mse = got.iter().zip(&held_out.target).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / got.len() as f64;
    10.0 * (1.0 / mse).log10()
}

#[test]
fn nerf_fits_a_ray_traced_scene() {
    let gpu = common::gpu();
    let train = views(random_views(1, 64));
    let held_out = views(random_views(2, 4));
    let mut scene = Scene::new(&gpu, &config(), 0).unwrap();
    let steps = STEPS;
    let started = std::time::Instant::now();
    let mut last = 0.0;
    for step in 0..steps {
        train_step(&gpu, &mut scene, &ray_batch(&gpu, &train, RAYS_PER_STEP, step), step);
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
    let train = views(random_views(3, 4));
    let mut scene = Scene::new(&gpu, &config(), 0).unwrap();
    let batch = ray_batch(&gpu, &train, RAYS_PER_STEP, 0);
    gpu.sync().unwrap();
    let before = gpu.submit_count();
    train_step(&gpu, &mut scene, &batch, 0);
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
    let train = views(random_views(1, 64));
    let mut scene = Scene::new(&gpu, &config(), 0).unwrap();
    for step in 0..30u64 {
        let batch = ray_batch(&gpu, &train, RAYS_PER_STEP, step);
        if step == 10 {
            gpu.sync().unwrap();
            gpu.profile_reset();
        }
        train_step(&gpu, &mut scene, &batch, step);
        gpu.sync().unwrap();
    }
    let batch = ray_batch(&gpu, &train, RAYS_PER_STEP, 0);
    let r = scene.render(&gpu, &batch.0, &RenderOptions::training(Shading::Albedo, 0, false)).unwrap();
    eprintln!("{:?}", fsd3d::ops::render::MarchInfo::read(&gpu, &r.marched).unwrap());
    eprintln!("{}", fsd3d::gpu::profile::format_report(&gpu.profile_report(), gpu.profile_uses_timestamps()));
}
