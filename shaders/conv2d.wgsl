// 2-D convolution, PyTorch semantics: x [B, Cin, H, W] (NCHW), weight
// [Cout, Cin, kh, kw], optional bias [Cout], zero padding, one stride for
// both axes: y [B, Cout, Ho, Wo], Ho = (H + 2·pad − kh) / stride + 1.
// Storage types come from defines; accumulation is f32.
//
// conv_simple: one invocation per output element (the baseline and cross-check).
// conv_pack:   repacks the weights for the GEMMs (four channels per vec4).
// conv_gemm:   implicit GEMM, M = Cout, N = B·Ho·Wo, K = Cin·kh·kw, without
//              materialising the im2col matrix. Each invocation accumulates
//              BM output channels × 4·PV pixels in vec4 registers.
//              - The channels are the same for the whole workgroup, so weight
//                loads are uniform; the packed layout gives four channels per
//                load.
//              - The pixels vary across invocations, adjacent invocations
//                taking adjacent pixels (coalesced input loads).
//              - No workgroup memory and no barriers: on llvmpipe (the
//                reference adapter) barriers cost more than they save and the
//                CPU caches do the reuse.
//              - The K loop runs tap by tap (ky, kx) with the input channel
//                innermost: a tap's padding test and input offsets are
//                computed once and advance by H·W per channel.
// conv_subgroup: the same GEMM with the inputs shared by subgroup broadcasts
//              (needs subgroups of 8 to 64 lanes); see its comment.
// Edges: pixels past N read a clamped, valid address and are not stored;
// channels past Cout have zero packed weights and are not stored; taps in the
// padding read 0.
//
// Defines: TX (input / output storage), TW (weight storage), TB (bias
// storage), HAS_BIAS, WG (workgroup size), BM (channels, a multiple of 4) and
// PV (pixel vec4s) of conv_gemm, TP (pixels) and TC (channels) of a
// conv_subgroup tile, and one of SIMPLE, PACK, GEMM, SUBGROUP_GEMM.

struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,       // rows of zeros above and below
    n_pix: u32,     // B·Ho·Wo
    cout_pad: u32,  // Cout rounded up to the channel tile (packed weights)
    tile_c: u32,    // output channels per tile of the packed weights
    pad_w: u32,     // columns of zeros left and right
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#include "conv_core.wgsl"
#if !PACK
@group(0) @binding(1) var<storage, read> x: array<{{TX}}>;
#if SIMPLE
@group(0) @binding(2) var<storage, read> wt: array<{{TW}}>;
#endif
#if HAS_BIAS
@group(0) @binding(3) var<storage, read> bias: array<{{TB}}>;
@group(0) @binding(4) var<storage, read_write> y: array<{{TX}}>;
#else
@group(0) @binding(3) var<storage, read_write> y: array<{{TX}}>;
#endif
#endif

#if !PACK
fn bias_of(co: u32) -> f32 {
#if HAS_BIAS
    return f32(bias[co]);
#else
    return 0.0;
#endif
}
#endif

#if SIMPLE
@compute @workgroup_size({{WG}})
fn conv_simple(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * {{WG}}u + lid;
    if (i >= p.n_pix * p.cout) { return; }
    let wo = i % p.wo;
    let ho = (i / p.wo) % p.ho;
    let co = (i / (p.wo * p.ho)) % p.cout;
    let b = i / (p.wo * p.ho * p.cout);
    let hi0 = i32(ho * p.stride) - i32(p.pad);
    let wi0 = i32(wo * p.stride) - i32(p.pad_w);
    var acc = bias_of(co);
    for (var ci = 0u; ci < p.cin; ci++) {
        let x_plane = (b * p.cin + ci) * p.h * p.w;
        let w_plane = (co * p.cin + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let hi = hi0 + i32(ky);
            if (hi < 0 || hi >= i32(p.h)) { continue; }
            for (var kx = 0u; kx < p.kw; kx++) {
                let wi = wi0 + i32(kx);
                if (wi < 0 || wi >= i32(p.w)) { continue; }
                acc += f32(x[x_plane + u32(hi) * p.w + u32(wi)]) * f32(wt[w_plane + ky * p.kw + kx]);
            }
        }
    }
    y[i] = {{TX}}(acc);
}
#endif

#if PACK
// Weights [Cout, Cin, kh, kw] -> packed [cout_pad / tile_c, kh·kw·Cin, tile_c]
// (see packed_slot; M = the output channels): contiguous per tile, where a
// plain [K, Cout] layout has them read with a stride of Cout: 5× slower at
// Cout = 1280 on llvmpipe, TLB misses. Channels from Cout up to cout_pad are zero.
@group(0) @binding(1) var<storage, read> w_src: array<{{TW}}>;
@group(0) @binding(2) var<storage, read_write> w_packed: array<{{TW}}>;

