// Small input gradients: SiLU, GEGLU and softmax. Storage types come from
// defines (T: the forward's tensor, TG: the gradients); arithmetic is f32.
//
// silu_grad:    dx = dy · silu'(x), silu'(x) = s·(1 + x·(1 − s)), s = sigmoid(x);
//               one invocation per element.
// geglu_grad:   for y = h · gelu(g), x = [h | g] along the last dimension
//               (len = the width of h), dh = dy · gelu(g) and
//               dg = dy · h · gelu'(g), gelu'(g) = Φ(g) + g·φ(g); one
//               invocation per element of dy, writing both halves.
// softmax_grad: for y = softmax(scale·x) along the last dimension,
//               dx = scale · y ⊙ (dy − Σ dy⊙y) per row; one workgroup per row,
//               two passes (the row's Σ dy⊙y, then the write).
//
// Defines: T, TG, WG (workgroup size; a power of two for softmax_grad),
// SUBGROUP_OPS (softmax_grad's reduction: subgroups of any size, else
// workgroup memory), and one of SILU_GRAD, GEGLU_GRAD, SOFTMAX_GRAD.

struct Params {
    n: u32,        // silu_grad, geglu_grad: elements of dy; softmax_grad: rows
    len: u32,      // geglu_grad: width of each half; softmax_grad: row length
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

#if GEGLU_GRAD
#include "activations.wgsl"

// Grid: one invocation per element of dy, workgroups folded into x·y.
@compute @workgroup_size({{WG}})
fn geglu_grad(ids: Ids) {
    let i = (ids.wid.x + ids.wid.y * ids.nwg.x) * {{WG}}u + ids.lid;
    if (i >= p.n) { return; }
    let row = i / p.len;
    let col = i % p.len;
    let base = row * 2u * p.len;
    let h = f32(fwd[base + col]);
    let g = f32(fwd[base + p.len + col]);
    let d = f32(dy[i]);
    let cdf = 0.5 * (1.0 + erf_approx(g * 0.7071067811865476));
    let pdf = 0.3989422804014327 * exp(-0.5 * g * g);
    dx[base + col] = {{TG}}(d * g * cdf);
    dx[base + p.len + col] = {{TG}}(d * h * (cdf + g * pdf));
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
