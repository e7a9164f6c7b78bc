// Batched matmul: C[b] = act(alpha · op(A[b]) · op(B[b]) + bias), op = optional transpose.
//
// Layouts (row-major): A is [M, K] ([K, M] when TRANS_A), B is [K, N] ([N, K]
// when TRANS_B: torch's Linear weight), C is [batch, M, N]. A batch stride of 0
// broadcasts one matrix over the batch. Storage types come from defines
// (TA, TB, TBIAS, TO: f32 or f16); products and sums are f32.
//
// Entry points (see docs/performance.md for what each reaches on lavapipe):
// - simple:   one output per invocation, 16×16 tiles staged in workgroup memory.
// - blocked:  each invocation keeps a 32×16 block of C in registers and reads
//             its operands straight from the storage buffers, four k at a time,
//             as 4×4 quads (vec4 loads where the contiguous dimension is a
//             multiple of 4: VEC_A / VEC_B). No workgroup memory, no barriers.
// - subgroup: the 8 invocations of a workgroup share 32 rows of A and take 8
//             columns each (a 32×64 tile). Per 32 k, lane l loads the A quads of
//             k0 + 4l .. k0 + 4l + 3 and subgroupBroadcast hands them round, so
//             each element of A is read once per tile instead of once per lane.
//             Needs subgroups of at least 8 invocations.
//
// On llvmpipe every storage-buffer load is a loop over the SIMD lanes with a
// bounds check per element: loads cost far more than arithmetic, so the kernels
// are built to load each element as few times as possible. Accumulators are
// named struct members (never dynamically indexed arrays), so they stay in
// registers without relying on loop unrolling.
//
// Defines: TA, TB, TBIAS, TO, TRANS_A, TRANS_B, VEC_A, VEC_B, and one of
// SIMPLE / BLOCKED / SUBGROUP. Everything else (sizes, alpha, bias or not, the
// activation) is a parameter, so that few pipelines cover every use: each takes
// lavapipe seconds to compile.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32, // 0: the bias binding is a placeholder (A again) and is not read
    a_batch: u32,  // elements between the matrices of A (0 = one matrix for every batch)
    b_batch: u32,
    alpha: f32,
    act: u32,      // activation after the bias: 0 none, 1 silu, 2 relu, 3 gelu, 4 gelu_tanh, 5 quick_gelu
}

@group(0) @binding(0) var<uniform> params: Params;

#if VEC_A
@group(0) @binding(1) var<storage, read> a: array<vec4<{{TA}}>>;
fn load_a(i: u32) -> f32 { return f32(a[i >> 2u][i & 3u]); }
// Four consecutive elements from i (a multiple of 4).
fn load_a4(i: u32) -> vec4<f32> { return vec4<f32>(a[i >> 2u]); }
#else
@group(0) @binding(1) var<storage, read> a: array<{{TA}}>;
fn load_a(i: u32) -> f32 { return f32(a[i]); }
fn load_a4(i: u32) -> vec4<f32> { return vec4<f32>(f32(a[i]), f32(a[i + 1u]), f32(a[i + 2u]), f32(a[i + 3u])); }
#endif

#if VEC_B
@group(0) @binding(2) var<storage, read> b: array<vec4<{{TB}}>>;
fn load_b(i: u32) -> f32 { return f32(b[i >> 2u][i & 3u]); }
fn load_b4(i: u32) -> vec4<f32> { return vec4<f32>(b[i >> 2u]); }
#else
@group(0) @binding(2) var<storage, read> b: array<{{TB}}>;
fn load_b(i: u32) -> f32 { return f32(b[i]); }
fn load_b4(i: u32) -> vec4<f32> { return vec4<f32>(f32(b[i]), f32(b[i + 1u]), f32(b[i + 2u]), f32(b[i + 3u])); }
#endif

@group(0) @binding(3) var<storage, read> bias: array<{{TBIAS}}>;
@group(0) @binding(4) var<storage, read_write> c: array<{{TO}}>;

