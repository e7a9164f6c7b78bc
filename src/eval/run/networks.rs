//! The paper's metric networks in an evaluation (`--clip DIR`,
//! `--inception FILE`): they turn a run's views into CLIP image embeddings,
//! Inception logits and pool features, which are cached beside the run
//! (`metric_views.safetensors`) so that a rerun of `eval` reads them back.
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::eval::paper::{MetricNetworks, MetricViews, NetworkOutputs};
use crate::export::Rgb8;
use crate::gpu::{DType, Gpu};
use crate::models::clip::ClipModel;
use crate::models::clip_image::ClipPreprocess;
use crate::models::inception::Inception;
use crate::models::tokenizer::PromptTokenizer;

/// Views per network call: bounds the activations (Inception at 299²).
const BATCH: usize = 8;

/// CLIP with its tokenizer and image preprocessing.
struct Clip {
    model: ClipModel,
    tokenizer: PromptTokenizer,
    preprocess: ClipPreprocess,
}

/// The networks an evaluation scores with, loaded once.
pub struct MetricNets {
    clip: Option<Clip>,
    inception: Option<Inception>,
    pub names: MetricNetworks,
    /// Text embeddings by prompt.
    text: RefCell<HashMap<String, Vec<f32>>>,
}

/// What the networks made of one set of views, as cached.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkViews {
    pub views: usize,
    /// [V, P]
    pub image_embeds: Option<Vec<f32>>,
    /// [V, 1008], without the fc bias.
    pub logits: Option<Vec<f32>>,
    /// [V, 2048]
    pub pool: Option<Vec<f32>>,
}

impl MetricNets {
    /// None when neither network is asked for.
    pub fn load(gpu: &Gpu, clip: Option<&Path>, inception: Option<&Path>) -> Result<Option<MetricNets>> {
        if clip.is_none() && inception.is_none() {
            return Ok(None);
        }
        let clip = match clip {
            Some(dir) => {
                let model = ClipModel::load(gpu, dir, DType::F32)?;
                let tokenizer = PromptTokenizer::from_dir(dir)
                    .map_err(|e| Error::Invalid(format!("--clip {}: {e} (the CLIP folder needs its tokenizer files)", dir.display())))?;
                if tokenizer.vocab_size() > model.config.text_config.vocab_size {
                    return Err(Error::Invalid(format!(
                        "--clip {}: the tokenizer has {} tokens, the text tower {}: the tokenizer does not match the model",
                        dir.display(),
                        tokenizer.vocab_size(),
                        model.config.text_config.vocab_size
                    )));
                }
                let preprocess = ClipPreprocess::load(dir, model.image_size())?;
                Some(Clip { model, tokenizer, preprocess })
            }
            None => None,
        };
        let inception = inception.map(|f| Inception::load(gpu, f, DType::F32)).transpose()?;
        let names = MetricNetworks {
            clip: clip.as_ref().map(|c| c.model.dir().display().to_string()),
            inception: inception.as_ref().map(|i| i.file().display().to_string()),
        };
        Ok(Some(MetricNets { clip, inception, names, text: RefCell::new(HashMap::new()) }))
    }

    /// Runs the networks on `images` (any size; each network resizes).
    pub fn score(&self, gpu: &Gpu, images: &[Rgb8]) -> Result<NetworkViews> {
        let mut out = NetworkViews {
            views: images.len(),
            image_embeds: self.clip.as_ref().map(|_| Vec::new()),
            logits: self.inception.as_ref().map(|_| Vec::new()),
            pool: self.inception.as_ref().map(|_| Vec::new()),
        };
        for chunk in images.chunks(BATCH) {
            if let (Some(c), Some(acc)) = (&self.clip, out.image_embeds.as_mut()) {
                let side = c.model.image_size();
                let mut pixels = Vec::with_capacity(chunk.len() * 3 * side * side);
                for img in chunk {
                    pixels.extend(c.preprocess.apply(img)?);
                }
                let x = gpu.upload(&pixels, &[chunk.len(), 3, side, side], DType::F32)?;
                acc.extend(gpu.download(&c.model.image_embeds(gpu, &x)?)?);
            }
            if let Some(net) = &self.inception {
                let (w, h) = (chunk[0].width, chunk[0].height);
                if chunk.iter().any(|i| (i.width, i.height) != (w, h)) {
                    return Err(Error::Invalid("eval: the views of one run must share a size".into()));
                }
                let mut planes = vec![0f32; chunk.len() * 3 * h * w];
                for (b, img) in chunk.iter().enumerate() {
                    for (p, px) in img.data.chunks_exact(3).enumerate() {
                        for c in 0..3 {
                            planes[(b * 3 + c) * h * w + p] = px[c] as f32 / 255.0;
                        }
                    }
                }
                let y = net.forward(gpu, &gpu.upload(&planes, &[chunk.len(), 3, h, w], DType::F32)?)?;
                out.logits.as_mut().unwrap().extend(gpu.download(&y.logits_unbiased)?);
                out.pool.as_mut().unwrap().extend(gpu.download(&y.pool)?);
            }
        }
        Ok(out)
    }

