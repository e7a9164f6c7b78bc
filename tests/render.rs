//! Volume rendering: marching against a CPU walk (rays that miss the box,
//! start inside it, run along axes; the occupancy grid; the capacity),
//! compositing against an f64 reference for every shading mode, its backward
//! (with the regularisers) against central finite differences, the whole
//! render (march → field → composite) backward against finite differences on
//! both scatter paths, and the occupancy grid.
mod common;
mod scene_reference;
use common::*;
use fsd3d::gpu::{DType, Gpu, Tensor};
use fsd3d::ops::hashgrid::{self, FieldPoints, FieldSpec, GridLayout, NormalKind};
use fsd3d::ops::render::{
    self, Background, CompositeSpec, MarchInfo, MarchSpec, Marched, RegulariserWeights, Shading,
};
use scene_reference as cpu;

const RADIUS: f32 = 1.0;

/// Two "views" of 6 rays: hand-made rays (a hit, a ray pointing away, one
/// starting inside the box, one parallel to the box outside it, one along an
/// axis, the diagonal), then 6 rays of a camera.
fn test_rays() -> Vec<f32> {
    let raw: [([f32; 3], [f32; 3]); 6] = [
        ([3.0, 0.1, 0.2], [-1.0, 0.0, 0.0]),
        ([3.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
        ([0.2, -0.3, 0.1], [1.0, 1.0, 1.0]),
        ([0.0, 3.0, 3.0], [0.0, 0.0, 1.0]),
        ([0.5, 0.5, 3.0], [0.0, 0.0, -1.0]),
        ([-2.5, -2.5, -2.5], [1.0, 1.0, 1.0]),
    ];
    let mut v = Vec::new();
    for (o, d) in raw {
        let l = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        v.extend_from_slice(&[o[0], o[1], o[2], 0.0, d[0] / l, d[1] / l, d[2] / l, 0.0]);
    }
    let cam = fsd3d::scene::camera::Camera::orbit(20.0, 30.0, 2.5, 50.0);
    v.extend(cam.rays(3, 2));
    v
}

const RAYS_PER_VIEW: usize = 6;
const LIGHTS: [[f32; 3]; 2] = [[2.0, 1.0, 1.5], [0.5, -2.0, 1.0]];

fn occupancy_bits(res: u32, seed: u64) -> Vec<u32> {
    let cells = (res as usize).pow(3);
    let coin = rand_vec(seed, cells, 0.0, 1.0);
    let mut bits = vec![0u32; cells.div_ceil(32)];
    for (i, c) in coin.iter().enumerate() {
        if *c < 0.75 {
            bits[i / 32] |= 1 << (i % 32);
        }
    }
    bits
}

fn march_spec(stratified: bool) -> MarchSpec {
    MarchSpec { radius: RADIUS, dt: 0.1, max_samples: 30, capacity: 4096, occupancy_resolution: 4, stratified, seed: 1234 }
}

/// The reference walk in f32 (mid-step samples): (x, y, z, t) of each ray's kept samples.
fn reference_march(rays: &[f32], bits: &[u32], spec: &MarchSpec) -> Vec<Vec<[f32; 4]>> {
    let n = rays.len() / 8;
    let res = spec.occupancy_resolution;
    let r = spec.radius;
    (0..n)
        .map(|i| {
            let o = [rays[8 * i], rays[8 * i + 1], rays[8 * i + 2]];
            let d = [rays[8 * i + 4], rays[8 * i + 5], rays[8 * i + 6]];
            let (mut t0, mut t1) = (0.0f32, f32::INFINITY);
            for a in 0..3 {
                if d[a].abs() < 1e-12 {
                    if o[a] < -r || o[a] > r {
                        t1 = -1.0;
                    }
                    continue;
                }
                let (ta, tb) = ((-r - o[a]) / d[a], (r - o[a]) / d[a]);
                t0 = t0.max(ta.min(tb));
                t1 = t1.min(ta.max(tb));
            }
            let mut out = Vec::new();
            if t1 <= t0 {
                return out;
            }
            for k in 0..spec.max_samples {
                let t = t0 + (k as f32 + 0.5) * spec.dt;
                if t >= t1 {
                    break;
                }
                let x = [o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2]];
                let c: Vec<u32> = x.iter().map(|v| (((v + r) / (2.0 * r) * res as f32).clamp(0.0, res as f32 - 0.5)) as u32).collect();
                let idx = (c[0] + c[1] * res + c[2] * res * res) as usize;
                if bits[idx / 32] >> (idx % 32) & 1 == 1 {
                    out.push([x[0], x[1], x[2], t]);
                }
            }
            out
        })
        .collect()
}

struct Marching {
    rays: Tensor,
    rays_host: Vec<f32>,
    marched: Marched,
    ranges: Vec<u32>,
    samples: Vec<f32>,
    count: usize,
}

fn run_march(gpu: &Gpu, spec: &MarchSpec) -> Marching {
    let rays_host = test_rays();
    let rays = gpu.upload(&rays_host, &[rays_host.len() / 8, 8], DType::F32).unwrap();
    let bits = gpu.upload_u32(&occupancy_bits(spec.occupancy_resolution, 3), &[render::occupancy_words(spec.occupancy_resolution)]).unwrap();
    let marched = render::march(gpu, &rays, &bits, spec).unwrap();
    let ranges = gpu.download_u32(&marched.ranges).unwrap();
    let samples = gpu.download(&marched.samples).unwrap();
    let count = MarchInfo::read(gpu, &marched).unwrap().samples as usize;
    Marching { rays, rays_host, marched, ranges, samples, count }
}

#[test]
fn march_matches_the_reference_walk() {
    for gpu in gpus() {
        let spec = march_spec(false);
        let m = run_march(&gpu, &spec);
        let bits = occupancy_bits(4, 3);
        let want = reference_march(&m.rays_host, &bits, &spec);
        let mut offset = 0;
        for (r, w) in want.iter().enumerate() {
            assert_eq!(m.ranges[2 * r] as usize, offset, "ray {r} offset");
            assert_eq!(m.ranges[2 * r + 1] as usize, w.len(), "ray {r} count");
            for (j, s) in w.iter().enumerate() {
                let got = &m.samples[4 * (offset + j)..4 * (offset + j) + 4];
                for q in 0..4 {
                    assert!((got[q] - s[q]).abs() < 1e-5, "ray {r} sample {j}: {got:?} vs {s:?}");
                }
            }
            offset += w.len();
        }
        assert_eq!(m.count, offset);
        assert_eq!(want[1].len(), 0, "a ray pointing away misses");
        assert_eq!(want[3].len(), 0, "a ray beside the box misses");
        // A ray starting inside the box steps from t = 0 (its first cells may be empty).
        let k = want[2][0][3] / spec.dt - 0.5;
        assert!(!want[2].is_empty() && (k - k.round()).abs() < 1e-4, "a ray starting inside samples from t = 0");
        assert!(!want[4].is_empty(), "an axis-aligned ray hits");
        assert!(want[5].len() <= spec.max_samples as usize);
    }
}

#[test]
fn stratified_samples_are_jittered_within_a_step() {
    let gpu = gpu();
    let mid = run_march(&gpu, &march_spec(false));
    let strat = run_march(&gpu, &march_spec(true));
    let again = run_march(&gpu, &march_spec(true));
    assert_eq!(strat.samples[..4 * strat.count], again.samples[..4 * again.count], "same seed, same jitter");
    // Ray 0 runs along x through the whole box: every step cell is visited; the
    // jittered samples keep the step and lie on the ray inside the box.
    let (o, c) = (strat.ranges[0] as usize, strat.ranges[1] as usize);
    assert!(c > 0);
    let ts: Vec<f32> = (o..o + c).map(|s| strat.samples[4 * s + 3]).collect();
    for s in o..o + c {
        let x = &strat.samples[4 * s..4 * s + 3];
        assert!(x.iter().all(|v| v.abs() <= RADIUS + 1e-5), "{x:?} outside the box");
    }
    // t0 = 2 for this ray: samples at 2 + (k + u)·dt, u in [0, 1) (0.5 unjittered).
    let u = ((ts[0] - 2.0) / 0.1).fract();
    assert!((0.0..1.0).contains(&u) && (u - 0.5).abs() > 1e-3, "jitter {u}");
    let u_mid = ((mid.samples[4 * mid.ranges[0] as usize + 3] - 2.0) / 0.1).fract();
    assert!((u_mid - 0.5).abs() < 1e-4, "unjittered: mid-steps, got {u_mid}");
    for w in ts.windows(2) {
        let steps = (w[1] - w[0]) / 0.1;
        assert!((steps - steps.round()).abs() < 1e-3, "samples on the same stratified lattice");
    }
}

#[test]
fn capacity_overflow_drops_the_last_samples() {
    let gpu = gpu();
    let full = run_march(&gpu, &march_spec(false));
    let spec = MarchSpec { capacity: full.count / 2, ..march_spec(false) };
    let m = run_march(&gpu, &spec);
    let info = MarchInfo::read(&gpu, &m.marched).unwrap();
    assert!(info.overflowed() && info.samples as usize == spec.capacity && info.requested as usize == full.count);
    let n = m.ranges.len() / 2;
    let kept: usize = (0..n).map(|r| m.ranges[2 * r + 1] as usize).sum();
    assert_eq!(kept, spec.capacity);
    for r in 0..n {
        assert!(m.ranges[2 * r] as usize + m.ranges[2 * r + 1] as usize <= spec.capacity);
        // The kept samples are the same as without the overflow.
        let (o, c) = (m.ranges[2 * r] as usize, m.ranges[2 * r + 1] as usize);
        assert_eq!(m.samples[4 * o..4 * (o + c)], full.samples[4 * o..4 * (o + c)]);
    }
}

// ---------------------------------------------------------------------------
// Compositing.

/// Finite-difference normals where `normals`; [`composite_spec_with`] picks the kind.
fn composite_spec(shading: Shading, normals: bool) -> CompositeSpec {
    composite_spec_with(shading, normals.then_some(NormalKind::FiniteDifference))
}

fn composite_spec_with(shading: Shading, normals: Option<NormalKind>) -> CompositeSpec {
    CompositeSpec {
        rays_per_view: RAYS_PER_VIEW,
        lights: LIGHTS.to_vec(),
        shading,
        ambient: 0.1,
        diffuse: 0.9,
        dt: 0.1,
        normals: normals.is_some(),
        normal_kind: normals.unwrap_or_default(),
        normal_eps: 0.05,
        early_stop: 0.0,
        normal_image: normals.is_some(),
    }
}

/// Density values per sample of `spec`.
fn values_of(spec: &CompositeSpec) -> usize {
    if spec.normals { spec.normal_kind.values_per_point() as usize } else { 1 }
}

/// Random field outputs for every sample: densities giving alphas across (0, 1).
struct FieldValues {
    density: Vec<f32>,
    albedo: Vec<f32>,
    bg: Vec<f32>,
}

fn field_values(m: &Marching, k: usize, seed: u64) -> FieldValues {
    let cap = m.samples.len() / 4;
    let mut density = rand_vec(seed, cap * k, 0.0, 12.0);
    // Normal rows: the centre's density plus a smooth random gradient, as a field gives.
    if k == 7 {
        let jitter = rand_vec(seed + 9, cap * 6, -3.0, 3.0);
        for s in 0..cap {
            for q in 1..7 {
                density[s * 7 + q] = (density[s * 7] + jitter[s * 6 + q - 1]).max(0.0);
            }
        }
    }
    // Analytic values: σ and a gradient of either sign.
    if k == 4 {
        let grad = rand_vec(seed + 9, cap * 3, -30.0, 30.0);
        for s in 0..cap {
            density[s * 4 + 1..s * 4 + 4].copy_from_slice(&grad[3 * s..3 * s + 3]);
        }
    }
    FieldValues { density, albedo: rand_vec(seed + 1, cap * 3, 0.05, 0.95), bg: rand_vec(seed + 2, m.ranges.len() / 2 * 3, 0.0, 1.0) }
}

struct Rendered {
    rgb: Vec<f32>,
    opacity: Vec<f32>,
    depth: Vec<f32>,
    normal: Option<Vec<f32>>,
    orient: Vec<f32>,
    out: render::Composited,
}

fn run_composite(gpu: &Gpu, m: &Marching, v: &FieldValues, spec: &CompositeSpec, per_ray_bg: bool) -> Rendered {
    let cap = m.samples.len() / 4;
    let k = values_of(spec);
    let d = gpu.upload(&v.density, &[cap, k], DType::F32).unwrap();
    let a = gpu.upload(&v.albedo, &[cap, 3], DType::F32).unwrap();
    let bgt = gpu.upload(&v.bg, &[v.bg.len() / 3, 3], DType::F32).unwrap();
    let bg = if per_ray_bg { Background::PerRay(&bgt) } else { Background::Solid([v.bg[0], v.bg[1], v.bg[2]]) };
    let out = render::composite(gpu, &m.rays, &m.marched, &d, &a, bg, spec).unwrap();
    Rendered {
        rgb: gpu.download(&out.rgb).unwrap(),
        opacity: gpu.download(&out.opacity).unwrap(),
        depth: gpu.download(&out.depth).unwrap(),
        normal: out.normal.as_ref().map(|t| gpu.download(t).unwrap()),
        orient: gpu.download(&out.orient).unwrap(),
        out,
    }
}

fn bg_per_ray(v: &FieldValues, per_ray: bool, n: usize) -> Vec<[f64; 3]> {
    (0..n)
        .map(|r| {
            let i = if per_ray { r } else { 0 };
            [v.bg[3 * i] as f64, v.bg[3 * i + 1] as f64, v.bg[3 * i + 2] as f64]
        })
        .collect()
}

#[test]
fn composite_matches_reference() {
    for gpu in gpus() {
        let m = run_march(&gpu, &march_spec(true));
        let n = m.ranges.len() / 2;
        let fd = Some(NormalKind::FiniteDifference);
        let analytic = Some(NormalKind::Analytic);
        for (shading, normals) in
            [(Shading::Albedo, None), (Shading::Albedo, fd), (Shading::Diffuse, fd), (Shading::Textureless, fd), (Shading::Diffuse, analytic), (Shading::Textureless, analytic)]
        {
            for (per_ray, early_stop) in [(false, 0.0), (true, 1e-2)] {
                let spec = CompositeSpec { early_stop, ..composite_spec_with(shading, normals) };
                let k = values_of(&spec);
                let v = field_values(&m, k, 5);
                let got = run_composite(&gpu, &m, &v, &spec, per_ray);
                let d64 = cpu::to_f64(&v.density);
                let want = cpu::composite(&spec, &m.rays_host, &m.ranges, &m.samples, &d64, &d64, &cpu::to_f64(&v.albedo), &bg_per_ray(&v, per_ray, n));
                let what = format!("{shading:?} normals={normals:?} per-ray bg={per_ray} early stop={early_stop}");
                let img = |f: &dyn Fn(usize, usize) -> f64| -> Vec<f32> {
                    let mut out = vec![0.0; n * 3];
                    for r in 0..n {
                        for c in 0..3 {
                            out[cpu::image_index(&spec, r, c)] = f(r, c) as f32;
                        }
                    }
                    out
                };
                assert_close(&format!("{what} rgb"), &got.rgb, &img(&|r, c| want.rgb[r][c]), 1e-5);
                assert_close(&format!("{what} opacity"), &got.opacity, &cpu::to_f32(&want.opacity), 1e-5);
                assert_close(&format!("{what} depth"), &got.depth, &cpu::to_f32(&want.depth), 1e-5);
                assert_close(&format!("{what} orient"), &got.orient, &cpu::to_f32(&want.orient), 1e-5);
                if let Some(nm) = &got.normal {
                    assert_close(&format!("{what} normal"), nm, &img(&|r, c| want.normal[r][c]), 1e-5);
                }
                assert_eq!(got.opacity[1], 0.0, "a missing ray is transparent");
                assert_eq!(got.rgb[cpu::image_index(&spec, 1, 0)], v.bg[if per_ray { 3 } else { 0 }], "…and shows the background");
            }
        }
    }
}

/// dL/d(rgb, opacity) of a random linear loss.
struct Upstream {
    g_rgb: Vec<f32>,
    g_op: Vec<f32>,
}

fn upstream(n: usize, seed: u64) -> Upstream {
    Upstream { g_rgb: rand_vec(seed, n * 3, -1.0, 1.0), g_op: rand_vec(seed + 1, n, -1.0, 1.0) }
}

const REG: RegulariserWeights = RegulariserWeights { orientation: 0.7, sparsity: 0.3, opaque: 0.2 };

/// The reference loss: upstream·images + the regularisers (orientation with
/// the weights of `frozen` held constant, as threestudio detaches them).
#[allow(clippy::too_many_arguments)]
fn reference_loss(
    spec: &CompositeSpec,
    m: &Marching,
    density: &[f64],
    frozen: &[f64],
    albedo: &[f64],
    bg: &[[f64; 3]],
    up: &Upstream,
    reg: &RegulariserWeights,
    foreground: usize,
) -> f64 {
    let img = cpu::composite(spec, &m.rays_host, &m.ranges, &m.samples, density, frozen, albedo, bg);
    let n = img.opacity.len();
    let mut l = 0.0;
    for r in 0..n {
        for c in 0..3 {
            l += up.g_rgb[cpu::image_index(spec, r, c)] as f64 * img.rgb[r][c];
        }
        l += up.g_op[r] as f64 * img.opacity[r];
    }
    let (o, s, e) = cpu::regularisers(&img, foreground);
    l + reg.orientation as f64 * o + reg.sparsity as f64 * s + reg.opaque as f64 * e
}

fn grads_of(gpu: &Gpu, m: &Marching, v: &FieldValues, spec: &CompositeSpec, per_ray: bool, up: &Upstream, reg: &RegulariserWeights) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let n = m.ranges.len() / 2;
    let cap = m.samples.len() / 4;
    let k = values_of(spec);
    let d = gpu.upload(&v.density, &[cap, k], DType::F32).unwrap();
    let a = gpu.upload(&v.albedo, &[cap, 3], DType::F32).unwrap();
    let bgt = gpu.upload(&v.bg, &[n, 3], DType::F32).unwrap();
    let bg = if per_ray { Background::PerRay(&bgt) } else { Background::Solid([v.bg[0], v.bg[1], v.bg[2]]) };
    let out = render::composite(gpu, &m.rays, &m.marched, &d, &a, bg, spec).unwrap();
    let g_rgb = gpu.upload(&up.g_rgb, &[2, 3, RAYS_PER_VIEW], DType::F32).unwrap();
    let g_op = gpu.upload(&up.g_op, &[2, 1, RAYS_PER_VIEW], DType::F32).unwrap();
    let g = render::composite_backward(gpu, &m.rays, &m.marched, &d, &a, bg, spec, &out, &g_rgb, Some(&g_op), reg).unwrap();
    (gpu.download(&g.density).unwrap(), gpu.download(&g.albedo).unwrap(), g.background.map(|t| gpu.download(&t).unwrap()))
}