// The parameters, as the kernels read them. lavapipe (Mesa 22.x) inlines
// uniform values that loop and branch conditions depend on and recompiles the
// kernel whenever they change, which with a fresh uniform slot per dispatch is
// at every dispatch (seconds for these kernels). Passing the values through
// arrayLength, which it cannot fold, keeps them out of that analysis.
var<private> p: Params;

fn load_params() {
    let keep = arrayLength(&c) != 0u;
    let u = params;
    p = Params(select(0u, u.m, keep), select(0u, u.n, keep), select(0u, u.k, keep), select(0u, u.has_bias, keep),
               select(0u, u.a_batch, keep), select(0u, u.b_batch, keep), u.alpha, select(0u, u.act, keep));
}

// Element index of op(A)(m, k) in the matrix starting at `base`.
fn a_index(base: u32, m: u32, k: u32) -> u32 {
#if TRANS_A
    return base + k * p.m + m;
#else
    return base + m * p.k + k;
#endif
}

// Element index of op(B)(k, n) in the matrix starting at `base`.
fn b_index(base: u32, k: u32, n: u32) -> u32 {
#if TRANS_B
    return base + n * p.k + k;
#else
    return base + k * p.n + n;
#endif
}

#include "activations.wgsl"

fn activation(x: f32) -> f32 { return activation_by_code(x, p.act); }

// Writes C(m, n) of batch bi = act(alpha · sum + bias[n]), when inside C.
fn store(bi: u32, m: u32, n: u32, sum: f32) {
    if (m < p.m && n < p.n) {
        var y = sum * p.alpha;
        if (p.has_bias != 0u) { y += f32(bias[n]); }
        c[(bi * p.m + m) * p.n + n] = {{TO}}(activation(y));
    }
}

#if SIMPLE
const TILE: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 16>, 16>; // [m][k]
var<workgroup> tile_b: array<array<f32, 16>, 16>; // [k][n]

@compute @workgroup_size(16, 16)
fn simple(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    load_params();
    let bi = wid.z;
    let a_base = bi * p.a_batch;
    let b_base = bi * p.b_batch;
    let row = wid.y * TILE + lid.y;
    let col = wid.x * TILE + lid.x;
    var sum = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        // Each invocation stages one element of each tile (zero past the edges).
        let ka = k0 + lid.x;
        var va = 0.0;
        if (row < p.m && ka < p.k) { va = load_a(a_index(a_base, row, ka)); }
        tile_a[lid.y][lid.x] = va;
        let kb = k0 + lid.y;
        var vb = 0.0;
        if (kb < p.k && col < p.n) { vb = load_b(b_index(b_base, kb, col)); }
        tile_b[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var i = 0u; i < TILE; i++) {
            sum += tile_a[lid.y][i] * tile_b[i][lid.x];
        }
        workgroupBarrier();
    }
    store(bi, row, col, sum);
}
#endif

#if !SIMPLE
// ---- 4×4 quads -------------------------------------------------------------
// A quad is a mat4x4 (column-major). An A quad's columns are four k, each a
// vec4 over four rows; a B quad's columns are four output columns, each a vec4
// over four k; an accumulator quad's columns are output columns over four rows.

// Rows and columns past the edge read the last row / column (in bounds); their
// sums are never stored.
fn row_at(m: u32) -> u32 { return min(m, p.m - 1u); }
fn col_at(n: u32) -> u32 { return min(n, p.n - 1u); }

// acc + a·b over four k.
fn fmac(acc: mat4x4<f32>, a: mat4x4<f32>, b: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(a[3], vec4<f32>(b[0].w), fma(a[2], vec4<f32>(b[0].z), fma(a[1], vec4<f32>(b[0].y), fma(a[0], vec4<f32>(b[0].x), acc[0])))),
        fma(a[3], vec4<f32>(b[1].w), fma(a[2], vec4<f32>(b[1].z), fma(a[1], vec4<f32>(b[1].y), fma(a[0], vec4<f32>(b[1].x), acc[1])))),
        fma(a[3], vec4<f32>(b[2].w), fma(a[2], vec4<f32>(b[2].z), fma(a[1], vec4<f32>(b[2].y), fma(a[0], vec4<f32>(b[2].x), acc[2])))),
        fma(a[3], vec4<f32>(b[3].w), fma(a[2], vec4<f32>(b[3].z), fma(a[1], vec4<f32>(b[3].y), fma(a[0], vec4<f32>(b[3].x), acc[3])))));
}

