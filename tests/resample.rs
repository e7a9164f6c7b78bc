//! Nearest and bilinear resizing against hand-written versions of torch's
//! F.interpolate formulas, up and down, f32 and f16, features on and off.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::resample::{resize_bilinear, resize_nearest, upsample_nearest2x};

/// torch's nearest source index: floor(dst · in/out) in f32, clamped.
fn nearest_index(dst: usize, in_size: usize, out_size: usize) -> usize {
    let scale = in_size as f32 / out_size as f32;
    ((dst as f32 * scale).floor() as usize).min(in_size - 1)
}

fn ref_nearest(x: &[f32], planes: usize, (ih, iw): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for y in 0..oh {
            for xx in 0..ow {
                out.push(x[(p * ih + nearest_index(y, ih, oh)) * iw + nearest_index(xx, iw, ow)]);
            }
        }
    }
    out
}

/// torch's bilinear taps along one axis (align_corners=False): source
/// coordinate (dst + 0.5)·in/out − 0.5, clamped at 0; lower index its floor,
/// upper index the next one unless at the edge; weights by the fraction.
/// The scale is f32 as in torch; the rest in f64.
fn taps(dst: usize, in_size: usize, out_size: usize) -> (usize, usize, f64) {
    let scale = (in_size as f32 / out_size as f32) as f64;
    let src = ((dst as f64 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(in_size - 1);
    let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
    (i0, i1, (src - i0 as f64).clamp(0.0, 1.0))
}

fn ref_bilinear(x: &[f32], planes: usize, (ih, iw): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let at = |y: usize, xx: usize| x[(p * ih + y) * iw + xx] as f64;
        for y in 0..oh {
            let (y0, y1, wy) = taps(y, ih, oh);
            for xx in 0..ow {
                let (x0, x1, wx) = taps(xx, iw, ow);
                let top = (1.0 - wx) * at(y0, x0) + wx * at(y0, x1);
                let bottom = (1.0 - wx) * at(y1, x0) + wx * at(y1, x1);
                out.push(((1.0 - wy) * top + wy * bottom) as f32);
            }
        }
    }
    out
}

#[test]
fn bilinear_2x2_to_4x4_worked_by_hand() {
    // Along one axis, in = 2, out = 4, scale 0.5: source coordinates
    // (d + 0.5)·0.5 − 0.5 = −0.25 (clamped to 0), 0.25, 0.75, 1.25; the
    // last has i0 = 1 = the last index, so i1 = 1 too. A row [a, b] becomes
    // [a, 0.75a + 0.25b, 0.25a + 0.75b, b]. For [[1, 2], [3, 4]]: rows
    // [1, 1.25, 1.75, 2] and [3, 3.25, 3.75, 4], mixed the same way down the
    // columns — torch's F.interpolate(size=4, mode="bilinear") output.
    let want = [
        1.0, 1.25, 1.75, 2.0, //
        1.5, 1.75, 2.25, 2.5, //
        2.5, 2.75, 3.25, 3.5, //
        3.0, 3.25, 3.75, 4.0,
    ];
    for (gpu, dt) in configs() {
        let x = gpu.upload(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2], dt).unwrap();
        let y = resize_bilinear(&gpu, &x, 4, 4).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 4]);
        assert_eq!(gpu.download(&y).unwrap(), want, "{}", label(&gpu, dt));
    }
}

