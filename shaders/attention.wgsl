// Fused multi-head attention with an online softmax (flash-attention style):
// out = softmax(scale · q kᵀ [+ causal mask]) v per head, without ever storing
// the Lq × Lk score matrix.
//
// Layout, as linear projections produce it (vec4 units; D is a multiple of 8):
//   q [B, Lq, H·D], k and v [B, Lk, H·D], out [B, Lq, H·D]
// Workgroup (x, y) = (query tile, batch·head). The workgroup walks the keys in
// tiles of BK: it stages the K and V tile in workgroup memory (f32), then each
// invocation scores its queries against the keys, folds them into its running
// max m and sum l (rescaling its accumulator once per tile, or per 8 keys in
// the quad kernel, not once per key) and accumulates p·v. q and the output
// accumulator stay in private registers. Scores are in the log2 domain (q is pre-multiplied by
// scale·log2(e)), so the softmax uses exp2.
//
// Two entry points:
// - `attention_one`: one query per invocation, every invocation reads the
//   staged K/V values straight from workgroup memory (a broadcast read on GPUs).
// - `attention_quad`: four queries per invocation, for CPU drivers (lavapipe),
//   where every load inside a loop costs a loop over the SIMD lanes: each
//   loaded vec4 then serves four queries. With SUBGROUP_BCAST, lane l of each
//   subgroup loads a chunk of key l of eight and subgroupBroadcast hands the
//   eight chunks to every lane, so a chunk is loaded once per subgroup instead
//   of once per lane. Needs full subgroups of at least 8 lanes (the host checks).
//
// Defines: T (storage type), D (head dim), WG (invocations per workgroup),
// BK (keys per tile), ONE / QUAD (entry point), SUBGROUP_BCAST (0/1: read the
// tiles through subgroup broadcasts).

#include "attention_params.wgsl"
@group(0) @binding(1) var<storage, read> qs: array<vec4<{{T}}>>;
@group(0) @binding(2) var<storage, read> ks: array<vec4<{{T}}>>;
@group(0) @binding(3) var<storage, read> vs: array<vec4<{{T}}>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<{{T}}>>;

const D: u32 = {{D}}u;
const D4: u32 = D / 4u;   // vec4 chunks per head row
const WG: u32 = {{WG}}u;
const BK: u32 = {{BK}}u;
// Scores of masked keys: far below any real score, yet finite so that
// differences never produce NaN; exp2(MASKED - a real max) is 0. Key 0 is
// visible to every query, so the running max is a real score after tile 0.
const MASKED: f32 = -3.0e38;

var<workgroup> k_tile: array<vec4<f32>, BK * D4>;
var<workgroup> v_tile: array<vec4<f32>, BK * D4>;

// Stages keys kt .. kt+BK of one head into k_tile / v_tile ([BK, D4] vec4s),
// zeros past Lk (a zero key scores 0 and is masked; a zero value keeps the
// sums finite).
fn load_kv_tile(kv_base: u32, row_stride: u32, kt: u32, lid: u32) {
    for (var e = lid; e < BK * D4; e += WG) {
        let key = kt + e / D4;
        let src = kv_base + min(key, p.lk - 1u) * row_stride + e % D4;
        let inside = key < p.lk;
        k_tile[e] = select(vec4<f32>(0.0), vec4<f32>(ks[src]), inside);
        v_tile[e] = select(vec4<f32>(0.0), vec4<f32>(vs[src]), inside);
    }
}

// Keys a workgroup whose queries start at q0 must visit: all of them, or with
// the causal mask none past its last query.
fn keys_to_visit(q0: u32, queries_per_workgroup: u32) -> u32 {
    if (p.causal != 0u) {
        return min(p.lk, min(q0 + queries_per_workgroup, p.lq));
    }
    return p.lk;
}

// Keys j < key_limit(i) are visible to query i.
fn key_limit(qi: u32) -> u32 {
    return select(p.lk, min(p.lk, qi + 1u), p.causal != 0u);
}