// op(A)(m .. m+3, k .. k+3), for k + 3 < K.
fn a_quad(base: u32, m: u32, k: u32) -> mat4x4<f32> {
#if TRANS_A
#if VEC_A
    // [K, M] with M a multiple of 4: one vec4 is four rows.
    let m4 = min(m, p.m - 4u);
    return mat4x4<f32>(load_a4(a_index(base, m4, k)), load_a4(a_index(base, m4, k + 1u)),
                       load_a4(a_index(base, m4, k + 2u)), load_a4(a_index(base, m4, k + 3u)));
#else
    return transpose(mat4x4<f32>(a_row4(base, row_at(m), k), a_row4(base, row_at(m + 1u), k),
                                 a_row4(base, row_at(m + 2u), k), a_row4(base, row_at(m + 3u), k)));
#endif
#else
    // [M, K]: one vec4 is four k of a row.
    return transpose(mat4x4<f32>(load_a4(a_index(base, row_at(m), k)), load_a4(a_index(base, row_at(m + 1u), k)),
                                 load_a4(a_index(base, row_at(m + 2u), k)), load_a4(a_index(base, row_at(m + 3u), k))));
#endif
}

// op(A)(m, k .. k+3) one element at a time (a transposed A whose M is not a multiple of 4).
fn a_row4(base: u32, m: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(load_a(a_index(base, m, k)), load_a(a_index(base, m, k + 1u)),
                     load_a(a_index(base, m, k + 2u)), load_a(a_index(base, m, k + 3u)));
}

// op(B)(k .. k+3, n .. n+3), for k + 3 < K.
fn b_quad(base: u32, k: u32, n: u32) -> mat4x4<f32> {
#if TRANS_B
    // [N, K]: one vec4 is four k of a column.
    return mat4x4<f32>(load_b4(b_index(base, k, col_at(n))), load_b4(b_index(base, k, col_at(n + 1u))),
                       load_b4(b_index(base, k, col_at(n + 2u))), load_b4(b_index(base, k, col_at(n + 3u))));
#else
#if VEC_B
    // [K, N] with N a multiple of 4: one vec4 is four columns.
    let n4 = min(n, p.n - 4u);
    return transpose(mat4x4<f32>(load_b4(b_index(base, k, n4)), load_b4(b_index(base, k + 1u, n4)),
                                 load_b4(b_index(base, k + 2u, n4)), load_b4(b_index(base, k + 3u, n4))));
#else
    return transpose(mat4x4<f32>(b_row4(base, k, n), b_row4(base, k + 1u, n), b_row4(base, k + 2u, n), b_row4(base, k + 3u, n)));
#endif
#endif
}

// op(B)(k, n .. n+3) one element at a time.
fn b_row4(base: u32, k: u32, n: u32) -> vec4<f32> {
    return vec4<f32>(load_b(b_index(base, k, col_at(n))), load_b(b_index(base, k, col_at(n + 1u))),
                     load_b(b_index(base, k, col_at(n + 2u))), load_b(b_index(base, k, col_at(n + 3u))));
}

// The last, partial step of K % 4: quads loaded as usual (reads past K stay
// inside the buffer or read zero) with the steps k + j >= K zeroed in both
// operands, so that no 0 · inf can appear.
fn k_live(k: u32) -> vec4<bool> { return vec4<u32>(k, k + 1u, k + 2u, k + 3u) < vec4<u32>(p.k); }
fn mask_a_quad(q: mat4x4<f32>, live: vec4<bool>) -> mat4x4<f32> {
    let z = vec4<f32>(0.0);
    return mat4x4<f32>(select(z, q[0], live.x), select(z, q[1], live.y), select(z, q[2], live.z), select(z, q[3], live.w));
}
fn mask_b_quad(q: mat4x4<f32>, live: vec4<bool>) -> mat4x4<f32> {
    let z = vec4<f32>(0.0);
    return mat4x4<f32>(select(z, q[0], live), select(z, q[1], live), select(z, q[2], live), select(z, q[3], live));
}

