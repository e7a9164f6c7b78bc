// Volume rendering: ray marching with an occupancy grid, front-to-back
// compositing with shading, its backward, regulariser values and the
// occupancy-grid update.
//
// Marching (three kernels, no readback):
//   march_count  per ray: intersect the box [-r, r]³, step t_k = t0 + (k + u)·dt
//                (u: per-ray stratified jitter, or 0.5) while t_k < t1 and
//                k < max_samples, count the samples whose occupancy cell is set
//   march_scan   one workgroup: exclusive prefix sum of the counts -> each ray's
//                (offset, count) in the packed sample buffer, counts clamped to
//                its capacity; info = [samples, requested, 0, 0]
//   march_write  per ray: the same walk, writing (x, y, z, t) of each kept sample
// Samples of a ray are contiguous and in order, so compositing is a loop.
//
// Pruning occluded samples (nerfacc's sigma_fn with early_stop_eps, what
// threestudio's renderer does): given σ alone at every marched sample,
//   prune_count  per ray: the samples the compositing would reach, i.e. the
//                prefix of its samples j with T_j = Π_{q<j} exp(−σ_q·dt) ≥
//                early_stop (the same arithmetic as composite's loop)
//   march_scan   the same scan over those counts
//   prune_write  per ray: copies the prefix into the new packed buffer; ray 0
//                also keeps the march's overflow in the new info:
//                info = [kept, kept + dropped for capacity, 0, marched]
// The field's full evaluation (albedo, normals) and its backward then run on
// the kept samples only.
//
// Compositing (per ray, front to back, stopping once T < early_stop):
//   α_s = 1 − exp(−σ_s·dt), w_s = T_s·α_s, T_{s+1} = T_s·(1 − α_s)
//   rgb = Σ w_s·c_s + (1 − opacity)·bg, opacity = Σ w_s, depth = Σ w_s·t_s,
//   normal = Σ w_s·n_s, orient = Σ w_s·max(0, n_s·d)²
// with c_s the shaded colour: albedo (ALBEDO, also threestudio's ambient-only
// steps), albedo·(ambient + diffuse·max(0, n·l)) (DIFFUSE), or the same with a
// white albedo (TEXTURELESS); l = normalize(light − x). Normals are
// n = −normalize(g) with g the density gradient (hashgrid.wgsl): with K = 4
// the analytic ∇σ in values 1..3, with K = 7 the finite differences of rows
// 1..6, g_a = (σ(x + ε e_a) − σ(x − ε e_a))/(2ε).
// Images are NCHW: [views, C, H, W], ray r = view·H·W + pixel.
//
// Backward (per ray, the reverse accumulation of instant-ngp: nothing per
// sample is stored, the totals come from the forward's outputs):
// with v_s = g_rgb·c_s + g_op' (g_op' = dL/dopacity − g_rgb·bg: the background
// term (1 − opacity)·bg), S = Σ w_s v_s and S_≤s its running sum,
//   dL/dσ_s = dt·(T_{s+1}·v_s − (S − S_≤s)),   dL/dc_s = w_s·g_rgb.
// Regularisers add to dL/dopacity per ray: sparsity mean √(o² + 0.01) and
// opacity entropy mean −(o log o + (1−o) log(1−o)) with o clamped to
// [1e-3, 1 − 1e-3] (threestudio's loss_opaque: binary cross-entropy of the
// opacity with itself); the orientation loss Σ_s w_s·max(0, n_s·d)² / (rays
// with opacity > 0) treats w_s as a constant (threestudio detaches it), so it
// only reaches the normals. dL/dn goes through the normalisation to g and to
// ∇σ's three values (K = 4) or the six density rows (K = 7; first-order:
// exactly threestudio's autograd through its finite differences). Outputs:
// dL/d(density values) [n, K], dL/dalbedo [n, 3],
// dL/dbackground [rays, 3].
//
// Occupancy grid (res³ cells over the box, one bit each): occupancy_points
// draws one jittered point per cell, the field gives its density, and
// occupancy_update keeps occ = max(occ·decay, σ·dt) per cell and sets the bit
// where occ > min(mean occ, threshold) (nerfacc's OccGridEstimator, every cell
// at every update).
//
// Defines: one entry flag of MARCH_COUNT, MARCH_SCAN, MARCH_WRITE, PRUNE_COUNT,
// PRUNE_WRITE, COMPOSITE,
// COMPOSITE_BACKWARD, REGULARISERS, OCCUPANCY_POINTS, OCCUPANCY_UPDATE, and the
// group flags MARCHING (count, write) and COMPOSITING (composite, backward).

