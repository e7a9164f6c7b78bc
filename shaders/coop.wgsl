// The matrix-unit layer: the four cooperative-matrix operations the GEMM
// kernels use, on 16×16 fragments, in two twins chosen by the COOP_HW define.
//
// - COOP_HW = 1: wgpu's cooperative matrices (`enable wgpu_cooperative_matrix;`
//   is added by the preprocessor): tensor cores on NVIDIA, WMMA on AMD,
//   simdgroup matrices on Apple. A fragment is held by one subgroup; every
//   operation must be reached by the whole subgroup in uniform control flow,
//   and no element of a fragment can be read or written on its own (the
//   epilogues go through workgroup memory).
// - COOP_HW = 0: the emulated twin, plain WGSL with the same meaning: each
//   lane of a warp holds its share of a fragment, so the kernel's tiling,
//   indexing, staging and epilogue run unchanged on adapters without matrix
//   units (lavapipe, CI). It is a test instrument, not a fast path.
//
// The including kernel declares the workgroup arrays the fragments are
// loaded from and stored to:
//   coop_tile_a: array<{{CT}}, ..>   the A operands
//   coop_tile_b: array<{{CT}}, ..>   the B operands
//   coop_tile_c: array<f32, ..>      accumulators on their way out (epilogue)
// where CT is the operand type: f16 on matrix units (16×16×16, f16·f16+f32,
// the configuration fsd3d asks the adapter for), f16 or f32 in the twin.
// Offsets and strides count elements. `_rm` reads a row-major fragment
// (element (r, c) at off + r·stride + c), `_cm` a column-major one (at
// off + c·stride + r). The define SG is the subgroup size the kernel is laid
// out for; `lane` is the invocation's index within its subgroup (the
// hardware keeps its own books and ignores it; the twin needs it).

#if COOP_HW
alias CoopA = coop_mat16x16<{{CT}}, A>;
alias CoopB = coop_mat16x16<{{CT}}, B>;
alias CoopC = coop_mat16x16<f32, C>;

fn coop_load_a_rm(off: u32, stride: u32, lane: u32) -> CoopA { return coopLoadT<CoopA>(&coop_tile_a[off], stride); }
fn coop_load_a_cm(off: u32, stride: u32, lane: u32) -> CoopA { return coopLoad<CoopA>(&coop_tile_a[off], stride); }
fn coop_load_b_rm(off: u32, stride: u32, lane: u32) -> CoopB { return coopLoadT<CoopB>(&coop_tile_b[off], stride); }
fn coop_load_b_cm(off: u32, stride: u32, lane: u32) -> CoopB { return coopLoad<CoopB>(&coop_tile_b[off], stride); }
// A row-major accumulator from coop_tile_c (a zeroed region gives a zero
// fragment: naga's zero constructor for these types is not used, since not
// every driver takes OpConstantNull of a cooperative matrix).
fn coop_load_c_rm(off: u32, stride: u32, lane: u32) -> CoopC { return coopLoadT<CoopC>(&coop_tile_c[off], stride); }
// c + a·b.
fn coop_mma(a: CoopA, b: CoopB, c: CoopC) -> CoopC { return coopMultiplyAdd(a, b, c); }
// Writes c row-major into coop_tile_c.
fn coop_store_c_rm(c: CoopC, off: u32, stride: u32, lane: u32) { coopStoreT(c, &coop_tile_c[off], stride); }
#else
// The twin keeps a fragment spread over the lanes of its warp as hardware
// does, so that each lane computes only its share: lane l holds the
// elements (l / 16 + i·(SG / 16), l % 16) of C for i < 256 / SG, the A rows
// of those elements and the B column, all copied at load time (a fragment is
// a value: rewriting its source afterwards does not change it). SG must be a
// multiple of 16.
const COOP_ROWS: u32 = 256u / {{SG}}u;      // elements of C per lane
const COOP_ROW_STEP: u32 = {{SG}}u / 16u;   // rows between them

struct CoopA { v: array<f32, COOP_ROWS * 16u> } // [i][k]: row i of the lane's rows
struct CoopB { v: array<f32, 16> }              // [k]: the lane's column
struct CoopC { v: array<f32, COOP_ROWS> }

fn coop_row(lane: u32, i: u32) -> u32 { return lane / 16u + i * COOP_ROW_STEP; }

fn coop_load_a_rm(off: u32, stride: u32, lane: u32) -> CoopA {
    var f: CoopA;
    for (var i = 0u; i < COOP_ROWS; i++) {
        for (var k = 0u; k < 16u; k++) { f.v[i * 16u + k] = f32(coop_tile_a[off + coop_row(lane, i) * stride + k]); }
    }
    return f;
}
fn coop_load_a_cm(off: u32, stride: u32, lane: u32) -> CoopA {
    var f: CoopA;
    for (var i = 0u; i < COOP_ROWS; i++) {
        for (var k = 0u; k < 16u; k++) { f.v[i * 16u + k] = f32(coop_tile_a[off + k * stride + coop_row(lane, i)]); }
    }
    return f;
}
fn coop_load_b_rm(off: u32, stride: u32, lane: u32) -> CoopB {
    var f: CoopB;
    for (var k = 0u; k < 16u; k++) { f.v[k] = f32(coop_tile_b[off + k * stride + lane % 16u]); }
    return f;
}
fn coop_load_b_cm(off: u32, stride: u32, lane: u32) -> CoopB {
    var f: CoopB;
    for (var k = 0u; k < 16u; k++) { f.v[k] = f32(coop_tile_b[off + (lane % 16u) * stride + k]); }
    return f;
}
fn coop_load_c_rm(off: u32, stride: u32, lane: u32) -> CoopC {
    var f: CoopC;
    for (var i = 0u; i < COOP_ROWS; i++) { f.v[i] = coop_tile_c[off + coop_row(lane, i) * stride + lane % 16u]; }
    return f;
}
// c + a·b: each lane its own elements (a and b were loaded by the same lane).
fn coop_mma(a: CoopA, b: CoopB, c: CoopC) -> CoopC {
    var d = c;
    for (var i = 0u; i < COOP_ROWS; i++) {
        var s = d.v[i];
        for (var k = 0u; k < 16u; k++) { s = fma(a.v[i * 16u + k], b.v[k], s); }
        d.v[i] = s;
    }
    return d;
}
fn coop_store_c_rm(c: CoopC, off: u32, stride: u32, lane: u32) {
    for (var i = 0u; i < COOP_ROWS; i++) { coop_tile_c[off + coop_row(lane, i) * stride + lane % 16u] = c.v[i]; }
}
#endif
