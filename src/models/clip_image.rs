//! CLIP's image preprocessing on the host, as transformers' (PIL-based)
//! `CLIPImageProcessor` does it, so that a CLIP score from the engine is the
//! score Python users get from the same PNG:
//!
//! 1. resize so that the shorter side is `size` (the longer one
//!    `⌊size · long / short⌋`) with Pillow's resampling of 8-bit images: a
//!    separable filter whose support widens with the reduction (antialiased),
//!    weights in 22-bit fixed point, the horizontal pass first, each pass
//!    rounded to 8 bits;
//! 2. crop the centre `crop × crop`, the top-left corner at
//!    `⌊(side − crop) / 2⌋`;
//! 3. scale to [0, 1] and normalise with the model's mean and std.
//!
//! The settings come from the model's `preprocessor_config.json`.
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub use crate::export::image::Rgb8;

/// Checks that an image's bytes match its size.
fn check_image(image: &Rgb8) -> Result<()> {
    if image.width == 0 || image.height == 0 || image.data.len() != image.width * image.height * 3 {
        return Err(Error::Invalid(format!(
            "an RGB image of {}×{} needs {} bytes, got {}",
            image.width,
            image.height,
            image.width * image.height * 3,
            image.data.len()
        )));
    }
    Ok(())
}

/// Pillow's resampling filters that CLIP processors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// `PIL.Image.BILINEAR` (2): the triangle filter, support 1.
    Bilinear,
    /// `PIL.Image.BICUBIC` (3): Keys' cubic with a = −0.5, support 2.
    Bicubic,
}

impl Resample {
    fn from_pil(code: u32) -> Result<Resample> {
        match code {
            2 => Ok(Resample::Bilinear),
            3 => Ok(Resample::Bicubic),
            other => Err(Error::Invalid(format!("resample {other}: only 2 (bilinear) and 3 (bicubic) are supported"))),
        }
    }
    fn support(self) -> f64 {
        match self {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Bilinear => (1.0 - x).max(0.0),
            Resample::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// `size` and `crop_size` are written either as a number or as an object.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Side(usize),
    Shortest { shortest_edge: usize },
    Box { height: usize, width: usize },
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<SizeSpec>,
    #[serde(default = "d_resample")]
    resample: u32,
    #[serde(default = "yes")]
    do_center_crop: bool,
    crop_size: Option<SizeSpec>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "d_rescale")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<[f64; 3]>,
    image_std: Option<[f64; 3]>,
}

fn yes() -> bool {
    true
}
fn d_resample() -> u32 {
    3
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}

/// OpenAI CLIP's normalisation, transformers' default for CLIP.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// What a model's `preprocessor_config.json` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPreprocess {
    /// The shorter side after resizing (None: no resize).
    pub shortest_edge: Option<usize>,
    pub resample: Resample,
    /// The centre crop (None: no crop).
    pub crop: Option<(usize, usize)>,
    pub rescale: Option<f64>,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub normalize: bool,
}

impl ClipPreprocess {
    /// CLIP's settings for a square input of `side` (when the folder has no preprocessor_config.json).
    pub fn openai(side: usize) -> ClipPreprocess {
        ClipPreprocess {
            shortest_edge: Some(side),
            resample: Resample::Bicubic,
            crop: Some((side, side)),
            rescale: Some(1.0 / 255.0),
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            normalize: true,
        }
    }

    /// Reads `DIR/preprocessor_config.json`; without one, [`ClipPreprocess::openai`] for `side`.
    pub fn load(dir: &Path, side: usize) -> Result<ClipPreprocess> {
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(ClipPreprocess::openai(side));
        }
        let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
        let raw: RawConfig = crate::models::config::read_config(&path)?;
        let shortest_edge = match (raw.do_resize, raw.size) {
            (false, _) => None,
            (true, None) => Some(side),
            (true, Some(SizeSpec::Side(s) | SizeSpec::Shortest { shortest_edge: s })) => Some(s),
            (true, Some(SizeSpec::Box { .. })) => return Err(bad("size as height × width is not CLIP's resize; expected {\"shortest_edge\": N}".into())),
        };
        let crop = match (raw.do_center_crop, raw.crop_size) {
            (false, _) => None,
            (true, None) => Some((side, side)),
            (true, Some(SizeSpec::Side(s) | SizeSpec::Shortest { shortest_edge: s })) => Some((s, s)),
            (true, Some(SizeSpec::Box { height, width })) => Some((height, width)),
        };
        let p = ClipPreprocess {
            shortest_edge,
            resample: Resample::from_pil(raw.resample).map_err(|e| bad(e.to_string()))?,
            crop,
            rescale: raw.do_rescale.then_some(raw.rescale_factor),
            mean: raw.image_mean.unwrap_or(OPENAI_CLIP_MEAN),
            std: raw.image_std.unwrap_or(OPENAI_CLIP_STD),
            normalize: raw.do_normalize,
        };
        if shortest_edge == Some(0) || p.std.iter().any(|&s| s == 0.0) || crop.is_some_and(|(h, w)| h == 0 || w == 0) {
            return Err(bad("sizes and std must be positive".into()));
        }
        if crop != Some((side, side)) {
            return Err(bad(format!(
                "the processor crops to {crop:?}, but the model's vision tower takes {side}×{side} images: the preprocessor does not match the model"
            )));
        }
        Ok(p)
    }

    /// One image -> pixel_values `[3, crop_h, crop_w]`.
    pub fn apply(&self, image: &Rgb8) -> Result<Vec<f32>> {
        check_image(image)?;
        let resized = match self.shortest_edge {
            Some(side) => {
                let (w, h) = shortest_edge_size(image.width, image.height, side);
                resize(image, w, h, self.resample)
            }
            None => image.clone(),
        };
        let (ch, cw) = self.crop.unwrap_or((resized.height, resized.width));
        if ch > resized.height || cw > resized.width {
            return Err(Error::Invalid(format!(
                "an image of {}×{} is smaller than CLIP's crop of {cw}×{ch} after resizing",
                image.width, image.height
            )));
        }
        let (top, left) = ((resized.height - ch) / 2, (resized.width - cw) / 2);
        let mut out = vec![0f32; 3 * ch * cw];
        for c in 0..3 {
            for y in 0..ch {
                for x in 0..cw {
                    let mut v = resized.data[((top + y) * resized.width + left + x) * 3 + c] as f64;
                    if let Some(r) = self.rescale {
                        v *= r;
                    }
                    if self.normalize {
                        v = (v - self.mean[c]) / self.std[c];
                    }
                    out[(c * ch + y) * cw + x] = v as f32;
                }
            }
        }
        Ok(out)
    }
}

