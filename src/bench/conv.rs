//! Bench cases of the conv family: the UNet's convolutions (SD 1.5 at a
//! 64×64 latent, batch 2, and the tiny prior's shapes) and a group norm.
//!
//! `fsd3d bench --variants conv` compares every conv2d variant, checked first
//! (see [`crate::bench::variants`]); this file gives it the shapes and the CPU
//! reference.
use crate::bench::Case;
use crate::bench::variants::{Sample, VariantProblem, as_stored, conv_bucket, pseudo_random};
use crate::error::Result;
use crate::gpu::{Caps, DType, Gpu, Tensor};
use crate::ops::conv2d::{Conv2dOpts, Conv2dVariant, choose_variant, conv2d};
use crate::ops::norm::group_norm;

/// A convolution shape: batch, channels in and out, input side, kernel side, stride.
#[derive(Clone, Copy, Debug)]
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

fn upload(gpu: &Gpu, shape: &[usize], dtype: DType, seed: u32) -> Result<Tensor> {
    gpu.upload(&pseudo_random(shape.iter().product(), seed), shape, dtype)
}

impl ConvShape {
    /// Output side (padding k / 2).
    fn out_side(&self) -> usize {
        (self.side + 2 * (self.k / 2) - self.k) / self.stride + 1
    }
    fn flops(&self) -> f64 {
        let out = self.out_side();
        2.0 * (self.batch * self.cout * out * out * self.cin * self.k * self.k) as f64
    }
    fn label(&self) -> String {
        format!("{}x{} {}->{} {}² s{} b{}", self.k, self.k, self.cin, self.cout, self.side, self.stride, self.batch)
    }
    fn bucket(&self, dtype: DType) -> String {
        let out = self.out_side();
        conv_bucket(dtype, self.cin, self.cout, (self.k, self.k), self.stride, self.batch * out * out)
    }
}

/// A case of `s` with `variant` (`None`: the op's own choice, named in the label).
fn conv_case<'a>(gpu: &'a Gpu, s: &ConvShape, dtype: DType, variant: Option<Conv2dVariant>) -> Result<Case<'a>> {
    let pad = s.k / 2;
    let x = upload(gpu, &[s.batch, s.cin, s.side, s.side], dtype, 1)?;
    let w = upload(gpu, &[s.cout, s.cin, s.k, s.k], dtype, 2)?;
    let b = upload(gpu, &[s.cout], dtype, 3)?;
    let opts = Conv2dOpts { stride: s.stride, padding: pad, variant, padding_w: None };
    let chosen = choose_variant(gpu, variant, || s.bucket(dtype))?;
    let out = s.out_side();
    let elems = x.numel() + w.numel() + b.numel() + s.batch * s.cout * out * out;
    Ok(Case {
        kernel: format!("conv2d.{}", chosen.name()),
        shape: s.label(),
        dtype,
        flops: s.flops(),
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
        v.push(conv_case(gpu, &TINY[0], DType::F32, None)?);
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
            v.push(conv_case(gpu, s, dt, None)?);
        }
        for &variant in &baselines {
            v.push(conv_case(gpu, s, DType::F32, Some(variant))?);
        }
    }
    for s in &SD15 {
        for &dt in &dtypes {
            v.push(conv_case(gpu, s, dt, None)?);
        }
    }
    for &dt in &dtypes {
        v.push(group_norm_case(gpu, 2, 320, 64, 32, dt)?);
    }
    Ok(v)
}

// ---- `bench --variants conv` ----

/// The conv2d variants this device can run.
pub(crate) fn variant_names(caps: Caps) -> Vec<&'static str> {
    Conv2dVariant::ALL.into_iter().filter(|v| v.available(caps)).map(Conv2dVariant::name).collect()
}

