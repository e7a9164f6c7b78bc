// The ids a workgroup kernel takes as its one entry-point argument
// (`#include "workgroup_ids.wgsl"`), with the subgroup ids when the define
// SUBGROUP_OPS is on: the reduction kernels (wg_sum.wgsl) and their callers
// share this one declaration.
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#if SUBGROUP_OPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
#endif
}
