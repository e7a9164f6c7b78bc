// Adam (torch.optim.Adam, no weight decay), one thread per parameter:
//   g' = g·grad_scale
//   m = β1·m + (1 − β1)·g'
//   v = β2·v + (1 − β2)·g'²
//   p −= (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
// The bias corrections for step t are computed on the host. Large launches
// fold into y.

const WG: u32 = 256u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    grad_scale: f32,
    step_size: f32,            // lr / (1 − β1^t)
    bias_correction2_sqrt: f32, // √(1 − β2^t)
    _pad3: f32,
    _pad4: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;

@compute @workgroup_size(WG)
fn adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    let g = grad[i] * p.grad_scale;
    let m = p.beta1 * exp_avg[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * exp_avg_sq[i] + (1.0 - p.beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] -= p.step_size * m / (sqrt(v) / p.bias_correction2_sqrt + p.eps);
}
