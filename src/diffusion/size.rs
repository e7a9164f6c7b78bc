//! The size of what the sampler draws, chosen as diffusers'
//! StableDiffusionPipeline chooses it: `height` and `width` in pixels,
//! by default the UNet's `sample_size` × the VAE's scale factor, each a
//! multiple of that factor; or, when initial latents are given, the
//! latents' own spatial size (diffusers reads nothing else from them).
//! Pixel priors have no VAE: their scale factor is 1 and any size goes.
use crate::error::{Error, Result};
use crate::models::prior::Prior;

/// Image height and width asked for, in pixels. A side left out is the
/// model's default, or the latents' own when initial latents are given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageSize {
    pub height: Option<usize>,
    pub width: Option<usize>,
}

impl ImageSize {
    /// Both sides given.
    pub fn new(height: usize, width: usize) -> ImageSize {
        ImageSize { height: Some(height), width: Some(width) }
    }
}

/// Initial noise given by the caller, as diffusers' `latents=`: one sample
/// [1, C, h, w] (before the scheduler's `init_noise_sigma`), whose shape
/// decides the size of the image.
#[derive(Clone, Debug, PartialEq)]
pub struct Latents {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Latents {
    /// `data` in row-major order for `shape`; [C, h, w] is taken as [1, C, h, w].
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Latents> {
        let shape: [usize; 4] = match *shape {
            [1, c, h, w] => [1, c, h, w],
            [c, h, w] => [1, c, h, w],
            _ => {
                return Err(Error::Invalid(format!(
                    "initial latents must be one sample [1, C, h, w] (as diffusers' `latents=`), got shape {shape:?}"
                )));
            }
        };
        let want: usize = shape.iter().product();
        if want == 0 {
            return Err(Error::Invalid(format!("initial latents of shape {shape:?} are empty")));
        }
        if data.len() != want {
            return Err(Error::Invalid(format!("initial latents of shape {shape:?} need {want} values, got {}", data.len())));
        }
        Ok(Latents { shape, data })
    }
    /// [1, C, h, w].
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

/// What a model's samples look like: their channels, their default spatial
/// size, and how many image pixels one sample pixel becomes along each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleGeometry {
    pub channels: usize,
    /// Default [h, w] of a sample (the UNet's `sample_size`).
    pub default_size: [usize; 2],
    /// The VAE's scale factor (2^(levels − 1)); 1 for pixel priors.
    pub scale_factor: usize,
}

impl SampleGeometry {
    pub fn of(prior: &dyn Prior) -> SampleGeometry {
        let [channels, h, w] = prior.sample_shape();
        SampleGeometry { channels, default_size: [h, w], scale_factor: prior.scale_factor() }
    }

    /// The sample shape [C, h, w] that draws an image of `size`, or that
    /// `latents` give. Latents whose channels differ from the model's, or
    /// whose size contradicts a side given in `size`, are refused; so is a
    /// side that is not a positive multiple of the scale factor.
    pub fn resolve(&self, size: ImageSize, latents: Option<&Latents>) -> Result<[usize; 3]> {
        let f = self.scale_factor;
        // Sides given in pixels, as sample sides.
        let height = size.height.map(|px| self.check_side("--height", px)).transpose()?;
        let width = size.width.map(|px| self.check_side("--width", px)).transpose()?;
        let Some(l) = latents else {
            return Ok([self.channels, height.unwrap_or(self.default_size[0]), width.unwrap_or(self.default_size[1])]);
        };
        let shape = l.shape();
        let [_, c, h, w] = shape;
        if c != self.channels {
            return Err(Error::Invalid(format!(
                "the initial latents {shape:?} have {c} channels but this model's samples have {} (its UNet's in_channels): give latents [1, {}, h, w]",
                self.channels, self.channels
            )));
        }
        for (flag, given, from_latents) in [("--height", height, h), ("--width", width, w)] {
            if let Some(side) = given.filter(|&side| side != from_latents) {
                let how = if f == 1 { String::new() } else { format!(" at the VAE's scale factor {f}") };
                return Err(Error::Invalid(format!(
                    "the initial latents {shape:?} make a {}×{} image (height × width){how}, but {flag} asks for {}: \
                     leave out --height and --width to take the latents' size, or give latents [1, {c}, {}, {}]",
                    h * f,
                    w * f,
                    side * f,
                    height.unwrap_or(h),
                    width.unwrap_or(w),
                )));
            }
        }
        Ok([c, h, w])
    }