#if ONE
@compute @workgroup_size({{WG}})
fn attention_one(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y / p.heads;
    let h = wid.y % p.heads;
    let q0 = wid.x * WG;
    let qi = q0 + lid;
    let row_stride = p.heads * D4;
    // Invocations past the last query compute a copy of it and store nothing:
    // every invocation must reach the barriers.
    let q_base = (b * p.lq + min(qi, p.lq - 1u)) * row_stride + h * D4;
    var q: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        q[c] = vec4<f32>(qs[q_base + c]) * p.scale_log2;
    }
    var o: array<vec4<f32>, D4>;
    var m = MASKED;
    var l = 0.0;
    let limit = key_limit(qi);
    let kv_end = keys_to_visit(q0, WG);
    let kv_base = b * p.lk * row_stride + h * D4;

    for (var kt = 0u; kt < kv_end; kt += BK) {
        workgroupBarrier();
        load_kv_tile(kv_base, row_stride, kt, lid);
        workgroupBarrier();

        var s: array<f32, BK>;
        var m_tile = MASKED;
        for (var j = 0u; j < BK; j++) {
            var acc = 0.0;
            for (var c = 0u; c < D4; c++) {
                acc += dot(q[c], k_tile[j * D4 + c]);
            }
            s[j] = select(MASKED, acc, kt + j < limit);
            m_tile = max(m_tile, s[j]);
        }
        let m_new = max(m, m_tile);
        let correction = exp2(m - m_new);
        l *= correction;
        for (var c = 0u; c < D4; c++) {
            o[c] *= correction;
        }
        for (var j = 0u; j < BK; j++) {
            let pj = exp2(s[j] - m_new);
            l += pj;
            for (var c = 0u; c < D4; c++) {
                o[c] += pj * v_tile[j * D4 + c];
            }
        }
        m = m_new;
    }

    if (qi < p.lq) {
        let inv_l = 1.0 / l;
        for (var c = 0u; c < D4; c++) {
            out[q_base + c] = vec4<{{T}}>(o[c] * inv_l);
        }
    }
}
#endif

#if QUAD
// Four queries per invocation; private values are vec4s over the four
// queries. Head dims come in G groups of 8: qg[g][h] is a mat4x4 whose column
// i holds the four queries' (scaled) values at dim 8g + 4h + i, so
// qg[g][h] * k_chunk adds one vec4 chunk of a key to the four scores. og holds
// the output accumulators the same way.
//
// Keys are taken eight at a time (BK is a multiple of 8): scores of 8 keys,
// then one online-softmax step, then their p·v. The loops over head-dim groups
// index qg/og by the loop variable over exactly their length, which Mesa's NIR
// unrolls (up to 32 iterations) so that the arrays become registers; the
// eight keys are spelled out because NIR leaves such inner loops rolled, and a
// private array indexed by a variable costs a per-lane loop on llvmpipe. With
// SUBGROUP_BCAST, lane l of a subgroup loads chunk c of key l of the eight and
// subgroupBroadcast hands each key's chunk to every lane.
const G: u32 = D / 8u;

