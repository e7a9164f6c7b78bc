// Small MLPs without biases (threestudio's VanillaMLP / tcnn): ReLU on the
// hidden layers, an output activation (none or sigmoid), one thread per sample.
// Used for the background (spherical-harmonics encoding of the view direction
// -> MLP -> sigmoid); the field's density and albedo heads are fused into
// hashgrid.wgsl instead. Also the reduction of per-workgroup weight-gradient
// partials that both use.
//
// Layers: dims d0 (input) -> d1 -> ... -> dL (output), L ≤ 4, every d ≤ 64.
// Weights are packed [W1 (d1×d0) | W2 (d2×d1) | ...], row-major [out][in].
//
// The backward is three kernels:
//   backward_deltas  per sample: recompute the layers, write each layer's
//                    input a_{l-1} and pre-activation gradient δ_l to `saved`,
//                    and dL/dX
//   weight_grads     per weight and chunk of samples: Σ_s δ_l[s,o]·a_{l-1}[s,i]
//   reduce_partials  per weight: grad += Σ over chunks (fixed order: deterministic)
// `saved` per sample is [a_0 | a_1 | ... | a_{L-1} | δ_1 | ... | δ_L].
//
// Defines: one entry flag of FORWARD, BACKWARD_DELTAS, WEIGHT_GRADS,
// REDUCE_PARTIALS, SH_ENCODE.

const WG: u32 = 64u;
const MAX_WIDTH: u32 = 64u;
const MAX_LAYERS: u32 = 4u;
const ACT_SIZE: u32 = 320u;     // (MAX_LAYERS + 1) · MAX_WIDTH

struct Params {
    n: u32,            // samples; reduce_partials: weights
    n_layers: u32,
    out_act: u32,      // 0 none, 1 sigmoid
    chunk: u32,        // weight_grads: samples per chunk; reduce_partials: chunks
    n_weights: u32,
    saved_len: u32,    // floats of `saved` per sample
    want_dx: u32,      // backward_deltas: write dL/dX
    degree: u32,       // sh_encode: SH degree 1..4
    dims: array<vec4<u32>, 2>,   // d0..d4
}

@group(0) @binding(0) var<uniform> p: Params;

fn dim(l: u32) -> u32 { return p.dims[l / 4u][l % 4u]; }

// Offset of W_l (l ≥ 1) in the packed weights.
fn weight_offset(l: u32) -> u32 {
    var off = 0u;
    for (var m = 1u; m < l; m++) { off += dim(m) * dim(m - 1u); }
    return off;
}

// Offset of a_l (l < L) and of δ_l (1 ≤ l ≤ L) in a sample's `saved` row.
fn act_offset(l: u32) -> u32 {
    var off = 0u;
    for (var m = 0u; m < l; m++) { off += dim(m); }
    return off;
}
fn delta_offset(l: u32) -> u32 {
    var off = act_offset(p.n_layers);
    for (var m = 1u; m < l; m++) { off += dim(m); }
    return off;
}

fn thread_id(wid: vec3<u32>, lid: u32, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

#include "common.wgsl"

#if FORWARD
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // [n, d0]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [n, dL]
#endif

#if BACKWARD_DELTAS
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // [n, d0]
@group(0) @binding(3) var<storage, read> dy: array<f32>;         // [n, dL], w.r.t. the activated output
@group(0) @binding(4) var<storage, read_write> saved: array<f32>; // [n, saved_len]
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;   // [n, d0] (when want_dx)
#endif

// Layer activations of one sample: a_l at act[l·MAX_WIDTH ..]; a_L activated by out_act.
#if !WEIGHT_GRADS
#if !REDUCE_PARTIALS
#if !SH_ENCODE
fn run_layers(s: u32, act: ptr<function, array<f32, ACT_SIZE>>) {
    let d0 = dim(0u);
    for (var i = 0u; i < d0; i++) { (*act)[i] = x[s * d0 + i]; }
    let nl = p.n_layers;
    for (var l = 1u; l <= nl; l++) {
        let din = dim(l - 1u);
        let dout = dim(l);
        let wl = weight_offset(l);
        for (var o = 0u; o < dout; o++) {
            var z = 0.0;
            for (var i = 0u; i < din; i++) { z += w[wl + o * din + i] * (*act)[(l - 1u) * MAX_WIDTH + i]; }
            if (l < nl) {
                z = max(z, 0.0);
            } else if (p.out_act == 1u) {
                z = sigmoid(z);
            }
            (*act)[l * MAX_WIDTH + o] = z;
        }
    }
}
#endif
#endif
#endif

#if FORWARD
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = thread_id(wid, lid, nwg);
    if (s >= p.n) { return; }
    var act: array<f32, ACT_SIZE>;
    run_layers(s, &act);
    let nl = p.n_layers;
    let dl = dim(nl);
    for (var o = 0u; o < dl; o++) { y[s * dl + o] = act[nl * MAX_WIDTH + o]; }
}
#endif

