//! What a run leaves to look at: marching cubes on analytic fields (every
//! corner pattern, a sphere and a torus on awkward grids, random fields)
//! checked for watertightness, orientation, topology, distance to the true
//! surface, volume and normals; the surface of a real scene; the glb parsed
//! back byte by byte, the OBJ read back, the APNG decoded with the png
//! crate's decoder; grids and the depth / normal / colour pictures pixel by
//! pixel.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fsd3d::export::{self, Mesh, Rgb8};
use fsd3d::scene::{BackgroundConfig, BackgroundKind, FieldConfig, Image, Scene, SceneConfig};

// ---------------------------------------------------------------------------
// Mesh checks, written independently of the library.

/// Asserts the mesh is a closed, consistently oriented surface: every
/// directed edge in exactly one triangle and its reverse in exactly one
/// other (so every edge in exactly two), no repeated vertex in a triangle.
fn assert_watertight(what: &str, m: &Mesh) {
    assert_eq!(m.indices.len() % 3, 0, "{what}: whole triangles");
    let mut directed: HashMap<(u32, u32), usize> = HashMap::new();
    for t in m.indices.chunks_exact(3) {
        assert!(t[0] != t[1] && t[1] != t[2] && t[0] != t[2], "{what}: triangle {t:?} repeats a vertex");
        for k in 0..3 {
            *directed.entry((t[k], t[(k + 1) % 3])).or_default() += 1;
        }
    }
    for (&(a, b), &n) in &directed {
        assert_eq!(n, 1, "{what}: directed edge {a}→{b} in {n} triangles (inconsistent winding or non-manifold)");
        assert_eq!(directed.get(&(b, a)), Some(&1), "{what}: edge {a}–{b} has no opposite triangle (a hole)");
    }
}

/// V − E + F over the vertices the triangles use.
fn euler_characteristic(m: &Mesh) -> i64 {
    let mut verts = std::collections::HashSet::new();
    let mut edges = std::collections::HashSet::new();
    for t in m.indices.chunks_exact(3) {
        for k in 0..3 {
            verts.insert(t[k]);
            let (a, b) = (t[k], t[(k + 1) % 3]);
            edges.insert((a.min(b), a.max(b)));
        }
    }
    verts.len() as i64 - edges.len() as i64 + (m.indices.len() / 3) as i64
}

/// Connected pieces of the surface (triangles sharing vertices).
fn components(m: &Mesh) -> usize {
    let mut parent: Vec<usize> = (0..m.positions.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for t in m.indices.chunks_exact(3) {
        for k in 1..3 {
            let (a, b) = (find(&mut parent, t[0] as usize), find(&mut parent, t[k] as usize));
            parent[a] = b;
        }
    }
    let used: std::collections::HashSet<usize> = m.indices.iter().map(|&i| i as usize).collect();
    used.iter().map(|&i| find(&mut parent, i)).collect::<std::collections::HashSet<_>>().len()
}

/// The volume enclosed (divergence theorem), positive for outward winding.
fn signed_volume(m: &Mesh) -> f64 {
    m.indices
        .chunks_exact(3)
        .map(|t| {
            let p: [[f64; 3]; 3] = std::array::from_fn(|k| m.positions[t[k] as usize].map(f64::from));
            let c = [
                p[1][1] * p[2][2] - p[1][2] * p[2][1],
                p[1][2] * p[2][0] - p[1][0] * p[2][2],
                p[1][0] * p[2][1] - p[1][1] * p[2][0],
            ];
            (p[0][0] * c[0] + p[0][1] * c[1] + p[0][2] * c[2]) / 6.0
        })
        .sum()
}

/// Samples `f` on a grid of `dims` points spanning `lo..hi` (x fastest).
fn sample(dims: [usize; 3], lo: [f32; 3], hi: [f32; 3], f: impl Fn([f32; 3]) -> f32) -> Vec<f32> {
    let mut v = Vec::with_capacity(dims.iter().product());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let i = [x, y, z];
                v.push(f(std::array::from_fn(|a| lo[a] + (hi[a] - lo[a]) * i[a] as f32 / (dims[a] - 1) as f32)));
            }
        }
    }
    v
}

