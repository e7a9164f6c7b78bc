//! Triangle meshes from density grids: marching cubes and the extraction of a
//! trained scene's surface.
//!
//! **Marching cubes.** The case table (what triangles each of the 256 inside /
//! outside patterns of a cell's corners gets) is not typed in: it is derived
//! once, on first use, from one rule per cube face. On each face the surface
//! crosses the edges whose corners differ; the crossings are joined into
//! segments, and on an *ambiguous* face (two inside corners diagonally
//! opposite) the inside corners are kept apart (the face centre counts as
//! outside). Because the rule looks at one face only, the two cells sharing a
//! face draw the same segments on it, so the surface is watertight. The
//! segments of a cell link up into closed loops, each loop one polygon.
//! Segments are directed so that, seen from outside the cell, the inside
//! corner lies to the right; neighbouring cells then run a shared segment in
//! opposite directions, which makes the winding consistent and, for a field
//! that is larger inside, counter-clockwise seen from outside (outward).
//!
//! A polygon becomes a fan of triangles from one of its corners, chosen so
//! that no diagonal of the fan joins two crossings on one cube face (such a
//! diagonal could be drawn by the neighbouring cell as well and would then
//! belong to four triangles; every polygon of the 256 cases has such a
//! corner). Every mesh edge is then either a face segment (one triangle on
//! each side of the face) or inside one cell (two triangles of the same
//! polygon): each edge of a closed surface belongs to exactly two triangles.
//!
//! Vertices are shared per grid edge (one vertex per crossed edge, whatever
//! cells use it), placed by linear interpolation of the values, with normals
//! from the interpolated central-difference gradient of the grid (pointing to
//! lower values: outward for a density).
//!
//! **Extraction** ([`extract_mesh`]) samples the scene's density on the GPU:
//! a coarse grid over the whole scene box finds where the density exceeds the
//! threshold; the fine grid covers that region with a margin. The outer layer
//! of the fine grid counts as empty, so the mesh is closed even where the
//! object touches the scene box. Vertex colours are the field's albedo at
//! the vertices (display values in [0, 1], as the renderer shows them).
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::scene::Scene;

/// A triangle mesh in the scene's frame (z-up; the writers convert).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mesh {
    /// Vertex positions, world units.
    pub positions: Vec<[f32; 3]>,
    /// Unit vertex normals, pointing outward (one per position).
    pub normals: Vec<[f32; 3]>,
    /// Vertex colours in [0, 1] (display values): one per position, or empty
    /// for an uncoloured mesh ([`marching_cubes`] leaves them empty,
    /// [`extract_mesh`] fills them).
    pub colors: Vec<[f32; 3]>,
    /// Triangles, three vertex indices each, counter-clockwise seen from outside.
    pub indices: Vec<u32>,
}