#[test]
fn composite_backward_matches_finite_differences() {
    for gpu in gpus() {
        let m = run_march(&gpu, &march_spec(true));
        let n = m.ranges.len() / 2;
        let fd = Some(NormalKind::FiniteDifference);
        let analytic = Some(NormalKind::Analytic);
        for (shading, normals) in [(Shading::Albedo, None), (Shading::Diffuse, fd), (Shading::Textureless, fd), (Shading::Diffuse, analytic), (Shading::Textureless, analytic)] {
            let spec = composite_spec_with(shading, normals);
            let k = values_of(&spec);
            let reg = RegulariserWeights { orientation: if normals.is_some() { REG.orientation } else { 0.0 }, ..REG };
            let per_ray = normals.is_some();
            let v = field_values(&m, k, 11);
            let up = upstream(n, 12);
            let (gd, ga, gb) = grads_of(&gpu, &m, &v, &spec, per_ray, &up, &reg);
            let fg = MarchInfo::read(&gpu, &m.marched).unwrap().foreground_rays as usize;
            let (d64, a64) = (cpu::to_f64(&v.density), cpu::to_f64(&v.albedo));
            let bg = bg_per_ray(&v, per_ray, n);
            let what = format!("{shading:?} normals={normals:?} [{}]", gpu.features().names().join(","));
            // Every density row and albedo of the valid samples, every background.
            let di: Vec<usize> = (0..m.count * k).collect();
            let ai: Vec<usize> = (0..m.count * 3).collect();
            let fd_d = cpu::central_differences(&d64, &di, 1e-6, |d| reference_loss(&spec, &m, d, &d64, &a64, &bg, &up, &reg, fg));
            let fd_a = cpu::central_differences(&a64, &ai, 1e-6, |a| reference_loss(&spec, &m, &d64, &d64, a, &bg, &up, &reg, fg));
            let ed = cpu::rel_error(&cpu::to_f64(&gd[..m.count * k]), &fd_d);
            let ea = cpu::rel_error(&cpu::to_f64(&ga[..m.count * 3]), &fd_a);
            eprintln!("composite backward {what} vs f64 reference differences: density {ed:.2e}, albedo {ea:.2e}");
            assert!(ed < 1e-4 && ea < 1e-4, "{what}: density {ed}, albedo {ea}");
            if let Some(gb) = gb {
                let flat: Vec<f64> = bg.iter().flatten().copied().collect();
                let fd_b = cpu::central_differences(&flat, &(0..flat.len()).collect::<Vec<_>>(), 1e-6, |b| {
                    let b3: Vec<[f64; 3]> = b.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
                    reference_loss(&spec, &m, &d64, &d64, &a64, &b3, &up, &reg, fg)
                });
                let eb = cpu::rel_error(&cpu::to_f64(&gb), &fd_b);
                assert!(eb < 1e-4, "{what}: background {eb}");
            }
            // Central differences of the device's own f32 forward (orientation
            // left out: its detached weights are not a function's derivative).
            let reg_nd = RegulariserWeights { orientation: 0.0, ..reg };
            let (gd, _, _) = grads_of(&gpu, &m, &v, &spec, per_ray, &up, &reg_nd);
            let probe = cpu::probe_indices(&gd[..m.count * k], 8);
            let device_loss = |d: &[f64]| -> f64 {
                let vv = FieldValues { density: cpu::to_f32(d), albedo: v.albedo.clone(), bg: v.bg.clone() };
                let r = run_composite(&gpu, &m, &vv, &spec, per_ray);
                let img = cpu::RefImages {
                    rgb: (0..n).map(|q| [0, 1, 2].map(|c| r.rgb[cpu::image_index(&spec, q, c)] as f64)).collect(),
                    opacity: cpu::to_f64(&r.opacity),
                    orient: cpu::to_f64(&r.orient),
                    ..Default::default()
                };
                let mut l = 0.0;
                for q in 0..n {
                    for c in 0..3 {
                        l += up.g_rgb[cpu::image_index(&spec, q, c)] as f64 * img.rgb[q][c];
                    }
                    l += up.g_op[q] as f64 * img.opacity[q];
                }
                let (_, s, e) = cpu::regularisers(&img, fg);
                l + reg.sparsity as f64 * s + reg.opaque as f64 * e
            };
            let fd = cpu::central_differences(&d64, &probe, 1e-2, device_loss);
            let e = cpu::rel_error(&probe.iter().map(|&i| gd[i] as f64).collect::<Vec<_>>(), &fd);
            eprintln!("composite backward {what} vs f32 device differences: {e:.2e}");
            assert!(e < 1e-2, "{what}: {e}");
        }
    }
}