fn cell_size(dims: [usize; 3], lo: [f32; 3], hi: [f32; 3]) -> f32 {
    (0..3).map(|a| (hi[a] - lo[a]) / (dims[a] - 1) as f32).fold(0.0, f32::max)
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn norm(a: [f32; 3]) -> f32 {
    (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt()
}
fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

// ---------------------------------------------------------------------------
// Marching cubes.

#[test]
fn every_corner_pattern_closes_with_the_right_topology() {
    // Each of the 256 patterns on the middle cell of a 4³ grid whose other
    // points are outside: the surface must close, wind outward, and be one
    // sphere per 6-connected group of inside corners (ambiguous faces keep
    // inside corners apart).
    for mask in 1..256usize {
        let mut values = vec![-1.0f32; 64];
        for c in 0..8 {
            let (x, y, z) = (1 + (c & 1), 1 + ((c >> 1) & 1), 1 + ((c >> 2) & 1));
            if (mask >> c) & 1 == 1 {
                values[x + 4 * (y + 4 * z)] = 1.0;
            }
        }
        let m = export::marching_cubes(&values, [4; 3], [0.0; 3], [3.0; 3], 0.0).unwrap();
        let what = format!("pattern {mask:08b}");
        assert_watertight(&what, &m);
        // Groups of inside corners joined along cell edges.
        let mut group: Vec<usize> = (0..8).collect();
        for _ in 0..8 {
            for a in 0..8 {
                for axis in 0..3 {
                    let b = a ^ (1 << axis);
                    if (mask >> a) & 1 == 1 && (mask >> b) & 1 == 1 {
                        let g = group[a].min(group[b]);
                        group[a] = g;
                        group[b] = g;
                    }
                }
            }
        }
        let groups = (0..8).filter(|&c| (mask >> c) & 1 == 1 && group[c] == c).count();
        assert_eq!(components(&m), groups, "{what}: surface pieces");
        assert_eq!(euler_characteristic(&m), 2 * groups as i64, "{what}: each piece a sphere");
        let crossings = (0..64usize)
            .flat_map(|i| (0..3).map(move |a| (i, a)))
            .filter(|&(i, a)| [i % 4, (i / 4) % 4, i / 16][a] < 3 && (values[i] > 0.0) != (values[i + [1, 4, 16][a]] > 0.0))
            .count();
        assert_eq!(m.vertex_count(), crossings, "{what}: one vertex per crossed grid edge");
        let inside = mask.count_ones() as f64;
        let vol = signed_volume(&m);
        // Each inside point owns at most its 8 half-cells (volume 1) and at least its corner tetrahedra.
        assert!(vol > 0.0 && vol <= inside, "{what}: enclosed volume {vol} for {inside} inside points");
    }
}

/// A sphere, off-centre, on a grid with a different size and spacing per axis.
#[test]
fn sphere_is_closed_near_the_surface_with_the_right_volume_and_outward_normals() {
    let (dims, lo, hi) = ([23, 17, 31], [-1.1f32, -0.9, -1.3], [1.2f32, 1.0, 1.05]);
    let (c, r) = ([0.05f32, 0.03, -0.1], 0.8f32);
    // Density-like: larger inside.
    let values = sample(dims, lo, hi, |p| r - norm(sub(p, c)));
    let m = export::marching_cubes(&values, dims, lo, hi, 0.0).unwrap();
    assert!(m.colors.is_empty() && m.normals.len() == m.positions.len());
    assert_watertight("sphere", &m);
    assert_eq!(components(&m), 1);
    assert_eq!(euler_characteristic(&m), 2, "a sphere");
    let h = cell_size(dims, lo, hi);
    for (p, n) in m.positions.iter().zip(&m.normals) {
        let d = sub(*p, c);
        assert!((norm(d) - r).abs() <= h, "vertex {p:?} is {} from the sphere (cell {h})", (norm(d) - r).abs());
        assert!((norm(*n) - 1.0).abs() < 1e-4, "unit normals");
        assert!(dot(*n, d) / norm(d) > 0.95, "normal {n:?} at {p:?} is not radial outward");
    }
    for t in m.indices.chunks_exact(3) {
        let p: [[f32; 3]; 3] = std::array::from_fn(|k| m.positions[t[k] as usize]);
        let (e1, e2) = (sub(p[1], p[0]), sub(p[2], p[0]));
        let face = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]];
        let centroid: [f32; 3] = std::array::from_fn(|a| (p[0][a] + p[1][a] + p[2][a]) / 3.0);
        assert!(dot(face, sub(centroid, c)) >= 0.0, "triangle {t:?} faces inward");
    }
    let want = 4.0 / 3.0 * std::f64::consts::PI * (r as f64).powi(3);
    let got = signed_volume(&m);
    eprintln!("sphere: {} vertices, {} triangles, volume {got:.5} vs {want:.5}", m.vertex_count(), m.triangle_count());
    assert!((got / want - 1.0).abs() < 0.02, "volume {got} vs {want}");
}

