//! Plain CPU references for the 3D side's tests (f64 arithmetic), written
//! from the definitions (tcnn's grid encoding, threestudio's field and
//! nerfacc-style compositing), independent of the kernels; plus gradient
//! checking helpers.
#![allow(dead_code)]
use fsd3d::ops::hashgrid::{FieldSpec, GridLayout};

/// Hash-grid features of `u` (clamped to [0,1]³) from `table`.
pub fn grid_features(layout: &GridLayout, table: &[f64], u: [f32; 3]) -> Vec<f64> {
    let f = layout.features_per_level as usize;
    let mut out = vec![0.0; layout.output_dim()];
    for l in 0..layout.levels.len() {
        for (c, w) in level_corners(layout, l, u) {
            for k in 0..f {
                out[l * f + k] += w * table[c * f + k];
            }
        }
    }
    out
}

/// (table entry, trilinear weight) of the 8 vertices around `u` at level `l`.
pub fn level_corners(layout: &GridLayout, l: usize, u: [f32; 3]) -> Vec<(usize, f64)> {
    let lv = &layout.levels[l];
    let mut g = [0u32; 3];
    let mut fr = [0f64; 3];
    for d in 0..3 {
        // The position in f32 as tcnn computes it: u·scale + 0.5.
        let pos = u[d].clamp(0.0, 1.0) * lv.scale + 0.5;
        let fl = pos.floor();
        g[d] = fl as u32;
        fr[d] = (pos - fl) as f64;
    }
    let res = lv.resolution as u64;
    let mut out = Vec::with_capacity(8);
    for c in 0..8u32 {
        let mut v = [0u64; 3];
        let mut w = 1.0;
        for d in 0..3 {
            let bit = (c >> d) & 1;
            v[d] = (g[d] + bit) as u64;
            w *= if bit == 1 { fr[d] } else { 1.0 - fr[d] };
        }
        let dense = res * res * res <= lv.size as u64;
        let index = if dense {
            v[0] + v[1] * res + v[2] * res * res
        } else {
            // The spatial hash on 32-bit words.
            let h = (v[0] as u32) ^ (v[1] as u32).wrapping_mul(2_654_435_761) ^ (v[2] as u32).wrapping_mul(805_459_861);
            h as u64
        };
        out.push((lv.offset as usize + (index % lv.size as u64) as usize, w));
    }
    out
}

pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The world position of row `k` of a point (k > 0: ±eps along x, y, z, clamped).
pub fn row_position(spec: &FieldSpec, p: [f32; 3], k: usize) -> [f32; 3] {
    let mut q = p;
    if k > 0 {
        let axis = (k - 1) / 2;
        let sign = if (k - 1).is_multiple_of(2) { 1.0 } else { -1.0 };
        q[axis] += sign * spec.normal_eps;
        for v in &mut q {
            *v = v.clamp(-spec.radius, spec.radius);
        }
    }
    q
}

fn head(w1: &[f64], w2: &[f64], x: &[f64], hidden: usize, outputs: usize) -> Vec<f64> {
    let nin = x.len();
    let h: Vec<f64> = (0..hidden).map(|j| (0..nin).map(|i| w1[j * nin + i] * x[i]).sum::<f64>().max(0.0)).collect();
    (0..outputs).map(|o| (0..hidden).map(|j| w2[o * hidden + j] * h[j]).sum()).collect()
}

/// (density, albedo) of the field at world position `pos`.
pub fn field_at(spec: &FieldSpec, table: &[f64], mlp: &[f64], pos: [f32; 3]) -> (f64, [f64; 3]) {
    let r = spec.radius;
    let u = [(pos[0] + r) / (2.0 * r), (pos[1] + r) / (2.0 * r), (pos[2] + r) / (2.0 * r)];
    let x = grid_features(&spec.grid, table, u);
    let lay = spec.mlp_layout();
    let h = spec.hidden as usize;
    let raw_d = head(&mlp[lay.w1_density..lay.w2_density], &mlp[lay.w2_density..lay.w1_albedo], &x, h, 1)[0];
    let norm = pos.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let bias = spec.blob_scale as f64 * (1.0 - norm / spec.blob_std as f64);
    let raw_a = head(&mlp[lay.w1_albedo..lay.w2_albedo], &mlp[lay.w2_albedo..lay.len], &x, h, 3);
    (softplus(raw_d + bias), [sigmoid(raw_a[0]), sigmoid(raw_a[1]), sigmoid(raw_a[2])])
}

