// Spatial resampling of [B, C, H, W] feature maps, as torch's F.interpolate:
// nearest (mode="nearest") and bilinear (mode="bilinear", align_corners=False,
// antialias=False). One thread per output element; f32 arithmetic.
//
// Defines: T (storage type), WG (workgroup size), NEAREST / BILINEAR (entry).

struct Params {
    n: u32,        // output elements
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    scale_h: f32,  // in_h / out_h, rounded to f32 as torch computes it
    scale_w: f32,  // in_w / out_w
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> y: array<{{T}}>;

fn linear_id(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * {{WG}}u + lid.x;
}

#if NEAREST
// torch's nearest_idx: exact halving for 2x, identity for equal sizes, else
// floor(dst * scale) in f32, clamped to the last input index.
fn nearest_source(dst: u32, in_size: u32, out_size: u32, scale: f32) -> u32 {
    if (out_size == 2u * in_size) { return dst >> 1u; }
    if (out_size == in_size) { return dst; }
    return min(u32(floor(f32(dst) * scale)), in_size - 1u);
}

@compute @workgroup_size({{WG}})
fn nearest(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let sx = nearest_source(ox, p.in_w, p.out_w, p.scale_w);
    let sy = nearest_source(oy, p.in_h, p.out_h, p.scale_h);
    y[i] = x[(plane * p.in_h + sy) * p.in_w + sx];
}
#endif

#if BILINEAR
// The two input indices an output index reads along one axis, and their weights.
struct Taps {
    i0: u32,
    i1: u32,     // i0 + 1, or i0 at the last input index
    w1: f32,     // weight of i1; i0 gets 1 - w1
}

// Source coordinate of output index `dst` with align_corners=False:
// (dst + 0.5) * scale - 0.5, clamped at 0 (torch's area_pixel_compute_source_index),
// then split into floor and fraction as torch's guard_index_and_lambda does.
fn linear_taps(dst: u32, in_size: u32, scale: f32) -> Taps {
    let src = max(scale * (f32(dst) + 0.5) - 0.5, 0.0);
    let i0 = min(u32(src), in_size - 1u);
    let i1 = select(i0, i0 + 1u, i0 < in_size - 1u);
    let w1 = clamp(src - f32(i0), 0.0, 1.0);
    return Taps(i0, i1, w1);
}

@compute @workgroup_size({{WG}})
fn bilinear(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let tx = linear_taps(ox, p.in_w, p.scale_w);
    let ty = linear_taps(oy, p.in_h, p.scale_h);
    let base = plane * p.in_h * p.in_w;
    let row0 = base + ty.i0 * p.in_w;
    let row1 = base + ty.i1 * p.in_w;
    let top = (1.0 - tx.w1) * f32(x[row0 + tx.i0]) + tx.w1 * f32(x[row0 + tx.i1]);
    let bottom = (1.0 - tx.w1) * f32(x[row1 + tx.i0]) + tx.w1 * f32(x[row1 + tx.i1]);
    y[i] = {{T}}((1.0 - ty.w1) * top + ty.w1 * bottom);
}
#endif
