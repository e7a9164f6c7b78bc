//! Bench cases of the 3D side at threestudio's sizes: the fused field
//! (hash grid 16 levels × 2 features × 2^19, MLPs of 64) forward + backward
//! over a batch of points, a whole render forward + backward of 64×64 rays
//! with up to 512 samples each, and the Adam step over all parameters.
//!
//! Then the same work at the embedded prior's size (`generate`'s default
//! scene: grid 8 levels × 2 features × 2^16, MLPs of 32, 128 samples a ray
//! through the box): the field over a training render's worth of points, and
//! an evaluation render of 96² rays forward alone (what the outputs do 24
//! times).
//!
//! Throughput in points/s or rays/s is the `shape`'s count divided by `ms`.
//! FLOP counts are estimates (MLP multiply-adds and trilinear blends only).
use crate::bench::Case;
use crate::error::Result;
use crate::gpu::{DType, Gpu};
use crate::ops::hashgrid::{self, FieldPoints, NormalKind};
use crate::ops::render::RegulariserWeights;
use crate::scene::camera::{Camera, RayBatch};
use crate::scene::{RenderOptions, Scene, SceneConfig};
use crate::ops::render::Shading;

/// Deterministic pseudo-random values in [lo, hi).
fn fill(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            lo + (hi - lo) * (s >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect()
}

/// Forward FLOPs of one field row: two trilinear blends per level and feature
/// over 8 corners, the first layers of both heads and their outputs.
fn field_row_flops(cfg: &SceneConfig) -> f64 {
    let f = &cfg.field;
    let inputs = (f.levels * f.features_per_level) as f64;
    let h = f.hidden as f64;
    2.0 * 8.0 * inputs + 2.0 * (2.0 * inputs * h + 4.0 * h)
}

/// Forward FLOPs of one point's analytic normal on top of its row: the
/// Jacobian blend (3 per corner and feature), r = ∂z/∂x and Σ r_i·J_i.
fn analytic_normal_flops(cfg: &SceneConfig) -> f64 {
    let f = &cfg.field;
    let inputs = (f.levels * f.features_per_level) as f64;
    2.0 * 8.0 * 3.0 * inputs + 2.0 * inputs * f.hidden as f64 + 6.0 * inputs
}

/// The field's forward and backward at `points` points, without normals or
/// with normals of `normals` kind.
fn field_case<'a>(gpu: &'a Gpu, points: usize, normals: Option<NormalKind>) -> Result<Case<'a>> {
    field_case_of(gpu, SceneConfig::default(), "grid 16x2x2^19, mlp 64", points, normals)
}

/// The embedded prior's scene (`generate::config`'s pixel-prior defaults:
/// the field and the marching; its translucent objects are not pruned).
fn embedded_prior_scene() -> SceneConfig {
    let mut cfg = SceneConfig::default();
    let f = &mut cfg.field;
    (f.levels, f.features_per_level, f.log2_table_size, f.base_resolution, f.per_level_scale, f.hidden) = (8, 2, 16, 16, 1.42, 32);
    let r = &mut cfg.render;
    (r.samples_per_ray, r.max_samples_total, r.prune_occluded) = (128, 1 << 18, false);
    cfg
}

fn field_case_of<'a>(gpu: &'a Gpu, mut cfg: SceneConfig, size: &str, points: usize, normals: Option<NormalKind>) -> Result<Case<'a>> {
    if let Some(kind) = normals {
        cfg.field.normal_type = kind;
    }
    let scene = Scene::new(gpu, &cfg, 0)?;
    let analytic = normals == Some(NormalKind::Analytic);
    let normals = normals.is_some();
    let k = scene.field.spec.values_per_point(normals) as usize;
    let pts = gpu.upload(&fill(points * 3, 1, -0.6, 0.6), &[points, 3], DType::F32)?;
    let d_density = gpu.upload(&fill(points * k, 2, -1.0, 1.0), &[points, k], DType::F32)?;
    let d_albedo = gpu.upload(&fill(points * 3, 3, -1.0, 1.0), &[points, 3], DType::F32)?;
    let rows = (points * scene.field.spec.rows_per_point(normals) as usize) as f64;
    let row_flops = field_row_flops(&cfg) + if analytic { analytic_normal_flops(&cfg) } else { 0.0 };
    let flops = rows * row_flops * 4.0; // forward, then backward ≈ 3 forwards
    let bytes = rows * (16.0 * 8.0 * 2.0 * 4.0) * 3.0; // table reads (forward, backward) and scatters
    let what = match (normals, analytic) {
        (false, _) => "",
        (true, true) => " +analytic normals",
        (true, false) => " +fd normals",
    };
    Ok(Case {
        kernel: format!("scene.field fwd+bwd{what}"),
        shape: format!("{points} points x {} rows, {size}", rows as usize / points),
        dtype: DType::F32,
        flops,
        bytes,
        record: Box::new(move || {
            let f = &scene.field;
            let (_d, _a) = hashgrid::field_forward(gpu, &f.spec, &f.table, &f.mlp, FieldPoints::Points(&pts), normals)?;
            hashgrid::field_backward(
                gpu,
                &f.spec,
                &f.table,
                &f.mlp,
                FieldPoints::Points(&pts),
                normals,
                &d_density,
                &d_albedo,
                scene.adam.grad(crate::scene::GROUP_GRID)?,
                scene.adam.grad(crate::scene::GROUP_MLP)?,
            )
        }),
    })
}

