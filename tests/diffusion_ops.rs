//! Sampler kernels against their CPU references: guidance, the DDIM update
//! (every parameterisation, with and without clipping), keyed Gaussian noise.
mod common;
use common::*;
use fsd3d::ops::diffusion::{self as dops, DdimCoefficients, NoiseKey, NoisePurpose, Prediction};
use fsd3d::ops::fsd;
use fsd3d::gpu::DType;

#[test]
fn guidance_matches_reference() {
    for (gpu, dt) in configs() {
        for &(b, n) in &[(1usize, 7usize), (2, 33), (3, 255)] {
            let e = quantize(&rand_vec(b as u64 * 7 + n as u64, 2 * b * n, -2.0, 2.0), dt);
            let y = dops::guidance(&gpu, &gpu.upload(&e, &[2 * b, n], dt).unwrap(), 7.5).unwrap();
            assert_eq!(y.shape(), &[b, n]);
            let want: Vec<f32> = (0..b * n).map(|i| e[i] + 7.5 * (e[i + b * n] - e[i])).collect();
            assert_close(&format!("guidance {b}x{n} {}", label(&gpu, dt)), &gpu.download(&y).unwrap(), &quantize(&want, dt), tol(dt) * 10.0);
        }
    }
}

#[test]
fn ddim_step_matches_reference() {
    for (gpu, dt) in configs() {
        let x = quantize(&rand_vec(1, 301, -3.0, 3.0), dt);
        let m = quantize(&rand_vec(2, 301, -3.0, 3.0), dt);
        let (xt, mt) = (gpu.upload(&x, &[301], dt).unwrap(), gpu.upload(&m, &[301], dt).unwrap());
        for prediction in [Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample] {
            for clip in [None, Some(1.0)] {
                let c = DdimCoefficients { alpha_bar_t: 0.3, alpha_bar_prev: 0.7, prediction, clip, sigma: 0.0 };
                let got = gpu.download(&dops::ddim_step(&gpu, &xt, &mt, &c, None).unwrap()).unwrap();
                let want: Vec<f32> = x.iter().zip(&m).map(|(&a, &b)| c.step(a as f64, b as f64) as f32).collect();
                assert_close(&format!("ddim {prediction:?} clip {clip:?} {}", label(&gpu, dt)), &got, &quantize(&want, dt), tol(dt) * 5.0);
            }
        }
    }
}

/// The stochastic (η > 0) step: x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ²)·ε̂ + σ·z,
/// against the f64 reference, for every parameterisation; without its noise
/// tensor it is refused.
#[test]
fn ddim_noisy_step_matches_reference() {
    for (gpu, dt) in configs() {
        let n = 517;
        let x = quantize(&rand_vec(3, n, -3.0, 3.0), dt);
        let m = quantize(&rand_vec(4, n, -3.0, 3.0), dt);
        let z = quantize(&rand_vec(5, n, -2.5, 2.5), dt);
        let (xt, mt, zt) = (gpu.upload(&x, &[n], dt).unwrap(), gpu.upload(&m, &[n], dt).unwrap(), gpu.upload(&z, &[n], dt).unwrap());
        for prediction in [Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample] {
            for clip in [None, Some(1.0)] {
                let c = DdimCoefficients { alpha_bar_t: 0.2, alpha_bar_prev: 0.6, prediction, clip, sigma: 0.45 };
                let got = gpu.download(&dops::ddim_step(&gpu, &xt, &mt, &c, Some(&zt)).unwrap()).unwrap();
                let want: Vec<f32> = (0..n).map(|i| c.step_with_noise(x[i] as f64, m[i] as f64, z[i] as f64) as f32).collect();
                assert_close(&format!("ddim η>0 {prediction:?} clip {clip:?} {}", label(&gpu, dt)), &got, &quantize(&want, dt), tol(dt) * 5.0);
                // The noise term is really there: the step differs from the σ = 0 one.
                let plain = DdimCoefficients { sigma: 0.0, ..c };
                let far = (0..n).filter(|&i| (got[i] as f64 - plain.step(x[i] as f64, m[i] as f64)).abs() > 0.05).count();
                assert!(far > n / 2, "σ = 0.45 moved only {far} of {n} elements");
            }
        }
        let c = DdimCoefficients { alpha_bar_t: 0.2, alpha_bar_prev: 0.6, prediction: Prediction::Epsilon, clip: None, sigma: 0.45 };
        let err = dops::ddim_step(&gpu, &xt, &mt, &c, None).err().unwrap().to_string();
        assert!(err.contains("needs a noise tensor"), "{err}");
    }
}