#[test]
fn regulariser_values_match_reference() {
    let gpu = gpu();
    let m = run_march(&gpu, &march_spec(true));
    let spec = composite_spec(Shading::Diffuse, true);
    let v = field_values(&m, 7, 21);
    let got = run_composite(&gpu, &m, &v, &spec, false);
    let vals = gpu.download(&render::regulariser_values(&gpu, &m.marched, &got.out).unwrap()).unwrap();
    let d64 = cpu::to_f64(&v.density);
    let n = m.ranges.len() / 2;
    let want = cpu::composite(&spec, &m.rays_host, &m.ranges, &m.samples, &d64, &d64, &cpu::to_f64(&v.albedo), &bg_per_ray(&v, false, n));
    let fg = want.opacity.iter().filter(|o| **o > 0.0).count();
    let (o, s, e) = cpu::regularisers(&want, fg);
    assert_close("regularisers", &vals, &[o as f32, s as f32, e as f32, fg as f32], 1e-5);
}

// ---------------------------------------------------------------------------
// The whole render: march -> field -> composite, and back.

fn render_field(normals: NormalKind) -> FieldSpec {
    FieldSpec { grid: GridLayout::new(4, 2, 6, 2, 2.0).unwrap(), hidden: 16, radius: RADIUS, normals, normal_eps: 0.05, blob_scale: 3.0, blob_std: 0.7 }
}