/// A render of `res`² rays from one camera, forward and backward, with the
/// occupancy grid all set (`blob` false: every one of the 512 samples per ray
/// through the box) or updated from the initial blob density.
fn render_case<'a>(gpu: &'a Gpu, res: u32, shading: Shading, blob: bool) -> Result<Case<'a>> {
    let cfg = SceneConfig::default();
    let scene = Scene::new(gpu, &cfg, 0)?;
    if blob {
        scene.update_occupancy(gpu, 0)?;
    }
    let cam = Camera::orbit(15.0, 30.0, 1.75, 55.0);
    let rays = RayBatch::new(gpu, &[cam], res, res)?;
    let n = (res * res) as usize;
    let d_rgb = gpu.upload(&fill(3 * n, 4, -1e-3, 1e-3), &[1, 3, n], DType::F32)?;
    let opts = RenderOptions::training(shading, 1, shading != Shading::Albedo);
    let reg = RegulariserWeights { orientation: if opts.normals { 10.0 } else { 0.0 }, sparsity: 1.0, opaque: 0.0 };
    let samples = n as f64 * cfg.render.samples_per_ray as f64;
    let k = scene.field.spec.rows_per_point(opts.normals) as f64;
    let analytic = opts.normals && cfg.field.normal_type == NormalKind::Analytic;
    let row_flops = field_row_flops(&cfg) + if analytic { analytic_normal_flops(&cfg) } else { 0.0 };
    Ok(Case {
        kernel: format!("scene.render fwd+bwd {shading:?}").to_lowercase(),
        shape: format!("{res}x{res} rays x {} samples ({})", cfg.render.samples_per_ray, if blob { "blob occupancy" } else { "all occupied" }),
        dtype: DType::F32,
        // At most: every sample of every ray (all occupied).
        flops: if blob { 0.0 } else { samples * k * row_flops * 4.0 },
        bytes: 0.0,
        record: Box::new(move || {
            let r = scene.render(gpu, &rays, &opts)?;
            scene.backward(gpu, &r, &d_rgb, None, &reg)
        }),
    })
}

/// An evaluation render of the embedded prior's scene, forward alone, read
/// back: `res`² rays from one camera through the initial blob's occupancy.
fn eval_render_case(gpu: &Gpu, res: u32) -> Result<Case<'_>> {
    let cfg = embedded_prior_scene();
    let scene = Scene::new(gpu, &cfg, 0)?;
    scene.update_occupancy(gpu, 0)?;
    let cam = Camera::orbit(17.5, 30.0, 1.85, 42.5);
    Ok(Case {
        kernel: "scene.render eval fwd".into(),
        shape: format!("{res}x{res} rays x {} samples (blob occupancy), grid 8x2x2^16, mlp 32", cfg.render.samples_per_ray),
        dtype: DType::F32,
        flops: 0.0,
        bytes: 0.0,
        record: Box::new(move || scene.render_image(gpu, &cam, res, res, Shading::Diffuse).map(|_| ())),
    })
}

fn adam_case(gpu: &Gpu) -> Result<Case<'_>> {
    let cfg = SceneConfig::default();
    let mut scene = Scene::new(gpu, &cfg, 0)?;
    let params: usize = scene.adam.groups.iter().map(|g| g.param.numel()).sum();
    Ok(Case {
        kernel: "scene.adam".into(),
        shape: format!("{params} parameters"),
        dtype: DType::F32,
        flops: params as f64 * 12.0,
        bytes: params as f64 * 4.0 * 7.0, // read p, g, m, v; write p, m, v
        record: Box::new(move || scene.optimizer_step(gpu, 1.0)),
    })
}

pub fn cases(gpu: &Gpu, quick: bool) -> Result<Vec<Case<'_>>> {
    let points = if quick { 1 << 12 } else { 1 << 18 };
    let mut v = vec![
        field_case(gpu, points, None)?,
        field_case(gpu, points / 8, Some(NormalKind::FiniteDifference))?,
        field_case(gpu, points / 8, Some(NormalKind::Analytic))?,
    ];
    let res = if quick { 16 } else { 64 };
    v.push(render_case(gpu, res, Shading::Albedo, true)?);
    v.push(render_case(gpu, res, Shading::Diffuse, true)?);
    if !quick {
        v.push(render_case(gpu, res, Shading::Albedo, false)?);
    }
    v.push(adam_case(gpu)?);
    let small = "grid 8x2x2^16, mlp 32";
    v.push(field_case_of(gpu, embedded_prior_scene(), small, if quick { 1 << 10 } else { 8192 }, Some(NormalKind::Analytic))?);
    v.push(eval_render_case(gpu, if quick { 16 } else { 96 })?);
    Ok(v)
}
