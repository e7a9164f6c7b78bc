// Embeddings: token-table gathers and diffusers' sinusoidal timestep embedding.
//
// Defines: T (storage type of the table / output), WG (workgroup size),
// GATHER / TIMESTEP (entry).

const WG: u32 = {{WG}}u;
#include "common.wgsl"

#if GATHER
// out[i, :] = table[ids[i], :] for the ids that fall in this chunk of the
// table (rows row_start .. row_start + rows). A table over the storage binding
// limit is split into row chunks, one dispatch each; the dispatch of the last
// chunk also writes zeros for ids >= vocab, so that every output row is
// written and an out-of-range id never reads outside a table.
struct Params {
    n: u32,          // output elements: ids x dim
    dim: u32,
    row_start: u32,  // first table row held by this chunk
    rows: u32,       // rows in this chunk
    vocab: u32,      // rows in the whole table
    last_chunk: u32, // 1 when this dispatch owns the out-of-range ids
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> out: array<{{T}}>;

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let id = ids[i / p.dim];
    let col = i % p.dim;
    // id - row_start wraps around for ids below this chunk: one comparison covers both ends.
    let row = id - p.row_start;
    if (row < p.rows) {
        out[i] = table[row * p.dim + col];
    } else if (p.last_chunk != 0u && id >= p.vocab) {
        out[i] = {{T}}(0.0);
    }
}
#endif

#if TIMESTEP
// diffusers' get_timestep_embedding, in the same f32 operation order:
//   freq[j] = exp(-ln(max_period) * j / (half - shift)),   j < half = dim / 2
//   arg[j]  = scale * (t * freq[j])
//   emb     = [sin(arg), cos(arg)]  ([cos, sin] with flip_sin_to_cos), zero-padded when dim is odd.
struct Params {
    n: u32,            // output elements: batch x dim
    dim: u32,
    half_dim: u32,
    flip: u32,         // 1: cos first (flip_sin_to_cos)
    neg_log_max_period: f32,
    denom: f32,        // half_dim - downscale_freq_shift
    scale: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> timesteps: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> out: array<{{T}}>;

// sin and cos of x after an explicit reduction to [-pi, pi]: arguments reach
// ~1000 rad and GPU sin/cos are only accurate near the origin. 2pi is split
// Cody-Waite style: k * TWO_PI_HI is exact for |k| < 2^16.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

fn reduce_angle(x: f32) -> f32 {
    let k = round(x * INV_TWO_PI);
    return (x - k * TWO_PI_HI) - k * TWO_PI_LO;
}

@compute @workgroup_size(WG)
fn timestep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let col = i % p.dim;
    if (col >= 2u * p.half_dim) {
        out[i] = {{T}}(0.0);  // the zero column of an odd dim
        return;
    }
    let second_half = col >= p.half_dim;
    let j = select(col, col - p.half_dim, second_half);
    let freq = exp(p.neg_log_max_period * f32(j) / p.denom);
    let t = f32(timesteps[i / p.dim]);
    let arg = reduce_angle(p.scale * (t * freq));
    // First half sin, second cos; flip swaps them.
    let use_cos = second_half != (p.flip != 0u);
    out[i] = {{T}}(select(sin(arg), cos(arg), use_cos));
}
#endif
