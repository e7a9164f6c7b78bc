// Workgroup-tiled GEMM for GPUs: C = act(alpha · A·B + bias), with the
// operands staged through workgroup memory, double-buffered.
//
// One skeleton, two ways to multiply a staged tile, two ways to address the
// operands:
// - gemm_coop (COOP): the GPU's matrix units through the cooperative-matrix
//   layer (coop.wgsl; COOP_HW picks the hardware or its emulated twin). Each
//   subgroup ("warp") owns a WM × WN block of C as FM × FN fragments of 16×16
//   accumulators; operands are f16 (CT) in workgroup memory, sums f32.
// - gemm_reg: no matrix units. Each invocation keeps TM × TN sums in
//   registers, reading its rows and columns of the staged tiles strided by
//   the thread grid, so that neighbouring invocations read neighbouring words.
// - MATMUL addressing (CONV = 0): A [M, K] or, TRANS_A, [K, M]; B [K, N] or,
//   TRANS_B, [N, K] (a Linear weight); C [batch, M, N]; batch strides of 0
//   broadcast. Bias per column.
// - The epilogue: C = act(alpha · A·B + bias) + residual, the residual (a
//   tensor shaped as C: a block's skip connection) optional.
// - CONV addressing: an implicit GEMM for torch's conv2d. A is the weight
//   [Cout, Cin·kh·kw] as it is stored (no repacking), B the im2col matrix
//   [Cin·kh·kw, B·Ho·Wo] gathered from x [B, Cin, H, W] while staging (zero
//   padding and stride in the addressing), C written to y [B, Cout, Ho, Wo].
//   Bias per row (output channel).
//
// Staging: a block's K range is walked in BK steps. Each step's tiles of A
// and B are read from global memory into registers before the current tile
// is multiplied, and written to the other half of the double buffer after
// it, so the loads are in flight during the arithmetic and one barrier per
// step suffices. Each invocation stages the same columns of B at every step
// (the workgroup size is a multiple of the tile widths), so a convolution
// decodes its output pixels once per block, not once per element. Elements
// past M, N or K are staged as zeros.
//
// Workgroup-memory layouts: A is kept [k][m] when SH_A_KM, else [m][k]; B
// [k][n] when SH_B_KN, else [n][k]. The matrix units read either (row- or
// column-major fragments), so gemm_coop keeps the layout of global memory
// (no transposing stores); gemm_reg wants both k-major. Rows are padded by
// PAD elements against bank conflicts.
//
// Defines: TA, TB, TBIAS, TO (storage types), CT (staged operand type), BM,
// BN, BK, PAD, WG, COOP, CONV, TRANS_A, TRANS_B, VEC_A, VEC_B (CONV: VEC_B = 0),
// SH_A_KM, SH_B_KN; gemm_coop:
// COOP_HW, SG, WARPS_N, FM, FN; gemm_reg: TM, TN.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32, // 0: the bias binding is a placeholder (A again) and is not read
    a_batch: u32,  // MATMUL: elements between the matrices of A (0 = one for every batch)
    b_batch: u32,
    alpha: f32,
    act: u32,      // 0 none, 1 silu, 2 relu, 3 gelu, 4 gelu_tanh, 5 quick_gelu
    // CONV only: the geometry. m = Cout, n = B·Ho·Wo, k = Cin·kh·kw.
    cin: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    has_residual: u32, // 1: add residual (laid out as C) after the activation
    pad_w: u32,        // conv: columns of zeros left and right (pad: rows)
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// With VEC_A (VEC_B) the operand is read four elements at a time along its
// contiguous dimension, which the host asks only where that dimension is a
// multiple of 4 (so a run of four is wholly inside or wholly outside).
#if VEC_A
@group(0) @binding(1) var<storage, read> a: array<vec4<{{TA}}>>;
const VA: u32 = 4u;
alias RunA = vec4<f32>;
#else
@group(0) @binding(1) var<storage, read> a: array<{{TA}}>;
const VA: u32 = 1u;
alias RunA = f32;
#endif
#if VEC_B
@group(0) @binding(2) var<storage, read> b: array<vec4<{{TB}}>>;
const VB: u32 = 4u;
alias RunB = vec4<f32>;
#else
@group(0) @binding(2) var<storage, read> b: array<{{TB}}>;
const VB: u32 = 1u;
alias RunB = f32;
#endif
@group(0) @binding(3) var<storage, read> bias: array<{{TBIAS}}>;
// Without a residual, A stands in for it and is not read.
@group(0) @binding(4) var<storage, read> residual: array<{{TO}}>;
@group(0) @binding(5) var<storage, read_write> c: array<{{TO}}>;