impl Mesh {
    pub fn vertex_count(&self) -> usize {
        self.positions.len()
    }
    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }
    /// No triangles.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The axis-aligned box (min, max) around the vertices, `None` without vertices.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.positions.first()?;
        Some(self.positions.iter().fold((first, first), |(lo, hi), p| {
            (std::array::from_fn(|a| lo[a].min(p[a])), std::array::from_fn(|a| hi[a].max(p[a])))
        }))
    }

    /// Checks that the arrays fit together (writers call this): normals and
    /// colours one per vertex (colours may be absent), whole triangles,
    /// indices in range, finite numbers.
    pub fn validate(&self) -> Result<()> {
        let n = self.positions.len();
        let bad = |what: String| Err(Error::Invalid(format!("mesh: {what}")));
        if self.normals.len() != n && !self.normals.is_empty() {
            return bad(format!("{} normals for {n} vertices (expected one per vertex, or none)", self.normals.len()));
        }
        if self.colors.len() != n && !self.colors.is_empty() {
            return bad(format!("{} colours for {n} vertices (expected one per vertex, or none)", self.colors.len()));
        }
        if !self.indices.len().is_multiple_of(3) {
            return bad(format!("{} indices is not a whole number of triangles", self.indices.len()));
        }
        if let Some(i) = self.indices.iter().find(|&&i| i as usize >= n) {
            return bad(format!("index {i} out of range for {n} vertices"));
        }
        let finite = |v: &[[f32; 3]]| v.iter().all(|p| p.iter().all(|x| x.is_finite()));
        if !finite(&self.positions) || !finite(&self.normals) || !finite(&self.colors) {
            return bad("non-finite position, normal or colour".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The unit cube and the case table.

/// Corner `c` of a cell sits at offset `(c & 1, c >> 1 & 1, c >> 2 & 1)`.
fn corner_offset(c: usize) -> [usize; 3] {
    [c & 1, (c >> 1) & 1, (c >> 2) & 1]
}

/// The 12 cell edges as (low corner, axis): edge runs from `corner` to `corner | 1 << axis`.
fn cube_edges() -> [(usize, usize); 12] {
    let mut edges = [(0, 0); 12];
    let mut n = 0;
    for axis in 0..3 {
        for c in (0..8).filter(|c| (c >> axis) & 1 == 0) {
            edges[n] = (c, axis);
            n += 1;
        }
    }
    edges
}

/// The edge joining two corners that differ in one bit.
fn edge_between(a: usize, b: usize) -> usize {
    let (lo, axis) = (a.min(b), (a ^ b).trailing_zeros() as usize);
    cube_edges().iter().position(|&e| e == (lo, axis)).expect("corners differ in one bit")
}

/// A cell face: its four corners in cyclic order and the outward axis direction.
struct Face {
    corners: [usize; 4],
    normal: [f32; 3],
}

fn cube_faces() -> Vec<Face> {
    let mut faces = Vec::with_capacity(6);
    for axis in 0..3 {
        let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
        for side in 0..2 {
            let base = side << axis;
            let corners = [base, base | 1 << u, base | 1 << u | 1 << v, base | 1 << v];
            let mut normal = [0.0; 3];
            normal[axis] = if side == 1 { 1.0 } else { -1.0 };
            faces.push(Face { corners, normal });
        }
    }
    faces
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// One polygon of a case: crossed cell edges in loop order, starting at the
/// fan apex: its triangles are (p[0], p[i], p[i+1]).
type Polygon = Vec<u8>;

/// The polygons of each of the 256 corner patterns (bit c set = corner c inside).
fn case_table() -> &'static [Vec<Polygon>] {
    static TABLE: OnceLock<Vec<Vec<Polygon>>> = OnceLock::new();
    TABLE.get_or_init(|| (0..256).map(case_polygons).collect())
}

/// The directed face segments of one corner pattern, linked into loops.
fn case_polygons(mask: usize) -> Vec<Polygon> {
    let inside = |c: usize| (mask >> c) & 1 == 1;
    let corner_pos = |c: usize| corner_offset(c).map(|x| x as f32);
    let edges = cube_edges();
    let midpoint = |e: usize| {
        let (c, axis) = edges[e];
        let mut p = corner_pos(c);
        p[axis] += 0.5;
        p
    };
    let faces = cube_faces();
    // next[e] = the crossed edge the loop visits after e.
    let mut next: [Option<usize>; 12] = [None; 12];
    for f in &faces {
        let k = &f.corners;
        let side = |i: usize| edge_between(k[i % 4], k[(i + 1) % 4]);
        let cut: Vec<usize> = (0..4).filter(|&i| inside(k[i]) != inside(k[(i + 1) % 4])).collect();
        // (edge, edge, an inside corner on the far side of the segment).
        let segments: Vec<(usize, usize, usize)> = match cut.len() {
            0 => vec![],
            2 => {
                let inner = *k.iter().find(|&&c| inside(c)).expect("a cut face has an inside corner");
                vec![(side(cut[0]), side(cut[1]), inner)]
            }
            // Ambiguous face: each inside corner is cut off on its own.
            _ => (0..4).filter(|&i| inside(k[i])).map(|i| (side(i + 3), side(i), k[i])).collect(),
        };
        for (a, b, inner) in segments {
            let (pa, pb) = (midpoint(a), midpoint(b));
            // Seen from outside the cell the inside corner is to the right of a → b.
            let turn = dot(cross(sub(pb, pa), sub(corner_pos(inner), pa)), f.normal);
            let (from, to) = if turn < 0.0 { (a, b) } else { (b, a) };
            assert!(next[from].is_none(), "marching cubes table: edge {from} leaves twice in case {mask}");
            next[from] = Some(to);
        }
    }
    let shares_face = |a: usize, b: usize| {
        faces.iter().any(|f| {
            let on = |e: usize| (0..4).any(|i| edge_between(f.corners[i], f.corners[(i + 1) % 4]) == e);
            on(a) && on(b)
        })
    };
    let mut seen = [false; 12];
    let mut polygons = Vec::new();
    for start in 0..12 {
        if seen[start] || next[start].is_none() {
            continue;
        }
        let mut lp = Vec::new();
        let mut e = start;
        while !seen[e] {
            seen[e] = true;
            lp.push(e);
            e = next[e].expect("marching cubes table: a loop is open");
        }
        assert_eq!(e, start, "marching cubes table: loop does not close in case {mask}");
        // A fan apex none of whose diagonals joins two edges of one face.
        let n = lp.len();
        let apex = (0..n)
            .find(|&i| (2..n - 1).all(|d| !shares_face(lp[i], lp[(i + d) % n])))
            .expect("marching cubes table: every polygon has a fan apex off the shared faces");
        lp.rotate_left(apex);
        polygons.push(lp.into_iter().map(|e| e as u8).collect());
    }
    polygons
}

// ---------------------------------------------------------------------------
// Marching cubes.

/// The triangle mesh of the surface where `values` crosses `iso`.
///
/// `values` are samples on a regular grid of `dims` = [nx, ny, nz] points, x
/// fastest (`values[x + nx·(y + ny·z)]`), point (0,0,0) at `bbox_min` and
/// (nx−1, ny−1, nz−1) at `bbox_max`. Inside is `value > iso` (as for a
/// density); non-finite values count as outside. A surface that reaches the
/// edge of the grid is left open there; surround the region with samples
/// below `iso` for a closed mesh. No crossing gives an empty mesh. Colours
/// are left empty.
pub fn marching_cubes(values: &[f32], dims: [usize; 3], bbox_min: [f32; 3], bbox_max: [f32; 3], iso: f32) -> Result<Mesh> {
    const OP: &str = "marching_cubes";
    let [nx, ny, nz] = dims;
    if dims.iter().any(|&d| d < 2) {
        return Err(Error::shape(OP, format!("grid dims {dims:?}: need at least 2 samples along each axis")));
    }
    let count = nx.checked_mul(ny).and_then(|v| v.checked_mul(nz));
    if count != Some(values.len()) {
        return Err(Error::shape(OP, format!("{} values for a grid of {dims:?} points (expected nx·ny·nz, x fastest)", values.len())));
    }
    if (0..3).any(|a| !(bbox_min[a].is_finite() && bbox_max[a].is_finite() && bbox_max[a] > bbox_min[a])) {
        return Err(Error::Invalid(format!("{OP}: box {bbox_min:?}..{bbox_max:?} must be finite with max > min on every axis")));
    }
    if !iso.is_finite() {
        return Err(Error::Invalid(format!("{OP}: iso value {iso} must be finite")));
    }
    let spacing = std::array::from_fn(|a| (bbox_max[a] - bbox_min[a]) / (dims[a] - 1) as f32);
    let grid = Grid { values, dims, origin: bbox_min, spacing };
    let table = case_table();
    let edges = cube_edges();
    let mut builder = Builder { grid: &grid, iso, mesh: Mesh::default(), vertex_of_edge: HashMap::new(), needs_face_normal: Vec::new() };
    let inside = |v: f32| v > iso;
    for z in 0..nz - 1 {
        for y in 0..ny - 1 {
            for x in 0..nx - 1 {
                let mut mask = 0usize;
                for c in 0..8 {
                    let o = corner_offset(c);
                    if inside(grid.value([x + o[0], y + o[1], z + o[2]])) {
                        mask |= 1 << c;
                    }
                }
                for poly in &table[mask] {
                    let mut ids = [0u32; 12];
                    for (id, &e) in ids.iter_mut().zip(poly) {
                        let (c, axis) = edges[e as usize];
                        let o = corner_offset(c);
                        *id = builder.edge_vertex([x + o[0], y + o[1], z + o[2]], axis);
                    }
                    builder.fan(&ids[..poly.len()]);
                }
            }
        }
    }
    builder.fill_missing_normals();
    Ok(builder.mesh)
}

/// The sampled grid and its world placement.
struct Grid<'a> {
    values: &'a [f32],
    dims: [usize; 3],
    origin: [f32; 3],
    spacing: [f32; 3],
}

impl Grid<'_> {
    fn index(&self, p: [usize; 3]) -> usize {
        p[0] + self.dims[0] * (p[1] + self.dims[1] * p[2])
    }
    fn value(&self, p: [usize; 3]) -> f32 {
        self.values[self.index(p)]
    }
    fn position(&self, p: [usize; 3]) -> [f32; 3] {
        std::array::from_fn(|a| self.origin[a] + p[a] as f32 * self.spacing[a])
    }
    /// World-space gradient at a grid point: central differences inside, one-sided at the border.
    fn gradient(&self, p: [usize; 3]) -> [f32; 3] {
        std::array::from_fn(|a| {
            let (mut lo, mut hi) = (p, p);
            lo[a] = p[a].saturating_sub(1);
            hi[a] = (p[a] + 1).min(self.dims[a] - 1);
            (self.value(hi) - self.value(lo)) / ((hi[a] - lo[a]) as f32 * self.spacing[a])
        })
    }
}

/// Accumulates the mesh: welded edge vertices and triangles.
struct Builder<'a> {
    grid: &'a Grid<'a>,
    iso: f32,
    mesh: Mesh,
    /// Vertex of each crossed grid edge, keyed `3·(low point index) + axis`.
    vertex_of_edge: HashMap<usize, u32>,
    /// Vertices whose gradient vanished: normals from the triangles instead.
    needs_face_normal: Vec<u32>,
}