const WG: u32 = 64u;
const SCAN_WG: u32 = 256u;
const MAX_VIEWS: u32 = 16u;

fn thread_id(wid: vec3<u32>, lid: u32, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// A well-mixed 32-bit hash (PCG output function).
fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// Uniform in [0, 1) from a hash.
fn unit_float(h: u32) -> f32 {
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// ---------------------------------------------------------------------------
// Marching.

struct MarchParams {
    n_rays: u32,
    max_samples: u32,   // per ray
    capacity: u32,      // of the sample buffer
    occ_res: u32,       // occupancy cells per axis
    radius: f32,
    dt: f32,            // step between samples
    seed: u32,
    stratified: u32,
}

#if MARCH_COUNT
@group(0) @binding(0) var<uniform> p: MarchParams;
@group(0) @binding(1) var<storage, read> rays: array<vec4<f32>>;          // [n_rays, 2]: origin, direction
@group(0) @binding(2) var<storage, read> occ_bits: array<u32>;            // occ_res³ bits
@group(0) @binding(3) var<storage, read_write> ranges: array<vec2<u32>>;  // [n_rays]: (offset, count)
#endif

#if MARCH_WRITE
@group(0) @binding(0) var<uniform> p: MarchParams;
@group(0) @binding(1) var<storage, read> rays: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> occ_bits: array<u32>;
@group(0) @binding(3) var<storage, read> ranges: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> samples: array<vec4<f32>>; // [capacity]: (x, y, z, t)
#endif

#if MARCH_SCAN
@group(0) @binding(0) var<uniform> p: MarchParams;
@group(0) @binding(1) var<storage, read_write> ranges: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> info: array<u32>;          // [4]
#endif

#if MARCHING
// (t_enter, t_exit) of the ray in the box [-r, r]³, t_enter ≥ 0; empty when t_exit ≤ t_enter.
fn ray_box(o: vec3<f32>, d: vec3<f32>, r: f32) -> vec2<f32> {
    // Tiny components become tiny positive ones: no infinities (WGSL need not have them).
    let dd = select(d, vec3<f32>(1e-12), abs(d) < vec3<f32>(1e-12));
    let a = (vec3<f32>(-r) - o) / dd;
    let b = (vec3<f32>(r) - o) / dd;
    let lo = min(a, b);
    let hi = max(a, b);
    return vec2<f32>(max(max(max(lo.x, lo.y), lo.z), 0.0), min(min(hi.x, hi.y), hi.z));
}

fn occupied(x: vec3<f32>) -> bool {
    let res = p.occ_res;
    let c = vec3<u32>(clamp((x + p.radius) / (2.0 * p.radius) * f32(res), vec3<f32>(0.0), vec3<f32>(f32(res) - 0.5)));
    let i = c.x + c.y * res + c.z * res * res;
    return ((occ_bits[i / 32u] >> (i % 32u)) & 1u) != 0u;
}

// A ray's walk: origin, direction, the box interval, the jitter and a bound on the steps.
struct Walk {
    o: vec3<f32>,
    d: vec3<f32>,
    t0: f32,
    t1: f32,
    u: f32,
    steps: u32,
}

fn walk_of(r: u32) -> Walk {
    var w: Walk;
    w.o = rays[2u * r].xyz;
    w.d = rays[2u * r + 1u].xyz;
    let tb = ray_box(w.o, w.d, p.radius);
    w.t0 = tb.x;
    w.t1 = tb.y;
    w.u = 0.5;
    if (p.stratified != 0u) { w.u = unit_float(pcg(r ^ pcg(p.seed))); }
    w.steps = 0u;
    if (w.t1 > w.t0) {
        w.steps = min(p.max_samples, u32(max(ceil((w.t1 - w.t0) / p.dt - w.u), 0.0)) + 1u);
    }
    return w;
}
#endif

#if MARCH_COUNT
@compute @workgroup_size(WG)
fn march_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_id(wid, lid, nwg);
    if (r >= p.n_rays) { return; }
    let w = walk_of(r);
    var count = 0u;
    for (var k = 0u; k < w.steps; k++) {
        let t = w.t0 + (f32(k) + w.u) * p.dt;
        if (t >= w.t1) { break; }
        if (occupied(w.o + t * w.d)) { count++; }
    }
    ranges[r] = vec2<u32>(0u, count);
}
#endif

#if MARCH_WRITE
@compute @workgroup_size(WG)
fn march_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_id(wid, lid, nwg);
    if (r >= p.n_rays) { return; }
    let range = ranges[r];
    if (range.y == 0u) { return; }
    let w = walk_of(r);
    var j = 0u;
    for (var k = 0u; k < w.steps && j < range.y; k++) {
        let t = w.t0 + (f32(k) + w.u) * p.dt;
        if (t >= w.t1) { break; }
        let x = w.o + t * w.d;
        if (occupied(x)) {
            samples[range.x + j] = vec4<f32>(x, t);
            j++;
        }
    }
}
#endif

