// Multiresolution hash-grid encoding (instant-ngp / tiny-cuda-nn) and the
// field fused on top of it (grid -> density and albedo MLP heads).
//
// Grid: level l has a grid of `resolution` vertices per axis over [0,1]^3 with
// `scale = base·s^l − 1` (s = per-level scale); a point u maps to u·scale + 0.5,
// the 8 vertices of its cell are looked up and blended trilinearly. A level
// whose resolution³ fits the table is indexed densely (x + y·res + z·res²), a
// finer one by the spatial hash x·1 ^ y·2654435761 ^ z·805459861; either index
// is taken modulo the level's size, as tcnn does. Table entry e, feature f is
// table[e·FEATS + f]; the per-level entry offsets, sizes and resolutions come
// from the host (ops/hashgrid.rs, GridLayout). Points outside [0,1]³ are
// clamped onto it.
//
// The backward passes scatter-add into the gradient table in fixed point,
// so that the sums do not depend on the order the atomics land in (float
// additions do: two runs would differ in their last bits, and Adam turns
// those into whole steps). Each table gradient is a 64-bit two's-complement
// integer in units of 2^-40, held as two u32 words (grad_lo, grad_hi):
// integer addition is associative, and the carry out of the low word's
// atomicAdd is added to the high word, so the 64-bit sum is exact in any
// order. resolve_fixed then adds the sums to the f32 gradient and clears the
// words. Range: |sum| < 2^23 per entry; each contribution is rounded to the
// nearest 2^-40 (~9e-13); non-finite ones are zeroed before (distill_grad). Zero
// contributions are skipped (most rows of a render have no gradient).
//
// Field (world box [-radius, radius]³, features x = grid((pos + r)/(2r))):
//   density σ = softplus(W2d·relu(W1d·x) + blob_scale·(1 − |pos|/blob_std))
//   albedo  a = sigmoid(W2a·relu(W1a·x))
// mlp weights are row-major [out][in] as torch.nn.Linear, without biases
// (threestudio's VanillaMLP / tcnn), packed
//   [W1d (H×IN) | W2d (1×H) | W1a (H×IN) | W2a (3×H)].
// A point p gives K rows: row 0 at p, and with K = 7 (finite-difference
// normals) rows 1..6 at p + eps·e_x, p − eps·e_x, p ± eps·e_y, p ± eps·e_z,
// clamped to the box (threestudio's finite_difference normals). density is
// [n, K]; albedo is [n, 3], for row 0 only, when ALBEDO.
//
// ANALYTIC normals (threestudio's `analytic`): one row per point, and K = 4
// values: σ and its gradient ∇σ = σ'(z)·∂z/∂pos, carried forward from the
// trilinear weights' derivatives (J_i = ∂x_i/∂u per feature) through the
// density head: ∂z/∂x_i = r_i = Σ_j W2d[j]·[pre_j > 0]·W1d[j, i], so
// ∂z/∂pos = Σ_i r_i·J_i / (2·radius) + ∇blob. One gather of the 8 corners per
// level instead of seven. The backward of the gradient (given dL/d∇σ = dg):
//   dL/dz    += σ''(z)·(dg · ∂z/∂pos)                   (σ'' = s(1 − s), s = sigmoid(z))
//   q         = σ'(z)·dg / (2·radius)                    (dL/d(Σ r_i J_i))
//   c_i       = J_i · q                                  (dL/dr_i)
//   dW1d[j,:] += [pre_j > 0]·W2d[j]·c,  dW2d[j] += [pre_j > 0]·(W1d[j,:]·c)
//   dtable[corner, i] += r_i·(q · ∂w_corner/∂u)
// (the ReLU masks and the trilinear weights are piecewise linear: their
// second derivatives vanish almost everywhere, as in torch's double backward).
//
// field_backward takes dL/dσ per row and dL/da per point, recomputes the
// row's features and hidden layers, scatters dL/dx into the grid gradient
// and reduces the weight gradients over the workgroup's rows: each thread
// then owns hidden unit j = its index mod HIDDEN (HIDDEN ≤ 64 = WG) and
// accumulates row j of dW1 and column j of dW2 from the tile's (x, dz) held
// in workgroup memory (recomputing its own pre-activation is cheaper than
// storing all of them), over every (WG / HIDDEN)-th row of the tile.
// Every (workgroup, part) writes its sums to partials[workgroup·parts + part, P]
// (P = mlp size); mlp.wgsl's reduce_partials adds them up (deterministically).
// The kernels stride over rows (a fixed number of workgroups), so that a
// sample count only the device knows (SAMPLES) needs no readback.
//
// Defines: LEVELS, FEATS, HIDDEN (a literal such as `16u`, or `p.levels`,
// `p.feats`, `p.hidden` for the generic variant), SAMPLES (points
// are the renderer's samples [capacity, 4] (xyz, t) and their count is info[0],
// instead of a [n, 3] tensor and p.n), ALBEDO, SUBGROUP (field_backward adds
// into the grid gradient through subgroup sums: the GPU variant, see
// scatter_add_subgroup), MAX_IN and MAX_HIDDEN (array
// sizes), and one entry flag: ENCODE, ENCODE_BACKWARD, FIELD_FORWARD,
// FIELD_BACKWARD, RESOLVE_FIXED.