#if BACKWARD_DELTAS
@compute @workgroup_size(WG)
fn backward_deltas(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = thread_id(wid, lid, nwg);
    if (s >= p.n) { return; }
    var act: array<f32, ACT_SIZE>;
    run_layers(s, &act);
    let nl = p.n_layers;
    let row = s * p.saved_len;
    for (var l = 0u; l < nl; l++) {
        let off = act_offset(l);
        for (var i = 0u; i < dim(l); i++) { saved[row + off + i] = act[l * MAX_WIDTH + i]; }
    }
    // δ_L = dy ⊙ act'(z_L); then δ_{l-1} = (W_lᵀ δ_l) ⊙ relu'(z_{l-1}).
    var delta: array<f32, MAX_WIDTH>;
    let dl = dim(nl);
    for (var o = 0u; o < dl; o++) {
        var g = dy[s * dl + o];
        if (p.out_act == 1u) {
            let yv = act[nl * MAX_WIDTH + o];
            g *= yv * (1.0 - yv);
        }
        delta[o] = g;
    }
    for (var l = nl; l >= 1u; l--) {
        let din = dim(l - 1u);
        let dout = dim(l);
        let off = delta_offset(l);
        for (var o = 0u; o < dout; o++) { saved[row + off + o] = delta[o]; }
        let wl = weight_offset(l);
        var prev: array<f32, MAX_WIDTH>;
        for (var i = 0u; i < din; i++) {
            var g = 0.0;
            for (var o = 0u; o < dout; o++) { g += w[wl + o * din + i] * delta[o]; }
            // relu'(z) = [a > 0] on hidden layers; the input layer has none.
            if (l > 1u && act[(l - 1u) * MAX_WIDTH + i] <= 0.0) { g = 0.0; }
            prev[i] = g;
        }
        if (l == 1u) {
            if (p.want_dx != 0u) {
                for (var i = 0u; i < din; i++) { dx[s * din + i] = prev[i]; }
            }
            break;
        }
        delta = prev;
    }
}
#endif

#if WEIGHT_GRADS
@group(0) @binding(1) var<storage, read> saved: array<f32>;          // [n, saved_len]
@group(0) @binding(2) var<storage, read_write> partials: array<f32>; // [chunks, n_weights]

// Thread (weight, chunk): Σ over the chunk's samples of δ_l[s, o]·a_{l-1}[s, i].
@compute @workgroup_size(WG)
fn weight_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wi = wid.x * WG + lid;
    let chunk = wid.y;
    if (wi >= p.n_weights) { return; }
    var l = 1u;
    var base = 0u;
    loop {
        let size = dim(l) * dim(l - 1u);
        if (wi < base + size || l >= p.n_layers) { break; }
        base += size;
        l++;
    }
    let din = dim(l - 1u);
    let o = (wi - base) / din;
    let i = (wi - base) % din;
    let a_at = act_offset(l - 1u) + i;
    let d_at = delta_offset(l) + o;
    let s0 = chunk * p.chunk;
    let s1 = min(s0 + p.chunk, p.n);
    var acc = 0.0;
    for (var s = s0; s < s1; s++) {
        acc += saved[s * p.saved_len + d_at] * saved[s * p.saved_len + a_at];
    }
    partials[chunk * p.n_weights + wi] = acc;
}
#endif

#if REDUCE_PARTIALS
@group(0) @binding(1) var<storage, read> partials: array<f32>;       // [chunks, n]
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;     // [n]

// grad[i] += Σ_c partials[c, i], summing in chunk order (deterministic).
@compute @workgroup_size(WG)
fn reduce_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    var acc = 0.0;
    for (var c = 0u; c < p.chunk; c++) { acc += partials[c * p.n + i]; }
    grad[i] += acc;
}
#endif

#if SH_ENCODE
@group(0) @binding(1) var<storage, read> rays: array<vec4<f32>>;     // [n, 2]: origin, direction
@group(0) @binding(2) var<storage, read_write> enc: array<f32>;      // [n, degree²]

// tcnn's SphericalHarmonics of the unit direction (threestudio feeds (d+1)/2,
// which tcnn maps back to d), degree² outputs.
@compute @workgroup_size(WG)
fn sh_encode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = thread_id(wid, lid, nwg);
    if (s >= p.n) { return; }
    let d = normalize(rays[2u * s + 1u].xyz);
    let x = d.x;
    let y = d.y;
    let z = d.z;
    let n = p.degree * p.degree;
    var o: array<f32, 16>;
    o[0] = 0.28209479177387814;
    o[1] = -0.48860251190291987 * y;
    o[2] = 0.48860251190291987 * z;
    o[3] = -0.48860251190291987 * x;
    let x2 = x * x;
    let y2 = y * y;
    let z2 = z * z;
    o[4] = 1.0925484305920792 * x * y;
    o[5] = -1.0925484305920792 * y * z;
    o[6] = 0.94617469575756008 * z2 - 0.31539156525251999;
    o[7] = -1.0925484305920792 * x * z;
    o[8] = 0.54627421529603959 * x2 - 0.54627421529603959 * y2;
    o[9] = 0.59004358992664352 * y * (-3.0 * x2 + y2);
    o[10] = 2.8906114426405538 * x * y * z;
    o[11] = 0.45704579946446572 * y * (1.0 - 5.0 * z2);
    o[12] = 0.3731763325901154 * z * (5.0 * z2 - 3.0);
    o[13] = 0.45704579946446572 * x * (1.0 - 5.0 * z2);
    o[14] = 1.4453057213202769 * z * (x2 - y2);
    o[15] = 0.59004358992664352 * x * (-x2 + 3.0 * y2);
    for (var i = 0u; i < n; i++) { enc[s * n + i] = o[i]; }
}
#endif
