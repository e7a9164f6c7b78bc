//! conv2d against a CPU reference (a plain loop nest in f64) for every kernel
//! variant, on awkward sizes (channels 1, 3, 7, 33; odd spatial sizes; blocks
//! that do not divide the problem), strides 1 and 2, padding 0 and 1, f32 and
//! f16 (also mixed), with every optional feature on and off; rectangular
//! kernels with padding on one axis only (Inception's 1×7 / 7×1); and bad input.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::conv2d::{Conv2dOpts, Conv2dVariant, conv2d};
use fsd3d::ops::reference;

/// One convolution problem: x [b, cin, h, w], weight [cout, cin, kh, kw].
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    /// Columns of padding (rows: `pad`).
    pad_w: usize,
}

#[allow(clippy::too_many_arguments)]
const fn case(b: usize, cin: usize, h: usize, w: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case { b, cin, h, w, cout, kh: k, kw: k, stride, pad, pad_w: pad }
}

const CASES: [Case; 13] = [
    case(1, 1, 1, 1, 1, 1, 1, 0),     // everything 1
    case(2, 3, 5, 7, 7, 3, 1, 1),     // 3×3 "same"
    case(1, 7, 17, 9, 33, 3, 2, 1),   // stride 2 on odd sizes
    case(1, 3, 17, 9, 5, 3, 2, 0),    // stride 2, no padding
    case(2, 33, 5, 7, 3, 1, 1, 0),    // 1×1
    case(2, 5, 9, 8, 17, 1, 2, 0),    // 1×1 stride 2
    case(1, 4, 6, 5, 8, 3, 1, 0),     // 3×3 "valid"
    case(1, 8, 19, 23, 37, 3, 1, 1),  // pixels and channels no block divides
    case(2, 2, 1, 1, 3, 3, 1, 1),     // 1×1 input, 3×3 kernel all but the centre in the padding
    Case { b: 1, cin: 2, h: 4, w: 6, cout: 3, kh: 2, kw: 3, stride: 1, pad: 1, pad_w: 1 }, // non-square kernel
    Case { b: 2, cin: 5, h: 9, w: 11, cout: 6, kh: 1, kw: 7, stride: 1, pad: 0, pad_w: 3 }, // Inception's 1×7, "same"
    Case { b: 1, cin: 6, h: 11, w: 9, cout: 5, kh: 7, kw: 1, stride: 1, pad: 3, pad_w: 0 }, // and 7×1
    Case { b: 1, cin: 3, h: 7, w: 5, cout: 9, kh: 3, kw: 1, stride: 2, pad: 1, pad_w: 0 }, // 3×1, stride 2
];

impl Case {
    fn out_hw(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.kh) / self.stride + 1, (self.w + 2 * self.pad_w - self.kw) / self.stride + 1)
    }
    fn x_shape(&self) -> [usize; 4] {
        [self.b, self.cin, self.h, self.w]
    }
    fn w_shape(&self) -> [usize; 4] {
        [self.cout, self.cin, self.kh, self.kw]
    }
}

fn reference_conv(c: &Case, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    if c.pad_w != c.pad {
        // The reference pads both axes alike: pad the input here instead.
        let (h, w_) = (c.h + 2 * c.pad, c.w + 2 * c.pad_w);
        let mut padded = vec![0f32; c.b * c.cin * h * w_];
        for plane in 0..c.b * c.cin {
            for y in 0..c.h {
                for xx in 0..c.w {
                    padded[(plane * h + y + c.pad) * w_ + xx + c.pad_w] = x[(plane * c.h + y) * c.w + xx];
                }
            }
        }
        let unpadded = Case { h, w: w_, pad: 0, pad_w: 0, ..*c };
        return reference_conv(&unpadded, &padded, w, bias);
    }
    let shape = reference::ConvShape { batch: c.b, cin: c.cin, h: c.h, w: c.w, cout: c.cout, kh: c.kh, kw: c.kw, stride: c.stride, pad: c.pad };
    let bias = bias.map(reference::widen);
    reference::narrow(&reference::conv2d(&shape, &reference::widen(x), &reference::widen(w), bias.as_deref()))
}