#if MARCH_SCAN
var<workgroup> scan: array<u32, SCAN_WG>;

@compute @workgroup_size(SCAN_WG)
fn march_scan(@builtin(local_invocation_index) lid: u32) {
    let n = p.n_rays;
    let per = (n + SCAN_WG - 1u) / SCAN_WG;
    let start = min(lid * per, n);
    let end = min(start + per, n);
    var local = 0u;
    for (var r = start; r < end; r++) { local += ranges[r].y; }
    scan[lid] = local;
    workgroupBarrier();
    // Inclusive Hillis–Steele scan of the per-thread sums.
    for (var d = 1u; d < SCAN_WG; d <<= 1u) {
        var v = 0u;
        if (lid >= d) { v = scan[lid - d]; }
        workgroupBarrier();
        scan[lid] += v;
        workgroupBarrier();
    }
    var off = scan[lid] - local;
    let cap = p.capacity;
    for (var r = start; r < end; r++) {
        let c = ranges[r].y;
        let o = min(off, cap);
        ranges[r] = vec2<u32>(o, min(c, cap - o));
        off += c;
    }
    if (lid == SCAN_WG - 1u) {
        let total = scan[lid];
        info[0] = min(total, cap);
        info[1] = total;
        info[2] = 0u;
        info[3] = min(total, cap);
    }
}
#endif

// ---------------------------------------------------------------------------
// Pruning occluded samples.

struct PruneParams {
    n_rays: u32,
    _pad0: u32,
    dt: f32,
    early_stop: f32,
}

#if PRUNE_COUNT
@group(0) @binding(0) var<uniform> p: PruneParams;
@group(0) @binding(1) var<storage, read> ranges: array<vec2<u32>>;        // [n_rays] as marched
@group(0) @binding(2) var<storage, read> sigma: array<f32>;               // [capacity]: σ per sample
@group(0) @binding(3) var<storage, read_write> kept: array<vec2<u32>>;    // [n_rays]: (0, count)

@compute @workgroup_size(WG)
fn prune_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_id(wid, lid, nwg);
    if (r >= p.n_rays) { return; }
    let range = ranges[r];
    var t_trans = 1.0;
    var j = 0u;
    for (; j < range.y; j++) {
        if (t_trans < p.early_stop) { break; }
        let xs = sigma[range.x + j] * p.dt;
        t_trans *= exp(-xs);
    }
    kept[r] = vec2<u32>(0u, j);
}
#endif

#if PRUNE_WRITE
@group(0) @binding(0) var<uniform> p: PruneParams;
@group(0) @binding(1) var<storage, read> ranges: array<vec2<u32>>;        // as marched
@group(0) @binding(2) var<storage, read> kept: array<vec2<u32>>;          // after march_scan
@group(0) @binding(3) var<storage, read> samples: array<vec4<f32>>;       // as marched
@group(0) @binding(4) var<storage, read_write> kept_samples: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> marched_info: array<u32>;
@group(0) @binding(6) var<storage, read_write> kept_info: array<u32>;

