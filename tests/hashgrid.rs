//! The hash-grid encoding and the fused field against CPU references, and
//! their backward passes against central finite differences: tiny tables
//! (hash collisions), points outside the box, the fixed-point gradient
//! scatter (exact and the same bits every time), and the variants validating
//! with naga.
mod common;
mod scene_reference;
use common::*;
use fsd3d::gpu::{Caps, DType, Gpu, kernel};
use fsd3d::ops::hashgrid::{self, FieldPoints, FieldSpec, GridLayout, NormalKind};
use scene_reference as cpu;

#[test]
fn scene_variants_validate_with_naga() {
    use fsd3d::ops::{adam, hashgrid, mlp, render};
    for caps in [Caps::all(), Caps::none()] {
        let mut v = hashgrid::variants(caps);
        v.extend(mlp::variants(caps));
        v.extend(render::variants(caps));
        v.extend(adam::variants(caps));
        let src = kernel::ShaderSource::builtin();
        for key in &v {
            if let Err(e) = kernel::validate(&src, key, caps) {
                panic!("{key} does not validate ({caps:?}):\n{e}");
            }
        }
    }
}

/// A small grid: 4 levels, coarse ones dense, fine ones hashed into a tiny
/// table (64 entries: many collisions).
fn tiny_layout() -> GridLayout {
    GridLayout::new(4, 2, 6, 2, 2.0).unwrap()
}

fn points_in(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    rand_vec(seed, n * 3, lo, hi)
}

#[test]
fn encode_matches_reference() {
    let layouts = [
        tiny_layout(),
        GridLayout::new(3, 4, 12, 3, 1.7).unwrap(),  // all dense
        GridLayout::new(5, 1, 8, 4, 1.9).unwrap(),   // one feature per level
    ];
    let l0 = &layouts[0];
    assert!(l0.levels[0].dense && !l0.levels[3].dense, "the tiny layout mixes dense and hashed levels: {l0:?}");
    for gpu in gpus() {
        for (li, layout) in layouts.iter().enumerate() {
            let table = rand_vec(10 + li as u64, layout.n_params(), -1.0, 1.0);
            for &n in &[1usize, 7, 130] {
                // Some points outside [0,1]³: clamped onto it.
                let pts = points_in(n as u64, n, -0.2, 1.2);
                let t = gpu.upload(&table, &[layout.n_params()], DType::F32).unwrap();
                let p = gpu.upload(&pts, &[n, 3], DType::F32).unwrap();
                let got = gpu.download(&hashgrid::encode(&gpu, layout, &t, &p).unwrap()).unwrap();
                let t64 = cpu::to_f64(&table);
                let mut want = Vec::new();
                for i in 0..n {
                    want.extend(cpu::grid_features(layout, &t64, [pts[3 * i], pts[3 * i + 1], pts[3 * i + 2]]));
                }
                assert_close(&format!("encode layout {li} n={n}"), &got, &cpu::to_f32(&want), 1e-5);
            }
        }
    }
}

/// Runs encode_backward for dL/dfeatures = `g` and returns dL/dtable.
fn encode_grad(gpu: &Gpu, layout: &GridLayout, pts: &[f32], g: &[f32]) -> Vec<f32> {
    let n = pts.len() / 3;
    let p = gpu.upload(pts, &[n, 3], DType::F32).unwrap();
    let d = gpu.upload(g, &[n, layout.output_dim()], DType::F32).unwrap();
    let grad = gpu.zeros(&[layout.n_params()], DType::F32).unwrap();
    hashgrid::encode_backward(gpu, layout, &p, &d, &grad).unwrap();
    gpu.download(&grad).unwrap()
}