#[test]
fn torus_has_genus_one_and_the_right_volume() {
    let (dims, lo, hi) = ([41, 38, 19], [-1.0f32, -0.95, -0.4], [1.0f32, 0.9, 0.42]);
    let (big, small) = (0.6f32, 0.25f32);
    let values = sample(dims, lo, hi, |p| {
        let ring = (p[0] * p[0] + p[1] * p[1]).sqrt() - big;
        small - (ring * ring + p[2] * p[2]).sqrt()
    });
    let m = export::marching_cubes(&values, dims, lo, hi, 0.0).unwrap();
    assert_watertight("torus", &m);
    assert_eq!(components(&m), 1);
    assert_eq!(euler_characteristic(&m), 0, "a torus");
    let h = cell_size(dims, lo, hi);
    for p in &m.positions {
        let ring = (p[0] * p[0] + p[1] * p[1]).sqrt() - big;
        let d = (ring * ring + p[2] * p[2]).sqrt() - small;
        assert!(d.abs() <= h, "vertex {p:?} is {d} from the torus (cell {h})");
    }
    let want = 2.0 * std::f64::consts::PI.powi(2) * big as f64 * (small as f64).powi(2);
    let got = signed_volume(&m);
    eprintln!("torus: {} triangles, volume {got:.5} vs {want:.5}", m.triangle_count());
    assert!((got / want - 1.0).abs() < 0.03, "volume {got} vs {want}");
}

#[test]
fn random_fields_close_and_iso_levels_shift_the_surface() {
    // Noise (every kind of ambiguous face and cell) inside a border of outside points.
    for (seed, dims) in [(1u64, [9usize, 8, 10]), (2, [5, 13, 7]), (3, [12, 12, 3])] {
        let noise = common::rand_vec(seed, dims.iter().product(), -1.0, 1.0);
        let values: Vec<f32> = (0..noise.len())
            .map(|i| {
                let p = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
                if (0..3).any(|a| p[a] == 0 || p[a] == dims[a] - 1) { -1.0 } else { noise[i] }
            })
            .collect();
        let m = export::marching_cubes(&values, dims, [-1.0; 3], [1.0, 2.0, 0.5], 0.1).unwrap();
        assert!(!m.is_empty(), "seed {seed}: noise crosses the iso level");
        assert_watertight(&format!("noise {seed}"), &m);
        assert!(signed_volume(&m) > 0.0, "seed {seed}: outward winding encloses positive volume");
        m.validate().unwrap();
    }
    // A non-finite sample counts as outside (a hole in a ball: still closed),
    // and its neighbours' vanished gradients get normals from the triangles.
    let dims = [7, 7, 7];
    let mut values = sample(dims, [-1.0; 3], [1.0; 3], |p| 0.9 - norm(p));
    values[3 + 7 * (3 + 7 * 3)] = f32::NAN;
    let m = export::marching_cubes(&values, dims, [-1.0; 3], [1.0; 3], 0.0).unwrap();
    assert_watertight("ball with a NaN centre", &m);
    assert_eq!(components(&m), 2, "outer sphere and the cavity around the NaN");
    assert!(m.normals.iter().all(|n| (norm(*n) - 1.0).abs() < 1e-4), "unit normals everywhere");
    for (p, n) in m.positions.iter().zip(&m.normals).filter(|(p, _)| norm(**p) < 0.5) {
        assert!(dot(*n, *p) < 0.0, "cavity normal {n:?} at {p:?} points into the hole");
    }
    m.validate().unwrap();

    // The iso level is where the surface sits: a linear ramp along x crosses at x = iso.
    let dims = [7, 4, 5];
    let values = sample(dims, [0.0; 3], [6.0, 3.0, 4.0], |p| -p[0]);
    for iso in [-0.5f32, -2.25, -5.9] {
        let m = export::marching_cubes(&values, dims, [0.0; 3], [6.0, 3.0, 4.0], iso).unwrap();
        assert!(!m.is_empty());
        for (p, n) in m.positions.iter().zip(&m.normals) {
            assert!((p[0] + iso).abs() < 1e-5, "iso {iso}: vertex at x = {}", p[0]);
            assert!((n[0] - 1.0).abs() < 1e-5, "the field falls along +x, so outward is +x: {n:?}");
        }
    }
}