@compute @workgroup_size(WG)
fn prune_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_id(wid, lid, nwg);
    if (r >= p.n_rays) { return; }
    if (r == 0u) {
        kept_info[1] = kept_info[0] + (marched_info[1] - marched_info[0]);
        kept_info[3] = marched_info[0];
    }
    let src = ranges[r].x;
    let to = kept[r];
    for (var j = 0u; j < to.y; j++) { kept_samples[to.x + j] = samples[src + j]; }
}
#endif

// ---------------------------------------------------------------------------
// Compositing.

struct CompositeParams {
    n_rays: u32,
    rays_per_view: u32,
    k: u32,               // density values per sample: 1, 4 (σ, analytic ∇σ) or 7 (finite-difference rows)
    shading: u32,         // 0 albedo, 1 diffuse, 2 textureless
    bg_tensor: u32,       // background from the tensor (else bg_color)
    has_d_opacity: u32,   // backward: dL/dopacity given
    want_normals: u32,    // forward: write the normal image
    _pad0: u32,
    dt: f32,
    normal_eps: f32,
    ambient: f32,
    diffuse: f32,
    early_stop: f32,      // stop once the transmittance falls below
    lambda_orient: f32,   // backward: orientation loss weight (divided by the foreground rays here)
    lambda_sparsity: f32, // backward: already divided by the number of rays
    lambda_opaque: f32,   // backward: already divided by the number of rays
    bg_color: vec4<f32>,
    lights: array<vec4<f32>, 16>,
}

#if COMPOSITE
@group(0) @binding(0) var<uniform> p: CompositeParams;
@group(0) @binding(1) var<storage, read> rays: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> ranges: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> samples: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> density: array<f32>;           // [capacity, K]
@group(0) @binding(5) var<storage, read> albedo: array<f32>;            // [capacity, 3]
@group(0) @binding(6) var<storage, read> background: array<f32>;        // [n_rays, 3] (bg_tensor)
@group(0) @binding(7) var<storage, read_write> out_rgb: array<f32>;     // [views, 3, H, W]
@group(0) @binding(8) var<storage, read_write> out_opacity: array<f32>; // [views, 1, H, W]
@group(0) @binding(9) var<storage, read_write> out_depth: array<f32>;   // [views, 1, H, W]
@group(0) @binding(10) var<storage, read_write> out_normal: array<f32>; // [views, 3, H, W] (want_normals)
@group(0) @binding(11) var<storage, read_write> out_orient: array<f32>; // [n_rays]
@group(0) @binding(12) var<storage, read_write> info: array<atomic<u32>>; // [2] counts rays with opacity > 0
#endif

#if COMPOSITE_BACKWARD
@group(0) @binding(0) var<uniform> p: CompositeParams;
@group(0) @binding(1) var<storage, read> rays: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> ranges: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> samples: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> density: array<f32>;
@group(0) @binding(5) var<storage, read> albedo: array<f32>;
@group(0) @binding(6) var<storage, read> background: array<f32>;
@group(0) @binding(7) var<storage, read> out_rgb: array<f32>;
@group(0) @binding(8) var<storage, read> out_opacity: array<f32>;
@group(0) @binding(9) var<storage, read> d_rgb: array<f32>;               // [views, 3, H, W]
@group(0) @binding(10) var<storage, read> d_opacity: array<f32>;          // [views, 1, H, W] (has_d_opacity)
@group(0) @binding(11) var<storage, read> info: array<u32>;
@group(0) @binding(12) var<storage, read_write> d_density: array<f32>;    // [capacity, K]
@group(0) @binding(13) var<storage, read_write> d_albedo: array<f32>;     // [capacity, 3]
@group(0) @binding(14) var<storage, read_write> d_background: array<f32>; // [n_rays, 3] (bg_tensor)
#endif

#if COMPOSITING
// Index of channel c of ray r in an NCHW image.
fn image_index(r: u32, c: u32) -> u32 {
    let view = r / p.rays_per_view;
    return (view * 3u + c) * p.rays_per_view + r % p.rays_per_view;
}

fn light_of(r: u32) -> vec3<f32> {
    return p.lights[min(r / p.rays_per_view, MAX_VIEWS - 1u)].xyz;
}

fn background_of(r: u32) -> vec3<f32> {
    if (p.bg_tensor != 0u) { return vec3<f32>(background[3u * r], background[3u * r + 1u], background[3u * r + 2u]); }
    return p.bg_color.xyz;
}