// Chunk c of keys jb .. jb+8 of the K (or V) tile.
#if SUBGROUP_BCAST
fn broadcast8(mine: vec4<f32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(
        subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u), subgroupBroadcast(mine, 2u), subgroupBroadcast(mine, 3u),
        subgroupBroadcast(mine, 4u), subgroupBroadcast(mine, 5u), subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u));
}
fn eight_keys_k(jb: u32, c: u32, lane8: u32) -> array<vec4<f32>, 8> {
    return broadcast8(k_tile[(jb + lane8) * D4 + c]);
}
fn eight_keys_v(jb: u32, c: u32, lane8: u32) -> array<vec4<f32>, 8> {
    return broadcast8(v_tile[(jb + lane8) * D4 + c]);
}
#else
fn eight_keys_k(jb: u32, c: u32, lane8: u32) -> array<vec4<f32>, 8> {
    let i = jb * D4 + c;
    return array<vec4<f32>, 8>(k_tile[i], k_tile[i + D4], k_tile[i + 2u * D4], k_tile[i + 3u * D4],
                               k_tile[i + 4u * D4], k_tile[i + 5u * D4], k_tile[i + 6u * D4], k_tile[i + 7u * D4]);
}
fn eight_keys_v(jb: u32, c: u32, lane8: u32) -> array<vec4<f32>, 8> {
    let i = jb * D4 + c;
    return array<vec4<f32>, 8>(v_tile[i], v_tile[i + D4], v_tile[i + 2u * D4], v_tile[i + 3u * D4],
                               v_tile[i + 4u * D4], v_tile[i + 5u * D4], v_tile[i + 6u * D4], v_tile[i + 7u * D4]);
}
#endif

// p ⊗ v: column i is p · v[i] (one key's value chunk weighted for four queries).
fn outer(p: vec4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(p * v.x, p * v.y, p * v.z, p * v.w);
}

// Each query's accumulator (a row) scaled by its softmax correction.
fn rescaled(o: mat4x4<f32>, c: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(o[0] * c, o[1] * c, o[2] * c, o[3] * c);
}

// The four rows' chunks as the columns of a matrix over the four queries.
fn transpose_rows(r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(r0, r1, r2, r3));
}

