// The workgroup sum shared by reduction kernels (`#include "wg_sum.wgsl"`).
// The including file declares `var<workgroup> red: array<f32, {{WG}}>` and an
// `Ids` struct with lid, and with sg_lane, sg_id and n_sg when SUBGROUP_OPS.

// Sum of `v` over the workgroup, returned to every invocation. Must be called
// by all invocations (workgroup-uniform control flow); `red` is free again on return.
fn wg_sum(v: f32, ids: Ids) -> f32 {
#if SUBGROUP_OPS
    // Any subgroup size works: one partial per subgroup, num_subgroups of them.
    let s = subgroupAdd(v);
    if (ids.sg_lane == 0u) { red[ids.sg_id] = s; }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < ids.n_sg; i++) { t += red[i]; }
    workgroupBarrier();
    return t;
#else
    red[ids.lid] = v;
    workgroupBarrier();
    for (var half = {{WG}}u / 2u; half > 0u; half >>= 1u) {
        if (ids.lid < half) { red[ids.lid] += red[ids.lid + half]; }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
#endif
}