const WG: u32 = 64u;
// Private and workgroup array sizes: exactly LEVELS·FEATS and HIDDEN in a
// specialised variant (so that a driver can keep them in registers once the
// constant-count loops over them unroll), 64 in the generic one.
const MAX_IN: u32 = {{MAX_IN}};       // levels × features per level
const MAX_HIDDEN: u32 = {{MAX_HIDDEN}};   // ≤ WG: one reduction thread per hidden unit
const PRIME_Y: u32 = 2654435761u;
const PRIME_Z: u32 = 805459861u;

struct Params {
    n: u32,            // points, or the sample capacity with SAMPLES
    levels: u32,
    feats: u32,
    hidden: u32,
    k: u32,            // rows per point: 1, or 7 with normals
    radius: f32,       // field: half-size of the world box
    normal_eps: f32,   // field: finite-difference offset (world units)
    blob_scale: f32,   // field: density bias scale
    blob_std: f32,     // field: density bias radius
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    level_info: array<vec4<u32>, 16>,  // per level: resolution, offset (entries), size (entries), dense
    level_scale: array<vec4<f32>, 4>,  // per level: scale
}

@group(0) @binding(0) var<uniform> p: Params;

fn n_levels() -> u32 { return {{LEVELS}}; }
fn n_feats() -> u32 { return {{FEATS}}; }
fn n_in() -> u32 { return {{LEVELS}} * {{FEATS}}; }
fn n_hidden() -> u32 { return {{HIDDEN}}; }
fn n_in4() -> u32 { return (n_in() + 3u) / 4u; }