/// Shapes every variant is timed on: quick, the smallest tiny-prior shape;
/// else also the largest and SD 1.5's.
pub(crate) fn variant_problems(quick: bool) -> Vec<Box<dyn VariantProblem>> {
    let mut v = vec![TINY[0]];
    if !quick {
        v.push(TINY[3]);
        v.extend(SD15);
    }
    v.into_iter().map(|s| Box::new(s) as Box<dyn VariantProblem>).collect()
}

impl VariantProblem for ConvShape {
    fn shape(&self) -> String {
        self.label()
    }
    fn bucket(&self, dtype: DType) -> String {
        ConvShape::bucket(self, dtype)
    }
    fn default_variant(&self, gpu: &Gpu) -> &'static str {
        Conv2dVariant::default_for(gpu).name()
    }
    fn affordable(&self, variant: &str) -> bool {
        // The one-output baseline runs at ~0.2 GFLOP/s on lavapipe.
        variant != Conv2dVariant::Simple.name() || self.flops() <= 0.5e9
    }
    fn case<'a>(&self, gpu: &'a Gpu, variant: &str, dtype: DType) -> Result<Case<'a>> {
        conv_case(gpu, self, dtype, Some(Conv2dVariant::parse(variant)?))
    }
}

/// A check problem: channels off the 4/8-channel tiles and the subgroup's
/// channel tile, pixels off the 4/8-pixel blocks and 64-pixel tiles,
/// non-square inputs, stride 1 and 2. Both with a bias, as the UNet's convs
/// (tests/conv2d.rs covers the bias-less kernels): one pipeline per variant.
struct CheckConv {
    batch: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

const CHECKS: [CheckConv; 2] = [
    CheckConv { batch: 2, cin: 5, cout: 7, h: 9, w: 11, k: 3, stride: 1, pad: 1, bias: true },
    CheckConv { batch: 1, cin: 6, cout: 13, h: 10, w: 7, k: 3, stride: 2, pad: 1, bias: true },
];

/// Runs `variant` on the check problems next to a CPU loop nest.
pub(crate) fn check_samples(gpu: &Gpu, variant: &str, dtype: DType) -> Result<Vec<Sample>> {
    let variant = Conv2dVariant::parse(variant)?;
    let mut out = Vec::new();
    for (i, c) in CHECKS.iter().enumerate() {
        let seed = 10 * i as u32 + 100;
        let x = pseudo_random(c.batch * c.cin * c.h * c.w, seed + 1);
        let w = pseudo_random(c.cout * c.cin * c.k * c.k, seed + 2);
        let bias = pseudo_random(c.cout, seed + 3);
        let tx = gpu.upload(&x, &[c.batch, c.cin, c.h, c.w], dtype)?;
        let tw = gpu.upload(&w, &[c.cout, c.cin, c.k, c.k], dtype)?;
        let tb = gpu.upload(&bias, &[c.cout], dtype)?;
        let opts = Conv2dOpts { stride: c.stride, padding: c.pad, variant: Some(variant), padding_w: None };
        let got = gpu.download(&conv2d(gpu, &tx, &tw, c.bias.then_some(&tb), opts)?)?;
        let want = reference(c, &as_stored(&x, dtype), &as_stored(&w, dtype), &as_stored(&bias, dtype));
        let shape = format!("{}x{}x{}x{} k{} s{} -> {}", c.batch, c.cin, c.h, c.w, c.k, c.stride, c.cout);
        out.push(Sample { shape, got, want });
    }
    Ok(out)
}

/// The library's reference (ops::reference::conv2d) for a check case.
fn reference(c: &CheckConv, x: &[f64], w: &[f64], bias: &[f64]) -> Vec<f64> {
    let shape = crate::ops::reference::ConvShape {
        batch: c.batch,
        cin: c.cin,
        h: c.h,
        w: c.w,
        cout: c.cout,
        kh: c.k,
        kw: c.k,
        stride: c.stride,
        pad: c.pad,
    };
    crate::ops::reference::conv2d(&shape, x, w, c.bias.then_some(bias))
}
