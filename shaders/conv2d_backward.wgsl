// The input gradient of a 2-D convolution (PyTorch semantics, groups = 1):
// the transposed convolution of the output gradient dy [B, Cout, Ho, Wo]
// with the forward weights [Cout, Cin, kh, kw], giving dx [B, Cin, H, W]:
//
//   dx[b, ci, y, x] = Σ_co Σ_(ky, kx) dy[b, co, oy, ox] · w[co, ci, ky, kx]
//   over the taps with y + pad − ky = oy·stride, 0 ≤ oy < Ho (likewise x).
//
// Storage types come from defines; accumulation is f32.
//
// grad_simple: one invocation per dx element (the baseline and cross-check).
// grad_pack:   repacks the weights for the GEMMs (four input channels per vec4).
// grad_gemm:   implicit GEMM, M = Cin, N = dx pixels of one phase, K = Cout ·
//              the phase's taps, without materialising anything. Each
//              invocation accumulates BM input channels × 4·PV pixels in vec4
//              registers; otherwise as conv_gemm in conv2d.wgsl (uniform weight
//              loads, adjacent invocations on adjacent pixels, no workgroup
//              memory, the K loop tap by tap with Cout innermost).
// grad_subgroup: the same GEMM with the dy values shared by subgroup
//              broadcasts (needs subgroups of 8 to 64 lanes), as conv_subgroup.
//
// Phases (the GEMMs): with stride s, whether tap ky reaches pixel y depends on
// (y + pad − ky) mod s, so a tile mixing pixels of different parity would
// mask out (s² − 1) / s² of its work. The host launches one dispatch per
// phase (py, px) ∈ [0, s)², covering the pixels y = py + s·yq, x = px + s·xq
// (Hq × Wq of them per image); within a phase the live taps are
// ky ≡ py + pad (mod s), the same for every pixel, and oy = yq + oy0(ky).
// Stride 1 is the single phase (0, 0).
//
// grad_weight: the weight gradient, one invocation per weight element
//   dw[co, ci, ky, kx] = Σ_b Σ_(oy, ox) dy[b, co, oy, ox] · x[b, ci, oy·s + ky − pad, ox·s + kx − pad]
//   (taps outside x read 0), stored f32; TY is dy's storage, TW x's here.
//   A plain loop (not tiled): LoRA and the tests need it, not a full UNet
//   fine-tune's speed.
//
// Edges: pixels past N read a clamped, valid address and are not stored;
// channels past Cin have zero packed weights and are not stored; taps that
// land outside dy read 0.
//
// Defines: TY (dy / dx storage), TW (weight storage), WG (workgroup size),
// BM (channels, a multiple of 4) and PV (pixel vec4s) of grad_gemm, TP
// (pixels) and TC (channels) of a grad_subgroup tile, and one of SIMPLE, PACK,
// GEMM, SUBGROUP_GEMM; PACKED = GEMM or SUBGROUP_GEMM (the kernels reading
// packed weights).

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
    pad: u32,
    n_pix: u32,     // simple: B·H·W; GEMMs: B·Hq·Wq, the pixels of this phase
    cin_pad: u32,   // Cin rounded up to the channel tile (packed weights)
    tile_c: u32,    // input channels per tile of the packed weights
    phase_y: u32,   // py: this dispatch covers rows y ≡ py (mod stride)
    phase_x: u32,   // px: and columns x ≡ px (mod stride)
    hq: u32,        // rows of the phase per image: ceil((H − py) / stride)
    wq: u32,        // columns of the phase per image
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#include "conv_core.wgsl"
#if WEIGHT_GRAD
@group(0) @binding(1) var<storage, read> dyw: array<{{TY}}>;
@group(0) @binding(2) var<storage, read> xw: array<{{TW}}>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size({{WG}})
fn grad_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * {{WG}}u + lid;
    if (i >= p.cout * p.cin * p.kh * p.kw) { return; }
    let kx = i % p.kw;
    let ky = (i / p.kw) % p.kh;
    let ci = (i / (p.kw * p.kh)) % p.cin;
    let co = i / (p.kw * p.kh * p.cin);
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        for (var oy = 0u; oy < p.ho; oy++) {
            let y = i32(oy * p.stride + ky) - i32(p.pad);
            if (y < 0 || u32(y) >= p.h) { continue; }
            for (var ox = 0u; ox < p.wo; ox++) {
                let x = i32(ox * p.stride + kx) - i32(p.pad);
                if (x < 0 || u32(x) >= p.w) { continue; }
                acc += f32(dyw[((b * p.cout + co) * p.ho + oy) * p.wo + ox]) * f32(xw[((b * p.cin + ci) * p.h + u32(y)) * p.w + u32(x)]);
            }
        }
    }
    dw[i] = acc;
}
#endif
#if !PACK
#if !WEIGHT_GRAD
@group(0) @binding(1) var<storage, read> dy: array<{{TY}}>;
#if SIMPLE
@group(0) @binding(2) var<storage, read> wt: array<{{TW}}>;
#endif
@group(0) @binding(3) var<storage, read_write> dx: array<{{TY}}>;
#endif
#endif

