//! transformers' CLIPTextModel: token + position embeddings, pre-norm
//! transformer layers with causal self-attention, final layer norm. The
//! output is `last_hidden_state`, what Stable Diffusion conditions on.
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

pub struct ClipTextModel {
    pub config: ClipTextConfig,
    dtype: DType,
    act: Act,
    token_embedding: EmbeddingTable,
    position_embedding: Tensor,
    layers: Vec<Layer>,
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
        let (d, inter) = (config.hidden_size, config.intermediate_size);
        // transformers 4 saves `text_model.`-prefixed names, transformers 5 drops the prefix.
        let p = if weights.contains("text_model.embeddings.token_embedding.weight") { "text_model." } else { "" };
        // Uploaded from the host as a chunked table (it can pass the binding limit).
        let tok = weights.f32_shaped(&format!("{p}embeddings.token_embedding.weight"), &[config.vocab_size, d])?;
        let token_embedding = EmbeddingTable::upload(gpu, &tok, config.vocab_size, d, dtype)?;
        let position_embedding = l.tensor(&format!("{p}embeddings.position_embedding.weight"), &[config.max_position_embeddings, d])?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let q = format!("{p}encoder.layers.{i}");
                Ok(Layer {
                    ln1: LayerNorm::load(&l, &format!("{q}.layer_norm1"), d, config.layer_norm_eps)?,
                    q: Linear::load(&l, &format!("{q}.self_attn.q_proj"), d, d, true)?,
                    k: Linear::load(&l, &format!("{q}.self_attn.k_proj"), d, d, true)?,
                    v: Linear::load(&l, &format!("{q}.self_attn.v_proj"), d, d, true)?,
                    out: Linear::load(&l, &format!("{q}.self_attn.out_proj"), d, d, true)?,
                    ln2: LayerNorm::load(&l, &format!("{q}.layer_norm2"), d, config.layer_norm_eps)?,
                    fc1: Linear::load(&l, &format!("{q}.mlp.fc1"), d, inter, true)?,
                    fc2: Linear::load(&l, &format!("{q}.mlp.fc2"), inter, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_ln = LayerNorm::load(&l, &format!("{p}final_layer_norm"), d, config.layer_norm_eps)?;
        let act = Act::parse(&config.hidden_act)?;
        Ok(ClipTextModel { config, dtype, act, token_embedding, position_embedding, layers, final_ln })
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
        let mut h = ew::add(gpu, &tokens, &positions)?;
        let heads = self.config.num_attention_heads;
        for layer in &self.layers {
            let x = layer.ln1.forward(gpu, &h)?;
            let (q, k, v) = (layer.q.forward(gpu, &x)?, layer.k.forward(gpu, &x)?, layer.v.forward(gpu, &x)?);
            h = layer.out.forward_add(gpu, &attention(gpu, &q, &k, &v, heads, true)?, &h)?;
            let x = layer.ln2.forward(gpu, &h)?;
            let x = ew::activation(gpu, &layer.fc1.forward(gpu, &x)?, self.act)?;
            h = layer.fc2.forward_add(gpu, &x, &h)?;
        }
        self.final_ln.forward(gpu, &h)
    }
}
