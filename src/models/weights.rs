//! safetensors -> device tensors, by their diffusers / transformers names.
//!
//! A component folder (`unet/`, `vae/`, `text_encoder/`, or a bare folder with
//! `config.json`) holds one or more `.safetensors` files, possibly in an
//! `.fp16.` variant and possibly sharded. Files are memory-mapped; each tensor
//! is converted (f32 / f16 / bf16 -> the device dtype) when it is uploaded.
//!
//! For timing a model whose checkpoint is not at hand, weights can also be
//! synthesised ([`Weights::random`]): every tensor a loader asks for is drawn
//! from a seeded normal distribution with the shape the loader names. A folder
//! with a `config.json` and a [`RANDOM_WEIGHTS_FILE`] but no `.safetensors`
//! loads that way too, so every model loader gets random weights unchanged.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};

/// One tensor of a checkpoint view ([`Weights::viewed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView {
    /// The name the model code reads it under.
    pub name: String,
    /// Rows of the first dimension (all when None).
    pub rows: Option<std::ops::Range<usize>>,
    /// The shape it is read as (its own, or the rows', when None).
    pub shape: Option<Vec<usize>>,
}

impl TensorView {
    /// The whole tensor under `name`.
    pub fn whole(name: String) -> TensorView {
        TensorView { name, rows: None, shape: None }
    }
}

/// Which file variant to prefer when a folder has both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `model.safetensors` if present, else the `.fp16.` file.
    Full,
    /// `model.fp16.safetensors` if present, else the full one.
    Fp16,
}

/// Where one tensor's bytes are in which mapped file.
struct Entry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// The weights of one component, memory-mapped (or synthesised, see [`RandomWeights`]).
pub struct Weights {
    dir: PathBuf,
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, Entry>,
    /// Set when the tensors are synthesised instead of read from files.
    random: Option<RandomWeights>,
}

/// A file that makes a folder without `.safetensors` load random weights:
/// JSON of a [`RandomWeights`], e.g. `{"seed": 0, "std": 0.02}`.
pub const RANDOM_WEIGHTS_FILE: &str = "fsd3d-random-weights.json";

/// How random weights are drawn. Every tensor gets its own stream, seeded by
/// `seed` and its name, so its values do not depend on the order of loading.
/// Rank-1 tensors named `*.weight` (the scales of group and layer norms) and
/// `*.running_var` (batch norms' variances, which must not be negative) are
/// 1: a scale near 0 would silence every block behind it. Everything else is
/// normal with mean 0 and standard deviation `std`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RandomWeights {
    pub seed: u64,
    pub std: f32,
}

impl RandomWeights {
    /// The values of tensor `name` with `shape`, row-major.
    pub fn values(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        if shape.len() == 1 && (name.ends_with(".weight") || name.ends_with(".running_var")) {
            return vec![1.0; n];
        }
        let mut state = self.seed ^ fnv1a(name.as_bytes());
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            // Box-Muller: two uniforms give two independent normals (1 − u1 is
            // in (0, 1], so its logarithm is finite).
            let u1 = (splitmix64(&mut state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let u2 = (splitmix64(&mut state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let r = (-2.0 * (1.0 - u1).ln()).sqrt() * self.std as f64;
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            out.push((r * c) as f32);
            out.push((r * s) as f32);
        }
        out.truncate(n);
        out
    }
}

/// The next value of a SplitMix64 stream (small, fast, good enough for weights).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a tensor name: its stream's offset from the seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    crate::io::fnv1a64(&[bytes])
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{}: not a readable safetensors file ({e}); the download may be truncated: fetch it again",
        path.display()
    ))
}