@compute @workgroup_size({{WG}})
fn conv_pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * {{WG}}u + lid;
    let taps = p.kh * p.kw;
    if (i >= taps * p.cin * p.cout_pad) { return; }
    let s = packed_slot(i, p.cin, taps, p.tile_c);   // s.m: co, s.k: ci
    var v = {{TW}}(0.0);
    if (s.m < p.cout) { v = w_src[(s.m * p.cin + s.k) * taps + s.tap]; }
    w_packed[i] = v;
}
#endif

#if GEMM
// Packed weights (see conv_pack), read four output channels at a time.
@group(0) @binding(2) var<storage, read> w4: array<vec4<{{TW}}>>;

// Grid: x·z folded = pixel tiles of WG·4·PV pixels, y = channel tiles of BM
// channels. Invocation pixel j = 4·v + c (vec4 v, component c) is pixel
// tile + j·WG + lid.
@compute @workgroup_size({{WG}})
fn conv_gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane_out = p.ho * p.wo;
    let plane_in = p.h * p.w;
    let co0 = wid.y * {{BM}}u;
    let tile_start = (wid.x + wid.z * nwg.x) * ({{WG}}u * 4u * {{PV}}u);
    if (tile_start >= p.n_pix) { return; }
    let tile = tile_start + lid;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u) * {{WG}}u;

    // Per pixel: whether it exists, where x[b] starts, where its receptive field starts.
    var pix_ok: array<vec4<bool>, {{PV}}>;
    var x_base: array<vec4<u32>, {{PV}}>;
    var y_base: array<vec4<u32>, {{PV}}>;   // offset of y[b, 0, ho, wo]
    var hi0: array<vec4<i32>, {{PV}}>;
    var wi0: array<vec4<i32>, {{PV}}>;
    for (var v = 0u; v < {{PV}}u; v++) {
        let n = tile + v * 4u * {{WG}}u + lanes;
        pix_ok[v] = n < vec4<u32>(p.n_pix);
        let nn = min(n, vec4<u32>(p.n_pix - 1u));
        let r = nn % plane_out;
        x_base[v] = (nn / plane_out) * (p.cin * plane_in);
        y_base[v] = (nn / plane_out) * (p.cout * plane_out) + r;
        hi0[v] = vec4<i32>((r / p.wo) * p.stride) - i32(p.pad);
        wi0[v] = vec4<i32>((r % p.wo) * p.stride) - i32(p.pad_w);
    }

    // acc[i·PV + v]: output channel co0 + i at the four pixels of vec4 v.
    var acc: array<vec4<f32>, {{BM}} * {{PV}}>;
    // This tile's packed weights, one row of BM / 4 vec4s per (tap, ci).
    var w_at = co0 * p.kh * p.kw * p.cin / 4u;
    let w_step = {{BM}}u / 4u;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            // This tap's offsets at input channel 0; taps in the padding read
            // x[0] (a valid address) and are masked to 0.
            var tap_ok: array<vec4<bool>, {{PV}}>;
            var off: array<vec4<u32>, {{PV}}>;
            for (var v = 0u; v < {{PV}}u; v++) {
                let hi = hi0[v] + i32(ky);
                let wi = wi0[v] + i32(kx);
                tap_ok[v] = pix_ok[v] & inside4(hi, wi, p.h, p.w);
                off[v] = select(vec4<u32>(0u), x_base[v] + vec4<u32>(hi) * p.w + vec4<u32>(wi), tap_ok[v]);
            }
            for (var ci = 0u; ci < p.cin; ci++) {
                var xv: array<vec4<f32>, {{PV}}>;
                for (var v = 0u; v < {{PV}}u; v++) {
                    let o = off[v];
                    let loaded = vec4<f32>(f32(x[o.x]), f32(x[o.y]), f32(x[o.z]), f32(x[o.w]));
                    xv[v] = select(vec4<f32>(0.0), loaded, tap_ok[v]);
                    off[v] = o + vec4<u32>(plane_in);
                }
                for (var q = 0u; q < {{BM}}u / 4u; q++) {
                    tile_fma(&acc, q, vec4<f32>(w4[w_at + q]), &xv);
                }
                w_at += w_step;
            }
        }
    }

    // Constant trip counts and no `break` anywhere that indexes acc: the loops
    // unroll and acc stays in registers (on llvmpipe an acc indexed by a
    // variable lives in memory, which costs ~40 %).
    for (var i = 0u; i < {{BM}}u; i++) {
        let co = co0 + i;
        if (co < p.cout) {
            let bias_co = bias_of(co);
            for (var v = 0u; v < {{PV}}u; v++) {
                let out = acc[i * {{PV}}u + v] + bias_co;
                let at = y_base[v] + co * plane_out;
                for (var c = 0u; c < 4u; c++) {
                    if (pix_ok[v][c]) { y[at[c]] = {{TX}}(out[c]); }
                }
            }
        }
    }
}
#endif

