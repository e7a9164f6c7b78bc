// Normalisation kernels: group norm (torch.nn.GroupNorm, optionally fused
// SiLU) and layer norm (torch.nn.LayerNorm over the last dimension).
// Storage types come from defines; statistics and arithmetic are f32.
//
// Statistics are robust to data with a large mean and a small variance
// (1000 + 0.01·randn, say), where E[x²] − E[x]² in f32 loses every digit:
// - they are taken relative to a shift K = the first element of the row or
//   group, so x − K is exact for clustered data and the mean keeps the digits
//   a plainly rounded f32 mean would lose; the normalised value is
//   ((x − K) − d)·rstd with d = mean − K kept separately;
// - each invocation runs Welford's update over its elements (one read of the
//   data), and partial (count, mean, M2) are merged with the parallel formula
//   M2 = Σ (M2_i + count_i·(mean_i − mean)²), never by subtracting squares.
//
// Group norm, for NCHW input whose (batch, group) blocks are contiguous runs
// of `group_len` elements, takes three dispatches so that a large group
// (the VAE: 2M elements) still spreads over many workgroups:
//   gn_stats    one workgroup per chunk of a group: (d_chunk, M2_chunk)
//   gn_finalize one thread per group: merges its chunks -> (K, d, rstd)
//   gn_apply    one workgroup row per (batch, channel): normalise, affine, SiLU
//
// Defines: T (x and output storage), TP (gamma/beta storage), WG (workgroup
// size, a power of two), SUBGROUP_OPS, GAMMA, BETA, BETA_SLOT (binding of
// beta), SILU, and one of
// GN_STATS, GN_FINALIZE, GN_APPLY, LAYER_NORM.
// SUBGROUP_OPS = 1 uses subgroup reductions (any subgroup size), else workgroup memory.

struct Params {
    n_rows: u32,       // groups B·G (stats, finalize), rows (layer norm), planes B·C (apply)
    row_len: u32,      // elements per group / row / (batch, channel) plane
    chunk_len: u32,    // elements per chunk of a group (stats), per workgroup (apply)
    n_chunks: u32,     // chunks per group
    channels: u32,     // C
    group_channels: u32, // C / G
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;

// Workgroup ids (and subgroup ids with SUBGROUP_OPS).
#include "workgroup_ids.wgsl"

#if !GN_FINALIZE
var<workgroup> red: array<f32, {{WG}}>;

#include "wg_sum.wgsl"

// Statistics of x[base + start .. base + end) relative to the shift k:
// (d = mean − k, M2 = Σ (x − mean)²). One read of the data: each invocation
// keeps a running mean and M2 of its elements (Welford's update), and the
// workgroup merges them: the mean from Σ count·mean, then
// M2 = Σ (M2_i + count_i·(mean_i − mean)²). Called by all invocations.
fn run_stats(base: u32, start: u32, end: u32, k: f32, ids: Ids) -> vec2<f32> {
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var i = start + ids.lid; i < end; i += {{WG}}u) {
        let v = f32(x[base + i]) - k;
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        m2 += delta * (v - mean);
    }
    let d = wg_sum(count * mean, ids) / f32(end - start);
    let spread = mean - d;
    return vec2<f32>(d, wg_sum(m2 + count * spread * spread, ids));
}
#endif

#if GN_STATS
// Per chunk: (d = chunk mean − K, M2 = Σ (x − chunk mean)²), K = group's first element.
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

// Grid: x = chunk within the group, y·z folded = group.
@compute @workgroup_size({{WG}})
fn gn_stats(ids: Ids) {
    let group = ids.wid.y + ids.wid.z * ids.nwg.y;
    if (group >= p.n_rows) { return; }
    let chunk = ids.wid.x;
    let base = group * p.row_len;
    let start = chunk * p.chunk_len;
    let end = min(start + p.chunk_len, p.row_len);
    let stats = run_stats(base, start, end, f32(x[base]), ids);
    if (ids.lid == 0u) {
        let slot = (group * p.n_chunks + chunk) * 2u;
        partials[slot] = stats.x;
        partials[slot + 1u] = stats.y;
    }
}
#endif

