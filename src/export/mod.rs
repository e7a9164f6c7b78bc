//! What users keep: images (PNG), later meshes, grids and turntables.
pub mod image;
