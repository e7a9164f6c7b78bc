//! `fsd3d bench unet`: one UNet forward step as a sampler runs it, batch 2
//! (classifier-free guidance), latents at the config's sample size, 77 text
//! tokens of context.
//!
//! Measured: the tiny test and prior UNets with their real weights, and with
//! `--random-weights` Stable Diffusion 1.5's UNet (or `--model`'s config) with
//! weights drawn from a seeded normal ([`RandomWeights`]): its speed needs the
//! shapes, not the trained values, and the 3.4 GB checkpoint need not be at
//! hand. The model is loaded during the warm-up call, so the timing is the
//! step alone, and freed when its case is done.
use std::path::{Path, PathBuf};

use crate::bench::random::RandomFolder;
use crate::bench::{BenchArgs, Case, dtypes};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::config::UNetConfig;
use crate::models::unet::{UNet, component_dir};
use crate::models::weights::RandomWeights;

/// Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5/unet/config.json`,
/// the keys fsd3d reads): 320/640/1280/1280 channels, 8 heads, 768-wide text
/// context, two layers per block, 64×64 latents. 859.5 M parameters.
pub const SD15_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// The random weights the bench draws: small enough that activations stay
/// finite in f16 through the whole network.
pub const BENCH_RANDOM_WEIGHTS: RandomWeights = RandomWeights { seed: 0, std: 0.02 };

/// Text tokens of the context (CLIP's sequence length).
pub const CONTEXT_TOKENS: usize = 77;

/// Latent side when a config has no `sample_size`.
const DEFAULT_LATENT_SIDE: usize = 64;

/// Loads a UNet from the text of a diffusers `config.json`, its weights
/// synthesised by `spec` instead of read from a checkpoint.
pub fn random_unet(gpu: &Gpu, config_json: &str, dtype: DType, spec: RandomWeights) -> Result<UNet> {
    // UNet::load reads a folder: give it one with the config and the marker.
    let folder = RandomFolder::new("unet")?;
    folder.component("", config_json, spec)?;
    UNet::load(gpu, folder.path(), dtype)
}

/// The inputs of one guided denoising step.
pub struct StepInputs {
    /// Latents `[batch, in_channels, side, side]` in the model's dtype.
    pub sample: Tensor,
    /// `[batch]`, f32.
    pub timesteps: Tensor,
    /// Text context `[batch, 77, cross_attention_dim]` in the model's dtype.
    pub context: Tensor,
}

impl StepInputs {
    /// Seeded inputs for `unet`: `batch` latents of the config's sample size
    /// (or `side`), timestep 500, a context as wide as the config's cross-attention.
    pub fn new(gpu: &Gpu, unet: &UNet, batch: usize, side: Option<usize>) -> Result<StepInputs> {
        let c = &unet.config;
        let side = side.or(c.sample_size).unwrap_or(DEFAULT_LATENT_SIDE);
        let width = context_width(c)?;
        let normal = |n: usize, seed: u64| RandomWeights { seed, std: 1.0 }.values("input", &[n]);
        let sample_shape = [batch, c.in_channels, side, side];
        let context_shape = [batch, CONTEXT_TOKENS, width];
        Ok(StepInputs {
            sample: gpu.upload(&normal(sample_shape.iter().product(), 1), &sample_shape, unet.dtype())?,
            timesteps: gpu.upload(&vec![500.0; batch], &[batch], DType::F32)?,
            context: gpu.upload(&normal(context_shape.iter().product(), 2), &context_shape, unet.dtype())?,
        })
    }
}

/// The text context width the config's cross-attention takes.
fn context_width(c: &UNetConfig) -> Result<usize> {
    Ok(c.cross_attention_dim.expand(c.block_out_channels.len(), "cross_attention_dim")?[0])
}

/// One UNet forward: the prediction `[batch, out_channels, side, side]`.
pub fn step(gpu: &Gpu, unet: &UNet, x: &StepInputs) -> Result<Tensor> {
    unet.forward(gpu, &x.sample, &x.timesteps, &x.context)
}

