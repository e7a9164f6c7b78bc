//! Token-table gathers over chunked tables, and diffusers' timestep
//! embedding against its formula; f32 and f16, features on and off.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::embedding::{EmbeddingTable, embedding, timestep_embedding};

fn ref_gather(table: &[f32], vocab: usize, dim: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            let id = id as usize;
            if id < vocab { table[id * dim..(id + 1) * dim].to_vec() } else { vec![0.0; dim] }
        })
        .collect()
}

#[test]
fn gather_over_tiny_chunks_matches_reference() {
    // A 37 x 24 table in chunks of 5 rows (8 chunks, the last of 2 rows): ids
    // hit every chunk, both ends of each, and beyond the vocabulary (zeros).
    let (vocab, dim) = (37usize, 24usize);
    for (gpu, dt) in configs() {
        let table = quantize(&rand_vec(1, vocab * dim, -1.0, 1.0), dt);
        let t = EmbeddingTable::upload_chunked(&gpu, &table, vocab, dim, dt, (5 * dim * dt.size()) as u64).unwrap();
        assert_eq!((t.chunks.len(), t.rows_per_chunk, t.vocab()), (8, 5, vocab));
        assert_eq!(t.chunks[7].shape(), &[2, dim]);
        let ids: Vec<u32> = vec![0, 4, 5, 9, 10, 36, 35, 17, 17, 1, 37, 1000, u32::MAX, 30, 31, 2, 3, 6, 7, 8, 11];
        let idt = gpu.upload_u32(&ids, &[3, 7]).unwrap();
        let y = t.lookup(&gpu, &idt).unwrap();
        assert_eq!(y.shape(), &[3, 7, dim]);
        assert_eq!(y.dtype(), dt);
        assert_eq!(gpu.download(&y).unwrap(), ref_gather(&table, vocab, dim, &ids), "{}", label(&gpu, dt));
    }
}

#[test]
fn gather_with_one_chunk_and_a_clip_sized_batch() {
    // The usual case: the table fits one binding; 2 x 77 token ids.
    let (vocab, dim) = (1000usize, 48usize);
    for (gpu, dt) in configs() {
        let table = quantize(&rand_vec(2, vocab * dim, -1.0, 1.0), dt);
        let t = EmbeddingTable::upload(&gpu, &table, vocab, dim, dt).unwrap();
        assert_eq!(t.chunks.len(), 1);
        let ids: Vec<u32> = (0..154u32).map(|i| (i * 7919) % vocab as u32).collect();
        let idt = t.upload_ids(&gpu, &ids, &[2, 77]).unwrap();
        let y = embedding(&gpu, &idt, &t.chunks, t.rows_per_chunk).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), ref_gather(&table, vocab, dim, &ids), "{}", label(&gpu, dt));
    }
}

#[test]
fn f16_bytes_upload_and_chunking_by_binding_limit() {
    // upload_bytes takes a table already encoded (as safetensors holds it);
    // chunks follow the byte limit: 1000 rows of 48 f32 = 192 000 bytes
    // under a 64 KiB limit gives 341 rows per chunk.
    let gpu = gpu();
    let (vocab, dim) = (1000usize, 48usize);
    let table = rand_vec(3, vocab * dim, -1.0, 1.0);
    let t = EmbeddingTable::upload_bytes(&gpu, bytemuck::cast_slice(&table), DType::F32, vocab, dim, 64 * 1024).unwrap();
    assert_eq!((t.rows_per_chunk, t.chunks.len()), (341, 3));
    let ids: Vec<u32> = vec![0, 340, 341, 681, 682, 999];
    let y = t.lookup(&gpu, &gpu.upload_u32(&ids, &[6]).unwrap()).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), ref_gather(&table, vocab, dim, &ids));
    if gpu.features().f16 {
        let h: Vec<half::f16> = table.iter().map(|&x| half::f16::from_f32(x)).collect();
        let t16 = EmbeddingTable::upload_bytes(&gpu, bytemuck::cast_slice(&h), DType::F16, vocab, dim, gpu.max_binding_bytes()).unwrap();
        let y = t16.lookup(&gpu, &gpu.upload_u32(&ids, &[6]).unwrap()).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), ref_gather(&quantize(&table, DType::F16), vocab, dim, &ids));
    }
}

