//! The Prior: where a diffusion model plugs into the samplers and the
//! distillation loops, which never name a model. Stable Diffusion 1.x / 2.x
//! pipelines and the embedded pixel-space prior (a pipeline without a VAE)
//! are both [`StableDiffusion`].
use std::path::{Path, PathBuf};

use crate::models::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::clip_text::ClipTextModel;
use crate::models::tokenizer::{ClipPadding, PromptTokenizer};
use crate::models::unet::{UNet, Extras};
use crate::models::vae::Vae;
use crate::models::vae_backward::EncoderTape;
use crate::ops::{concat, diffusion as dops, elementwise as ew};

/// What the samplers and loops ask of a diffusion model.
pub trait Prior {
    /// Default shape of one sample x the model denoises: [C, h, w] (latents
    /// or pixels), h and w its UNet's `sample_size`. The samplers draw other
    /// sizes too (`diffusion::size`); the 3D loop works at this one.
    fn sample_shape(&self) -> [usize; 3];
    /// Image pixels per sample pixel along each side: the VAE's scale
    /// factor, 1 for pixel priors.
    fn scale_factor(&self) -> usize;
    /// Resolution of the images of default-shaped samples.
    fn image_size(&self) -> [usize; 2] {
        let [_, h, w] = self.sample_shape();
        [h * self.scale_factor(), w * self.scale_factor()]
    }
    fn scheduler_config(&self) -> &SchedulerConfig;
    /// Text embeddings [B, L, D] of prompts.
    fn embed(&self, gpu: &Gpu, prompts: &[&str]) -> Result<Tensor>;
    /// The model output (in its parameterisation: ε or v) for x_t [B, C, h, w]
    /// at timestep t, guided: `out_∅ + s·(out_y − out_∅)` when `uncond` is given.
    /// A multi-view prior needs `views`, the cameras of the B views (see
    /// [`Prior::num_frames`]); a text-to-image prior refuses them.
    #[allow(clippy::too_many_arguments)]
    fn predict(&self, gpu: &Gpu, x_t: &Tensor, t: f32, cond: &Tensor, uncond: Option<&Tensor>, cfg: f32, views: Option<&ViewCameras>) -> Result<Tensor>;
    /// The views a multi-view prior (MVDream) denoises together, each object's
    /// adjacent in the batch and each with its camera; None for a
    /// text-to-image prior.
    fn num_frames(&self) -> Option<usize> {
        None
    }
    /// The UNet itself, for methods that train an adapter on it (VSD);
    /// None where the prior has none.
    fn unet(&self) -> Option<&UNet> {
        None
    }
    /// Samples to images [B, 3, H, W] in [-1, 1] (VAE decode for latent priors).
    fn to_image(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor>;
    /// Storage type of its activations.
    fn dtype(&self) -> DType;
    /// Images [B, 3, H, W] in [-1, 1] at [`image_size`](Prior::image_size)
    /// (f32) -> samples of its space (f32): the images themselves for pixel
    /// priors; for latent priors the VAE posterior mean × scaling factor,
    /// with what [`encode_backward`](Prior::encode_backward) needs.
    fn encode(&self, gpu: &Gpu, images: &Tensor) -> Result<Encoded>;
    /// ∂L/∂images (f32) from ∂L/∂sample (f32) of an [`encode`](Prior::encode).
    fn encode_backward(&self, gpu: &Gpu, enc: &Encoded, d_sample: &Tensor) -> Result<Tensor>;
}

/// Extras per object of a camera-conditioned UNet whose folder does not say
/// otherwise: MVDream's 4 (threestudio's `n_view`).
pub const MVDREAM_FRAMES: usize = 4;

/// The cameras of a multi-view batch: `camera` [B, 16] f32, each view's
/// [`crate::scene::camera::mvdream_camera`], and `frames` views a object,
/// adjacent in the batch.
pub struct ViewCameras {
    pub camera: Tensor,
    pub frames: usize,
}

impl ViewCameras {
    /// The cameras of `cameras`, `frames` views an object.
    pub fn new(gpu: &Gpu, cameras: &[crate::scene::Camera], frames: usize) -> Result<ViewCameras> {
        if frames == 0 || !cameras.len().is_multiple_of(frames) {
            return Err(Error::Invalid(format!("{} views cannot be grouped into objects of {frames} views", cameras.len())));
        }
        let data: Vec<f32> = cameras.iter().flat_map(crate::scene::camera::mvdream_camera).collect();
        Ok(ViewCameras { camera: gpu.upload(&data, &[cameras.len(), 16], DType::F32)?, frames })
    }

