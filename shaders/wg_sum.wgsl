// The workgroup reductions shared by reduction kernels (`#include "wg_sum.wgsl"`).
// The including file declares `var<workgroup> red: array<f32, {{WG}}>`; the
// ids come from workgroup_ids.wgsl.
#include "workgroup_ids.wgsl"

// Maximum (is_max) or sum of `v` over the workgroup, returned to every
// invocation. Must be called by all invocations (workgroup-uniform control
// flow); `red` is free again on return.
fn wg_reduce(v: f32, ids: Ids, is_max: bool) -> f32 {
#if SUBGROUP_OPS
    // Any subgroup size works: one partial per subgroup, num_subgroups of them.
    var s: f32;
    if (is_max) { s = subgroupMax(v); } else { s = subgroupAdd(v); }
    if (ids.sg_lane == 0u) { red[ids.sg_id] = s; }
    workgroupBarrier();
    var t = red[0];
    for (var i = 1u; i < ids.n_sg; i++) {
        if (is_max) { t = max(t, red[i]); } else { t += red[i]; }
    }
    workgroupBarrier();
    return t;
#else
    red[ids.lid] = v;
    workgroupBarrier();
    for (var half = {{WG}}u / 2u; half > 0u; half >>= 1u) {
        if (ids.lid < half) {
            let o = red[ids.lid + half];
            if (is_max) { red[ids.lid] = max(red[ids.lid], o); } else { red[ids.lid] += o; }
        }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
#endif
}

// Sum of `v` over the workgroup (see wg_reduce).
fn wg_sum(v: f32, ids: Ids) -> f32 {
    return wg_reduce(v, ids, false);
}
