//! The small MLP family: forward against a CPU reference, backward (weight
//! and input gradients) against central finite differences, the
//! spherical-harmonics direction encoding and the partials reduction.
mod common;
mod scene_reference;
use common::*;
use fsd3d::gpu::{DType, Gpu};
use fsd3d::ops::mlp::{self, MlpShape, OutputAct};
use scene_reference as cpu;

/// y for one sample, f64: ReLU hidden layers, `act` on the output.
fn reference(shape: &MlpShape, w: &[f64], x: &[f64], act: OutputAct) -> Vec<f64> {
    let mut a = x.to_vec();
    let mut off = 0;
    let l = shape.layers();
    for (li, d) in shape.dims.windows(2).enumerate() {
        let (din, dout) = (d[0], d[1]);
        let mut z: Vec<f64> = (0..dout).map(|o| (0..din).map(|i| w[off + o * din + i] * a[i]).sum()).collect();
        off += din * dout;
        if li + 1 < l {
            z.iter_mut().for_each(|v| *v = v.max(0.0));
        } else if act == OutputAct::Sigmoid {
            z.iter_mut().for_each(|v| *v = cpu::sigmoid(*v));
        }
        a = z;
    }
    a
}

fn reference_all(shape: &MlpShape, w: &[f64], x: &[f64], act: OutputAct) -> Vec<f64> {
    x.chunks(shape.input()).flat_map(|xi| reference(shape, w, xi, act)).collect()
}

fn shapes() -> Vec<MlpShape> {
    vec![
        MlpShape::new(9, 16, 2, 3), // threestudio's background: SH(3) → 16 → 16 → 3
        MlpShape::new(32, 64, 1, 1),
        MlpShape { dims: vec![5, 3] },
        MlpShape { dims: vec![7, 64, 33, 17, 2] },
    ]
}

fn weights_for(shape: &MlpShape, seed: u64) -> Vec<f32> {
    let mut w = Vec::new();
    for (i, d) in shape.dims.windows(2).enumerate() {
        let s = (3.0 / d[0] as f32).sqrt();
        w.extend(rand_vec(seed + i as u64, d[0] * d[1], -s, s));
    }
    w
}

#[test]
fn forward_matches_reference() {
    for gpu in gpus() {
        for (si, shape) in shapes().iter().enumerate() {
            for act in [OutputAct::None, OutputAct::Sigmoid] {
                for &n in &[1usize, 7, 130] {
                    let w = weights_for(shape, si as u64);
                    let x = rand_vec(100 + n as u64, n * shape.input(), -1.0, 1.0);
                    let wt = gpu.upload(&w, &[w.len()], DType::F32).unwrap();
                    let xt = gpu.upload(&x, &[n, shape.input()], DType::F32).unwrap();
                    let y = gpu.download(&mlp::forward(&gpu, shape, &wt, &xt, act).unwrap()).unwrap();
                    let want = reference_all(shape, &cpu::to_f64(&w), &cpu::to_f64(&x), act);
                    assert_close(&format!("mlp {:?} {act:?} n={n}", shape.dims), &y, &cpu::to_f32(&want), 1e-5);
                }
            }
        }
    }
}

fn device_loss(gpu: &Gpu, shape: &MlpShape, w: &[f32], x: &[f32], g: &[f32], act: OutputAct) -> f64 {
    let n = x.len() / shape.input();
    let wt = gpu.upload(w, &[w.len()], DType::F32).unwrap();
    let xt = gpu.upload(x, &[n, shape.input()], DType::F32).unwrap();
    let y = gpu.download(&mlp::forward(gpu, shape, &wt, &xt, act).unwrap()).unwrap();
    y.iter().zip(g).map(|(a, b)| *a as f64 * *b as f64).sum()
}