/// transformers' shortest-edge size: the shorter side becomes `side`, the
/// longer `⌊side · long / short⌋`. Returns (width, height).
pub fn shortest_edge_size(width: usize, height: usize, side: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (side as f64 * long as f64 / short as f64) as usize;
    if width <= height { (side, new_long) } else { (new_long, side) }
}

/// Fixed-point bits of Pillow's 8-bit resampling weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's coefficients for resampling `in_size` samples to `out_size`:
/// for each output, the first input and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|x| {
            let center = (x as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, then the bounds are clamped.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (first..end).map(|i| filter.weight((i as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (first, fixed)
        })
        .collect()
}

/// Pillow's 8-bit rounding of a fixed-point sum.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((width, height), filter)` on an RGB image.
pub fn resize(image: &Rgb8, width: usize, height: usize, filter: Resample) -> Rgb8 {
    let round = 1i64 << (PRECISION_BITS - 1);
    let mut cur = image.clone();
    if width != cur.width {
        let coeffs = coefficients(cur.width, width, filter);
        let mut data = vec![0u8; width * cur.height * 3];
        for y in 0..cur.height {
            for (x, (first, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let sum: i64 = k.iter().enumerate().map(|(i, &w)| cur.data[(y * cur.width + first + i) * 3 + c] as i64 * w as i64).sum();
                    data[(y * width + x) * 3 + c] = clip8(round + sum);
                }
            }
        }
        cur = Rgb8 { width, height: cur.height, data };
    }
    if height != cur.height {
        let coeffs = coefficients(cur.height, height, filter);
        let mut data = vec![0u8; cur.width * height * 3];
        for (y, (first, k)) in coeffs.iter().enumerate() {
            for x in 0..cur.width {
                for c in 0..3 {
                    let sum: i64 = k.iter().enumerate().map(|(i, &w)| cur.data[((first + i) * cur.width + x) * 3 + c] as i64 * w as i64).sum();
                    data[(y * cur.width + x) * 3 + c] = clip8(round + sum);
                }
            }
        }
        cur = Rgb8 { width: cur.width, height, data };
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shorter_side_becomes_the_size_and_the_longer_is_truncated() {
        assert_eq!(shortest_edge_size(61, 45, 32), (43, 32));
        assert_eq!(shortest_edge_size(27, 20, 32), (43, 32));
        assert_eq!(shortest_edge_size(20, 27, 32), (32, 43));
        assert_eq!(shortest_edge_size(64, 64, 32), (32, 32));
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_a_constant_image_stays_constant() {
        for (i, o) in [(61, 43), (20, 43), (224, 224), (512, 224), (7, 3)] {
            for f in [Resample::Bicubic, Resample::Bilinear] {
                for (_, k) in coefficients(i, o, f) {
                    let s: i64 = k.iter().map(|&w| w as i64).sum();
                    assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o} {f:?}: {s}");
                }
            }
        }
        let flat = Rgb8 { width: 13, height: 9, data: vec![200; 13 * 9 * 3] };
        let r = resize(&flat, 5, 17, Resample::Bicubic);
        assert!(r.data.iter().all(|&v| v == 200), "{:?}", r.data);
    }

    #[test]
    fn downsampling_averages_over_the_widened_support() {
        // A 1-pixel checkerboard reduced 4× by an antialiased filter is grey;
        // point sampling would give black or white.
        let (w, h) = (32, 8);
        let data = (0..w * h).flat_map(|i| { let v = if (i % w + i / w) % 2 == 0 { 255 } else { 0 }; [v, v, v] }).collect();
        let r = resize(&Rgb8 { width: w, height: h, data }, 8, 2, Resample::Bicubic);
        assert!(r.data.iter().all(|&v| (100..=155).contains(&v)), "{:?}", r.data);
    }
}