impl Builder<'_> {
    /// The vertex on the grid edge from point `p` along `axis` (made on first use).
    fn edge_vertex(&mut self, p: [usize; 3], axis: usize) -> u32 {
        let key = 3 * self.grid.index(p) + axis;
        if let Some(&id) = self.vertex_of_edge.get(&key) {
            return id;
        }
        let mut q = p;
        q[axis] += 1;
        let (v0, v1) = (self.grid.value(p), self.grid.value(q));
        // A non-finite end (counted as outside) puts the vertex mid-edge.
        let t = (self.iso - v0) / (v1 - v0);
        let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.5 };
        let (a, b) = (self.grid.position(p), self.grid.position(q));
        let (ga, gb) = (self.grid.gradient(p), self.grid.gradient(q));
        let position = std::array::from_fn(|i| a[i] + t * (b[i] - a[i]));
        let gradient: [f32; 3] = std::array::from_fn(|i| ga[i] + t * (gb[i] - ga[i]));
        let id = self.push_vertex(position, gradient.map(|g| -g));
        self.vertex_of_edge.insert(key, id);
        id
    }

    /// Adds a vertex with the (unnormalised) outward direction `dir`.
    fn push_vertex(&mut self, position: [f32; 3], dir: [f32; 3]) -> u32 {
        let id = self.mesh.positions.len() as u32;
        self.mesh.positions.push(position);
        self.mesh.normals.push(match normalize(dir) {
            Some(n) => n,
            None => {
                self.needs_face_normal.push(id);
                [0.0, 0.0, 1.0]
            }
        });
        id
    }

    /// Triangulates one polygon (vertex ids in loop order, apex first) as a fan.
    fn fan(&mut self, ids: &[u32]) {
        for i in 1..ids.len() - 1 {
            self.mesh.indices.extend([ids[0], ids[i], ids[i + 1]]);
        }
    }

    /// Area-weighted triangle normals for the vertices where the gradient vanished.
    fn fill_missing_normals(&mut self) {
        if self.needs_face_normal.is_empty() {
            return;
        }
        let m = &mut self.mesh;
        let mut sum = vec![[0.0f32; 3]; m.positions.len()];
        for t in m.indices.chunks_exact(3) {
            let p: [[f32; 3]; 3] = std::array::from_fn(|k| m.positions[t[k] as usize]);
            let face = cross(sub(p[1], p[0]), sub(p[2], p[0]));
            for &i in t {
                for a in 0..3 {
                    sum[i as usize][a] += face[a];
                }
            }
        }
        for &id in &self.needs_face_normal {
            if let Some(n) = normalize(sum[id as usize]) {
                m.normals[id as usize] = n;
            }
        }
    }
}

