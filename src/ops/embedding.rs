//! Embeddings (`shaders/embedding.wgsl`): token-table lookups over tables
//! split in row chunks, and diffusers' sinusoidal timestep embedding.
//!
//! A token table can exceed the storage binding limit (CLIP-L's 49408 x 768
//! f32 table is 151 MB against lavapipe's 128 MiB), so [`EmbeddingTable`]
//! holds it as row chunks that each fit one binding; [`embedding`] records
//! one gather per chunk.
//!
//! Out-of-range ids (>= vocab) produce rows of zeros on the device, never a
//! read outside the table; ids uploaded from the host through
//! [`EmbeddingTable::upload_ids`] are checked and rejected instead.

use crate::error::{Error, Result};
use crate::gpu::tensor::encode;
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, expect_float, float_dtypes, grid_for};

crate::kernel_params! {
    struct GatherParams {
        n: u32,
        dim: u32,
        row_start: u32,
        rows: u32,
        vocab: u32,
        last_chunk: u32,
        pad0: u32,
        pad1: u32,
    }
}

crate::kernel_params! {
    struct TimestepParams {
        n: u32,
        dim: u32,
        half_dim: u32,
        flip: u32,
        neg_log_max_period: f32,
        denom: f32,
        scale: f32,
        pad: u32,
    }
}

fn gather_key(dtype: DType) -> KernelKey {
    KernelKey::new("embedding", "gather").params::<GatherParams>().def("T", dtype.wgsl()).def("WG", WG_1D).flag("GATHER", true).flag("TIMESTEP", false)
}

fn timestep_key(dtype: DType) -> KernelKey {
    KernelKey::new("embedding", "timestep").params::<TimestepParams>().def("T", dtype.wgsl()).def("WG", WG_1D).flag("GATHER", false).flag("TIMESTEP", true)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    float_dtypes(caps).into_iter().flat_map(|dt| [gather_key(dt), timestep_key(dt)]).collect()
}

/// A [vocab, dim] embedding table on the device, as row chunks that each fit
/// one storage binding. Every chunk holds `rows_per_chunk` rows except the
/// last, which holds the rest.
#[derive(Clone, Debug)]
pub struct EmbeddingTable {
    pub chunks: Vec<Tensor>,
    pub rows_per_chunk: usize,
    pub dim: usize,
}

impl EmbeddingTable {
    /// Uploads a [vocab, dim] table given as f32 values, stored as `dtype`,
    /// in chunks under [`Gpu::max_binding_bytes`].
    pub fn upload(gpu: &Gpu, data: &[f32], vocab: usize, dim: usize, dtype: DType) -> Result<EmbeddingTable> {
        Self::upload_chunked(gpu, data, vocab, dim, dtype, gpu.max_binding_bytes())
    }

    /// As [`EmbeddingTable::upload`], with chunks of at most `max_chunk_bytes`
    /// (lower than the binding limit: tests force tiny chunks with it).
    pub fn upload_chunked(
        gpu: &Gpu,
        data: &[f32],
        vocab: usize,
        dim: usize,
        dtype: DType,
        max_chunk_bytes: u64,
    ) -> Result<EmbeddingTable> {
        if data.len() != vocab * dim {
            return Err(Error::shape("embedding table", format!("{} values for a [{vocab}, {dim}] table", data.len())));
        }
        expect_float_dtype(dtype)?;
        Self::upload_bytes(gpu, &encode(data, dtype), dtype, vocab, dim, max_chunk_bytes)
    }

    /// Uploads a [vocab, dim] table from bytes already in `dtype`'s encoding
    /// (an f16 or f32 safetensors tensor, say), in chunks of at most
    /// `max_chunk_bytes` (pass [`Gpu::max_binding_bytes`] normally).
    pub fn upload_bytes(
        gpu: &Gpu,
        bytes: &[u8],
        dtype: DType,
        vocab: usize,
        dim: usize,
        max_chunk_bytes: u64,
    ) -> Result<EmbeddingTable> {
        expect_float_dtype(dtype)?;
        let row_bytes = dim * dtype.size();
        if vocab == 0 || dim == 0 {
            return Err(Error::shape("embedding table", format!("empty table [{vocab}, {dim}]")));
        }
        if bytes.len() != vocab * row_bytes {
            return Err(Error::shape("embedding table", format!("{} bytes for a [{vocab}, {dim}] {dtype} table", bytes.len())));
        }
        let limit = max_chunk_bytes.min(gpu.max_binding_bytes());
        let rows_per_chunk = (limit / row_bytes as u64) as usize;
        if rows_per_chunk == 0 {
            return Err(Error::shape(
                "embedding table",
                format!("one row of {dim} {dtype} values ({row_bytes} bytes) is over the chunk limit of {limit} bytes"),
            ));
        }
        let rows_per_chunk = rows_per_chunk.min(vocab);
        let chunks = bytes
            .chunks(rows_per_chunk * row_bytes)
            .map(|c| gpu.upload_bytes("embedding table chunk", c, &[c.len() / row_bytes, dim], dtype))
            .collect::<Result<Vec<_>>>()?;
        Ok(EmbeddingTable { chunks, rows_per_chunk, dim })
    }

    /// Rows in the whole table.
    pub fn vocab(&self) -> usize {
        self.chunks.iter().map(|c| c.dim(0)).sum()
    }

    pub fn dtype(&self) -> DType {
        self.chunks[0].dtype()
    }