struct FieldParams {
    table: Vec<f32>,
    mlp: Vec<f32>,
}

fn render_loss_and_grads(gpu: &Gpu, m: &Marching, f: &FieldSpec, w: &FieldParams, spec: &CompositeSpec, up: &Upstream, grads: bool) -> (f64, Vec<f32>, Vec<f32>) {
    let t = gpu.upload(&w.table, &[w.table.len()], DType::F32).unwrap();
    let mw = gpu.upload(&w.mlp, &[w.mlp.len()], DType::F32).unwrap();
    let pts = FieldPoints::Samples { samples: &m.marched.samples, info: &m.marched.info };
    let (d, a) = hashgrid::field_forward(gpu, f, &t, &mw, pts, spec.normals).unwrap();
    let bg = Background::Solid([0.2, 0.5, 0.9]);
    let out = render::composite(gpu, &m.rays, &m.marched, &d, &a, bg, spec).unwrap();
    let rgb = gpu.download(&out.rgb).unwrap();
    let op = gpu.download(&out.opacity).unwrap();
    let loss = rgb.iter().zip(&up.g_rgb).map(|(x, g)| *x as f64 * *g as f64).sum::<f64>()
        + op.iter().zip(&up.g_op).map(|(x, g)| *x as f64 * *g as f64).sum::<f64>();
    if !grads {
        return (loss, vec![], vec![]);
    }
    let g_rgb = gpu.upload(&up.g_rgb, &[2, 3, RAYS_PER_VIEW], DType::F32).unwrap();
    let g_op = gpu.upload(&up.g_op, &[2, 1, RAYS_PER_VIEW], DType::F32).unwrap();
    let cg = render::composite_backward(gpu, &m.rays, &m.marched, &d, &a, bg, spec, &out, &g_rgb, Some(&g_op), &RegulariserWeights::default()).unwrap();
    let gt = gpu.zeros(&[w.table.len()], DType::F32).unwrap();
    let gm = gpu.zeros(&[w.mlp.len()], DType::F32).unwrap();
    hashgrid::field_backward(gpu, f, &t, &mw, pts, spec.normals, &cg.density, &cg.albedo, &gt, &gm).unwrap();
    (loss, gpu.download(&gt).unwrap(), gpu.download(&gm).unwrap())
}

