// Small input gradients: SiLU and softmax. Storage types come from defines
// (T: the forward's tensor, TG: the gradients); arithmetic is f32.
//
// silu_grad:    dx = dy · silu'(x), silu'(x) = s·(1 + x·(1 − s)), s = sigmoid(x);
//               one invocation per element.
// softmax_grad: for y = softmax(scale·x) along the last dimension,
//               dx = scale · y ⊙ (dy − Σ dy⊙y) per row; one workgroup per row,
//               two passes (the row's Σ dy⊙y, then the write).
//
// Defines: T, TG, WG (workgroup size; a power of two for softmax_grad),
// SUBGROUP_OPS (softmax_grad's reduction: subgroups of any size, else
// workgroup memory), and one of SILU_GRAD, SOFTMAX_GRAD.

struct Params {
    n: u32,        // silu_grad: elements; softmax_grad: rows
    len: u32,      // softmax_grad: row length
    scale: f32,    // softmax_grad: the forward's scale
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> fwd: array<{{T}}>;
@group(0) @binding(2) var<storage, read> dy: array<{{TG}}>;
@group(0) @binding(3) var<storage, read_write> dx: array<{{TG}}>;

// Workgroup ids (and subgroup ids with SUBGROUP_OPS).
#include "workgroup_ids.wgsl"

#if SILU_GRAD
// Grid: one invocation per element, workgroups folded into x·y.
@compute @workgroup_size({{WG}})
fn silu_grad(ids: Ids) {
    let i = (ids.wid.x + ids.wid.y * ids.nwg.x) * {{WG}}u + ids.lid;
    if (i >= p.n) { return; }
    let x = f32(fwd[i]);
    let s = 1.0 / (1.0 + exp(-x));
    dx[i] = {{TG}}(f32(dy[i]) * s * (1.0 + x * (1.0 - s)));
}
#endif

#if SOFTMAX_GRAD
var<workgroup> red: array<f32, {{WG}}>;

#include "wg_sum.wgsl"

// One workgroup per row (rows folded into x·y); `fwd` holds y.
@compute @workgroup_size({{WG}})
fn softmax_grad(ids: Ids) {
    let row = ids.wid.x + ids.wid.y * ids.nwg.x;
    if (row >= p.n) { return; }
    let base = row * p.len;
    var s = 0.0;
    for (var i = ids.lid; i < p.len; i += {{WG}}u) {
        s += f32(dy[base + i]) * f32(fwd[base + i]);
    }
    let dot = wg_sum(s, ids);
    for (var i = ids.lid; i < p.len; i += {{WG}}u) {
        dx[base + i] = {{TG}}(p.scale * f32(fwd[base + i]) * (f32(dy[base + i]) - dot));
    }
}
#endif
