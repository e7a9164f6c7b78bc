//! Tensor = a device buffer + shape + element type, with upload and download.
use std::sync::Arc;

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::Request;
use crate::gpu::pool::{PooledBuffer, size_class};

/// Storage element type. Arithmetic is always f32; f16 halves memory and
/// bandwidth where the adapter has SHADER_F16. U32 holds indices (token ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
    /// The WGSL storage type name.
    pub fn wgsl(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }
    pub fn name(self) -> &'static str {
        self.wgsl()
    }
    pub fn parse(s: &str) -> Result<DType> {
        match s {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "u32" => Ok(DType::U32),
            _ => Err(Error::Invalid(format!("unknown dtype {s:?}: expected f32 or f16"))),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense, row-major tensor on the device. Cloning shares the buffer.
#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of dimension `d`; negative counts from the end.
    pub fn dim(&self, d: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[if d < 0 { (r + d) as usize } else { d as usize }]
    }
    /// Bytes of the data (without the padding to a multiple of 4 that bindings need).
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    /// Bytes a binding of this tensor covers: rounded up to a multiple of 4.
    pub fn binding_bytes(&self) -> u64 {
        self.bytes().div_ceil(4).max(1) * 4
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
    /// Same data, new shape (same number of elements).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} ({} elements) as {:?}", self.shape, self.numel(), shape),
            ));
        }
        Ok(Tensor { buf: self.buf.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }
    /// True when both tensors use the same device buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}

/// Encodes f32 values as the bytes of `dtype` (U32 takes the values as integers).
pub fn encode(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => {
            let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::U32 => {
            let u: Vec<u32> = data.iter().map(|&x| x as u32).collect();
            bytemuck::cast_slice(&u).to_vec()
        }
    }
}

/// Decodes bytes of `dtype` to f32 values.
pub fn decode(bytes: &[u8], dtype: DType, n: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::cast_slice::<u8, f32>(&bytes[..n * 4]).to_vec(),
        DType::F16 => bytemuck::cast_slice::<u8, f16>(&bytes[..n * 2]).iter().map(|h| h.to_f32()).collect(),
        DType::U32 => bytemuck::cast_slice::<u8, u32>(&bytes[..n * 4]).iter().map(|&u| u as f32).collect(),
    }
}

impl Gpu {
    fn check_tensor(&self, what: &str, shape: &[usize], dtype: DType) -> Result<u64> {
        if dtype == DType::F16 && !self.features().f16 {
            return Err(Error::Unsupported {
                what: format!("f16 tensor {what}"),
                feature: "SHADER_F16",
                hint: "use f32 (--dtype f32)",
            });
        }
        let bytes = (numel(shape) * dtype.size()) as u64;
        let limit = self.max_binding_bytes();
        if bytes > limit {
            return Err(Error::TooLarge { what: what.to_string(), shape: shape.to_vec(), dtype: dtype.name(), bytes, limit });
        }
        Ok(bytes.div_ceil(4).max(1) * 4)
    }

    /// An uninitialised tensor from the pool: the kernel that fills it must
    /// write every element. Out-of-memory errors name the code that asked.
    #[track_caller]
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let caller = std::panic::Location::caller();
        let bytes = self.check_tensor("(output)", shape, dtype)?;
        let class = size_class(bytes);
        let buf = match self.pool.reuse(class) {
            Some(b) => b,
            None => {
                let what = format!("the tensor made at {}:{}", caller.file(), caller.line());
                let buffer = self.new_buffer(&Request { what: &what, shape, dtype }, class, None)?;
                self.pool.adopt(buffer)
            }
        };
        Ok(Tensor { buf, shape: shape.to_vec(), dtype })
    }

    /// A tensor of zeros (cleared on the device, in recording order).
    #[track_caller]
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.empty(shape, dtype)?;
        self.record_clear(&t);
        Ok(t)
    }

    /// Uploads raw bytes (already in `dtype`'s encoding) into a new buffer.
    /// A fresh buffer, never a pooled one: a pooled buffer may still be read by
    /// commands recorded but not yet submitted.
    pub fn upload_bytes(&self, what: &str, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let padded = self.check_tensor(what, shape, dtype)?;
        if bytes.len() != numel(shape) * dtype.size() {
            return Err(Error::shape("upload", format!("{what}: {} bytes for shape {shape:?} of {dtype}", bytes.len())));
        }
        let mut data = bytes.to_vec();
        data.resize(padded as usize, 0);
        let buffer = self.new_buffer(&Request { what, shape, dtype }, padded, Some(&data))?;
        Ok(Tensor { buf: self.pool.adopt(buffer), shape: shape.to_vec(), dtype })
    }

    /// Uploads f32 values, converting to `dtype` on the host.
    pub fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::shape("upload", format!("{} values for shape {shape:?}", data.len())));
        }
        self.upload_bytes("upload", &encode(data, dtype), shape, dtype)
    }

    /// Uploads u32 values (indices) as a U32 tensor.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        self.upload_bytes("indices", bytemuck::cast_slice(data), shape, DType::U32)
    }

    /// Copies a tensor back to the host as f32, submitting whatever is recorded.
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = self.read_buffer(t.buffer(), t.binding_bytes())?;
        Ok(decode(&bytes, t.dtype, t.numel()))
    }

    /// Copies a U32 tensor back to the host.
    pub fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        let bytes = self.read_buffer(t.buffer(), t.binding_bytes())?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes[..t.numel() * 4]).to_vec())
    }

    /// Casts to another storage type on the device.
    pub fn to_dtype(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        if t.dtype == dtype {
            return Ok(t.clone());
        }
        crate::ops::elementwise::cast(self, t, dtype)
    }
}