#[test]
fn render_backward_matches_finite_differences() {
    for (shading, normals) in [(Shading::Albedo, None), (Shading::Diffuse, Some(NormalKind::FiniteDifference)), (Shading::Diffuse, Some(NormalKind::Analytic))] {
        let f = render_field(normals.unwrap_or_default());
        let w = FieldParams {
            table: rand_vec(31, f.grid.n_params(), -1.0, 1.0),
            mlp: rand_vec(32, f.mlp_layout().len, -0.6, 0.6),
        };
        let spec = composite_spec_with(shading, normals);
        let mut all = Vec::new();
        for gpu in gpus() {
            let m = run_march(&gpu, &march_spec(true));
            let up = upstream(m.ranges.len() / 2, 33);
            let (_, gt, gm) = render_loss_and_grads(&gpu, &m, &f, &w, &spec, &up, true);
            let it = cpu::probe_indices(&gt, 6);
            let im = cpu::probe_indices(&gm, 6);
            let loss_t = |t: &[f64]| render_loss_and_grads(&gpu, &m, &f, &FieldParams { table: cpu::to_f32(t), mlp: w.mlp.clone() }, &spec, &up, false).0;
            let loss_m = |mm: &[f64]| render_loss_and_grads(&gpu, &m, &f, &FieldParams { table: w.table.clone(), mlp: cpu::to_f32(mm) }, &spec, &up, false).0;
            let fd_t = cpu::central_differences(&cpu::to_f64(&w.table), &it, 3e-3, loss_t);
            let fd_m = cpu::central_differences(&cpu::to_f64(&w.mlp), &im, 3e-3, loss_m);
            let et = cpu::rel_error(&it.iter().map(|&i| gt[i] as f64).collect::<Vec<_>>(), &fd_t);
            let em = cpu::rel_error(&im.iter().map(|&i| gm[i] as f64).collect::<Vec<_>>(), &fd_m);
            let what = format!("{shading:?} normals={normals:?} [{}]", gpu.features().names().join(","));
            eprintln!("render backward {what} vs f32 device differences: table {et:.2e}, mlp {em:.2e}");
            assert!(et < 1e-2 && em < 1e-2, "{what}: table {et}, mlp {em}");
            all.push((gt, gm));
        }
        assert_close("render table gradient, atomics vs CAS", &all[0].0, &all[1].0, 1e-5);
        assert_close("render mlp gradient, atomics vs CAS", &all[0].1, &all[1].1, 1e-5);
    }
}