#[test]
fn encode_backward_matches_finite_differences() {
    let layout = tiny_layout();
    let n = 97;
    let pts = points_in(5, n, -0.1, 1.1);
    let g = rand_vec(6, n * layout.output_dim(), -1.0, 1.0);
    let table = rand_vec(7, layout.n_params(), -1.0, 1.0);
    for gpu in gpus() {
        let grad = encode_grad(&gpu, &layout, &pts, &g);
        // L = Σ g·features, on the device in f32, differenced in f32 steps.
        let p = gpu.upload(&pts, &[n, 3], DType::F32).unwrap();
        let loss = |tab: &[f64]| -> f64 {
            let t = gpu.upload(&cpu::to_f32(tab), &[layout.n_params()], DType::F32).unwrap();
            let f = gpu.download(&hashgrid::encode(&gpu, &layout, &t, &p).unwrap()).unwrap();
            f.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let idx: Vec<usize> = (0..layout.n_params()).step_by(3).collect();
        let fd = cpu::central_differences(&cpu::to_f64(&table), &idx, 1e-2, loss);
        let an: Vec<f64> = idx.iter().map(|&i| grad[i] as f64).collect();
        let err = cpu::rel_error(&an, &fd);
        eprintln!("encode backward vs finite differences [{}]: rel error {err:.2e}", gpu.features().names().join(","));
        assert!(err < 1e-4, "relative error {err}");
    }
}

/// The fixed-point scatter: under heavy contention (many points in few cells
/// of a tiny table, large and small and negative contributions), repeated
/// backward passes give the same bits on every device configuration (with
/// and without the optional features), and the sums equal the exact f64 sum
/// to f32 rounding.
#[test]
fn the_scatter_is_exact_and_the_same_every_time() {
    let layout = tiny_layout();
    let n = 2000;
    let pts = points_in(8, n, 0.3, 0.5);
    let mut g = rand_vec(9, n * layout.output_dim(), -1.0, 1.0);
    // Magnitudes over six orders, so that float sums would depend on their order.
    for (i, v) in g.iter_mut().enumerate() {
        *v *= [1.0, 1e-3, 1e3, 1e-6][i % 4];
    }
    // The exact sums, and the sums of the terms' magnitudes (the f32 products
    // on the device are rounded term by term).
    let (mut want, mut scale) = (vec![0.0f64; layout.n_params()], vec![0.0f64; layout.n_params()]);
    let f = layout.features_per_level as usize;
    for i in 0..n {
        let u = [pts[3 * i], pts[3 * i + 1], pts[3 * i + 2]];
        for l in 0..layout.levels.len() {
            for (e, w) in cpu::level_corners(&layout, l, u) {
                for k in 0..f {
                    let term = w * g[i * layout.output_dim() + l * f + k] as f64;
                    want[e * f + k] += term;
                    scale[e * f + k] += term.abs();
                }
            }
        }
    }
    let mut first: Option<Vec<u32>> = None;
    for gpu in gpus() {
        for run in 0..3 {
            let a = encode_grad(&gpu, &layout, &pts, &g);
            let bits: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(b) => {
                    let differ = bits.iter().zip(b).filter(|(x, y)| x != y).count();
                    assert_eq!(differ, 0, "run {run} [{}]: {differ} gradients differ in their bits", gpu.features().names().join(","));
                }
            }
            // Exact but for the terms' f32 rounding, the fixed point's 2^-40 per
            // term (2000 terms: < 1e-9) and the final f32.
            for (i, (&got, &w)) in a.iter().zip(&want).enumerate() {
                let err = (got as f64 - w).abs();
                let allowed = 1e-9 + 2.4e-7 * scale[i] + 6e-8 * w.abs();
                assert!(err <= allowed, "entry {i}: {got} against the exact {w} (error {err:.2e}, allowed {allowed:.2e})");
            }
        }
    }
    assert!(want.iter().filter(|w| w.abs() > 1.0).count() > 10, "contention: some sums are large");
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let layout = tiny_layout();
    let t = gpu.zeros(&[layout.n_params()], DType::F32).unwrap();
    let p2 = gpu.zeros(&[4, 2], DType::F32).unwrap();
    let e = hashgrid::encode(&gpu, &layout, &t, &p2).unwrap_err().to_string();
    assert!(e.contains("[n, 3]"), "{e}");
    let short = gpu.zeros(&[5], DType::F32).unwrap();
    let p = gpu.zeros(&[4, 3], DType::F32).unwrap();
    let e = hashgrid::encode(&gpu, &layout, &short, &p).unwrap_err().to_string();
    assert!(e.contains("table"), "{e}");
    let e = GridLayout::new(20, 2, 19, 16, 1.4).unwrap_err().to_string();
    assert!(e.contains("levels"), "{e}");
}

