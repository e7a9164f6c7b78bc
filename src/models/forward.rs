//! `fsd3d forward`: run one module of a diffusers checkpoint on named input
//! tensors from a safetensors file and write named outputs, so that anyone can
//! check the engine against their own reference outputs.
//!
//! | module         | inputs                                             | outputs             |
//! |----------------|----------------------------------------------------|---------------------|
//! | `unet`         | `sample` [B,C,H,W], `timestep` [B], `encoder_hidden_states` [B,L,D]; a multi-view prior also `camera` [B,16], `num_frames` [1] | `sample` |
//! | `text-encoder` | `input_ids` [B,77] (i32, i64 or float)             | `last_hidden_state` |
//! | `vae-encode`   | `sample` [B,3,H,W] in [-1,1]; optional `mean_grad` [B,4,h,w] | `mean`, `logvar`; with `mean_grad` also `sample_grad` = ∂(Σ mean·mean_grad)/∂sample [B,3,H,W] |
//! | `vae-decode`   | `latent` [B,4,h,w] (unscaled)                      | `decoded`           |
//! | `clip-image`   | `pixel_values` [B,3,S,S] (CLIP-preprocessed)       | `image_embeds` [B,P] |
//! | `clip-text`    | `input_ids` [B,L]                                  | `text_embeds` [B,P] |
//! | `inception`    | `images` [B,3,H,W] in [0,1]                        | `pool` [B,2048], `logits` [B,1008], `logits_unbiased` [B,1008] |
//!
//! `clip-image` and `clip-text` take a transformers CLIPModel folder; their
//! embeddings are projected and not normalised, as `get_image_features` and
//! `get_text_features` return them. `inception` takes the FID Inception's
//! safetensors file ([`crate::models::inception`]).
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::models::{clip::ClipModel, clip_text::ClipTextModel, inception::Inception, unet::UNet, vae::Vae};

/// A host tensor: f32 values and a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

/// The modules `fsd3d forward` runs.
pub const MODULES: [&str; 7] = ["unet", "text-encoder", "vae-encode", "vae-decode", "clip-image", "clip-text", "inception"];

/// Reads every tensor of a safetensors file as f32 (integer ids included).
pub fn read_tensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not a safetensors file: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        use safetensors::Dtype as D;
        let d = v.data();
        let data: Vec<f32> = match v.dtype() {
            D::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            D::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            D::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            D::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            D::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            D::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            other => return Err(Error::Invalid(format!("{}: tensor {name:?} has unsupported dtype {other:?}", path.display()))),
        };
        out.insert(name, HostTensor { data, shape: v.shape().to_vec() });
    }
    Ok(out)
}

/// Writes f32 tensors to a safetensors file, atomically (temp file + rename).
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.data.iter().flat_map(|x| x.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map_err(|e| Error::Invalid(e.to_string()))?)))
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::io::write_atomic(path, &data)
}

fn input<'a>(inputs: &'a HashMap<String, HostTensor>, name: &str, module: &str) -> Result<&'a HostTensor> {
    inputs.get(name).ok_or_else(|| {
        let have: Vec<&String> = inputs.keys().collect();
        Error::Invalid(format!("module {module} needs an input tensor named {name:?}; the file has {have:?}"))
    })
}

/// A folder's VAE, or a single-file checkpoint's.
fn load_vae(gpu: &Gpu, dir: &Path, dtype: DType) -> Result<Vae> {
    match crate::models::ldm::single_file(dir) {
        Some((checkpoint, yaml)) => crate::models::ldm::load_vae(gpu, &checkpoint, &yaml, dtype),
        None => Vae::load(gpu, dir, dtype),
    }
}

/// Input tensors `lora.<projection>.A` [r, in] and `.B` [out, r] (and
/// optionally `lora_alpha`, one number, default r) make a LoRA adapter.
const LORA_PREFIX: &str = "lora.";
/// Input tensors `lora.camera_embedding.linear_{1,2}.{weight,bias}`: its
/// camera condition (with `camera` [B, 16]).
const LORA_CAMERA: &str = "camera_embedding.";
/// Output tensors `lora_grad.<projection>.A` / `.B`: the factors' gradients
/// (and `lora_grad.camera_embedding.*`).
const LORA_GRAD_PREFIX: &str = "lora_grad.";

