// Elementwise kernels: activations (unary), broadcasting binary ops, GEGLU, casts.
// Storage types come from defines (f32 / f16); arithmetic is f32.
// Defines: TA, TB, TO (storage types), WG (workgroup size), ACT (activation
// function name, unary and binary), OP (binary operator function name), and
// the binary's indexing: SAME_SHAPE, GRID (broadcast of rank ≤ 3: indices
// from the dispatch grid; CPUs have no SIMD integer division), else a
// division per dimension.

struct Params {
    n: u32,            // output elements
    inner: u32,        // GEGLU: output features per row
    scale: f32,        // unary: y = act(x * scale + shift)
    shift: f32,
    shape: array<vec4<u32>, 2>,     // output shape, padded in front to rank 8
    a_strides: array<vec4<u32>, 2>, // element strides of a per output dim (0 = broadcast)
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;

#include "activations.wgsl"

fn op_add(a: f32, b: f32) -> f32 { return a + b; }
fn op_sub(a: f32, b: f32) -> f32 { return a - b; }
fn op_mul(a: f32, b: f32) -> f32 { return a * b; }
fn op_div(a: f32, b: f32) -> f32 { return a / b; }
// a·scale + b·shift: the scalars of Params weight the two inputs.
fn op_axpby(a: f32, b: f32) -> f32 { return a * p.scale + b * p.shift; }

const WG: u32 = {{WG}}u;
#include "common.wgsl"

fn dim8(v: array<vec4<u32>, 2>, d: u32) -> u32 {
    return v[d / 4u][d % 4u];
}

#if UNARY
@group(0) @binding(1) var<storage, read> a: array<{{TA}}>;
@group(0) @binding(2) var<storage, read_write> o: array<{{TO}}>;

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
#if CLAMP
    // Clamp reuses the two scalars: scale = low bound, shift = high bound.
    o[i] = {{TO}}(clamp(f32(a[i]), p.scale, p.shift));
#else
    o[i] = {{TO}}({{ACT}}(f32(a[i]) * p.scale + p.shift));
#endif
}
#endif

#if BINARY
@group(0) @binding(1) var<storage, read> a: array<{{TA}}>;
@group(0) @binding(2) var<storage, read> b: array<{{TB}}>;
@group(0) @binding(3) var<storage, read_write> o: array<{{TO}}>;

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
#if GRID
    // Rank ≤ 3 (merged by the host): coordinates from the dispatch grid, x
    // the innermost dimension in runs of WG, no division.
    let c0 = wid.x * WG + lid.x;
    if (c0 >= p.shape[1].w) { return; }
    let i = (wid.z * p.shape[1].z + wid.y) * p.shape[1].w + c0;
    let ia = wid.z * p.a_strides[1].y + wid.y * p.a_strides[1].z + c0 * p.a_strides[1].w;
    let ib = wid.z * p.b_strides[1].y + wid.y * p.b_strides[1].z + c0 * p.b_strides[1].w;
#else
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
#if SAME_SHAPE
    let ia = i;
    let ib = i;
#else
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 7i; d >= 0; d--) {
        let size = dim8(p.shape, u32(d));
        let c = rem % size;
        rem = rem / size;
        ia += c * dim8(p.a_strides, u32(d));
        ib += c * dim8(p.b_strides, u32(d));
    }
#endif
#endif
    o[i] = {{TO}}({{ACT}}({{OP}}(f32(a[ia]), f32(b[ib]))));
}
#endif

#if GEGLU
// x: [rows, 2 * inner] -> o: [rows, inner], o = x[:, :inner] * gelu(x[:, inner:]).
@group(0) @binding(1) var<storage, read> a: array<{{TA}}>;
@group(0) @binding(2) var<storage, read_write> o: array<{{TO}}>;

@compute @workgroup_size(WG)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let row = i / p.inner;
    let col = i % p.inner;
    let base = row * 2u * p.inner;
    let h = f32(a[base + col]);
    let g = f32(a[base + p.inner + col]);
    o[i] = {{TO}}(h * act_gelu(g));
}
#endif