#include "activations.wgsl"

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const PAD: u32 = {{PAD}}u;
const WG: u32 = {{WG}}u;

// Elements of A and B each invocation stages per step.
const LOADS_A: u32 = BM * BK / WG;
const LOADS_B: u32 = BK * BN / WG;

// One half of the double buffer, and the row stride, of each staged tile.
#if SH_A_KM
const A_STRIDE: u32 = BM + PAD;
const A_TILE: u32 = BK * A_STRIDE;
fn sh_a_index(m: u32, k: u32) -> u32 { return k * A_STRIDE + m; }
#else
const A_STRIDE: u32 = BK + PAD;
const A_TILE: u32 = BM * A_STRIDE;
fn sh_a_index(m: u32, k: u32) -> u32 { return m * A_STRIDE + k; }
#endif
#if SH_B_KN
const B_STRIDE: u32 = BN + PAD;
const B_TILE: u32 = BK * B_STRIDE;
fn sh_b_index(k: u32, n: u32) -> u32 { return k * B_STRIDE + n; }
#else
const B_STRIDE: u32 = BK + PAD;
const B_TILE: u32 = BN * B_STRIDE;
fn sh_b_index(k: u32, n: u32) -> u32 { return n * B_STRIDE + k; }
#endif

// The staged tiles (named for the cooperative-matrix layer, which reads them).
var<workgroup> coop_tile_a: array<{{CT}}, 2u * A_TILE>;
var<workgroup> coop_tile_b: array<{{CT}}, 2u * B_TILE>;

// ---- Where the staged elements come from -----------------------------------
// Invocation t stages, per step, elements e = t + i·WG (i < LOADS_*) of each
// tile, numbered along the dimension that is contiguous in global memory so
// that neighbouring invocations read neighbouring addresses.

// (m, k) within the A tile of element e.
fn a_elem(e: u32) -> vec2<u32> {
#if TRANS_A
    return vec2<u32>(e % BM, e / BM); // [K, M]: m is contiguous
#else
    return vec2<u32>(e / BK, e % BK); // [M, K] (and the conv weight): k is contiguous
#endif
}

// (k, n) within the B tile of element e.
fn b_elem(e: u32) -> vec2<u32> {
#if TRANS_B
    return vec2<u32>(e % BK, e / BK); // [N, K]: k is contiguous
#else
    return vec2<u32>(e / BN, e % BN); // [K, N] and im2col: n is contiguous
#endif
}

// The run of VA elements of op(A) from (m, k) along A's contiguous dimension
// (m with TRANS_A, else k), zero outside; and where it goes in the staged tile.
fn load_a_run(a_base: u32, m: u32, k: u32) -> RunA {
    if (m >= params.m || k >= params.k) { return RunA(0.0); }
#if TRANS_A
    let i = a_base + k * params.m + m;
#else
    let i = a_base + m * params.k + k;
#endif
#if VEC_A
    return vec4<f32>(a[i / 4u]);
#else
    return f32(a[i]);
#endif
}

fn put_a_run(buf: u32, m: u32, k: u32, v: RunA) {
#if VEC_A
    for (var j = 0u; j < 4u; j++) {
#if TRANS_A
        coop_tile_a[buf * A_TILE + sh_a_index(m + j, k)] = {{CT}}(v[j]);
#else
        coop_tile_a[buf * A_TILE + sh_a_index(m, k + j)] = {{CT}}(v[j]);
#endif
    }
#else
    coop_tile_a[buf * A_TILE + sh_a_index(m, k)] = {{CT}}(v);
#endif
}

