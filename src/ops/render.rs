//! Volume rendering (`shaders/render.wgsl`): ray marching through an
//! occupancy grid into a packed sample buffer, compositing with shading to
//! rgb / opacity / depth / normal images, its backward (with the
//! regularisers' gradients), regulariser values and the occupancy update.
//!
//! Sample counts are only known on the device: [`march`] writes them to an
//! `info` tensor that the field kernels and the compositing read, so a whole
//! step records without a readback. The sample buffer has a fixed capacity;
//! samples past it are dropped (`info[1] > info[0]` tells, see [`MarchInfo`]).

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::grid_for;
use crate::ops::hashgrid::NormalKind;

const FAMILY: &str = "render";
const WG: u32 = 64;
/// Most views one render call takes (the lights live in the uniform).
pub const MAX_VIEWS: usize = 16;
/// Floats per ray: origin xyz, 0, direction xyz, 0.
pub const RAY_FLOATS: usize = 8;

const ENTRIES: [&str; 10] = [
    "march_count",
    "march_scan",
    "march_write",
    "prune_count",
    "prune_write",
    "composite",
    "composite_backward",
    "regularisers",
    "occupancy_points",
    "occupancy_update",
];

fn key(entry: &'static str) -> KernelKey {
    let k = KernelKey::new(FAMILY, entry);
    let mut k = match entry {
        "march_count" | "march_scan" | "march_write" => k.params::<MarchParams>(),
        "occupancy_points" | "occupancy_update" => k.params::<OccupancyParams>(),
        "prune_count" | "prune_write" => k.params::<PruneParams>(),
        _ => k.params::<CompositeParams>(),
    }
        .flag("MARCHING", entry == "march_count" || entry == "march_write")
        .flag("COMPOSITING", entry == "composite" || entry == "composite_backward");
    for e in ENTRIES {
        k = k.flag(flag_name(e), e == entry);
    }
    k
}

fn flag_name(entry: &str) -> &'static str {
    match entry {
        "march_count" => "MARCH_COUNT",
        "march_scan" => "MARCH_SCAN",
        "march_write" => "MARCH_WRITE",
        "prune_count" => "PRUNE_COUNT",
        "prune_write" => "PRUNE_WRITE",
        "composite" => "COMPOSITE",
        "composite_backward" => "COMPOSITE_BACKWARD",
        "regularisers" => "REGULARISERS",
        "occupancy_points" => "OCCUPANCY_POINTS",
        _ => "OCCUPANCY_UPDATE",
    }
}

/// Every variant this family dispatches (for validation).
pub fn variants(_caps: Caps) -> Vec<KernelKey> {
    ENTRIES.iter().map(|e| key(e)).collect()
}

fn expect_rays(op: &'static str, rays: &Tensor) -> Result<usize> {
    if rays.dtype() != DType::F32 || rays.rank() != 2 || rays.dim(1) != RAY_FLOATS {
        return Err(Error::shape(op, format!("rays must be f32 [n, {RAY_FLOATS}], got {rays:?}")));
    }
    Ok(rays.dim(0))
}