// ---------------------------------------------------------------------------
// The field.

fn small_field() -> FieldSpec {
    FieldSpec { grid: tiny_layout(), hidden: 16, radius: 1.0, normals: NormalKind::FiniteDifference, normal_eps: 0.05, blob_scale: 2.0, blob_std: 0.5 }
}

/// threestudio's dimensions (16 levels × 2, 64 hidden: the specialised
/// variant) on a small table.
fn default_dims_field() -> FieldSpec {
    FieldSpec {
        grid: GridLayout::new(16, 2, 8, 16, 1.447269).unwrap(),
        hidden: 64,
        radius: 2.0,
        normals: NormalKind::FiniteDifference,
        normal_eps: 0.01,
        blob_scale: 10.0,
        blob_std: 0.5,
    }
}

/// Awkward dimensions for the generic variant: 5 levels × 1 feature (5
/// inputs: the backward's vec4 tiles carry padding) and 24 hidden units (its
/// reduction splits the rows between two groups of 24 threads and leaves 16
/// threads without a unit).
fn odd_dims_field() -> FieldSpec {
    FieldSpec { grid: GridLayout::new(5, 1, 7, 3, 1.9).unwrap(), hidden: 24, radius: 1.5, normals: NormalKind::FiniteDifference, normal_eps: 0.03, blob_scale: 4.0, blob_std: 0.6 }
}

/// (normals, kind): none, finite-difference rows, analytic gradient.
const NORMAL_MODES: [(bool, NormalKind); 3] =
    [(false, NormalKind::Analytic), (true, NormalKind::FiniteDifference), (true, NormalKind::Analytic)];

#[derive(Clone)]
struct FieldCase {
    spec: FieldSpec,
    table: Vec<f32>,
    mlp: Vec<f32>,
    points: Vec<f32>,
}

fn field_case(spec: FieldSpec, seed: u64, n: usize) -> FieldCase {
    let table = rand_vec(seed, spec.grid.n_params(), -1.0, 1.0);
    let scale = 1.0 / (spec.grid.output_dim() as f32).sqrt();
    let mlp = rand_vec(seed + 1, spec.mlp_layout().len, -2.0 * scale, 2.0 * scale);
    // Points across the box and a little outside it (clamped), some right at the
    // boundary where the normal rows get clamped.
    let r = spec.radius;
    let mut points = rand_vec(seed + 2, n * 3, -1.1 * r, 1.1 * r);
    points[0] = r;
    points[4] = -r + 0.5 * spec.normal_eps;
    FieldCase { spec, table, mlp, points }
}

fn run_field(gpu: &Gpu, c: &FieldCase, table: &[f32], mlp: &[f32], normals: bool) -> (Vec<f32>, Vec<f32>) {
    let n = c.points.len() / 3;
    let t = gpu.upload(table, &[table.len()], DType::F32).unwrap();
    let m = gpu.upload(mlp, &[mlp.len()], DType::F32).unwrap();
    let p = gpu.upload(&c.points, &[n, 3], DType::F32).unwrap();
    let (d, a) = hashgrid::field_forward(gpu, &c.spec, &t, &m, FieldPoints::Points(&p), normals).unwrap();
    (gpu.download(&d).unwrap(), gpu.download(&a).unwrap())
}

