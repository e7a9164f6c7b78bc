//! Mesh files: binary glTF 2.0 (`.glb`) and Wavefront OBJ, both written
//! atomically.
//!
//! **Axes.** The scene is z-up, and its front is +x (azimuth 0 looks from +x,
//! azimuth 90° from +y; see `scene::camera`). glTF is y-up and its viewers
//! look from +z by default, so both files map scene `(x, y, z)` to
//! `(y, z, x)`: scene z becomes up (y), the front (scene +x) faces the
//! viewer (+z), and azimuth 90° ends up on the viewer's right (+x). The map
//! is a rotation (a cyclic permutation), so windings and normals stay
//! outward. The OBJ uses the same y-up frame.
//!
//! **Colours.** Mesh colours are display values (what the renders show).
//! glTF defines `COLOR_0` as linear, so the glb stores the sRGB-decoded
//! colours (a viewer re-encodes them for display); the OBJ keeps the display
//! values, as OBJ readers show vertex colours as given.
//!
//! The glb has one mesh of one triangle primitive: `POSITION` (with the
//! min/max the spec requires), `NORMAL`, `COLOR_0` (float vec3; both only
//! when the mesh has them), u32 indices, and a plain double-sided material.
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use super::mesh::Mesh;
use crate::error::{Error, Result};

/// Scene (z-up, front +x) to glTF / OBJ (y-up, front +z): `(x, y, z) → (y, z, x)`.
pub fn to_y_up(p: [f32; 3]) -> [f32; 3] {
    [p[1], p[2], p[0]]
}

/// sRGB-encoded [0, 1] to linear (the sRGB transfer function).
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
}

/// glb chunk types and header magic.
const GLB_MAGIC: u32 = 0x4654_6C67; // "glTF"
const CHUNK_JSON: u32 = 0x4E4F_534A; // "JSON"
const CHUNK_BIN: u32 = 0x004E_4942; // "BIN\0"
/// glTF enums: component types, buffer targets, triangle mode.
const FLOAT: u32 = 5126;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const TRIANGLES: u32 = 4;

fn check_writable(mesh: &Mesh, what: &str) -> Result<()> {
    mesh.validate()?;
    if mesh.is_empty() {
        return Err(Error::Invalid(format!(
            "{what}: the mesh has no triangles, nothing to write (lower the density threshold of the extraction?)"
        )));
    }
    Ok(())
}

