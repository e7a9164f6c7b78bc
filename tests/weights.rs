//! safetensors loading: dtypes, the fp16 variant, and the errors users see.
mod common;
use std::collections::HashMap;
use std::path::PathBuf;

use fsd3d::gpu::DType;
use fsd3d::models::weights::{Variant, Weights};
use safetensors::{Dtype, tensor::TensorView};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fsd3d-w-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &PathBuf, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(n, dt, sh, data)| (n.to_string(), TensorView::new(*dt, sh.clone(), data).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes_f16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
}
fn bytes_bf16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
}

#[test]
fn loads_f32_f16_bf16_into_either_device_dtype() {
    let gpu = common::gpu();
    let d = tmpdir("dtypes");
    let vals: Vec<f32> = vec![0.5, -1.25, 3.0, 0.0, 7.5, -0.125];
    write(
        &d.join("model.safetensors"),
        &[
            ("a.weight", Dtype::F32, vec![2, 3], bytes_f32(&vals)),
            ("b.weight", Dtype::F16, vec![6], bytes_f16(&vals)),
            ("c.weight", Dtype::BF16, vec![3, 2], bytes_bf16(&vals)),
        ],
    );
    let w = Weights::open(&d, Variant::Full).unwrap();
    assert_eq!(w.len(), 3);
    for (name, shape) in [("a.weight", vec![2, 3]), ("b.weight", vec![6]), ("c.weight", vec![3, 2])] {
        for dt in [DType::F32, DType::F16] {
            let t = w.load(&gpu, name, &shape, dt).unwrap();
            assert_eq!(t.dtype(), dt);
            // These values are exact in every format involved.
            assert_eq!(gpu.download(&t).unwrap(), vals, "{name} as {dt}");
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn picks_the_requested_variant() {
    let d = tmpdir("variant");
    write(&d.join("diffusion_pytorch_model.safetensors"), &[("x", Dtype::F32, vec![1], bytes_f32(&[1.0]))]);
    write(&d.join("diffusion_pytorch_model.fp16.safetensors"), &[("x", Dtype::F16, vec![1], bytes_f16(&[2.0]))]);
    assert_eq!(Weights::open(&d, Variant::Full).unwrap().f32("x").unwrap().0, vec![1.0]);
    assert_eq!(Weights::open(&d, Variant::Fp16).unwrap().f32("x").unwrap().0, vec![2.0]);
    std::fs::remove_file(d.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(Weights::open(&d, Variant::Full).unwrap().f32("x").unwrap().0, vec![2.0], "falls back to the variant present");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_weights_give_errors_that_say_what_to_do() {
    let gpu = common::gpu();
    let d = tmpdir("bad");
    // No weights at all, only a .bin.
    std::fs::write(d.join("pytorch_model.bin"), b"x").unwrap();
    let e = Weights::open(&d, Variant::Full).err().unwrap().to_string();
    assert!(e.contains("no .safetensors") && e.contains("safe_serialization"), "{e}");
    // A truncated file.
    write(&d.join("model.safetensors"), &[("x", Dtype::F32, vec![4], bytes_f32(&[1.0; 4]))]);
    let full = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &full[..full.len() - 5]).unwrap();
    let e = Weights::open(&d, Variant::Full).err().unwrap().to_string();
    assert!(e.contains("truncated"), "{e}");
    // Missing tensor and wrong shape.
    std::fs::write(d.join("model.safetensors"), &full).unwrap();
    let w = Weights::open(&d, Variant::Full).unwrap();
    let e = w.load(&gpu, "y", &[4], DType::F32).unwrap_err().to_string();
    assert!(e.contains("\"y\"") && e.contains("missing"), "{e}");
    let e = w.load(&gpu, "x", &[2, 2], DType::F32).unwrap_err().to_string();
    assert!(e.contains("[4]") && e.contains("[2, 2]") && e.contains("config.json"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
