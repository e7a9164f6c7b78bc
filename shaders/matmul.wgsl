// Batched matmul: C[b] = act(alpha · op(A[b]) · op(B[b]) + bias), op = optional transpose.
//
// Layouts (row-major): A is [M, K] ([K, M] when TRANS_A), B is [K, N] ([N, K]
// when TRANS_B, torch's Linear weight), C is [batch, M, N]. A batch stride of 0
// broadcasts one matrix over the batch. Storage types come from defines
// (TA, TB, TBIAS, TO: f32 or f16); products and sums are f32.
//
// Entry points:
// - simple:   one output per invocation, 16×16 tiles staged in workgroup memory.
// - blocked:  each invocation keeps a BM × (4·BN4) block of outputs in registers
//             and reads its operands straight from the storage buffers, four k
//             at a time (vec4 loads where the contiguous dimension is a multiple
//             of 4: VEC_A / VEC_B). No workgroup memory, no barriers.
// - subgroup: `blocked` where every invocation of the workgroup shares the same
//             rows: the lanes of a subgroup load eight k of A between them and
//             pass them round with subgroupBroadcast (needs subgroup size ≥ 8).
//
// Defines: TA, TB, TBIAS, TO, TRANS_A, TRANS_B, HAS_BIAS, and per entry point
// SIMPLE / BLOCKED / SUBGROUP; blocked and subgroup also VEC_A, VEC_B, BM, BN4,
// WG_X, WG_Y.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,  // elements between the matrices of A (0 = one matrix for every batch)
    b_batch: u32,
    alpha: f32,
    act: u32,      // activation after the bias: 0 none, 1 silu, 2 relu, 3 gelu, 4 gelu_tanh, 5 quick_gelu
}

@group(0) @binding(0) var<uniform> p: Params;

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

#if HAS_BIAS
@group(0) @binding(3) var<storage, read> bias: array<{{TBIAS}}>;
@group(0) @binding(4) var<storage, read_write> c: array<{{TO}}>;
#else
@group(0) @binding(3) var<storage, read_write> c: array<{{TO}}>;
#endif

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

fn act_silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
fn act_quick_gelu(x: f32) -> f32 { return x / (1.0 + exp(-1.702 * x)); }
fn act_gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return 0.5 * x * (1.0 + tanh(u));
}
// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), for exact GELU.
fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
    return s * y;
}
fn act_gelu(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476)); }

fn activation(x: f32) -> f32 {
    switch p.act {
        case 1u: { return act_silu(x); }
        case 2u: { return max(x, 0.0); }
        case 3u: { return act_gelu(x); }
        case 4u: { return act_gelu_tanh(x); }
        case 5u: { return act_quick_gelu(x); }
        default: { return x; }
    }
}

// alpha · sum (+ bias[n]), then the activation.
fn epilogue(sum: f32, n: u32) -> f32 {
    var y = sum * p.alpha;
#if HAS_BIAS
    y += f32(bias[n]);
#endif
    return activation(y);
}

fn store(bi: u32, m: u32, n: u32, sum: f32) {
    if (m < p.m && n < p.n) {
        c[(bi * p.m + m) * p.n + n] = {{TO}}(epilogue(sum, n));
    }
}

#if SIMPLE
const TILE: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 16>, 16>; // [m][k]
var<workgroup> tile_b: array<array<f32, 16>, 16>; // [k][n]