/// The binary glTF 2.0 file of `mesh` (see the module doc for axes and colours).
pub fn encode_glb(mesh: &Mesh) -> Result<Vec<u8>> {
    check_writable(mesh, "glb")?;
    let positions: Vec<[f32; 3]> = mesh.positions.iter().map(|&p| to_y_up(p)).collect();
    let normals: Vec<[f32; 3]> = mesh.normals.iter().map(|&p| to_y_up(p)).collect();
    let colors: Vec<[f32; 3]> = mesh.colors.iter().map(|c| c.map(srgb_to_linear)).collect();

    let mut bin: Vec<u8> = Vec::new();
    let mut views = Vec::new();
    let mut accessors = Vec::new();
    let mut attributes = serde_json::Map::new();
    // Every section is a multiple of 4 bytes, so every view starts aligned.
    let mut add_vec3 = |name: &str, data: &[[f32; 3]], bin: &mut Vec<u8>, with_bounds: bool| {
        let offset = bin.len();
        bin.extend_from_slice(bytemuck::cast_slice(data));
        let mut acc = json!({
            "bufferView": views.len(), "componentType": FLOAT, "count": data.len(), "type": "VEC3",
        });
        if with_bounds {
            let (lo, hi) = data.iter().fold(([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]), |(lo, hi), p| {
                (std::array::from_fn(|a| lo[a].min(p[a])), std::array::from_fn(|a| hi[a].max(p[a])))
            });
            acc["min"] = json!(lo.map(f64::from));
            acc["max"] = json!(hi.map(f64::from));
        }
        views.push(json!({ "buffer": 0, "byteOffset": offset, "byteLength": bin.len() - offset, "target": ARRAY_BUFFER }));
        attributes.insert(name.into(), json!(accessors.len()));
        accessors.push(acc);
    };
    add_vec3("POSITION", &positions, &mut bin, true);
    if !normals.is_empty() {
        add_vec3("NORMAL", &normals, &mut bin, false);
    }
    if !colors.is_empty() {
        add_vec3("COLOR_0", &colors, &mut bin, false);
    }
    let offset = bin.len();
    bin.extend_from_slice(bytemuck::cast_slice(&mesh.indices));
    views.push(json!({ "buffer": 0, "byteOffset": offset, "byteLength": bin.len() - offset, "target": ELEMENT_ARRAY_BUFFER }));
    let index_accessor = accessors.len();
    accessors.push(json!({ "bufferView": views.len() - 1, "componentType": UNSIGNED_INT, "count": mesh.indices.len(), "type": "SCALAR" }));

    let doc = json!({
        "asset": { "version": "2.0", "generator": concat!("fsd3d ", env!("CARGO_PKG_VERSION")) },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0, "name": "fsd3d" }],
        "meshes": [{ "name": "fsd3d", "primitives": [{
            "attributes": attributes, "indices": index_accessor, "material": 0, "mode": TRIANGLES,
        }]}],
        "materials": [{
            "name": "vertex colours",
            "pbrMetallicRoughness": { "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0 },
            "doubleSided": true,
        }],
        "buffers": [{ "byteLength": bin.len() }],
        "bufferViews": views,
        "accessors": accessors,
    });
    let mut json_bytes = serde_json::to_vec(&doc).map_err(|e| Error::Invalid(format!("glb: {e}")))?;
    // Chunks are 4-byte aligned: JSON padded with spaces, BIN with zeros.
    json_bytes.resize(json_bytes.len().next_multiple_of(4), b' ');
    bin.resize(bin.len().next_multiple_of(4), 0);

    let total = 12 + 8 + json_bytes.len() + 8 + bin.len();
    let total32 = u32::try_from(total).map_err(|_| Error::Invalid(format!("glb: {total} bytes is over the format's 4 GiB limit")))?;
    let mut out = Vec::with_capacity(total);
    for word in [GLB_MAGIC, 2, total32, json_bytes.len() as u32, CHUNK_JSON] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&json_bytes);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(&CHUNK_BIN.to_le_bytes());
    out.extend_from_slice(&bin);
    Ok(out)
}

/// Writes `mesh` as binary glTF 2.0 (atomically).
pub fn write_glb(path: &Path, mesh: &Mesh) -> Result<()> {
    crate::io::write_atomic(path, &encode_glb(mesh)?)
}

/// The OBJ text of `mesh`: `v x y z [r g b]` (vertex colours in [0, 1]),
/// `vn`, and `f a//a b//b c//c` (1-based), y-up like the glb.
pub fn encode_obj(mesh: &Mesh) -> Result<String> {
    check_writable(mesh, "obj")?;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "# fsd3d mesh: {} vertices, {} triangles; y-up (scene (x, y, z) -> (y, z, x)), counter-clockwise outside",
        mesh.vertex_count(),
        mesh.triangle_count()
    );
    for (i, &p) in mesh.positions.iter().enumerate() {
        let [x, y, z] = to_y_up(p);
        match mesh.colors.get(i) {
            Some([r, g, b]) => writeln!(s, "v {x} {y} {z} {r} {g} {b}"),
            None => writeln!(s, "v {x} {y} {z}"),
        }
        .ok();
    }
    for &n in &mesh.normals {
        let [x, y, z] = to_y_up(n);
        let _ = writeln!(s, "vn {x} {y} {z}");
    }
    let with_normals = !mesh.normals.is_empty();
    for t in mesh.indices.chunks_exact(3) {
        let [a, b, c] = [t[0] + 1, t[1] + 1, t[2] + 1];
        if with_normals {
            let _ = writeln!(s, "f {a}//{a} {b}//{b} {c}//{c}");
        } else {
            let _ = writeln!(s, "f {a} {b} {c}");
        }
    }
    Ok(s)
}

/// Writes `mesh` as Wavefront OBJ (atomically).
pub fn write_obj(path: &Path, mesh: &Mesh) -> Result<()> {
    crate::io::write_atomic(path, encode_obj(mesh)?.as_bytes())
}
