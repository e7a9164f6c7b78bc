//! `fsd3d bench metrics`: the networks of `eval --clip --inception` over one
//! object's 24 views, as an evaluation runs them: CLIP ViT-B/32's image tower
//! on 24 preprocessed 224² views and its text tower on one prompt, and the
//! FID Inception-v3 on 24 views of 512² (resized to 299² inside). Both with
//! weights drawn from a seeded normal ([`RandomWeights`]): speed needs the
//! shapes, not the trained values. `--quick`: the tiny CLIP fixture and two
//! 64² views through the Inception.
use crate::bench::random::RandomFolder;
use crate::bench::unet::BENCH_RANDOM_WEIGHTS;
use crate::bench::{BenchArgs, Case, dtypes};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::clip::ClipModel;
use crate::models::inception::Inception;

/// CLIP ViT-B/32: every size is the config's default (openai/clip-vit-base-patch32).
const CLIP_B32_CONFIG: &str = r#"{"model_type": "clip", "text_config": {}, "vision_config": {}, "projection_dim": 512}"#;

/// Multiply-adds of Inception-v3 at 299² (torchvision's count, 5.71 G), as FLOPs.
const INCEPTION_FLOPS: f64 = 2.0 * 5.71e9;

/// Views of one object in the paper's evaluation.
const VIEWS: usize = 24;

/// Multiply-adds of a ViT image tower: the patch embedding and, per layer,
/// the four d×d projections, the two MLP matrices and the two attention products.
fn vit_flops(tokens: usize, d: usize, inter: usize, layers: usize, patch_macs: usize) -> f64 {
    let per_layer = tokens * (4 * d * d + 2 * d * inter) + 2 * tokens * tokens * d;
    2.0 * (patch_macs + layers * per_layer) as f64
}

pub fn cases<'a>(gpu: &'a Gpu, args: &BenchArgs) -> Result<Vec<Case<'a>>> {
    let mut v = Vec::new();
    for dtype in dtypes(gpu, args)? {
        v.push(clip_image_case(gpu, dtype, args.quick)?);
        v.push(clip_text_case(gpu, dtype, args.quick)?);
        v.push(inception_case(gpu, dtype, args.quick)?);
    }
    Ok(v)
}

fn clip_folder(quick: bool) -> Result<(Option<RandomFolder>, std::path::PathBuf)> {
    if quick {
        return Ok((None, std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/clip_vit")));
    }
    let folder = RandomFolder::new("clip")?;
    folder.component("", CLIP_B32_CONFIG, BENCH_RANDOM_WEIGHTS)?;
    let path = folder.path().to_path_buf();
    Ok((Some(folder), path))
}

fn clip_image_case(gpu: &Gpu, dtype: DType, quick: bool) -> Result<Case<'_>> {
    let (side, name) = if quick { (32, "clip-image test") } else { (224, "clip-image vit-b/32") };
    let mut loaded: Option<(ClipModel, Tensor)> = None;
    let flops = if quick { 0.0 } else { vit_flops(50, 768, 3072, 12, 49 * 768 * 3 * 32 * 32) * VIEWS as f64 };
    Ok(Case {
        kernel: name.into(),
        shape: format!("{VIEWS}×3×{side}²"),
        dtype,
        flops,
        bytes: 0.0,
        record: Box::new(move || {
            if loaded.is_none() {
                let (_folder, dir) = clip_folder(quick)?;
                let model = ClipModel::load(gpu, &dir, dtype)?;
                let pixels: Vec<f32> = (0..VIEWS * 3 * side * side).map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0).collect();
                let x = gpu.upload(&pixels, &[VIEWS, 3, side, side], dtype)?;
                loaded = Some((model, x));
            }
            let (model, x) = loaded.as_ref().expect("loaded above");
            model.image_embeds(gpu, x).map(drop)
        }),
    })
}

fn clip_text_case(gpu: &Gpu, dtype: DType, quick: bool) -> Result<Case<'_>> {
    let name = if quick { "clip-text test" } else { "clip-text vit-b/32" };
    let mut loaded: Option<(ClipModel, Vec<u32>)> = None;
    Ok(Case {
        kernel: name.into(),
        shape: "1×77".into(),
        dtype,
        flops: 0.0,
        bytes: 0.0,
        record: Box::new(move || {
            if loaded.is_none() {
                let (_folder, dir) = clip_folder(quick)?;
                let model = ClipModel::load(gpu, &dir, dtype)?;
                let vocab = model.config.text_config.vocab_size as u32;
                let ids: Vec<u32> = (0..77u32).map(|i| (i * 31 + 5) % (vocab - 1)).collect();
                loaded = Some((model, ids));
            }
            let (model, ids) = loaded.as_ref().expect("loaded above");
            model.text_embeds(gpu, std::slice::from_ref(ids)).map(drop)
        }),
    })
}

fn inception_case(gpu: &Gpu, dtype: DType, quick: bool) -> Result<Case<'_>> {
    let (views, side) = if quick { (2, 64) } else { (VIEWS, 512) };
    let mut loaded: Option<(Inception, Tensor)> = None;
    Ok(Case {
        kernel: "inception fid".into(),
        shape: format!("{views}×3×{side}² → 299²"),
        dtype,
        flops: INCEPTION_FLOPS * views as f64,
        bytes: 0.0,
        record: Box::new(move || {
            if loaded.is_none() {
                let folder = RandomFolder::new("inception")?;
                folder.component("", "{}", BENCH_RANDOM_WEIGHTS)?;
                let net = Inception::load(gpu, folder.path(), dtype)?;
                let pixels: Vec<f32> = (0..views * 3 * side * side).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect();
                let x = gpu.upload(&pixels, &[views, 3, side, side], dtype)?;
                loaded = Some((net, x));
            }
            let (net, x) = loaded.as_ref().expect("loaded above");
            net.forward(gpu, x).map(drop)
        }),
    })
}
