//! DDIM sampling reproduces diffusers' StableDiffusionPipeline from the same
//! initial latents: PNGs within 2/255 in every channel, in f32 (fixture by
//! tools/golden/make_model_fixtures.py: a tiny random latent pipeline with a
//! CLIP BPE tokenizer and SD's DDIM scheduler settings), at its default size
//! and at others (tools/golden/make_sample_size_fixture.py), where the
//! latents' shape or `--height` / `--width` decide the size.
mod common;
use std::path::Path;

use fsd3d::diffusion::sampler::{SampleRequest, ddim_sample};
use fsd3d::diffusion::size::{ImageSize, Latents};
use fsd3d::export::image::{from_signed_nchw, read_png};
use fsd3d::gpu::DType;
use fsd3d::models::forward::read_tensors;
use fsd3d::models::prior::StableDiffusion;

/// The tensor `latents` of a safetensors file, with its shape.
fn read_latents(path: &Path) -> Latents {
    let t = read_tensors(path).unwrap().remove("latents").unwrap();
    Latents::new(&t.shape, t.data).unwrap()
}

#[test]
fn sample_matches_diffusers_pipeline_images() {
    let dir = Path::new("tests/fixtures/models/pipeline");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let latents = read_latents(&dir.join("latents.safetensors"));
    for gpu in common::gpus() {
        let sd = StableDiffusion::load(&gpu, dir, DType::F32).unwrap();
        for case in cases.as_array().unwrap() {
            let req = SampleRequest {
                prompt: case["prompt"].as_str().unwrap().to_string(),
                negative: case["negative"].as_str().map(String::from),
                steps: case["steps"].as_u64().unwrap() as usize,
                cfg: case["cfg"].as_f64().unwrap() as f32,
                eta: 0.0,
                seed: 0,
                size: ImageSize::default(),
                latents: Some(latents.clone()),
            };
            let img = ddim_sample(&gpu, &sd, &req, |_, _| {}).unwrap();
            let got = from_signed_nchw(&gpu.download(&img).unwrap(), img.shape(), 0).unwrap();
            let want = read_png(&dir.join(case["png"].as_str().unwrap())).unwrap();
            assert_eq!((got.width, got.height), (want.width, want.height));
            let worst = got.data.iter().zip(&want.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            eprintln!("{:?} [{}]: max channel difference {worst}/255", req.prompt, gpu.features().names().join(","));
            assert!(worst <= 2, "{:?}: differs from diffusers by {worst}/255", req.prompt);
        }
    }
}

#[test]
fn not_a_pipeline_folder_is_a_clear_error() {
    let gpu = common::gpu();
    let err = StableDiffusion::load(&gpu, Path::new("tests/fixtures/models/sd1_unet"), DType::F32).err().unwrap().to_string();
    assert!(err.contains("not a diffusers pipeline folder"), "{err}");
}

/// A batch is the same as its requests one by one: each sample keeps its
/// own prompt and seed (or latents) however it is batched, with the
/// deterministic sampler and with the ancestral one (η = 1), whose per-step
/// noise comes from each request's own seed.
#[test]
fn a_batch_matches_its_samples_drawn_alone() {
    for eta in [0.0, 1.0] {
        batch_matches_alone(eta);
    }
}

fn batch_matches_alone(eta: f32) {
    use fsd3d::diffusion::sampler::ddim_sample_batch;
    let dir = Path::new("tests/fixtures/models/pipeline");
    let latents = read_latents(&dir.join("latents.safetensors"));
    let gpu = common::gpu();
    let sd = StableDiffusion::load(&gpu, dir, DType::F32).unwrap();
    let req = |prompt: &str, seed: u64, latents: Option<Latents>| SampleRequest { prompt: prompt.into(), negative: None, steps: 3, cfg: 4.0, eta, seed, size: ImageSize::default(), latents };
    let reqs = [req("a red cube", 3, None), req("a photo of a dog", 0, Some(latents)), req("a red cube", 4, None)];
    let batch = ddim_sample_batch(&gpu, &sd, &reqs, |_, _| {}).unwrap();
    assert_eq!(batch.dim(0), 3);
    let all = gpu.download(&batch).unwrap();
    let per = all.len() / 3;
    for (k, r) in reqs.iter().enumerate() {
        let alone = gpu.download(&ddim_sample(&gpu, &sd, r, |_, _| {}).unwrap()).unwrap();
        let worst = alone.iter().zip(&all[k * per..(k + 1) * per]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("eta {eta}: batch sample {k}: max difference {worst:e}");
        assert!(worst < 1e-4, "sample {k} differs in the batch by {worst}");
    }
    // Different seeds, different samples (the comparison above is not vacuous).
    let d02 = all[..per].iter().zip(&all[2 * per..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d02 > 1e-2, "seeds 3 and 4 gave the same image");
    // A batch shares steps, guidance, η and negative prompt.
    let mut odd = reqs[0].clone();
    odd.cfg = 2.0;
    let err = ddim_sample_batch(&gpu, &sd, &[reqs[0].clone(), odd], |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("shares steps, guidance scale, eta and negative prompt"), "{err}");
    let mut odd = reqs[0].clone();
    odd.eta = eta + 0.5;
    assert!(ddim_sample_batch(&gpu, &sd, &[reqs[0].clone(), odd], |_, _| {}).is_err(), "a batch mixing η must be refused");
}

/// η = 1 adds seeded noise at every step: the same request gives the same
/// image twice, and not the image of the deterministic sampler; a negative η
/// is refused with a message that says what η is.
#[test]
fn ancestral_sampling_is_seeded_and_differs_from_ddim() {
    let dir = Path::new("tests/fixtures/models/pipeline");
    let gpu = common::gpu();
    let sd = StableDiffusion::load(&gpu, dir, DType::F32).unwrap();
    let req = |eta: f32| SampleRequest { prompt: "a red cube".into(), negative: None, steps: 4, cfg: 3.0, eta, seed: 11, size: ImageSize::default(), latents: None };
    let run = |eta: f32| gpu.download(&ddim_sample(&gpu, &sd, &req(eta), |_, _| {}).unwrap()).unwrap();
    let (a, b, d) = (run(1.0), run(1.0), run(0.0));
    assert_eq!(a, b, "η = 1 with one seed must be reproducible");
    let diff = a.iter().zip(&d).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-2, "η = 1 gave the deterministic sampler's image (max difference {diff})");
    let err = ddim_sample(&gpu, &sd, &req(-1.0), |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("eta must be a number >= 0"), "{err}");
}

/// The fixture pipeline with the four-level VAE of `sizes/vae_f8` (scale
/// factor 8, as Stable Diffusion's) in place of its own, assembled once in a
/// temporary folder.
fn factor8_pipeline() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = Path::new("tests/fixtures/models/pipeline");
        let dir = std::env::temp_dir().join(format!("fsd3d-pipeline-f8-{}", std::process::id()));
        let copy = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        };
        for part in ["unet", "text_encoder", "tokenizer", "scheduler"] {
            copy(&src.join(part), &dir.join(part));
        }
        copy(&src.join("sizes/vae_f8"), &dir.join("vae"));
        std::fs::copy(src.join("model_index.json"), dir.join("model_index.json")).unwrap();
        dir
    })
}

