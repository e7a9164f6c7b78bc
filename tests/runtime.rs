//! The runtime itself: device options, errors users see, shader validation,
//! recording into one submit, profiling.
mod common;
use common::*;
use fsd3d::gpu::{Caps, DType, Features, Gpu, GpuOptions, KernelKey, kernel};
use fsd3d::ops::{self, elementwise as ew};

#[test]
fn every_shader_variant_validates_with_naga() {
    // Both with every feature and with none: the fallback variants must
    // validate without the capabilities the fast ones need.
    for caps in [Caps::all(), Caps::none()] {
        let variants = ops::all_variants(caps);
        assert!(!variants.is_empty());
        let src = kernel::ShaderSource::builtin();
        for key in &variants {
            if let Err(e) = kernel::validate(&src, key, caps) {
                panic!("{key} does not validate ({caps:?}):\n{e}");
            }
        }
    }
}

#[test]
fn switched_off_features_are_off() {
    let [on, off] = <[_; 2]>::try_from(gpus()).unwrap();
    assert_eq!(off.features(), Features::NONE);
    assert_eq!(on.info().name, off.info().name);
    eprintln!("adapter {} features {:?}", on.adapter_name(), on.features().names());
}

#[test]
fn f16_tensor_without_the_feature_is_a_clear_error() {
    let off = gpus().remove(1);
    let err = off.upload(&[1.0, 2.0], &[2], DType::F16).unwrap_err().to_string();
    assert!(err.contains("SHADER_F16") && err.contains("f32"), "{err}");
}

#[test]
fn tensor_over_the_binding_limit_is_a_clear_error() {
    let gpu = gpu();
    let limit = gpu.max_binding_bytes();
    let n = (limit / 4 + 1) as usize;
    let err = gpu.empty(&[n], DType::F32).unwrap_err().to_string();
    assert!(err.contains("storage binding limit"), "{err}");
    assert!(err.contains(&limit.to_string()), "{err}");
}

#[test]
fn unknown_adapter_lists_the_available_ones() {
    let err = Gpu::new(&GpuOptions { adapter: Some("no-such-gpu-xyz".into()), ..Default::default() }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no-such-gpu-xyz") && msg.contains("available"), "{msg}");
}

#[test]
fn many_dispatches_are_one_submit() {
    // A private device so that other tests' readbacks do not count here.
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let x = gpu.upload(&[1.0, 2.0, 3.0], &[3], DType::F32).unwrap();
    gpu.sync().unwrap();
    let before = gpu.submit_count();
    let mut y = x.clone();
    for _ in 0..50 {
        y = ew::affine(&gpu, &y, 1.0, 1.0).unwrap();
    }
    let v = gpu.download(&y).unwrap();
    assert_eq!(v, vec![51.0, 52.0, 53.0]);
    assert_eq!(gpu.submit_count() - before, 1, "50 recorded kernels and a readback should be one submit");
}

#[test]
fn pooled_buffers_are_reused() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let x = gpu.upload(&vec![1.0; 1000], &[1000], DType::F32).unwrap();
    for _ in 0..10 {
        let y = ew::silu(&gpu, &x).unwrap();
        drop(y);
    }
    gpu.sync().unwrap();
    let s = gpu_pool_stats(&gpu);
    assert!(s.0 >= 9, "reuses {} allocations {}", s.0, s.1);
}

fn gpu_pool_stats(gpu: &Gpu) -> (u64, u64) {
    let s = gpu.pool_stats();
    (s.reuses, s.allocations)
}