fn expect(op: &'static str, what: &str, t: &Tensor, dtype: DType, numel: usize) -> Result<()> {
    if t.dtype() != dtype || t.numel() != numel {
        return Err(Error::shape(op, format!("{what} must be {dtype} with {numel} elements, got {t:?}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Marching.

/// How rays are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarchSpec {
    /// The box [-radius, radius]³.
    pub radius: f32,
    /// Distance between samples.
    pub dt: f32,
    /// Most samples per ray.
    pub max_samples: u32,
    /// Size of the packed sample buffer (all rays together).
    pub capacity: usize,
    /// Occupancy cells per axis.
    pub occupancy_resolution: u32,
    /// Jitter each ray's samples by a random fraction of `dt` (else mid-steps).
    pub stratified: bool,
    /// Seed of the jitter (vary it per step).
    pub seed: u32,
}

crate::kernel_params! {
    struct MarchParams {
        n_rays: u32,
        max_samples: u32,
        capacity: u32,
        occ_res: u32,
        radius: f32,
        dt: f32,
        seed: u32,
        stratified: u32,
    }
}

/// The packed samples of a set of rays.
#[derive(Clone, Debug)]
pub struct Marched {
    /// u32 `[rays, 2]`: (offset, count) of each ray's samples.
    pub ranges: Tensor,
    /// f32 `[capacity, 4]`: (x, y, z, t) of each sample; the first `info[0]` are valid.
    pub samples: Tensor,
    /// u32 `[4]`: samples kept, samples wanted, rays with opacity > 0 (after
    /// compositing), samples marched (before [`prune_occluded`]).
    pub info: Tensor,
}

/// `info` read back (for logs and tests; a readback, so not every step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarchInfo {
    /// Samples in the buffer (what the field evaluates).
    pub samples: u32,
    /// Samples the rays wanted: more than `samples` when some were dropped
    /// for lack of capacity (pruned samples are not counted).
    pub requested: u32,
    pub foreground_rays: u32,
    /// Samples marched, before pruning the occluded ones.
    pub marched: u32,
}

impl MarchInfo {
    pub fn read(gpu: &Gpu, m: &Marched) -> Result<MarchInfo> {
        let v = gpu.download_u32(&m.info)?;
        Ok(MarchInfo { samples: v[0], requested: v[1], foreground_rays: v[2], marched: v[3] })
    }
    /// True when samples were dropped for lack of capacity.
    pub fn overflowed(&self) -> bool {
        self.requested > self.samples
    }
}

/// Samples `rays` (f32 `[n, 8]`) inside the box where `occupancy_bits`
/// (u32, one bit per cell of an `occupancy_resolution`³ grid) is set.
pub fn march(gpu: &Gpu, rays: &Tensor, occupancy_bits: &Tensor, spec: &MarchSpec) -> Result<Marched> {
    const OP: &str = "render.march";
    let n = expect_rays(OP, rays)?;
    let res = spec.occupancy_resolution as usize;
    expect(OP, "occupancy bits", occupancy_bits, DType::U32, (res * res * res).div_ceil(32))?;
    if !(spec.radius > 0.0 && spec.dt > 0.0) || spec.max_samples == 0 || spec.capacity == 0 || res == 0 {
        return Err(Error::Invalid(format!("render.march: bad spec {spec:?}")));
    }
    if spec.capacity > u32::MAX as usize / 2 {
        return Err(Error::Invalid(format!("render.march: capacity {} too large", spec.capacity)));
    }
    let p = MarchParams {
        n_rays: n as u32,
        max_samples: spec.max_samples,
        capacity: spec.capacity as u32,
        occ_res: spec.occupancy_resolution,
        radius: spec.radius,
        dt: spec.dt,
        seed: spec.seed,
        stratified: spec.stratified as u32,
    };
    let ranges = gpu.empty(&[n, 2], DType::U32)?;
    let samples = gpu.empty(&[spec.capacity, 4], DType::F32)?;
    let info = gpu.empty(&[4], DType::U32)?;
    let pb = &p;
    gpu.dispatch("render.march_count", &key("march_count"), pb, &[rays, occupancy_bits, &ranges], grid_for(gpu, n, WG))?;
    gpu.dispatch("render.march_scan", &key("march_scan"), pb, &[&ranges, &info], [1, 1, 1])?;
    gpu.dispatch("render.march_write", &key("march_write"), pb, &[rays, occupancy_bits, &ranges, &samples], grid_for(gpu, n, WG))?;
    Ok(Marched { ranges, samples, info })
}

crate::kernel_params! {
    struct PruneParams {
        n_rays: u32,
        _pad0: u32,
        dt: f32,
        early_stop: f32,
    }
}

/// The samples of `marched` that compositing reaches, given σ alone at each
/// (f32 `[capacity]` or `[capacity, 1]`, e.g. [`crate::ops::hashgrid::field_density`]
/// over the samples): each ray keeps its samples while the transmittance
/// before them is at least `early_stop`, the rule of [`composite`]'s loop,
/// so rendering the kept samples gives the same images and gradients with
/// less of the field evaluated (nerfacc's `sigma_fn` with `early_stop_eps`).
/// Records only; the new `info` keeps the march's overflow and its count.
pub fn prune_occluded(gpu: &Gpu, marched: &Marched, sigma: &Tensor, dt: f32, early_stop: f32) -> Result<Marched> {
    const OP: &str = "render.prune_occluded";
    let n = marched.ranges.numel() / 2;
    let cap = marched.samples.dim(0);
    expect(OP, "sigma", sigma, DType::F32, cap)?;
    // Written so that NaN fails too.
    let valid = dt > 0.0 && early_stop >= 0.0;
    if !valid {
        return Err(Error::Invalid(format!("{OP}: dt {dt} must be positive and early_stop {early_stop} not negative")));
    }
    let p = PruneParams { n_rays: n as u32, dt, early_stop, ..Default::default() };
    // The scan only needs the ray count and the capacity.
    let scan = MarchParams { n_rays: n as u32, capacity: cap as u32, ..Default::default() };
    let kept = gpu.empty(&[n, 2], DType::U32)?;
    let samples = gpu.empty(&[cap, 4], DType::F32)?;
    let info = gpu.empty(&[4], DType::U32)?;
    gpu.dispatch("render.prune_count", &key("prune_count"), &p, &[&marched.ranges, sigma, &kept], grid_for(gpu, n, WG))?;
    gpu.dispatch("render.march_scan", &key("march_scan"), &scan, &[&kept, &info], [1, 1, 1])?;
    gpu.dispatch(
        "render.prune_write",
        &key("prune_write"),
        &p,
        &[&marched.ranges, &kept, &marched.samples, &samples, &marched.info, &info],
        grid_for(gpu, n, WG),
    )?;
    Ok(Marched { ranges: kept, samples, info })
}

// ---------------------------------------------------------------------------
// Compositing.

/// How samples are coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shading {
    /// The albedo itself (threestudio's "albedo", used for its ambient-only steps).
    Albedo,
    /// albedo·(ambient + diffuse·max(0, n·l)).
    Diffuse,
    /// The diffuse light term alone (white albedo).
    Textureless,
}

impl Shading {
    fn code(self) -> u32 {
        match self {
            Shading::Albedo => 0,
            Shading::Diffuse => 1,
            Shading::Textureless => 2,
        }
    }
    /// Whether the shading uses normals.
    pub fn needs_normals(self) -> bool {
        self != Shading::Albedo
    }
}

/// The background behind the samples.
#[derive(Clone, Copy, Debug)]
pub enum Background<'a> {
    Solid([f32; 3]),
    /// Per ray, f32 `[rays, 3]` (the background MLP's output).
    PerRay(&'a Tensor),
}

/// Everything compositing needs besides the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CompositeSpec {
    /// Pixels per view (H·W); rays are view-major.
    pub rays_per_view: usize,
    /// Light position of each view.
    pub lights: Vec<[f32; 3]>,
    pub shading: Shading,
    pub ambient: f32,
    pub diffuse: f32,
    /// The sample spacing (as marched).
    pub dt: f32,
    /// Density carries the normals' gradient: K = 4 values per sample (σ,
    /// ∇σ) for analytic normals, 7 rows (σ and its ±eps neighbours) for
    /// finite differences; else K = 1.
    pub normals: bool,
    pub normal_kind: NormalKind,
    /// Finite-difference offset of those rows.
    pub normal_eps: f32,
    /// Stop a ray once its transmittance is below this.
    pub early_stop: f32,
    /// Write the normal image.
    pub normal_image: bool,
}

/// Weights of the regularisers whose gradients the compositing backward adds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RegulariserWeights {
    /// Σ w·max(0, n·d)² / (rays with opacity > 0), w treated as constant.
    pub orientation: f32,
    /// mean √(opacity² + 0.01).
    pub sparsity: f32,
    /// mean opacity entropy −(o log o + (1−o) log(1−o)), o clamped to [1e-3, 1−1e-3].
    pub opaque: f32,
}