/// The LoRA adapter the inputs describe, if any.
fn lora_of(gpu: &Gpu, unet: &UNet, inputs: &HashMap<String, HostTensor>) -> Result<Option<crate::models::lora::Lora>> {
    let mut factors: std::collections::BTreeMap<String, (Vec<f32>, Vec<f32>)> = Default::default();
    let mut rank = None;
    let mut camera: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    for (key, t) in inputs {
        let Some(rest) = key.strip_prefix(LORA_PREFIX) else { continue };
        if let Some(tensor) = rest.strip_prefix(LORA_CAMERA) {
            camera.insert(tensor.to_string(), t.data.clone());
            continue;
        }
        let (name, factor) = rest.rsplit_once('.').ok_or_else(|| Error::Invalid(format!("{key}: expected lora.<projection>.A or .B")))?;
        let entry = factors.entry(name.to_string()).or_default();
        match factor {
            "A" => {
                rank = Some(t.shape.first().copied().unwrap_or(0));
                entry.0 = t.data.clone();
            }
            "B" => entry.1 = t.data.clone(),
            _ => return Err(Error::Invalid(format!("{key}: expected lora.<projection>.A or .B"))),
        }
    }
    let Some(rank) = rank else {
        return if factors.is_empty() { Ok(None) } else { Err(Error::Invalid("LoRA factors were given without any A".into())) };
    };
    let alpha = match inputs.get("lora_alpha") {
        Some(a) if a.data.len() == 1 => a.data[0],
        Some(a) => return Err(Error::Invalid(format!("lora_alpha must be one number, got {:?}", a.shape))),
        None => rank as f32,
    };
    let lora = crate::models::lora::Lora::from_factors(gpu, unet, rank, alpha, &factors)?;
    if camera.is_empty() {
        return Ok(Some(lora));
    }
    lora.with_camera(gpu, unet.time_embedding_width(), &camera).map(Some)
}