#[test]
fn no_crossing_gives_an_empty_mesh_and_bad_grids_are_errors() {
    let dims = [6, 5, 7];
    for v in [-1.0f32, 2.0] {
        let m = export::marching_cubes(&vec![v; 210], dims, [0.0; 3], [1.0; 3], 0.5).unwrap();
        assert!(m.is_empty() && m.positions.is_empty(), "constant {v}");
    }
    let err = |r: fsd3d::Result<Mesh>| r.unwrap_err().to_string();
    let e = err(export::marching_cubes(&[0.0; 209], dims, [0.0; 3], [1.0; 3], 0.5));
    assert!(e.contains("209") && e.contains("[6, 5, 7]"), "{e}");
    let e = err(export::marching_cubes(&[0.0; 30], [6, 5, 1], [0.0; 3], [1.0; 3], 0.5));
    assert!(e.contains("at least 2"), "{e}");
    let e = err(export::marching_cubes(&[0.0; 210], dims, [0.0; 3], [1.0, 0.0, 1.0], 0.5));
    assert!(e.contains("max > min"), "{e}");
    let e = err(export::marching_cubes(&[0.0; 210], dims, [0.0; 3], [1.0; 3], f32::NAN));
    assert!(e.contains("iso"), "{e}");
}

// ---------------------------------------------------------------------------
// Mesh files.

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fsd3d-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn only_file_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// A small coloured sphere.
fn coloured_sphere() -> Mesh {
    let (dims, lo, hi) = ([9, 10, 11], [-1.0f32; 3], [1.0f32; 3]);
    let values = sample(dims, lo, hi, |p| 0.7 - norm(p));
    let mut m = export::marching_cubes(&values, dims, lo, hi, 0.0).unwrap();
    m.colors = m.positions.iter().map(|p| p.map(|x| (x + 1.0) / 2.0)).collect();
    m
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Scene (x, y, z) as glTF sees it: y-up with the front (+x) towards the viewer (+z).
fn y_up(p: [f32; 3]) -> [f32; 3] {
    [p[1], p[2], p[0]]
}

fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
}

