//! pytorch-fid's Inception-v3 with formula weights: both tools/golden/make_metric_fixtures.py
//! and the tests generate the ~24 M parameters from a hash of each tensor's
//! name and index, so the fixtures hold only inputs and outputs.
use std::path::Path;

use fsd3d::models::forward::HostTensor;

/// The weight formula of tools/golden/make_metric_fixtures.py: a value in
/// [−1, 1) per element from a hash of the tensor's name and the index.
pub fn formula_u(name: &str, numel: usize) -> Vec<f64> {
    let mut seed: u32 = 0x811C_9DC5;
    for b in name.bytes() {
        seed ^= b as u32;
        seed = seed.wrapping_mul(0x0100_0193);
    }
    (0..numel as u32)
        .map(|i| {
            let mut x = seed ^ i.wrapping_mul(0x9E37_79B9);
            x ^= x >> 16;
            x = x.wrapping_mul(0x85EB_CA6B);
            x ^= x >> 13;
            x = x.wrapping_mul(0xC2B2_AE35);
            x ^= x >> 16;
            (x >> 8) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0
        })
        .collect()
}

pub fn formula_tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let u = formula_u(name, numel);
    let map = |f: &dyn Fn(f64) -> f64| u.iter().map(|&v| f(v) as f32).collect();
    if name.ends_with(".conv.weight") || name == "fc.weight" {
        let bound = (6.0 / (numel / shape[0]) as f64).sqrt();
        map(&|v| v * bound)
    } else if name.ends_with(".bn.weight") {
        map(&|v| 1.0 + 0.2 * v)
    } else if name.ends_with(".bn.running_var") {
        map(&|v| 1.0 + 0.5 * v)
    } else {
        assert!(name.ends_with(".bn.bias") || name.ends_with(".bn.running_mean") || name == "fc.bias", "no formula for {name}");
        map(&|v| 0.1 * v)
    }
}

/// Writes the formula's Inception weights (every tensor of params.json) to a
/// safetensors file in a fresh temporary folder.
pub fn formula_inception(tag: &str) -> std::path::PathBuf {
    let params: Vec<(String, Vec<usize>)> = serde_json::from_str(&std::fs::read_to_string(Path::new("tests/fixtures/models/inception/params.json")).unwrap()).unwrap();
    assert_eq!(params.len(), 472, "pytorch-fid's FID Inception has 472 tensors besides num_batches_tracked");
    let tensors: std::collections::BTreeMap<String, HostTensor> =
        params.iter().map(|(n, s)| (n.clone(), HostTensor { data: formula_tensor(n, s), shape: s.clone() })).collect();
    let dir = std::env::temp_dir().join(format!("fsd3d-inception-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("inception-formula.safetensors");
    fsd3d::models::forward::write_tensors(&file, &tensors).unwrap();
    file
}