#[test]
fn field_forward_matches_reference() {
    for gpu in gpus() {
        for (ci, spec) in [small_field(), default_dims_field(), odd_dims_field()].into_iter().enumerate() {
            for &n in &[1usize, 33] {
                let c = field_case(spec.clone(), 20 + ci as u64, n.max(2));
                for (normals, kind) in NORMAL_MODES {
                    let c = FieldCase { spec: FieldSpec { normals: kind, ..c.spec.clone() }, ..c.clone() };
                    let k = c.spec.values_per_point(normals) as usize;
                    let (d, a) = run_field(&gpu, &c, &c.table, &c.mlp, normals);
                    let (wd, wa) = cpu::field(&c.spec, &cpu::to_f64(&c.table), &cpu::to_f64(&c.mlp), &c.points, k);
                    let what = format!("field case {ci} n={n} normals={normals} {kind:?} [{}]", gpu.features().names().join(","));
                    assert_close(&format!("{what} density"), &d, &cpu::to_f32(&wd), 1e-5);
                    assert_close(&format!("{what} albedo"), &a, &cpu::to_f32(&wa), 1e-5);
                }
            }
        }
    }
}

/// The reference's analytic ∇σ (the chain rule written out) against central
/// differences of its own σ along each axis, where neither a level's cell
/// face nor a ReLU kink of the density head lies within the difference's
/// reach (σ is piecewise smooth: across either its slope jumps).
#[test]
fn analytic_gradient_is_the_derivative_of_the_density() {
    // threestudio's finest level (4096 cells) leaves f32 positions too coarse
    // for differences that stay inside one cell; the embedded prior's grid
    // (8 levels, finest ~190 cells) stands in for it.
    let prior_dims = FieldSpec { grid: GridLayout::new(8, 2, 10, 16, 1.42).unwrap(), hidden: 32, radius: 1.0, normals: NormalKind::Analytic, normal_eps: 0.01, blob_scale: 10.0, blob_std: 0.5 };
    for (ci, spec) in [small_field(), prior_dims, odd_dims_field()].into_iter().enumerate() {
        let c = field_case(spec, 60 + ci as u64, 120);
        let (t64, m64) = (cpu::to_f64(&c.table), cpu::to_f64(&c.mlp));
        let r = c.spec.radius;
        let eps = 1e-4 * r;
        let (mut checked, mut total) = (0, 0);
        for i in 0..120 {
            // Inside the box, away from its faces (where u is clamped).
            let p: [f32; 3] = [0, 1, 2].map(|a| c.points[3 * i + a] * 0.8);
            let (_, g) = cpu::density_and_gradient(&c.spec, &t64, &m64, p);
            for axis in 0..3 {
                total += 1;
                let u = (p[axis] + r) / (2.0 * r);
                let reach = eps / (2.0 * r);
                let crosses = c.spec.grid.levels.iter().any(|lv| {
                    let lo = (u - reach) * lv.scale + 0.5;
                    let hi = (u + reach) * lv.scale + 0.5;
                    lo.floor() != hi.floor()
                });
                let shifted = |d: f32| {
                    let mut q = p;
                    q[axis] += d;
                    q
                };
                let kink = cpu::density_active_units(&c.spec, &t64, &m64, shifted(eps)) != cpu::density_active_units(&c.spec, &t64, &m64, shifted(-eps));
                if crosses || kink {
                    continue;
                }
                let at = |d: f32| cpu::field_at(&c.spec, &t64, &m64, shifted(d)).0;
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let tol = 2e-3 * g.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                assert!((fd - g[axis]).abs() <= tol, "case {ci} point {p:?} axis {axis}: analytic {} vs differences {fd}", g[axis]);
                checked += 1;
            }
        }
        eprintln!("case {ci}: {checked} of {total} (point, axis) pairs away from cell faces checked");
        assert!(checked * 4 >= total, "case {ci}: only {checked} of {total} pairs could be checked");
    }
}

