//! What a run leaves for people to look at, every file written atomically
//! (`crate::io::write_atomic`):
//! - [`image`]: tensors to 8-bit RGB, PNG files;
//! - [`grid`]: a rendered view's colour, depth and normals as pictures, and
//!   grids of views;
//! - [`anim`]: turntables as looping APNG;
//! - [`mesh`]: marching cubes and the surface of a trained scene, with
//!   vertex colours from its albedo;
//! - [`gltf`]: meshes as binary glTF 2.0 and OBJ (y-up; the axis map is
//!   documented there).
//!
//! A typical end of a 3D run:
//! ```text
//! let mesh = extract_mesh(gpu, &scene, 128, 25.0)?;      // FSD_SPEC §5
//! write_glb(&dir.join("mesh.glb"), &mesh)?;
//! let views: Vec<Image> = /* scene.render_image for eval_cameras(...) */;
//! let frames = views.iter().map(rgb_to_rgb8).collect::<Result<Vec<_>>>()?;
//! write_apng(&dir.join("turntable.png"), &frames, 80)?;
//! write_png(&dir.join("views.png"), &grid(&frames, 4, 2)?)?;
//! ```
pub mod anim;
pub mod gltf;
pub mod grid;
pub mod image;
pub mod mesh;

pub use anim::{encode_apng, write_apng};
pub use gltf::{encode_glb, encode_obj, write_glb, write_obj};
pub use grid::{depth_to_rgb, grid, normal_to_rgb, rgb_to_rgb8};
pub use image::{Rgb8, write_png};
pub use mesh::{Mesh, extract_mesh, marching_cubes};