/// Where a measured UNet's weights come from.
#[derive(Clone, Debug)]
enum Source {
    /// A folder with config.json and safetensors.
    Folder(PathBuf),
    /// The text of a config.json; weights from [`BENCH_RANDOM_WEIGHTS`].
    Random(String),
}

/// A UNet to measure: what the table calls it, where it comes from, its config.
struct Model {
    name: String,
    source: Source,
    config: UNetConfig,
}

impl Model {
    fn folder(name: &str, dir: &Path) -> Result<Model> {
        let config = UNetConfig::load(&component_dir(dir).join("config.json"))?;
        Ok(Model { name: name.into(), source: Source::Folder(dir.to_path_buf()), config })
    }

    fn random(name: &str, config_json: String) -> Result<Model> {
        let config: UNetConfig =
            serde_json::from_str(&config_json).map_err(|e| Error::Invalid(format!("UNet config of {name}: {e}")))?;
        Ok(Model { name: format!("{name} (random weights)"), source: Source::Random(config_json), config })
    }

    fn load(&self, gpu: &Gpu, dtype: DType) -> Result<UNet> {
        match &self.source {
            Source::Folder(dir) => UNet::load(gpu, dir, dtype),
            Source::Random(json) => random_unet(gpu, json, dtype, BENCH_RANDOM_WEIGHTS),
        }
    }

    /// `B2 4x64² ctx 77x768`.
    fn shape(&self) -> Result<String> {
        let c = &self.config;
        let side = c.sample_size.unwrap_or(DEFAULT_LATENT_SIDE);
        Ok(format!("B2 {}x{side}² ctx {CONTEXT_TOKENS}x{}", c.in_channels, context_width(c)?))
    }
}

/// The UNets `args` ask for: `--model`, else the tiny ones with real weights
/// and, with `--random-weights` (and not `--quick`), SD 1.5.
fn models(args: &BenchArgs) -> Result<Vec<Model>> {
    if let Some(dir) = &args.model {
        let name = dir.display().to_string();
        if args.random_weights {
            let path = component_dir(dir).join("config.json");
            let json = std::fs::read_to_string(&path).map_err(|e| Error::Io { path: path.clone(), cause: e })?;
            return Ok(vec![Model::random(&name, json)?]);
        }
        return Ok(vec![Model::folder(&name, dir)?]);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tiny = [
        ("sd1 test unet", root.join("tests/fixtures/models/sd1_unet")),
        ("sd2 test unet", root.join("tests/fixtures/models/sd2_unet")),
        ("tiny-shapes prior", crate::models::embedded_prior_dir().join("unet")),
    ];
    let mut v = Vec::new();
    for (name, dir) in tiny {
        if dir.join("config.json").is_file() {
            v.push(Model::folder(name, &dir)?);
        } else {
            eprintln!("note: {} is not here (not a source checkout?): skipping the {name}", dir.display());
        }
    }
    if args.random_weights && !args.quick {
        v.push(Model::random("sd15", SD15_UNET_CONFIG.to_string())?);
    }
    Ok(v)
}

/// A case that loads `model` on its first (warm-up) call and then records one step.
fn case<'a>(gpu: &'a Gpu, model: Model, dtype: DType) -> Result<Case<'a>> {
    let shape = model.shape()?;
    let mut loaded: Option<(UNet, StepInputs)> = None;
    Ok(Case {
        kernel: format!("unet {}", model.name),
        shape,
        dtype,
        flops: 0.0,
        bytes: 0.0,
        record: Box::new(move || {
            if loaded.is_none() {
                let unet = model.load(gpu, dtype)?;
                let inputs = StepInputs::new(gpu, &unet, 2, None)?;
                loaded = Some((unet, inputs));
            }
            let (unet, inputs) = loaded.as_ref().expect("loaded above");
            step(gpu, unet, inputs).map(drop)
        }),
    })
}

/// The UNet step cases, in every dtype measured (see [`dtypes`]).
pub fn cases<'a>(gpu: &'a Gpu, args: &BenchArgs) -> Result<Vec<Case<'a>>> {
    let mut v = Vec::new();
    for dtype in dtypes(gpu, args)? {
        for model in models(args)? {
            v.push(case(gpu, model, dtype)?);
        }
    }
    Ok(v)
}