fn thread_id(wid: vec3<u32>, lid: u32, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// ---------------------------------------------------------------------------
// Bindings of each entry.

#if ENCODE
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> points: array<f32>;            // [n, 3] in [0,1]^3
@group(0) @binding(3) var<storage, read_write> features: array<f32>;    // [n, LEVELS·FEATS]
#endif

#if ENCODE_BACKWARD
@group(0) @binding(1) var<storage, read_write> grad_lo: array<atomic<u32>>;  // fixed-point sums, low words
@group(0) @binding(2) var<storage, read> points: array<f32>;            // [n, 3]
@group(0) @binding(3) var<storage, read> d_features: array<f32>;        // [n, LEVELS·FEATS]
@group(0) @binding(4) var<storage, read_write> grad_hi: array<atomic<u32>>;  // and high words
#endif

#if FIELD_FORWARD
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> mlp: array<f32>;
#if SAMPLES
@group(0) @binding(3) var<storage, read> samples: array<vec4<f32>>;     // [capacity] (xyz, t)
#else
@group(0) @binding(3) var<storage, read> points: array<f32>;            // [n, 3] world
#endif
@group(0) @binding(4) var<storage, read_write> density_out: array<f32>; // [n, K]
@group(0) @binding(5) var<storage, read_write> albedo_out: array<f32>;  // [n, 3]
#if SAMPLES
@group(0) @binding(6) var<storage, read> info: array<u32>;              // [0] = sample count
#endif
#endif

#if FIELD_BACKWARD
@group(0) @binding(1) var<storage, read_write> grad_lo: array<atomic<u32>>;  // fixed-point sums, low words
@group(0) @binding(2) var<storage, read> mlp: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
#if SAMPLES
@group(0) @binding(4) var<storage, read> samples: array<vec4<f32>>;
#else
@group(0) @binding(4) var<storage, read> points: array<f32>;
#endif
@group(0) @binding(5) var<storage, read> d_density: array<f32>;         // [n, K]
@group(0) @binding(6) var<storage, read> d_albedo: array<f32>;          // [n, 3]
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;    // [workgroups · parts, P]
#if SAMPLES
@group(0) @binding(8) var<storage, read> info: array<u32>;
@group(0) @binding(9) var<storage, read_write> grad_hi: array<atomic<u32>>;  // and high words
#else
@group(0) @binding(8) var<storage, read_write> grad_hi: array<atomic<u32>>;  // and high words
#endif
#endif

#if RESOLVE_FIXED
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;        // [n]: += the sums
@group(0) @binding(2) var<storage, read_write> sum_lo: array<u32>;      // [n], cleared
@group(0) @binding(3) var<storage, read_write> sum_hi: array<u32>;      // [n], cleared
#endif

// ---------------------------------------------------------------------------
// The grid.

// The 8 vertices of the cell containing u at level l: table entries and
// trilinear weights (vertex c has offset (c & 1, c >> 1 & 1, c >> 2 & 1)).
struct Cell {
    entry: array<u32, 8>,
    weight: array<f32, 8>,
}

fn level_cell(u: vec3<f32>, l: u32) -> Cell {
    let info = p.level_info[l];
    let pos = clamp(u, vec3<f32>(0.0), vec3<f32>(1.0)) * p.level_scale[l / 4u][l % 4u] + 0.5;
    let g = floor(pos);
    let f = pos - g;
    let gi = vec3<u32>(g);
    var cell: Cell;
    for (var c = 0u; c < 8u; c++) {
        let bit = vec3<u32>(c & 1u, (c >> 1u) & 1u, (c >> 2u) & 1u);
        let v = gi + bit;
        let w3 = select(1.0 - f, f, bit == vec3<u32>(1u));
        cell.weight[c] = w3.x * w3.y * w3.z;
        var index: u32;
        if (info.w != 0u) {
            index = v.x + v.y * info.x + v.z * info.x * info.x;
        } else {
            index = v.x ^ (v.y * PRIME_Y) ^ (v.z * PRIME_Z);
        }
        cell.entry[c] = info.y + index % info.z;
    }
    return cell;
}

#if ANALYTIC
// ∂weight_c/∂u of the 8 vertices of level_cell(u, l): zero along an axis where
// u is outside [0,1] (clamped there; inclusive at the ends, as torch's clamp).
fn cell_weight_gradients(u: vec3<f32>, l: u32) -> array<vec3<f32>, 8> {
    let scale = p.level_scale[l / 4u][l % 4u];
    let inside = (u >= vec3<f32>(0.0)) & (u <= vec3<f32>(1.0));
    let dpos = select(vec3<f32>(0.0), vec3<f32>(scale), inside);
    let pos = clamp(u, vec3<f32>(0.0), vec3<f32>(1.0)) * scale + 0.5;
    let f = pos - floor(pos);
    var out: array<vec3<f32>, 8>;
    for (var c = 0u; c < 8u; c++) {
        let bit = vec3<u32>(c & 1u, (c >> 1u) & 1u, (c >> 2u) & 1u) == vec3<u32>(1u);
        let w3 = select(1.0 - f, f, bit);
        let d3 = select(-dpos, dpos, bit);
        out[c] = vec3<f32>(d3.x * w3.y * w3.z, w3.x * d3.y * w3.z, w3.x * w3.y * d3.z);
    }
    return out;
}
#endif

#if !ENCODE_BACKWARD
#if !RESOLVE_FIXED
// x[l·F + f] = Σ_c w_c · table[entry_c·F + f], for every level l.
fn grid_features(u: vec3<f32>, x: ptr<function, array<f32, MAX_IN>>) {
    let nf = n_feats();
    for (var l = 0u; l < n_levels(); l++) {
        let cell = level_cell(u, l);
        for (var f = 0u; f < nf; f++) {
            var s = 0.0;
            for (var c = 0u; c < 8u; c++) {
                s += cell.weight[c] * table[cell.entry[c] * nf + f];
            }
            (*x)[l * nf + f] = s;
        }
    }
}

#if ANALYTIC
// grid_features and their Jacobian jac[i] = ∂x_i/∂u.
fn grid_features_jacobian(u: vec3<f32>, x: ptr<function, array<f32, MAX_IN>>, jac: ptr<function, array<vec3<f32>, MAX_IN>>) {
    let nf = n_feats();
    for (var l = 0u; l < n_levels(); l++) {
        let cell = level_cell(u, l);
        let dw = cell_weight_gradients(u, l);
        for (var f = 0u; f < nf; f++) {
            var s = 0.0;
            var sj = vec3<f32>(0.0);
            for (var c = 0u; c < 8u; c++) {
                let t = table[cell.entry[c] * nf + f];
                s += cell.weight[c] * t;
                sj += dw[c] * t;
            }
            (*x)[l * nf + f] = s;
            (*jac)[l * nf + f] = sj;
        }
    }
}
#endif
#endif
#endif

#if !ENCODE
#if !FIELD_FORWARD
#if !RESOLVE_FIXED
// v in fixed point: round(v · 2^40) as a 64-bit two's-complement integer,
// (low word, high word).
fn fixed_words(v: f32) -> vec2<u32> {
    // |v|·2^8 = m_hi + m_lo·2^-32: the integer part and the fraction of a
    // non-negative f32 are exact, and the fraction·2^32 is rounded to the
    // nearest integer (below 2^32: a fraction under 1 is at most 1 − 2^-24).
    // Then the sign, in two's complement. The same v always gives the same
    // words. Clamped to the range.
    let m = min(abs(v) * 256.0, 1073741824.0);
    let m_hi = floor(m);
    var lo = u32(round((m - m_hi) * 4294967296.0));
    var hi = u32(m_hi);
    if (v < 0.0) {
        lo = ~lo + 1u;
        hi = ~hi + select(0u, 1u, lo == 0u);
    }
    return vec2<u32>(lo, hi);
}

// (grad_hi, grad_lo)[i] += w, atomically and exactly: the carry out of the
// low word goes to the high word.
fn add_words(i: u32, w: vec2<u32>) {
    let old = atomicAdd(&grad_lo[i], w.x);
    let carry = select(0u, 1u, old + w.x < old);
    atomicAdd(&grad_hi[i], w.y + carry);
}

// (grad_hi, grad_lo)[i] += round(v · 2^40), atomically and exactly.
fn scatter_add(i: u32, v: f32) {
    add_words(i, fixed_words(v));
}

#if SUBGROUP
// The exact 64-bit sum of the words of the lanes where `mine` (subgroup-
// uniform control flow): the low word in two 16-bit halves (sums below 2^23
// for up to 128 lanes), the high word modulo 2^32, then recombined with the
// carries. Integer sums: the same total as the lanes' own atomics, so the
// gradient keeps its bits whichever path adds it.
fn subgroup_words_sum(w: vec2<u32>, mine: bool) -> vec2<u32> {
    let a = subgroupAdd(select(0u, w.x & 0xFFFFu, mine));
    let b = subgroupAdd(select(0u, w.x >> 16u, mine));
    let c = subgroupAdd(select(0u, w.y, mine));
    let t = b << 16u;
    let lo = a + t;
    return vec2<u32>(lo, c + (b >> 16u) + select(0u, 1u, lo < t));
}

// scatter_add for a whole subgroup at once (called in subgroup-uniform
// control flow, v = 0 where a lane has nothing to add): the lanes that share
// the subgroup's largest entry, then those sharing the smallest of the rest,
// are summed in registers and added by one atomic pair each; the other lanes
// add their own. Neighbouring samples of a ray fall in the same cell of the
// coarse levels, whose entries would otherwise take 32 atomics in a row.
fn scatter_add_subgroup(i: u32, v: f32) {
    let w = fixed_words(v);
    let live = v != 0.0;
    let key = select(0u, i + 1u, live);
    let top = subgroupMax(key);
    let in_top = live && key == top;
    let sum_top = subgroup_words_sum(w, in_top);
    let rest = live && !in_top;
    let low = subgroupMin(select(0xFFFFFFFFu, key, rest));
    let in_low = rest && key == low;
    let sum_low = subgroup_words_sum(w, in_low);
    // The first lane adds the sums (an exclusive prefix count of 0).
    if (subgroupExclusiveAdd(1u) == 0u) {
        if (top != 0u) { add_words(top - 1u, sum_top); }
        if (low != 0xFFFFFFFFu) { add_words(low - 1u, sum_low); }
    }
    if (rest && !in_low) { add_words(i, w); }
}

// What a lane adds to entry i, through its subgroup.
fn scatter_grid(i: u32, v: f32) {
    scatter_add_subgroup(i, v);
}
#else
fn scatter_grid(i: u32, v: f32) {
    if (v != 0.0) { scatter_add(i, v); }
}
#endif

// Whether a level has anything to scatter: per lane, or (SUBGROUP) for any
// lane of the subgroup, so that the subgroup stays together.
fn level_has_grad(mine: bool) -> bool {
#if SUBGROUP
    return subgroupAny(mine);
#else
    return mine;
#endif
}

// The transpose of grid_features: grad[entry_c·F + f] += w_c · dx[l·F + f].
fn grid_scatter(u: vec3<f32>, dx: ptr<function, array<f32, MAX_IN>>) {
    let nf = n_feats();
    for (var l = 0u; l < n_levels(); l++) {
        var any_grad = false;
        for (var f = 0u; f < nf; f++) { any_grad = any_grad || (*dx)[l * nf + f] != 0.0; }
        if (!level_has_grad(any_grad)) { continue; }
        let cell = level_cell(u, l);
        for (var c = 0u; c < 8u; c++) {
            for (var f = 0u; f < nf; f++) {
                scatter_grid(cell.entry[c] * nf + f, cell.weight[c] * (*dx)[l * nf + f]);
            }
        }
    }
}

#if ANALYTIC
// grid_scatter plus the normals' term: grad[entry_c·F + f] += w_c·dx[i] +
// r[i]·(q · ∂w_c/∂u), i = l·F + f.
fn grid_scatter_analytic(u: vec3<f32>, dx: ptr<function, array<f32, MAX_IN>>, r: ptr<function, array<f32, MAX_IN>>, q: vec3<f32>) {
    let nf = n_feats();
    let has_q = any(q != vec3<f32>(0.0));
    for (var l = 0u; l < n_levels(); l++) {
        var any_grad = false;
        for (var f = 0u; f < nf; f++) {
            any_grad = any_grad || (*dx)[l * nf + f] != 0.0 || (has_q && (*r)[l * nf + f] != 0.0);
        }
        if (!level_has_grad(any_grad)) { continue; }
        let cell = level_cell(u, l);
        let dw = cell_weight_gradients(u, l);
        for (var c = 0u; c < 8u; c++) {
            let wq = dot(q, dw[c]);
            for (var f = 0u; f < nf; f++) {
                let i = l * nf + f;
                scatter_grid(cell.entry[c] * nf + f, cell.weight[c] * (*dx)[i] + (*r)[i] * wq);
            }
        }
    }
}
#endif
#endif
#endif
#endif

// ---------------------------------------------------------------------------
// Standalone encoding: points [n, 3] in [0,1]^3 -> features [n, LEVELS·FEATS].

#if ENCODE
@compute @workgroup_size(WG)
fn encode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let u = vec3<f32>(points[3u * i], points[3u * i + 1u], points[3u * i + 2u]);
    var x: array<f32, MAX_IN>;
    grid_features(u, &x);
    let nin = n_in();
    for (var d = 0u; d < nin; d++) { features[i * nin + d] = x[d]; }
}
#endif