/// ∂(trilinear weight)/∂u of the 8 vertices of [`level_corners`] (same
/// order): the product rule on the per-axis weights, times the level's scale
/// along each axis where u is inside [0, 1] (zero where it is clamped).
pub fn level_corner_gradients(layout: &GridLayout, l: usize, u: [f32; 3]) -> Vec<[f64; 3]> {
    let lv = &layout.levels[l];
    let mut fr = [0f64; 3];
    let mut dpos = [0f64; 3];
    for d in 0..3 {
        let pos = u[d].clamp(0.0, 1.0) * lv.scale + 0.5;
        fr[d] = (pos - pos.floor()) as f64;
        dpos[d] = if (0.0..=1.0).contains(&u[d]) { lv.scale as f64 } else { 0.0 };
    }
    (0..8u32)
        .map(|c| {
            let bit = |d: usize| (c >> d) & 1 == 1;
            let w = |d: usize| if bit(d) { fr[d] } else { 1.0 - fr[d] };
            let dw = |d: usize| if bit(d) { dpos[d] } else { -dpos[d] };
            [dw(0) * w(1) * w(2), w(0) * dw(1) * w(2), w(0) * w(1) * dw(2)]
        })
        .collect()
}

/// (σ, ∇σ in world units) at world `pos`, by the chain rule written out:
/// features and their Jacobian from the corners' weight gradients, through
/// the density head's ReLU layer, softplus and the blob bias.
pub fn density_and_gradient(spec: &FieldSpec, table: &[f64], mlp: &[f64], pos: [f32; 3]) -> (f64, [f64; 3]) {
    let r = spec.radius;
    let u = [(pos[0] + r) / (2.0 * r), (pos[1] + r) / (2.0 * r), (pos[2] + r) / (2.0 * r)];
    let layout = &spec.grid;
    let nf = layout.features_per_level as usize;
    let nin = layout.output_dim();
    let mut x = vec![0.0; nin];
    let mut jac = vec![[0.0f64; 3]; nin];
    for l in 0..layout.levels.len() {
        let corners = level_corners(layout, l, u);
        let grads = level_corner_gradients(layout, l, u);
        for ((entry, w), dw) in corners.into_iter().zip(grads) {
            for f in 0..nf {
                let t = table[entry * nf + f];
                x[l * nf + f] += w * t;
                for d in 0..3 {
                    jac[l * nf + f][d] += dw[d] * t;
                }
            }
        }
    }
    let lay = spec.mlp_layout();
    let h = spec.hidden as usize;
    let (w1, w2) = (&mlp[lay.w1_density..lay.w2_density], &mlp[lay.w2_density..lay.w1_albedo]);
    let mut z = 0.0;
    let mut dz_du = [0.0f64; 3];
    for j in 0..h {
        let pre: f64 = (0..nin).map(|i| w1[j * nin + i] * x[i]).sum();
        if pre > 0.0 {
            z += w2[j] * pre;
            for d in 0..3 {
                dz_du[d] += w2[j] * (0..nin).map(|i| w1[j * nin + i] * jac[i][d]).sum::<f64>();
            }
        }
    }
    let p64 = pos.map(|v| v as f64);
    let norm = p64.iter().map(|v| v * v).sum::<f64>().sqrt();
    z += spec.blob_scale as f64 * (1.0 - norm / spec.blob_std as f64);
    let s = sigmoid(z);
    let mut g = [0.0; 3];
    for d in 0..3 {
        let blob = if norm > 0.0 { -(spec.blob_scale as f64) / spec.blob_std as f64 * p64[d] / norm } else { 0.0 };
        g[d] = s * (dz_du[d] / (2.0 * r as f64) + blob);
    }
    (softplus(z), g)
}

