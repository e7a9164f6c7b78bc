//! transformers' CLIPTextModel: token + position embeddings, pre-norm
//! transformer layers with causal self-attention, final layer norm. The
//! output is `last_hidden_state`, what Stable Diffusion conditions on.
//!
//! The layer stack ([`ClipEncoder`]) is shared with CLIP's vision tower
//! ([`crate::models::clip`]), which runs it without the causal mask.
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::config::ClipTextConfig;
use crate::models::nn::{LayerNorm, Linear, Loader, attention};
use crate::models::weights::{Variant, Weights};
use crate::ops::elementwise::{self as ew, Act};
use crate::ops::embedding::{EmbeddingTable, embedding};

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// transformers' `CLIPEncoder`: pre-norm layers of multi-head self-attention
/// and a two-layer MLP, each with a skip connection.
pub struct ClipEncoder {
    layers: Vec<Layer>,
    heads: usize,
    act: Act,
}

/// The sizes of a [`ClipEncoder`], as both CLIP towers' configs give them.
#[derive(Clone, Copy, Debug)]
pub struct EncoderShape<'a> {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: &'a str,
    pub eps: f64,
}

impl ClipEncoder {
    /// Loads `{prefix}encoder.layers.{i}.*`.
    pub fn load(l: &Loader, prefix: &str, s: EncoderShape) -> Result<ClipEncoder> {
        let (d, inter, eps) = (s.hidden, s.intermediate, s.eps);
        let layers = (0..s.layers)
            .map(|i| {
                let q = format!("{prefix}encoder.layers.{i}");
                Ok(Layer {
                    ln1: LayerNorm::load(l, &format!("{q}.layer_norm1"), d, eps)?,
                    q: Linear::load(l, &format!("{q}.self_attn.q_proj"), d, d, true)?,
                    k: Linear::load(l, &format!("{q}.self_attn.k_proj"), d, d, true)?,
                    v: Linear::load(l, &format!("{q}.self_attn.v_proj"), d, d, true)?,
                    out: Linear::load(l, &format!("{q}.self_attn.out_proj"), d, d, true)?,
                    ln2: LayerNorm::load(l, &format!("{q}.layer_norm2"), d, eps)?,
                    fc1: Linear::load(l, &format!("{q}.mlp.fc1"), d, inter, true)?,
                    fc2: Linear::load(l, &format!("{q}.mlp.fc2"), inter, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipEncoder { layers, heads: s.heads, act: Act::parse(s.act)? })
    }

    /// h [B, L, D] -> [B, L, D]; `causal` masks each token from the later ones (the text tower).
    pub fn forward(&self, gpu: &Gpu, mut h: Tensor, causal: bool) -> Result<Tensor> {
        for layer in &self.layers {
            let x = layer.ln1.forward(gpu, &h)?;
            let (q, k, v) = (layer.q.forward(gpu, &x)?, layer.k.forward(gpu, &x)?, layer.v.forward(gpu, &x)?);
            h = layer.out.forward_add(gpu, &attention(gpu, &q, &k, &v, self.heads, causal)?, &h)?;
            let x = layer.ln2.forward(gpu, &h)?;
            let x = ew::activation(gpu, &layer.fc1.forward(gpu, &x)?, self.act)?;
            h = layer.fc2.forward_add(gpu, &x, &h)?;
        }
        Ok(h)
    }
}

pub struct ClipTextModel {
    pub config: ClipTextConfig,
    dtype: DType,
    token_embedding: EmbeddingTable,
    position_embedding: Tensor,
    encoder: ClipEncoder,
    final_ln: LayerNorm,
}

/// The component folder: `DIR/text_encoder` of a pipeline, or DIR itself.
pub fn component_dir(dir: &Path) -> std::path::PathBuf {
    let sub = dir.join("text_encoder");
    if sub.join("config.json").is_file() { sub } else { dir.to_path_buf() }
}

impl ClipTextModel {
    pub fn load(gpu: &Gpu, dir: &Path, dtype: DType) -> Result<ClipTextModel> {
        let dir = component_dir(dir);
        let config = ClipTextConfig::load(&dir.join("config.json"))?;
        let weights = Weights::open(&dir, if dtype == DType::F16 { Variant::Fp16 } else { Variant::Full })?;
        let l = Loader { gpu, weights: &weights, dtype };
        // transformers 4 saves `text_model.`-prefixed names, transformers 5 drops the prefix.
        let p = if weights.contains("text_model.embeddings.token_embedding.weight") { "text_model." } else { "" };
        Self::from_loader(&l, p, config)
    }

    /// The tower whose parameters are named `{prefix}embeddings.*`,
    /// `{prefix}encoder.*` and `{prefix}final_layer_norm.*`.
    pub fn from_loader(l: &Loader, prefix: &str, config: ClipTextConfig) -> Result<ClipTextModel> {
        let p = prefix;
        let d = config.hidden_size;
        // Uploaded from the host as a chunked table (it can pass the binding limit).
        let tok = l.weights.f32_shaped(&format!("{p}embeddings.token_embedding.weight"), &[config.vocab_size, d])?;
        let token_embedding = EmbeddingTable::upload(l.gpu, &tok, config.vocab_size, d, l.dtype)?;
        let position_embedding = l.tensor(&format!("{p}embeddings.position_embedding.weight"), &[config.max_position_embeddings, d])?;
        let encoder = ClipEncoder::load(
            l,
            p,
            EncoderShape {
                layers: config.num_hidden_layers,
                hidden: d,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                act: &config.hidden_act,
                eps: config.layer_norm_eps,
            },
        )?;
        let final_ln = LayerNorm::load(l, &format!("{p}final_layer_norm"), d, config.layer_norm_eps)?;
        Ok(ClipTextModel { config, dtype: l.dtype, token_embedding, position_embedding, encoder, final_ln })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// ids [B, L] (U32) -> last_hidden_state [B, L, D].
    pub fn forward(&self, gpu: &Gpu, ids: &Tensor) -> Result<Tensor> {
        if ids.rank() != 2 || ids.dim(1) > self.config.max_position_embeddings {
            return Err(Error::shape(
                "text encoder",
                format!("input_ids must be [B, L] with L <= {}, got {:?}", self.config.max_position_embeddings, ids.shape()),
            ));
        }
        let l = ids.dim(1);
        let tokens = embedding(gpu, ids, &self.token_embedding.chunks, self.token_embedding.rows_per_chunk)?;
        let positions = crate::ops::concat::narrow(gpu, &self.position_embedding, 0, 0, l)?;
        let h = ew::add(gpu, &tokens, &positions)?;
        let h = self.encoder.forward(gpu, h, true)?;
        self.final_ln.forward(gpu, &h)
    }
}