    /// The sample side of an image side `px`, or an error that names the
    /// nearest valid image sides.
    fn check_side(&self, flag: &str, px: usize) -> Result<usize> {
        let f = self.scale_factor;
        let what = if f == 1 { "pixel".to_string() } else { format!("latent pixel: {f} pixels at the VAE's scale factor") };
        if px == 0 {
            return Err(Error::Invalid(format!("{flag} must be at least {f} (one {what})")));
        }
        if !px.is_multiple_of(f) {
            let below = px / f * f;
            let above = below + f;
            let nearest = if below == 0 { format!("{above}") } else { format!("{below} or {above}") };
            return Err(Error::Invalid(format!(
                "{flag} {px} is not a multiple of {f}, the VAE's scale factor (image pixels per latent pixel): use {nearest}"
            )));
        }
        Ok(px / f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: SampleGeometry = SampleGeometry { channels: 4, default_size: [64, 64], scale_factor: 8 };
    const PIXELS: SampleGeometry = SampleGeometry { channels: 3, default_size: [32, 32], scale_factor: 1 };

    fn latents(shape: &[usize]) -> Latents {
        Latents::new(shape, vec![0.0; shape.iter().product()]).unwrap()
    }

    #[test]
    fn defaults_are_the_models_sample_size() {
        assert_eq!(SD.resolve(ImageSize::default(), None).unwrap(), [4, 64, 64]);
        assert_eq!(PIXELS.resolve(ImageSize::default(), None).unwrap(), [3, 32, 32]);
    }

    #[test]
    fn a_side_given_in_pixels_sets_the_sample_side() {
        assert_eq!(SD.resolve(ImageSize::new(768, 256), None).unwrap(), [4, 96, 32]);
        assert_eq!(SD.resolve(ImageSize { height: Some(256), width: None }, None).unwrap(), [4, 32, 64]);
        assert_eq!(PIXELS.resolve(ImageSize::new(23, 41), None).unwrap(), [3, 23, 41]);
    }

    #[test]
    fn a_side_off_the_scale_factor_names_the_nearest_valid_sides() {
        let e = SD.resolve(ImageSize { height: Some(20), width: None }, None).unwrap_err().to_string();
        assert!(e.contains("--height 20") && e.contains("use 16 or 24"), "{e}");
        let e = SD.resolve(ImageSize { height: None, width: Some(3) }, None).unwrap_err().to_string();
        assert!(e.contains("--width 3") && e.contains("use 8") && !e.contains(" or "), "{e}");
        let e = SD.resolve(ImageSize::new(0, 64), None).unwrap_err().to_string();
        assert!(e.contains("--height must be at least 8"), "{e}");
        let e = PIXELS.resolve(ImageSize::new(16, 0), None).unwrap_err().to_string();
        assert!(e.contains("--width must be at least 1"), "{e}");
    }

    #[test]
    fn latents_decide_the_size() {
        assert_eq!(SD.resolve(ImageSize::default(), Some(&latents(&[1, 4, 8, 6]))).unwrap(), [4, 8, 6]);
        assert_eq!(SD.resolve(ImageSize::new(64, 48), Some(&latents(&[1, 4, 8, 6]))).unwrap(), [4, 8, 6]);
        assert_eq!(SD.resolve(ImageSize { height: Some(64), width: None }, Some(&latents(&[4, 8, 6]))).unwrap(), [4, 8, 6]);
    }

    #[test]
    fn latents_that_contradict_the_model_or_the_size_are_refused() {
        let e = SD.resolve(ImageSize::default(), Some(&latents(&[1, 3, 8, 8]))).unwrap_err().to_string();
        assert!(e.contains("3 channels") && e.contains("[1, 4, h, w]"), "{e}");
        let e = SD.resolve(ImageSize { height: None, width: Some(40) }, Some(&latents(&[1, 4, 8, 6]))).unwrap_err().to_string();
        assert!(e.contains("64×48") && e.contains("--width asks for 40") && e.contains("[1, 4, 8, 5]"), "{e}");
        // A side off the scale factor is that error first, latents or not.
        let e = SD.resolve(ImageSize { height: Some(20), width: None }, Some(&latents(&[1, 4, 8, 6]))).unwrap_err().to_string();
        assert!(e.contains("use 16 or 24"), "{e}");
    }

    #[test]
    fn latents_of_the_wrong_rank_or_length_are_refused() {
        assert!(Latents::new(&[2, 4, 8, 8], vec![0.0; 512]).unwrap_err().to_string().contains("one sample [1, C, h, w]"));
        assert!(Latents::new(&[8, 8], vec![0.0; 64]).is_err());
        assert!(Latents::new(&[1, 4, 8, 8], vec![0.0; 255]).unwrap_err().to_string().contains("need 256 values, got 255"));
    }
}
