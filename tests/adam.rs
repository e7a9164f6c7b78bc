//! Adam against torch.optim.Adam's update written out on the CPU, and scene
//! checkpoints: save / load round trip of parameters, moments and the
//! occupancy grid, atomic writes, and clear errors.
mod common;
use common::*;
use fsd3d::gpu::DType;
use fsd3d::ops::adam::{self, AdamHyper};
use fsd3d::scene::{self, AdamConfig, BackgroundConfig, BackgroundKind, FieldConfig, RenderConfig, Scene, SceneConfig};

/// torch.optim.Adam (no weight decay, no amsgrad), f64.
fn torch_adam(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], h: &AdamHyper, step: i32) {
    let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
    let bc1 = 1.0 - b1.powi(step);
    let bc2 = 1.0 - b2.powi(step);
    for i in 0..p.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let denom = v[i].sqrt() / bc2.sqrt() + h.eps as f64;
        p[i] -= h.lr as f64 / bc1 * m[i] / denom;
    }
}

#[test]
fn adam_matches_torch() {
    for gpu in gpus() {
        for &(n, eps) in &[(1usize, 1e-15f32), (1000, 1e-8), (70_001, 1e-15)] {
            let h = AdamHyper { lr: 0.01, beta1: 0.9, beta2: 0.99, eps };
            let p0 = rand_vec(1, n, -1.0, 1.0);
            let p = gpu.upload(&p0, &[n], DType::F32).unwrap();
            let m = gpu.zeros(&[n], DType::F32).unwrap();
            let v = gpu.zeros(&[n], DType::F32).unwrap();
            let (mut rp, mut rm, mut rv) = (p0.iter().map(|x| *x as f64).collect::<Vec<_>>(), vec![0.0; n], vec![0.0; n]);
            for step in 1..=5 {
                // Gradients of mixed scales, some exactly zero.
                let mut g = rand_vec(10 + step, n, -1.0, 1.0);
                for (i, x) in g.iter_mut().enumerate() {
                    if i % 7 == 3 {
                        *x = 0.0;
                    } else if i % 5 == 1 {
                        *x *= 1e-4;
                    }
                }
                let gt = gpu.upload(&g, &[n], DType::F32).unwrap();
                adam::adam_step(&gpu, &p, &gt, &m, &v, &h, step, 0.5).unwrap();
                let gs: Vec<f64> = g.iter().map(|x| *x as f64 * 0.5).collect();
                torch_adam(&mut rp, &mut rm, &mut rv, &gs, &h, step as i32);
            }
            let want: Vec<f32> = rp.iter().map(|x| *x as f32).collect();
            assert_close(&format!("adam n={n} eps={eps}"), &gpu.download(&p).unwrap(), &want, 2e-6);
            let want_m: Vec<f32> = rm.iter().map(|x| *x as f32).collect();
            assert_close("adam exp_avg", &gpu.download(&m).unwrap(), &want_m, 1e-6);
        }
    }
}

#[test]
fn adam_rejects_bad_input() {
    let gpu = gpu();
    let h = AdamHyper { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-15 };
    let a = gpu.zeros(&[4], DType::F32).unwrap();
    let b = gpu.zeros(&[5], DType::F32).unwrap();
    let e = adam::adam_step(&gpu, &a, &b, &a, &a, &h, 1, 1.0).unwrap_err().to_string();
    assert!(e.contains("grad"), "{e}");
    assert!(adam::adam_step(&gpu, &a, &a, &a, &a, &h, 0, 1.0).is_err());
}

fn small_scene_config() -> SceneConfig {
    SceneConfig {
        field: FieldConfig { levels: 4, log2_table_size: 8, base_resolution: 4, per_level_scale: 1.5, hidden: 16, radius: 1.0, ..Default::default() },
        render: RenderConfig { occupancy_resolution: 8, ..Default::default() },
        background: BackgroundConfig { kind: BackgroundKind::Mlp, ..Default::default() },
        adam: AdamConfig { lr_grid: 0.05, ..Default::default() },
        ..Default::default()
    }
}

