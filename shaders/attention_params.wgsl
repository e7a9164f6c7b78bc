// The parameters of every attention kernel (attention.wgsl,
// attention_coop.wgsl): one block, ops::attention's Params.

struct Params {
    lq: u32,
    lk: u32,
    heads: u32,
    causal: u32,       // 1: key j is visible to query i only when j <= i
    scale_log2: f32,   // softmax scale · log2(e)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