/// Which hidden units of the density head are active (pre-activation > 0) at `pos`.
pub fn density_active_units(spec: &FieldSpec, table: &[f64], mlp: &[f64], pos: [f32; 3]) -> Vec<bool> {
    let r = spec.radius;
    let u = [(pos[0] + r) / (2.0 * r), (pos[1] + r) / (2.0 * r), (pos[2] + r) / (2.0 * r)];
    let x = grid_features(&spec.grid, table, u);
    let lay = spec.mlp_layout();
    let nin = x.len();
    (0..spec.hidden as usize).map(|j| (0..nin).map(|i| mlp[lay.w1_density + j * nin + i] * x[i]).sum::<f64>() > 0.0).collect()
}

/// The field at `points` (world, [n, 3]): density [n, K] and albedo [n, 3].
/// K = 1 (σ), 4 (σ and its analytic gradient) or 7 (σ at the point and its
/// six finite-difference neighbours).
pub fn field(spec: &FieldSpec, table: &[f64], mlp: &[f64], points: &[f32], k: usize) -> (Vec<f64>, Vec<f64>) {
    if k == 4 {
        let (_, albedo) = field(spec, table, mlp, points, 1);
        let density = (0..points.len() / 3)
            .flat_map(|i| {
                let (s, g) = density_and_gradient(spec, table, mlp, [points[3 * i], points[3 * i + 1], points[3 * i + 2]]);
                [s, g[0], g[1], g[2]]
            })
            .collect();
        return (density, albedo);
    }
    let n = points.len() / 3;
    let mut density = Vec::with_capacity(n * k);
    let mut albedo = Vec::with_capacity(n * 3);
    for i in 0..n {
        let p = [points[3 * i], points[3 * i + 1], points[3 * i + 2]];
        for r in 0..k {
            let (s, a) = field_at(spec, table, mlp, row_position(spec, p, r));
            density.push(s);
            if r == 0 {
                albedo.extend_from_slice(&a);
            }
        }
    }
    (density, albedo)
}

/// Central differences of `loss` with respect to each of `params[idx]`.
pub fn central_differences(params: &[f64], idx: &[usize], h: f64, mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut p = params.to_vec();
    idx.iter()
        .map(|&i| {
            let v = p[i];
            p[i] = v + h;
            let lp = loss(&p);
            p[i] = v - h;
            let lm = loss(&p);
            p[i] = v;
            (lp - lm) / (2.0 * h)
        })
        .collect()
}

/// ‖a − b‖ / max(‖b‖, tiny).
pub fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Indices of the `n` largest |g| entries plus `n` spread-out others.
pub fn probe_indices(g: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| g[b].abs().partial_cmp(&g[a].abs()).unwrap());
    let mut idx: Vec<usize> = order.iter().take(n).copied().collect();
    let step = (g.len() / n.max(1)).max(1);
    idx.extend((0..g.len()).step_by(step).take(n));
    idx.sort();
    idx.dedup();
    idx
}

// ---------------------------------------------------------------------------
// Compositing.

use fsd3d::ops::render::{CompositeSpec, Shading};

/// Per-ray outputs of the reference compositor.
#[derive(Clone, Debug, Default)]
pub struct RefImages {
    pub rgb: Vec<[f64; 3]>,
    pub opacity: Vec<f64>,
    pub depth: Vec<f64>,
    pub normal: Vec<[f64; 3]>,
    pub orient: Vec<f64>,
}