fn albedo_of(s: u32) -> vec3<f32> {
    return vec3<f32>(albedo[3u * s], albedo[3u * s + 1u], albedo[3u * s + 2u]);
}

// The density gradient of sample s: analytic (K = 4), or
// (σ(x + ε e_a) − σ(x − ε e_a)) / (2ε) per axis (K = 7).
fn density_gradient(s: u32) -> vec3<f32> {
    if (p.k == 4u) {
        let b = s * 4u;
        return vec3<f32>(density[b + 1u], density[b + 2u], density[b + 3u]);
    }
    let b = s * 7u;
    return vec3<f32>(density[b + 1u] - density[b + 2u], density[b + 3u] - density[b + 4u], density[b + 5u] - density[b + 6u])
        / (2.0 * p.normal_eps);
}

// F.normalize(−g) with torch's eps.
fn normal_of(g: vec3<f32>) -> vec3<f32> {
    return -g / max(length(g), 1e-12);
}

// 1 − exp(−x) without cancellation for small x.
fn alpha_of(x: f32) -> f32 {
    if (x < 1e-3) { return x * (1.0 - x * (0.5 - x / 6.0)); }
    return 1.0 - exp(-x);
}

// What shading needs of a sample: the unit light direction and the light term
// ambient + diffuse·max(0, n·l).
struct Light {
    l: vec3<f32>,
    n_dot_l: f32,
    term: f32,
}

fn light_at(x: vec3<f32>, n: vec3<f32>, light: vec3<f32>) -> Light {
    var lt: Light;
    lt.l = normalize(light - x);
    lt.n_dot_l = dot(n, lt.l);
    lt.term = p.ambient + p.diffuse * max(lt.n_dot_l, 0.0);
    return lt;
}

fn shaded(a: vec3<f32>, lt: Light) -> vec3<f32> {
    switch p.shading {
        case 1u: { return a * lt.term; }
        case 2u: { return vec3<f32>(lt.term); }
        default: { return a; }
    }
}
#endif

#if COMPOSITE
@compute @workgroup_size(WG)
fn composite(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_id(wid, lid, nwg);
    if (r >= p.n_rays) { return; }
    let range = ranges[r];
    let d = rays[2u * r + 1u].xyz;
    let light = light_of(r);
    var t_trans = 1.0;
    var rgb = vec3<f32>(0.0);
    var opacity = 0.0;
    var depth = 0.0;
    var normal = vec3<f32>(0.0);
    var orient = 0.0;
    for (var j = 0u; j < range.y; j++) {
        if (t_trans < p.early_stop) { break; }
        let s = range.x + j;
        let xs = density[s * p.k] * p.dt;
        let w = t_trans * alpha_of(xs);
        let smp = samples[s];
        var n = vec3<f32>(0.0);
        if (p.k > 1u) { n = normal_of(density_gradient(s)); }
        let c = shaded(albedo_of(s), light_at(smp.xyz, n, light));
        rgb += w * c;
        opacity += w;
        depth += w * smp.w;
        normal += w * n;
        let facing = max(dot(n, d), 0.0);
        orient += w * facing * facing;
        t_trans *= exp(-xs);
    }
    rgb += (1.0 - opacity) * background_of(r);
    for (var c = 0u; c < 3u; c++) { out_rgb[image_index(r, c)] = rgb[c]; }
    out_opacity[r] = opacity;
    out_depth[r] = depth;
    if (p.want_normals != 0u) {
        for (var c = 0u; c < 3u; c++) { out_normal[image_index(r, c)] = normal[c]; }
    }
    out_orient[r] = orient;
    if (opacity > 0.0) { atomicAdd(&info[2], 1u); }
}
#endif

#if COMPOSITE_BACKWARD
// dL/dopacity of the regularisers at opacity o (weights already over the ray count).
fn regulariser_gradient(o: f32) -> f32 {
    var g = p.lambda_sparsity * o / sqrt(o * o + 0.01);
    if (o > 1e-3 && o < 1.0 - 1e-3) { g -= p.lambda_opaque * log(o / (1.0 - o)); }
    return g;
}