#if SIMPLE
@compute @workgroup_size({{WG}})
fn grad_simple(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * {{WG}}u + lid;
    if (i >= p.n_pix * p.cin) { return; }
    let x = i % p.w;
    let y = (i / p.w) % p.h;
    let ci = (i / (p.w * p.h)) % p.cin;
    let b = i / (p.w * p.h * p.cin);
    var acc = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let ny = i32(y + p.pad) - i32(ky);
        if (ny < 0 || u32(ny) % p.stride != 0u) { continue; }
        let oy = u32(ny) / p.stride;
        if (oy >= p.ho) { continue; }
        for (var kx = 0u; kx < p.kw; kx++) {
            let nx = i32(x + p.pad) - i32(kx);
            if (nx < 0 || u32(nx) % p.stride != 0u) { continue; }
            let ox = u32(nx) / p.stride;
            if (ox >= p.wo) { continue; }
            for (var co = 0u; co < p.cout; co++) {
                let g = f32(dy[((b * p.cout + co) * p.ho + oy) * p.wo + ox]);
                acc += g * f32(wt[((co * p.cin + ci) * p.kh + ky) * p.kw + kx]);
            }
        }
    }
    dx[i] = {{TY}}(acc);
}
#endif

#if PACK
// Weights [Cout, Cin, kh, kw] -> packed [cin_pad / tile_c, kh·kw·Cout, tile_c]
// (see packed_slot): the transpose of conv2d.wgsl's packing, the input
// channels being the GEMM's M here. Channels from Cin up to cin_pad are zero.
@group(0) @binding(1) var<storage, read> w_src: array<{{TW}}>;
@group(0) @binding(2) var<storage, read_write> w_packed: array<{{TW}}>;

@compute @workgroup_size({{WG}})
fn grad_pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * {{WG}}u + lid;
    let taps = p.kh * p.kw;
    if (i >= taps * p.cout * p.cin_pad) { return; }
    let s = packed_slot(i, p.cout, taps, p.tile_c);   // s.m: ci, s.k: co
    var v = {{TW}}(0.0);
    if (s.m < p.cin) { v = w_src[(s.k * p.cin + s.m) * taps + s.tap]; }
    w_packed[i] = v;
}
#endif

#if PACKED
// Packed weights (see grad_pack), read four input channels at a time.
@group(0) @binding(2) var<storage, read> w4: array<vec4<{{TW}}>>;

// First live tap of the phase along one axis: k ≡ phase + pad (mod stride).
fn first_tap(phase: u32) -> u32 {
    return (phase + p.pad) % p.stride;
}

// oy − yq for a live tap k of the phase: (phase + pad − k) / stride, exact.
fn tap_shift(phase: u32, k: u32) -> i32 {
    return (i32(phase + p.pad) - i32(k)) / i32(p.stride);
}
#endif