#[test]
fn backward_matches_finite_differences() {
    for (si, shape) in shapes().iter().enumerate() {
        for act in [OutputAct::None, OutputAct::Sigmoid] {
            let n = 300; // more than one chunk of the weight-gradient reduction
            let w = weights_for(shape, 10 + si as u64);
            let x = rand_vec(11, n * shape.input(), -1.0, 1.0);
            let g = rand_vec(12, n * shape.output(), -1.0, 1.0);
            let (w64, x64) = (cpu::to_f64(&w), cpu::to_f64(&x));
            let ref_loss = |w: &[f64], x: &[f64]| -> f64 {
                reference_all(shape, w, x, act).iter().zip(&g).map(|(a, b)| a * *b as f64).sum()
            };
            let iw: Vec<usize> = (0..w.len()).step_by(w.len().div_ceil(300)).collect();
            let ix: Vec<usize> = (0..x.len()).step_by(x.len().div_ceil(300)).collect();
            let fd_w = cpu::central_differences(&w64, &iw, 1e-6, |w| ref_loss(w, &x64));
            let fd_x = cpu::central_differences(&x64, &ix, 1e-6, |x| ref_loss(&w64, x));
            for gpu in gpus() {
                let wt = gpu.upload(&w, &[w.len()], DType::F32).unwrap();
                let xt = gpu.upload(&x, &[n, shape.input()], DType::F32).unwrap();
                let gt = gpu.upload(&g, &[n, shape.output()], DType::F32).unwrap();
                // The gradient accumulates: start from ones and subtract them after.
                let gw = gpu.upload(&vec![1.0; w.len()], &[w.len()], DType::F32).unwrap();
                let dx = mlp::backward(&gpu, shape, &wt, &xt, &gt, act, &gw, true).unwrap().unwrap();
                let gw: Vec<f64> = gpu.download(&gw).unwrap().iter().map(|v| *v as f64 - 1.0).collect();
                let dx = gpu.download(&dx).unwrap();
                let pick = |v: &[f64], idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| v[i]).collect() };
                let ew = cpu::rel_error(&pick(&gw, &iw), &fd_w);
                let ex = cpu::rel_error(&pick(&cpu::to_f64(&dx), &ix), &fd_x);
                let label = format!("{:?} {act:?} [{}]", shape.dims, gpu.features().names().join(","));
                assert!(ew < 1e-5 && ex < 1e-5, "{label}: weights {ew}, inputs {ex} (vs f64 reference differences)");
                // And against central differences of the device's own f32 forward.
                let probe = cpu::probe_indices(&cpu::to_f32(&gw), 5);
                // A step small enough that few ReLU kinks fall inside it, large enough for f32.
                let fd = cpu::central_differences(&w64, &probe, 3e-4, |w| device_loss(&gpu, shape, &cpu::to_f32(w), &x, &g, act));
                let e = cpu::rel_error(&pick(&gw, &probe), &fd);
                eprintln!("mlp backward {label}: vs f64 differences {ew:.2e} (w) {ex:.2e} (x), vs f32 device differences {e:.2e}");
                assert!(e < 1e-2, "{label}: {e}");
            }
        }
    }
}

#[test]
fn backward_without_input_gradient() {
    let gpu = gpu();
    let shape = MlpShape::new(9, 16, 2, 3);
    let w = weights_for(&shape, 3);
    let wt = gpu.upload(&w, &[w.len()], DType::F32).unwrap();
    let xt = gpu.upload(&rand_vec(4, 90, -1.0, 1.0), &[10, 9], DType::F32).unwrap();
    let gt = gpu.upload(&rand_vec(5, 30, -1.0, 1.0), &[10, 3], DType::F32).unwrap();
    let gw = gpu.zeros(&[w.len()], DType::F32).unwrap();
    assert!(mlp::backward(&gpu, &shape, &wt, &xt, &gt, OutputAct::Sigmoid, &gw, false).unwrap().is_none());
    assert!(gpu.download(&gw).unwrap().iter().any(|v| *v != 0.0));
}