#if RESOLVE_FIXED
// grad[i] += (sum_hi, sum_lo)[i] · 2^-40; the words cleared for the next pass.
@compute @workgroup_size(WG)
fn resolve_fixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    var lo = sum_lo[i];
    var hi = sum_hi[i];
    if (lo == 0u && hi == 0u) { return; }
    // Convert the magnitude (so that no f32 sum cancels) and put the sign back.
    let negative = bitcast<i32>(hi) < 0;
    if (negative) {
        lo = ~lo + 1u;
        hi = ~hi + select(0u, 1u, lo == 0u);
    }
    let magnitude = (f32(hi) * 4294967296.0 + f32(lo)) * 9.094947017729282e-13;  // 2^-40
    grad[i] += select(magnitude, -magnitude, negative);
    sum_lo[i] = 0u;
    sum_hi[i] = 0u;
}
#endif

#if ENCODE_BACKWARD

@compute @workgroup_size(WG)
fn encode_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let u = vec3<f32>(points[3u * i], points[3u * i + 1u], points[3u * i + 2u]);
    var dx: array<f32, MAX_IN>;
    let nin = n_in();
    for (var d = 0u; d < nin; d++) { dx[d] = d_features[i * nin + d]; }
    grid_scatter(u, &dx);
}
#endif

