// 2-D pooling of [B, C, H, W] maps, as torch's F.max_pool2d and
// F.avg_pool2d (ceil_mode=False): a k_h × k_w window every `stride` pixels,
// `pad` pixels of padding on each side that a max never takes and that an
// average counts only with COUNT_PAD (count_include_pad=True; pytorch-fid's
// Inception averages with it off). A window that covers the whole input
// (k = H, W, no padding) is the global average of adaptive_avg_pool2d(1).
// One thread per output element; f32 arithmetic.
//
// Defines: T (storage type), WG (workgroup size), MAX or AVG (entry), COUNT_PAD.

struct Params {
    n: u32,        // output elements
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    stride: u32,
    pad: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> y: array<{{T}}>;

const WG: u32 = {{WG}}u;
#include "common.wgsl"

@compute @workgroup_size(WG)
fn pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    // The window's rows and columns inside the input.
    let y0 = i32(oy * p.stride) - i32(p.pad);
    let x0 = i32(ox * p.stride) - i32(p.pad);
    let ya = u32(max(y0, 0));
    let yb = u32(min(y0 + i32(p.k_h), i32(p.in_h)));
    let xa = u32(max(x0, 0));
    let xb = u32(min(x0 + i32(p.k_w), i32(p.in_w)));
    let base = plane * p.in_h * p.in_w;
#if MAX
    var acc = -3.0e38;
#else
    var acc = 0.0;
#endif
    for (var yy = ya; yy < yb; yy++) {
        for (var xx = xa; xx < xb; xx++) {
            let v = f32(x[base + yy * p.in_w + xx]);
#if MAX
            acc = max(acc, v);
#else
            acc += v;
#endif
        }
    }
#if AVG
#if COUNT_PAD
    // torch counts the padding but not what lies past it (none here: ceil_mode off).
    let count = f32(p.k_h * p.k_w);
#else
    let count = f32((yb - ya) * (xb - xa));
#endif
    acc = acc / count;
#endif
    y[i] = {{T}}(acc);
}