// ---------------------------------------------------------------------------
// Occupancy grid.

#[test]
fn occupancy_points_lie_in_their_cells() {
    let gpu = gpu();
    let res = 5;
    let pts = gpu.download(&render::occupancy_points(&gpu, res, 2.0, 9).unwrap()).unwrap();
    assert_eq!(pts.len(), 125 * 3);
    for i in 0..125usize {
        let cell = [i % 5, (i / 5) % 5, i / 25];
        for a in 0..3 {
            let lo = -2.0 + cell[a] as f32 * 0.8;
            assert!(pts[3 * i + a] >= lo - 1e-5 && pts[3 * i + a] <= lo + 0.8 + 1e-5, "cell {cell:?} point {:?}", &pts[3 * i..3 * i + 3]);
        }
    }
    let other = gpu.download(&render::occupancy_points(&gpu, res, 2.0, 10).unwrap()).unwrap();
    assert_ne!(pts, other, "a new seed, new jitter");
}

#[test]
fn occupancy_update_matches_reference() {
    let gpu = gpu();
    for &(res, thr) in &[(5u32, 0.01f32), (8, 0.01), (8, 1e9)] {
        let cells = (res as usize).pow(3);
        let density = rand_vec(1, cells, 0.0, 0.3).iter().map(|v| if *v < 0.2 { 0.0 } else { *v }).collect::<Vec<_>>();
        let occ0 = rand_vec(2, cells, 0.0, 0.05);
        let dt = 0.05;
        let d = gpu.upload(&density, &[cells], DType::F32).unwrap();
        let occ = gpu.upload(&occ0, &[cells], DType::F32).unwrap();
        let bits = gpu.upload_u32(&vec![u32::MAX; render::occupancy_words(res)], &[render::occupancy_words(res)]).unwrap();
        render::occupancy_update(&gpu, &d, &occ, &bits, res, 0.95, dt, thr).unwrap();
        let got_occ = gpu.download(&occ).unwrap();
        let got_bits = gpu.download_u32(&bits).unwrap();
        let want: Vec<f32> = (0..cells).map(|i| (occ0[i] * 0.95).max(density[i] * dt)).collect();
        assert_close("occupancy", &got_occ, &want, 1e-6);
        let mean = want.iter().map(|v| *v as f64).sum::<f64>() / cells as f64;
        let t = (mean as f32).min(thr);
        for i in 0..cells {
            let bit = got_bits[i / 32] >> (i % 32) & 1 == 1;
            if (want[i] - t).abs() > 1e-6 {
                assert_eq!(bit, want[i] > t, "cell {i}: occ {} threshold {t}", want[i]);
            }
        }
        if !cells.is_multiple_of(32) {
            assert_eq!(got_bits[cells / 32] >> (cells % 32), 0, "no bits past the last cell");
        }
    }
}

#[test]
fn bad_render_input_is_a_clear_error() {
    let gpu = gpu();
    let m = run_march(&gpu, &march_spec(false));
    let cap = m.samples.len() / 4;
    let d = gpu.zeros(&[cap, 1], DType::F32).unwrap();
    let a = gpu.zeros(&[cap, 3], DType::F32).unwrap();
    let spec = composite_spec(Shading::Diffuse, false);
    let e = render::composite(&gpu, &m.rays, &m.marched, &d, &a, Background::Solid([1.0; 3]), &spec).unwrap_err().to_string();
    assert!(e.contains("normals"), "{e}");
    let spec = CompositeSpec { lights: vec![[0.0; 3]], ..composite_spec(Shading::Albedo, false) };
    let e = render::composite(&gpu, &m.rays, &m.marched, &d, &a, Background::Solid([1.0; 3]), &spec).unwrap_err().to_string();
    assert!(e.contains("lights"), "{e}");
    let bits = gpu.zeros(&[3], DType::U32).unwrap();
    let e = render::march(&gpu, &m.rays, &bits, &march_spec(false)).unwrap_err().to_string();
    assert!(e.contains("occupancy"), "{e}");
}

