//! The VAE decoder with activations split along channels (for maps over the
//! storage binding limit): the same image as the whole-map decoder and as
//! diffusers, with the limit lowered so the tiny fixture has to split.
mod common;
use std::path::Path;

use fsd3d::gpu::DType;
use fsd3d::models::chunked::chunk_sizes;
use fsd3d::models::forward::read_tensors;
use fsd3d::models::vae::Vae;

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn chunk_sizes_hold_whole_groups_under_the_limit() {
    // 256 channels of 512² f32 (the SD decoder's largest map) under 128 MiB: two of 128.
    assert_eq!(chunk_sizes(1, 256, 512, 512, 4, 8, 128 << 20).unwrap(), vec![128, 128]);
    // Uneven: 48 channels, groups of 4, at most 20 channels' worth -> 20, 20, 8.
    assert_eq!(chunk_sizes(1, 48, 2, 2, 4, 4, 20 * 16).unwrap(), vec![20, 20, 8]);
    // A limit below one group is a clear error.
    let e = chunk_sizes(1, 48, 2, 2, 4, 4, 15).unwrap_err().to_string();
    assert!(e.contains("cannot be split"), "{e}");
}

#[test]
fn the_split_decoder_gives_the_same_image() {
    let dir = Path::new("tests/fixtures/models/vae");
    let inputs = read_tensors(&dir.join("inputs_vae-decode.safetensors")).unwrap();
    let want = &read_tensors(&dir.join("outputs_vae-decode.safetensors")).unwrap()["decoded"];
    let z = &inputs["latent"];
    for gpu in common::gpus() {
        let vae = Vae::load(&gpu, dir, DType::F32).unwrap();
        let zt = gpu.upload(&z.data, &z.shape, DType::F32).unwrap();
        let whole = gpu.download(&vae.decode(&gpu, &zt).unwrap()).unwrap();
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        // [1, C, 20, 24] f32 is 1 920·C bytes: limits of 4 (one group of the 32-channel
        // maps) and 9 channels at the
        // full size force splits from the first and the last up level on.
        for channels in [4u64, 9] {
            let limit = channels * 20 * 24 * 4;
            let got = vae.decode_within(&gpu, &zt, limit).unwrap();
            assert_eq!(got.shape(), &[1, 3, 20, 24]);
            let got = gpu.download(&got).unwrap();
            let vs_whole = max_err(&got, &whole);
            let vs_diffusers = max_err(&got, &want.data);
            eprintln!("limit {channels} channels: vs whole-map decode {vs_whole:.2e}, vs diffusers {vs_diffusers:.2e} (scale {scale:.3})");
            // The split path ran (its sums are ordered differently, so the last bits differ)...
            assert!(vs_whole > 0.0, "limit {channels}: no split happened");
            // ...and only the order of the convolution's channel sums differs.
            assert!(vs_whole <= 1e-5 * scale.max(1.0), "split decode differs from the whole-map decode by {vs_whole}");
            assert!(vs_diffusers <= 1e-3 * scale, "split decode differs from diffusers by {vs_diffusers}");
        }
        // A limit below one group of the widest map is refused with the reason.
        let e = vae.decode_within(&gpu, &zt, 64).unwrap_err().to_string();
        assert!(e.contains("cannot be split"), "{e}");
    }
}