// ---------------------------------------------------------------------------
// The field.

#if !ENCODE
#if !ENCODE_BACKWARD
#if !RESOLVE_FIXED
// Offsets of the four weight matrices in `mlp`.
fn w1d_at() -> u32 { return 0u; }
fn w2d_at() -> u32 { return n_hidden() * n_in(); }
fn w1a_at() -> u32 { return n_hidden() * n_in() + n_hidden(); }
fn w2a_at() -> u32 { return 2u * n_hidden() * n_in() + n_hidden(); }

fn point_count() -> u32 {
#if SAMPLES
    return min(info[0], p.n);
#else
    return p.n;
#endif
}

fn point_position(i: u32) -> vec3<f32> {
#if SAMPLES
    return samples[i].xyz;
#else
    return vec3<f32>(points[3u * i], points[3u * i + 1u], points[3u * i + 2u]);
#endif
}

// Rows, in the order the kernels walk them: the n centre rows (k = 0) first,
// then the 6 offset rows of each point, so that tiles of 64 rows are either
// all centre rows (which also evaluate the albedo head) or all offset rows.
struct Row {
    point: u32,
    k: u32,
}

fn row_of(r: u32, n: u32) -> Row {
    if (r < n) { return Row(r, 0u); }
    return Row((r - n) / 6u, 1u + (r - n) % 6u);
}

// Rows of n points: one per density value, but one per point with ANALYTIC
// normals (whose K = 4 values all come from the point's own row).
fn row_count(n: u32) -> u32 {
#if ANALYTIC
    return n;
#else
    return n * p.k;
#endif
}

// World position of row k of point i (k > 0: finite-difference offsets, clamped to the box).
fn row_position(i: u32, k: u32) -> vec3<f32> {
    let pos = point_position(i);
    let kk = max(k, 1u) - 1u;
    var off = vec3<f32>(0.0);
    off[kk / 2u] = select(-p.normal_eps, p.normal_eps, kk % 2u == 0u);
    return select(pos, clamp(pos + off, vec3<f32>(-p.radius), vec3<f32>(p.radius)), k > 0u);
}

// World box -> the grid's unit cube.
fn unit_position(pos: vec3<f32>) -> vec3<f32> {
    return (pos + p.radius) / (2.0 * p.radius);
}

// threestudio's blob_magic3d density bias.
fn blob_bias(pos: vec3<f32>) -> f32 {
    return p.blob_scale * (1.0 - length(pos) / p.blob_std);
}

// log(1 + e) for e ≥ 0, accurate also where 1 + e rounds (Goldberg's trick).
fn log1p_pos(e: f32) -> f32 {
    let u = 1.0 + e;
    if (u == 1.0) { return e; }
    return log(u) * e / (u - 1.0);
}

fn softplus(z: f32) -> f32 {
    return max(z, 0.0) + log1p_pos(exp(-abs(z)));
}

#if ANALYTIC
// ∇ of blob_bias (zero at the centre, where it has a kink).
fn blob_bias_gradient(pos: vec3<f32>) -> vec3<f32> {
    let len = length(pos);
    if (len == 0.0) { return vec3<f32>(0.0); }
    return (-p.blob_scale / (p.blob_std * len)) * pos;
}
#endif

#include "common.wgsl"

// pre[j] = Σ_i W1[j, i]·x[i] for the head whose W1 starts at w1.
fn hidden_pre(x: ptr<function, array<f32, MAX_IN>>, w1: u32, pre: ptr<function, array<f32, MAX_HIDDEN>>) {
    let nin = n_in();
    for (var j = 0u; j < n_hidden(); j++) {
        var s = 0.0;
        let row = w1 + j * nin;
        for (var i = 0u; i < nin; i++) { s += mlp[row + i] * (*x)[i]; }
        (*pre)[j] = s;
    }
}

// Σ_j W2[o, j]·relu(pre[j]) for output o of the head whose W2 starts at w2.
fn head_out(pre: ptr<function, array<f32, MAX_HIDDEN>>, w2: u32, o: u32) -> f32 {
    let nh = n_hidden();
    var s = 0.0;
    for (var j = 0u; j < nh; j++) { s += mlp[w2 + o * nh + j] * max((*pre)[j], 0.0); }
    return s;
}

#if ANALYTIC
// r[i] = ∂z/∂x_i of the density head: Σ_j W2d[j]·[pre_j > 0]·W1d[j, i].
fn density_input_gradient(pre: ptr<function, array<f32, MAX_HIDDEN>>, r: ptr<function, array<f32, MAX_IN>>) {
    let nin = n_in();
    for (var i = 0u; i < nin; i++) { (*r)[i] = 0.0; }
    for (var j = 0u; j < n_hidden(); j++) {
        let coef = select(0.0, mlp[w2d_at() + j], (*pre)[j] > 0.0);
        let row = w1d_at() + j * nin;
        for (var i = 0u; i < nin; i++) { (*r)[i] += coef * mlp[row + i]; }
    }
}