// ---------------------------------------------------------------------------
// The Scene API with every feature on.

/// A small scene with the learned background.
fn small_scene() -> fsd3d::scene::SceneConfig {
    use fsd3d::scene::{BackgroundConfig, BackgroundKind, FieldConfig, RenderConfig, SceneConfig};
    SceneConfig {
        field: FieldConfig { levels: 4, log2_table_size: 10, base_resolution: 8, per_level_scale: 1.5, hidden: 16, ..Default::default() },
        background: BackgroundConfig { kind: BackgroundKind::Mlp, ..Default::default() },
        render: RenderConfig { samples_per_ray: 64, occupancy_resolution: 8, ..Default::default() },
        ..Default::default()
    }
}

#[test]
fn scene_step_with_every_feature() {
    use fsd3d::scene::{CameraConfig, CameraSampler, RayBatch, RenderOptions, Scene};
    let gpu = gpu();
    let cfg = small_scene();
    let mut scene = Scene::new(&gpu, &cfg, 3).unwrap();
    scene.update_occupancy(&gpu, 0).unwrap();
    let occupied = scene.occupancy.occupied_fraction(&gpu).unwrap();
    assert!(occupied > 0.0 && occupied < 0.5, "the blob occupies the middle of the box: {occupied}");
    let cams = CameraSampler::new(CameraConfig { batch_size: 2, ..Default::default() }, 0).unwrap().sample(0);
    let rays = RayBatch::new(&gpu, &cams, 8, 8).unwrap();
    let reg = RegulariserWeights { orientation: 10.0, sparsity: 1.0, opaque: 0.5 };
    let before = gpu.download(&scene.field.table).unwrap();
    for shading in [Shading::Diffuse, Shading::Textureless, Shading::Albedo] {
        let opts = RenderOptions { normal_image: true, ..RenderOptions::training(shading, 1, true) };
        let r = scene.render(&gpu, &rays, &opts).unwrap();
        assert_eq!(r.images.rgb.shape(), &[2, 3, 64]);
        let op = gpu.download(&r.images.opacity).unwrap();
        assert!(op.iter().all(|o| (0.0..=1.0 + 1e-6).contains(o)) && op.iter().any(|o| *o > 0.5), "the blob is seen: {op:?}");
        let nrm = gpu.download(r.images.normal.as_ref().unwrap()).unwrap();
        assert!(nrm.iter().all(|v| v.is_finite()) && nrm.iter().any(|v| *v != 0.0));
        let d_rgb = gpu.upload(&rand_vec(1, 2 * 3 * 64, -0.01, 0.01), &[2, 3, 64], DType::F32).unwrap();
        let d_op = gpu.upload(&rand_vec(2, 2 * 64, -0.01, 0.01), &[2, 1, 64], DType::F32).unwrap();
        scene.backward(&gpu, &r, &d_rgb, Some(&d_op), &reg).unwrap();
        let vals = gpu.download(&scene.regulariser_values(&gpu, &r).unwrap()).unwrap();
        assert!(vals.iter().all(|v| v.is_finite()) && vals[3] > 0.0, "{vals:?}");
        for g in &scene.adam.groups {
            let grad = gpu.download(&g.grad).unwrap();
            assert!(grad.iter().all(|v| v.is_finite()), "{} gradient not finite", g.name);
            assert!(grad.iter().any(|v| *v != 0.0), "{} got no gradient with {shading:?}", g.name);
        }
        scene.optimizer_step(&gpu, 1.0).unwrap();
    }
    assert_eq!(scene.adam.step, 3);
    assert_ne!(gpu.download(&scene.field.table).unwrap(), before, "Adam moved the grid");
}

#[test]
fn render_image_in_chunks_matches_one_render() {
    use fsd3d::scene::camera::Camera;
    use fsd3d::scene::{RayBatch, RenderOptions, Scene};
    let gpu = gpu();
    let cfg = small_scene();
    let whole = Scene::new(&gpu, &cfg, 4).unwrap();
    whole.update_occupancy(&gpu, 0).unwrap();
    let cam = Camera::orbit(10.0, 70.0, 1.8, 60.0);
    let (w, h) = (9, 7);
    let img = whole.render_image(&gpu, &cam, w, h, Shading::Diffuse).unwrap();
    // The same through one render call.
    let r = whole.render(&gpu, &RayBatch::new(&gpu, &[cam], w, h).unwrap(), &RenderOptions::eval(Shading::Diffuse)).unwrap();
    assert_close("rgb", &img.rgb, &gpu.download(&r.images.rgb).unwrap(), 1e-6);
    assert_close("normal", &img.normal, &gpu.download(r.images.normal.as_ref().unwrap()).unwrap(), 1e-6);
    assert!(img.opacity.iter().any(|o| *o > 0.5));
    // A capacity of 3 rays' samples per render: 21 chunks, the same images.
    let mut small = cfg.clone();
    small.render.max_samples_total = 3 * 64;
    let mut chunked = Scene::new(&gpu, &small, 4).unwrap();
    chunked.occupancy = whole.occupancy;
    let img2 = chunked.render_image(&gpu, &cam, w, h, Shading::Diffuse).unwrap();
    assert_close("chunked rgb", &img2.rgb, &img.rgb, 1e-6);
    assert_close("chunked depth", &img2.depth, &img.depth, 1e-6);
}