#[test]
fn zeros_are_zero_even_in_a_recycled_buffer() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let x = gpu.upload(&vec![5.0; 300], &[300], DType::F32).unwrap();
    drop(ew::affine(&gpu, &x, 1.0, 1.0).unwrap()); // leaves 6.0s in a pooled buffer
    let z = gpu.zeros(&[300], DType::F32).unwrap();
    assert!(gpu.download(&z).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn profiling_reports_each_kernel_label() {
    for disable in [Features::NONE, Features::ALL] {
        let gpu = Gpu::new(&GpuOptions { profile: true, disable, ..Default::default() }).unwrap();
        let x = gpu.upload(&vec![0.5; 4096], &[4096], DType::F32).unwrap();
        let y = ew::silu(&gpu, &x).unwrap();
        let z = ew::add(&gpu, &y, &x).unwrap();
        gpu.download(&z).unwrap();
        let report = gpu.profile_report();
        let labels: Vec<&str> = report.iter().map(|e| e.label.as_str()).collect();
        if gpu.profile_uses_timestamps() {
            assert!(labels.contains(&"elementwise.unary") && labels.contains(&"elementwise.binary"), "{labels:?}");
        } else {
            assert!(labels.iter().any(|l| l.contains("wall clock")), "{labels:?}");
        }
        assert!(report.iter().all(|e| e.total_ms >= 0.0 && e.calls >= 1));
    }
}

#[test]
fn profiling_switched_on_for_part_of_a_run_times_only_that_part_by_section() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let x = gpu.upload(&vec![0.5; 4096], &[4096], DType::F32).unwrap();
    // Off: nothing is collected.
    gpu.download(&ew::silu(&gpu, &x).unwrap()).unwrap();
    assert!(gpu.profile_report().is_empty());
    gpu.set_profiling(true).unwrap();
    gpu.set_profile_section(Some("first"));
    let y = ew::silu(&gpu, &x).unwrap();
    gpu.set_profile_section(Some("second"));
    let z = ew::add(&gpu, &y, &x).unwrap();
    let w = ew::add(&gpu, &z, &x).unwrap();
    gpu.set_profile_section(None);
    gpu.download(&ew::silu(&gpu, &w).unwrap()).unwrap();
    gpu.set_profiling(false).unwrap();
    // Off again: this dispatch is not counted.
    gpu.download(&ew::add(&gpu, &x, &x).unwrap()).unwrap();
    let report = gpu.profile_report();
    let calls = |label: &str| report.iter().find(|e| e.label == label).map_or(0, |e| e.calls);
    let sections = gpu.profile_sections();
    if gpu.profile_uses_timestamps() {
        assert_eq!((calls("elementwise.unary"), calls("elementwise.binary")), (2, 2), "{report:?}");
        let names: Vec<(&str, u64)> = sections.iter().map(|e| (e.label.as_str(), e.calls)).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&("first", 1)) && names.contains(&("second", 2)), "{names:?}");
        // A section's time is the sum of its kernels' times.
        let kernel_total: f64 = report.iter().map(|e| e.total_ms).sum();
        let section_total: f64 = sections.iter().map(|e| e.total_ms).sum();
        assert!(section_total > 0.0 && section_total <= kernel_total, "{section_total} of {kernel_total}");
    } else {
        assert!(sections.is_empty() && report.iter().all(|e| e.label.contains("wall clock")), "{report:?}");
    }
    gpu.profile_reset();
    assert!(gpu.profile_report().is_empty() && gpu.profile_sections().is_empty());
}