#if CONV
// One output pixel of the block, decoded once: the top-left input position of
// its receptive field and the offset of its image, or live = false past N.
struct Pixel {
    live: bool,
    x_base: u32, // offset of image b in x
    iy0: i32,
    ix0: i32,
}

fn pixel(n: u32) -> Pixel {
    var px: Pixel;
    px.live = n < params.n;
    let hw = params.ho * params.wo;
    let nn = min(n, params.n - 1u);
    let bi = nn / hw;
    let r = nn % hw;
    px.x_base = bi * params.cin * params.h * params.w;
    px.iy0 = i32((r / params.wo) * params.stride) - i32(params.pad);
    px.ix0 = i32((r % params.wo) * params.stride) - i32(params.pad_w);
    return px;
}

// im2col(k, pixel): x[b, ci, iy0 + ky, ix0 + kx], zero in the padding and past K.
fn load_b_conv(px: Pixel, k: u32) -> f32 {
    if (!px.live || k >= params.k) { return 0.0; }
    let taps = params.kh * params.kw;
    let ci = k / taps;
    let t = k % taps;
    let iy = px.iy0 + i32(t / params.kw);
    let ix = px.ix0 + i32(t % params.kw);
    if (iy < 0 || ix < 0 || iy >= i32(params.h) || ix >= i32(params.w)) { return 0.0; }
    return f32(b[px.x_base + (ci * params.h + u32(iy)) * params.w + u32(ix)]);
}
#else
// The run of VB elements of op(B) from (k, n) along B's contiguous dimension
// (k with TRANS_B, else n), zero outside.
fn load_b_run(b_base: u32, k: u32, n: u32) -> RunB {
    if (k >= params.k || n >= params.n) { return RunB(0.0); }
#if TRANS_B
    let i = b_base + n * params.k + k;
#else
    let i = b_base + k * params.n + n;
#endif
#if VEC_B
    return vec4<f32>(b[i / 4u]);
#else
    return f32(b[i]);
#endif
}
#endif

fn put_b_run(buf: u32, k: u32, n: u32, v: RunB) {
#if VEC_B
    for (var j = 0u; j < 4u; j++) {
#if TRANS_B
        coop_tile_b[buf * B_TILE + sh_b_index(k + j, n)] = {{CT}}(v[j]);
#else
        coop_tile_b[buf * B_TILE + sh_b_index(k, n + j)] = {{CT}}(v[j]);
#endif
    }
#else
    coop_tile_b[buf * B_TILE + sh_b_index(k, n)] = {{CT}}(v);
#endif
}

// The per-invocation state of the staging: where this block's operands start,
// and (CONV) the decoded pixels this invocation stages.
struct Stage {
    a_base: u32,
    b_base: u32,
    m0: u32,
    n0: u32,
}

// Registers a tile passes through on its way to workgroup memory: runs of
// VA (VB) elements, invocation t taking runs t + i·WG.
const RUNS_A: u32 = LOADS_A / VA;
const RUNS_B: u32 = LOADS_B / VB;
struct Staged {
    a: array<RunA, RUNS_A>,
    b: array<RunB, RUNS_B>,
}

#if CONV
// The pixels of the B elements this invocation stages: the same at every step.
var<private> my_pixels: array<Pixel, LOADS_B>;
fn decode_pixels(s: Stage, tid: u32) {
    for (var i = 0u; i < LOADS_B; i++) {
        my_pixels[i] = pixel(s.n0 + b_elem(tid + i * WG).y);
    }
}
#endif