/// Pruning the occluded samples (a density-only pass, then the full field on
/// what compositing reaches) leaves the images and every gradient as they
/// were, and does skip samples behind an opaque blob.
#[test]
fn pruning_occluded_samples_keeps_images_and_gradients() {
    use fsd3d::scene::{CameraConfig, CameraSampler, RayBatch, RenderOptions, Scene};
    let gpu = gpu();
    let mut cfg = small_scene();
    // A dense blob (σ up to ~200, σ·dt up to ~5 a sample): rays through it
    // go opaque inside it.
    cfg.field.blob_scale = 200.0;
    cfg.render.samples_per_ray = 128;
    let cams = CameraSampler::new(CameraConfig { batch_size: 2, ..Default::default() }, 5).unwrap().sample(3);
    let rays = RayBatch::new(&gpu, &cams, 7, 9).unwrap();
    let reg = RegulariserWeights { orientation: 10.0, sparsity: 1.0, opaque: 0.5 };
    let d_rgb = gpu.upload(&rand_vec(7, 2 * 3 * 63, -0.01, 0.01), &[2, 3, 63], DType::F32).unwrap();
    let d_op = gpu.upload(&rand_vec(8, 2 * 63, -0.01, 0.01), &[2, 1, 63], DType::F32).unwrap();
    let run = |prune: bool| {
        let mut c = cfg.clone();
        c.render.prune_occluded = prune;
        let scene = Scene::new(&gpu, &c, 11).unwrap();
        scene.update_occupancy(&gpu, 0).unwrap();
        let r = scene.render(&gpu, &rays, &RenderOptions { normal_image: true, ..RenderOptions::training(Shading::Diffuse, 2, true) }).unwrap();
        scene.backward(&gpu, &r, &d_rgb, Some(&d_op), &reg).unwrap();
        let info = MarchInfo::read(&gpu, &r.marched).unwrap();
        let images: Vec<Vec<f32>> = [&r.images.rgb, &r.images.opacity, &r.images.depth, r.images.normal.as_ref().unwrap()]
            .iter()
            .map(|t| gpu.download(t).unwrap())
            .collect();
        let grads: Vec<Vec<f32>> = scene.adam.groups.iter().map(|g| gpu.download(&g.grad).unwrap()).collect();
        (info, images, grads)
    };
    let (full_info, full_images, full_grads) = run(false);
    let (pruned_info, pruned_images, pruned_grads) = run(true);
    assert_eq!(full_info.samples, full_info.marched, "without pruning every marched sample is evaluated");
    assert_eq!(pruned_info.marched, full_info.samples, "the same march");
    assert!(!pruned_info.overflowed());
    assert!(
        (pruned_info.samples as f32) < 0.8 * pruned_info.marched as f32,
        "rays through the opaque blob stop early: {pruned_info:?}"
    );
    assert!(full_images[1].iter().any(|o| *o > 0.999), "some rays go opaque");
    for (what, (got, want)) in ["rgb", "opacity", "depth", "normal"].iter().zip(pruned_images.iter().zip(&full_images)) {
        assert_close(what, got, want, 1e-5);
    }
    for (g, (got, want)) in pruned_grads.iter().zip(&full_grads).enumerate() {
        assert!(want.iter().any(|v| *v != 0.0));
        assert_close(&format!("gradient group {g}"), got, want, 1e-5);
    }
}

/// A pruned march keeps the march's capacity overflow in its info.
#[test]
fn pruning_keeps_the_overflow_count() {
    let gpu = gpu();
    let spec = MarchSpec { capacity: 40, ..march_spec(false) };
    let m = run_march(&gpu, &spec);
    let cap = m.samples.len() / 4;
    let info = MarchInfo::read(&gpu, &m.marched).unwrap();
    assert!(info.overflowed());
    // σ = 0 everywhere: nothing is occluded, every sample is kept.
    let sigma = gpu.zeros(&[cap], DType::F32).unwrap();
    let kept = render::prune_occluded(&gpu, &m.marched, &sigma, spec.dt, 1e-4).unwrap();
    let kinfo = MarchInfo::read(&gpu, &kept).unwrap();
    assert_eq!((kinfo.samples, kinfo.requested, kinfo.marched), (info.samples, info.requested, info.samples));
    assert_eq!(gpu.download_u32(&kept.ranges).unwrap(), gpu.download_u32(&m.marched.ranges).unwrap());
    assert_eq!(gpu.download(&kept.samples).unwrap()[..4 * cap], m.samples[..4 * cap]);
    // σ huge everywhere: each ray keeps exactly its first sample.
    let sigma = gpu.upload(&vec![1e4; cap], &[cap], DType::F32).unwrap();
    let kept = render::prune_occluded(&gpu, &m.marched, &sigma, spec.dt, 1e-4).unwrap();
    let ranges = gpu.download_u32(&m.marched.ranges).unwrap();
    let kranges = gpu.download_u32(&kept.ranges).unwrap();
    let ksamples = gpu.download(&kept.samples).unwrap();
    for r in 0..ranges.len() / 2 {
        assert_eq!(kranges[2 * r + 1], ranges[2 * r + 1].min(1), "ray {r}");
        if kranges[2 * r + 1] == 1 {
            let (src, dst) = (ranges[2 * r] as usize, kranges[2 * r] as usize);
            assert_eq!(ksamples[4 * dst..4 * dst + 4], m.samples[4 * src..4 * src + 4], "ray {r}'s first sample");
        }
    }
    let kinfo = MarchInfo::read(&gpu, &kept).unwrap();
    assert_eq!(kinfo.requested - kinfo.samples, info.requested - info.samples, "the dropped samples still show");
}
