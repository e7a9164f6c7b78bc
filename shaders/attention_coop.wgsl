// Flash attention on the matrix units (cooperative matrices, coop.wgsl):
// out = softmax(scale · q kᵀ [+ causal mask]) v per head, the Lq × Lk scores
// never stored, both products on 16×16×16 fragments (f16 operands, f32 sums).
//
// Layout as attention.wgsl: q [B, Lq, H·D], k and v [B, Lk, H·D], out like q.
// Workgroup (x, y) = (block of BR queries, batch·head); one warp (subgroup)
// per 16 query rows, so that each row's softmax stays inside one warp.
//
// Per block of BC keys:
//   1. stage K and V ([BC][DP], f16, zero past Lk and past D) in workgroup memory;
//   2. each warp: S = Q_warp · Kᵀ (16 × BC) on the matrix units, through
//      workgroup memory to its lanes;
//   3. lanes, one row each: the online softmax in f32 and the log2 domain
//      (running max m, sum l), P = exp2(s − m) as f16, and the factor
//      exp2(m_old − m_new) by which the row's accumulator shrinks;
//   4. the accumulator O (16 × DP per warp, in fragments) is rescaled row by
//      row through workgroup memory (fragments have no per-element access),
//      then O += P · V on the matrix units.
// At the end each row of O is divided by its l and stored.
//
// The head dim D is padded to DP, a multiple of 16, with zeros (40 -> 48).
// Scores are scaled in f32 (scale_log2 = scale · log2 e), after the f16
// product: q is staged unscaled.
//
// Defines: T (storage type), CT (f16: operand type), D, DP, BR, BC, PAD, SG,
// COOP_HW.

#include "attention_params.wgsl"
@group(0) @binding(1) var<storage, read> qs: array<{{T}}>;
@group(0) @binding(2) var<storage, read> ks: array<{{T}}>;
@group(0) @binding(3) var<storage, read> vs: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> out: array<{{T}}>;

#include "coop.wgsl"

const D: u32 = {{D}}u;
const DP: u32 = {{DP}}u;
const BR: u32 = {{BR}}u;
const BC: u32 = {{BC}}u;
const PAD: u32 = {{PAD}}u;
const SG: u32 = {{SG}}u;
const WARPS: u32 = BR / 16u;
const WG: u32 = WARPS * SG;
// A masked score: far below any real one yet finite, so that differences
// never give NaN (as attention.wgsl).
const MASKED: f32 = -3.0e38;

// A operands: Q [BR][DP] then P [BR][BC]; B operands: K [BC][DP] then V [BC][DP].
const QS: u32 = DP + PAD;
const PS: u32 = BC + PAD;
const KS: u32 = DP + PAD;
const P_OFF: u32 = BR * QS;
const V_OFF: u32 = BC * KS;
var<workgroup> coop_tile_a: array<{{CT}}, BR * QS + BR * PS>;
var<workgroup> coop_tile_b: array<{{CT}}, 2u * BC * KS>;
// Per warp a scratch of 16 rows × SC (scores, or one fragment of O), then a
// zero fragment that is never written (where zero accumulators come from).
const SC: u32 = max(BC, 16u);
const ZERO_OFF: u32 = WARPS * 16u * SC;
var<workgroup> coop_tile_c: array<f32, WARPS * 16u * SC + 256u>;
// Per query row of the block: running max, running sum, this block's rescale.
var<workgroup> row_m: array<f32, BR>;
var<workgroup> row_l: array<f32, BR>;
var<workgroup> row_scale: array<f32, BR>;

// Keys a workgroup whose queries start at q0 must visit (none past its last
// query under the causal mask).
fn keys_to_visit(q0: u32) -> u32 {
    if (p.causal != 0u) {
        return min(p.lk, min(q0 + BR, p.lq));
    }
    return p.lk;
}