// ---- 32-row panels ---------------------------------------------------------
// Eight quads on top of each other: 32 rows by 4 (k or output columns).
struct Panel {
    q0: mat4x4<f32>, q1: mat4x4<f32>, q2: mat4x4<f32>, q3: mat4x4<f32>,
    q4: mat4x4<f32>, q5: mat4x4<f32>, q6: mat4x4<f32>, q7: mat4x4<f32>,
}

// op(A)(m0 .. m0+31, k .. k+3).
fn a_panel(base: u32, m0: u32, k: u32) -> Panel {
    return Panel(a_quad(base, m0, k), a_quad(base, m0 + 4u, k), a_quad(base, m0 + 8u, k), a_quad(base, m0 + 12u, k),
                 a_quad(base, m0 + 16u, k), a_quad(base, m0 + 20u, k), a_quad(base, m0 + 24u, k), a_quad(base, m0 + 28u, k));
}

fn mask_a_panel(a: Panel, live: vec4<bool>) -> Panel {
    return Panel(mask_a_quad(a.q0, live), mask_a_quad(a.q1, live), mask_a_quad(a.q2, live), mask_a_quad(a.q3, live),
                 mask_a_quad(a.q4, live), mask_a_quad(a.q5, live), mask_a_quad(a.q6, live), mask_a_quad(a.q7, live));
}

// acc + a·b: a 32×4 panel of A times a 4×4 quad of B.
fn panel_mac(acc: Panel, a: Panel, b: mat4x4<f32>) -> Panel {
    return Panel(fmac(acc.q0, a.q0, b), fmac(acc.q1, a.q1, b), fmac(acc.q2, a.q2, b), fmac(acc.q3, a.q3, b),
                 fmac(acc.q4, a.q4, b), fmac(acc.q5, a.q5, b), fmac(acc.q6, a.q6, b), fmac(acc.q7, a.q7, b));
}

// Writes alpha · q for the quad at rows m.., columns n.. (inside C only). The
// bias and activation come after, in finish_block: with them here, their code
// would be repeated for every element of the block.
fn store_quad(bi: u32, m: u32, n: u32, q: mat4x4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        for (var r = 0u; r < 4u; r++) {
            if (m + r < p.m && n + j < p.n) {
                c[(bi * p.m + m + r) * p.n + n + j] = {{TO}}(q[j][r] * p.alpha);
            }
        }
    }
}

fn store_panel(bi: u32, m0: u32, n: u32, acc: Panel) {
    store_quad(bi, m0, n, acc.q0);
    store_quad(bi, m0 + 4u, n, acc.q1);
    store_quad(bi, m0 + 8u, n, acc.q2);
    store_quad(bi, m0 + 12u, n, acc.q3);
    store_quad(bi, m0 + 16u, n, acc.q4);
    store_quad(bi, m0 + 20u, n, acc.q5);
    store_quad(bi, m0 + 24u, n, acc.q6);
    store_quad(bi, m0 + 28u, n, acc.q7);
}

// Adds the bias and applies the activation to the rows × cols block at (m0, n0)
// that this invocation has stored, when there is either. (With an f16 result
// the value is thus rounded to f16 twice: at most one more f16 ulp.)
fn finish_block(bi: u32, m0: u32, n0: u32, rows: u32, cols: u32) {
    if (p.has_bias == 0u && p.act == 0u) {
        return;
    }
    for (var r = 0u; r < rows; r++) {
        for (var j = 0u; j < cols; j++) {
            let m = m0 + r;
            let n = n0 + j;
            if (m < p.m && n < p.n) {
                let i = (bi * p.m + m) * p.n + n;
                var y = f32(c[i]);
                if (p.has_bias != 0u) { y += f32(bias[n]); }
                c[i] = {{TO}}(activation(y));
            }
        }
    }
}
#endif