/// Sampling at sizes other than the UNet's `sample_size` reproduces
/// diffusers, the size taken from each case's own latents as diffusers takes
/// it (fixture by tools/golden/make_sample_size_fixture.py): the latent
/// pipeline (32×32 by default) at 16×24 and 48×40, with a VAE of scale
/// factor 8 at 24×40, and the embedded pixel prior (32×32) at 22×30 and
/// 40×50; a negative prompt, CFG 7.5, 10 DDIM steps. Latent sides 6, 10, 5
/// and pixel sides 22, 30, 50 are off the UNet's overall factor 4, so the
/// up path must follow the skips' sizes as diffusers' `upsample_size` does.
#[test]
fn sampling_at_other_sizes_matches_diffusers() {
    let latent = Path::new("tests/fixtures/models/pipeline");
    let pixel = fsd3d::models::embedded_prior_dir();
    let suites = [(latent.join("sizes"), latent.to_path_buf()), (Path::new("tests/fixtures/tiny_shapes/sizes").to_path_buf(), pixel)];
    for gpu in common::gpus() {
        let features = gpu.features().names().join(",");
        for (fixture, model) in &suites {
            let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("cases.json")).unwrap()).unwrap();
            let sd = StableDiffusion::load(&gpu, model, DType::F32).unwrap();
            let sd_f8 = StableDiffusion::load(&gpu, factor8_pipeline(), DType::F32).unwrap();
            for case in cases.as_array().unwrap() {
                let prior = if case["vae"].as_str() == Some("vae_f8") { &sd_f8 } else { &sd };
                let (h, w) = (case["height"].as_u64().unwrap() as usize, case["width"].as_u64().unwrap() as usize);
                let mut req = SampleRequest {
                    prompt: case["prompt"].as_str().unwrap().to_string(),
                    negative: case["negative"].as_str().map(String::from),
                    steps: case["steps"].as_u64().unwrap() as usize,
                    cfg: case["cfg"].as_f64().unwrap() as f32,
                    eta: 0.0,
                    seed: 0,
                    size: ImageSize::default(),
                    latents: Some(read_latents(&fixture.join(case["latents"].as_str().unwrap()))),
                };
                let img = ddim_sample(&gpu, prior, &req, |_, _| {}).unwrap();
                assert_eq!(img.shape(), &[1, 3, h, w], "the latents decide the size");
                let got = from_signed_nchw(&gpu.download(&img).unwrap(), img.shape(), 0).unwrap();
                let want = read_png(&fixture.join(case["png"].as_str().unwrap())).unwrap();
                assert_eq!((got.width, got.height), (want.width, want.height));
                let worst = got.data.iter().zip(&want.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
                eprintln!("{} {h}x{w} [{features}]: max channel difference {worst}/255", model.display());
                assert!(worst <= 2, "{h}x{w} from {}: differs from diffusers by {worst}/255", model.display());
                // The same size asked for explicitly is the same request.
                req.size = ImageSize::new(h, w);
                let again = ddim_sample(&gpu, prior, &req, |_, _| {}).unwrap();
                assert_eq!(gpu.download(&again).unwrap(), gpu.download(&img).unwrap());
            }
        }
    }
}