@compute @workgroup_size({{WG}})
fn attention_quad(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32,
#if SUBGROUP_BCAST
                  @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
#if SUBGROUP_BCAST
    let lane8 = sg_lane % 8u;
#else
    let lane8 = 0u;
#endif
    let b = wid.y / p.heads;
    let h = wid.y % p.heads;
    let q0 = wid.x * 4u * WG;
    let qi = q0 + 4u * lid + vec4<u32>(0u, 1u, 2u, 3u);
    let row_stride = p.heads * D4;
    // Rows past the last query compute a copy of it and store nothing.
    let rows = (b * p.lq + min(qi, vec4<u32>(p.lq - 1u))) * row_stride + h * D4;
    var qg: array<array<mat4x4<f32>, 2>, G>;
    for (var g = 0u; g < G; g++) {
        for (var half = 0u; half < 2u; half++) {
            let c = 2u * g + half;
            qg[g][half] = p.scale_log2 * transpose_rows(vec4<f32>(qs[rows.x + c]), vec4<f32>(qs[rows.y + c]),
                                                        vec4<f32>(qs[rows.z + c]), vec4<f32>(qs[rows.w + c]));
        }
    }
    var og: array<array<mat4x4<f32>, 2>, G>;
    var m = vec4<f32>(MASKED);
    var l = vec4<f32>(0.0);
    let limit = vec4<u32>(key_limit(qi.x), key_limit(qi.y), key_limit(qi.z), key_limit(qi.w));
    let kv_end = keys_to_visit(q0, 4u * WG);
    let kv_base = b * p.lk * row_stride + h * D4;

    for (var kt = 0u; kt < kv_end; kt += BK) {
        workgroupBarrier();
        load_kv_tile(kv_base, row_stride, kt, lid);
        workgroupBarrier();

        for (var jb = 0u; jb < min(BK, kv_end - kt); jb += 8u) {
            // Scores of the four queries against keys jb .. jb+8.
            var s: array<vec4<f32>, 8>;
            for (var g = 0u; g < G; g++) {
                let k_lo = eight_keys_k(jb, 2u * g, lane8);
                let k_hi = eight_keys_k(jb, 2u * g + 1u, lane8);
                s[0] += qg[g][0] * k_lo[0] + qg[g][1] * k_hi[0];
                s[1] += qg[g][0] * k_lo[1] + qg[g][1] * k_hi[1];
                s[2] += qg[g][0] * k_lo[2] + qg[g][1] * k_hi[2];
                s[3] += qg[g][0] * k_lo[3] + qg[g][1] * k_hi[3];
                s[4] += qg[g][0] * k_lo[4] + qg[g][1] * k_hi[4];
                s[5] += qg[g][0] * k_lo[5] + qg[g][1] * k_hi[5];
                s[6] += qg[g][0] * k_lo[6] + qg[g][1] * k_hi[6];
                s[7] += qg[g][0] * k_lo[7] + qg[g][1] * k_hi[7];
            }
            let key = kt + jb;
            s[0] = select(vec4<f32>(MASKED), s[0], vec4<u32>(key) < limit);
            s[1] = select(vec4<f32>(MASKED), s[1], vec4<u32>(key + 1u) < limit);
            s[2] = select(vec4<f32>(MASKED), s[2], vec4<u32>(key + 2u) < limit);
            s[3] = select(vec4<f32>(MASKED), s[3], vec4<u32>(key + 3u) < limit);
            s[4] = select(vec4<f32>(MASKED), s[4], vec4<u32>(key + 4u) < limit);
            s[5] = select(vec4<f32>(MASKED), s[5], vec4<u32>(key + 5u) < limit);
            s[6] = select(vec4<f32>(MASKED), s[6], vec4<u32>(key + 6u) < limit);
            s[7] = select(vec4<f32>(MASKED), s[7], vec4<u32>(key + 7u) < limit);
            let m_new = max(m, max(max(max(s[0], s[1]), max(s[2], s[3])), max(max(s[4], s[5]), max(s[6], s[7]))));
            let correction = exp2(m - m_new);
            // Softmax numerators of the eight keys.
            let p0 = exp2(s[0] - m_new);
            let p1 = exp2(s[1] - m_new);
            let p2 = exp2(s[2] - m_new);
            let p3 = exp2(s[3] - m_new);
            let p4 = exp2(s[4] - m_new);
            let p5 = exp2(s[5] - m_new);
            let p6 = exp2(s[6] - m_new);
            let p7 = exp2(s[7] - m_new);
            l = l * correction + ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7));
            for (var g = 0u; g < G; g++) {
                let v_lo = eight_keys_v(jb, 2u * g, lane8);
                let v_hi = eight_keys_v(jb, 2u * g + 1u, lane8);
                og[g][0] = rescaled(og[g][0], correction)
                    + outer(p0, v_lo[0]) + outer(p1, v_lo[1]) + outer(p2, v_lo[2]) + outer(p3, v_lo[3])
                    + outer(p4, v_lo[4]) + outer(p5, v_lo[5]) + outer(p6, v_lo[6]) + outer(p7, v_lo[7]);
                og[g][1] = rescaled(og[g][1], correction)
                    + outer(p0, v_hi[0]) + outer(p1, v_hi[1]) + outer(p2, v_hi[2]) + outer(p3, v_hi[3])
                    + outer(p4, v_hi[4]) + outer(p5, v_hi[5]) + outer(p6, v_hi[6]) + outer(p7, v_hi[7]);
            }
            m = m_new;
        }
    }

    let inv_l = 1.0 / l;
    for (var g = 0u; g < G; g++) {
        for (var half = 0u; half < 2u; half++) {
            let c = 2u * g + half;
            // Rows of the transposed accumulator are the four queries' chunks.
            let t = transpose(og[g][half]);
            if (qi.x < p.lq) { out[rows.x + c] = vec4<{{T}}>(t[0] * inv_l.x); }
            if (qi.y < p.lq) { out[rows.y + c] = vec4<{{T}}>(t[1] * inv_l.y); }
            if (qi.z < p.lq) { out[rows.z + c] = vec4<{{T}}>(t[2] * inv_l.z); }
            if (qi.w < p.lq) { out[rows.w + c] = vec4<{{T}}>(t[3] * inv_l.w); }
        }
    }
}
#endif