#[test]
fn noise_is_a_pure_function_of_its_key() {
    let gpu = gpu();
    let key = NoiseKey { seed: 0x1234_5678_9abc, step: 3, purpose: NoisePurpose::InitialLatents };
    for n in [1usize, 7, 1001] {
        let g = gpu.download(&dops::randn(&gpu, &[n], fsd3d::gpu::DType::F32, key).unwrap()).unwrap();
        assert_close(&format!("randn n={n}"), &g, &dops::randn_cpu(n, key), 1e-4);
    }
    let a = dops::randn_cpu(64, key);
    for other in [
        NoiseKey { seed: key.seed + 1, ..key },
        NoiseKey { step: 4, ..key },
        NoiseKey { purpose: NoisePurpose::WorldMap, ..key },
    ] {
        let b = dops::randn_cpu(64, other);
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 2, "{other:?} repeats the stream of {key:?}");
    }
}

#[test]
fn noise_is_standard_normal() {
    let n = 200_000;
    let v = dops::randn_cpu(n, NoiseKey { seed: 7, step: 0, purpose: NoisePurpose::Fresh });
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    // Sampling error of the mean is 1/sqrt(n) ≈ 0.0022, of the variance √(2/n) ≈ 0.0032.
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.015, "variance {var}");
    // Tail mass beyond 3σ should be about 0.27 %.
    let tail = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n as f64;
    assert!((tail - 0.0027).abs() < 0.001, "tail {tail}");
    // Neighbouring elements are uncorrelated.
    let corr = v.windows(2).map(|w| (w[0] * w[1]) as f64).sum::<f64>() / (n - 1) as f64;
    assert!(corr.abs() < 0.01, "lag-1 correlation {corr}");
}

#[test]
fn distill_grad_weights_clips_and_zeroes_non_finite_values() {
    use fsd3d::gpu::DType;
    for gpu in gpus() {
        for &(n, clip) in &[(1usize, 0.0f32), (37, 0.0), (1000, 0.5)] {
            let mut pred = rand_vec(n as u64, n, -2.0, 2.0);
            let target = rand_vec(n as u64 + 99, n, -2.0, 2.0);
            // Plant non-finite values where the array is long enough.
            let planted: Vec<usize> = [3usize, 17, 500].into_iter().filter(|&i| i < n).collect();
            for (k, &i) in planted.iter().enumerate() {
                pred[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k];
            }
            let counter = gpu.upload_u32(&[0, 0], &[2]).unwrap();
            let g = fsd::DistillGrad { weight: 0.7, clip, out_scale: 0.25 };
            let y = fsd::distill_grad(&gpu, &gpu.upload(&pred, &[n], DType::F32).unwrap(), &gpu.upload(&target, &[n], DType::F32).unwrap(), &g, &counter).unwrap();
            let got = gpu.download(&y).unwrap();
            let want: Vec<f32> = pred
                .iter()
                .zip(&target)
                .map(|(&p, &t)| {
                    let v = 0.7 * (p as f64 - t as f64);
                    let v = if v.is_finite() { v } else { 0.0 };
                    let v = if clip > 0.0 { v.clamp(-clip as f64, clip as f64) } else { v };
                    (v * 0.25) as f32
                })
                .collect();
            assert_close(&format!("distill_grad n={n} clip={clip}"), &got, &want, 1e-6);
            assert_eq!(gpu.download_u32(&counter).unwrap()[0] as usize, planted.len(), "non-finite count, n={n}");
        }
        let bad = gpu.upload(&[1.0, 2.0], &[2], DType::F32).unwrap();
        let other = gpu.upload(&[1.0], &[1], DType::F32).unwrap();
        let counter = gpu.upload_u32(&[0], &[1]).unwrap();
        let g = fsd::DistillGrad { weight: 1.0, clip: 0.0, out_scale: 1.0 };
        assert!(fsd::distill_grad(&gpu, &bad, &other, &g, &counter).is_err());
    }
}