impl Weights {
    /// Opens every `.safetensors` file of the chosen variant in `dir`.
    pub fn open(dir: &Path, variant: Variant) -> Result<Weights> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), cause: e })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        let is_fp16 = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().contains(".fp16.");
        let (fp16, full): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(is_fp16);
        let chosen = match variant {
            Variant::Full if !full.is_empty() => full,
            Variant::Fp16 if !fp16.is_empty() => fp16,
            _ if !full.is_empty() => full,
            _ => fp16,
        };
        if chosen.is_empty() {
            let marker = dir.join(RANDOM_WEIGHTS_FILE);
            if marker.is_file() {
                let spec: RandomWeights = crate::models::config::read_config(&marker)?;
                return Ok(Weights { dir: dir.to_path_buf(), ..Weights::random(spec) });
            }
            let has_bin = std::fs::read_dir(dir)
                .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "bin")))
                .unwrap_or(false);
            let hint = if has_bin {
                "; the folder has PyTorch .bin weights only: save them as safetensors (diffusers: `save_pretrained(dir, safe_serialization=True)`)"
            } else {
                ""
            };
            return Err(Error::Invalid(format!("no .safetensors weights in {}{hint}", dir.display())));
        }
        Self::open_files(dir, chosen)
    }

    /// Opens one `.safetensors` file (a network that comes as a single file,
    /// such as the FID Inception); errors name the file.
    pub fn open_file(path: &Path) -> Result<Weights> {
        if !path.is_file() {
            return Err(Error::Io { path: path.to_path_buf(), cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file") });
        }
        Self::open_files(path, vec![path.to_path_buf()])
    }

    /// Maps `files` and indexes their tensors; `dir` (a folder or the one
    /// file) is what errors name.
    fn open_files(dir: &Path, files: Vec<PathBuf>) -> Result<Weights> {
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| Error::Io { path: path.clone(), cause: e })?;
            // SAFETY: the map is read-only and the file is not expected to change while fsd3d runs.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io { path: path.clone(), cause: e })?;
            let st = SafeTensors::deserialize(&map).map_err(|e| corrupt(&path, e))?;
            for (name, v) in st.tensors() {
                let start = v.data().as_ptr() as usize - map.as_ptr() as usize;
                let range = start..start + v.data().len();
                index.insert(name, Entry { file: i, dtype: v.dtype(), shape: v.shape().to_vec(), range });
            }
            maps.push((path, map));
        }
        Ok(Weights { dir: dir.to_path_buf(), maps, index, random: None })
    }

    /// Weights that synthesise every tensor a loader asks for (see [`RandomWeights`]).
    /// Only [`Weights::load`], which names the shape, can use them.
    pub fn random(spec: RandomWeights) -> Weights {
        Weights { dir: PathBuf::from("(random weights)"), maps: Vec::new(), index: HashMap::new(), random: Some(spec) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The same tensors under other names: `rename` gives each tensor's new
    /// name, or None to leave it out (a checkpoint view: a single-file
    /// checkpoint's LDM names read as the diffusers names the models use).
    pub fn renamed(self, rename: impl Fn(&str) -> Option<String>) -> Result<Weights> {
        self.viewed(|name, _| rename(name).map(TensorView::whole).into_iter().collect())
    }

    /// A checkpoint view that may also reshape and split: `view` gives, for
    /// each tensor (name, shape), the tensors it is read as — none to leave
    /// it out, one renamed or reshaped (a 1×1 convolution's [C, C, 1, 1]
    /// read as a linear layer's [C, C]), or several row ranges of its first
    /// dimension (a fused q/k/v projection read as three). No bytes move: a
    /// view is a range of the mapped file.
    pub fn viewed(self, view: impl Fn(&str, &[usize]) -> Vec<TensorView>) -> Result<Weights> {
        let mut index = HashMap::with_capacity(self.index.len());
        for (name, entry) in self.index {
            for v in view(&name, &entry.shape) {
                let rows = entry.shape.first().copied().unwrap_or(1);
                let numel: usize = entry.shape.iter().product();
                let (range, count) = match &v.rows {
                    None => (entry.range.clone(), numel),
                    Some(r) if r.start < r.end && r.end <= rows => {
                        let row_bytes = (entry.range.end - entry.range.start) / rows.max(1);
                        (entry.range.start + r.start * row_bytes..entry.range.start + r.end * row_bytes, numel / rows.max(1) * r.len())
                    }
                    Some(r) => {
                        return Err(Error::Invalid(format!("{}: tensor {name:?} {:?} has no rows {r:?}", self.dir.display(), entry.shape)));
                    }
                };
                let shape = match v.shape {
                    Some(s) if s.iter().product::<usize>() == count => s,
                    Some(s) => {
                        return Err(Error::Invalid(format!(
                            "{}: tensor {name:?} {:?} cannot be read as {:?} ({count} elements): the checkpoint is not in the layout expected",
                            self.dir.display(),
                            entry.shape,
                            s
                        )));
                    }
                    None if v.rows.is_some() => std::iter::once(v.rows.as_ref().map_or(0, |r| r.len())).chain(entry.shape.iter().skip(1).copied()).collect(),
                    None => entry.shape.clone(),
                };
                if index.contains_key(&v.name) {
                    return Err(Error::Invalid(format!("{}: two tensors map to {:?}; the checkpoint is not in the layout expected", self.dir.display(), v.name)));
                }
                index.insert(v.name, Entry { file: entry.file, dtype: entry.dtype, shape, range });
            }
        }
        Ok(Weights { index, ..self })
    }

    /// True when the tensors are synthesised ([`RandomWeights`]), not read.
    pub fn is_random(&self) -> bool {
        self.random.is_some()
    }

    /// Whether the weights have `name` (random weights have every name).
    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some() || self.index.contains_key(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn view(&self, name: &str) -> Result<(StDtype, Vec<usize>, &[u8])> {
        if self.random.is_some() {
            return Err(Error::Invalid(format!(
                "tensor {name:?}: random weights ({}) have no stored shape or values; only loaders that name the shape can use them",
                self.dir.display()
            )));
        }
        let e = self.index.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor {name:?} is missing from the weights in {}: the checkpoint does not match its config.json",
                self.dir.display()
            ))
        })?;
        Ok((e.dtype, e.shape.clone(), &self.maps[e.file].1[e.range.clone()]))
    }

    /// Shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.1)
    }

    /// A tensor's values as f32 on the host.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (dt, shape, data) = self.view(name)?;
        Ok((to_f32(name, dt, data)?, shape))
    }

    /// A tensor's values as f32 on the host, checked to have shape `expect`
    /// (for loaders that prepare a tensor on the host; random weights too).
    pub fn f32_shaped(&self, name: &str, expect: &[usize]) -> Result<Vec<f32>> {
        if let Some(spec) = &self.random {
            return Ok(spec.values(name, expect));
        }
        let (values, shape) = self.f32(name)?;
        if shape != expect {
            return Err(Error::Invalid(format!(
                "tensor {name:?} in {} has shape {shape:?}, the config implies {expect:?}: the weights do not match config.json",
                self.dir.display()
            )));
        }
        Ok(values)
    }

    /// Uploads a tensor, checking its shape, converted to `dtype`.
    pub fn load(&self, gpu: &Gpu, name: &str, expect: &[usize], dtype: DType) -> Result<Tensor> {
        if let Some(spec) = &self.random {
            let bytes = crate::gpu::tensor::encode(&spec.values(name, expect), dtype);
            return gpu.upload_bytes(name, &bytes, expect, dtype);
        }
        let (dt, shape, data) = self.view(name)?;
        if shape != expect {
            return Err(Error::Invalid(format!(
                "tensor {name:?} in {} has shape {shape:?}, the config implies {expect:?}: the weights do not match config.json",
                self.dir.display()
            )));
        }
        let bytes: Vec<u8> = match (dt, dtype) {
            (StDtype::F32, DType::F32) | (StDtype::F16, DType::F16) => data.to_vec(),
            (StDtype::F16, DType::F32) | (StDtype::BF16, _) | (StDtype::F32, DType::F16) => {
                crate::gpu::tensor::encode(&to_f32(name, dt, data)?, dtype)
            }
            _ => return Err(Error::Invalid(format!("tensor {name:?} has dtype {dt:?}, expected a float type"))),
        };
        gpu.upload_bytes(name, &bytes, &shape, dtype)
    }
}

fn to_f32(name: &str, dt: StDtype, data: &[u8]) -> Result<Vec<f32>> {
    // safetensors data is little-endian and may be unaligned in the map: read by chunks.
    Ok(match dt {
        StDtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        StDtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StDtype::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StDtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        StDtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        StDtype::I32 => data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => return Err(Error::Invalid(format!("tensor {name:?}: dtype {other:?} is not supported"))),
    })
}
