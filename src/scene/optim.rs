//! Adam over named parameter groups, and checkpoints of the parameters with
//! the optimiser state (safetensors, written atomically).
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::adam::{self, AdamHyper};

/// Learning rates per group and Adam's constants. Defaults: FSD_SPEC §5.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// The hash-grid table.
    pub lr_grid: f32,
    /// The density and albedo MLPs.
    pub lr_mlp: f32,
    /// The background MLP.
    pub lr_background: f32,
    pub betas: [f32; 2],
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr_grid: 0.01, lr_mlp: 0.01, lr_background: 0.001, betas: [0.9, 0.99], eps: 1e-15 }
    }
}

/// One optimised tensor with its gradient and Adam's moments.
pub struct ParamGroup {
    pub name: String,
    /// Shared with the model (the same buffer): updated in place.
    pub param: Tensor,
    /// Accumulates the step's gradient; zeroed by [`Adam::zero_grad`].
    pub grad: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub lr: f32,
}

/// Adam over parameter groups, on the device.
pub struct Adam {
    pub groups: Vec<ParamGroup>,
    /// Steps taken so far.
    pub step: u64,
    pub betas: [f32; 2],
    pub eps: f32,
}

impl Adam {
    pub fn new(cfg: &AdamConfig) -> Adam {
        Adam { groups: Vec::new(), step: 0, betas: cfg.betas, eps: cfg.eps }
    }

    /// Adds `param` (f32) as group `name` with learning rate `lr`.
    pub fn add_group(&mut self, gpu: &Gpu, name: &str, param: &Tensor, lr: f32) -> Result<()> {
        if param.dtype() != DType::F32 {
            return Err(Error::shape("adam", format!("parameter {name} must be f32, got {param:?}")));
        }
        if self.group(name).is_some() {
            return Err(Error::Invalid(format!("adam: group {name} added twice")));
        }
        let shape = param.shape().to_vec();
        self.groups.push(ParamGroup {
            name: name.to_string(),
            param: param.clone(),
            grad: gpu.zeros(&shape, DType::F32)?,
            exp_avg: gpu.zeros(&shape, DType::F32)?,
            exp_avg_sq: gpu.zeros(&shape, DType::F32)?,
            lr,
        });
        Ok(())
    }

    pub fn group(&self, name: &str) -> Option<&ParamGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The gradient tensor of group `name` (backward passes add into it).
    pub fn grad(&self, name: &str) -> Result<&Tensor> {
        self.group(name).map(|g| &g.grad).ok_or_else(|| Error::Invalid(format!("adam: no group {name}")))
    }

    /// Sets the gradient of group `name` to `grad` (f32, the group's shape).
    pub fn set_grad(&mut self, name: &str, grad: Tensor) -> Result<()> {
        let g = self.groups.iter_mut().find(|g| g.name == name).ok_or_else(|| Error::Invalid(format!("adam: no group {name}")))?;
        if grad.dtype() != DType::F32 || grad.shape() != g.param.shape() {
            return Err(Error::shape("adam", format!("the gradient of {name} must be f32 {:?}, got {grad:?}", g.param.shape())));
        }
        g.grad = grad;
        Ok(())
    }

    /// Fresh zero gradients (recorded in order: kernels already recorded
    /// still read the old ones).
    pub fn zero_grad(&mut self, gpu: &Gpu) -> Result<()> {
        for g in &mut self.groups {
            g.grad = gpu.zeros(g.param.shape(), DType::F32)?;
        }
        Ok(())
    }

    /// One Adam step on every group from the accumulated gradients times
    /// `grad_scale`; then zeroes them.
    pub fn step(&mut self, gpu: &Gpu, grad_scale: f32) -> Result<()> {
        self.step += 1;
        for g in &self.groups {
            let hyper = AdamHyper { lr: g.lr, beta1: self.betas[0], beta2: self.betas[1], eps: self.eps };
            adam::adam_step(gpu, &g.param, &g.grad, &g.exp_avg, &g.exp_avg_sq, &hyper, self.step, grad_scale)?;
        }
        self.zero_grad(gpu)
    }

    /// The tensors a checkpoint holds: `name`, `name.exp_avg`, `name.exp_avg_sq`.
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::new();
        for g in &self.groups {
            v.push((g.name.clone(), &g.param));
            v.push((format!("{}.exp_avg", g.name), &g.exp_avg));
            v.push((format!("{}.exp_avg_sq", g.name), &g.exp_avg_sq));
        }
        v
    }
}

/// The metadata key of the checkpoint format and its value.
pub const FORMAT_KEY: &str = "format";
pub const FORMAT: &str = "fsd3d-scene/1";