fn norm3(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}
fn dot3(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Front-to-back compositing of each ray's samples, from the definitions:
/// T_s = Π_{q<s} exp(−σ_q dt), w_s = T_s (1 − exp(−σ_s dt)); stops once T < early_stop.
/// `orient_density` gives the weights of the orientation loss (pass `density`
/// itself, or a frozen copy to treat the weights as constants).
#[allow(clippy::too_many_arguments)]
pub fn composite(
    spec: &CompositeSpec,
    rays: &[f32],
    ranges: &[u32],
    samples: &[f32],
    density: &[f64],
    orient_density: &[f64],
    albedo: &[f64],
    bg: &[[f64; 3]],
) -> RefImages {
    let k = if spec.normals { spec.normal_kind.values_per_point() as usize } else { 1 };
    let n = ranges.len() / 2;
    let mut out = RefImages::default();
    let dt = spec.dt as f64;
    for r in 0..n {
        let (off, cnt) = (ranges[2 * r] as usize, ranges[2 * r + 1] as usize);
        let d = [rays[8 * r + 4] as f64, rays[8 * r + 5] as f64, rays[8 * r + 6] as f64];
        let light = spec.lights[r / spec.rays_per_view];
        let (mut t, mut t_orient) = (1.0f64, 1.0f64);
        let mut rgb = [0.0; 3];
        let (mut op, mut depth, mut orient) = (0.0, 0.0, 0.0);
        let mut nrm = [0.0; 3];
        for s in off..off + cnt {
            if t < spec.early_stop as f64 {
                break;
            }
            let sigma = density[s * k];
            let w = t * (1.0 - (-sigma * dt).exp());
            let w_orient = t_orient * (1.0 - (-orient_density[s * k] * dt).exp());
            let x = [samples[4 * s] as f64, samples[4 * s + 1] as f64, samples[4 * s + 2] as f64];
            let mut nv = [0.0; 3];
            if k == 4 {
                let g = [density[s * 4 + 1], density[s * 4 + 2], density[s * 4 + 3]];
                let len = norm3(g).max(1e-12);
                nv = [-g[0] / len, -g[1] / len, -g[2] / len];
            }
            if k == 7 {
                let e = spec.normal_eps as f64;
                let g = [
                    (density[s * 7 + 1] - density[s * 7 + 2]) / (2.0 * e),
                    (density[s * 7 + 3] - density[s * 7 + 4]) / (2.0 * e),
                    (density[s * 7 + 5] - density[s * 7 + 6]) / (2.0 * e),
                ];
                let len = norm3(g).max(1e-12);
                nv = [-g[0] / len, -g[1] / len, -g[2] / len];
            }
            let lv = [light[0] as f64 - x[0], light[1] as f64 - x[1], light[2] as f64 - x[2]];
            let ll = norm3(lv);
            let l = [lv[0] / ll, lv[1] / ll, lv[2] / ll];
            let term = spec.ambient as f64 + spec.diffuse as f64 * dot3(nv, l).max(0.0);
            let a = [albedo[3 * s], albedo[3 * s + 1], albedo[3 * s + 2]];
            let c = match spec.shading {
                Shading::Albedo => a,
                Shading::Diffuse => [a[0] * term, a[1] * term, a[2] * term],
                Shading::Textureless => [term; 3],
            };
            for q in 0..3 {
                rgb[q] += w * c[q];
                nrm[q] += w * nv[q];
            }
            op += w;
            depth += w * samples[4 * s + 3] as f64;
            orient += w_orient * dot3(nv, d).max(0.0).powi(2);
            t *= (-sigma * dt).exp();
            t_orient *= (-orient_density[s * k] * dt).exp();
        }
        for q in 0..3 {
            rgb[q] += (1.0 - op) * bg[r][q];
        }
        out.rgb.push(rgb);
        out.opacity.push(op);
        out.depth.push(depth);
        out.normal.push(nrm);
        out.orient.push(orient);
    }
    out
}

/// Regulariser values: (orientation Σ / foreground, sparsity mean, entropy mean).
pub fn regularisers(img: &RefImages, foreground: usize) -> (f64, f64, f64) {
    let n = img.opacity.len() as f64;
    let orient = img.orient.iter().sum::<f64>() / foreground.max(1) as f64;
    let sparsity = img.opacity.iter().map(|o| (o * o + 0.01).sqrt()).sum::<f64>() / n;
    let opaque = img
        .opacity
        .iter()
        .map(|o| {
            let c = o.clamp(1e-3, 1.0 - 1e-3);
            -(c * c.ln() + (1.0 - c) * (1.0 - c).ln())
        })
        .sum::<f64>()
        / n;
    (orient, sparsity, opaque)
}

/// NCHW index of channel c of ray r.
pub fn image_index(spec: &CompositeSpec, r: usize, c: usize) -> usize {
    let hw = spec.rays_per_view;
    (r / hw * 3 + c) * hw + r % hw
}