@compute @workgroup_size(WG)
fn composite_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_id(wid, lid, nwg);
    if (r >= p.n_rays) { return; }
    let range = ranges[r];
    let d = rays[2u * r + 1u].xyz;
    let light = light_of(r);
    let bg = background_of(r);
    var g_rgb: vec3<f32>;
    var fg_rgb: vec3<f32>;
    let o = out_opacity[r];
    for (var c = 0u; c < 3u; c++) {
        g_rgb[c] = d_rgb[image_index(r, c)];
        fg_rgb[c] = out_rgb[image_index(r, c)];
    }
    fg_rgb -= (1.0 - o) * bg;
    var g_op = regulariser_gradient(o);
    if (p.has_d_opacity != 0u) { g_op += d_opacity[r]; }
    // The background term (1 − opacity)·bg acts through the opacity.
    let g_op_total = g_op - dot(g_rgb, bg);
    let total = dot(g_rgb, fg_rgb) + g_op_total * o;
    let lambda_orient = p.lambda_orient / f32(max(info[2], 1u));
    let two_eps = 2.0 * p.normal_eps;

    var t_trans = 1.0;
    var acc = 0.0;
    for (var j = 0u; j < range.y; j++) {
        let s = range.x + j;
        if (t_trans < p.early_stop) {
            // Past the early stop: these samples did not contribute.
            for (var q = 0u; q < p.k; q++) { d_density[s * p.k + q] = 0.0; }
            for (var c = 0u; c < 3u; c++) { d_albedo[3u * s + c] = 0.0; }
            continue;
        }
        let xs = density[s * p.k] * p.dt;
        let alpha = alpha_of(xs);
        let w = t_trans * alpha;
        let t_next = t_trans * exp(-xs);
        let smp = samples[s];
        let a = albedo_of(s);
        var g = vec3<f32>(0.0);
        var n = vec3<f32>(0.0);
        if (p.k > 1u) {
            g = density_gradient(s);
            n = normal_of(g);
        }
        let lt = light_at(smp.xyz, n, light);
        let c = shaded(a, lt);
        let v = dot(g_rgb, c) + g_op_total;
        acc += w * v;
        d_density[s * p.k] = p.dt * (t_next * v - (total - acc));

        // Colour -> albedo and normal.
        let dc = w * g_rgb;
        var da = vec3<f32>(0.0);
        var dn = vec3<f32>(0.0);
        switch p.shading {
            case 1u: {
                da = dc * lt.term;
                if (lt.n_dot_l > 0.0) { dn = p.diffuse * dot(dc, a) * lt.l; }
            }
            case 2u: {
                if (lt.n_dot_l > 0.0) { dn = p.diffuse * (dc.x + dc.y + dc.z) * lt.l; }
            }
            default: { da = dc; }
        }
        for (var q = 0u; q < 3u; q++) { d_albedo[3u * s + q] = da[q]; }
        if (p.k > 1u) {
            // Orientation loss, w treated as a constant.
            dn += lambda_orient * w * 2.0 * max(dot(n, d), 0.0) * d;
            // n = −g/max(|g|, eps) -> dL/dg -> ∇σ's values, or the six density rows.
            let len = length(g);
            var dg: vec3<f32>;
            if (len > 1e-12) { dg = -(dn - dot(dn, n) * n) / len; } else { dg = -dn / 1e-12; }
            if (p.k == 4u) {
                for (var axis = 0u; axis < 3u; axis++) { d_density[s * 4u + 1u + axis] = dg[axis]; }
            } else {
                for (var axis = 0u; axis < 3u; axis++) {
                    d_density[s * 7u + 1u + 2u * axis] = dg[axis] / two_eps;
                    d_density[s * 7u + 2u + 2u * axis] = -dg[axis] / two_eps;
                }
            }
        }
        t_trans = t_next;
    }
    if (p.bg_tensor != 0u) {
        for (var c = 0u; c < 3u; c++) { d_background[3u * r + c] = (1.0 - o) * g_rgb[c]; }
    }
}
#endif

// ---------------------------------------------------------------------------
// Regulariser values, for logs (one workgroup): [orientation, sparsity, opacity entropy, foreground rays].