@compute @workgroup_size(16, 16)
fn simple(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
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
const BM: u32 = {{BM}}u;   // rows per invocation
const BN4: u32 = {{BN4}}u; // groups of 4 columns per invocation
const BN: u32 = BN4 * 4u;

// Rows and columns past the edge read the last row / column (in bounds);
// their sums are never stored.
fn row_at(m: u32) -> u32 { return min(m, p.m - 1u); }
fn col_at(n: u32) -> u32 { return min(n, p.n - 1u); }

// a[r] = op(A)(m0 + r, k0 .. k0 + 3), for k0 + 3 < K.
fn a_chunk(base: u32, m0: u32, k0: u32) -> array<vec4<f32>, BM> {
    var a4: array<vec4<f32>, BM>;
#if TRANS_A
#if VEC_A
    // [K, M] with M a multiple of 4: one vec4 covers four rows.
    for (var j = 0u; j < 4u; j++) {
        for (var g = 0u; g < BM / 4u; g++) {
            let v = load_a4(a_index(base, min(m0 + 4u * g, p.m - 4u), k0 + j));
            a4[4u * g][j] = v.x;
            a4[4u * g + 1u][j] = v.y;
            a4[4u * g + 2u][j] = v.z;
            a4[4u * g + 3u][j] = v.w;
        }
    }
#else
    for (var j = 0u; j < 4u; j++) {
        for (var r = 0u; r < BM; r++) { a4[r][j] = load_a(a_index(base, row_at(m0 + r), k0 + j)); }
    }
#endif
#else
    for (var r = 0u; r < BM; r++) { a4[r] = load_a4(a_index(base, row_at(m0 + r), k0)); }
#endif
    return a4;
}

// b[j * BN4 + g] = op(B)(k0 + j, n0 + 4g .. n0 + 4g + 3), for k0 + 3 < K.
fn b_chunk(base: u32, k0: u32, n0: u32) -> array<vec4<f32>, 4u * BN4> {
    var b4: array<vec4<f32>, 4u * BN4>;
#if TRANS_B
    // [N, K]: a column's four k are contiguous.
    for (var q = 0u; q < BN; q++) {
        let v = load_b4(b_index(base, k0, col_at(n0 + q)));
        b4[q / 4u][q % 4u] = v.x;
        b4[BN4 + q / 4u][q % 4u] = v.y;
        b4[2u * BN4 + q / 4u][q % 4u] = v.z;
        b4[3u * BN4 + q / 4u][q % 4u] = v.w;
    }
#else
#if VEC_B
    for (var j = 0u; j < 4u; j++) {
        for (var g = 0u; g < BN4; g++) {
            b4[j * BN4 + g] = load_b4(b_index(base, k0 + j, min(n0 + 4u * g, p.n - 4u)));
        }
    }
#else
    for (var j = 0u; j < 4u; j++) {
        for (var q = 0u; q < BN; q++) { b4[j * BN4 + q / 4u][q % 4u] = load_b(b_index(base, k0 + j, col_at(n0 + q))); }
    }
#endif
#endif
    return b4;
}

// acc += a4 · b4 over four k.
fn mac4(acc: ptr<function, array<vec4<f32>, BM * BN4>>, a4: array<vec4<f32>, BM>, b4: array<vec4<f32>, 4u * BN4>) {
    for (var r = 0u; r < BM; r++) {
        for (var g = 0u; g < BN4; g++) {
            var s = (*acc)[r * BN4 + g];
            s = fma(vec4<f32>(a4[r].x), b4[g], s);
            s = fma(vec4<f32>(a4[r].y), b4[BN4 + g], s);
            s = fma(vec4<f32>(a4[r].z), b4[2u * BN4 + g], s);
            s = fma(vec4<f32>(a4[r].w), b4[3u * BN4 + g], s);
            (*acc)[r * BN4 + g] = s;
        }
    }
}

// acc += op(A)(rows, k) · op(B)(k, cols) for one k.
fn mac1(acc: ptr<function, array<vec4<f32>, BM * BN4>>, a_base: u32, b_base: u32, m0: u32, n0: u32, k: u32) {
    var bv: array<vec4<f32>, BN4>;
    for (var q = 0u; q < BN; q++) { bv[q / 4u][q % 4u] = load_b(b_index(b_base, k, col_at(n0 + q))); }
    for (var r = 0u; r < BM; r++) {
        let av = vec4<f32>(load_a(a_index(a_base, row_at(m0 + r), k)));
        for (var g = 0u; g < BN4; g++) {
            (*acc)[r * BN4 + g] = fma(av, bv[g], (*acc)[r * BN4 + g]);
        }
    }
}

fn store_block(bi: u32, m0: u32, n0: u32, acc: ptr<function, array<vec4<f32>, BM * BN4>>) {
    for (var r = 0u; r < BM; r++) {
        for (var q = 0u; q < BN; q++) {
            store(bi, m0 + r, n0 + q, (*acc)[r * BN4 + q / 4u][q % 4u]);
        }
    }
}
#endif

#if BLOCKED
@compute @workgroup_size({{WG_X}}, {{WG_Y}})
fn blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bi = wid.z;
    let a_base = bi * p.a_batch;
    let b_base = bi * p.b_batch;
    let m0 = (wid.y * {{WG_Y}}u + lid.y) * BM;
    let n0 = (wid.x * {{WG_X}}u + lid.x) * BN;
    var acc: array<vec4<f32>, BM * BN4>;
    let k4 = p.k & ~3u;
    for (var k0 = 0u; k0 < k4; k0 += 4u) {
        mac4(&acc, a_chunk(a_base, m0, k0), b_chunk(b_base, k0, n0));
    }
    for (var k = k4; k < p.k; k++) {
        mac1(&acc, a_base, b_base, m0, n0, k);
    }
    store_block(bi, m0, n0, &acc);
}
#endif

#if SUBGROUP
// One workgroup row of invocations shares its BM rows of A. Per 32 k, lane
// l < 8 of each subgroup loads op(A)(rows, k0 + 4l .. k0 + 4l + 3) and the
// eight lanes' values are broadcast in turn.

// Lane `lane`'s share of the 32-k chunk at k0.
fn a_lane_chunk(base: u32, m0: u32, k0: u32, lane: u32) -> array<vec4<f32>, BM> {
    return a_chunk(base, m0, k0 + 4u * lane);
}

@compute @workgroup_size({{WG_X}}, 1)
fn subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(subgroup_invocation_id) sg_lane: u32) {
    let bi = wid.z;
    let a_base = bi * p.a_batch;
    let b_base = bi * p.b_batch;
    let m0 = wid.y * BM;
    let n0 = (wid.x * {{WG_X}}u + lid.x) * BN;
    let lane = sg_lane & 7u;
    var acc: array<vec4<f32>, BM * BN4>;
    let k32 = p.k & ~31u;
    for (var k0 = 0u; k0 < k32; k0 += 32u) {
        let mine = a_lane_chunk(a_base, m0, k0, lane);
        var a4: array<vec4<f32>, BM>;
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 0u); }
        mac4(&acc, a4, b_chunk(b_base, k0, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 1u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 4u, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 2u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 8u, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 3u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 12u, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 4u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 16u, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 5u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 20u, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 6u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 24u, n0));
        for (var r = 0u; r < BM; r++) { a4[r] = subgroupBroadcast(mine[r], 7u); }
        mac4(&acc, a4, b_chunk(b_base, k0 + 28u, n0));
    }
    // The last K % 32: every lane loads its own A.
    let k4 = p.k & ~3u;
    for (var k0 = k32; k0 < k4; k0 += 4u) {
        mac4(&acc, a_chunk(a_base, m0, k0), b_chunk(b_base, k0, n0));
    }
    for (var k = k4; k < p.k; k++) {
        mac1(&acc, a_base, b_base, m0, n0, k);
    }
    store_block(bi, m0, n0, &acc);
}
#endif
