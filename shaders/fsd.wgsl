// The paper's own kernels (Flow Score Distillation, FSD_SPEC §2 and §4):
// the world-map gather of the view-aligned noise ε(c), and the
// distillation gradient on the render. Each entry has its own parameters.
// Defines: T (storage type of ε(c)), WG (workgroup size), one of WORLDMAP,
// DISTILL_GRAD, CFG_RESCALE.

const WG: u32 = {{WG}}u;
#include "common.wgsl"

#if WORLDMAP
// FSD's view-aligned noise ε(c) (FSD_SPEC §4): for view b, element (d, i, j):
//   P = map[d, row0_b + i, (col0_b + j) mod W]   (an integer crop: never interpolated)
//   M = [mean of the opacity cell over (i, j) > α0]
//   ε = √β·((1 − M)·bg[d, i, j] + M·P) + √(1 − β)·fresh[b, d, i, j]
struct WorldMapParams {
    n: u32,          // elements of ε(c): B·D·h·w
    channels: u32,   // D
    height: u32,     // h
    width: u32,      // w
    beta: f32,       // β
    alpha0: f32,     // α0, the opacity threshold of the foreground mask
    pool: u32,       // k: opacity pixels per noise pixel, per axis
    map_rows: u32,   // H + h
    map_cols: u32,   // W
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: WorldMapParams;
@group(0) @binding(1) var<storage, read> world: array<f32>;     // [D, H + h, W]
@group(0) @binding(2) var<storage, read> background: array<f32>; // [D, h, w]
@group(0) @binding(3) var<storage, read> fresh: array<f32>;      // [B, D, h, w]
@group(0) @binding(4) var<storage, read> opacity: array<f32>;    // [B, 1, h·k, w·k]
@group(0) @binding(5) var<storage, read> origins: array<u32>;    // [B, 2]: row0, col0
@group(0) @binding(6) var<storage, read_write> o: array<{{T}}>;  // [B, D, h, w]

@compute @workgroup_size(WG)
fn worldmap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = linear_id(wid, lid, nwg);
    if (idx >= p.n) { return; }
    let h = p.height;
    let w = p.width;
    let j = idx % w;
    let i = (idx / w) % h;
    let d = (idx / (w * h)) % p.channels;
    let b = idx / (w * h * p.channels);
    let k = p.pool;
    // Mean opacity over the k×k cell of this noise pixel.
    var acc = 0.0;
    let ow = w * k;
    let obase = b * (h * k) * ow;
    for (var y = 0u; y < k; y++) {
        for (var x = 0u; x < k; x++) {
            acc += opacity[obase + (i * k + y) * ow + (j * k + x)];
        }
    }
    let m = select(0.0, 1.0, acc / f32(k * k) > p.alpha0);
    let row = origins[2u * b] + i;
    let col = (origins[2u * b + 1u] + j) % p.map_cols;
    let crop = world[(d * p.map_rows + row) * p.map_cols + col];
    let bg = background[(d * h + i) * w + j];
    let det = (1.0 - m) * bg + m * crop;
    o[idx] = {{T}}(sqrt(p.beta) * det + sqrt(1.0 - p.beta) * fresh[idx]);
}
#endif

#if DISTILL_GRAD
// The distillation gradient on the render (FSD_SPEC §2):
// g = w·(pred − goal), non-finite values zeroed (and counted, so the host
// can stop the run with a clear error instead of poisoning the optimiser),
// clamped to ±clip when clip > 0, then multiplied by the output scale.
struct DistillGradParams {
    n: u32,
    weight: f32,     // w(t)
    clip: f32,       // 0: no clamp
    out_scale: f32,
}

@group(0) @binding(0) var<uniform> p: DistillGradParams;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> goal: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<storage, read_write> nonfinite: array<atomic<u32>>;

// Inf and NaN have an all-ones exponent; checking the bits survives
// compilers that assume finite math.
fn is_finite_bits(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WG)
fn distill_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    var g = p.weight * (pred[i] - goal[i]);
    if (!is_finite_bits(g)) {
        atomicAdd(&nonfinite[0], 1u);
        g = 0.0;
    }
    if (p.clip > 0.0) {
        g = clamp(g, -p.clip, p.clip);
    }
    o[i] = g * p.out_scale;
}
#endif

#if CFG_RESCALE
// Classifier-free guidance with the rescale of a multi-view prior's x̂0
// (threestudio's MVDream guidance, `recon_std_rescale` φ), written back as
// the ε̂ that gives that x̂0. One workgroup per group of G elements (the views
// of one object: [views, C, h, w]):
//   ε̂ = ε_∅ + s·(ε_y − ε_∅);  x̂0 = (x_t − σ·ε̂)/α;  x̂0_y = (x_t − σ·ε_y)/α
//   f = (std(x̂0_y) + 1e-8) / (std(x̂0) + 1e-8)   (unbiased std over the group)
//   x̂0' = (φ·f + 1 − φ)·x̂0;                      out = (x_t − α·x̂0')/σ
struct RescaleParams {
    group: u32,   // G, elements of one group
    scale: f32,   // s
    alpha: f32,   // α_t = √ᾱ_t
    sigma: f32,   // σ_t = √(1 − ᾱ_t)
    phi: f32,     // φ
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: RescaleParams;
@group(0) @binding(1) var<storage, read> x_t: array<f32>;
@group(0) @binding(2) var<storage, read> eps_cond: array<f32>;
@group(0) @binding(3) var<storage, read> eps_uncond: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

var<workgroup> red: array<f32, {{WG}}>;
#include "wg_sum.wgsl"

fn x0_guided(i: u32) -> f32 {
    let u = eps_uncond[i];
    return (x_t[i] - p.sigma * (u + p.scale * (eps_cond[i] - u))) / p.alpha;
}

fn x0_cond(i: u32) -> f32 {
    return (x_t[i] - p.sigma * eps_cond[i]) / p.alpha;
}

// Two passes over the group (mean, then squared deviations): the group is a
// few thousand elements and f32 one-pass variances lose digits on offsets.
@compute @workgroup_size(WG)
fn cfg_rescale(ids: Ids) {
    let base = ids.wid.x * p.group;
    var sg = 0.0;
    var sc = 0.0;
    for (var i = ids.lid; i < p.group; i += WG) {
        sg += x0_guided(base + i);
        sc += x0_cond(base + i);
    }
    let n = f32(p.group);
    let mg = wg_sum(sg, ids) / n;
    let mc = wg_sum(sc, ids) / n;
    var dg = 0.0;
    var dc = 0.0;
    for (var i = ids.lid; i < p.group; i += WG) {
        let a = x0_guided(base + i) - mg;
        let b = x0_cond(base + i) - mc;
        dg += a * a;
        dc += b * b;
    }
    let std_g = sqrt(wg_sum(dg, ids) / max(n - 1.0, 1.0));
    let std_c = sqrt(wg_sum(dc, ids) / max(n - 1.0, 1.0));
    let k = p.phi * (std_c + 1e-8) / (std_g + 1e-8) + 1.0 - p.phi;
    for (var i = ids.lid; i < p.group; i += WG) {
        o[base + i] = (x_t[base + i] - p.alpha * k * x0_guided(base + i)) / p.sigma;
    }
}
#endif