// ∂z/∂pos (world units): Σ_i r_i·J_i / (2·radius) + ∇blob.
fn density_position_gradient(r: ptr<function, array<f32, MAX_IN>>, jac: ptr<function, array<vec3<f32>, MAX_IN>>, pos: vec3<f32>) -> vec3<f32> {
    var s = vec3<f32>(0.0);
    for (var i = 0u; i < n_in(); i++) { s += (*r)[i] * (*jac)[i]; }
    return s / (2.0 * p.radius) + blob_bias_gradient(pos);
}
#endif
#endif
#endif
#endif

// The kernels stride over tiles of WG rows with the whole workgroup (not over
// rows per thread): every loop over levels, hidden units and inputs then runs
// in workgroup-uniform control flow, so weight loads and private-array
// indices are uniform (broadcasts on SIMD CPUs such as llvmpipe; no
// divergence on GPUs). Rows past the end compute a clamped row and are not written.

// The number of points, as a workgroup-uniform value.
var<workgroup> wg_points: u32;

#if FIELD_FORWARD
@compute @workgroup_size(WG)
fn field_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    if (lid == 0u) { wg_points = point_count(); }
    let n = workgroupUniformLoad(&wg_points);
    let n_rows = row_count(n);
    let n_tiles = (n_rows + WG - 1u) / WG;
    let group = wid.x + wid.y * nwg.x;
    let n_groups = nwg.x * nwg.y;
    for (var tile = group; tile < n_tiles; tile += n_groups) {
        let row = tile * WG + lid;
        let rw = row_of(min(row, n_rows - 1u), n);
        let pos = row_position(rw.point, rw.k);
        var x: array<f32, MAX_IN>;
#if ANALYTIC
        var jac: array<vec3<f32>, MAX_IN>;
        grid_features_jacobian(unit_position(pos), &x, &jac);
#else
        grid_features(unit_position(pos), &x);
#endif
        var pre: array<f32, MAX_HIDDEN>;
        hidden_pre(&x, w1d_at(), &pre);
        let z = head_out(&pre, w2d_at(), 0u) + blob_bias(pos);
        let sigma = softplus(z);
        if (row < n_rows) { density_out[rw.point * p.k + rw.k] = sigma; }
#if ANALYTIC
        var r: array<f32, MAX_IN>;
        density_input_gradient(&pre, &r);
        // softplus' = sigmoid
        let g = sigmoid(z) * density_position_gradient(&r, &jac, pos);
        if (row < n_rows) {
            for (var a = 0u; a < 3u; a++) { density_out[rw.point * p.k + 1u + a] = g[a]; }
        }
#endif
#if ALBEDO
        if (tile * WG < n) {
            hidden_pre(&x, w1a_at(), &pre);
            var a: vec3<f32>;
            for (var c = 0u; c < 3u; c++) { a[c] = sigmoid(head_out(&pre, w2a_at(), c)); }
            if (row < n) {
                for (var c = 0u; c < 3u; c++) { albedo_out[3u * rw.point + c] = a[c]; }
            }
        }
#endif
    }
}
#endif

#if FIELD_BACKWARD
// A tile is WG rows: each thread runs the backward of one row, then the
// workgroup reduces the weight gradients over the tile. Without ANALYTIC in
// one phase from each row's x and dz (dW1[j, :] += dh_j·x, dW2[j] +=
// dz·relu(pre_j), both heads). With it, in two phases that share one tile
// array: the density head from y = dz·x + c (c: the normals' term) and the
// ReLU masks, since
//   dW1d[j, :] += [pre_j > 0]·W2d[j]·y,  dW2d[j] += [pre_j > 0]·(W1d[j, :]·y),
// then the albedo head from x.

// Per row, in vec4s (zero-padded past LEVELS·FEATS): x, or (ANALYTIC) y then x.
const IN4: u32 = (MAX_IN + 3u) / 4u;
var<workgroup> tile_v: array<array<vec4<f32>, IN4>, WG>;
// Per row: bit j of the density head's pre_j > 0 (MAX_HIDDEN ≤ 64).
var<workgroup> tile_mask: array<vec2<u32>, WG>;
// Per row: dL/d(raw density), or (ANALYTIC) 1 if it has a density gradient
// else 0; and dL/d(raw albedo).
var<workgroup> tile_dz: array<vec4<f32>, WG>;

// What a row leaves for the reduction (besides x and y).
struct RowGrad {
    density: bool,
    dz_d: f32,
    dz_a: vec3<f32>,
    mask: vec2<u32>,
}

fn store_tile(slot: u32, v: ptr<function, array<f32, MAX_IN>>) {
    let nin = n_in();
    for (var d4 = 0u; d4 < n_in4(); d4++) {
        var w = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let d = 4u * d4 + e;
            if (d < nin) { w[e] = (*v)[d]; }
        }
        tile_v[slot][d4] = w;
    }
}

