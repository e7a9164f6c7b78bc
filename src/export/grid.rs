//! Pictures of rendered views: a scene [`Image`]'s colour, depth and normals
//! as 8-bit RGB, and grids that tile several views into one picture.
//!
//! Depth and normal pictures are drawn on a white background: each pixel is
//! the visualised value blended with white by the pixel's opacity, so the
//! object's soft edges fade out as they do in the colour render.
use super::image::Rgb8;
use crate::error::{Error, Result};
use crate::scene::Image;

/// Grey of the nearest and the farthest point of the object in a depth
/// picture: near is black, far a light grey that stays visible on white.
const DEPTH_NEAR_GREY: f32 = 0.0;
const DEPTH_FAR_GREY: f32 = 0.8;
/// Opacity from which a pixel counts as the object when finding the depth range.
const DEPTH_RANGE_OPACITY: f32 = 0.5;
/// Below this opacity a pixel has no meaningful depth or normal.
const EMPTY_OPACITY: f32 = 1e-4;

/// [0, 1] to a byte.
fn to_byte(x: f32) -> u8 {
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn check_plane(what: &str, img: &Image, len: usize, channels: usize) -> Result<usize> {
    let n = img.width as usize * img.height as usize;
    if len != n * channels {
        return Err(Error::Invalid(format!(
            "{what}: the image is {}×{} but holds {len} values, expected {}",
            img.width,
            img.height,
            n * channels
        )));
    }
    Ok(n)
}

/// The colour render (`[3, H, W]` in [0, 1], background already composited) as 8-bit RGB.
pub fn rgb_to_rgb8(img: &Image) -> Result<Rgb8> {
    let n = check_plane("rgb_to_rgb8: rgb", img, img.rgb.len(), 3)?;
    let data = (0..n).flat_map(|i| (0..3).map(move |c| to_byte(img.rgb[c * n + i]))).collect();
    Ok(Rgb8 { width: img.width as usize, height: img.height as usize, data })
}

/// The expected depth (Σw·t / opacity) in grey: the object's nearest point
/// black, its farthest light grey, over a white background. The range is
/// taken over the pixels with opacity ≥ 0.5 (all covered pixels if none).
pub fn depth_to_rgb(img: &Image) -> Result<Rgb8> {
    let n = check_plane("depth_to_rgb: depth", img, img.depth.len(), 1)?;
    check_plane("depth_to_rgb: opacity", img, img.opacity.len(), 1)?;
    let depth: Vec<Option<f32>> = (0..n)
        .map(|i| {
            let o = img.opacity[i];
            let d = img.depth[i] / o;
            (o > EMPTY_OPACITY && d.is_finite()).then_some(d)
        })
        .collect();
    let range_of = |min_opacity: f32| {
        (0..n)
            .filter(|&i| img.opacity[i] >= min_opacity)
            .filter_map(|i| depth[i])
            .fold(None, |r: Option<(f32, f32)>, d| Some(r.map_or((d, d), |(lo, hi)| (lo.min(d), hi.max(d)))))
    };
    let range = range_of(DEPTH_RANGE_OPACITY).or_else(|| range_of(EMPTY_OPACITY));
    let data = (0..n)
        .flat_map(|i| {
            let grey = match (depth[i], range) {
                (Some(d), Some((lo, hi))) if hi > lo => {
                    DEPTH_NEAR_GREY + (DEPTH_FAR_GREY - DEPTH_NEAR_GREY) * ((d - lo) / (hi - lo)).clamp(0.0, 1.0)
                }
                _ => 0.5 * (DEPTH_NEAR_GREY + DEPTH_FAR_GREY),
            };
            [to_byte(on_white(grey, img.opacity[i])); 3]
        })
        .collect();
    Ok(Rgb8 { width: img.width as usize, height: img.height as usize, data })
}

/// The world-space normal (Σw·n, normalised) as rgb = n·0.5 + 0.5, over a
/// white background.
pub fn normal_to_rgb(img: &Image) -> Result<Rgb8> {
    let n = check_plane("normal_to_rgb: normal", img, img.normal.len(), 3)?;
    check_plane("normal_to_rgb: opacity", img, img.opacity.len(), 1)?;
    let data = (0..n)
        .flat_map(|i| {
            let v = [img.normal[i], img.normal[n + i], img.normal[2 * n + i]];
            let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            let o = img.opacity[i];
            let unit = (o > EMPTY_OPACITY && len > 0.0 && len.is_finite()).then(|| v.map(|x| x / len));
            // A covered pixel without a direction (normals cancelled) shows mid-grey.
            unit.map_or([0.5; 3], |u| u.map(|x| x * 0.5 + 0.5)).map(|c| to_byte(on_white(c, o)))
        })
        .collect();
    Ok(Rgb8 { width: img.width as usize, height: img.height as usize, data })
}

/// `value` blended onto white by `opacity`.
fn on_white(value: f32, opacity: f32) -> f32 {
    let o = if opacity.is_finite() { opacity.clamp(0.0, 1.0) } else { 0.0 };
    o * value + (1.0 - o)
}

/// Tiles `images` row by row, at most `columns` a row, with `pad` white
/// pixels around and between the cells. Every cell is as large as the
/// largest image; smaller images sit centred in theirs; unused cells are white.
pub fn grid(images: &[Rgb8], columns: usize, pad: u32) -> Result<Rgb8> {
    if images.is_empty() {
        return Err(Error::Invalid("grid: no images to tile".into()));
    }
    if columns == 0 {
        return Err(Error::Invalid("grid: 0 columns: ask for at least one image a row".into()));
    }
    for (i, img) in images.iter().enumerate() {
        if img.data.len() != img.width * img.height * 3 {
            return Err(Error::Invalid(format!(
                "grid: image {i} is {}×{} but holds {} bytes, expected {}",
                img.width,
                img.height,
                img.data.len(),
                img.width * img.height * 3
            )));
        }
    }
    let pad = pad as usize;
    let cols = columns.min(images.len());
    let rows = images.len().div_ceil(cols);
    let cell_w = images.iter().map(|i| i.width).max().unwrap_or(0);
    let cell_h = images.iter().map(|i| i.height).max().unwrap_or(0);
    let width = cols * cell_w + (cols + 1) * pad;
    let height = rows * cell_h + (rows + 1) * pad;
    let mut data = vec![255u8; width * height * 3];
    for (k, img) in images.iter().enumerate() {
        let (row, col) = (k / cols, k % cols);
        let x0 = pad + col * (cell_w + pad) + (cell_w - img.width) / 2;
        let y0 = pad + row * (cell_h + pad) + (cell_h - img.height) / 2;
        for y in 0..img.height {
            let dst = ((y0 + y) * width + x0) * 3;
            data[dst..dst + img.width * 3].copy_from_slice(&img.data[y * img.width * 3..(y + 1) * img.width * 3]);
        }
    }
    Ok(Rgb8 { width, height, data })
}