crate::kernel_params! {
    struct CompositeParams {
        n_rays: u32,
        rays_per_view: u32,
        k: u32,
        shading: u32,
        bg_tensor: u32,
        has_d_opacity: u32,
        want_normals: u32,
        _pad0: u32,
        dt: f32,
        normal_eps: f32,
        ambient: f32,
        diffuse: f32,
        early_stop: f32,
        lambda_orient: f32,
        lambda_sparsity: f32,
        lambda_opaque: f32,
        bg_color: [f32; 4],
        lights: [[f32; 4]; MAX_VIEWS],
    }
}

/// The images of a render, NCHW: `[views, C, H, W]` (H·W = rays per view).
#[derive(Clone, Debug)]
pub struct Composited {
    /// `[views, 3, H, W]`, background included.
    pub rgb: Tensor,
    /// `[views, 1, H, W]`: Σ w.
    pub opacity: Tensor,
    /// `[views, 1, H, W]`: Σ w·t (divide by opacity for the expected depth).
    pub depth: Tensor,
    /// `[views, 3, H, W]`: Σ w·n (when asked for).
    pub normal: Option<Tensor>,
    /// `[rays]`: Σ w·max(0, n·d)², the orientation loss per ray.
    pub orient: Tensor,
}

impl CompositeSpec {
    fn check(&self, op: &'static str, n_rays: usize) -> Result<(usize, u32)> {
        if self.rays_per_view == 0 || !n_rays.is_multiple_of(self.rays_per_view) {
            return Err(Error::shape(op, format!("{n_rays} rays are not whole views of {} pixels", self.rays_per_view)));
        }
        let views = n_rays / self.rays_per_view;
        if views != self.lights.len() || views > MAX_VIEWS {
            return Err(Error::shape(op, format!("{views} views with {} lights (at most {MAX_VIEWS} views)", self.lights.len())));
        }
        if (self.shading.needs_normals() || self.normal_image) && !self.normals {
            return Err(Error::Invalid(format!("{op}: {:?} shading / the normal image needs the normal rows (normals: true)", self.shading)));
        }
        if !(self.dt > 0.0 && self.normal_eps > 0.0) {
            return Err(Error::Invalid(format!("{op}: dt {} and normal eps {} must be positive", self.dt, self.normal_eps)));
        }
        Ok((views, if self.normals { self.normal_kind.values_per_point() } else { 1 }))
    }