/// Writes `tensors` (f32 or u32) and `metadata` to a safetensors file at
/// `path` with [`crate::io::write_atomic`] (a temporary file flushed to the
/// disk, then renamed over it), so an interrupted save never leaves a
/// broken checkpoint.
pub fn save_checkpoint(gpu: &Gpu, path: &Path, tensors: &[(String, &Tensor)], mut metadata: HashMap<String, String>) -> Result<()> {
    metadata.insert(FORMAT_KEY.into(), FORMAT.into());
    let mut host: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (safetensors::Dtype::F32, bytemuck::cast_slice(&gpu.download(t)?).to_vec()),
            DType::U32 => (safetensors::Dtype::U32, bytemuck::cast_slice(&gpu.download_u32(t)?).to_vec()),
            DType::F16 => return Err(Error::Invalid(format!("checkpoint: {name} is f16; scene parameters are f32"))),
        };
        host.push((name.clone(), dtype, t.shape().to_vec(), bytes));
    }
    let views = host
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(st_err(path))?)))
        .collect::<Result<Vec<_>>>()?;
    metadata.insert(CHECKSUM_KEY.into(), checksum(host.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))));
    let mut bytes = safetensors::serialize(views, Some(metadata)).map_err(st_err(path))?;
    sort_header(&mut bytes).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if path.file_name().is_none() {
        return Err(Error::Invalid(format!("checkpoint path {} has no file name", path.display())));
    }
    crate::io::write_atomic(path, &bytes)
}

/// Rewrites a safetensors file's JSON header with its keys sorted, in place.
/// safetensors writes the metadata from a HashMap, whose order changes from
/// process to process: sorted, one scene gives one file, byte for byte.
/// The sorted header has the same characters as the original, so it takes
/// the same length and the tensor data does not move.
fn sort_header(bytes: &mut [u8]) -> std::result::Result<(), String> {
    let len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize).ok_or("no header")?;
    let header = bytes.get_mut(8..8 + len).ok_or("header past the end")?;
    let text = std::str::from_utf8(header).map_err(|e| e.to_string())?;
    // serde_json's Map is a BTreeMap: parsed and printed again, keys are sorted.
    let value: serde_json::Value = serde_json::from_str(text.trim_end()).map_err(|e| e.to_string())?;
    let sorted = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    if sorted.len() > header.len() {
        return Err(format!("sorted header is {} bytes, the original {}", sorted.len(), header.len()));
    }
    // The padding safetensors adds to align the data is spaces.
    header.fill(b' ');
    header[..sorted.len()].copy_from_slice(sorted.as_bytes());
    Ok(())
}

/// The metadata key of a checkpoint's checksum: [`crate::io::fnv1a64`] over
/// its tensors in name order (name, dtype, shape, bytes), as 16 hex digits.
/// Checkpoints written before it have none and are read unchecked.
pub const CHECKSUM_KEY: &str = "checksum";

fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, safetensors::Dtype, &'a [usize], &'a [u8])>) -> String {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by_key(|t| t.0);
    let mut h = Vec::with_capacity(sorted.len());
    for (name, dtype, shape, bytes) in sorted {
        let head = format!("{name}\0{dtype:?}\0{shape:?}\0");
        h.push(crate::io::fnv1a64(&[head.as_bytes(), bytes]));
    }
    format!("{:016x}", crate::io::fnv1a64(&[bytemuck::cast_slice(&h)]))
}

fn st_err(path: &Path) -> impl Fn(safetensors::SafeTensorError) -> Error + '_ {
    move |e| Error::Invalid(format!("checkpoint {}: {e}", path.display()))
}

/// A checkpoint read back: raw tensors and metadata.
pub struct Checkpoint {
    pub tensors: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(st_err(path))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(st_err(path))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        if metadata.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
            return Err(Error::Invalid(format!("{} is not an fsd3d scene checkpoint ({FORMAT})", path.display())));
        }
        let tensors: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        if let Some(want) = metadata.get(CHECKSUM_KEY) {
            let got = checksum(tensors.iter().map(|(n, (d, s, b))| (n.as_str(), *d, s.as_slice(), b.as_slice())));
            if &got != want {
                return Err(Error::Invalid(format!(
                    "{} is damaged: its contents do not match its checksum ({got}, recorded {want}); restore it from a \
                     copy, or delete it to start the run again",
                    path.display()
                )));
            }
        }
        Ok(Checkpoint { tensors, metadata })
    }

    /// Copies tensor `name` into `dst` (same shape and dtype), recorded in order.
    pub fn restore(&self, gpu: &Gpu, name: &str, dst: &Tensor) -> Result<()> {
        let (dtype, shape, bytes) = self.tensors.get(name).ok_or_else(|| Error::Invalid(format!("checkpoint has no tensor {name}")))?;
        let want = match dst.dtype() {
            DType::F32 => safetensors::Dtype::F32,
            DType::U32 => safetensors::Dtype::U32,
            DType::F16 => safetensors::Dtype::F16,
        };
        if *dtype != want || shape.as_slice() != dst.shape() {
            return Err(Error::shape(
                "checkpoint",
                format!("{name} is {dtype:?} {shape:?} in the checkpoint but {dst:?} in this scene (a different config?)"),
            ));
        }
        let src = gpu.upload_bytes(name, bytes, shape, dst.dtype())?;
        gpu.copy(&src, dst)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}