    /// The same views `n` times over along the batch (one model call for
    /// several prompts, as classifier-free guidance batches its pair).
    pub fn repeated(&self, gpu: &Gpu, n: usize) -> Result<ViewCameras> {
        Ok(ViewCameras { camera: concat::concat(gpu, &vec![&self.camera; n], 0)?, frames: self.frames })
    }
}

/// Images in the prior's sample space, and the encoder's tape (latent priors).
pub struct Encoded {
    /// [B, C, h, w], f32.
    pub sample: Tensor,
    tape: Option<EncoderTape>,
}

/// A text-to-image pipeline: tokenizer, CLIP text encoder, UNet, scheduler,
/// and a VAE unless it is a pixel-space model; from a diffusers folder or a
/// single-file LDM checkpoint.
pub struct StableDiffusion {
    /// The pipeline folder, or the single-file checkpoint.
    pub dir: PathBuf,
    pub tokenizer: PromptTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet,
    pub vae: Option<Vae>,
    pub scheduler: SchedulerConfig,
    /// Extras a multi-view UNet (one with a camera embedding) takes together.
    num_frames: Option<usize>,
    dtype: DType,
}

impl StableDiffusion {
    /// Loads a diffusers pipeline folder, or a single-file LDM checkpoint
    /// with its config YAML (see [`crate::models::ldm::single_file`]).
    pub fn load(gpu: &Gpu, dir: &Path, dtype: DType) -> Result<StableDiffusion> {
        if let Some((checkpoint, yaml)) = crate::models::ldm::single_file(dir) {
            return Self::from_single_file(gpu, &checkpoint, &yaml, dtype);
        }
        if dir.is_file() {
            return Err(Error::Invalid(format!(
                "{} is a file but not a single-file checkpoint fsd3d can open: expected a .safetensors file with its LDM config YAML \
                 beside it (same name with .yaml, or config.yaml in its folder); convert a .pt with tools/convert_ldm_checkpoint.py",
                dir.display()
            )));
        }
        let _phase = gpu.memory_phase(crate::gpu::MemoryPhase::LOADING_PRIOR);
        for part in ["unet", "text_encoder", "tokenizer", "scheduler"] {
            if !dir.join(part).is_dir() {
                return Err(Error::Invalid(format!(
                    "{} is not a diffusers pipeline folder: it has no {part}/ (expected model_index.json, unet/, text_encoder/, tokenizer/, scheduler/ and, for latent models, vae/)",
                    dir.display()
                )));
            }
        }
        let tokenizer = PromptTokenizer::from_dir(&dir.join("tokenizer"))?;
        let text_encoder = ClipTextModel::load(gpu, &dir.join("text_encoder"), dtype)?;
        let unet = UNet::load(gpu, &dir.join("unet"), dtype)?;
        let vae = if dir.join("vae").join("config.json").is_file() { Some(Vae::load(gpu, &dir.join("vae"), dtype)?) } else { None };
        let scheduler = SchedulerConfig::load(&dir.join("scheduler").join("scheduler_config.json"))?;
        // A camera-conditioned UNet is a multi-view prior: as many views as
        // its fsd3d_prior.json says it was trained with, else MVDream's.
        let num_frames = match unet.config.camera_dim {
            None => None,
            Some(_) => Some(crate::models::pixel_prior::PixelPriorSpec::load(dir)?.and_then(|s| s.views).map_or(MVDREAM_FRAMES, |v| v.num_frames)),
        };
        Self::assemble(dir, tokenizer, text_encoder, unet, vae, scheduler, num_frames, dtype)
    }