#[test]
fn glb_parses_back_with_consistent_accessors() {
    let mesh = coloured_sphere();
    let dir = temp_dir("glb");
    let path = dir.join("mesh.glb");
    export::write_glb(&path, &mesh).unwrap();
    assert_eq!(only_file_in(&dir), ["mesh.glb"], "no temporary file left behind");
    let b = std::fs::read(&path).unwrap();

    // Header and chunks.
    assert_eq!(&b[0..4], b"glTF");
    assert_eq!(u32_at(&b, 4), 2, "version");
    assert_eq!(u32_at(&b, 8) as usize, b.len(), "total length");
    let json_len = u32_at(&b, 12) as usize;
    assert_eq!(&b[16..20], b"JSON");
    assert_eq!(json_len % 4, 0, "JSON chunk aligned");
    let bin_at = 20 + json_len;
    let bin_len = u32_at(&b, bin_at) as usize;
    assert_eq!(&b[bin_at + 4..bin_at + 8], b"BIN\0");
    assert_eq!(bin_len % 4, 0, "BIN chunk aligned");
    assert_eq!(bin_at + 8 + bin_len, b.len(), "nothing after the BIN chunk");
    let bin = &b[bin_at + 8..];
    let doc: serde_json::Value = serde_json::from_slice(&b[20..bin_at]).unwrap();

    assert_eq!(doc["asset"]["version"], "2.0");
    assert_eq!(doc["materials"][0]["doubleSided"], true);
    assert!(doc["buffers"][0]["byteLength"].as_u64().unwrap() as usize <= bin_len);
    let prim = &doc["meshes"][0]["primitives"][0];
    assert_eq!(prim["mode"], 4, "triangles");
    // An accessor's floats / u32s read straight from the BIN chunk.
    let read = |acc_index: &serde_json::Value| -> (serde_json::Value, Vec<[u8; 4]>) {
        let acc = doc["accessors"][acc_index.as_u64().unwrap() as usize].clone();
        let view = &doc["bufferViews"][acc["bufferView"].as_u64().unwrap() as usize];
        let (off, len) = (view["byteOffset"].as_u64().unwrap() as usize, view["byteLength"].as_u64().unwrap() as usize);
        assert_eq!(off % 4, 0, "view offsets aligned");
        assert!(off + len <= bin_len);
        let per = if acc["type"] == "VEC3" { 3 } else { 1 };
        assert_eq!(len, acc["count"].as_u64().unwrap() as usize * per * 4, "view length matches the accessor");
        (acc, bin[off..off + len].chunks_exact(4).map(|c| c.try_into().unwrap()).collect())
    };
    let floats = |w: &[[u8; 4]]| -> Vec<[f32; 3]> {
        w.chunks_exact(3).map(|c| std::array::from_fn(|a| f32::from_le_bytes(c[a]))).collect()
    };

    let (pos_acc, pos) = read(&prim["attributes"]["POSITION"]);
    assert_eq!(pos_acc["componentType"], 5126);
    let pos = floats(&pos);
    assert_eq!(pos.len(), mesh.vertex_count());
    for (got, want) in pos.iter().zip(&mesh.positions) {
        assert_eq!(*got, y_up(*want), "positions mapped z-up → y-up");
    }
    for a in 0..3 {
        let lo = pos.iter().map(|p| p[a]).fold(f32::INFINITY, f32::min);
        let hi = pos.iter().map(|p| p[a]).fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(pos_acc["min"][a].as_f64().unwrap() as f32, lo, "POSITION.min[{a}]");
        assert_eq!(pos_acc["max"][a].as_f64().unwrap() as f32, hi, "POSITION.max[{a}]");
    }
    let (_, nrm) = read(&prim["attributes"]["NORMAL"]);
    for (got, want) in floats(&nrm).iter().zip(&mesh.normals) {
        assert_eq!(*got, y_up(*want));
    }
    let (col_acc, col) = read(&prim["attributes"]["COLOR_0"]);
    assert_eq!(col_acc["type"], "VEC3");
    for (got, want) in floats(&col).iter().zip(&mesh.colors) {
        for a in 0..3 {
            assert!((got[a] - srgb_to_linear(want[a])).abs() < 1e-6, "COLOR_0 is linear");
        }
    }
    let (idx_acc, idx) = read(&prim["indices"]);
    assert_eq!(idx_acc["componentType"], 5125, "u32 indices");
    let idx: Vec<u32> = idx.into_iter().map(u32::from_le_bytes).collect();
    assert_eq!(idx, mesh.indices);
    // The y-up map is a rotation: the glb still winds outward.
    let rotated = Mesh { positions: pos, indices: idx, ..Default::default() };
    assert!(signed_volume(&rotated) > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn obj_round_trips_and_bad_meshes_are_refused() {
    let mesh = coloured_sphere();
    let dir = temp_dir("obj");
    let path = dir.join("mesh.obj");
    export::write_obj(&path, &mesh).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut v, mut vn, mut f) = (Vec::new(), 0, Vec::new());
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("v") => v.push(w.map(|x| x.parse::<f32>().unwrap()).collect::<Vec<_>>()),
            Some("vn") => vn += 1,
            Some("f") => f.extend(w.map(|c| {
                let (a, b) = c.split_once("//").unwrap();
                assert_eq!(a, b, "position and normal share the index");
                a.parse::<u32>().unwrap()
            })),
            _ => {}
        }
    }
    assert_eq!((v.len(), vn, f.len()), (mesh.vertex_count(), mesh.vertex_count(), mesh.indices.len()));
    for (i, row) in v.iter().enumerate() {
        let p = y_up(mesh.positions[i]);
        assert_eq!(row[..3], p, "positions exact and y-up");
        assert_eq!(row[3..], mesh.colors[i], "vertex colours as given");
    }
    assert_eq!(f.iter().map(|i| i - 1).collect::<Vec<_>>(), mesh.indices, "1-based faces");

    let e = export::write_obj(&dir.join("empty.obj"), &Mesh::default()).unwrap_err().to_string();
    assert!(e.contains("no triangles"), "{e}");
    let mut broken = coloured_sphere();
    broken.indices.push(broken.positions.len() as u32);
    broken.indices.extend([0, 1]);
    let e = export::write_glb(&dir.join("broken.glb"), &broken).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    broken = coloured_sphere();
    broken.colors.pop();
    let e = export::write_glb(&dir.join("broken.glb"), &broken).unwrap_err().to_string();
    assert!(e.contains("colours"), "{e}");
    assert_eq!(only_file_in(&dir), ["mesh.obj"], "refused meshes write nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Turntables, grids and pictures.

fn noise_image(seed: u64, w: usize, h: usize) -> Rgb8 {
    Rgb8 { width: w, height: h, data: common::rand_vec(seed, w * h * 3, 0.0, 256.0).iter().map(|&x| x as u8).collect() }
}

#[test]
fn apng_decodes_back_frame_by_frame() {
    let frames: Vec<Rgb8> = (0..3).map(|s| noise_image(s, 7, 5)).collect();
    let dir = temp_dir("apng");
    let path = dir.join("turntable.png");
    export::write_apng(&path, &frames, 80).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let actl = reader.info().animation_control.expect("an animated PNG");
    assert_eq!((actl.num_frames, actl.num_plays), (3, 0), "3 frames, looping forever");
    assert_eq!((reader.info().width, reader.info().height), (7, 5));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    for (i, want) in frames.iter().enumerate() {
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (7, 5, png::ColorType::Rgb));
        let fc = reader.info().frame_control.expect("a frame control per frame");
        assert_eq!(fc.delay_num as f32 / fc.delay_den as f32, 0.08, "frame {i} delay");
        assert_eq!(&buf[..info.buffer_size()], &want.data[..], "frame {i} is lossless");
    }
    assert!(reader.next_frame(&mut buf).is_err(), "no fourth frame");

    let e = export::write_apng(&dir.join("x.png"), &[], 80).unwrap_err().to_string();
    assert!(e.contains("no frames"), "{e}");
    let e = export::write_apng(&dir.join("x.png"), &[noise_image(0, 7, 5), noise_image(1, 5, 7)], 80).unwrap_err().to_string();
    assert!(e.contains("frame 1 is 5×7"), "{e}");
    let e = export::write_apng(&dir.join("x.png"), &frames, 70_000).unwrap_err().to_string();
    assert!(e.contains("65535"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn solid(w: usize, h: usize, rgb: [u8; 3]) -> Rgb8 {
    Rgb8 { width: w, height: h, data: rgb.repeat(w * h) }
}

fn pixel(img: &Rgb8, x: usize, y: usize) -> [u8; 3] {
    let i = (y * img.width + x) * 3;
    [img.data[i], img.data[i + 1], img.data[i + 2]]
}

#[test]
fn grid_tiles_rows_with_padding_and_centres_small_images() {
    let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 100, 0]];
    let mut images: Vec<Rgb8> = colours.iter().map(|&c| solid(4, 3, c)).collect();
    images[3] = solid(2, 1, colours[3]);
    let g = export::grid(&images, 2, 1).unwrap();
    // 2 columns × 3 rows of 4×3 cells, 1 pixel around and between.
    assert_eq!((g.width, g.height), (2 * 4 + 3, 3 * 3 + 4));
    const WHITE: [u8; 3] = [255; 3];
    // Cell origins (x, y): (1,1) (6,1) / (1,5) (6,5) / (1,9) (6,9).
    assert_eq!(pixel(&g, 1, 1), colours[0]);
    assert_eq!(pixel(&g, 4, 3), colours[0], "bottom-right of the first cell");
    assert_eq!(pixel(&g, 5, 1), WHITE, "padding between columns");
    assert_eq!(pixel(&g, 6, 1), colours[1]);
    assert_eq!(pixel(&g, 1, 4), WHITE, "padding between rows");
    assert_eq!(pixel(&g, 1, 5), colours[2]);
    // The 2×1 image sits centred in its 4×3 cell: at (6+1, 5+1) and (6+2, 5+1).
    assert_eq!(pixel(&g, 6, 5), WHITE);
    assert_eq!(pixel(&g, 7, 6), colours[3]);
    assert_eq!(pixel(&g, 8, 6), colours[3]);
    assert_eq!(pixel(&g, 9, 6), WHITE);
    assert_eq!(pixel(&g, 7, 7), WHITE);
    assert_eq!(pixel(&g, 1, 9), colours[4]);
    assert_eq!(pixel(&g, 8, 10), WHITE, "the unused last cell is white");
    for x in 0..g.width {
        assert_eq!(pixel(&g, x, 0), WHITE);
        assert_eq!(pixel(&g, x, g.height - 1), WHITE);
    }
    // More columns than images: one row, no empty columns.
    let row = export::grid(&images[..2], 5, 0).unwrap();
    assert_eq!((row.width, row.height), (8, 3));
    assert_eq!(pixel(&row, 4, 0), colours[1]);

    assert!(export::grid(&[], 2, 1).unwrap_err().to_string().contains("no images"));
    assert!(export::grid(&images, 0, 1).unwrap_err().to_string().contains("0 columns"));
    let bad = Rgb8 { width: 4, height: 3, data: vec![0; 5] };
    assert!(export::grid(&[bad], 1, 0).unwrap_err().to_string().contains("image 0"));
}

/// A hand-made 3×2 view: pixel (col, row) = i = row·3 + col.
/// 0: background; 1: near, opaque; 2: far, opaque; 3: half-covered at mid
/// depth; 4: opaque, mid depth; 5: barely covered.
fn hand_image() -> Image {
    let n = 6;
    let opacity = vec![0.0, 1.0, 1.0, 0.5, 1.0, 1e-6];
    let t = [0.0, 2.0, 4.0, 3.0, 3.0, 9.0];
    let normals = [[0.0; 3], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -0.6, 0.8], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];
    let (rgb, depth, normal) = (vec![0.0; 3 * n], vec![0.0; n], vec![0.0; 3 * n]);
    let mut img = Image { width: 3, height: 2, rgb, opacity: opacity.clone(), depth, normal };
    for i in 0..n {
        img.depth[i] = opacity[i] * t[i];
        for c in 0..3 {
            // Σw·n: unnormalised (opacity-weighted, times 2 to test the normalisation).
            img.normal[c * n + i] = 2.0 * opacity[i] * normals[i][c];
            img.rgb[c * n + i] = [0.0, 0.25, 1.0, 0.5, 1.2, -0.1][i] * [1.0, 0.5, 0.25][c];
        }
    }
    img
}