/// Without latents, `size` sets the image's: any multiple of the VAE's scale
/// factor (4 for the fixture pipeline, 8 for SD's), any size for a pixel
/// prior; a side left out is `sample_size` × the factor.
#[test]
fn seeded_sampling_draws_the_size_asked_for() {
    let gpu = common::gpu();
    let latent = StableDiffusion::load(&gpu, Path::new("tests/fixtures/models/pipeline"), DType::F32).unwrap();
    let f8 = StableDiffusion::load(&gpu, factor8_pipeline(), DType::F32).unwrap();
    let pixel = StableDiffusion::load(&gpu, &fsd3d::models::embedded_prior_dir(), DType::F32).unwrap();
    let req = |size| SampleRequest { prompt: "a red cube".into(), negative: None, steps: 2, cfg: 3.0, eta: 0.0, seed: 7, size, latents: None };
    let shape = |prior: &StableDiffusion, size| ddim_sample(&gpu, prior, &req(size), |_, _| {}).unwrap().shape().to_vec();
    assert_eq!(shape(&latent, ImageSize::new(20, 12)), [1, 3, 20, 12]);
    assert_eq!(shape(&latent, ImageSize { height: Some(44), width: None }), [1, 3, 44, 32]);
    assert_eq!(shape(&f8, ImageSize::default()), [1, 3, 64, 64], "sample_size 8 × the scale factor 8");
    assert_eq!(shape(&f8, ImageSize::new(40, 24)), [1, 3, 40, 24]);
    assert_eq!(shape(&pixel, ImageSize::new(23, 41)), [1, 3, 23, 41]);
    assert_eq!(shape(&pixel, ImageSize::default()), [1, 3, 32, 32]);
}

