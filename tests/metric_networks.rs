//! The networks of the paper's metrics against their Python references
//! (fixtures by tools/golden/make_metric_fixtures.py): CLIP's two towers
//! against transformers' CLIPModel on a tiny random config, CLIP's image
//! preprocessing against transformers' PIL processor, the CLIP score, and
//! pytorch-fid's Inception-v3 on its full architecture with formula weights.
//! f32 within 1e-3 of the output's scale, f16 within 2e-2.
mod common;
use std::path::Path;

use fsd3d::gpu::DType;
use fsd3d::models::clip::{ClipModel, clip_score};
use fsd3d::models::clip_image::{ClipPreprocess, Rgb8};
use fsd3d::models::forward::{HostTensor, read_tensors, run};

const CLIP: &str = "tests/fixtures/models/clip_vit";

fn max_err(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (err, scale)
}

/// `module` of the fixture in `dir` on every device and dtype.
fn check(dir: &str, module: &str) {
    let dir = Path::new(dir);
    let inputs = read_tensors(&dir.join(format!("inputs_{module}.safetensors"))).unwrap();
    let want = read_tensors(&dir.join(format!("outputs_{module}.safetensors"))).unwrap();
    for (gpu, dtype) in common::configs() {
        let rtol = if dtype == DType::F16 { 2e-2 } else { 1e-3 };
        let got = run(&gpu, dir, module, &inputs, dtype).unwrap_or_else(|e| panic!("{module}: {e}"));
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(g.shape, w.shape, "{module}/{name} shape");
            let (err, scale) = max_err(&g.data, &w.data);
            eprintln!("{module}/{name} {}: max abs err {err:.2e}, scale {scale:.3}", common::label(&gpu, dtype));
            assert!(err <= rtol * scale, "{module}/{name} {}: max abs error {err} over {}", common::label(&gpu, dtype), rtol * scale);
        }
    }
}

#[test]
fn clip_image_embeds_match_transformers() {
    check(CLIP, "clip-image");
}

#[test]
fn clip_text_embeds_match_transformers() {
    check(CLIP, "clip-text");
}

fn fixture_image(t: &HostTensor) -> Rgb8 {
    assert_eq!(t.shape.len(), 3);
    Rgb8 { width: t.shape[1], height: t.shape[0], data: t.data.iter().map(|&v| v as u8).collect() }
}

#[test]
fn clip_preprocessing_matches_the_pil_processor() {
    let inputs = read_tensors(&Path::new(CLIP).join("inputs_clip-preprocess.safetensors")).unwrap();
    let want = read_tensors(&Path::new(CLIP).join("outputs_clip-preprocess.safetensors")).unwrap();
    let pre = ClipPreprocess::load(Path::new(CLIP), 32).unwrap();
    for k in 0..2 {
        let image = fixture_image(&inputs[&format!("image_{k}")]);
        let got = pre.apply(&image).unwrap();
        let w = &want[&format!("pixel_values_{k}")];
        // Pillow's resampling is integer arithmetic: the same bytes, so the
        // only difference left is the float rounding of the normalisation.
        let (err, _) = max_err(&got, &w.data);
        assert!(err < 1e-5, "image_{k} ({}×{}): max abs error {err}", image.width, image.height);
    }
}

#[test]
fn clip_scores_match_transformers() {
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(CLIP).join("clip_score.json")).unwrap()).unwrap();
    let prompt = want["prompt"].as_str().unwrap();
    let inputs = read_tensors(&Path::new(CLIP).join("inputs_clip-preprocess.safetensors")).unwrap();
    let gpu = common::gpu();
    let clip = ClipModel::load(&gpu, Path::new(CLIP), DType::F32).unwrap();
    let tokenizer = fsd3d::models::tokenizer::PromptTokenizer::from_dir(Path::new(CLIP)).unwrap();
    let text = gpu.download(&clip.text_embeds(&gpu, &[tokenizer.encode(prompt).unwrap()]).unwrap()).unwrap();
    let pre = ClipPreprocess::load(Path::new(CLIP), clip.image_size()).unwrap();
    for k in 0..2 {
        let pixels = pre.apply(&fixture_image(&inputs[&format!("image_{k}")])).unwrap();
        let image = gpu.download(&clip.image_embeds(&gpu, &gpu.upload(&pixels, &[1, 3, 32, 32], DType::F32).unwrap()).unwrap()).unwrap();
        let score = clip_score(&image, &text);
        let expected = want["scores"][k].as_f64().unwrap();
        assert!((score - expected).abs() < 1e-3 * expected.abs(), "image_{k}: {score} vs transformers' {expected}");
    }
}

