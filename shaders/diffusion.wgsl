// Diffusion-sampler kernels: classifier-free guidance, the DDIM update, and
// seeded Gaussian noise. Storage types come from defines; arithmetic is f32.
// Defines: T (storage type), WG (workgroup size), one of GUIDANCE, DDIM, RANDN;
// with DDIM, NOISE binds the Gaussian noise of a stochastic (η > 0) step.

struct Params {
    n: u32,            // output elements
    half: u32,         // GUIDANCE: elements of one half of the [2B, ...] model output
    prediction: u32,   // DDIM: 0 epsilon, 1 v_prediction, 2 sample
    clip: u32,         // DDIM: clamp x̂0 to ±clip_range when 1
    a: f32,            // GUIDANCE: scale s; DDIM: ᾱ_t
    b: f32,            // DDIM: ᾱ_prev
    clip_range: f32,
    seed_lo: u32,      // RANDN: the stream key (seed, step, purpose)
    seed_hi: u32,
    step: u32,
    purpose: u32,
    sigma: f32,        // DDIM: σ_t, the standard deviation of the added noise (0 for η = 0)
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = {{WG}}u;
#include "common.wgsl"

#if GUIDANCE
// ε̂ = ε_∅ + s·(ε_y − ε_∅); the model output holds [uncond; cond] along the batch.
@group(0) @binding(1) var<storage, read> eps: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> o: array<{{T}}>;

@compute @workgroup_size(WG)
fn guidance(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let u = f32(eps[i]);
    let c = f32(eps[i + p.half]);
    o[i] = {{T}}(u + p.a * (c - u));
}
#endif

#if DDIM
// x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z, with (x̂0, ε̂) from the model
// output and z ~ N(0, I) (DDIM's η-step; σ = 0 and no z for η = 0).
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read> model_out: array<{{T}}>;
#if NOISE
@group(0) @binding(3) var<storage, read> z: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> o: array<{{T}}>;
#else
@group(0) @binding(3) var<storage, read_write> o: array<{{T}}>;
#endif

@compute @workgroup_size(WG)
fn ddim(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(wid, lid, nwg);
    if (i >= p.n) { return; }
    let xt = f32(x[i]);
    let m = f32(model_out[i]);
    let sa = sqrt(p.a);
    let sb = sqrt(1.0 - p.a);
    var x0: f32;
    var e: f32;
    if (p.prediction == 0u) {
        x0 = (xt - sb * m) / sa;
        e = m;
    } else if (p.prediction == 1u) {
        x0 = sa * xt - sb * m;
        e = sa * m + sb * xt;
    } else {
        x0 = m;
        e = (xt - sa * m) / sb;
    }
    if (p.clip == 1u) {
        x0 = clamp(x0, -p.clip_range, p.clip_range);
    }
#if NOISE
    o[i] = {{T}}(sqrt(p.b) * x0 + sqrt(max(1.0 - p.b - p.sigma * p.sigma, 0.0)) * e + p.sigma * f32(z[i]));
#else
    o[i] = {{T}}(sqrt(p.b) * x0 + sqrt(1.0 - p.b) * e);
#endif
}
#endif

#if RANDN
// Counter-based Gaussian noise: element i of stream (seed, step, purpose) is a
// pure function of those numbers, so any element can be recomputed anywhere
// (the CPU reference in ops::diffusion does exactly this).
@group(0) @binding(1) var<storage, read_write> o: array<{{T}}>;

// pcg4d (Jarzynski & Olano 2020): a 4-lane integer hash.
fn pcg4d(v_in: vec4<u32>) -> vec4<u32> {
    var v = v_in * 1664525u + 1013904223u;
    v.x += v.y * v.w; v.y += v.z * v.x; v.z += v.x * v.y; v.w += v.y * v.z;
    v = v ^ (v >> vec4<u32>(16u));
    v.x += v.y * v.w; v.y += v.z * v.x; v.z += v.x * v.y; v.w += v.y * v.z;
    return v;
}

@compute @workgroup_size(WG)
fn randn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    // Each invocation makes a pair (Box-Muller), elements 2k and 2k+1.
    let k = linear_id(wid, lid, nwg);
    if (2u * k >= p.n) { return; }
    let h = pcg4d(vec4<u32>(k, p.seed_lo, p.seed_hi ^ (p.purpose * 0x9E3779B9u), p.step));
    // 24-bit uniforms in (0, 1].
    let u1 = (f32(h.x >> 8u) + 1.0) / 16777216.0;
    let u2 = f32(h.y >> 8u) / 16777216.0;
    let r = sqrt(-2.0 * log(u1));
    let th = 6.283185307179586 * u2;
    o[2u * k] = {{T}}(r * cos(th));
    if (2u * k + 1u < p.n) {
        o[2u * k + 1u] = {{T}}(r * sin(th));
    }
}
#endif
