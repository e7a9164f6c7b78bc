//! FSD's world-map noise ε(c) (FSD_SPEC §4): the gather against its formula,
//! and the paper's design rules as tests.
mod common;
use common::*;
use fsd3d::diffusion::noise::{NoiseMode, ViewAngles, ViewNoise, WorldMapConfig};
use fsd3d::gpu::DType;

fn full_opacity(gpu: &fsd3d::gpu::Gpu, b: usize, h: usize, w: usize) -> fsd3d::gpu::Tensor {
    gpu.upload(&vec![1.0; b * h * w], &[b, 1, h, w], DType::F32).unwrap()
}

#[test]
fn gather_matches_the_formula() {
    let (d, h, w) = (3usize, 5usize, 7usize);
    for gpu in gpus() {
        let cfg = WorldMapConfig { theta_deg: 150.0, beta: 0.6, alpha0: 0.5, fixed_background: true };
        let noise = ViewNoise::new(&gpu, NoiseMode::WorldMap, cfg, [d, h, w], 11).unwrap();
        let (mh, mw) = (noise.map_h, noise.map_w);
        let world = gpu.download(noise.world().unwrap()).unwrap();
        let bg = gpu.download(noise.background()).unwrap();
        // Two views, one near φ = 2π so that its crop wraps; opacity at k = 2.
        let views = [ViewAngles { polar: 1.0, azimuth: 0.3 }, ViewAngles { polar: 3.1, azimuth: 6.2 }];
        let k = 2;
        let op = rand_vec(5, 2 * h * k * w * k, 0.0, 1.0);
        let opt = gpu.upload(&op, &[2, 1, h * k, w * k], DType::F32).unwrap();
        let got = gpu.download(&noise.sample(&gpu, &views, Some(&opt), 4, DType::F32).unwrap()).unwrap();
        // The fresh part: the same stream sample() draws.
        let fresh = fsd3d::ops::diffusion::randn_cpu(
            2 * d * h * w,
            fsd3d::ops::diffusion::NoiseKey { seed: 11, step: 4, purpose: fsd3d::ops::diffusion::NoisePurpose::Fresh },
        );
        let mut want = vec![0f32; got.len()];
        for (b, v) in views.iter().enumerate() {
            let row0 = ((mh as f64) * v.polar / std::f64::consts::PI).round() as usize;
            let col0 = ((mw as f64) * v.azimuth.rem_euclid(std::f64::consts::TAU) / std::f64::consts::TAU).round() as usize % mw;
            assert_eq!(noise.origin(*v), (row0 as u32, col0 as u32));
            for c in 0..d {
                for i in 0..h {
                    for j in 0..w {
                        let mut s = 0.0;
                        for y in 0..k {
                            for x in 0..k {
                                s += op[b * h * k * w * k + (i * k + y) * w * k + j * k + x];
                            }
                        }
                        let m = if s / (k * k) as f32 > 0.5 { 1.0 } else { 0.0 };
                        let patch = world[(c * (mh + h) + row0 + i) * mw + (col0 + j) % mw];
                        let det = (1.0 - m) * bg[(c * h + i) * w + j] + m * patch;
                        let idx = ((b * d + c) * h + i) * w + j;
                        want[idx] = 0.6f32.sqrt() * det + 0.4f32.sqrt() * fresh[idx];
                    }
                }
            }
        }
        assert_close(&format!("world-map gather [{}]", gpu.features().names().join(",")), &got, &want, 1e-5);
    }
}

