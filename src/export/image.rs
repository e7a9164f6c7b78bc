//! Images: [-1, 1] tensors to 8-bit RGB, PNG files (written atomically).
use std::path::Path;

use crate::error::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Images of one size as a [B, 3, H, W] batch in [-1, 1] (x = byte / 127.5 − 1,
/// how the embedded prior and its classifier read 8-bit images), with its shape.
pub fn to_signed_nchw(images: &[Rgb8]) -> Result<(Vec<f32>, [usize; 4])> {
    let first = images.first().ok_or_else(|| Error::Invalid("to_signed_nchw: no images".into()))?;
    let (h, w) = (first.height, first.width);
    let plane = h * w;
    let mut out = vec![0.0f32; images.len() * 3 * plane];
    for (i, img) in images.iter().enumerate() {
        if (img.width, img.height) != (w, h) || img.data.len() != 3 * plane {
            return Err(Error::Invalid(format!("to_signed_nchw: image {i} is {}x{}, the first is {w}x{h}", img.width, img.height)));
        }
        for p in 0..plane {
            for c in 0..3 {
                out[(i * 3 + c) * plane + p] = img.data[p * 3 + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok((out, [images.len(), 3, h, w]))
}

/// Image `index` of a [B, 3, H, W] batch in [-1, 1], rounded as diffusers'
/// `numpy_to_pil` does: round(clamp(x/2 + 0.5, 0, 1)·255).
pub fn from_signed_nchw(values: &[f32], shape: &[usize], index: usize) -> Result<Rgb8> {
    if shape.len() != 4 || shape[1] != 3 || index >= shape[0] {
        return Err(Error::shape("image", format!("expected [B, 3, H, W] with image {index}, got {shape:?}")));
    }
    let (h, w) = (shape[2], shape[3]);
    let plane = h * w;
    let base = index * 3 * plane;
    let mut data = vec![0u8; plane * 3];
    for c in 0..3 {
        for i in 0..plane {
            let v = (values[base + c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            data[i * 3 + c] = (v * 255.0).round_ties_even() as u8;
        }
    }
    Ok(Rgb8 { width: w, height: h, data })
}

pub fn encode_png(img: &Rgb8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| Error::Invalid(format!("png: {e}")))?;
        w.write_image_data(&img.data).map_err(|e| Error::Invalid(format!("png: {e}")))?;
    }
    Ok(out)
}

pub fn write_png(path: &Path, img: &Rgb8) -> Result<()> {
    crate::io::write_atomic(path, &encode_png(img)?)
}

/// Reads an 8-bit RGB or RGBA PNG (alpha dropped).
pub fn read_png(path: &Path) -> Result<Rgb8> {
    let file = std::fs::File::open(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let mut buf = vec![0; dec.output_buffer_size().unwrap_or(0)];
    let info = dec.next_frame(&mut buf).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let ch = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(Error::Invalid(format!("{}: colour type {other:?} is not supported", path.display()))),
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(Error::Invalid(format!("{}: only 8-bit PNGs are supported", path.display())));
    }
    let data = buf[..info.buffer_size()].chunks(ch).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Ok(Rgb8 { width: info.width as usize, height: info.height as usize, data })
}
