//! The `config.json` files diffusers and transformers write, read with the
//! library's own defaults for missing keys, for SD 1.x / 2.x and the
//! embedded prior. Fields diffusers allows as "int or list" are normalised
//! to one value per block.
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ops::diffusion::Prediction;

/// Reads and parses a JSON config, with the path in every error.
pub fn read_config<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// A config value that diffusers accepts as one number for all blocks or a list.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// One value per block; a list must have exactly `n` entries.
    pub fn expand(&self, n: usize, what: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Invalid(format!("config: {what} has {} entries for {n} blocks", v.len()))),
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_one_usize() -> usize {
    1
}
fn d_eps() -> f64 {
    1e-5
}
fn d_silu() -> String {
    "silu".into()
}
fn d_groups() -> usize {
    32
}
fn d_kernel3() -> usize {
    3
}

/// diffusers `UNet2DConditionModel` (the keys SD 1.x / 2.x and small variants use).
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid_block")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: Value,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d_layers_one")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Despite its name, diffusers uses this as the number of heads when
    /// `num_attention_heads` is absent (a known naming quirk kept for compatibility).
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// MVDream: the width of a view's camera input (16), when the UNet has a camera embedding.
    #[serde(default)]
    pub camera_dim: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "d_kernel3")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_kernel3")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
}

fn d_four() -> usize {
    4
}
fn d_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_layers_one() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_one_f64() -> f64 {
    1.0
}
fn d_cross() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<UNetConfig> {
        let c: UNetConfig = read_config(path)?;
        c.check().map_err(|m| Error::Invalid(format!("{}: {m}", path.display())))?;
        Ok(c)
    }

    /// Heads per down block (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(n, "num_attention_heads"),
            None => self.attention_head_dim.expand(n, "attention_head_dim"),
        }
    }

    /// Rejects what the engine does not implement, saying so.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{} down blocks and {} up blocks for {} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len(),
                n
            ));
        }
        for b in self.down_block_types.iter().chain(&self.up_block_types) {
            if !["DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"].contains(&b.as_str()) {
                return Err(format!("block type {b:?} is not supported (SD 1.x/2.x blocks are)"));
            }
        }
        if let Some(m) = &self.mid_block_type {
            if m != "UNetMidBlock2DCrossAttn" {
                return Err(format!("mid_block_type {m:?} is not supported"));
            }
        }
        let unsupported = [
            (self.class_embed_type.is_some(), "class_embed_type"),
            (self.addition_embed_type.is_some(), "addition_embed_type (SDXL)"),
            (self.num_class_embeds.is_some(), "num_class_embeds"),
            (self.dual_cross_attention, "dual_cross_attention"),
            (self.time_cond_proj_dim.is_some(), "time_cond_proj_dim"),
            (self.encoder_hid_dim.is_some(), "encoder_hid_dim"),
            (self.resnet_time_scale_shift != "default", "resnet_time_scale_shift other than \"default\""),
            (self.time_embedding_type != "positional", "time_embedding_type other than \"positional\""),
            (self.center_input_sample, "center_input_sample"),
        ];
        for (bad, what) in unsupported {
            if bad {
                return Err(format!("{what} is not supported"));
            }
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups must be at least 1".into());
        }
        if self.block_out_channels.iter().any(|c| c % self.norm_num_groups != 0) {
            return Err(format!("norm_num_groups {} does not divide every block_out_channels", self.norm_num_groups));
        }
        self.heads().map_err(|e| e.to_string())?;
        self.layers_per_block.expand(n, "layers_per_block").map_err(|e| e.to_string())?;
        self.cross_attention_dim.expand(n, "cross_attention_dim").map_err(|e| e.to_string())?;
        self.transformer_layers_per_block.expand(n, "transformer_layers_per_block").map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// diffusers `AutoencoderKL`.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_one_usize")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_four")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

fn d_three() -> usize {
    3
}
fn d_scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<VaeConfig> {
        let c: VaeConfig = read_config(path)?;
        let bad = c.down_block_types.iter().any(|b| b != "DownEncoderBlock2D")
            || c.up_block_types.iter().any(|b| b != "UpDecoderBlock2D");
        if bad || c.down_block_types.len() != c.block_out_channels.len() {
            return Err(Error::Invalid(format!(
                "{}: only DownEncoderBlock2D / UpDecoderBlock2D autoencoders with one block type per block_out_channels entry are supported",
                path.display()
            )));
        }
        if c.norm_num_groups == 0 || c.block_out_channels.iter().any(|ch| ch % c.norm_num_groups != 0) {
            return Err(Error::Invalid(format!(
                "{}: norm_num_groups {} must be at least 1 and divide every block_out_channels {:?}",
                path.display(),
                c.norm_num_groups,
                c.block_out_channels
            )));
        }
        Ok(c)
    }
}

/// transformers `CLIPTextConfig` (the text half of a CLIP model).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers_clip")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads_clip")]
    pub num_attention_heads: usize,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub eos_token_id: Option<i64>,
}

fn d_vocab() -> usize {
    49408
}
fn d_hidden() -> usize {
    512
}
fn d_inter() -> usize {
    2048
}
fn d_layers_clip() -> usize {
    12
}
fn d_heads_clip() -> usize {
    8
}
fn d_positions() -> usize {
    77
}
fn d_quick_gelu() -> String {
    "quick_gelu".into()
}

impl ClipTextConfig {
    pub fn load(path: &Path) -> Result<ClipTextConfig> {
        let c: ClipTextConfig = read_config(path)?;
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::Invalid(format!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                c.hidden_size,
                c.num_attention_heads
            )));
        }
        crate::ops::elementwise::Act::parse(&c.hidden_act)
            .map_err(|e| Error::Invalid(format!("{}: hidden_act: {e}", path.display())))?;
        Ok(c)
    }
}

// The scheduler config (`scheduler/scheduler_config.json`): the training
// noise schedule and the sampler's defaults as the model folder states them.
// The schedule's math lives in `diffusion::schedule`.

/// How inference timesteps are spread over the training range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// `scheduler_config.json`, with DDIMScheduler's defaults for missing keys.
#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_sched_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_sched_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_sched_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_sched_linear")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "d_sched_true")]
    pub clip_sample: bool,
    #[serde(default = "d_sched_one")]
    pub clip_sample_range: f64,
    #[serde(default = "d_sched_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "d_sched_eps")]
    pub prediction_type: Prediction,
    #[serde(default = "d_sched_leading")]
    pub timestep_spacing: Spacing,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default)]
    pub thresholding: bool,
}

fn d_sched_train_steps() -> usize {
    1000
}
fn d_sched_beta_start() -> f64 {
    0.0001
}
fn d_sched_beta_end() -> f64 {
    0.02
}
fn d_sched_linear() -> String {
    "linear".into()
}
fn d_sched_true() -> bool {
    true
}
fn d_sched_one() -> f64 {
    1.0
}
fn d_sched_eps() -> Prediction {
    Prediction::Epsilon
}
fn d_sched_leading() -> Spacing {
    Spacing::Leading
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<SchedulerConfig> {
        let c: SchedulerConfig = read_config(path)?;
        if c.thresholding {
            return Err(Error::Invalid(format!("{}: dynamic thresholding is not supported", path.display())));
        }
        Ok(c)
    }
}