fn normalize(v: [f32; 3]) -> Option<[f32; 3]> {
    let len = dot(v, v).sqrt();
    (len.is_finite() && len > 1e-20).then(|| v.map(|x| x / len))
}

// ---------------------------------------------------------------------------
// Extraction from a scene.

/// Points evaluated per GPU dispatch: the albedo and point tensors take 12
/// bytes a point, well inside any binding limit, and the chunk keeps the
/// temporary buffers small.
fn chunk_points(gpu: &Gpu) -> usize {
    ((gpu.max_binding_bytes() / 16) as usize).clamp(1024, 1 << 18)
}

/// Grid points `start..start + n` (x fastest) as a flat `[n, 3]` array.
fn grid_points(origin: [f32; 3], spacing: [f32; 3], dims: [usize; 3], start: usize, n: usize) -> Vec<f32> {
    let mut pts = Vec::with_capacity(3 * n);
    for i in start..start + n {
        let p = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
        pts.extend((0..3).map(|a| origin[a] + p[a] as f32 * spacing[a]));
    }
    pts
}

/// The scene's density at every point of a grid, evaluated in chunks.
fn sample_density(gpu: &Gpu, scene: &Scene, origin: [f32; 3], spacing: [f32; 3], dims: [usize; 3]) -> Result<Vec<f32>> {
    let total = dims.iter().product::<usize>();
    let chunk = chunk_points(gpu);
    let mut out = Vec::with_capacity(total);
    for start in (0..total).step_by(chunk) {
        let n = chunk.min(total - start);
        let pts = gpu.upload(&grid_points(origin, spacing, dims, start, n), &[n, 3], DType::F32)?;
        out.extend(gpu.download(&scene.field.density(gpu, &pts)?)?);
    }
    Ok(out)
}

