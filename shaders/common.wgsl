// Helpers shared by kernel families (`#include "common.wgsl"`).

// The element index of a one-thread-per-element kernel whose workgroups were
// folded into x and y (gpu::grid_1d) when there are more than one dimension
// allows. The including kernel declares WG, its workgroup size.
fn linear_id(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

// The logistic function, its argument clamped so that exp never overflows.
fn sigmoid(z: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(z, -80.0, 80.0)));
}