    fn params(&self, n_rays: usize, k: u32, bg: &Background<'_>) -> CompositeParams {
        let mut p = CompositeParams {
            n_rays: n_rays as u32,
            rays_per_view: self.rays_per_view as u32,
            k,
            shading: self.shading.code(),
            want_normals: self.normal_image as u32,
            dt: self.dt,
            normal_eps: self.normal_eps,
            ambient: self.ambient,
            diffuse: self.diffuse,
            early_stop: self.early_stop,
            ..Default::default()
        };
        match bg {
            Background::Solid(c) => p.bg_color = [c[0], c[1], c[2], 0.0],
            Background::PerRay(_) => p.bg_tensor = 1,
        }
        for (i, l) in self.lights.iter().enumerate() {
            p.lights[i] = [l[0], l[1], l[2], 0.0];
        }
        p
    }
}

fn check_samples(op: &'static str, m: &Marched, n_rays: usize, density: &Tensor, albedo: &Tensor, k: u32) -> Result<()> {
    let cap = m.samples.dim(0);
    expect(op, "ranges", &m.ranges, DType::U32, n_rays * 2)?;
    expect(op, "density", density, DType::F32, cap * k as usize)?;
    expect(op, "albedo", albedo, DType::F32, cap * 3)
}

fn background_tensor(gpu: &Gpu, op: &'static str, bg: &Background<'_>, n_rays: usize) -> Result<Tensor> {
    match bg {
        Background::PerRay(t) => {
            expect(op, "background", t, DType::F32, n_rays * 3)?;
            Ok((*t).clone())
        }
        // Not read: a placeholder for the binding.
        Background::Solid(_) => gpu.empty(&[1], DType::F32),
    }
}

