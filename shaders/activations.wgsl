// Pointwise activations shared by kernel families (`#include "activations.wgsl"`).
// Each is f32 -> f32; the host-side twin is ops::elementwise::Act::apply.

fn act_none(x: f32) -> f32 { return x; }
fn act_silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
fn act_relu(x: f32) -> f32 { return max(x, 0.0); }
fn act_quick_gelu(x: f32) -> f32 { return x / (1.0 + exp(-1.702 * x)); }
fn act_gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return 0.5 * x * (1.0 + tanh(u));
}
// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), for exact GELU.
fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}
fn act_gelu(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476)); }

// The activation a kernel parameter names (ops::elementwise::Act::code):
// 0 none, 1 silu, 2 relu, 3 gelu, 4 gelu_tanh, 5 quick_gelu.
fn activation_by_code(x: f32, code: u32) -> f32 {
    switch code {
        case 1u: { return act_silu(x); }
        case 2u: { return act_relu(x); }
        case 3u: { return act_gelu(x); }
        case 4u: { return act_gelu_tanh(x); }
        case 5u: { return act_quick_gelu(x); }
        default: { return x; }
    }
}
