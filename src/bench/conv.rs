//! Bench cases of the conv family: the UNet's convolutions (SD 1.5 at a
//! 64×64 latent, batch 2, and the tiny prior's shapes) and a group norm.
use crate::bench::Case;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::conv2d::{Conv2dOpts, Conv2dVariant, conv2d};
use crate::ops::norm::group_norm;

/// A convolution shape: batch, channels in and out, input side, kernel side, stride.
struct ConvShape {
    batch: usize,
    cin: usize,
    cout: usize,
    side: usize,
    k: usize,
    stride: usize,
}

const fn conv(batch: usize, cin: usize, cout: usize, side: usize, k: usize, stride: usize) -> ConvShape {
    ConvShape { batch, cin, cout, side, k, stride }
}

/// The tiny prior's convolutions (batch 2), smallest first.
const TINY: [ConvShape; 4] = [conv(2, 32, 32, 16, 3, 1), conv(2, 64, 64, 16, 3, 1), conv(2, 32, 32, 32, 3, 1), conv(2, 64, 64, 32, 3, 1)];

/// SD 1.5's UNet at a 64×64 latent, batch 2 (classifier-free guidance).
const SD15: [ConvShape; 5] = [
    conv(2, 320, 320, 64, 3, 1),
    conv(2, 640, 640, 32, 3, 1),
    conv(2, 1280, 1280, 16, 3, 1),
    conv(2, 320, 640, 64, 1, 1),
    conv(2, 320, 320, 64, 3, 2),
];

/// Deterministic inputs in [-1, 1) without the test helpers' RNG.
fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn upload(gpu: &Gpu, shape: &[usize], dtype: DType, seed: u32) -> Result<Tensor> {
    gpu.upload(&pseudo_random(shape.iter().product(), seed), shape, dtype)
}

fn conv_case<'a>(gpu: &'a Gpu, s: &ConvShape, dtype: DType, variant: Conv2dVariant) -> Result<Case<'a>> {
    let pad = s.k / 2;
    let x = upload(gpu, &[s.batch, s.cin, s.side, s.side], dtype, 1)?;
    let w = upload(gpu, &[s.cout, s.cin, s.k, s.k], dtype, 2)?;
    let b = upload(gpu, &[s.cout], dtype, 3)?;
    let opts = Conv2dOpts { stride: s.stride, padding: pad, variant: Some(variant) };
    let out = (s.side + 2 * pad - s.k) / s.stride + 1;
    let flops = 2.0 * (s.batch * s.cout * out * out * s.cin * s.k * s.k) as f64;
    let elems = x.numel() + w.numel() + b.numel() + s.batch * s.cout * out * out;
    Ok(Case {
        kernel: format!("conv2d.{}", variant.name()),
        shape: format!("{}x{} {}->{} {}² s{} b{}", s.k, s.k, s.cin, s.cout, s.side, s.stride, s.batch),
        dtype,
        flops,
        bytes: (elems * dtype.size()) as f64,
        record: Box::new(move || conv2d(gpu, &x, &w, Some(&b), opts).map(drop)),
    })
}

fn group_norm_case(gpu: &Gpu, batch: usize, channels: usize, side: usize, groups: usize, dtype: DType) -> Result<Case<'_>> {
    let x = upload(gpu, &[batch, channels, side, side], dtype, 4)?;
    let gamma = upload(gpu, &[channels], dtype, 5)?;
    let beta = upload(gpu, &[channels], dtype, 6)?;
    Ok(Case {
        kernel: "group_norm+silu".into(),
        shape: format!("{batch}x{channels}x{side}² G{groups}"),
        dtype,
        flops: 0.0,
        // At minimum one read and one write of x (the kernels read it twice).
        bytes: (2 * x.numel() * dtype.size()) as f64,
        record: Box::new(move || group_norm(gpu, &x, groups, Some(&gamma), Some(&beta), 1e-5, true).map(drop)),
    })
}

/// The conv family's cases; `quick` keeps the smallest of each kind.
pub fn cases(gpu: &Gpu, quick: bool) -> Result<Vec<Case<'_>>> {
    let best = Conv2dVariant::default_for(gpu);
    let mut v = Vec::new();
    if quick {
        v.push(conv_case(gpu, &TINY[0], DType::F32, best)?);
        v.push(group_norm_case(gpu, 1, 32, 16, 8, DType::F32)?);
        return Ok(v);
    }
    let mut dtypes = vec![DType::F32];
    if gpu.features().f16 {
        dtypes.push(DType::F16);
    }
    // The tiny shapes also with the fallback GEMM and the direct baseline.
    let mut baselines = vec![Conv2dVariant::Simple];
    if best != Conv2dVariant::Gemm8x4 {
        baselines.insert(0, Conv2dVariant::Gemm8x4);
    }
    for s in &TINY {
        for &dt in &dtypes {
            v.push(conv_case(gpu, s, dt, best)?);
        }
        for &variant in &baselines {
            v.push(conv_case(gpu, s, DType::F32, variant)?);
        }
    }
    for s in &SD15 {
        for &dt in &dtypes {
            v.push(conv_case(gpu, s, dt, best)?);
        }
    }
    for &dt in &dtypes {
        v.push(group_norm_case(gpu, 2, 320, 64, 32, dt)?);
    }
    Ok(v)
}
