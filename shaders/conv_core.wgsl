// The implicit-GEMM pieces the convolution and its input gradient share
// (`#include "conv_core.wgsl"` from conv2d.wgsl and conv2d_backward.wgsl).
// Both are GEMMs over the same packed weights with the same register
// blockings; they differ in which channels are the GEMM's M (the output
// channels forward, the input channels backward), in how a pixel finds its
// taps, and in the epilogue (the forward adds the bias).
//
// Defines used here: BM and PV (conv_gemm / grad_gemm's blocking) when GEMM.

// Whether row r, column c lies in a rows × cols plane, four pixels at once
// (GEMM) or one (SUBGROUP_GEMM).
fn inside4(r: vec4<i32>, c: vec4<i32>, rows: u32, cols: u32) -> vec4<bool> {
    return (r >= vec4<i32>(0)) & (r < vec4<i32>(i32(rows))) & (c >= vec4<i32>(0)) & (c < vec4<i32>(i32(cols)));
}

fn inside(r: i32, c: i32, rows: u32, cols: u32) -> bool {
    return r >= 0 && r < i32(rows) && c >= 0 && c < i32(cols);
}

// Where packed weight element i comes from. The packed layout is
// [m_pad / tile_c, taps · k_len, tile_c]: a workgroup owns a tile of tile_c
// M-channels and streams its weights front to back (tap by tap, the K
// channel within a tap), and the tile's channels are contiguous in a row, so
// four come in one vec4 load. m may be past the real channels (padding:
// packed as 0).
struct PackedSlot {
    m: u32,    // the GEMM's M channel (Cout forward, Cin backward)
    k: u32,    // the K channel within the tap (Cin forward, Cout backward)
    tap: u32,  // ky·kw + kx
}

fn packed_slot(i: u32, k_len: u32, taps: u32, tile_c: u32) -> PackedSlot {
    let row = (i / tile_c) % (taps * k_len);   // tap · k_len + k
    let m = (i / (tile_c * taps * k_len)) * tile_c + i % tile_c;
    return PackedSlot(m, row % k_len, row / k_len);
}

#if GEMM
// acc[(4q + j)·PV + v] += w[j] · xv[v]: the four M-channels of packed weight
// vec4 q against the PV pixel vec4s of one K step. Called with a constant q
// range so that acc stays in registers.
fn tile_fma(acc: ptr<function, array<vec4<f32>, {{BM}} * {{PV}}>>, q: u32, w: vec4<f32>,
            xv: ptr<function, array<vec4<f32>, {{PV}}>>) {
    for (var v = 0u; v < {{PV}}u; v++) {
        let a = (4u * q) * {{PV}}u + v;
        (*acc)[a] = fma(vec4<f32>(w.x), (*xv)[v], (*acc)[a]);
        (*acc)[a + {{PV}}u] = fma(vec4<f32>(w.y), (*xv)[v], (*acc)[a + {{PV}}u]);
        (*acc)[a + 2u * {{PV}}u] = fma(vec4<f32>(w.z), (*xv)[v], (*acc)[a + 2u * {{PV}}u]);
        (*acc)[a + 3u * {{PV}}u] = fma(vec4<f32>(w.w), (*xv)[v], (*acc)[a + 3u * {{PV}}u]);
    }
}
#endif

#if SUBGROUP_GEMM
// acc[j] += w · (lane j's v) for the 8 pixels held by lanes 0..7. Called in
// subgroup-uniform control flow. Broadcast lane ids must be constants:
// unrolled by hand.
fn broadcast_fma8(acc: ptr<function, array<vec4<f32>, 8>>, w: vec4<f32>, v: f32) {
    (*acc)[0] = fma(w, vec4<f32>(subgroupBroadcast(v, 0u)), (*acc)[0]);
    (*acc)[1] = fma(w, vec4<f32>(subgroupBroadcast(v, 1u)), (*acc)[1]);
    (*acc)[2] = fma(w, vec4<f32>(subgroupBroadcast(v, 2u)), (*acc)[2]);
    (*acc)[3] = fma(w, vec4<f32>(subgroupBroadcast(v, 3u)), (*acc)[3]);
    (*acc)[4] = fma(w, vec4<f32>(subgroupBroadcast(v, 4u)), (*acc)[4]);
    (*acc)[5] = fma(w, vec4<f32>(subgroupBroadcast(v, 5u)), (*acc)[5]);
    (*acc)[6] = fma(w, vec4<f32>(subgroupBroadcast(v, 6u)), (*acc)[6]);
    (*acc)[7] = fma(w, vec4<f32>(subgroupBroadcast(v, 7u)), (*acc)[7]);
}

// Lanes 0..7's values of v, to every lane (subgroup-uniform control flow).
fn broadcast8(v: u32) -> array<u32, 8> {
    return array<u32, 8>(
        subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
    );
}
#endif
