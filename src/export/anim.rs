//! Animated turntables as APNG (animated PNG), written atomically.
//!
//! Why APNG rather than GIF: the `png` crate, already a dependency, writes it,
//! and it is lossless 24-bit colour. A GIF would need a new dependency and a
//! 256-colour palette per frame, which bands the smooth shading of a render.
//! Browsers and most image viewers play APNG; viewers that do not show the
//! first frame, which is the front view (azimuth 0) of a turntable.
use std::path::Path;

use super::image::Rgb8;
use crate::error::{Error, Result};

/// The APNG of `frames` (all the same size), `delay_ms` milliseconds each,
/// looping forever.
pub fn encode_apng(frames: &[Rgb8], delay_ms: u32) -> Result<Vec<u8>> {
    let first = frames.first().ok_or_else(|| Error::Invalid("apng: no frames to write".into()))?;
    let (w, h) = (first.width, first.height);
    if w == 0 || h == 0 {
        return Err(Error::Invalid(format!("apng: frames of {w}×{h} pixels: width and height must be positive")));
    }
    for (i, f) in frames.iter().enumerate() {
        if (f.width, f.height) != (w, h) {
            return Err(Error::Invalid(format!(
                "apng: frame {i} is {}×{}, frame 0 is {w}×{h}: render every frame at one size",
                f.width, f.height
            )));
        }
        if f.data.len() != w * h * 3 {
            return Err(Error::Invalid(format!("apng: frame {i} holds {} bytes, expected {w}×{h}×3 = {}", f.data.len(), w * h * 3)));
        }
    }
    let delay = u16::try_from(delay_ms)
        .map_err(|_| Error::Invalid(format!("apng: frame delay {delay_ms} ms is over the format's 65535 ms")))?;
    let (w32, h32) = (u32::try_from(w), u32::try_from(h));
    let (Ok(w32), Ok(h32)) = (w32, h32) else {
        return Err(Error::Invalid(format!("apng: frames of {w}×{h} pixels are too large")));
    };
    let png_err = |e: png::EncodingError| Error::Invalid(format!("apng: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w32, h32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        // Zero plays = loop forever; the first frame is also the still image.
        enc.set_animated(frames.len() as u32, 0).map_err(png_err)?;
        enc.set_frame_delay(delay, 1000).map_err(png_err)?;
        let mut writer = enc.write_header().map_err(png_err)?;
        for f in frames {
            writer.write_image_data(&f.data).map_err(png_err)?;
        }
        writer.finish().map_err(png_err)?;
    }
    Ok(out)
}

/// Writes `frames` as a looping APNG, `delay_ms` milliseconds a frame (atomically).
pub fn write_apng(path: &Path, frames: &[Rgb8], delay_ms: u32) -> Result<()> {
    crate::io::write_atomic(path, &encode_apng(frames, delay_ms)?)
}