#if GN_FINALIZE
@group(0) @binding(2) var<storage, read> partials: array<f32>;
// Per group: (K, d = mean − K, rstd).
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;

// One thread per group merges its chunks (Chan et al.'s pairwise update).
@compute @workgroup_size({{WG}})
fn gn_finalize(ids: Ids) {
    let group = (ids.wid.x + ids.wid.y * ids.nwg.x) * {{WG}}u + ids.lid;
    if (group >= p.n_rows) { return; }
    var count = 0.0;
    var d = 0.0;
    var m2 = 0.0;
    for (var c = 0u; c < p.n_chunks; c++) {
        let slot = (group * p.n_chunks + c) * 2u;
        let n_c = f32(min(p.chunk_len, p.row_len - c * p.chunk_len));
        let d_c = partials[slot];
        let total = count + n_c;
        let delta = d_c - d;
        d += delta * (n_c / total);
        m2 += partials[slot + 1u] + delta * delta * (count * n_c / total);
        count = total;
    }
    stats[group * 3u] = f32(x[group * p.row_len]);
    stats[group * 3u + 1u] = d;
    stats[group * 3u + 2u] = inverseSqrt(max(m2, 0.0) / count + p.eps);
}
#endif

#if GN_APPLY
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<{{T}}>;
#if GAMMA
@group(0) @binding(4) var<storage, read> gamma: array<{{TP}}>;
#endif
#if BETA
@group(0) @binding({{BETA_SLOT}}) var<storage, read> beta: array<{{TP}}>;
#endif

// Grid: x = blocks of chunk_len elements of the (batch, channel) plane,
// y·z folded = (batch, channel): channel, group and statistics are uniform
// per workgroup (no per-element division), loaded once per invocation.
@compute @workgroup_size({{WG}})
fn gn_apply(ids: Ids) {
    let row = ids.wid.y + ids.wid.z * ids.nwg.y;
    if (row >= p.n_rows) { return; }
    let channel = row % p.channels;
    let group = row / p.group_channels; // (b·C + c) / (C/G) = b·G + g
    let k = stats[group * 3u];
    let d = stats[group * 3u + 1u];
    var scale = stats[group * 3u + 2u];
    var shift = 0.0;
#if GAMMA
    scale *= f32(gamma[channel]);
#endif
#if BETA
    shift = f32(beta[channel]);
#endif
    let base = row * p.row_len;
    let end = min((ids.wid.x + 1u) * p.chunk_len, p.row_len);
    for (var i = ids.wid.x * p.chunk_len + ids.lid; i < end; i += {{WG}}u) {
        var v = ((f32(x[base + i]) - k) - d) * scale + shift;
#if SILU
        v = v / (1.0 + exp(-v));
#endif
        y[base + i] = {{T}}(v);
    }
}
#endif

#if LAYER_NORM
@group(0) @binding(2) var<storage, read_write> y: array<{{T}}>;
#if GAMMA
@group(0) @binding(3) var<storage, read> gamma: array<{{TP}}>;
#endif
#if BETA
@group(0) @binding({{BETA_SLOT}}) var<storage, read> beta: array<{{TP}}>;
#endif

// One workgroup per row (rows folded into x·y).
@compute @workgroup_size({{WG}})
fn layer_norm(ids: Ids) {
    let row = ids.wid.x + ids.wid.y * ids.nwg.x;
    if (row >= p.n_rows) { return; }
    let base = row * p.row_len;
    let k = f32(x[base]);
    let stats = run_stats(base, 0u, p.row_len, k, ids);
    let d = stats.x;
    let rstd = inverseSqrt(stats.y / f32(p.row_len) + p.eps);

    for (var i = ids.lid; i < p.row_len; i += {{WG}}u) {
        var v = ((f32(x[base + i]) - k) - d) * rstd;
#if GAMMA
        v *= f32(gamma[i]);
#endif
#if BETA
        v += f32(beta[i]);
#endif
        y[base + i] = {{T}}(v);
    }
}
#endif