/// Composites the marched samples front to back (see the shader's notes):
/// `density` `[capacity, K]` and `albedo` `[capacity, 3]` from the field.
pub fn composite(
    gpu: &Gpu,
    rays: &Tensor,
    marched: &Marched,
    density: &Tensor,
    albedo: &Tensor,
    background: Background<'_>,
    spec: &CompositeSpec,
) -> Result<Composited> {
    const OP: &str = "render.composite";
    let n = expect_rays(OP, rays)?;
    let (views, k) = spec.check(OP, n)?;
    check_samples(OP, marched, n, density, albedo, k)?;
    let bg = background_tensor(gpu, OP, &background, n)?;
    let hw = spec.rays_per_view;
    let rgb = gpu.empty(&[views, 3, hw], DType::F32)?;
    let opacity = gpu.empty(&[views, 1, hw], DType::F32)?;
    let depth = gpu.empty(&[views, 1, hw], DType::F32)?;
    let normal = if spec.normal_image { gpu.empty(&[views, 3, hw], DType::F32)? } else { gpu.empty(&[1], DType::F32)? };
    let orient = gpu.empty(&[n], DType::F32)?;
    let p = spec.params(n, k, &background);
    gpu.dispatch(
        OP,
        &key("composite"),
        &p,
        &[rays, &marched.ranges, &marched.samples, density, albedo, &bg, &rgb, &opacity, &depth, &normal, &orient, &marched.info],
        grid_for(gpu, n, WG),
    )?;
    Ok(Composited { rgb, opacity, depth, normal: spec.normal_image.then_some(normal), orient })
}

/// Gradients flowing out of the compositing.
#[derive(Clone, Debug)]
pub struct CompositeGrads {
    /// `[capacity, K]`: dL/dσ of every density row (valid samples only).
    pub density: Tensor,
    /// `[capacity, 3]`: dL/dalbedo.
    pub albedo: Tensor,
    /// `[rays, 3]`: dL/dbackground, with a per-ray background.
    pub background: Option<Tensor>,
}

/// Backward of [`composite`] for dL/drgb `[views, 3, H, W]` and optionally
/// dL/dopacity `[views, 1, H, W]`, plus the regularisers' gradients.
#[allow(clippy::too_many_arguments)]
pub fn composite_backward(
    gpu: &Gpu,
    rays: &Tensor,
    marched: &Marched,
    density: &Tensor,
    albedo: &Tensor,
    background: Background<'_>,
    spec: &CompositeSpec,
    out: &Composited,
    d_rgb: &Tensor,
    d_opacity: Option<&Tensor>,
    reg: &RegulariserWeights,
) -> Result<CompositeGrads> {
    const OP: &str = "render.composite_backward";
    let n = expect_rays(OP, rays)?;
    let (_, k) = spec.check(OP, n)?;
    check_samples(OP, marched, n, density, albedo, k)?;
    expect(OP, "d_rgb", d_rgb, DType::F32, n * 3)?;
    let d_op = match d_opacity {
        Some(t) => {
            expect(OP, "d_opacity", t, DType::F32, n)?;
            t.clone()
        }
        None => gpu.empty(&[1], DType::F32)?,
    };
    if reg.orientation != 0.0 && !spec.normals {
        return Err(Error::Invalid(format!("{OP}: the orientation loss needs the normal rows (normals: true)")));
    }
    let bg = background_tensor(gpu, OP, &background, n)?;
    let cap = marched.samples.dim(0);
    let d_density = gpu.empty(&[cap, k as usize], DType::F32)?;
    let d_albedo = gpu.empty(&[cap, 3], DType::F32)?;
    let per_ray = matches!(background, Background::PerRay(_));
    let d_bg = if per_ray { gpu.empty(&[n, 3], DType::F32)? } else { gpu.empty(&[1], DType::F32)? };
    let mut p = spec.params(n, k, &background);
    p.has_d_opacity = d_opacity.is_some() as u32;
    p.lambda_orient = reg.orientation;
    p.lambda_sparsity = reg.sparsity / n as f32;
    p.lambda_opaque = reg.opaque / n as f32;
    gpu.dispatch(
        OP,
        &key("composite_backward"),
        &p,
        &[
            rays,
            &marched.ranges,
            &marched.samples,
            density,
            albedo,
            &bg,
            &out.rgb,
            &out.opacity,
            d_rgb,
            &d_op,
            &marched.info,
            &d_density,
            &d_albedo,
            &d_bg,
        ],
        grid_for(gpu, n, WG),
    )?;
    Ok(CompositeGrads { density: d_density, albedo: d_albedo, background: per_ray.then_some(d_bg) })
}