    /// Uploads token ids of shape `shape`, rejecting any id >= vocab.
    pub fn upload_ids(&self, gpu: &Gpu, ids: &[u32], shape: &[usize]) -> Result<Tensor> {
        let vocab = self.vocab();
        if let Some((pos, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
            return Err(Error::Invalid(format!("token id {id} at position {pos} is outside the vocabulary of {vocab}")));
        }
        gpu.upload_u32(ids, shape)
    }

    /// Gathers rows: ids [..] -> [.., dim] (see [`embedding`]).
    pub fn lookup(&self, gpu: &Gpu, ids: &Tensor) -> Result<Tensor> {
        embedding(gpu, ids, &self.chunks, self.rows_per_chunk)
    }
}

fn expect_float_dtype(dtype: DType) -> Result<()> {
    if dtype == DType::U32 {
        return Err(Error::shape("embedding table", "the table must be f32 or f16"));
    }
    Ok(())
}

/// Gathers rows of a table: ids (U32, any shape [..]) -> [.., dim] in the
/// table's dtype. The table is `table_chunks` (each [rows, dim]); every chunk
/// but the last holds exactly `rows_per_chunk` rows. Ids >= vocab give rows of
/// zeros (they are never read out of bounds). One dispatch per chunk.
pub fn embedding(gpu: &Gpu, ids: &Tensor, table_chunks: &[Tensor], rows_per_chunk: usize) -> Result<Tensor> {
    if ids.dtype() != DType::U32 {
        return Err(Error::shape("embedding", format!("ids must be a U32 tensor, got {ids:?}")));
    }
    let first = table_chunks.first().ok_or_else(|| Error::shape("embedding", "the table has no chunks"))?;
    expect_float("embedding", first)?;
    let dim = first.dim(-1);
    let last = table_chunks.len() - 1;
    for (c, chunk) in table_chunks.iter().enumerate() {
        let rows_ok = if c < last { chunk.dim(0) == rows_per_chunk } else { (1..=rows_per_chunk).contains(&chunk.dim(0)) };
        if chunk.rank() != 2 || chunk.dim(1) != dim || chunk.dtype() != first.dtype() || !rows_ok {
            return Err(Error::shape(
                "embedding",
                format!(
                    "table chunk {c} is {chunk:?}: expected [{rows_per_chunk}, {dim}] {} (the last chunk may have fewer rows)",
                    first.dtype()
                ),
            ));
        }
    }
    let vocab = rows_per_chunk * last + table_chunks[last].dim(0);
    let mut out_shape = ids.shape().to_vec();
    out_shape.push(dim);
    let out = gpu.empty(&out_shape, first.dtype())?;
    let n = out.numel();
    if n == 0 {
        return Ok(out);
    }
    for (c, chunk) in table_chunks.iter().enumerate() {
        let p = GatherParams {
            n: n as u32,
            dim: dim as u32,
            row_start: (c * rows_per_chunk) as u32,
            rows: chunk.dim(0) as u32,
            vocab: vocab as u32,
            last_chunk: (c == last) as u32,
            pad0: 0,
            pad1: 0,
        };
        gpu.dispatch("embedding.gather", &gather_key(first.dtype()), &p, &[ids, chunk, &out], grid_for(gpu, n, WG_1D))?;
    }
    Ok(out)
}

/// Sinusoidal timestep embedding exactly as diffusers' `get_timestep_embedding`:
/// timesteps [B] -> [B, dim] with, for j < dim/2,
/// `freq_j = exp(-ln(max_period)·j / (dim/2 − downscale_freq_shift))`,
/// `emb = [sin(scale·t·freq), cos(scale·t·freq)]` (cos first when
/// `flip_sin_to_cos`), and a zero column appended when `dim` is odd.
/// The output has the timesteps' dtype: pass f32 timesteps (fractional
/// timesteps lose digits in f16) and cast the result where the model is f16.
/// SD 1.5's UNet uses `flip_sin_to_cos = true, downscale_freq_shift = 0,
/// scale = 1, max_period = 10000`.
pub fn timestep_embedding(
    gpu: &Gpu,
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    scale: f32,
    max_period: f32,
) -> Result<Tensor> {
    expect_float("timestep_embedding", timesteps)?;
    if timesteps.rank() != 1 {
        return Err(Error::shape("timestep_embedding", format!("timesteps must be 1-D [B], got {timesteps:?}")));
    }
    let half_dim = dim / 2;
    let denom = half_dim as f32 - downscale_freq_shift;
    if dim == 0 || (half_dim > 0 && denom == 0.0) {
        return Err(Error::Invalid(format!(
            "timestep_embedding: dim {dim} with downscale_freq_shift {downscale_freq_shift} divides by zero (needs dim >= 1 and dim/2 != shift)"
        )));
    }
    // Also rejects NaN.
    if max_period.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err(Error::Invalid(format!("timestep_embedding: max_period must be positive, got {max_period}")));
    }
    let out = gpu.empty(&[timesteps.dim(0), dim], timesteps.dtype())?;
    let p = TimestepParams {
        n: out.numel() as u32,
        dim: dim as u32,
        half_dim: half_dim as u32,
        flip: flip_sin_to_cos as u32,
        // -math.log(max_period) is a Python float, rounded to f32 when torch multiplies.
        neg_log_max_period: -(max_period as f64).ln() as f32,
        denom,
        scale,
        pad: 0,
    };
    gpu.dispatch(
        "embedding.timestep",
        &timestep_key(timesteps.dtype()),
        &p,
        &[timesteps, &out],
        grid_for(gpu, out.numel(), WG_1D),
    )?;
    Ok(out)
}
