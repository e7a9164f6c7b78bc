// The input gradient of group norm (torch.nn.GroupNorm with frozen affine
// weights, optionally followed by SiLU), from the forward's input x and the
// gradient dz of its output. Storage types come from defines; statistics and
// arithmetic are f32.
//
// With x̂ = (x − mean)·rstd per (batch, group), y = γ·x̂ + β, z = silu(y)
// (or z = y), and g = ∂L/∂x̂ = dz · silu'(y) · γ:
//   dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)),   means over the group.
// silu'(y) = s·(1 + y·(1 − s)), s = sigmoid(y).
//
// Five dispatches, each reduction spread over many workgroups so that a
// large group (the VAE's: 2M elements) is not one workgroup's work:
//   gnb_stats          per block of a (batch, channel) plane: (d, M2) of x
//                      relative to K = the group's first element
//   gnb_finalize_stats one invocation per group: merges its blocks -> (K, d, rstd)
//   gnb_grad_sums      per block: (Σ g, Σ g·x̂)
//   gnb_finalize_grad  one invocation per group: -> (mean g, mean g·x̂)
//   gnb_apply          per block: dx
// The statistics are the forward's (norm.wgsl): shifted by K, Welford's update
// within an invocation, Chan's parallel merge across invocations and blocks.
// Blocks lie within one plane, so channel, γ and β are uniform per workgroup.
//
// Defines: T (x storage), TG (dz and dx storage), TP (γ / β storage), WG
// (workgroup size, a power of two), SUBGROUP_OPS, SILU, GAMMA, BETA,
// GAMMA_SLOT / BETA_SLOT (their bindings), and one of GNB_STATS,
// GNB_FINALIZE_STATS, GNB_GRAD_SUMS, GNB_FINALIZE_GRAD, GNB_APPLY; with
// BLOCK_REDUCE = GNB_STATS or GNB_GRAD_SUMS (the block reductions) and
// ELEMENT_GRAD = GNB_GRAD_SUMS or GNB_APPLY (the kernels that need g).
// SUBGROUP_OPS = 1 uses subgroup reductions (any subgroup size), else
// workgroup memory.