/// The scene's albedo at `positions`, clamped to [0, 1], evaluated in chunks.
fn sample_albedo(gpu: &Gpu, scene: &Scene, positions: &[[f32; 3]]) -> Result<Vec<[f32; 3]>> {
    let mut out = Vec::with_capacity(positions.len());
    for part in positions.chunks(chunk_points(gpu)) {
        let flat: Vec<f32> = part.iter().flatten().copied().collect();
        let pts = gpu.upload(&flat, &[part.len(), 3], DType::F32)?;
        let (_, albedo) = scene.field.evaluate(gpu, &pts, false)?;
        let rgb = gpu.download(&albedo)?;
        out.extend(rgb.chunks_exact(3).map(|c| [c[0].clamp(0.0, 1.0), c[1].clamp(0.0, 1.0), c[2].clamp(0.0, 1.0)]));
    }
    Ok(out)
}

/// Samples along each axis of the coarse pass for a fine `resolution`.
fn coarse_resolution(resolution: usize) -> usize {
    (resolution / 2).clamp(16, 64)
}

/// The scene's surface at density `threshold` (FSD_SPEC §5: 128 samples
/// along the longest side, threshold 25), with vertex colours from the albedo.
///
/// A coarse pass over the scene box `[-radius, radius]³` finds the box around
/// the density above `threshold`; the fine grid covers that box plus two
/// coarse cells, with `resolution` samples along its longest side and cells
/// as near to cubes as the box allows. The mesh is always closed (the fine
/// grid's outer layer counts as empty). Errors when no coarse sample exceeds
/// the threshold, saying the largest density seen.
pub fn extract_mesh(gpu: &Gpu, scene: &Scene, resolution: usize, threshold: f32) -> Result<Mesh> {
    const OP: &str = "extract_mesh";
    if !(8..=1024).contains(&resolution) {
        return Err(Error::Invalid(format!(
            "{OP}: resolution {resolution}: expected 8..=1024 samples along the longest side (128 is usual)"
        )));
    }
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(Error::Invalid(format!(
            "{OP}: density threshold {threshold}: expected a positive number (the density is never negative; 25 is usual)"
        )));
    }
    let r = scene.field.spec.radius;

    // Coarse pass over the whole scene box.
    let nc = coarse_resolution(resolution);
    let coarse_step = 2.0 * r / (nc - 1) as f32;
    let coarse_dims = [nc; 3];
    let coarse = sample_density(gpu, scene, [-r; 3], [coarse_step; 3], coarse_dims)?;
    let max_seen = coarse.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let (mut lo, mut hi) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]);
    for (i, _) in coarse.iter().enumerate().filter(|(_, v)| **v > threshold) {
        let p = grid_points([-r; 3], [coarse_step; 3], coarse_dims, i, 1);
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    if lo[0] > hi[0] {
        return Err(Error::Invalid(format!(
            "{OP}: no density above the threshold {threshold} in the scene box [-{r}, {r}]³ (the largest density on a \
             {nc}³ grid is {max_seen:.3}); pass a threshold below {max_seen:.3}, or check that the scene is trained \
             (its checkpoint loaded)"
        )));
    }

    // Fine pass over the occupied box plus a margin, inside the scene box.
    let margin = 2.0 * coarse_step;
    let lo = lo.map(|x| (x - margin).max(-r));
    let hi = hi.map(|x| (x + margin).min(r));
    let longest = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    let cell = longest / (resolution - 1) as f32;
    let dims: [usize; 3] = std::array::from_fn(|a| (((hi[a] - lo[a]) / cell).round() as usize + 1).clamp(2, resolution));
    let spacing: [f32; 3] = std::array::from_fn(|a| (hi[a] - lo[a]) / (dims[a] - 1) as f32);
    let mut values = sample_density(gpu, scene, lo, spacing, dims)?;
    close_border(&mut values, dims);

    let mut mesh = marching_cubes(&values, dims, lo, hi, threshold)?;
    mesh.colors = sample_albedo(gpu, scene, &mesh.positions)?;
    Ok(mesh)
}

/// Sets the outer layer of a grid to zero density, so every surface closes.
fn close_border(values: &mut [f32], dims: [usize; 3]) {
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let p = [x, y, z];
                if (0..3).any(|a| p[a] == 0 || p[a] == dims[a] - 1) {
                    values[x + dims[0] * (y + dims[1] * z)] = 0.0;
                }
            }
        }
    }
}