fn all_state(gpu: &fsd3d::gpu::Gpu, s: &Scene) -> Vec<Vec<f32>> {
    let mut v: Vec<Vec<f32>> = s.adam.state_tensors().iter().map(|(_, t)| gpu.download(t).unwrap()).collect();
    v.push(gpu.download(&s.occupancy.occupancy).unwrap());
    v.push(gpu.download_u32(&s.occupancy.bits).unwrap().iter().map(|b| *b as f32).collect());
    v
}

#[test]
fn checkpoint_round_trip() {
    let gpu = gpu();
    let cfg = small_scene_config();
    let mut a = Scene::new(&gpu, &cfg, 1).unwrap();
    // Some optimiser state: a few steps on made-up gradients.
    for step in 0..3u64 {
        a.update_occupancy(&gpu, step * cfg.render.occupancy_interval).unwrap();
        for g in &mut a.adam.groups {
            g.grad = gpu.upload(&rand_vec(step, g.param.numel(), -1.0, 1.0), g.param.shape(), DType::F32).unwrap();
        }
        a.optimizer_step(&gpu, 1.0).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("fsd3d-scene-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scene.safetensors");
    a.save(&gpu, &path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind: {leftovers:?}");

    let mut b = Scene::new(&gpu, &cfg, 2).unwrap();
    assert_ne!(all_state(&gpu, &a)[0], all_state(&gpu, &b)[0]);
    b.load(&gpu, &path).unwrap();
    assert_eq!(all_state(&gpu, &a), all_state(&gpu, &b));
    assert_eq!(b.adam.step, 3);
    // The parameters are shared with the field: loading reached it.
    assert_eq!(gpu.download(&b.field.table).unwrap(), gpu.download(&a.field.table).unwrap());

    // Overwriting an existing checkpoint works the same way.
    b.optimizer_step(&gpu, 1.0).unwrap();
    b.save(&gpu, &path).unwrap();
    let c = scene::optim::Checkpoint::read(&path).unwrap();
    assert_eq!(c.meta("adam_step"), Some("4"));

    // A scene of another shape refuses it, naming the tensor.
    let mut other_cfg = cfg.clone();
    other_cfg.field.hidden = 8;
    let mut other = Scene::new(&gpu, &other_cfg, 1).unwrap();
    let e = other.load(&gpu, &path).unwrap_err().to_string();
    assert!(e.contains("geometry.mlp") && e.contains("config"), "{e}");
    // One flipped bit in the data (the tensors are at the end) is found.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x10;
    let damaged = dir.join("damaged.safetensors");
    std::fs::write(&damaged, &bytes).unwrap();
    let e = b.load(&gpu, &damaged).unwrap_err().to_string();
    assert!(e.contains("damaged.safetensors") && e.contains("checksum"), "{e}");
    // Not a checkpoint at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    assert!(b.load(&gpu, &junk).is_err());
    assert!(b.load(&gpu, &dir.join("missing.safetensors")).unwrap_err().to_string().contains("missing.safetensors"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn scene_config_reads_partial_json() {
    // serde with defaults: a run config sets only what it changes.
    let cfg: SceneConfig = serde_json::from_str(r#"{"field": {"levels": 8}, "adam": {"lr_grid": 0.02}, "background": {"kind": "solid", "color": [0, 0, 0]}}"#).unwrap();
    assert_eq!(cfg.field.levels, 8);
    assert_eq!(cfg.field.log2_table_size, 19);
    assert_eq!(cfg.adam.lr_grid, 0.02);
    assert_eq!(cfg.adam.betas, [0.9, 0.99]);
    assert_eq!(cfg.background.kind, BackgroundKind::Solid);
    assert!(serde_json::from_str::<SceneConfig>(r#"{"field": {"levelz": 8}}"#).is_err(), "unknown keys are errors");
}