// Reads the step's tiles (K from k0) into registers.
fn fetch(s: Stage, tid: u32, k0: u32) -> Staged {
    var r: Staged;
    for (var i = 0u; i < RUNS_A; i++) {
        let mk = a_elem((tid + i * WG) * VA);
        r.a[i] = load_a_run(s.a_base, s.m0 + mk.x, k0 + mk.y);
    }
    for (var i = 0u; i < RUNS_B; i++) {
        let kn = b_elem((tid + i * WG) * VB);
#if CONV
        r.b[i] = load_b_conv(my_pixels[i], k0 + kn.x);
#else
        r.b[i] = load_b_run(s.b_base, k0 + kn.x, s.n0 + kn.y);
#endif
    }
    return r;
}

// Writes staged registers into half `buf` of the double buffer.
fn deposit(r: Staged, tid: u32, buf: u32) {
    for (var i = 0u; i < RUNS_A; i++) {
        let mk = a_elem((tid + i * WG) * VA);
        put_a_run(buf, mk.x, mk.y, r.a[i]);
    }
    for (var i = 0u; i < RUNS_B; i++) {
        let kn = b_elem((tid + i * WG) * VB);
        put_b_run(buf, kn.x, kn.y, r.b[i]);
    }
}

fn stage_of(wid: vec3<u32>) -> Stage {
    var s: Stage;
    s.m0 = wid.y * BM;
    s.n0 = wid.x * BN;
#if CONV
    s.a_base = 0u;
    s.b_base = 0u;
#else
    s.a_base = wid.z * params.a_batch;
    s.b_base = wid.z * params.b_batch;
#endif
    return s;
}

// ---- The epilogue: alpha, bias, activation, store ---------------------------
// act(alpha · sum + bias) (+ residual), stored at C(m, n) of batch bi when inside C.
fn store_out(bi: u32, m: u32, n: u32, sum: f32) {
    if (m >= params.m || n >= params.n) { return; }
    var y = sum * params.alpha;
#if CONV
    if (params.has_bias != 0u) { y += f32(bias[m]); }
    let hw = params.ho * params.wo;
    let i = ((n / hw) * params.m + m) * hw + n % hw;
#else
    if (params.has_bias != 0u) { y += f32(bias[n]); }
    let i = (bi * params.m + m) * params.n + n;
#endif
    y = activation_by_code(y, params.act);
    if (params.has_residual != 0u) { y += f32(residual[i]); }
    c[i] = {{TO}}(y);
}

#if COOP
// ---- Matrix units -----------------------------------------------------------
#include "coop.wgsl"

const SG: u32 = {{SG}}u;
const WARPS_N: u32 = {{WARPS_N}}u;
const FM: u32 = {{FM}}u;
const FN: u32 = {{FN}}u;
const WM: u32 = FM * 16u;
const WN: u32 = FN * 16u;

// Accumulators leave through workgroup memory, one 16×16 fragment per warp
// at a time; zeroed, the same space gives the zero accumulators to start from.
var<workgroup> coop_tile_c: array<f32, (WG / SG) * 256u>;

// Fragment (i, kk) of the warp's A rows from half `buf`, for rows wm0.. and k kk·16..
fn frag_a(buf: u32, row: u32, kk: u32, lane: u32) -> CoopA {
#if SH_A_KM
    return coop_load_a_cm(buf * A_TILE + sh_a_index(row, kk * 16u), A_STRIDE, lane);
#else
    return coop_load_a_rm(buf * A_TILE + sh_a_index(row, kk * 16u), A_STRIDE, lane);
#endif
}

fn frag_b(buf: u32, col: u32, kk: u32, lane: u32) -> CoopB {
#if SH_B_KN
    return coop_load_b_rm(buf * B_TILE + sh_b_index(kk * 16u, col), B_STRIDE, lane);
#else
    return coop_load_b_cm(buf * B_TILE + sh_b_index(kk * 16u, col), B_STRIDE, lane);
#endif
}

