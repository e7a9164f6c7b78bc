// Softmax along the last dimension: y = softmax(scale·x), numerically stable
// (the row maximum is subtracted before exponentiating). Storage types come
// from defines; arithmetic is f32.
//
// One workgroup per row, three passes over it: the maximum, the sum of
// exp(scale·x − max), and the normalised write.
// Defines: T (storage), WG (workgroup size, a power of two), SUBGROUP_OPS.
// SUBGROUP_OPS = 1 uses subgroup reductions (any subgroup size), else workgroup memory.

struct Params {
    rows: u32,
    len: u32,     // D
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> y: array<{{T}}>;

// Workgroup ids (and subgroup ids with SUBGROUP_OPS).
#include "workgroup_ids.wgsl"

var<workgroup> red: array<f32, {{WG}}>;

#include "wg_sum.wgsl"

// One workgroup per row (rows folded into x·y).
@compute @workgroup_size({{WG}})
fn softmax(ids: Ids) {
    let row = ids.wid.x + ids.wid.y * ids.nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.len;

    // Invocations with no element contribute the lowest f32 (max) and 0 (sum).
    var m = -3.4028234663852886e38;
    for (var i = ids.lid; i < p.len; i += {{WG}}u) {
        m = max(m, p.scale * f32(x[base + i]));
    }
    let row_max = wg_reduce(m, ids, true);

    var s = 0.0;
    for (var i = ids.lid; i < p.len; i += {{WG}}u) {
        s += exp(p.scale * f32(x[base + i]) - row_max);
    }
    let inv_sum = 1.0 / wg_reduce(s, ids, false);

    for (var i = ids.lid; i < p.len; i += {{WG}}u) {
        y[base + i] = {{T}}(exp(p.scale * f32(x[base + i]) - row_max) * inv_sum);
    }
}
