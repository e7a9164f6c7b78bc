// Layout copies: one strided-copy kernel serves concat, narrow and permute.
//
// The host describes the copy as an iteration shape (rank <= 8, padded in
// front with 1s) with an element stride per dimension for the source and for
// the destination, plus a starting element in each. Thread i decomposes i into
// coordinates of the iteration shape and copies one element. The host merges
// dimensions that are contiguous in both tensors first, so most copies run at
// rank 1..3.
//
// copy_grid does a copy of rank ≤ 3 with no division at all: the dispatch
// grid is the iteration shape (x: the innermost dimension in runs of WG, y
// and z the other two), so each thread reads its coordinates from its ids.
// Integer division has no SIMD instruction on CPUs: llvmpipe runs
// copy_strided's per-element divisions one lane at a time.
//
// Defines: T (storage type: f32, f16 or u32: the copy never converts), WG
// (workgroup size).

struct Params {
    n: u32,            // elements to copy
    first_dim: u32,    // first used slot of the padded shape (8 - rank)
    src_offset: u32,   // element index of the first source element
    dst_offset: u32,   // element index of the first destination element
    shape: array<vec4<u32>, 2>,       // iteration shape, padded in front to rank 8
    src_strides: array<vec4<u32>, 2>, // source element stride per dimension
    dst_strides: array<vec4<u32>, 2>, // destination element stride per dimension
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> dst: array<{{T}}>;

fn dim8(v: array<vec4<u32>, 2>, d: u32) -> u32 {
    return v[d / 4u][d % 4u];
}

@compute @workgroup_size({{WG}})
fn copy_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * {{WG}}u + lid.x;
    if (i >= p.n) { return; }
    var rem = i;
    var s = p.src_offset;
    var d = p.dst_offset;
    for (var k = 7i; k >= i32(p.first_dim); k--) {
        let size = dim8(p.shape, u32(k));
        let c = rem % size;
        rem = rem / size;
        s += c * dim8(p.src_strides, u32(k));
        d += c * dim8(p.dst_strides, u32(k));
    }
    dst[d] = src[s];
}

@compute @workgroup_size({{WG}})
fn copy_grid(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c0 = wid.x * {{WG}}u + lid.x;
    if (c0 >= p.shape[1].w) { return; }
    let s = p.src_offset + wid.z * p.src_strides[1].y + wid.y * p.src_strides[1].z + c0 * p.src_strides[1].w;
    let d = p.dst_offset + wid.z * p.dst_strides[1].y + wid.y * p.dst_strides[1].z + c0 * p.dst_strides[1].w;
    dst[d] = src[s];
}