    /// A single-file checkpoint in the LDM layout (Stable Diffusion 1.x /
    /// 2.x, MVDream) and its config YAML: the UNet, VAE and text encoder read
    /// from the one file through its checkpoint views (`models::ldm`), the
    /// noise schedule from the YAML. Such a file holds no tokenizer: a
    /// `tokenizer/` folder beside it is used when there is one, else CLIP's
    /// own vocabulary (embedded), padded as its text encoder was trained
    /// (`<|endoftext|>` for CLIP, id 0 for OpenCLIP).
    pub fn from_single_file(gpu: &Gpu, checkpoint: &Path, yaml: &Path, dtype: DType) -> Result<StableDiffusion> {
        use crate::models::ldm;
        let _phase = gpu.memory_phase(crate::gpu::MemoryPhase::LOADING_PRIOR);
        let (has_vae, openclip) = {
            let w = crate::models::weights::Weights::open_file(checkpoint)?;
            let has = |prefix: &str| w.names().any(|n| n.starts_with(prefix));
            (has(ldm::VAE_PREFIX), has(ldm::OPENCLIP_TEXT_PREFIX))
        };
        let unet = ldm::load_unet(gpu, checkpoint, yaml, dtype)?;
        let text_encoder = ldm::load_text_encoder(gpu, checkpoint, yaml, dtype)?;
        let vae = match (has_vae, unet.config.in_channels) {
            (true, _) => Some(ldm::load_vae(gpu, checkpoint, yaml, dtype)?),
            (false, 3) => None,
            (false, c) => {
                return Err(Error::Invalid(format!(
                    "{}: no {}* tensors, but its UNet works on {c}-channel latents: a latent model needs its VAE in the same file",
                    checkpoint.display(),
                    ldm::VAE_PREFIX
                )));
            }
        };
        let scheduler = ldm::scheduler_config_from_yaml(yaml)?;
        let beside = checkpoint.parent().map(|d| d.join("tokenizer")).filter(|d| d.is_dir());
        let tokenizer = match beside {
            Some(dir) => PromptTokenizer::from_dir(&dir)?,
            None => PromptTokenizer::clip(if openclip { ClipPadding::Zero } else { ClipPadding::EndOfText })?,
        };
        let num_frames = unet.config.camera_dim.map(|_| MVDREAM_FRAMES);
        let mut unet = unet;
        if num_frames.is_none() {
            // Stable Diffusion's YAMLs mark the UNet's image_size "unused"
            // (32 in all of them): the size they were trained at is 512 px,
            // 768 px for the v-prediction 2.x models. MVDream's 32 latents
            // are its real 256 px.
            let px = if scheduler.prediction_type == crate::ops::diffusion::Prediction::VPrediction { 768 } else { 512 };
            unet.config.sample_size = Some(px / vae.as_ref().map_or(1, |v| v.downscale()));
        }
        Self::assemble(checkpoint, tokenizer, text_encoder, unet, vae, scheduler, num_frames, dtype)
    }

    /// Checks that the parts fit together (the errors name `source`).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        source: &Path,
        tokenizer: PromptTokenizer,
        text_encoder: ClipTextModel,
        unet: UNet,
        vae: Option<Vae>,
        scheduler: SchedulerConfig,
        num_frames: Option<usize>,
        dtype: DType,
    ) -> Result<StableDiffusion> {
        let ctx = unet.config.cross_attention_dim.expand(1, "cross_attention_dim")?[0];
        if ctx != text_encoder.hidden_size() {
            return Err(Error::Invalid(format!(
                "{}: the UNet's cross_attention_dim {ctx} differs from the text encoder's hidden_size {}",
                source.display(),
                text_encoder.hidden_size()
            )));
        }
        if tokenizer.vocab_size() > text_encoder.config.vocab_size {
            return Err(Error::Invalid(format!(
                "{}: the tokenizer has {} tokens but the text encoder embeds only {}: the tokenizer is not this model's \
                 (for a single file, put the model's tokenizer/ folder beside it)",
                source.display(),
                tokenizer.vocab_size(),
                text_encoder.config.vocab_size
            )));
        }
        if let Some(v) = &vae {
            if v.config.latent_channels != unet.config.in_channels {
                return Err(Error::Invalid(format!(
                    "{}: the VAE has {} latent channels, the UNet takes {}",
                    source.display(),
                    v.config.latent_channels,
                    unet.config.in_channels
                )));
            }
        }
        Ok(StableDiffusion { dir: source.to_path_buf(), tokenizer, text_encoder, unet, vae, scheduler, num_frames, dtype })
    }

    fn sample_size(&self) -> usize {
        match (self.unet.config.sample_size, &self.vae) {
            (Some(s), _) => s,
            (None, Some(v)) => v.config.sample_size.unwrap_or(512) / v.downscale(),
            (None, None) => 64,
        }
    }
}

impl Prior for StableDiffusion {
    fn sample_shape(&self) -> [usize; 3] {
        let s = self.sample_size();
        [self.unet.config.in_channels, s, s]
    }
    fn scale_factor(&self) -> usize {
        self.vae.as_ref().map_or(1, |v| v.downscale())
    }
    fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn embed(&self, gpu: &Gpu, prompts: &[&str]) -> Result<Tensor> {
        let ids: Vec<u32> = self.tokenizer.encode_batch(prompts)?.concat();
        let ids = gpu.upload_u32(&ids, &[prompts.len(), self.tokenizer.max_length()])?;
        self.text_encoder.forward(gpu, &ids)
    }