/// Runs `c` on the device with storage types (x, weight, bias) and compares.
fn check(gpu: &fsd3d::gpu::Gpu, c: &Case, seed: u64, tx: DType, tw: DType, tb: Option<DType>, variant: Conv2dVariant) {
    let x = quantize(&rand_vec(seed, c.x_shape().iter().product(), -1.0, 1.0), tx);
    let w = quantize(&rand_vec(seed + 1, c.w_shape().iter().product(), -1.0, 1.0), tw);
    let bias = tb.map(|tb| quantize(&rand_vec(seed + 2, c.cout, -1.0, 1.0), tb));
    let xt = gpu.upload(&x, &c.x_shape(), tx).unwrap();
    let wt = gpu.upload(&w, &c.w_shape(), tw).unwrap();
    let bt = bias.as_ref().map(|bv| gpu.upload(bv, &[c.cout], tb.unwrap()).unwrap());
    let opts = Conv2dOpts { stride: c.stride, padding: c.pad, variant: Some(variant), padding_w: Some(c.pad_w) };
    let y = conv2d(gpu, &xt, &wt, bt.as_ref(), opts).unwrap();
    let (ho, wo) = c.out_hw();
    assert_eq!(y.shape(), &[c.b, c.cout, ho, wo]);
    assert_eq!(y.dtype(), tx);
    let want = quantize(&reference_conv(c, &x, &w, bias.as_deref()), tx);
    let what = format!("{} {c:?} x={tx} w={tw} bias={tb:?} [{}]", variant.name(), gpu.features().names().join(","));
    // f32 accumulation over K = cin·kh·kw ≤ 300 terms stays well inside tol(f32).
    let coop = variant == Conv2dVariant::Coop;
    let t = tol(operand_type(gpu, coop, tx)).max(tol(operand_type(gpu, coop, tw)));
    assert_close(&what, &gpu.download(&y).unwrap(), &want, t);
}

/// Every variant but `coop`, whose emulated twin takes lavapipe seconds per
/// kernel to compile: tests/gemm.rs runs it on the same kinds of cases, and
/// the UNet-like shape below here.
#[test]
fn every_variant_matches_reference() {
    for (gpu, dt) in configs() {
        for variant in Conv2dVariant::ALL.into_iter().filter(|v| v.available(gpu.caps()) && *v != Conv2dVariant::Coop) {
            for (ci, c) in CASES.iter().enumerate() {
                for bias in [Some(dt), None] {
                    check(&gpu, c, ci as u64 * 10, dt, dt, bias, variant);
                }
            }
        }
    }
}