/// dL/dtable and dL/dmlp for L = Σ a·density + Σ b·albedo.
fn field_grads(gpu: &Gpu, c: &FieldCase, a: &[f32], b: &[f32], normals: bool) -> (Vec<f32>, Vec<f32>) {
    let n = c.points.len() / 3;
    let k = c.spec.values_per_point(normals) as usize;
    let t = gpu.upload(&c.table, &[c.table.len()], DType::F32).unwrap();
    let m = gpu.upload(&c.mlp, &[c.mlp.len()], DType::F32).unwrap();
    let p = gpu.upload(&c.points, &[n, 3], DType::F32).unwrap();
    let da = gpu.upload(a, &[n, k], DType::F32).unwrap();
    let db = gpu.upload(b, &[n, 3], DType::F32).unwrap();
    let gt = gpu.zeros(&[c.table.len()], DType::F32).unwrap();
    let gm = gpu.zeros(&[c.mlp.len()], DType::F32).unwrap();
    hashgrid::field_backward(gpu, &c.spec, &t, &m, FieldPoints::Points(&p), normals, &da, &db, &gt, &gm).unwrap();
    (gpu.download(&gt).unwrap(), gpu.download(&gm).unwrap())
}

fn field_loss(d: &[f32], al: &[f32], a: &[f32], b: &[f32]) -> f64 {
    d.iter().zip(a).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() + al.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>()
}

#[test]
fn field_backward_matches_finite_differences() {
    for (ci, spec) in [small_field(), default_dims_field(), odd_dims_field()].into_iter().enumerate() {
        // Case 2: 70 points, so that with normals the 490 rows span several
        // tiles and one tile holds both centre and offset rows.
        let n = [40, 12, 70][ci];
        let c0 = field_case(spec, 40 + ci as u64, n);
        for (normals, kind) in NORMAL_MODES {
            let c = FieldCase { spec: FieldSpec { normals: kind, ..c0.spec.clone() }, ..c0.clone() };
            let k = c.spec.values_per_point(normals) as usize;
            let a = rand_vec(50, n * k, -1.0, 1.0);
            let mut b = rand_vec(51, n * 3, -1.0, 1.0);
            b[3..6].fill(0.0); // a point with no albedo gradient
            let (t64, m64) = (cpu::to_f64(&c.table), cpu::to_f64(&c.mlp));
            // The whole gradient against central differences of the f64 reference.
            let ref_loss = |tab: &[f64], mlp: &[f64]| -> f64 {
                let (d, al) = cpu::field(&c.spec, tab, mlp, &c.points, k);
                d.iter().zip(&a).map(|(x, y)| x * *y as f64).sum::<f64>() + al.iter().zip(&b).map(|(x, y)| x * *y as f64).sum::<f64>()
            };
            // Every parameter of the small field; a spread-out subset of the big one.
            let subset = |len: usize| -> Vec<usize> { (0..len).step_by(len.div_ceil(400)).collect() };
            let all_t = subset(c.table.len());
            let all_m = subset(c.mlp.len());
            let fd_t_ref = cpu::central_differences(&t64, &all_t, 1e-6, |t| ref_loss(t, &m64));
            let fd_m_ref = cpu::central_differences(&m64, &all_m, 1e-6, |m| ref_loss(&t64, m));
            let mut grads = Vec::new();
            for gpu in gpus() {
                let (gt, gm) = field_grads(&gpu, &c, &a, &b, normals);
                let label = format!("case {ci} normals={normals} {kind:?} [{}]", gpu.features().names().join(","));
                let pick = |g: &[f32], idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| g[i] as f64).collect() };
                let et = cpu::rel_error(&pick(&gt, &all_t), &fd_t_ref);
                let em = cpu::rel_error(&pick(&gm, &all_m), &fd_m_ref);
                eprintln!("field backward vs f64 reference differences, {label}: table {et:.2e}, mlp {em:.2e}");
                assert!(et < 1e-4 && em < 1e-4, "{label}: table {et}, mlp {em}");
                // Central differences of the device's own f32 forward, on the
                // largest-gradient entries and some others.
                // The analytic gradient's ReLU masks flip under larger steps
                // and its jumps there are large (they carry the grid's
                // scales): probe with smaller steps, and only entries over
                // whose step the f64 reference is smooth (its differences at
                // h and at 1e-6 agree).
                let h = if normals && kind == NormalKind::Analytic { 1e-3 } else { 1e-2 };
                let smooth = |idx: Vec<usize>, params: &[f64], loss: &dyn Fn(&[f64]) -> f64| -> Vec<usize> {
                    let coarse = cpu::central_differences(params, &idx, h, loss);
                    let fine = cpu::central_differences(params, &idx, 1e-6, loss);
                    let kept: Vec<usize> =
                        idx.iter().zip(coarse.iter().zip(&fine)).filter(|(_, (c, f))| (*c - *f).abs() <= 1e-3 * f.abs().max(1.0)).map(|(i, _)| *i).collect();
                    assert!(kept.len() * 2 >= idx.len(), "{label}: the reference has kinks near most probes: kept {kept:?} of {idx:?}");
                    kept
                };
                let it = smooth(cpu::probe_indices(&gt, 6), &t64, &|t| ref_loss(t, &m64));
                let im = smooth(cpu::probe_indices(&gm, 6), &m64, &|m| ref_loss(&t64, m));
                let gpu_loss = |tab: &[f64], mlp: &[f64]| -> f64 {
                    let (d, al) = run_field(&gpu, &c, &cpu::to_f32(tab), &cpu::to_f32(mlp), normals);
                    field_loss(&d, &al, &a, &b)
                };
                let fd_t = cpu::central_differences(&t64, &it, h, |t| gpu_loss(t, &m64));
                let fd_m = cpu::central_differences(&m64, &im, h, |m| gpu_loss(&t64, m));
                let et = cpu::rel_error(&pick(&gt, &it), &fd_t);
                let em = cpu::rel_error(&pick(&gm, &im), &fd_m);
                eprintln!("field backward vs f32 device differences, {label}: table {et:.2e}, mlp {em:.2e}");
                assert!(et < 1e-2 && em < 1e-2, "{label}: table {et}, mlp {em}");
                grads.push((gt, gm));
            }
            // Both scatter paths, the same gradients.
            assert_close("table gradient, atomics vs CAS", &grads[0].0, &grads[1].0, 1e-5);
            assert_close("mlp gradient, atomics vs CAS", &grads[0].1, &grads[1].1, 1e-5);
        }
    }
}