@compute @workgroup_size(WG)
fn attention_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32,
#if COOP_HW
                  @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32) {
    let warp = sg_id;
    let lane = sg_lane;
#else
                  ) {
    let warp = tid / SG;
    let lane = tid % SG;
#endif
    let b = wid.y / p.heads;
    let h = wid.y % p.heads;
    let q0 = wid.x * BR;
    let row_stride = p.heads * D;
    let head = h * D;
    let scratch = warp * 16u * SC;

    // Q (unscaled, zero past Lq and D), the zero fragment, the row state.
    for (var e = tid; e < BR * DP; e += WG) {
        let r = e / DP;
        let d = e % DP;
        let qi = q0 + r;
        var v = 0.0;
        if (qi < p.lq && d < D) { v = f32(qs[(b * p.lq + qi) * row_stride + head + d]); }
        coop_tile_a[r * QS + d] = {{CT}}(v);
    }
    for (var e = tid; e < 256u; e += WG) { coop_tile_c[ZERO_OFF + e] = 0.0; }
    for (var r = tid; r < BR; r += WG) {
        row_m[r] = MASKED;
        row_l[r] = 0.0;
    }
    workgroupBarrier();

    var o: array<CoopC, DP / 16u>;
    for (var j = 0u; j < DP / 16u; j++) { o[j] = coop_load_c_rm(ZERO_OFF, 16u, lane); }

    let kv_end = keys_to_visit(q0);
    let kv_base = b * p.lk * row_stride + head;
    for (var kt = 0u; kt < kv_end; kt += BC) {
        // 1. K and V of keys kt .. kt + BC.
        for (var e = tid; e < BC * DP; e += WG) {
            let key = kt + e / DP;
            let d = e % DP;
            var kv = vec2<f32>(0.0);
            if (key < p.lk && d < D) {
                let src = kv_base + key * row_stride + d;
                kv = vec2<f32>(f32(ks[src]), f32(vs[src]));
            }
            coop_tile_b[(e / DP) * KS + d] = {{CT}}(kv.x);
            coop_tile_b[V_OFF + (e / DP) * KS + d] = {{CT}}(kv.y);
        }
        workgroupBarrier();

        // 2. S = Q_warp · Kᵀ, one 16 × 16 block of keys at a time, to the scratch.
        for (var jn = 0u; jn < BC / 16u; jn++) {
            var s = coop_load_c_rm(ZERO_OFF, 16u, lane);
            for (var kk = 0u; kk < DP / 16u; kk++) {
                let qa = coop_load_a_rm(warp * 16u * QS + kk * 16u, QS, lane);
                // Kᵀ (d × key) is K read column-major.
                let kb = coop_load_b_cm(jn * 16u * KS + kk * 16u, KS, lane);
                s = coop_mma(qa, kb, s);
            }
            coop_store_c_rm(s, scratch + jn * 16u, SC, lane);
        }
        workgroupBarrier();

        // 3. The online softmax, one row per lane.
        for (var r = lane; r < 16u; r += SG) {
            let br = warp * 16u + r;
            let qi = q0 + br;
            let limit = select(p.lk, min(p.lk, qi + 1u), p.causal != 0u);
            var m_tile = MASKED;
            for (var j = 0u; j < BC; j++) {
                let sj = select(MASKED, coop_tile_c[scratch + r * SC + j] * p.scale_log2, kt + j < limit);
                m_tile = max(m_tile, sj);
            }
            let m_old = row_m[br];
            let m_new = max(m_old, m_tile);
            var sum = 0.0;
            for (var j = 0u; j < BC; j++) {
                let sj = select(MASKED, coop_tile_c[scratch + r * SC + j] * p.scale_log2, kt + j < limit);
                let pj = exp2(sj - m_new);
                sum += pj;
                coop_tile_a[P_OFF + br * PS + j] = {{CT}}(pj);
            }
            let shrink = exp2(m_old - m_new);
            row_scale[br] = shrink;
            row_l[br] = row_l[br] * shrink + sum;
            row_m[br] = m_new;
        }
        workgroupBarrier();

        // 4. O = diag(shrink) · O + P · V, fragment by fragment.
        for (var j = 0u; j < DP / 16u; j++) {
            coop_store_c_rm(o[j], scratch, 16u, lane);
            workgroupBarrier();
            for (var e = lane; e < 256u; e += SG) {
                coop_tile_c[scratch + e] *= row_scale[warp * 16u + e / 16u];
            }
            workgroupBarrier();
            var acc = coop_load_c_rm(scratch, 16u, lane);
            for (var kk = 0u; kk < BC / 16u; kk++) {
                let pa = coop_load_a_rm(P_OFF + warp * 16u * PS + kk * 16u, PS, lane);
                let vb = coop_load_b_rm(V_OFF + kk * 16u * KS + j * 16u, KS, lane);
                acc = coop_mma(pa, vb, acc);
            }
            o[j] = acc;
            workgroupBarrier();
        }
    }

    // O / l, row by row, through the scratch.
    for (var j = 0u; j < DP / 16u; j++) {
        coop_store_c_rm(o[j], scratch, 16u, lane);
        workgroupBarrier();
        for (var e = lane; e < 256u; e += SG) {
            let br = warp * 16u + e / 16u;
            let qi = q0 + br;
            let d = j * 16u + e % 16u;
            if (qi < p.lq && d < D) {
                out[(b * p.lq + qi) * row_stride + head + d] = {{T}}(coop_tile_c[scratch + e] / row_l[br]);
            }
        }
        workgroupBarrier();
    }
}