#if REGULARISERS
@group(0) @binding(0) var<uniform> p: CompositeParams;
@group(0) @binding(1) var<storage, read> out_opacity: array<f32>;
@group(0) @binding(2) var<storage, read> out_orient: array<f32>;
@group(0) @binding(3) var<storage, read> info: array<u32>;
@group(0) @binding(4) var<storage, read_write> values: array<f32>;   // [4]

var<workgroup> red: array<vec3<f32>, SCAN_WG>;

@compute @workgroup_size(SCAN_WG)
fn regularisers(@builtin(local_invocation_index) lid: u32) {
    var acc = vec3<f32>(0.0);
    for (var r = lid; r < p.n_rays; r += SCAN_WG) {
        let o = out_opacity[r];
        let oc = clamp(o, 1e-3, 1.0 - 1e-3);
        acc += vec3<f32>(out_orient[r], sqrt(o * o + 0.01), -(oc * log(oc) + (1.0 - oc) * log(1.0 - oc)));
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var half = SCAN_WG / 2u; half > 0u; half >>= 1u) {
        if (lid < half) { red[lid] += red[lid + half]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let fg = info[2];
        values[0] = red[0].x / f32(max(fg, 1u));
        values[1] = red[0].y / f32(max(p.n_rays, 1u));
        values[2] = red[0].z / f32(max(p.n_rays, 1u));
        values[3] = f32(fg);
    }
}
#endif

// ---------------------------------------------------------------------------
// Occupancy grid.

struct OccupancyParams {
    cells: u32,
    res: u32,
    words: u32,
    seed: u32,
    radius: f32,
    decay: f32,
    dt: f32,
    threshold: f32,
}

#if OCCUPANCY_POINTS
@group(0) @binding(0) var<uniform> p: OccupancyParams;
@group(0) @binding(1) var<storage, read_write> points: array<f32>;   // [cells, 3]

// One point per cell, uniformly jittered inside it.
@compute @workgroup_size(WG)
fn occupancy_points(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_id(wid, lid, nwg);
    if (i >= p.cells) { return; }
    let cell = vec3<u32>(i % p.res, (i / p.res) % p.res, i / (p.res * p.res));
    let h = pcg(i ^ pcg(p.seed));
    let u = vec3<f32>(unit_float(h), unit_float(pcg(h)), unit_float(pcg(h ^ 0x9e3779b9u)));
    let x = -p.radius + (vec3<f32>(cell) + u) / f32(p.res) * 2.0 * p.radius;
    for (var a = 0u; a < 3u; a++) { points[3u * i + a] = x[a]; }
}
#endif

#if OCCUPANCY_UPDATE
@group(0) @binding(0) var<uniform> p: OccupancyParams;
@group(0) @binding(1) var<storage, read> density: array<f32>;        // [cells]
@group(0) @binding(2) var<storage, read_write> occ: array<f32>;      // [cells]
@group(0) @binding(3) var<storage, read_write> occ_bits: array<u32>; // [words]

var<workgroup> red: array<f32, SCAN_WG>;

// One workgroup; each thread owns whole 32-cell words, so it re-reads only its own writes.
@compute @workgroup_size(SCAN_WG)
fn occupancy_update(@builtin(local_invocation_index) lid: u32) {
    let per = (p.words + SCAN_WG - 1u) / SCAN_WG;
    let w0 = min(lid * per, p.words);
    let w1 = min(w0 + per, p.words);
    var sum = 0.0;
    for (var wd = w0; wd < w1; wd++) {
        for (var b = 0u; b < 32u; b++) {
            let i = wd * 32u + b;
            if (i >= p.cells) { break; }
            let v = max(occ[i] * p.decay, density[i] * p.dt);
            occ[i] = v;
            sum += v;
        }
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var half = SCAN_WG / 2u; half > 0u; half >>= 1u) {
        if (lid < half) { red[lid] += red[lid + half]; }
        workgroupBarrier();
    }
    let threshold = min(red[0] / f32(p.cells), p.threshold);
    for (var wd = w0; wd < w1; wd++) {
        var bits = 0u;
        for (var b = 0u; b < 32u; b++) {
            let i = wd * 32u + b;
            if (i >= p.cells) { break; }
            if (occ[i] > threshold) { bits |= 1u << b; }
        }
        occ_bits[wd] = bits;
    }
}
#endif