/// threestudio's MVDream guidance (`recon_loss` with `recon_std_rescale`),
/// written as it is there: x̂0 of the guided and of the conditional
/// prediction, the per-object std ratio (torch.std, unbiased), the blend,
/// then the ε that gives that x̂0.
fn threestudio_rescale(x_t: &[f32], cond: &[f32], uncond: &[f32], objects: usize, s: f64, alpha_bar: f64, phi: f64) -> Vec<f32> {
    let recon = |x: f64, e: f64| (1.0 / alpha_bar).sqrt() * x - (1.0 / alpha_bar - 1.0).sqrt() * e;
    let std = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let per = x_t.len() / objects;
    let mut out = vec![];
    for o in 0..objects {
        let r = o * per..(o + 1) * per;
        let guided: Vec<f64> = r.clone().map(|i| recon(x_t[i] as f64, uncond[i] as f64 + s * (cond[i] as f64 - uncond[i] as f64))).collect();
        let nocfg: Vec<f64> = r.clone().map(|i| recon(x_t[i] as f64, cond[i] as f64)).collect();
        let factor = (std(&nocfg) + 1e-8) / (std(&guided) + 1e-8);
        for (i, g) in r.zip(&guided) {
            let x0 = phi * g * factor + (1.0 - phi) * g;
            out.push(((x_t[i] as f64 - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()) as f32);
        }
    }
    out
}

#[test]
fn cfg_rescale_matches_threestudios_mvdream_guidance() {
    let gpu = gpu();
    // Groups of 4 views of odd sizes, with an offset in x_t so that a
    // one-pass variance would lose digits.
    for &(objects, views, c, h, w) in &[(1usize, 4usize, 3usize, 5usize, 7usize), (3, 4, 4, 9, 6), (2, 2, 3, 32, 33)] {
        let b = objects * views;
        let n = b * c * h * w;
        let x: Vec<f32> = rand_vec(objects as u64, n, -1.0, 1.0).iter().map(|v| v + 3.0).collect();
        let ec = rand_vec(10 + b as u64, n, -2.0, 2.0);
        let eu = rand_vec(20 + b as u64, n, -2.0, 2.0);
        let shape = [b, c, h, w];
        let (xt, ct, ut) = (gpu.upload(&x, &shape, DType::F32).unwrap(), gpu.upload(&ec, &shape, DType::F32).unwrap(), gpu.upload(&eu, &shape, DType::F32).unwrap());
        for &(t_bar, phi, s) in &[(0.6f64, 0.5f32, 50.0f32), (0.05, 1.0, 7.5), (0.9, 0.0, 50.0)] {
            let k = fsd::CfgRescale { scale: s, alpha: t_bar.sqrt() as f32, sigma: (1.0 - t_bar).sqrt() as f32, phi };
            let got = gpu.download(&fsd::cfg_rescale(&gpu, &xt, &ct, &ut, views, &k).unwrap()).unwrap();
            let want = threestudio_rescale(&x, &ec, &eu, objects, s as f64, t_bar, phi as f64);
            assert_close(&format!("cfg_rescale {shape:?} ᾱ={t_bar} φ={phi}"), &got, &want, 2e-5);
            if phi == 0.0 {
                // φ = 0 is plain classifier-free guidance.
                let plain: Vec<f32> = eu.iter().zip(&ec).map(|(u, c)| u + s * (c - u)).collect();
                assert_close("cfg_rescale φ=0 is CFG", &got, &plain, 2e-5);
            }
        }
        assert!(fsd::cfg_rescale(&gpu, &xt, &ct, &ut, 5, &fsd::CfgRescale { scale: 1.0, alpha: 0.5, sigma: 0.5, phi: 0.5 }).is_err() || b % 5 == 0);
    }
}