#[test]
fn bilinear_matches_reference_up_and_down() {
    // (B, C, in H, in W, out H, out W): VAE-style 64 -> 512, shrinking 37 -> 16
    // (no anti-aliasing), non-square and odd factors both ways.
    let cases = [
        (1, 1, 64, 64, 512, 512),
        (2, 3, 37, 37, 16, 16),
        (1, 2, 5, 9, 13, 4),
        (1, 1, 1, 1, 3, 2),
        (2, 1, 7, 33, 7, 33),
    ];
    for (gpu, dt) in configs() {
        for (n, &(b, c, ih, iw, oh, ow)) in cases.iter().enumerate() {
            let x = quantize(&rand_vec(n as u64, b * c * ih * iw, -2.0, 2.0), dt);
            let y = resize_bilinear(&gpu, &gpu.upload(&x, &[b, c, ih, iw], dt).unwrap(), oh, ow).unwrap();
            assert_eq!(y.shape(), &[b, c, oh, ow]);
            let want = quantize(&ref_bilinear(&x, b * c, (ih, iw), (oh, ow)), dt);
            // Two-tap blends of values <= 2: a few f32 ulp (f16: one rounding).
            assert_close(&format!("bilinear {ih}x{iw}->{oh}x{ow} {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &want, tol(dt));
        }
    }
}

#[test]
fn nearest_matches_reference() {
    for (gpu, dt) in configs() {
        let (b, c, h, w) = (2, 3, 7, 5);
        let x = quantize(&rand_vec(9, b * c * h * w, -2.0, 2.0), dt);
        let t = gpu.upload(&x, &[b, c, h, w], dt).unwrap();
        let up2 = upsample_nearest2x(&gpu, &t).unwrap();
        assert_eq!(up2.shape(), &[b, c, 14, 10]);
        assert_eq!(gpu.download(&up2).unwrap(), ref_nearest(&x, b * c, (h, w), (14, 10)), "2x {}", label(&gpu, dt));
        for (oh, ow) in [(3, 2), (11, 13), (7, 5), (1, 1)] {
            let y = resize_nearest(&gpu, &t, oh, ow).unwrap();
            assert_eq!(gpu.download(&y).unwrap(), ref_nearest(&x, b * c, (h, w), (oh, ow)), "{oh}x{ow} {}", label(&gpu, dt));
        }
    }
}

#[test]
fn nearest2x_repeats_each_pixel() {
    let gpu = gpu();
    let x = gpu.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 1, 2, 3], DType::F32).unwrap();
    let y = gpu.download(&upsample_nearest2x(&gpu, &x).unwrap()).unwrap();
    assert_eq!(
        y,
        [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0]
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let gpu = gpu();
    let x3 = gpu.upload(&[0.0; 6], &[1, 2, 3], DType::F32).unwrap();
    let err = upsample_nearest2x(&gpu, &x3).unwrap_err().to_string();
    assert!(err.contains("rank-4"), "{err}");
    let x = gpu.upload(&[0.0; 6], &[1, 1, 2, 3], DType::F32).unwrap();
    let err = resize_bilinear(&gpu, &x, 0, 4).unwrap_err().to_string();
    assert!(err.contains("empty spatial size"), "{err}");
    let ids = gpu.upload_u32(&[0; 4], &[1, 1, 2, 2]).unwrap();
    let err = resize_nearest(&gpu, &ids, 4, 4).unwrap_err().to_string();
    assert!(err.contains("float"), "{err}");
}

/// The transpose of ref_bilinear: scatter each output's gradient to its four taps.
fn ref_bilinear_backward(dy: &[f32], planes: usize, (ih, iw): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let mut dx = vec![0f64; planes * ih * iw];
    for p in 0..planes {
        for y in 0..oh {
            let (y0, y1, wy) = taps(y, ih, oh);
            for xx in 0..ow {
                let (x0, x1, wx) = taps(xx, iw, ow);
                let g = dy[(p * oh + y) * ow + xx] as f64;
                for (yi, wyi) in [(y0, 1.0 - wy), (y1, wy)] {
                    for (xi, wxi) in [(x0, 1.0 - wx), (x1, wx)] {
                        dx[(p * ih + yi) * iw + xi] += wyi * wxi * g;
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

#[test]
fn bilinear_backward_is_the_transpose_of_the_resize() {
    use fsd3d::ops::resample::resize_bilinear_backward;
    // Up (the 64 -> 512 of a latent prior, shrunk), down, uneven, identity, to 1.
    let cases = [((5usize, 7usize), (40usize, 56usize)), ((9, 6), (4, 5)), ((3, 3), (7, 2)), ((6, 5), (6, 5)), ((4, 3), (1, 1))];
    for (gpu, dt) in configs() {
        for (i, &((ih, iw), (oh, ow))) in cases.iter().enumerate() {
            let planes = 2 * 3;
            let dy = quantize(&rand_vec(i as u64 + 40, planes * oh * ow, -1.0, 1.0), dt);
            let got = resize_bilinear_backward(&gpu, &gpu.upload(&dy, &[2, 3, oh, ow], dt).unwrap(), ih, iw).unwrap();
            assert_eq!(got.shape(), &[2, 3, ih, iw]);
            let got = gpu.download(&got).unwrap();
            let want = ref_bilinear_backward(&dy, planes, (ih, iw), (oh, ow));
            let what = format!("bilinear backward {ih}x{iw} <- {oh}x{ow} {}", label(&gpu, dt));
            assert_close(&what, &got, &quantize(&want, dt), tol(dt) * 10.0);
            // The adjoint identity <resize(x), dy> = <x, resize_backward(dy)> against the forward kernel.
            if dt == DType::F32 {
                let x = rand_vec(i as u64 + 90, planes * ih * iw, -1.0, 1.0);
                let y = gpu.download(&resize_bilinear(&gpu, &gpu.upload(&x, &[2, 3, ih, iw], dt).unwrap(), oh, ow).unwrap()).unwrap();
                let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
                let rhs: f64 = x.iter().zip(&got).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{what}: <Ax, dy> = {lhs}, <x, Aᵀdy> = {rhs}");
            }
        }
    }
    let gpu = gpu();
    let dy = gpu.upload(&[1.0; 4], &[1, 1, 2, 2], DType::F32).unwrap();
    assert!(resize_bilinear_backward(&gpu, &dy, 0, 3).is_err());
    assert!(resize_bilinear_backward(&gpu, &gpu.upload(&[1.0; 4], &[4], DType::F32).unwrap(), 2, 2).is_err());
}