#[test]
fn depth_normal_and_colour_pictures() {
    let img = hand_image();
    let byte = |x: f32| (x * 255.0).round() as u8;

    let rgb = export::rgb_to_rgb8(&img).unwrap();
    assert_eq!((rgb.width, rgb.height), (3, 2));
    assert_eq!(pixel(&rgb, 1, 0), [byte(0.25), byte(0.125), byte(0.0625)]);
    assert_eq!(pixel(&rgb, 1, 1), [255, byte(0.6), byte(0.3)], "clamped to 1");
    assert_eq!(pixel(&rgb, 2, 1), [0, 0, 0], "clamped to 0");

    // Depth: range 2..4 over the opaque pixels; near black, far 0.8 grey, white behind.
    let d = export::depth_to_rgb(&img).unwrap();
    assert_eq!(pixel(&d, 0, 0), [255; 3], "background");
    assert_eq!(pixel(&d, 1, 0), [0; 3], "nearest");
    assert_eq!(pixel(&d, 2, 0), [byte(0.8); 3], "farthest");
    assert_eq!(pixel(&d, 1, 1), [byte(0.4); 3], "mid depth");
    assert_eq!(pixel(&d, 0, 1), [byte(0.5 * 0.4 + 0.5); 3], "half covered: blended with white");
    assert_eq!(pixel(&d, 2, 1), [255; 3], "barely covered is white");

    let nrm = export::normal_to_rgb(&img).unwrap();
    assert_eq!(pixel(&nrm, 0, 0), [255; 3]);
    assert_eq!(pixel(&nrm, 1, 0), [byte(0.5), byte(0.5), 255], "+z");
    assert_eq!(pixel(&nrm, 2, 0), [255, byte(0.5), byte(0.5)], "+x");
    assert_eq!(pixel(&nrm, 1, 1), [byte(0.5), 255, byte(0.5)], "+y");
    let half = |c: f32| byte(0.5 * (c * 0.5 + 0.5) + 0.5);
    assert_eq!(pixel(&nrm, 0, 1), [half(0.0), half(-0.6), half(0.8)], "half covered");

    let mut bad = hand_image();
    bad.depth.pop();
    let e = export::depth_to_rgb(&bad).unwrap_err().to_string();
    assert!(e.contains("depth") && e.contains("3×2"), "{e}");
}