#if BLOCKED
// 32 rows × 16 columns per invocation: four accumulator panels.
@compute @workgroup_size(8, 1)
fn blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    load_params();
    let bi = wid.z;
    let a_base = bi * p.a_batch;
    let b_base = bi * p.b_batch;
    let m0 = wid.y * 32u;
    let n0 = (wid.x * 8u + lid.x) * 16u;
    var acc0 = Panel();
    var acc1 = Panel();
    var acc2 = Panel();
    var acc3 = Panel();
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        let a4 = a_panel(a_base, m0, k);
        acc0 = panel_mac(acc0, a4, b_quad(b_base, k, n0));
        acc1 = panel_mac(acc1, a4, b_quad(b_base, k, n0 + 4u));
        acc2 = panel_mac(acc2, a4, b_quad(b_base, k, n0 + 8u));
        acc3 = panel_mac(acc3, a4, b_quad(b_base, k, n0 + 12u));
    }
    if (k4 < p.k) {
        let live = k_live(k4);
        let a4 = mask_a_panel(a_panel(a_base, m0, k4), live);
        acc0 = panel_mac(acc0, a4, mask_b_quad(b_quad(b_base, k4, n0), live));
        acc1 = panel_mac(acc1, a4, mask_b_quad(b_quad(b_base, k4, n0 + 4u), live));
        acc2 = panel_mac(acc2, a4, mask_b_quad(b_quad(b_base, k4, n0 + 8u), live));
        acc3 = panel_mac(acc3, a4, mask_b_quad(b_quad(b_base, k4, n0 + 12u), live));
    }
    store_panel(bi, m0, n0, acc0);
    store_panel(bi, m0, n0 + 4u, acc1);
    store_panel(bi, m0, n0 + 8u, acc2);
    store_panel(bi, m0, n0 + 12u, acc3);
    finish_block(bi, m0, n0, 32u, 16u);
}
#endif

#if SUBGROUP
// laneN(a): lane N's A panel, as every lane of the subgroup sees it. The lane
// index of subgroupBroadcast must be a constant, hence one function per lane.
fn lane0(a: Panel) -> Panel { return Panel(bc0(a.q0), bc0(a.q1), bc0(a.q2), bc0(a.q3), bc0(a.q4), bc0(a.q5), bc0(a.q6), bc0(a.q7)); }
fn lane1(a: Panel) -> Panel { return Panel(bc1(a.q0), bc1(a.q1), bc1(a.q2), bc1(a.q3), bc1(a.q4), bc1(a.q5), bc1(a.q6), bc1(a.q7)); }
fn lane2(a: Panel) -> Panel { return Panel(bc2(a.q0), bc2(a.q1), bc2(a.q2), bc2(a.q3), bc2(a.q4), bc2(a.q5), bc2(a.q6), bc2(a.q7)); }
fn lane3(a: Panel) -> Panel { return Panel(bc3(a.q0), bc3(a.q1), bc3(a.q2), bc3(a.q3), bc3(a.q4), bc3(a.q5), bc3(a.q6), bc3(a.q7)); }
fn lane4(a: Panel) -> Panel { return Panel(bc4(a.q0), bc4(a.q1), bc4(a.q2), bc4(a.q3), bc4(a.q4), bc4(a.q5), bc4(a.q6), bc4(a.q7)); }
fn lane5(a: Panel) -> Panel { return Panel(bc5(a.q0), bc5(a.q1), bc5(a.q2), bc5(a.q3), bc5(a.q4), bc5(a.q5), bc5(a.q6), bc5(a.q7)); }
fn lane6(a: Panel) -> Panel { return Panel(bc6(a.q0), bc6(a.q1), bc6(a.q2), bc6(a.q3), bc6(a.q4), bc6(a.q5), bc6(a.q6), bc6(a.q7)); }
fn lane7(a: Panel) -> Panel { return Panel(bc7(a.q0), bc7(a.q1), bc7(a.q2), bc7(a.q3), bc7(a.q4), bc7(a.q5), bc7(a.q6), bc7(a.q7)); }
fn bc0(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 0u), subgroupBroadcast(q[1], 0u), subgroupBroadcast(q[2], 0u), subgroupBroadcast(q[3], 0u)); }
fn bc1(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 1u), subgroupBroadcast(q[1], 1u), subgroupBroadcast(q[2], 1u), subgroupBroadcast(q[3], 1u)); }
fn bc2(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 2u), subgroupBroadcast(q[1], 2u), subgroupBroadcast(q[2], 2u), subgroupBroadcast(q[3], 2u)); }
fn bc3(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 3u), subgroupBroadcast(q[1], 3u), subgroupBroadcast(q[2], 3u), subgroupBroadcast(q[3], 3u)); }
fn bc4(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 4u), subgroupBroadcast(q[1], 4u), subgroupBroadcast(q[2], 4u), subgroupBroadcast(q[3], 4u)); }
fn bc5(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 5u), subgroupBroadcast(q[1], 5u), subgroupBroadcast(q[2], 5u), subgroupBroadcast(q[3], 5u)); }
fn bc6(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 6u), subgroupBroadcast(q[1], 6u), subgroupBroadcast(q[2], 6u), subgroupBroadcast(q[3], 6u)); }
fn bc7(q: mat4x4<f32>) -> mat4x4<f32> { return mat4x4<f32>(subgroupBroadcast(q[0], 7u), subgroupBroadcast(q[1], 7u), subgroupBroadcast(q[2], 7u), subgroupBroadcast(q[3], 7u)); }