#if GEMM
// Grid: x·z folded = pixel tiles of WG·4·PV pixels of the phase, y = channel
// tiles of BM input channels. Invocation pixel j = 4·v + c (vec4 v,
// component c) is pixel tile + j·WG + lid of the phase.
@compute @workgroup_size({{WG}})
fn grad_gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane_dy = p.ho * p.wo;
    let plane_dx = p.h * p.w;
    let plane_q = p.hq * p.wq;
    let ci0 = wid.y * {{BM}}u;
    let tile_start = (wid.x + wid.z * nwg.x) * ({{WG}}u * 4u * {{PV}}u);
    if (tile_start >= p.n_pix) { return; }
    let tile = tile_start + lid;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u) * {{WG}}u;

    // Per pixel: whether it exists, where dy[b] starts, where dx[b, 0, y, x]
    // is, and its phase coordinates (yq, xq).
    var pix_ok: array<vec4<bool>, {{PV}}>;
    var dy_base: array<vec4<u32>, {{PV}}>;
    var dx_at: array<vec4<u32>, {{PV}}>;
    var yq: array<vec4<i32>, {{PV}}>;
    var xq: array<vec4<i32>, {{PV}}>;
    for (var v = 0u; v < {{PV}}u; v++) {
        let n = tile + v * 4u * {{WG}}u + lanes;
        pix_ok[v] = n < vec4<u32>(p.n_pix);
        let nn = min(n, vec4<u32>(p.n_pix - 1u));
        let b = nn / plane_q;
        let r = nn % plane_q;
        yq[v] = vec4<i32>(r / p.wq);
        xq[v] = vec4<i32>(r % p.wq);
        dy_base[v] = b * (p.cout * plane_dy);
        dx_at[v] = b * (p.cin * plane_dx) + (p.phase_y + p.stride * (r / p.wq)) * p.w + p.phase_x + p.stride * (r % p.wq);
    }

    // acc[i·PV + v]: input channel ci0 + i at the four pixels of vec4 v.
    var acc: array<vec4<f32>, {{BM}} * {{PV}}>;
    // This tile's packed weights: one row of BM / 4 vec4s per (tap, co).
    let w_tile = ci0 * p.kh * p.kw * p.cout / 4u;
    let w_step = {{BM}}u / 4u;
    for (var ky = first_tap(p.phase_y); ky < p.kh; ky += p.stride) {
        let oy0 = tap_shift(p.phase_y, ky);
        for (var kx = first_tap(p.phase_x); kx < p.kw; kx += p.stride) {
            let ox0 = tap_shift(p.phase_x, kx);
            // This tap's dy offsets at channel 0; taps outside dy read dy[0]
            // (a valid address) and are masked to 0.
            var tap_ok: array<vec4<bool>, {{PV}}>;
            var off: array<vec4<u32>, {{PV}}>;
            for (var v = 0u; v < {{PV}}u; v++) {
                let oy = yq[v] + vec4<i32>(oy0);
                let ox = xq[v] + vec4<i32>(ox0);
                tap_ok[v] = pix_ok[v] & inside4(oy, ox, p.ho, p.wo);
                off[v] = select(vec4<u32>(0u), dy_base[v] + vec4<u32>(oy) * p.wo + vec4<u32>(ox), tap_ok[v]);
            }
            var w_at = w_tile + (ky * p.kw + kx) * p.cout * w_step;
            for (var co = 0u; co < p.cout; co++) {
                var gv: array<vec4<f32>, {{PV}}>;
                for (var v = 0u; v < {{PV}}u; v++) {
                    let o = off[v];
                    let loaded = vec4<f32>(f32(dy[o.x]), f32(dy[o.y]), f32(dy[o.z]), f32(dy[o.w]));
                    gv[v] = select(vec4<f32>(0.0), loaded, tap_ok[v]);
                    off[v] = o + vec4<u32>(plane_dy);
                }
                for (var q = 0u; q < {{BM}}u / 4u; q++) {
                    tile_fma(&acc, q, vec4<f32>(w4[w_at + q]), &gv);
                }
                w_at += w_step;
            }
        }
    }

    // Constant trip counts and no `break` where acc is indexed, so that acc
    // stays in registers (see conv_gemm).
    for (var i = 0u; i < {{BM}}u; i++) {
        let ci = ci0 + i;
        if (ci < p.cin) {
            for (var v = 0u; v < {{PV}}u; v++) {
                let out = acc[i * {{PV}}u + v];
                let at = dx_at[v] + ci * plane_dx;
                for (var c = 0u; c < 4u; c++) {
                    if (pix_ok[v][c]) { dx[at[c]] = {{TY}}(out[c]); }
                }
            }
        }
    }
}
#endif