// Backward of one row given its upstream gradients (dL/dσ, dL/d∇σ with
// ANALYTIC, dL/dalbedo): scatters into the grid gradient, leaves the row's x
// and y and returns what the reduction needs. `centre_rows`: the tile holds
// centre rows (workgroup-uniform).
fn row_backward(rw: Row, d_sigma: f32, d_grad: vec3<f32>, d_alb: vec3<f32>, centre_rows: bool,
                x: ptr<function, array<f32, MAX_IN>>, y: ptr<function, array<f32, MAX_IN>>) -> RowGrad {
    let pos = row_position(rw.point, rw.k);
    let u = unit_position(pos);
    let nin = n_in();
    let nh = n_hidden();
#if ANALYTIC
    var jac: array<vec3<f32>, MAX_IN>;
    grid_features_jacobian(u, x, &jac);
#else
    grid_features(u, x);
#endif
    var out: RowGrad;
    var pre: array<f32, MAX_HIDDEN>;
    hidden_pre(x, w1d_at(), &pre);
    out.mask = vec2<u32>(0u);
#if ANALYTIC
    for (var j = 0u; j < nh; j++) {
        if (pre[j] > 0.0) { out.mask[j / 32u] |= 1u << (j % 32u); }
    }
#endif
    let z = head_out(&pre, w2d_at(), 0u) + blob_bias(pos);
    let s = sigmoid(z);  // softplus' = sigmoid
    var dz_d = d_sigma * s;
    var dx: array<f32, MAX_IN>;
#if ANALYTIC
    var r: array<f32, MAX_IN>;
    density_input_gradient(&pre, &r);
    dz_d += s * (1.0 - s) * dot(d_grad, density_position_gradient(&r, &jac, pos));
    let q = s * d_grad / (2.0 * p.radius);
    for (var d = 0u; d < nin; d++) {
        dx[d] = dz_d * r[d];
        (*y)[d] = dz_d * (*x)[d] + dot(jac[d], q);
    }
    out.density = dz_d != 0.0 || any(q != vec3<f32>(0.0));
#else
    for (var d = 0u; d < nin; d++) { dx[d] = 0.0; }
    for (var j = 0u; j < nh; j++) {
        let dh = select(0.0, mlp[w2d_at() + j] * dz_d, pre[j] > 0.0);
        let w1 = w1d_at() + j * nin;
        for (var d = 0u; d < nin; d++) { dx[d] += mlp[w1 + d] * dh; }
    }
    out.density = dz_d != 0.0;
#endif
    out.dz_d = dz_d;
    out.dz_a = vec3<f32>(0.0);
#if ALBEDO
    if (centre_rows) {
        hidden_pre(x, w1a_at(), &pre);
        var a: vec3<f32>;
        for (var c = 0u; c < 3u; c++) { a[c] = sigmoid(head_out(&pre, w2a_at(), c)); }
        out.dz_a = d_alb * a * (1.0 - a);
        for (var j = 0u; j < nh; j++) {
            let w2 = w2a_at() + j;
            let g = mlp[w2] * out.dz_a.x + mlp[w2 + nh] * out.dz_a.y + mlp[w2 + 2u * nh] * out.dz_a.z;
            let dh = select(0.0, g, pre[j] > 0.0);
            let w1 = w1a_at() + j * nin;
            for (var d = 0u; d < nin; d++) { dx[d] += mlp[w1 + d] * dh; }
        }
    }
#endif
#if ANALYTIC
    grid_scatter_analytic(u, &dx, &r, q);
#else
    grid_scatter(u, &dx);
#endif
    return out;
}

// Upstream density values per row: K with finite differences or none (1 per
// row), all 4 of the point with ANALYTIC.
fn row_density_grad(rw: Row) -> vec4<f32> {
#if ANALYTIC
    let b = rw.point * p.k;
    return vec4<f32>(d_density[b], d_density[b + 1u], d_density[b + 2u], d_density[b + 3u]);
#else
    return vec4<f32>(d_density[rw.point * p.k + rw.k], 0.0, 0.0, 0.0);
#endif
}

// Whether any of the WG rows from `first` has an upstream gradient. Every
// thread reads them all (the same addresses: broadcast loads), which skips
// rows without gradient (the samples past a ray's early stop) with no barrier.
fn rows_have_grad(first: u32, n_rows: u32, n: u32) -> bool {
    let end = min(first + WG, n_rows);
    for (var r = first; r < end; r++) {
        let rw = row_of(r, n);
        if (any(row_density_grad(rw) != vec4<f32>(0.0))) { return true; }
#if ALBEDO
        if (rw.k == 0u) {
            let a = 3u * rw.point;
            if (any(vec3<f32>(d_albedo[a], d_albedo[a + 1u], d_albedo[a + 2u]) != vec3<f32>(0.0))) { return true; }
        }
#endif
    }
    return false;
}