    fn num_frames(&self) -> Option<usize> {
        self.num_frames
    }

    fn unet(&self) -> Option<&UNet> {
        Some(&self.unet)
    }

    fn predict(&self, gpu: &Gpu, x_t: &Tensor, t: f32, cond: &Tensor, uncond: Option<&Tensor>, cfg: f32, views: Option<&ViewCameras>) -> Result<Tensor> {
        let b = x_t.dim(0);
        match (self.num_frames, views) {
            (Some(f), None) => {
                return Err(Error::Invalid(format!(
                    "{}: a multi-view prior ({f} views an object, camera-conditioned) needs each view's camera: \
                     `generate` (3D) and `sample` give them; the 2D `image` loop, with one view and no camera, cannot use it",
                    self.dir.display()
                )));
            }
            (None, Some(_)) => {
                return Err(Error::Invalid(format!("{}: cameras were given, but this is not a multi-view prior (its UNet has no camera embedding)", self.dir.display())));
            }
            _ => {}
        }
        let unet = |x: &Tensor, ts: &Tensor, ctx: &Tensor, cams: Option<&ViewCameras>| match cams {
            Some(v) => self.unet.forward_views(gpu, x, ts, ctx, &Extras { camera: Some(&v.camera), frames: v.frames, lora: None }),
            None => self.unet.forward(gpu, x, ts, ctx),
        };
        match uncond {
            None => {
                let ts = gpu.upload(&vec![t; b], &[b], DType::F32)?;
                unet(x_t, &ts, cond, views)
            }
            Some(u) => {
                // One UNet call on [uncond; cond], as diffusers batches it
                // (the cameras twice over: each half is whole objects).
                let x2 = concat::concat(gpu, &[x_t, x_t], 0)?;
                let ctx = concat::concat(gpu, &[u, cond], 0)?;
                let ts = gpu.upload(&vec![t; 2 * b], &[2 * b], DType::F32)?;
                let views2 = views.map(|v| v.repeated(gpu, 2)).transpose()?;
                dops::guidance(gpu, &unet(&x2, &ts, &ctx, views2.as_ref())?, cfg)
            }
        }
    }

    fn encode(&self, gpu: &Gpu, images: &Tensor) -> Result<Encoded> {
        let [ih, iw] = self.image_size();
        if images.rank() != 4 || images.dim(1) != 3 || images.dim(2) != ih || images.dim(3) != iw {
            return Err(Error::shape("encode", format!("expected images [B, 3, {ih}, {iw}], got {images:?}")));
        }
        match &self.vae {
            None => Ok(Encoded { sample: gpu.to_dtype(images, DType::F32)?, tape: None }),
            Some(v) => {
                let (posterior, tape) = v.encode_with_tape(gpu, &gpu.to_dtype(images, self.dtype)?)?;
                let sample = ew::scale(gpu, &gpu.to_dtype(&posterior.mean, DType::F32)?, v.scaling_factor() as f32)?;
                Ok(Encoded { sample, tape: Some(tape) })
            }
        }
    }

    fn encode_backward(&self, gpu: &Gpu, enc: &Encoded, d_sample: &Tensor) -> Result<Tensor> {
        if d_sample.shape() != enc.sample.shape() {
            return Err(Error::shape("encode_backward", format!("the gradient {d_sample:?} must have the sample's shape {:?}", enc.sample.shape())));
        }
        match (&self.vae, &enc.tape) {
            (None, _) => gpu.to_dtype(d_sample, DType::F32),
            (Some(v), Some(tape)) => {
                // sample = s·mean: ∂L/∂mean = s·∂L/∂sample.
                let d_mean = ew::scale(gpu, d_sample, v.scaling_factor() as f32)?;
                let d_images = v.encode_backward(gpu, tape, &gpu.to_dtype(&d_mean, DType::F32)?)?;
                gpu.to_dtype(&d_images, DType::F32)
            }
            (Some(_), None) => Err(Error::Invalid("encode_backward: this encoding has no tape (it was not made by this latent prior)".into())),
        }
    }

    fn to_image(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        match &self.vae {
            Some(v) => v.decode(gpu, &ew::scale(gpu, x, (1.0 / v.scaling_factor()) as f32)?),
            None => Ok(x.clone()),
        }
    }
}