#[test]
fn clip_inputs_of_the_wrong_kind_are_clear_errors() {
    let gpu = common::gpu();
    let clip = ClipModel::load(&gpu, Path::new(CLIP), DType::F32).unwrap();
    let wrong = gpu.upload(&vec![0.0; 3 * 24 * 24], &[1, 3, 24, 24], DType::F32).unwrap();
    let e = clip.image_embeds(&gpu, &wrong).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 32, 32]") && e.contains("preprocessing"), "{e}");
    let e = clip.text_embeds(&gpu, &[vec![1, 2, 5000]]).unwrap_err().to_string();
    assert!(e.contains("5000") && e.contains("tokenizer does not match"), "{e}");
    // A text encoder alone is not a CLIP model.
    let e = ClipModel::load(&gpu, Path::new("tests/fixtures/models/clip_quick_gelu"), DType::F32).err().unwrap().to_string();
    assert!(e.contains("not a CLIP model") && e.contains("clip-vit-base-patch32"), "{e}");
    // A processor that crops to another size than the tower takes.
    let e = ClipPreprocess::load(Path::new(CLIP), 224).unwrap_err().to_string();
    assert!(e.contains("preprocessor_config.json") && e.contains("does not match"), "{e}");
    // An image smaller than the crop cannot happen after a shortest-edge
    // resize; without a resize it is an error.
    let mut no_resize = ClipPreprocess::openai(32);
    no_resize.shortest_edge = None;
    let e = no_resize.apply(&Rgb8 { width: 20, height: 40, data: vec![0; 20 * 40 * 3] }).unwrap_err().to_string();
    assert!(e.contains("smaller than CLIP's crop"), "{e}");
}

// ---------------------------------------------------------------------------
// Inception-v3 (pytorch-fid's FID network) with formula weights
// ---------------------------------------------------------------------------

const INCEPTION: &str = "tests/fixtures/models/inception";
use common::inception_formula::{formula_inception, formula_tensor};

#[test]
fn inception_features_and_logits_match_pytorch_fid() {
    let file = formula_inception("parity");
    let inputs = read_tensors(&Path::new(INCEPTION).join("inputs_inception.safetensors")).unwrap();
    let want = read_tensors(&Path::new(INCEPTION).join("outputs_inception.safetensors")).unwrap();
    // The device with its features on, f32 and f16: each pass is ~3 s on
    // lavapipe, and the ops' fallback paths have their own tests.
    let gpu = common::gpu();
    let dtypes = if gpu.features().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] };
    for dtype in dtypes {
        let rtol = if dtype == DType::F16 { 2e-2 } else { 1e-3 };
        let started = std::time::Instant::now();
        let got = run(&gpu, &file, "inception", &inputs, dtype).unwrap();
        for name in ["pool", "logits"] {
            let (g, w) = (&got[name], &want[name]);
            assert_eq!(g.shape, w.shape, "{name} shape");
            let (err, scale) = max_err(&g.data, &w.data);
            eprintln!("inception/{name} {}: max abs err {err:.2e}, scale {scale:.3} ({:.1} s)", common::label(&gpu, dtype), started.elapsed().as_secs_f64());
            assert!(err <= rtol * scale, "inception/{name} {}: max abs error {err} over {}", common::label(&gpu, dtype), rtol * scale);
        }
        // Without the bias: the logits less fc.bias.
        let bias = formula_tensor("fc.bias", &[1008]);
        let (lu, l) = (&got["logits_unbiased"].data, &got["logits"].data);
        for (i, (u, b)) in lu.iter().zip(l).enumerate() {
            assert!((u + bias[i % 1008] - b).abs() <= rtol * 4.0, "logits_unbiased[{i}]");
        }
    }
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[test]
fn inception_input_and_weights_errors_are_clear() {
    let gpu = common::gpu();
    let shape = vec![1, 3, 4, 4];
    let images = |v: f32| [("images".to_string(), HostTensor { data: vec![v; 48], shape: shape.clone() })].into_iter().collect();
    // Not the Inception: a CLIP model's weights.
    let e = run(&gpu, Path::new(CLIP), "inception", &images(0.5), DType::F32).unwrap_err().to_string();
    assert!(e.contains("not the FID Inception") && e.contains("convert_inception.py"), "{e}");
    // A missing file names itself.
    let e = run(&gpu, Path::new("no/such/inception.safetensors"), "inception", &images(0.5), DType::F32).unwrap_err().to_string();
    assert!(e.contains("no/such/inception.safetensors"), "{e}");
    // Images in [0, 255] are refused before any work.
    let e = fsd3d::models::inception::check_images(&vec![255.0; 48], &shape).unwrap_err().to_string();
    assert!(e.contains("[0, 1]") && e.contains("255"), "{e}");
    let e = fsd3d::models::inception::check_images(&vec![0.5; 16], &[1, 1, 4, 4]).unwrap_err().to_string();
    assert!(e.contains("[B, 3, H, W]"), "{e}");
}

/// `fsd3d bench metrics --quick` runs every case and reports a rate for the Inception.
#[test]
fn the_metrics_bench_runs_its_quick_cases() {
    let gpu = common::gpu();
    let args = fsd3d::bench::BenchArgs { family: Some("metrics".into()), quick: true, dtype: Some("f32".into()), ..Default::default() };
    let mut cases = fsd3d::bench::cases_for(&gpu, &args).unwrap();
    let names: Vec<String> = cases.iter().map(|c| c.kernel.clone()).collect();
    assert_eq!(names, ["clip-image test", "clip-text test", "inception fid"]);
    for case in &mut cases {
        let m = fsd3d::bench::measure(&gpu, case, 0.0).unwrap();
        assert!(m.ms > 0.0, "{m:?}");
        if m.kernel == "inception fid" {
            assert!(m.gflops.is_some_and(|g| g > 0.0), "{m:?}");
        }
    }
}