#if SUBGROUP_GEMM
// Packed weights (see conv_pack), read four output channels at a time.
@group(0) @binding(2) var<storage, read> w4: array<vec4<{{TW}}>>;

// The implicit GEMM with the input shared through subgroup broadcasts
// (broadcast_fma8 in conv_core.wgsl).
// conv_gemm's invocations each load their own pixels' inputs: on llvmpipe
// every such load is eight scalar loads. Here a subgroup works on 8 pixels
// and 4·S output channels (S = subgroup size, 8 ≤ S ≤ 64): lanes 0..7 load
// one pixel's input each, every lane loads its own 4 channels' weights, and
// subgroupBroadcast hands each pixel's input to all lanes: 2 loads per 32 FMAs
// instead of 6.
//
// A workgroup tile is TP pixels × TC channels (TC = 4 × the largest subgroup
// size the device may use, so the host can size the grid without knowing S);
// its subgroups share the tile's (8 pixels × 4·S channels) pieces. The loop
// over pieces is subgroup-uniform, so the broadcasts see every lane.
@compute @workgroup_size({{WG}})
fn conv_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sg_size: u32,
                 @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32) {
    // Grid: x·z folded = pixel tiles, y = channel tiles.
    let tile = wid.x + wid.z * nwg.x;
    if (tile * {{TP}}u >= p.n_pix) { return; }
    let plane_out = p.ho * p.wo;
    let plane_in = p.h * p.w;
    let pieces_c = {{TC}}u / (4u * sg_size);
    let pieces = ({{TP}}u / 8u) * pieces_c;
    // This tile's packed weights, one row of TC / 4 vec4s per (tap, ci).
    let w_tile = wid.y * {{TC}}u * p.kh * p.kw * p.cin / 4u;
    let w_step = {{TC}}u / 4u;
    for (var piece = sg_id; piece < pieces; piece += n_sg) {
        // Pixels n0..n0+7 (this lane loads n0 + lane % 8); channels co_q·4 .. +3.
        let n0 = tile * {{TP}}u + (piece / pieces_c) * 8u;
        let co_q = (wid.y * {{TC}}u + (piece % pieces_c) * 4u * sg_size) / 4u + lane;
        let n = n0 + lane % 8u;
        let pix_ok = n < p.n_pix;
        let nn = min(n, p.n_pix - 1u);
        let r = nn % plane_out;
        let x_base = (nn / plane_out) * (p.cin * plane_in);
        let y_base = (nn / plane_out) * (p.cout * plane_out) + r;
        let hi0 = i32((r / p.wo) * p.stride) - i32(p.pad);
        let wi0 = i32((r % p.wo) * p.stride) - i32(p.pad_w);

        // acc[j]: this lane's 4 channels at pixel n0 + j.
        var acc: array<vec4<f32>, 8>;
        var w_at = w_tile + (piece % pieces_c) * sg_size + lane;
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let hi = hi0 + i32(ky);
                let wi = wi0 + i32(kx);
                let tap_ok = pix_ok && inside(hi, wi, p.h, p.w);
                var off = select(0u, x_base + u32(hi) * p.w + u32(wi), tap_ok);
                for (var ci = 0u; ci < p.cin; ci++) {
                    let xv = select(0.0, f32(x[off]), tap_ok);
                    off += plane_in;
                    broadcast_fma8(&acc, vec4<f32>(w4[w_at]), xv);
                    w_at += w_step;
                }
            }
        }

        // Where each of the 8 pixels' outputs start (held by lanes 0..7).
        var out_at = broadcast8(y_base);
        for (var c = 0u; c < 4u; c++) {
            let co = co_q * 4u + c;
            if (co < p.cout) {
                let bias_co = bias_of(co);
                for (var j = 0u; j < 8u; j++) {
                    if (n0 + j < p.n_pix) { y[out_at[j] + co * plane_out] = {{TX}}(acc[j][c] + bias_co); }
                }
            }
        }
    }
}
#endif