#[test]
fn spherical_harmonics_match_tcnn() {
    let gpu = gpu();
    let n = 37;
    let mut rays = vec![0.0f32; n * 8];
    let dirs = rand_vec(6, n * 3, -1.0, 1.0);
    for i in 0..n {
        rays[i * 8 + 4..i * 8 + 7].copy_from_slice(&dirs[i * 3..i * 3 + 3]);
    }
    let rt = gpu.upload(&rays, &[n, 8], DType::F32).unwrap();
    for degree in 1..=4u32 {
        let got = gpu.download(&mlp::sh_encode(&gpu, &rt, degree).unwrap()).unwrap();
        let m = (degree * degree) as usize;
        let mut want = Vec::new();
        for i in 0..n {
            let d = &dirs[i * 3..i * 3 + 3];
            let len = (d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()).sqrt();
            let (x, y, z) = (d[0] as f64 / len, d[1] as f64 / len, d[2] as f64 / len);
            let pi = std::f64::consts::PI;
            // Real SH with tcnn's sign convention, from the closed forms.
            let all = [
                0.5 / pi.sqrt(),
                -(3.0f64).sqrt() * y / (2.0 * pi.sqrt()),
                (3.0f64).sqrt() * z / (2.0 * pi.sqrt()),
                -(3.0f64).sqrt() * x / (2.0 * pi.sqrt()),
                (15.0f64).sqrt() * x * y / (2.0 * pi.sqrt()),
                -(15.0f64).sqrt() * y * z / (2.0 * pi.sqrt()),
                (5.0f64).sqrt() * (3.0 * z * z - 1.0) / (4.0 * pi.sqrt()),
                -(15.0f64).sqrt() * x * z / (2.0 * pi.sqrt()),
                (15.0f64).sqrt() * (x * x - y * y) / (4.0 * pi.sqrt()),
                (70.0f64).sqrt() * y * (-3.0 * x * x + y * y) / (8.0 * pi.sqrt()),
                (105.0f64).sqrt() * x * y * z / (2.0 * pi.sqrt()),
                (42.0f64).sqrt() * y * (1.0 - 5.0 * z * z) / (8.0 * pi.sqrt()),
                (7.0f64).sqrt() * z * (5.0 * z * z - 3.0) / (4.0 * pi.sqrt()),
                (42.0f64).sqrt() * x * (1.0 - 5.0 * z * z) / (8.0 * pi.sqrt()),
                (105.0f64).sqrt() * z * (x * x - y * y) / (4.0 * pi.sqrt()),
                (70.0f64).sqrt() * x * (-x * x + 3.0 * y * y) / (8.0 * pi.sqrt()),
            ];
            want.extend(all[..m].iter().map(|v| *v as f32));
        }
        assert_close(&format!("SH degree {degree}"), &got, &want, 1e-5);
    }
    assert!(mlp::sh_encode(&gpu, &rt, 5).is_err());
}

#[test]
fn reduce_partials_adds_in_place() {
    let gpu = gpu();
    let (c, p) = (13, 301);
    let parts = rand_vec(7, c * p, -1.0, 1.0);
    let base = rand_vec(8, p, -1.0, 1.0);
    let pt = gpu.upload(&parts, &[c, p], DType::F32).unwrap();
    let g = gpu.upload(&base, &[p], DType::F32).unwrap();
    mlp::reduce_partials(&gpu, &pt, &g).unwrap();
    let want: Vec<f32> = (0..p).map(|i| base[i] + (0..c).map(|k| parts[k * p + i]).sum::<f32>()).collect();
    assert_close("reduce", &gpu.download(&g).unwrap(), &want, 1e-5);
}

#[test]
fn bad_shapes_are_errors() {
    let gpu = gpu();
    let shape = MlpShape::new(9, 16, 2, 3);
    let w = gpu.zeros(&[shape.n_weights()], DType::F32).unwrap();
    let x = gpu.zeros(&[4, 8], DType::F32).unwrap();
    let e = mlp::forward(&gpu, &shape, &w, &x, OutputAct::None).unwrap_err().to_string();
    assert!(e.contains("[n, 9]"), "{e}");
    let wide = MlpShape::new(9, 65, 1, 3);
    assert!(wide.validate().is_err());
    let deep = MlpShape::new(9, 16, 4, 3);
    assert!(deep.validate().is_err());
}