// ---------------------------------------------------------------------------
// A real scene.

/// A small untrained scene whose density is dominated by the blob:
/// σ ≈ softplus(20·(1 − |x|/0.5)), which crosses 10 on the sphere |x| ≈ 0.25.
fn blob_scene(gpu: &fsd3d::gpu::Gpu) -> Scene {
    let cfg = SceneConfig {
        field: FieldConfig {
            radius: 1.0,
            levels: 4,
            features_per_level: 2,
            log2_table_size: 8,
            base_resolution: 4,
            per_level_scale: 1.5,
            hidden: 16,
            blob_scale: 20.0,
            blob_std: 0.5,
            ..Default::default()
        },
        background: BackgroundConfig { kind: BackgroundKind::Solid, color: [1.0, 1.0, 1.0], ..Default::default() },
        ..Default::default()
    };
    Scene::new(gpu, &cfg, 7).unwrap()
}

/// The blob's surface radius at `threshold`: softplus(20 − 40 r) = threshold.
fn blob_radius(threshold: f32) -> f32 {
    let z = (threshold.exp() - 1.0).ln();
    (20.0 - z) / 40.0
}

#[test]
fn a_scene_surface_is_a_closed_coloured_mesh_inside_the_box() {
    let gpu = common::gpu();
    let scene = blob_scene(&gpu);
    let started = std::time::Instant::now();
    // 72 samples along the box: more points than one GPU chunk.
    let m = export::extract_mesh(&gpu, &scene, 72, 10.0).unwrap();
    eprintln!("extract_mesh: {} vertices, {} triangles in {:.2} s", m.vertex_count(), m.triangle_count(), started.elapsed().as_secs_f64());
    assert!(!m.is_empty());
    m.validate().unwrap();
    assert_watertight("scene", &m);
    assert_eq!(euler_characteristic(&m), 2);
    let r = blob_radius(10.0);
    let (lo, hi) = m.bounds().unwrap();
    assert!(lo.iter().chain(&hi).all(|x| x.abs() < scene.field.spec.radius), "mesh box {lo:?}..{hi:?} is inside the scene box");
    // The fine grid has 72 samples along its longest side, which is inside
    // the scene box: its cells are at most 2·radius/71 wide.
    let cell = 2.0 * scene.field.spec.radius / 71.0;
    for p in &m.positions {
        assert!((norm(*p) - r).abs() < cell, "vertex {p:?} at radius {} (blob {r}, cell {cell})", norm(*p));
    }
    let want = 4.0 / 3.0 * std::f64::consts::PI * (r as f64).powi(3);
    let vol = signed_volume(&m);
    assert!((vol / want - 1.0).abs() < 0.03, "volume {vol} vs {want}");
    // An untrained albedo head: sigmoid of almost nothing.
    assert_eq!(m.colors.len(), m.vertex_count());
    assert!(m.colors.iter().flatten().all(|c| (c - 0.5).abs() < 0.05), "albedo ≈ 0.5");

    // A threshold the blob never reaches: a clear error naming both numbers.
    let e = export::extract_mesh(&gpu, &scene, 32, 1000.0).unwrap_err().to_string();
    assert!(e.contains("1000") && e.contains("largest density"), "{e}");
    // The largest density reported is one the blob reaches (at most 20, at its centre).
    let after = e.split("largest density").nth(1).and_then(|s| s.split(" is ").nth(1)).unwrap();
    let seen: f32 = after.split(')').next().unwrap().parse().unwrap();
    assert!(seen > 10.0 && seen <= 20.0, "largest density {seen}");
    for (res, thr) in [(4, 10.0), (32, 0.0), (32, f32::NAN)] {
        assert!(export::extract_mesh(&gpu, &scene, res, thr).is_err(), "resolution {res}, threshold {thr}");
    }
}