/// Runs `module` of the checkpoint in `dir` (a pipeline folder or the
/// component's own, or a single-file LDM checkpoint with its YAML: the
/// modules it holds) with weights and activations stored as `dtype`.
pub fn run(gpu: &Gpu, dir: &Path, module: &str, inputs: &HashMap<String, HostTensor>, dtype: DType) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    let up = |t: &HostTensor| gpu.upload(&t.data, &t.shape, dtype);
    let down = |t: &crate::gpu::Tensor| -> Result<HostTensor> { Ok(HostTensor { data: gpu.download(t)?, shape: t.shape().to_vec() }) };
    match module {
        "unet" => {
            let unet = match crate::models::ldm::single_file(dir) {
                Some((checkpoint, yaml)) => crate::models::ldm::load_unet(gpu, &checkpoint, &yaml, dtype)?,
                None => UNet::load(gpu, dir, dtype)?,
            };
            let s = input(inputs, "sample", module)?;
            let t = input(inputs, "timestep", module)?;
            let e = input(inputs, "encoder_hidden_states", module)?;
            // A scalar timestep applies to the whole batch, as in diffusers.
            let b = s.shape.first().copied().unwrap_or(1);
            let ts: Vec<f32> = if t.data.len() == 1 { vec![t.data[0]; b] } else { t.data.clone() };
            let tt = gpu.upload(&ts, &[ts.len()], DType::F32)?;
            // A multi-view prior's inputs (MVDream): `camera` [B, 16], `num_frames`.
            let frames = match inputs.get("num_frames") {
                Some(n) if n.data.len() == 1 && n.data[0] >= 1.0 && n.data[0].fract() == 0.0 => n.data[0] as usize,
                Some(n) => return Err(Error::Invalid(format!("num_frames must be one positive integer, got {:?}", n.data))),
                None => 1,
            };
            let camera = inputs.get("camera").map(|c| gpu.upload(&c.data, &c.shape, DType::F32)).transpose()?;
            if unet.config.camera_dim.is_some() && camera.is_none() && frames > 1 {
                return Err(Error::Invalid("this multi-view UNet needs a `camera` tensor [B, 16] with num_frames > 1 (one camera a view)".into()));
            }
            let lora = lora_of(gpu, &unet, inputs)?;
            let views = crate::models::unet::Extras { camera: camera.as_ref(), frames, lora: lora.as_ref() };
            match inputs.get("sample_out_grad") {
                // The backward too: sample_grad = ∂L/∂sample for L = Σ output ⊙ sample_out_grad,
                // and each LoRA factor's gradient.
                Some(g) => {
                    let g = gpu.upload(&g.data, &g.shape, DType::F32)?;
                    let grads = unet.forward_and_grads(gpu, &up(s)?, &tt, &up(e)?, &views, &g)?;
                    out.insert("sample".into(), down(&grads.output)?);
                    out.insert("sample_grad".into(), down(&grads.sample)?);
                    if let Some(c) = &grads.camera {
                        for (name, t) in crate::models::lora::CAMERA_TENSORS.iter().zip([&c.w1, &c.b1, &c.w2, &c.b2]) {
                            out.insert(format!("{LORA_GRAD_PREFIX}{LORA_CAMERA}{name}"), down(t)?);
                        }
                    }
                    for (name, g) in &grads.lora {
                        for (factor, t) in [("A", &g.a), ("B", &g.b)] {
                            if let Some(t) = t {
                                out.insert(format!("{LORA_GRAD_PREFIX}{name}.{factor}"), down(t)?);
                            }
                        }
                    }
                }
                None => {
                    let y = unet.forward_views(gpu, &up(s)?, &tt, &up(e)?, &views)?;
                    out.insert("sample".into(), down(&y)?);
                }
            }
        }
        "text-encoder" => {
            let te = match crate::models::ldm::single_file(dir) {
                Some((checkpoint, yaml)) => crate::models::ldm::load_text_encoder(gpu, &checkpoint, &yaml, dtype)?,
                None => ClipTextModel::load(gpu, dir, dtype)?,
            };
            let ids = input(inputs, "input_ids", module)?;
            if ids.data.iter().any(|&x| x < 0.0 || x as usize >= te.config.vocab_size || x.fract() != 0.0) {
                return Err(Error::Invalid(format!("input_ids must be integers in 0..{}", te.config.vocab_size)));
            }
            let u: Vec<u32> = ids.data.iter().map(|&x| x as u32).collect();
            let y = te.forward(gpu, &gpu.upload_u32(&u, &ids.shape)?)?;
            out.insert("last_hidden_state".into(), down(&y)?);
        }
        "vae-encode" => {
            let vae = load_vae(gpu, dir, dtype)?;
            let sample = up(input(inputs, "sample", module)?)?;
            match inputs.get("mean_grad") {
                None => {
                    let p = vae.encode(gpu, &sample)?;
                    out.insert("mean".into(), down(&p.mean)?);
                    out.insert("logvar".into(), down(&p.logvar)?);
                }
                Some(g) => {
                    // The encoder's backward pass: ∂(Σ mean·mean_grad)/∂sample.
                    let (p, tape) = vae.encode_with_tape(gpu, &sample)?;
                    if g.shape != p.mean.shape() {
                        return Err(Error::Invalid(format!(
                            "mean_grad must have the shape of the posterior mean {:?} for this sample, got {:?}",
                            p.mean.shape(),
                            g.shape
                        )));
                    }
                    let d_sample = vae.encode_backward(gpu, &tape, &gpu.upload(&g.data, &g.shape, DType::F32)?)?;
                    out.insert("mean".into(), down(&p.mean)?);
                    out.insert("logvar".into(), down(&p.logvar)?);
                    out.insert("sample_grad".into(), down(&d_sample)?);
                }
            }
        }
        "vae-decode" => {
            let vae = load_vae(gpu, dir, dtype)?;
            let y = vae.decode(gpu, &up(input(inputs, "latent", module)?)?)?;
            out.insert("decoded".into(), down(&y)?);
        }
        "clip-image" => {
            let clip = ClipModel::load(gpu, dir, dtype)?;
            let y = clip.image_embeds(gpu, &up(input(inputs, "pixel_values", module)?)?)?;
            out.insert("image_embeds".into(), down(&y)?);
        }
        "clip-text" => {
            let clip = ClipModel::load(gpu, dir, dtype)?;
            let ids = input(inputs, "input_ids", module)?;
            if ids.shape.len() != 2 || ids.data.iter().any(|&x| x < 0.0 || x.fract() != 0.0) {
                return Err(Error::Invalid(format!("input_ids must be [B, L] non-negative integers, got shape {:?}", ids.shape)));
            }
            let rows: Vec<Vec<u32>> = ids.data.chunks(ids.shape[1].max(1)).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
            let y = clip.text_embeds(gpu, &rows)?;
            out.insert("text_embeds".into(), down(&y)?);
        }
        "inception" => {
            let net = Inception::load(gpu, dir, dtype)?;
            let images = input(inputs, "images", module)?;
            crate::models::inception::check_images(&images.data, &images.shape)?;
            let y = net.forward(gpu, &up(images)?)?;
            out.insert("pool".into(), down(&y.pool)?);
            out.insert("logits".into(), down(&y.logits)?);
            out.insert("logits_unbiased".into(), down(&y.logits_unbiased)?);
        }
        other => return Err(Error::Invalid(format!("unknown module {other:?}: expected one of {}", MODULES.join(", ")))),
    }
    Ok(out)
}