#[test]
fn each_view_is_standard_normal() {
    let gpu = gpu();
    let (d, h, w) = (4, 16, 16);
    let noise = ViewNoise::new(&gpu, NoiseMode::WorldMap, WorldMapConfig::default(), [d, h, w], 3).unwrap();
    let views: Vec<ViewAngles> = (0..64)
        .map(|i| ViewAngles { polar: 0.2 + 2.7 * (i as f64 / 64.0), azimuth: i as f64 * 0.61 })
        .collect();
    let eps = gpu.download(&noise.sample(&gpu, &views, Some(&full_opacity(&gpu, 64, h, w)), 0, DType::F32).unwrap()).unwrap();
    let n = d * h * w;
    for (b, chunk) in eps.chunks(n).enumerate() {
        let mean = chunk.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = chunk.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // 1024 samples: 5σ bounds of the sample mean and variance.
        assert!(mean.abs() < 5.0 / (n as f64).sqrt(), "view {b}: mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(), "view {b}: variance {var}");
    }
}

#[test]
fn nearby_views_share_noise_and_opposite_views_do_not() {
    let gpu = gpu();
    let (d, h, w) = (2, 8, 8);
    let noise = ViewNoise::new(&gpu, NoiseMode::WorldMap, WorldMapConfig::default(), [d, h, w], 9).unwrap();
    assert_eq!((noise.map_h, noise.map_w), (h, 2 * w), "Θ = 180° gives H = h, W = 2w");
    let col = std::f64::consts::TAU / noise.map_w as f64; // one world-map column of azimuth
    let a = ViewAngles { polar: 1.2, azimuth: 1.0 * col };
    let near = ViewAngles { polar: 1.2, azimuth: 3.0 * col };
    let opposite = ViewAngles { polar: 1.2, azimuth: 1.0 * col + std::f64::consts::PI };
    let eps = gpu.download(&noise.sample(&gpu, &[a, near, opposite], Some(&full_opacity(&gpu, 3, h, w)), 0, DType::F32).unwrap()).unwrap();
    let n = d * h * w;
    let at = |b: usize, c: usize, i: usize, j: usize| eps[b * n + (c * h + i) * w + j];
    // Shifted by two columns, the overlapping part is the same noise.
    for c in 0..d {
        for i in 0..h {
            for j in 0..w - 2 {
                assert_eq!(at(1, c, i, j), at(0, c, i, j + 2));
            }
        }
    }
    // 180° apart, the crops do not overlap: no value in common.
    let va: std::collections::HashSet<u32> = eps[..n].iter().map(|x| x.to_bits()).collect();
    assert_eq!(eps[2 * n..].iter().filter(|x| va.contains(&x.to_bits())).count(), 0);
}

#[test]
fn crop_wraps_in_azimuth() {
    let gpu = gpu();
    let (d, h, w) = (1, 4, 6);
    let noise = ViewNoise::new(&gpu, NoiseMode::WorldMap, WorldMapConfig::default(), [d, h, w], 5).unwrap();
    let (mh, mw) = (noise.map_h, noise.map_w);
    let world = gpu.download(noise.world().unwrap()).unwrap();
    let v = ViewAngles { polar: 0.5, azimuth: -2.0 * std::f64::consts::TAU / mw as f64 }; // col0 = W − 2
    let (row0, col0) = noise.origin(v);
    assert_eq!(col0 as usize, mw - 2);
    let eps = gpu.download(&noise.sample(&gpu, &[v], Some(&full_opacity(&gpu, 1, h, w)), 0, DType::F32).unwrap()).unwrap();
    for i in 0..h {
        // Columns 2.. of the crop come from the start of the map.
        assert_eq!(eps[i * w + 2], world[(row0 as usize + i) * mw]);
        assert_eq!(eps[i * w + 1], world[(row0 as usize + i) * mw + mw - 1]);
    }
    let _ = mh;
}

#[test]
fn background_stays_fixed_and_constant_mode_ignores_the_view() {
    let gpu = gpu();
    let (d, h, w) = (3, 4, 4);
    let noise = ViewNoise::new(&gpu, NoiseMode::WorldMap, WorldMapConfig::default(), [d, h, w], 1).unwrap();
    let empty = gpu.upload(&vec![0.0; 2 * h * w], &[2, 1, h, w], DType::F32).unwrap();
    let views = [ViewAngles { polar: 0.3, azimuth: 0.1 }, ViewAngles { polar: 2.0, azimuth: 4.0 }];
    let bg = gpu.download(noise.background()).unwrap();
    for step in [0, 17] {
        let eps = gpu.download(&noise.sample(&gpu, &views, Some(&empty), step, DType::F32).unwrap()).unwrap();
        assert_eq!(&eps[..bg.len()], &bg[..], "step {step}, view 0");
        assert_eq!(&eps[bg.len()..], &bg[..], "step {step}, view 1");
    }
    let constant = ViewNoise::new(&gpu, NoiseMode::Constant, WorldMapConfig::default(), [d, h, w], 1).unwrap();
    let e = gpu.download(&constant.sample(&gpu, &views, None, 5, DType::F32).unwrap()).unwrap();
    assert_eq!(&e[..bg.len()], &e[bg.len()..]);
    let random = ViewNoise::new(&gpu, NoiseMode::Random, WorldMapConfig::default(), [d, h, w], 1).unwrap();
    let r0 = gpu.download(&random.sample(&gpu, &views, None, 0, DType::F32).unwrap()).unwrap();
    let r1 = gpu.download(&random.sample(&gpu, &views, None, 1, DType::F32).unwrap()).unwrap();
    assert_ne!(r0, r1, "SDS noise is fresh every step");
}

#[test]
fn bad_parameters_are_clear_errors() {
    let gpu = gpu();
    for cfg in [WorldMapConfig { theta_deg: 0.0, ..Default::default() }, WorldMapConfig { beta: 1.5, ..Default::default() }] {
        let e = ViewNoise::new(&gpu, NoiseMode::WorldMap, cfg, [1, 4, 4], 0).err().unwrap().to_string();
        assert!(e.contains("must be in"), "{e}");
    }
}