@compute @workgroup_size({{WG}})
fn gemm_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32,
#if COOP_HW
             @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32) {
    let warp = sg_id;
    let lane = sg_lane;
#else
             ) {
    // The twin's warps are consecutive invocations: what matters is that the
    // kernel's layout of warps is exercised, not the adapter's subgroups.
    let warp = tid / SG;
    let lane = tid % SG;
#endif
    let s = stage_of(wid);
#if CONV
    decode_pixels(s, tid);
#endif
    let wm0 = (warp / WARPS_N) * WM; // the warp's rows within the block
    let wn0 = (warp % WARPS_N) * WN;
    let scratch = warp * 256u;

    for (var e = tid; e < (WG / SG) * 256u; e += WG) { coop_tile_c[e] = 0.0; }
    deposit(fetch(s, tid, 0u), tid, 0u);
    workgroupBarrier();
    var acc: array<CoopC, FM * FN>;
    for (var i = 0u; i < FM * FN; i++) { acc[i] = coop_load_c_rm(scratch, 16u, lane); }

    let steps = (params.k + BK - 1u) / BK;
    for (var step = 0u; step < steps; step++) {
        let buf = step & 1u;
        let more = step + 1u < steps;
        var next: Staged;
        if (more) { next = fetch(s, tid, (step + 1u) * BK); }
        for (var kk = 0u; kk < BK / 16u; kk++) {
            var fa: array<CoopA, FM>;
            for (var i = 0u; i < FM; i++) { fa[i] = frag_a(buf, wm0 + i * 16u, kk, lane); }
            for (var j = 0u; j < FN; j++) {
                let fb = frag_b(buf, wn0 + j * 16u, kk, lane);
                for (var i = 0u; i < FM; i++) { acc[i * FN + j] = coop_mma(fa[i], fb, acc[i * FN + j]); }
            }
        }
        if (more) { deposit(next, tid, buf ^ 1u); }
        workgroupBarrier();
    }

    // Each fragment through the warp's scratch, then out with the epilogue.
    for (var f = 0u; f < FM * FN; f++) {
        coop_store_c_rm(acc[f], scratch, 16u, lane);
        workgroupBarrier();
        let m = s.m0 + wm0 + (f / FN) * 16u;
        let n = s.n0 + wn0 + (f % FN) * 16u;
        for (var e = lane; e < 256u; e += SG) {
            store_out(wid.z, m + e / 16u, n + e % 16u, coop_tile_c[scratch + e]);
        }
        workgroupBarrier();
    }
}
#else
// ---- Registers --------------------------------------------------------------
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
// The thread grid over the block: BN / TN columns of invocations.
const GRID_N: u32 = BN / TN;
const GRID_M: u32 = BM / TM;

@compute @workgroup_size({{WG}})
fn gemm_reg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let s = stage_of(wid);
#if CONV
    decode_pixels(s, tid);
#endif
    // Rows ty + i·GRID_M and columns tx + j·GRID_N of the block.
    let tx = tid % GRID_N;
    let ty = tid / GRID_N;
    var acc: array<f32, TM * TN>;

    deposit(fetch(s, tid, 0u), tid, 0u);
    workgroupBarrier();
    let steps = (params.k + BK - 1u) / BK;
    for (var step = 0u; step < steps; step++) {
        let buf = step & 1u;
        let more = step + 1u < steps;
        var next: Staged;
        if (more) { next = fetch(s, tid, (step + 1u) * BK); }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, TM>;
            for (var i = 0u; i < TM; i++) { av[i] = f32(coop_tile_a[buf * A_TILE + sh_a_index(ty + i * GRID_M, kk)]); }
            for (var j = 0u; j < TN; j++) {
                let bv = f32(coop_tile_b[buf * B_TILE + sh_b_index(kk, tx + j * GRID_N)]);
                for (var i = 0u; i < TM; i++) { acc[i * TN + j] = fma(av[i], bv, acc[i * TN + j]); }
            }
        }
        if (more) { deposit(next, tid, buf ^ 1u); }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store_out(wid.z, s.m0 + ty + i * GRID_M, s.n0 + tx + j * GRID_N, acc[i * TN + j]);
        }
    }
}
#endif