// Four k of the 32×8 block of this invocation: acc0 (columns n0..n0+3) and acc1 (n0+4..n0+7).
fn mac_step(acc0: ptr<function, Panel>, acc1: ptr<function, Panel>, a4: Panel, b_base: u32, k: u32, n0: u32) {
    *acc0 = panel_mac(*acc0, a4, b_quad(b_base, k, n0));
    *acc1 = panel_mac(*acc1, a4, b_quad(b_base, k, n0 + 4u));
}

// A workgroup is one subgroup's worth of lanes (8) sharing rows m0..m0+31; each
// takes 8 columns. Correct for any subgroup size ≥ 8: only lanes 0..7 broadcast.
@compute @workgroup_size(8, 1)
fn subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(subgroup_invocation_id) sg_lane: u32) {
    load_params();
    let bi = wid.z;
    let a_base = bi * p.a_batch;
    let b_base = bi * p.b_batch;
    let m0 = wid.y * 32u;
    let n0 = (wid.x * 8u + lid.x) * 8u;
    let lane = sg_lane & 7u;
    var acc0 = Panel();
    var acc1 = Panel();
    let k32 = p.k & ~31u;
    for (var k = 0u; k < k32; k += 32u) {
        let mine = a_panel(a_base, m0, k + 4u * lane);
        mac_step(&acc0, &acc1, lane0(mine), b_base, k, n0);
        mac_step(&acc0, &acc1, lane1(mine), b_base, k + 4u, n0);
        mac_step(&acc0, &acc1, lane2(mine), b_base, k + 8u, n0);
        mac_step(&acc0, &acc1, lane3(mine), b_base, k + 12u, n0);
        mac_step(&acc0, &acc1, lane4(mine), b_base, k + 16u, n0);
        mac_step(&acc0, &acc1, lane5(mine), b_base, k + 20u, n0);
        mac_step(&acc0, &acc1, lane6(mine), b_base, k + 24u, n0);
        mac_step(&acc0, &acc1, lane7(mine), b_base, k + 28u, n0);
    }
    // The last K % 32, four k at a time: every lane loads its own A.
    for (var k = k32; k < p.k; k += 4u) {
        let live = k_live(k);
        let a4 = mask_a_panel(a_panel(a_base, m0, k), live);
        acc0 = panel_mac(acc0, a4, mask_b_quad(b_quad(b_base, k, n0), live));
        acc1 = panel_mac(acc1, a4, mask_b_quad(b_quad(b_base, k, n0 + 4u), live));
    }
    store_panel(bi, m0, n0, acc0);
    store_panel(bi, m0, n0 + 4u, acc1);
    finish_block(bi, m0, n0, 32u, 8u);
}
#endif