#[test]
fn a_broken_shader_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("fsd3d-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = kernel::ShaderSource::builtin().load("elementwise.wgsl").unwrap().1;
    // Break the line that declares the unary kernel.
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let at = lines.iter().position(|l| l.starts_with("fn unary(")).unwrap();
    lines[at] = "this is not wgsl @@".into();
    std::fs::write(dir.join("elementwise.wgsl"), lines.join("\n")).unwrap();
    let gpu = Gpu::new(&GpuOptions { shader_dir: Some(dir.clone()), ..Default::default() }).unwrap();
    let x = gpu.upload(&[1.0], &[1], DType::F32).unwrap();
    let err = ew::silu(&gpu, &x).unwrap_err().to_string();
    assert!(err.contains("elementwise.wgsl"), "{err}");
    assert!(err.contains(&format!(":{}:", at + 1)), "error should point at line {}: {err}", at + 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_swapped_shader_is_used() {
    // A replacement elementwise.wgsl whose unary kernel writes a constant.
    let dir = std::env::temp_dir().join(format!("fsd3d-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = kernel::ShaderSource::builtin().load("elementwise.wgsl").unwrap().1;
    let swapped = good.replace("o[i] = {{TO}}({{ACT}}(f32(a[i]) * p.scale + p.shift));", "o[i] = {{TO}}(42.0);");
    assert_ne!(good, swapped);
    std::fs::write(dir.join("elementwise.wgsl"), swapped).unwrap();
    let gpu = Gpu::new(&GpuOptions { shader_dir: Some(dir.clone()), ..Default::default() }).unwrap();
    let x = gpu.upload(&[1.0, 2.0], &[2], DType::F32).unwrap();
    assert_eq!(gpu.download(&ew::silu(&gpu, &x).unwrap()).unwrap(), vec![42.0, 42.0]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kernel_keys_ignore_define_order() {
    let a = KernelKey::new("f", "e").def("A", 1).def("B", 2);
    let b = KernelKey::new("f", "e").def("B", 2).def("A", 1);
    assert_eq!(a, b);
}

#[test]
fn a_variant_chosen_for_the_device_is_used() {
    let opts = GpuOptions { profile: true, variants: vec![("matmul".into(), "simple".into())], ..Default::default() };
    let gpu = Gpu::new(&opts).unwrap();
    let a = gpu.upload(&[1.0; 12], &[3, 4], DType::F32).unwrap();
    let b = gpu.upload(&[1.0; 8], &[4, 2], DType::F32).unwrap();
    let c = fsd3d::ops::matmul::matmul(&gpu, &a, &b, None, &Default::default()).unwrap();
    assert_eq!(gpu.download(&c).unwrap(), vec![4.0; 6]);
    if gpu.profile_uses_timestamps() {
        let labels: Vec<String> = gpu.profile_report().into_iter().map(|e| e.label).collect();
        assert!(labels.iter().any(|l| l == "matmul.simple"), "{labels:?}");
    }
    let bad = Gpu::new(&GpuOptions { variants: vec![("matmul".into(), "nope".into())], ..Default::default() }).unwrap();
    let a2 = bad.upload(&[1.0; 12], &[3, 4], DType::F32).unwrap();
    let b2 = bad.upload(&[1.0; 8], &[4, 2], DType::F32).unwrap();
    let err = fsd3d::ops::matmul::matmul(&bad, &a2, &b2, None, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

fsd3d::kernel_params! {
    /// The elementwise kernels' block with one padding word too many before `scale`.
    struct MisPadded { n: u32, _pad: [u32; 2], scale: f32 }
}

/// A parameter block whose layout is not the shader's is an error naming the
/// kernel before any pipeline exists, and an op cannot pass a block other
/// than the one its kernel key declares.
#[test]
fn a_mis_padded_parameter_block_is_an_error_naming_the_kernel() {
    use fsd3d::gpu::KernelParams;
    let caps = Caps::all();
    let mut key = ops::elementwise::variants(caps).into_iter().next().unwrap();
    kernel::validate(&kernel::ShaderSource::builtin(), &key, caps).unwrap();
    key.params = MisPadded::FIELDS;
    let err = kernel::validate(&kernel::ShaderSource::builtin(), &key, caps).unwrap_err().to_string();
    assert!(err.contains(&key.to_string()) && err.contains("parameter block"), "{err}");

    let gpu = gpu();
    let x = gpu.upload(&[1.0; 4], &[4], DType::F32).unwrap();
    let good = ops::elementwise::variants(gpu.caps()).into_iter().next().unwrap();
    let err = gpu.dispatch("mis-padded", &good, &MisPadded::default(), &[&x, &x], [1, 1, 1]).unwrap_err().to_string();
    assert!(err.contains("parameter block"), "{err}");
}