#if SUBGROUP_GEMM
// grad_gemm with the dy values shared through subgroup broadcasts, laid out
// as conv_subgroup in conv2d.wgsl: a subgroup works on 8 pixels and 4·S input
// channels (S = subgroup size, 8 ≤ S ≤ 64); lanes 0..7 load one pixel's dy
// each, every lane loads its own 4 channels' weights, and subgroupBroadcast
// hands each pixel's dy to all lanes.
//
// A workgroup tile is TP pixels × TC channels (TC = 4 × the largest subgroup
// size the device may use); its subgroups share the tile's (8 pixels × 4·S
// channels) pieces. Every loop around a broadcast is subgroup-uniform.
@compute @workgroup_size({{WG}})
fn grad_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sg_size: u32,
                 @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32) {
    // Grid: x·z folded = pixel tiles of the phase, y = channel tiles.
    let tile = wid.x + wid.z * nwg.x;
    if (tile * {{TP}}u >= p.n_pix) { return; }
    let plane_dy = p.ho * p.wo;
    let plane_dx = p.h * p.w;
    let plane_q = p.hq * p.wq;
    let pieces_c = {{TC}}u / (4u * sg_size);
    let pieces = ({{TP}}u / 8u) * pieces_c;
    // This tile's packed weights, one row of TC / 4 vec4s per (tap, co).
    let w_tile = wid.y * {{TC}}u * p.kh * p.kw * p.cout / 4u;
    let w_step = {{TC}}u / 4u;
    for (var piece = sg_id; piece < pieces; piece += n_sg) {
        // Pixels n0..n0+7 of the phase (this lane loads n0 + lane % 8);
        // input channels ci_q·4 .. +3.
        let n0 = tile * {{TP}}u + (piece / pieces_c) * 8u;
        let ci_q = (wid.y * {{TC}}u + (piece % pieces_c) * 4u * sg_size) / 4u + lane;
        let n = n0 + lane % 8u;
        let pix_ok = n < p.n_pix;
        let nn = min(n, p.n_pix - 1u);
        let b = nn / plane_q;
        let r = nn % plane_q;
        let yq = i32(r / p.wq);
        let xq = i32(r % p.wq);
        let dy_base = b * (p.cout * plane_dy);
        let dx_at = b * (p.cin * plane_dx) + (p.phase_y + p.stride * (r / p.wq)) * p.w + p.phase_x + p.stride * (r % p.wq);

        // acc[j]: this lane's 4 channels at pixel n0 + j.
        var acc: array<vec4<f32>, 8>;
        let w_lane = w_tile + (piece % pieces_c) * sg_size + lane;
        for (var ky = first_tap(p.phase_y); ky < p.kh; ky += p.stride) {
            let oy = yq + tap_shift(p.phase_y, ky);
            for (var kx = first_tap(p.phase_x); kx < p.kw; kx += p.stride) {
                let ox = xq + tap_shift(p.phase_x, kx);
                let tap_ok = pix_ok && inside(oy, ox, p.ho, p.wo);
                var off = select(0u, dy_base + u32(oy) * p.wo + u32(ox), tap_ok);
                var w_at = w_lane + (ky * p.kw + kx) * p.cout * w_step;
                for (var co = 0u; co < p.cout; co++) {
                    let g = select(0.0, f32(dy[off]), tap_ok);
                    off += plane_dy;
                    broadcast_fma8(&acc, vec4<f32>(w4[w_at]), g);
                    w_at += w_step;
                }
            }
        }

        // Where each of the 8 pixels' dx[b, 0, y, x] is (held by lanes 0..7).
        var out_at = broadcast8(dx_at);
        for (var c = 0u; c < 4u; c++) {
            let ci = ci_q * 4u + c;
            if (ci < p.cin) {
                for (var j = 0u; j < 8u; j++) {
                    if (n0 + j < p.n_pix) { dx[out_at[j] + ci * plane_dx] = {{TY}}(acc[j][c]); }
                }
            }
        }
    }
}
#endif