#[test]
fn default_variant_matches_reference() {
    for (gpu, dt) in configs() {
        let c = &CASES[7];
        let x = rand_vec(1, c.x_shape().iter().product(), -1.0, 1.0);
        let w = rand_vec(2, c.w_shape().iter().product(), -1.0, 1.0);
        let (x, w) = (quantize(&x, dt), quantize(&w, dt));
        let opts = Conv2dOpts { stride: c.stride, padding: c.pad, variant: None, padding_w: None };
        let y = conv2d(&gpu, &gpu.upload(&x, &c.x_shape(), dt).unwrap(), &gpu.upload(&w, &c.w_shape(), dt).unwrap(), None, opts).unwrap();
        let want = quantize(&reference_conv(c, &x, &w, None), dt);
        assert_close(&format!("default {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &want, tol(dt));
    }
}

#[test]
fn mixed_storage_types() {
    // f16 activations with f32 weights and bias, and the reverse.
    let gpu = gpu();
    if !gpu.features().f16 {
        return;
    }
    let (f32_, f16_) = (DType::F32, DType::F16);
    for variant in [Conv2dVariant::Simple, Conv2dVariant::default_for(&gpu)] {
        for (tx, tw, tb) in [(f16_, f32_, Some(f32_)), (f32_, f16_, Some(f16_)), (f32_, f16_, Some(f32_)), (f16_, f16_, Some(f32_))] {
            check(&gpu, &CASES[2], 77, tx, tw, tb, variant);
        }
    }
}

#[test]
fn unavailable_variant_is_a_clear_error() {
    let off = gpus().remove(1);
    assert!(!Conv2dVariant::Subgroup.available(off.caps()));
    let x = off.upload(&[0.0; 9], &[1, 1, 3, 3], DType::F32).unwrap();
    let w = off.upload(&[0.0; 9], &[1, 1, 3, 3], DType::F32).unwrap();
    let opts = Conv2dOpts { variant: Some(Conv2dVariant::Subgroup), ..Default::default() };
    let err = conv2d(&off, &x, &w, None, opts).unwrap_err().to_string();
    assert!(err.contains("conv2d variant subgroup") && err.contains("SUBGROUP"), "{err}");
}

#[test]
fn variant_names_round_trip() {
    for v in Conv2dVariant::ALL {
        assert_eq!(Conv2dVariant::parse(v.name()).unwrap(), v);
    }
    let err = Conv2dVariant::parse("winograd").unwrap_err().to_string();
    assert!(err.contains("simple"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let gpu = gpu();
    let x = gpu.upload(&[0.0; 2 * 3 * 5 * 5], &[2, 3, 5, 5], DType::F32).unwrap();
    let w4 = gpu.upload(&[0.0; 8 * 4 * 9], &[8, 4, 3, 3], DType::F32).unwrap();
    let opts = Conv2dOpts { padding: 1, ..Default::default() };
    let err = conv2d(&gpu, &x, &w4, None, opts).unwrap_err().to_string();
    assert!(err.contains("expects 4 input channels") && err.contains("has 3"), "{err}");

    let w = gpu.upload(&[0.0; 8 * 3 * 9], &[8, 3, 3, 3], DType::F32).unwrap();
    let b7 = gpu.upload(&[0.0; 7], &[7], DType::F32).unwrap();
    let err = conv2d(&gpu, &x, &w, Some(&b7), opts).unwrap_err().to_string();
    assert!(err.contains("bias must have shape [8]"), "{err}");

    let err = conv2d(&gpu, &x, &w, None, Conv2dOpts { stride: 0, ..opts }).unwrap_err().to_string();
    assert!(err.contains("stride"), "{err}");

    let w7 = gpu.upload(&[0.0; 8 * 3 * 49], &[8, 3, 7, 7], DType::F32).unwrap();
    let err = conv2d(&gpu, &x, &w7, None, Conv2dOpts::default()).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");

    let x3 = gpu.upload(&[0.0; 75], &[3, 5, 5], DType::F32).unwrap();
    let err = conv2d(&gpu, &x3, &w, None, opts).unwrap_err().to_string();
    assert!(err.contains("[B, Cin, H, W]"), "{err}");
}

#[test]
fn gemm_variants_agree_with_simple_on_a_unet_like_shape() {
    // A longer reduction (K = 40·9 = 360) than the reference cases, checked
    // against the direct kernel on the device.
    let c = case(2, 40, 12, 12, 48, 3, 1, 1);
    for (gpu, dt) in configs() {
        let x = quantize(&randn(5, c.x_shape().iter().product()), dt);
        let w = quantize(&rand_vec(6, c.w_shape().iter().product(), -0.2, 0.2), dt);
        let b = quantize(&rand_vec(7, c.cout, -1.0, 1.0), dt);
        let (xt, wt, bt) = (gpu.upload(&x, &c.x_shape(), dt).unwrap(), gpu.upload(&w, &c.w_shape(), dt).unwrap(), gpu.upload(&b, &[c.cout], dt).unwrap());
        let run = |variant| {
            let opts = Conv2dOpts { stride: 1, padding: 1, variant: Some(variant), padding_w: None };
            gpu.download(&conv2d(&gpu, &xt, &wt, Some(&bt), opts).unwrap()).unwrap()
        };
        let simple = run(Conv2dVariant::Simple);
        for variant in Conv2dVariant::ALL.into_iter().filter(|v| v.available(gpu.caps())) {
            let t = tol(operand_type(&gpu, variant == Conv2dVariant::Coop, dt));
            assert_close(&format!("{} vs simple {}", variant.name(), label(&gpu, dt)), &run(variant), &simple, t);
        }
    }
}

#[test]
fn the_device_variant_choice_is_used_when_the_call_names_none() {
    use fsd3d::gpu::{Gpu, GpuOptions};
    let c = &CASES[1];
    let x = rand_vec(1, c.x_shape().iter().product(), -1.0, 1.0);
    let w = rand_vec(2, c.w_shape().iter().product(), -1.0, 1.0);
    let opts = Conv2dOpts { stride: c.stride, padding: c.pad, variant: None, padding_w: None };

    let variants = vec![("conv2d".to_string(), "simple".to_string())];
    let gpu = Gpu::new(&GpuOptions { profile: true, variants, ..Default::default() }).unwrap();
    let (xt, wt) = (gpu.upload(&x, &c.x_shape(), DType::F32).unwrap(), gpu.upload(&w, &c.w_shape(), DType::F32).unwrap());
    let y = gpu.download(&conv2d(&gpu, &xt, &wt, None, opts).unwrap()).unwrap();
    assert_close("conv2d=simple", &y, &reference_conv(c, &x, &w, None), tol(DType::F32));
    if gpu.profile_uses_timestamps() {
        let labels: Vec<String> = gpu.profile_report().into_iter().map(|e| e.label).collect();
        assert!(labels.iter().any(|l| l == "conv2d.simple"), "{labels:?}");
    }

    let variants = vec![("conv2d".to_string(), "winograd".to_string())];
    let gpu = Gpu::new(&GpuOptions { variants, ..Default::default() }).unwrap();
    let (xt, wt) = (gpu.upload(&x, &c.x_shape(), DType::F32).unwrap(), gpu.upload(&w, &c.w_shape(), DType::F32).unwrap());
    let err = conv2d(&gpu, &xt, &wt, None, opts).unwrap_err().to_string();
    assert!(err.contains("unknown conv2d variant \"winograd\""), "{err}");
}

/// A frozen convolution packs its weights once and reuses them: the same
/// outputs as packing every call, with and without a residual, and new
/// weights (another tensor, or the same shape in another dtype) are packed
/// afresh rather than served stale.
#[test]
fn frozen_weights_are_packed_once_and_repacked_when_they_change() {
    use fsd3d::ops::conv2d::{PackedWeights, conv2d_add, conv2d_frozen};
    for gpu in gpus() {
        for variant in [Conv2dVariant::Gemm8x4, Conv2dVariant::Subgroup] {
            if !variant.available(gpu.caps()) {
                continue;
            }
            let opts = Conv2dOpts { stride: 1, padding: 1, variant: Some(variant), padding_w: None };
            let x = gpu.upload(&rand_vec(1, 2 * 5 * 6 * 7, -1.0, 1.0), &[2, 5, 6, 7], DType::F32).unwrap();
            let w1 = gpu.upload(&rand_vec(2, 11 * 5 * 9, -1.0, 1.0), &[11, 5, 3, 3], DType::F32).unwrap();
            let w2 = gpu.upload(&rand_vec(3, 11 * 5 * 9, -1.0, 1.0), &[11, 5, 3, 3], DType::F32).unwrap();
            let b = gpu.upload(&rand_vec(4, 11, -1.0, 1.0), &[11], DType::F32).unwrap();
            let r = gpu.upload(&rand_vec(5, 2 * 11 * 42, -1.0, 1.0), &[2, 11, 6, 7], DType::F32).unwrap();
            let cache = PackedWeights::default();
            let what = format!("{variant:?} on {}", gpu.info().name);
            let plain1 = gpu.download(&conv2d(&gpu, &x, &w1, Some(&b), opts).unwrap()).unwrap();
            for _ in 0..2 {
                let y = conv2d_frozen(&gpu, &x, &w1, Some(&b), None, opts, &cache).unwrap();
                assert_eq!(gpu.download(&y).unwrap(), plain1, "{what}");
                assert!(cache.is_filled(), "{what}: the packed weights are kept");
            }
            let with_residual = gpu.download(&conv2d_add(&gpu, &x, &w1, Some(&b), &r, opts).unwrap()).unwrap();
            let y = conv2d_frozen(&gpu, &x, &w1, Some(&b), Some(&r), opts, &cache).unwrap();
            assert_eq!(gpu.download(&y).unwrap(), with_residual, "{what}: with a residual");
            let plain2 = gpu.download(&conv2d(&gpu, &x, &w2, Some(&b), opts).unwrap()).unwrap();
            assert_ne!(plain1, plain2);
            let y = conv2d_frozen(&gpu, &x, &w2, Some(&b), None, opts, &cache).unwrap();
            assert_eq!(gpu.download(&y).unwrap(), plain2, "{what}: new weights are packed afresh");
            let y = conv2d_frozen(&gpu, &x, &w1, Some(&b), None, opts, &cache).unwrap();
            assert_eq!(gpu.download(&y).unwrap(), plain1, "{what}: and the first ones again");
        }
    }
}