@compute @workgroup_size(WG)
fn field_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let nin = n_in();
    let nh = n_hidden();
    if (lid == 0u) { wg_points = point_count(); }
    let n = workgroupUniformLoad(&wg_points);
    let n_rows = row_count(n);
    let n_tiles = (n_rows + WG - 1u) / WG;
    let group = wid.x + wid.y * nwg.x;
    let n_groups = nwg.x * nwg.y;

    // The reduction: thread lid owns hidden unit j = lid % HIDDEN over the
    // tile rows r ≡ part (mod parts), part = lid / HIDDEN, so that with
    // HIDDEN < WG no thread repeats another's work; each (workgroup, part)
    // writes its own row of partials. Threads past parts·HIDDEN only do rows.
    let parts = max(WG / nh, 1u);
    let j = lid % nh;
    let part = lid / nh;
    let reducer = part < parts;
    var w1d_row: array<vec4<f32>, IN4>;
    var w1a_row: array<vec4<f32>, IN4>;
    var acc_w1d: array<vec4<f32>, IN4>;
    var acc_w1a: array<vec4<f32>, IN4>;
    for (var d4 = 0u; d4 < n_in4(); d4++) {
        var wd = vec4<f32>(0.0);
        var wa = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let d = 4u * d4 + e;
            if (d < nin) {
                wd[e] = mlp[w1d_at() + j * nin + d];
                wa[e] = mlp[w1a_at() + j * nin + d];
            }
        }
        w1d_row[d4] = wd;
        w1a_row[d4] = wa;
        acc_w1d[d4] = vec4<f32>(0.0);
        acc_w1a[d4] = vec4<f32>(0.0);
    }
    let w2d_j = mlp[w2d_at() + j];
    let w2a_j = vec3<f32>(mlp[w2a_at() + j], mlp[w2a_at() + nh + j], mlp[w2a_at() + 2u * nh + j]);
    let j_word = j / 32u;
    let j_bit = 1u << (j % 32u);
    var acc_w2d = 0.0;
    var acc_w2a = vec3<f32>(0.0);

    for (var tile = group; tile < n_tiles; tile += n_groups) {
        let first = tile * WG;
        // Uniform: every thread read the same gradients.
        if (!rows_have_grad(first, n_rows, n)) { continue; }
        let row = first + lid;
        let rw = row_of(min(row, n_rows - 1u), n);
        var dd = vec4<f32>(0.0);
        var d_alb = vec3<f32>(0.0);
        if (row < n_rows) {
            dd = row_density_grad(rw);
#if ALBEDO
            if (rw.k == 0u) { d_alb = vec3<f32>(d_albedo[3u * rw.point], d_albedo[3u * rw.point + 1u], d_albedo[3u * rw.point + 2u]); }
#endif
        }
        let centre_rows = first < n;
        var x: array<f32, MAX_IN>;
        var y: array<f32, MAX_IN>;
        let rg = row_backward(rw, dd.x, dd.yzw, d_alb, centre_rows, &x, &y);
#if ANALYTIC
        store_tile(lid, &y);
        tile_mask[lid] = rg.mask;
        tile_dz[lid] = vec4<f32>(select(0.0, 1.0, rg.density), rg.dz_a);
        workgroupBarrier();
        if (reducer) {
            for (var r = part; r < WG; r += parts) {
                // Uniform skip (every reducer reads the same row); the mask
                // is per unit, so it selects rather than branches.
                if (tile_dz[r].x == 0.0) { continue; }
                let unit_on = (tile_mask[r][j_word] & j_bit) != 0u;
                let coef = select(0.0, w2d_j, unit_on);
                var wy = 0.0;
                for (var d4 = 0u; d4 < n_in4(); d4++) {
                    acc_w1d[d4] += coef * tile_v[r][d4];
                    wy += dot(w1d_row[d4], tile_v[r][d4]);
                }
                acc_w2d += select(0.0, wy, unit_on);
            }
        }
        // Then the albedo head from x (every tile holds centre rows).
        workgroupBarrier();
        store_tile(lid, &x);
#else
        // y = dz·x here: one phase from x and dz serves both heads.
        store_tile(lid, &x);
        tile_dz[lid] = vec4<f32>(rg.dz_d, rg.dz_a);
#endif
        workgroupBarrier();
        // Every reducer reads the same row r, so the skips on its dz are
        // uniform; the ReLUs differ per unit and select rather than branch
        // (divergent branches in this loop cost llvmpipe ~30 %).
        if (reducer) {
            for (var r = part; r < WG; r += parts) {
                let dzr = tile_dz[r];
#if !ANALYTIC
                if (all(dzr == vec4<f32>(0.0))) { continue; }
                var pre = 0.0;
                for (var d4 = 0u; d4 < n_in4(); d4++) { pre += dot(w1d_row[d4], tile_v[r][d4]); }
                let dh = select(0.0, w2d_j * dzr.x, pre > 0.0);
                for (var d4 = 0u; d4 < n_in4(); d4++) { acc_w1d[d4] += dh * tile_v[r][d4]; }
                acc_w2d += dzr.x * max(pre, 0.0);
#endif
#if ALBEDO
                let dz_a = dzr.yzw;
                if (any(dz_a != vec3<f32>(0.0))) {
                    var pre_a = 0.0;
                    for (var d4 = 0u; d4 < n_in4(); d4++) { pre_a += dot(w1a_row[d4], tile_v[r][d4]); }
                    let dh_a = select(0.0, dot(w2a_j, dz_a), pre_a > 0.0);
                    for (var d4 = 0u; d4 < n_in4(); d4++) { acc_w1a[d4] += dh_a * tile_v[r][d4]; }
                    acc_w2a += dz_a * max(pre_a, 0.0);
                }
#endif
            }
        }
        workgroupBarrier();
    }

    if (reducer) {
        let base = (group * parts + part) * (w2a_at() + 3u * nh);
        for (var d = 0u; d < nin; d++) {
            partials[base + w1d_at() + j * nin + d] = acc_w1d[d / 4u][d % 4u];
            partials[base + w1a_at() + j * nin + d] = acc_w1a[d / 4u][d % 4u];
        }
        partials[base + w2d_at() + j] = acc_w2d;
        for (var c = 0u; c < 3u; c++) { partials[base + w2a_at() + c * nh + j] = acc_w2a[c]; }
    }
}
#endif