struct Params {
    n_groups: u32,       // B·G
    n_planes: u32,       // B·C
    plane_len: u32,      // elements per (batch, channel) plane
    block_len: u32,      // elements per workgroup block of a plane
    n_blocks: u32,       // blocks per plane
    channels: u32,       // C
    group_channels: u32, // C / G
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Workgroup ids (and subgroup ids with SUBGROUP_OPS).
#include "workgroup_ids.wgsl"

#if GNB_STATS
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
#endif
#if GNB_FINALIZE_STATS
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
#endif
#if GNB_GRAD_SUMS
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read> dz: array<{{TG}}>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
#endif
#if GNB_FINALIZE_GRAD
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad_stats: array<f32>;
#endif
#if GNB_APPLY
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read> dz: array<{{TG}}>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> grad_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<{{TG}}>;
#endif
#if GAMMA
@group(0) @binding({{GAMMA_SLOT}}) var<storage, read> gamma: array<{{TP}}>;
#endif
#if BETA
@group(0) @binding({{BETA_SLOT}}) var<storage, read> beta: array<{{TP}}>;
#endif

// Elements of block `blk` of a plane.
fn block_count(blk: u32) -> u32 {
    return min(p.block_len, p.plane_len - blk * p.block_len);
}

#if BLOCK_REDUCE
var<workgroup> red: array<vec2<f32>, {{WG}}>;

// Sum of `v` over the workgroup, returned to every invocation. Must be called
// by all invocations (workgroup-uniform control flow); `red` is free again on return.
fn wg_sum(v: vec2<f32>, ids: Ids) -> vec2<f32> {
#if SUBGROUP_OPS
    // Any subgroup size works: one partial per subgroup, num_subgroups of them.
    let s = subgroupAdd(v);
    if (ids.sg_lane == 0u) { red[ids.sg_id] = s; }
    workgroupBarrier();
    var t = vec2<f32>(0.0);
    for (var i = 0u; i < ids.n_sg; i++) { t += red[i]; }
    workgroupBarrier();
    return t;
#else
    red[ids.lid] = v;
    workgroupBarrier();
    for (var half = {{WG}}u / 2u; half > 0u; half >>= 1u) {
        if (ids.lid < half) { red[ids.lid] += red[ids.lid + half]; }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
#endif
}

// Grid: x = block within the plane, y·z folded = plane (batch·C + channel).
fn plane_of(ids: Ids) -> u32 {
    return ids.wid.y + ids.wid.z * ids.nwg.y;
}
#endif

#if GNB_STATS
// Per block: (d = block mean − K, M2 = Σ (x − block mean)²), K = x at the
// start of the plane's group.
@compute @workgroup_size({{WG}})
fn gnb_stats(ids: Ids) {
    let plane = plane_of(ids);
    if (plane >= p.n_planes) { return; }
    let blk = ids.wid.x;
    let group_start = (plane / p.group_channels) * p.group_channels * p.plane_len;
    let k = f32(x[group_start]);
    let base = plane * p.plane_len + blk * p.block_len;
    let n = block_count(blk);
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var i = ids.lid; i < n; i += {{WG}}u) {
        let v = f32(x[base + i]) - k;
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        m2 += delta * (v - mean);
    }
    let d = wg_sum(vec2<f32>(count * mean, 0.0), ids).x / f32(n);
    let spread = mean - d;
    let total_m2 = wg_sum(vec2<f32>(m2 + count * spread * spread, 0.0), ids).x;
    if (ids.lid == 0u) {
        let slot = (plane * p.n_blocks + blk) * 2u;
        partials[slot] = d;
        partials[slot + 1u] = total_m2;
    }
}
#endif

#if GNB_FINALIZE_STATS
// One invocation per group merges its planes' blocks (Chan et al.'s pairwise
// update) -> stats[group] = (K, d = mean − K, rstd).
@compute @workgroup_size({{WG}})
fn gnb_finalize_stats(ids: Ids) {
    let group = (ids.wid.x + ids.wid.y * ids.nwg.x) * {{WG}}u + ids.lid;
    if (group >= p.n_groups) { return; }
    var count = 0.0;
    var d = 0.0;
    var m2 = 0.0;
    for (var c = 0u; c < p.group_channels; c++) {
        let plane = group * p.group_channels + c;
        for (var blk = 0u; blk < p.n_blocks; blk++) {
            let slot = (plane * p.n_blocks + blk) * 2u;
            let n_b = f32(block_count(blk));
            let total = count + n_b;
            let delta = partials[slot] - d;
            d += delta * (n_b / total);
            m2 += partials[slot + 1u] + delta * delta * (count * n_b / total);
            count = total;
        }
    }
    stats[group * 3u] = f32(x[group * p.group_channels * p.plane_len]);
    stats[group * 3u + 1u] = d;
    stats[group * 3u + 2u] = inverseSqrt(max(m2, 0.0) / count + p.eps);
}
#endif

#if ELEMENT_GRAD
// The per-plane constants: the group's statistics and the channel's γ, β.
struct PlaneConsts {
    k: f32,
    d: f32,
    rstd: f32,
    gamma: f32,
    beta: f32,
}

fn plane_consts(plane: u32) -> PlaneConsts {
    let group = plane / p.group_channels; // (b·C + c) / (C/G) = b·G + g
    let channel = plane % p.channels;
    var c = PlaneConsts(stats[group * 3u], stats[group * 3u + 1u], stats[group * 3u + 2u], 1.0, 0.0);
#if GAMMA
    c.gamma = f32(gamma[channel]);
#endif
#if BETA
    c.beta = f32(beta[channel]);
#endif
    return c;
}

// (x̂, g = ∂L/∂x̂) of element i.
fn xhat_and_grad(i: u32, c: PlaneConsts) -> vec2<f32> {
    let xhat = ((f32(x[i]) - c.k) - c.d) * c.rstd;
    var dy = f32(dz[i]);
#if SILU
    let y = xhat * c.gamma + c.beta;
    let s = 1.0 / (1.0 + exp(-y));
    dy *= s * (1.0 + y * (1.0 - s));
#endif
    return vec2<f32>(xhat, dy * c.gamma);
}
#endif

#if GNB_GRAD_SUMS
// Per block: (Σ g, Σ g·x̂).
@compute @workgroup_size({{WG}})
fn gnb_grad_sums(ids: Ids) {
    let plane = plane_of(ids);
    if (plane >= p.n_planes) { return; }
    let blk = ids.wid.x;
    let c = plane_consts(plane);
    let base = plane * p.plane_len + blk * p.block_len;
    let n = block_count(blk);
    var sums = vec2<f32>(0.0);
    for (var i = ids.lid; i < n; i += {{WG}}u) {
        let xg = xhat_and_grad(base + i, c);
        sums += vec2<f32>(xg.y, xg.y * xg.x);
    }
    let total = wg_sum(sums, ids);
    if (ids.lid == 0u) {
        let slot = (plane * p.n_blocks + blk) * 2u;
        partials[slot] = total.x;
        partials[slot + 1u] = total.y;
    }
}
#endif

#if GNB_FINALIZE_GRAD
// One invocation per group: grad_stats[group] = (mean g, mean g·x̂).
@compute @workgroup_size({{WG}})
fn gnb_finalize_grad(ids: Ids) {
    let group = (ids.wid.x + ids.wid.y * ids.nwg.x) * {{WG}}u + ids.lid;
    if (group >= p.n_groups) { return; }
    var sums = vec2<f32>(0.0);
    let first = group * p.group_channels * p.n_blocks;
    for (var j = 0u; j < p.group_channels * p.n_blocks; j++) {
        sums += vec2<f32>(partials[(first + j) * 2u], partials[(first + j) * 2u + 1u]);
    }
    let inv_n = 1.0 / f32(p.group_channels * p.plane_len);
    grad_stats[group * 2u] = sums.x * inv_n;
    grad_stats[group * 2u + 1u] = sums.y * inv_n;
}
#endif

#if GNB_APPLY
// Grid as gnb_grad_sums: dx = rstd · (g − mean g − x̂ · mean g·x̂).
@compute @workgroup_size({{WG}})
fn gnb_apply(ids: Ids) {
    let plane = ids.wid.y + ids.wid.z * ids.nwg.y;
    if (plane >= p.n_planes) { return; }
    let blk = ids.wid.x;
    let c = plane_consts(plane);
    let group = plane / p.group_channels;
    let mean_g = grad_stats[group * 2u];
    let mean_gx = grad_stats[group * 2u + 1u];
    let base = plane * p.plane_len + blk * p.block_len;
    let n = block_count(blk);
    for (var i = ids.lid; i < n; i += {{WG}}u) {
        let xg = xhat_and_grad(base + i, c);
        dx[base + i] = {{TG}}(c.rstd * (xg.y - mean_g - xg.x * mean_gx));
    }
}
#endif