/// Timings of the field kernels alone (`cargo test --test hashgrid --
/// --ignored --nocapture time_field`; FSD3D_SHADERS may point at edited shaders).
#[test]
#[ignore]
fn time_field() {
    let gpu = Gpu::from_env().unwrap();
    let spec = FieldSpec { grid: GridLayout::new(8, 2, 14, 4, 1.6).unwrap(), hidden: 32, radius: 1.0, normals: NormalKind::FiniteDifference, normal_eps: 0.01, blob_scale: 10.0, blob_std: 0.5 };
    let n = 40_000;
    let c = field_case(spec, 1, n);
    let t = gpu.upload(&c.table, &[c.table.len()], DType::F32).unwrap();
    let m = gpu.upload(&c.mlp, &[c.mlp.len()], DType::F32).unwrap();
    let p = gpu.upload(&c.points, &[n, 3], DType::F32).unwrap();
    let da = gpu.upload(&rand_vec(3, n, -1.0, 1.0), &[n, 1], DType::F32).unwrap();
    let db = gpu.upload(&rand_vec(4, n * 3, -1.0, 1.0), &[n, 3], DType::F32).unwrap();
    let gt = gpu.zeros(&[c.table.len()], DType::F32).unwrap();
    let gm = gpu.zeros(&[c.mlp.len()], DType::F32).unwrap();
    for rep in 0..3 {
        let t0 = std::time::Instant::now();
        let out = hashgrid::field_forward(&gpu, &c.spec, &t, &m, FieldPoints::Points(&p), false).unwrap();
        gpu.sync().unwrap();
        let t1 = std::time::Instant::now();
        hashgrid::field_backward(&gpu, &c.spec, &t, &m, FieldPoints::Points(&p), false, &da, &db, &gt, &gm).unwrap();
        gpu.sync().unwrap();
        let t2 = std::time::Instant::now();
        drop(out);
        eprintln!("rep {rep}: forward {:.1} ms, backward {:.1} ms ({} points)", (t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3, n);
    }
}

/// A device that adds the field's grid gradient with `variant`.
fn gpu_with_field_variant(variant: &str) -> std::sync::Arc<Gpu> {
    Gpu::new(&fsd3d::gpu::GpuOptions { variants: vec![("hashgrid".into(), variant.into())], ..Default::default() }).unwrap()
}

/// The subgroup variant of field_backward (lanes sharing an entry sum in
/// registers, one atomic pair per group) adds exactly what the per-lane
/// atomics add: the same bits of every table and MLP gradient, for runs of
/// points inside one cell (what it aggregates), scattered points, rows
/// without gradient, and every dimension and normal mode.
#[test]
fn subgroup_scatter_gives_the_atomic_bits() {
    let atomic = gpu_with_field_variant("atomic");
    let subgroup = gpu_with_field_variant("subgroup");
    assert!(
        subgroup.caps().features.subgroups,
        "lavapipe has subgroups: without them this test would compare the atomic path with itself"
    );
    for (ci, spec) in [small_field(), default_dims_field(), odd_dims_field()].into_iter().enumerate() {
        for (normals, kind) in NORMAL_MODES {
            let spec = FieldSpec { normals: kind, ..spec.clone() };
            let n = 203;
            let mut c = field_case(spec, 40 + ci as u64, n);
            // Runs of 7 to 40 points a few thousandths apart (samples of a
            // ray inside one coarse cell), then the scattered ones.
            let jitter = rand_vec(90 + ci as u64, n * 3, -0.004, 0.004);
            let mut i = 0;
            for (run, len) in [(0usize, 40usize), (1, 7), (2, 33), (3, 17), (4, 64)] {
                let base = [c.points[3 * run * 5], c.points[3 * run * 5 + 1], c.points[3 * run * 5 + 2]];
                for _ in 0..len {
                    for a in 0..3 {
                        c.points[3 * i + a] = (base[a] * 0.5 + jitter[3 * i + a]).clamp(-c.spec.radius, c.spec.radius);
                    }
                    i += 1;
                }
            }
            let k = c.spec.values_per_point(normals) as usize;
            let mut a = rand_vec(41, n * k, -1.0, 1.0);
            let mut b = rand_vec(42, n * 3, -1.0, 1.0);
            // Some rows with no gradient at all, some with only one part.
            for p in (0..n).step_by(5) {
                a[p * k..(p + 1) * k].fill(0.0);
                b[3 * p..3 * p + 3].fill(0.0);
            }
            for p in (1..n).step_by(7) {
                a[p * k..(p + 1) * k].fill(0.0);
            }
            let (ta, ma) = field_grads(&atomic, &c, &a, &b, normals);
            let (ts, ms) = field_grads(&subgroup, &c, &a, &b, normals);
            let what = format!("field {ci}, normals {normals} {kind:?}");
            assert!(ta.iter().filter(|v| **v != 0.0).count() > 20, "{what}: the grid got gradients");
            for (name, got, want) in [("table", &ts, &ta), ("MLP", &ms, &ma)] {
                assert_eq!(got.len(), want.len());
                if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                    panic!("{what}: {name} gradient {i}: subgroup {} vs atomic {}", got[i], want[i]);
                }
            }
        }
    }
}

/// A variant the device cannot run, or a name that is none, is an error
/// that says what to pick.
#[test]
fn unknown_field_variant_is_named() {
    let gpu = Gpu::new(&fsd3d::gpu::GpuOptions { variants: vec![("hashgrid".into(), "fastest".into())], ..Default::default() }).unwrap();
    let e = hashgrid::choose_variant(&gpu).unwrap_err().to_string();
    assert!(e.contains("atomic") && e.contains("subgroup"), "{e}");
    let no_subgroups = Gpu::new(&fsd3d::gpu::GpuOptions {
        variants: vec![("hashgrid".into(), "subgroup".into())],
        disable: fsd3d::gpu::Features::ALL,
        ..Default::default()
    })
    .unwrap();
    let e = hashgrid::choose_variant(&no_subgroups).unwrap_err().to_string();
    assert!(e.contains("hashgrid=atomic"), "{e}");
}