#[test]
fn embedding_errors_are_clear() {
    let gpu = gpu();
    let t = EmbeddingTable::upload_chunked(&gpu, &[0.0; 40], 10, 4, DType::F32, 48).unwrap();
    assert_eq!((t.rows_per_chunk, t.chunks.len()), (3, 4));
    let err = t.upload_ids(&gpu, &[1, 2, 10], &[3]).unwrap_err().to_string();
    assert!(err.contains("token id 10 at position 2") && err.contains("vocabulary of 10"), "{err}");
    let float_ids = gpu.upload(&[1.0], &[1], DType::F32).unwrap();
    let err = t.lookup(&gpu, &float_ids).unwrap_err().to_string();
    assert!(err.contains("U32"), "{err}");
    let ids = gpu.upload_u32(&[1], &[1]).unwrap();
    let err = embedding(&gpu, &ids, &t.chunks, 4).unwrap_err().to_string();
    assert!(err.contains("table chunk 0"), "{err}");
    let err = embedding(&gpu, &ids, &[], 4).unwrap_err().to_string();
    assert!(err.contains("no chunks"), "{err}");
    let err = EmbeddingTable::upload(&gpu, &[0.0; 10], 3, 4, DType::F32).unwrap_err().to_string();
    assert!(err.contains("10 values for a [3, 4] table"), "{err}");
    let err = EmbeddingTable::upload_chunked(&gpu, &[0.0; 8], 2, 4, DType::F32, 8).unwrap_err().to_string();
    assert!(err.contains("over the chunk limit"), "{err}");
}

/// diffusers' get_timestep_embedding with torch's f32 steps: exponent and
/// frequency rounded to f32, argument scale·(t·freq) in f32; sin/cos in f64.
fn ref_timestep(ts: &[f32], dim: usize, flip: bool, shift: f32, scale: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period as f64).ln() as f32;
    let mut out = Vec::new();
    for &t in ts {
        let args: Vec<f64> = (0..half)
            .map(|j| {
                let freq = ((neg_log * j as f32 / (half as f32 - shift)) as f64).exp() as f32;
                (scale * (t * freq)) as f64
            })
            .collect();
        let sin = args.iter().map(|a| a.sin() as f32);
        let cos = args.iter().map(|a| a.cos() as f32);
        let mut row: Vec<f32> = if flip { cos.chain(sin).collect() } else { sin.chain(cos).collect() };
        row.resize(dim, 0.0);
        out.extend(row);
    }
    out
}

#[test]
fn timestep_embedding_matches_the_formula() {
    let ts = [0.0f32, 1.0, 999.0, 500.5, 0.25, 261.0, 37.0];
    // (dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period):
    // SD's UNet, the diffusers default, an odd dim, a tiny dim, a scaled one.
    let cases = [
        (320usize, true, 0.0f32, 1.0f32, 10000.0f32),
        (256, false, 1.0, 1.0, 10000.0),
        (7, true, 1.0, 1.0, 10000.0),
        (1, false, 1.0, 1.0, 10000.0),
        (64, false, 0.0, 0.5, 100.0),
    ];
    for (gpu, dt) in configs() {
        let tst = gpu.upload(&ts, &[ts.len()], dt).unwrap();
        let ts_stored = quantize(&ts, dt);
        for &(dim, flip, shift, scale, max_period) in &cases {
            let y = timestep_embedding(&gpu, &tst, dim, flip, shift, scale, max_period).unwrap();
            assert_eq!(y.shape(), &[ts.len(), dim]);
            let want = quantize(&ref_timestep(&ts_stored, dim, flip, shift, scale, max_period), dt);
            // Arguments reach 999 rad, where one f32 ulp of the frequency
            // (the device's exp may differ from torch's by an ulp or two)
            // moves the argument by ~1.2e-4: that bounds the f32 error.
            let rtol = if dt == DType::F16 { tol(DType::F16) } else { 2.5e-4 };
            assert_close(&format!("dim {dim} flip {flip} shift {shift} {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &want, rtol);
        }
    }
}

#[test]
fn timestep_embedding_at_zero_is_exact() {
    // t = 0: every sin is 0 and every cos 1 exactly; the odd column is 0.
    let gpu = gpu();
    let y = timestep_embedding(&gpu, &gpu.upload(&[0.0], &[1], DType::F32).unwrap(), 9, false, 1.0, 1.0, 10000.0).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn timestep_embedding_errors_are_clear() {
    let gpu = gpu();
    let t = gpu.upload(&[1.0, 2.0], &[2], DType::F32).unwrap();
    let err = timestep_embedding(&gpu, &t, 2, false, 1.0, 1.0, 10000.0).unwrap_err().to_string();
    assert!(err.contains("divides by zero"), "{err}");
    let err = timestep_embedding(&gpu, &t, 0, false, 0.0, 1.0, 10000.0).unwrap_err().to_string();
    assert!(err.contains("divides by zero"), "{err}");
    let t2 = gpu.upload(&[1.0, 2.0], &[1, 2], DType::F32).unwrap();
    let err = timestep_embedding(&gpu, &t2, 4, false, 0.0, 1.0, 10000.0).unwrap_err().to_string();
    assert!(err.contains("1-D"), "{err}");
}
