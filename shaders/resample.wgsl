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

const WG: u32 = {{WG}}u;
#include "common.wgsl"

#if NEAREST
// torch's nearest_idx: exact halving for 2x, identity for equal sizes, else
// floor(dst * scale) in f32, clamped to the last input index.
fn nearest_source(dst: u32, in_size: u32, out_size: u32, scale: f32) -> u32 {
    if (out_size == 2u * in_size) { return dst >> 1u; }
    if (out_size == in_size) { return dst; }
    return min(u32(floor(f32(dst) * scale)), in_size - 1u);
}

@compute @workgroup_size(WG)
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

@compute @workgroup_size(WG)
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

#if BILINEAR_BACKWARD
// The transpose of `bilinear`: dx[plane, iy, ix] = Σ over the outputs that
// read (iy, ix) of their weight · dy. A gather (one thread per input
// element, a fixed walk over the outputs that can reach it) instead of a
// scatter: deterministic, and no float atomics. Here x is dy (the output
// gradient, out_h × out_w) and y is dx (in_h × in_w).

// The weight output index `dst` gives input index `src_i` along one axis.
fn tap_weight(dst: u32, src_i: u32, in_size: u32, scale: f32) -> f32 {
    let t = linear_taps(dst, in_size, scale);
    return select(0.0, 1.0 - t.w1, t.i0 == src_i) + select(0.0, t.w1, t.i1 == src_i);
}

// The outputs along one axis whose taps can include input index i: their
// source coordinates lie within one input step of i.
fn reach(i: u32, out_size: u32, scale: f32) -> vec2<u32> {
    let lo = (f32(i) - 1.0 + 0.5) / scale - 0.5;
    let hi = (f32(i) + 1.0 + 0.5) / scale - 0.5;
    let first = u32(max(floor(lo) - 1.0, 0.0));
    let last = u32(clamp(ceil(hi) + 1.0, 0.0, f32(out_size - 1u)));
    return vec2<u32>(first, last);
}

@compute @workgroup_size(WG)
fn bilinear_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let ix = i % p.in_w;
    let iy = (i / p.in_w) % p.in_h;
    let plane = i / (p.in_w * p.in_h);
    let ry = reach(iy, p.out_h, p.scale_h);
    let rx = reach(ix, p.out_w, p.scale_w);
    let base = plane * p.out_h * p.out_w;
    var s = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy++) {
        let wy = tap_weight(oy, iy, p.in_h, p.scale_h);
        if (wy == 0.0) { continue; }
        for (var ox = rx.x; ox <= rx.y; ox++) {
            let wx = tap_weight(ox, ix, p.in_w, p.scale_w);
            s += wy * wx * f32(x[base + oy * p.out_w + ox]);
        }
    }
    y[i] = {{T}}(s);
}
#endif