    /// The prompt's CLIP text embedding (computed once per prompt).
    pub fn text_embed(&self, gpu: &Gpu, prompt: &str) -> Result<Option<Vec<f32>>> {
        let Some(c) = &self.clip else { return Ok(None) };
        if let Some(e) = self.text.borrow().get(prompt) {
            return Ok(Some(e.clone()));
        }
        let ids = c.tokenizer.encode(prompt)?;
        let e = gpu.download(&c.model.text_embeds(gpu, &[ids])?)?;
        self.text.borrow_mut().insert(prompt.to_string(), e.clone());
        Ok(Some(e))
    }

    /// A run's views as the paper's table reads them.
    pub fn metric_views(&self, gpu: &Gpu, v: &NetworkViews, method: &str, prompt: &str, seed: u64) -> Result<MetricViews> {
        let text = self.text_embed(gpu, prompt)?;
        let outputs = NetworkOutputs {
            image_embeds: v.image_embeds.as_deref().zip(text.as_deref()),
            inception: v.logits.as_deref().zip(v.pool.as_deref()),
        };
        MetricViews::from_outputs(method, prompt, seed, v.views, outputs)
    }
}

/// The cache file of a run's network outputs.
pub const CACHE: &str = "metric_views.safetensors";

/// What a cache must match to be reused.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheKey {
    pub steps: u64,
    pub views: usize,
    pub size: usize,
    pub networks: MetricNetworks,
}

impl CacheKey {
    fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("steps".into(), self.steps.to_string());
        m.insert("views".into(), self.views.to_string());
        m.insert("size".into(), self.size.to_string());
        m.insert("clip".into(), self.networks.clip.clone().unwrap_or_default());
        m.insert("inception".into(), self.networks.inception.clone().unwrap_or_default());
        m
    }
}

/// Writes the outputs with their key (atomically).
pub fn write_cache(path: &Path, key: &CacheKey, v: &NetworkViews) -> Result<()> {
    let mut tensors: Vec<(&str, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, values) in [("image_embeds", &v.image_embeds), ("logits", &v.logits), ("pool", &v.pool)] {
        if let Some(values) = values {
            let width = values.len() / v.views.max(1);
            tensors.push((name, values.iter().flat_map(|x| x.to_le_bytes()).collect(), vec![v.views, width]));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|t| (n.to_string(), t))
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(key.metadata())).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    crate::io::write_atomic(path, &bytes)
}

/// The cached outputs when the file exists and was made with `key`.
pub fn read_cache(path: &Path, key: &CacheKey) -> Option<NetworkViews> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    if meta.metadata().as_ref()? != &key.metadata() {
        return None;
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let get = |name: &str| -> Option<Vec<f32>> {
        let t = st.tensor(name).ok()?;
        (t.dtype() == safetensors::Dtype::F32 && t.shape().first() == Some(&key.views))
            .then(|| t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let v = NetworkViews {
        views: key.views,
        image_embeds: key.networks.clip.as_ref().and_then(|_| get("image_embeds")),
        logits: key.networks.inception.as_ref().and_then(|_| get("logits")),
        pool: key.networks.inception.as_ref().and_then(|_| get("pool")),
    };
    let complete = (v.image_embeds.is_some() == key.networks.clip.is_some()) && (v.pool.is_some() == key.networks.inception.is_some()) && (v.logits.is_some() == key.networks.inception.is_some());
    complete.then_some(v)
}