#[test]
fn a_scene_render_makes_depth_and_normal_pictures() {
    let gpu = common::gpu();
    let scene = blob_scene(&gpu);
    let cam = fsd3d::scene::Camera::orbit(0.0, 0.0, 2.0, 40.0);
    let img = scene.render_image(&gpu, &cam, 12, 9, fsd3d::ops::render::Shading::Albedo).unwrap();
    let d = export::depth_to_rgb(&img).unwrap();
    let n = export::normal_to_rgb(&img).unwrap();
    assert_eq!(pixel(&d, 0, 0), [255; 3], "the corner ray misses the blob");
    assert_eq!(pixel(&n, 0, 0), [255; 3]);
    // The centre ray hits the blob's front, facing the camera at +x: nearest, normal ≈ +x.
    let c = pixel(&d, 6, 4);
    assert!(c[0] < 60, "centre depth grey {c:?}");
    let c = pixel(&n, 6, 4);
    assert!(c[0] > 230 && (c[1] as i32 - 128).abs() < 40 && (c[2] as i32 - 128).abs() < 40, "centre normal colour {c:?}");
}

#[test]
fn signed_nchw_batches_round_trip_to_bytes() {
    use fsd3d::export::image::{from_signed_nchw, to_signed_nchw};
    let imgs: Vec<Rgb8> = (0..3u32)
        .map(|k| Rgb8 { width: 5, height: 3, data: (0..45u32).map(|i| ((i * 37 + k * 101) % 256) as u8).collect() })
        .collect();
    let (values, shape) = to_signed_nchw(&imgs).unwrap();
    assert_eq!(shape, [3, 3, 3, 5]);
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(values[0], imgs[0].data[0] as f32 / 127.5 - 1.0);
    for (k, img) in imgs.iter().enumerate() {
        assert_eq!(&from_signed_nchw(&values, &shape, k).unwrap(), img, "image {k}");
    }
    let odd = Rgb8 { width: 4, height: 3, data: vec![0; 36] };
    assert!(to_signed_nchw(&[imgs[0].clone(), odd]).is_err());
    assert!(to_signed_nchw(&[]).is_err());
}