/// A size the model cannot draw, or latents that do not fit the model or
/// contradict the size asked for, are refused with what to give instead.
#[test]
fn sizes_the_model_cannot_draw_are_clear_errors() {
    let gpu = common::gpu();
    let latent = StableDiffusion::load(&gpu, Path::new("tests/fixtures/models/pipeline"), DType::F32).unwrap();
    let f8 = StableDiffusion::load(&gpu, factor8_pipeline(), DType::F32).unwrap();
    let req = |size, latents| SampleRequest { prompt: "a red cube".into(), negative: None, steps: 2, cfg: 3.0, eta: 0.0, seed: 7, size, latents };
    let err = |prior: &StableDiffusion, r: &SampleRequest| ddim_sample(&gpu, prior, r, |_, _| {}).expect_err("refused").to_string();
    let e = err(&f8, &req(ImageSize { height: Some(20), width: None }, None));
    assert!(e.contains("--height 20") && e.contains("multiple of 8") && e.contains("use 16 or 24"), "{e}");
    let e = err(&latent, &req(ImageSize::new(32, 18), None));
    assert!(e.contains("--width 18") && e.contains("use 16 or 20"), "{e}");
    let zeros = |shape: &[usize]| Some(Latents::new(shape, vec![0.0; shape.iter().product()]).unwrap());
    let e = err(&latent, &req(ImageSize::default(), zeros(&[1, 3, 4, 6])));
    assert!(e.contains("3 channels") && e.contains("[1, 4, h, w]"), "{e}");
    let e = err(&latent, &req(ImageSize::new(16, 20), zeros(&[1, 4, 4, 6])));
    assert!(e.contains("16×24") && e.contains("--width asks for 20") && e.contains("[1, 4, 4, 5]"), "{e}");
    // A batch draws one size.
    let e = fsd3d::diffusion::sampler::ddim_sample_batch(&gpu, &latent, &[req(ImageSize::new(16, 16), None), req(ImageSize::new(16, 24), None)], |_, _| {})
        .expect_err("refused")
        .to_string();
    assert!(e.contains("a batch shares its image size") && e.contains("16×16") && e.contains("16×24"), "{e}");
}

/// The command line: `--latents` takes the file's shape, `--height` and
/// `--width` set the size, and a side off the VAE's scale factor is an error
/// that names the nearest valid sides.
#[test]
fn the_sample_command_takes_its_size_from_the_latents_or_the_flags() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("fsd3d-sample-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fsd3d = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fsd3d")).args(args).env_remove("FSD3D_MODEL").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let latents = "tests/fixtures/models/pipeline/sizes/latents_16x24.safetensors";
    let png = dir.join("from_latents.png");
    let (ok, stderr) = fsd3d(&["sample", "a red cube", "--model", "tests/fixtures/models/pipeline", "--steps", "1", "--latents", latents, "--out", png.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let img = read_png(&png).unwrap();
    assert_eq!((img.height, img.width), (16, 24));
    let png = dir.join("asked.png");
    let (ok, stderr) = fsd3d(&["sample", "a red cube", "--model", "tests/fixtures/models/pipeline", "--steps", "1", "--height", "12", "--width", "40", "--out", png.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let img = read_png(&png).unwrap();
    assert_eq!((img.height, img.width), (12, 40));
    let (ok, stderr) = fsd3d(&["sample", "a red cube", "--model", factor8_pipeline().to_str().unwrap(), "--steps", "1", "--height", "20"]);
    assert!(!ok && stderr.contains("--height 20") && stderr.contains("use 16 or 24"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, stderr) = fsd3d(&["sample", "a red cube", "--model", "tests/fixtures/models/pipeline", "--steps", "1", "--latents", latents, "--height", "32"]);
    assert!(!ok && stderr.contains("--height asks for 32"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