/// f32 `[4]`: orientation loss (Σ over rays / foreground rays), sparsity,
/// opacity entropy, foreground rays; unweighted. For logs.
pub fn regulariser_values(gpu: &Gpu, marched: &Marched, out: &Composited) -> Result<Tensor> {
    let n = out.orient.numel();
    let values = gpu.empty(&[4], DType::F32)?;
    let p = CompositeParams { n_rays: n as u32, ..Default::default() };
    gpu.dispatch(
        "render.regularisers",
        &key("regularisers"),
        &p,
        &[&out.opacity, &out.orient, &marched.info, &values],
        [1, 1, 1],
    )?;
    Ok(values)
}

// ---------------------------------------------------------------------------
// Occupancy grid.

crate::kernel_params! {
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
}

/// Words of the bitfield of a `res`³ occupancy grid.
pub fn occupancy_words(res: u32) -> usize {
    (res as usize).pow(3).div_ceil(32)
}

/// One point per cell of the `res`³ grid over [-radius, radius]³, uniformly
/// jittered inside its cell: f32 `[res³, 3]`, cell index x + y·res + z·res².
pub fn occupancy_points(gpu: &Gpu, res: u32, radius: f32, seed: u32) -> Result<Tensor> {
    if res == 0 || res > 512 || radius.is_nan() || radius <= 0.0 {
        return Err(Error::Invalid(format!("occupancy grid: resolution {res} (1..=512), radius {radius} (> 0)")));
    }
    let cells = (res as usize).pow(3);
    let points = gpu.empty(&[cells, 3], DType::F32)?;
    let p = OccupancyParams { cells: cells as u32, res, words: occupancy_words(res) as u32, seed, radius, decay: 0.0, dt: 0.0, threshold: 0.0 };
    gpu.dispatch("render.occupancy_points", &key("occupancy_points"), &p, &[&points], grid_for(gpu, cells, WG))?;
    Ok(points)
}

#[allow(clippy::too_many_arguments)]
/// `occ = max(occ·decay, density·dt)` per cell, then the bits where
/// `occ > min(mean occ, threshold)`.
pub fn occupancy_update(gpu: &Gpu, density: &Tensor, occ: &Tensor, bits: &Tensor, res: u32, decay: f32, dt: f32, threshold: f32) -> Result<()> {
    const OP: &str = "render.occupancy_update";
    let cells = (res as usize).pow(3);
    expect(OP, "density", density, DType::F32, cells)?;
    expect(OP, "occupancy", occ, DType::F32, cells)?;
    expect(OP, "occupancy bits", bits, DType::U32, occupancy_words(res))?;
    let p = OccupancyParams { cells: cells as u32, res, words: occupancy_words(res) as u32, seed: 0, radius: 0.0, decay, dt, threshold };
    gpu.dispatch(OP, &key("occupancy_update"), &p, &[density, occ, bits], [1, 1, 1])
}
