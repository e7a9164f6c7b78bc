//! `fsd3d bench fsd-step`: one whole iteration of `fsd3d generate`, timed.
//!
//! The iteration is [`Generator::step`] itself, on the run config `generate`
//! would use for the prior (FSD, [`GenerateConfig::defaults`]: for Stable
//! Diffusion FSD_SPEC §5, threestudio's sizes): cameras → 64² render of the
//! hash-grid field → resize to 512² → VAE encode (with its tape) → world-map
//! noise → UNet on the CFG pair → distillation gradient → VAE encoder
//! backward → resize backward → render and field backward → Adam, recorded
//! and submitted once. The prior is a [`StableDiffusion`] from
//! [`StableDiffusion::load`]; with `--random-weights` its folder is
//! synthesised ([`random_pipeline`]: Stable Diffusion 1.5's configs, every
//! weight drawn from a seeded normal), since the speed needs the shapes, not
//! the trained values.
//!
//! Measured: loading and setup (weights, the prompts' embeddings), a warm-up
//! step (it compiles the pipelines), then steps back to back as `generate`'s
//! loop runs them until `--steps` or `--seconds`: ms per step is their wall
//! time over their count. Then, where the adapter has timestamps, one more
//! step with the profiler on (a profiled submit waits for its work, so it is
//! not one of the timed steps): kernel time per family, and per part of the
//! step (UNet, VAE, the 3D side, the rest), the prior's calls marked as
//! profiler sections by [`SectionedPrior`].
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bench::random::RandomFolder;
use crate::bench::unet::{BENCH_RANDOM_WEIGHTS, SD15_UNET_CONFIG};
use crate::bench::{BenchArgs, Measurement, dtypes};
use crate::diffusion::guidance::Method;
use crate::diffusion::schedule::SchedulerConfig;
use crate::error::{Error, Result};
use crate::generate::{GenerateConfig, Generator, PriorKind};
use crate::gpu::{DType, Gpu, ProfileEntry, Tensor};
use crate::models::prior::{Encoded, Prior, StableDiffusion, ViewCameras};
use crate::models::weights::RandomWeights;

/// The family name of this bench.
pub const FSD_STEP: &str = "fsd-step";

/// The prompt of the measured run (its words do not change the work).
const PROMPT: &str = "a delicious hamburger";

/// Stable Diffusion 1.5's VAE (`runwayml/stable-diffusion-v1-5/vae/config.json`,
/// diffusers' AutoencoderKL): 128/256/512/512 channels, two layers per block,
/// 4 latent channels, 512² images. 83.7 M parameters.
pub const SD15_VAE_CONFIG: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "scaling_factor": 0.18215,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

/// Stable Diffusion 1.5's text encoder (`text_encoder/config.json`: CLIP
/// ViT-L/14's text model): 12 layers of 768, 49 408 tokens. 123 M parameters.
pub const SD15_TEXT_ENCODER_CONFIG: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "bos_token_id": 0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "vocab_size": 49408
}"#;

/// Stable Diffusion 1.5's `scheduler/scheduler_config.json` (the training
/// schedule is what the 3D loop reads: scaled-linear betas, 1000 steps).
pub const SD15_SCHEDULER_CONFIG: &str = r#"{
  "_class_name": "PNDMScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}"#;

/// The tiny test pipeline `--quick` synthesises (its configs; the weights are random).
fn quick_pipeline_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/pipeline")
}

/// The configs of a pipeline to synthesise with random weights.
#[derive(Clone, Debug)]
pub struct PipelineConfigs {
    pub unet: String,
    /// None for a pixel-space prior.
    pub vae: Option<String>,
    pub text_encoder: String,
    pub scheduler: String,
    /// A tokenizer folder to copy. With random weights any ids below the text
    /// encoder's `vocab_size` do: the tokens only pick rows of a random table.
    pub tokenizer: PathBuf,
    /// Where the tokens come from, for the report.
    pub tokenizer_note: String,
}

impl PipelineConfigs {
    /// Stable Diffusion 1.5. Its 49 408-token CLIP vocabulary is not shipped
    /// here: the prompts are tokenised by the embedded prior's word-level
    /// tokenizer, whose ids are valid rows of SD 1.5's token table.
    pub fn sd15() -> Result<PipelineConfigs> {
        let tokenizer = crate::models::embedded_prior_dir().join("tokenizer");
        if !tokenizer.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is not here (not a source checkout?): the random-weights pipeline borrows its tokenizer; pass --model DIR (a diffusers pipeline folder) instead",
                tokenizer.display()
            )));
        }
        Ok(PipelineConfigs {
            unet: SD15_UNET_CONFIG.into(),
            vae: Some(SD15_VAE_CONFIG.into()),
            text_encoder: SD15_TEXT_ENCODER_CONFIG.into(),
            scheduler: SD15_SCHEDULER_CONFIG.into(),
            tokenizer,
            tokenizer_note: "the embedded prior's word-level tokenizer (CLIP's vocabulary is not shipped)".into(),
        })
    }

    /// The configs of the diffusers pipeline folder `dir`, and its tokenizer.
    pub fn of_pipeline(dir: &Path) -> Result<PipelineConfigs> {
        let read = |rel: &str| -> Result<String> {
            let path = dir.join(rel);
            std::fs::read_to_string(&path).map_err(|e| {
                Error::Invalid(format!(
                    "{}: {e}; --random-weights with --model reads the configs of a diffusers pipeline folder (unet/, text_encoder/, tokenizer/, scheduler/, and vae/ for latent models)",
                    path.display()
                ))
            })
        };
        let vae = if dir.join("vae/config.json").is_file() { Some(read("vae/config.json")?) } else { None };
        Ok(PipelineConfigs {
            unet: read("unet/config.json")?,
            vae,
            text_encoder: read("text_encoder/config.json")?,
            scheduler: read("scheduler/scheduler_config.json")?,
            tokenizer: dir.join("tokenizer"),
            tokenizer_note: format!("the tokenizer of {}", dir.display()),
        })
    }
}

/// Loads a [`StableDiffusion`] from a synthesised pipeline folder: the
/// configs of `configs`, every weight drawn by `spec` (norm scales 1).
pub fn random_pipeline(gpu: &Gpu, configs: &PipelineConfigs, dtype: DType, spec: RandomWeights) -> Result<StableDiffusion> {
    let folder = RandomFolder::new("pipeline")?;
    folder.component("unet", &configs.unet, spec)?;
    if let Some(vae) = &configs.vae {
        folder.component("vae", vae, spec)?;
    }
    folder.component("text_encoder", &configs.text_encoder, spec)?;
    folder.write("scheduler/scheduler_config.json", &configs.scheduler)?;
    folder.copy_files(&configs.tokenizer, "tokenizer")?;
    StableDiffusion::load(gpu, folder.path(), dtype)
}

/// Where the measured prior comes from.
#[derive(Clone, Debug)]
pub enum PriorSource {
    /// Synthesised from configs, random weights.
    Random { name: String, configs: Box<PipelineConfigs>, kind: PriorKind },
    /// A pipeline folder with its weights.
    Folder { dir: PathBuf, kind: PriorKind },
}

impl PriorSource {
    /// What `args` ask for: `--model DIR` (its weights, or with
    /// `--random-weights` its configs), else with `--random-weights` Stable
    /// Diffusion 1.5 (with `--quick` the tiny test pipeline).
    pub fn from_args(args: &BenchArgs) -> Result<PriorSource> {
        match (&args.model, args.random_weights) {
            (Some(dir), false) => Ok(PriorSource::Folder { dir: dir.clone(), kind: crate::generate::job::prior_kind(dir)? }),
            (Some(dir), true) => Ok(PriorSource::Random {
                name: format!("{} (random weights)", dir.display()),
                configs: Box::new(PipelineConfigs::of_pipeline(dir)?),
                kind: crate::generate::job::prior_kind(dir)?,
            }),
            (None, true) if args.quick => {
                let dir = quick_pipeline_dir();
                if !dir.join("unet/config.json").is_file() {
                    return Err(Error::Invalid(format!(
                        "--quick synthesises the tiny test pipeline of {}, which is not here (not a source checkout?): pass --model DIR --random-weights with a pipeline folder",
                        dir.display()
                    )));
                }
                Ok(PriorSource::Random {
                    name: "tiny test pipeline (random weights)".into(),
                    configs: Box::new(PipelineConfigs::of_pipeline(&dir)?),
                    kind: PriorKind::Latent,
                })
            }
            (None, true) => Ok(PriorSource::Random {
                name: "Stable Diffusion 1.5 (random weights)".into(),
                configs: Box::new(PipelineConfigs::sd15()?),
                kind: PriorKind::Latent,
            }),
            (None, false) => Err(Error::Invalid(
                "bench fsd-step needs a model: pass --random-weights (Stable Diffusion 1.5's shapes with seeded random weights; \
                 with --quick the tiny test pipeline's) or --model DIR (a diffusers pipeline folder and its weights)"
                    .into(),
            )),
        }
    }

    pub fn name(&self) -> String {
        match self {
            PriorSource::Random { name, .. } => name.clone(),
            PriorSource::Folder { dir, .. } => dir.display().to_string(),
        }
    }

    pub fn kind(&self) -> &PriorKind {
        match self {
            PriorSource::Random { kind, .. } | PriorSource::Folder { kind, .. } => kind,
        }
    }

    pub fn load(&self, gpu: &Gpu, dtype: DType) -> Result<StableDiffusion> {
        match self {
            PriorSource::Random { configs, .. } => random_pipeline(gpu, configs, dtype, BENCH_RANDOM_WEIGHTS),
            PriorSource::Folder { dir, .. } => StableDiffusion::load(gpu, dir, dtype),
        }
    }

    /// How the prompts are embedded, for the report.
    fn text_note(&self) -> String {
        match self {
            PriorSource::Random { configs, .. } => format!(
                "text encoder of the config with random weights, tokens from {}; embedded once, before the timing",
                configs.tokenizer_note
            ),
            PriorSource::Folder { .. } => "the pipeline's tokenizer and text encoder; embedded once, before the timing".into(),
        }
    }
}

/// Profiler sections of the prior's calls.
pub mod section {
    pub const UNET: &str = "unet";
    pub const VAE: &str = "vae";
    pub const TEXT: &str = "text";
}

/// Kernel families of the 3D side (`ops::{hashgrid, mlp, render, adam}`):
/// only the scene dispatches them.
pub const SCENE_FAMILIES: [&str; 4] = ["hashgrid", "mlp", "render", "adam"];

/// The prior as the bench hands it to the [`Generator`]: every call goes to
/// the pipeline unchanged; around them the profiler is told which part of
/// the step the recorded kernels belong to. The UNet and the VAE share kernel
/// families (convolutions, norms, attention), so only the calls can tell them apart.
pub struct SectionedPrior<'p> {
    pub inner: &'p dyn Prior,
}

fn in_section<T>(gpu: &Gpu, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    gpu.set_profile_section(Some(name));
    let r = f();
    gpu.set_profile_section(None);
    r
}

impl Prior for SectionedPrior<'_> {
    fn sample_shape(&self) -> [usize; 3] {
        self.inner.sample_shape()
    }
    fn scale_factor(&self) -> usize {
        self.inner.scale_factor()
    }
    fn image_size(&self) -> [usize; 2] {
        self.inner.image_size()
    }
    fn scheduler_config(&self) -> &SchedulerConfig {
        self.inner.scheduler_config()
    }
    fn embed(&self, gpu: &Gpu, prompts: &[&str]) -> Result<Tensor> {
        in_section(gpu, section::TEXT, || self.inner.embed(gpu, prompts))
    }
    fn predict(&self, gpu: &Gpu, x_t: &Tensor, t: f32, cond: &Tensor, uncond: Option<&Tensor>, cfg: f32, views: Option<&ViewCameras>) -> Result<Tensor> {
        in_section(gpu, section::UNET, || self.inner.predict(gpu, x_t, t, cond, uncond, cfg, views))
    }
    fn num_frames(&self) -> Option<usize> {
        self.inner.num_frames()
    }
    fn to_image(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        in_section(gpu, section::VAE, || self.inner.to_image(gpu, x))
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn encode(&self, gpu: &Gpu, images: &Tensor) -> Result<Encoded> {
        in_section(gpu, section::VAE, || self.inner.encode(gpu, images))
    }
    fn encode_backward(&self, gpu: &Gpu, enc: &Encoded, d_sample: &Tensor) -> Result<Tensor> {
        in_section(gpu, section::VAE, || self.inner.encode_backward(gpu, enc, d_sample))
    }
}

/// The run config the bench steps: `generate`'s defaults for the prior
/// (FSD), and with `quick` a scene lavapipe steps through in about a second.
pub fn run_config(prior: &dyn Prior, kind: &PriorKind, dtype: DType, quick: bool) -> GenerateConfig {
    let mut cfg = GenerateConfig::defaults(PROMPT, Method::Fsd, kind);
    cfg.dtype = dtype.to_string();
    if quick {
        // The render at the latents' side, as Stable Diffusion's 64² for 64²
        // latents; a small grid and few samples (as tests/generate.rs's latent loop).
        let [_, h, w] = prior.sample_shape();
        cfg.camera.width = w as u32;
        cfg.camera.height = h as u32;
        cfg.scene.field.levels = 8;
        cfg.scene.field.log2_table_size = 14;
        cfg.scene.field.hidden = 32;
        cfg.scene.render.samples_per_ray = 48;
    }
    cfg
}

/// Time (and calls) of one part of the step or one kernel family.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Share {
    pub name: String,
    pub calls: u64,
    pub ms: f64,
    /// Fraction of the profiled step's kernel time.
    pub share: f64,
}

/// What one `fsd3d bench fsd-step` measured, in one storage type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FsdStepReport {
    pub bench: &'static str,
    pub model: String,
    pub dtype: String,
    pub adapter: String,
    /// Render → image → latents, and the UNet's input.
    pub shapes: String,
    /// Whether the prior encodes with a VAE (a latent prior) or denoises pixels.
    pub vae: bool,
    /// The field and the renderer.
    pub scene: String,
    /// The shading of the timed steps.
    pub shading: String,
    pub text: String,
    /// Loading the weights and setting up the run (prompt embeddings).
    pub load_s: f64,
    /// The first step, which compiles the pipelines.
    pub warmup_ms: f64,
    pub ms_per_step: f64,
    /// Timed steps, and the index of the first.
    pub steps: u64,
    pub first_step: u64,
    /// Mean |Δ| of the field's parameters (grid and MLPs) over the timed steps.
    pub field_change: f64,
    /// Whether the adapter has timestamps (else no profiled step).
    pub timestamps: bool,
    /// The step index that was profiled.
    pub profiled_step: Option<u64>,
    /// Kernel time of the profiled step.
    pub kernel_ms: Option<f64>,
    /// `unet`, `vae`, `scene`, `rest` (see [`PARTS`]).
    pub parts: Vec<Share>,
    /// Per kernel family (the label before its last '.'), longest first.
    pub families: Vec<Share>,
}

/// The parts of a step, as the report names them.
pub const PARTS: [(&str, &str); 4] = [
    ("unet", "UNet, CFG pair (batch 2)"),
    ("vae", "VAE encode + backward"),
    ("scene", "3D side: render, field, Adam"),
    ("rest", "rest: resize, noise, distillation gradient"),
];

/// The family of a kernel label: `conv2d.subgroup` → `conv2d`, `gemm.conv.tiled` → `gemm.conv`.
pub fn family(label: &str) -> &str {
    label.rsplit_once('.').map_or(label, |(f, _)| f)
}

fn field_params(gpu: &Gpu, run: &Generator<'_>) -> Result<Vec<f32>> {
    let mut v = gpu.download(&run.scene.field.table)?;
    v.extend(gpu.download(&run.scene.field.mlp)?);
    Ok(v)
}

/// Kernel time per family, longest first.
fn families(kernels: &[ProfileEntry], total: f64) -> Vec<Share> {
    let mut v: Vec<Share> = Vec::new();
    for e in kernels {
        let name = family(&e.label);
        match v.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.calls += e.calls;
                s.ms += e.total_ms;
            }
            None => v.push(Share { name: name.to_string(), calls: e.calls, ms: e.total_ms, share: 0.0 }),
        }
    }
    for s in &mut v {
        s.share = if total > 0.0 { s.ms / total } else { 0.0 };
    }
    v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    v
}

/// The step's kernel time split into [`PARTS`]: the prior's sections, the
/// scene's families, and what is left.
fn parts(kernels: &[ProfileEntry], sections: &[ProfileEntry], total: f64) -> Vec<Share> {
    let section = |name: &str| sections.iter().find(|e| e.label == name).map_or((0, 0.0), |e| (e.calls, e.total_ms));
    let scene = kernels
        .iter()
        .filter(|e| SCENE_FAMILIES.contains(&family(&e.label)))
        .fold((0, 0.0), |(c, t), e| (c + e.calls, t + e.total_ms));
    let (unet, vae) = (section(section::UNET), section(section::VAE));
    let all_calls: u64 = kernels.iter().map(|e| e.calls).sum();
    let rest = (all_calls.saturating_sub(unet.0 + vae.0 + scene.0), (total - unet.1 - vae.1 - scene.1).max(0.0));
    [unet, vae, scene, rest]
        .into_iter()
        .zip(PARTS)
        .map(|((calls, ms), (name, _))| Share { name: name.into(), calls, ms, share: if total > 0.0 { ms / total } else { 0.0 } })
        .collect()
}

/// Loads the prior of `source` in `dtype`, sets up a run as `generate` does,
/// and measures its steps (see the module's documentation). Uses the
/// profiler for the profiled step: anything it had collected is reset.
pub fn measure(gpu: &Gpu, source: &PriorSource, dtype: DType, args: &BenchArgs) -> Result<FsdStepReport> {
    if args.steps == Some(0) {
        return Err(Error::Invalid("--steps 0: time at least one step (or leave --steps out to time for --seconds)".into()));
    }
    let seconds = Duration::try_from_secs_f64(args.seconds.max(0.0))
        .map_err(|_| Error::Invalid(format!("--seconds {}: give a finite number of seconds (0: one timed step)", args.seconds)))?;
    let started = Instant::now();
    let prior = source.load(gpu, dtype)?;
    let cfg = run_config(&prior, source.kind(), dtype, args.quick);
    let sectioned = SectionedPrior { inner: &prior };
    let mut run = Generator::new(gpu, &sectioned, cfg)?;
    gpu.sync()?;
    let load_s = started.elapsed().as_secs_f64();

    let warm = Instant::now();
    run.step().and_then(|_| gpu.sync()).map_err(|e| match e {
        // Said here as well as by the tensor: the step as a whole needs a larger adapter.
        Error::TooLarge { .. } => Error::Invalid(format!(
            "fsd-step: one step of {} ({dtype}) does not fit {}: {e}. The step's sizes are generate's for this prior: run it on an adapter with a larger storage binding limit (`fsd3d info` shows it), or use --quick",
            source.name(),
            gpu.adapter_name()
        )),
        e => e,
    })?;
    let warmup_ms = warm.elapsed().as_secs_f64() * 1e3;

    let before = field_params(gpu, &run)?;
    let first_step = run.step;
    let timed = Instant::now();
    let mut steps = 0u64;
    // Back to back, as `generate`'s loop: each step is one submit, nothing waits between them.
    loop {
        run.step()?;
        steps += 1;
        let done = match args.steps {
            Some(n) => steps >= n,
            None => timed.elapsed() >= seconds,
        };
        if done {
            break;
        }
    }
    gpu.sync()?;
    let ms_per_step = timed.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let after = field_params(gpu, &run)?;
    if let Some(i) = after.iter().position(|v| !v.is_finite()) {
        let hint = if dtype == DType::F16 { " (f16 activations may overflow: try --dtype f32)" } else { "" };
        return Err(Error::Invalid(format!(
            "fsd-step: field parameter {i} is {} after the timed steps: the step made a non-finite gradient{hint}",
            after[i]
        )));
    }
    let field_change = before.iter().zip(&after).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / before.len().max(1) as f64;

    let shading = format!(
        "{:?}{}",
        run.shading_at(first_step),
        if run.cfg.loss.orientation_at(first_step) > 0.0 { ", normals (orientation loss)" } else { "" }
    )
    .to_lowercase();
    let timestamps = gpu.profile_uses_timestamps();
    let (profiled_step, kernels, sections) = if timestamps {
        let was_on = gpu.is_profiling();
        gpu.set_profiling(true)?;
        gpu.profile_reset();
        let step = run.step;
        let r = run.step().and_then(|_| gpu.sync());
        if !was_on {
            gpu.set_profiling(false)?;
        }
        r?;
        let out = (Some(step), gpu.profile_report(), gpu.profile_sections());
        gpu.profile_reset();
        out
    } else {
        (None, Vec::new(), Vec::new())
    };
    let kernel_ms: f64 = kernels.iter().map(|e| e.total_ms).sum();

    let c = &run.cfg;
    let [ch, h, w] = prior.sample_shape();
    let [ih, iw] = prior.image_size();
    let context = prior.unet.config.cross_attention_dim.expand(1, "cross_attention_dim")?[0];
    let f = &c.scene.field;
    let vae = prior.vae.is_some();
    let samples = if vae { format!(" -> latents {ch}x{w}x{h}") } else { " (pixel prior)".into() };
    Ok(FsdStepReport {
        bench: FSD_STEP,
        model: source.name(),
        dtype: dtype.to_string(),
        adapter: gpu.adapter_name(),
        shapes: format!(
            "render {}x{} -> image {iw}x{ih}{samples}; UNet batch {}, context 77x{context}",
            c.camera.width,
            c.camera.height,
            2 * c.camera.batch_size
        ),
        vae,
        scene: format!(
            "hash grid {}x{}x2^{}, MLPs {}, <= {} samples/ray",
            f.levels, f.features_per_level, f.log2_table_size, f.hidden, c.scene.render.samples_per_ray
        ),
        shading,
        text: source.text_note(),
        load_s,
        warmup_ms,
        ms_per_step,
        steps,
        first_step,
        field_change,
        timestamps,
        profiled_step,
        kernel_ms: profiled_step.map(|_| kernel_ms),
        parts: if profiled_step.is_some() { parts(&kernels, &sections, kernel_ms) } else { Vec::new() },
        families: families(&kernels, kernel_ms),
    })
}

/// The report as text.
pub fn format_report(r: &FsdStepReport) -> String {
    let mut s = format!("fsd-step: {}, {}, on {}\n", r.model, r.dtype, r.adapter);
    let (encode, encode_backward) = if r.vae { (" -> VAE encode", " -> VAE encoder backward") } else { ("", "") };
    s.push_str(&format!(
        "  one `fsd3d generate` iteration (fsd): render -> resize{encode} -> UNet CFG pair -> distillation gradient\n  \
         {encode_backward} -> resize backward -> render/field backward -> Adam, one submit\n"
    ));
    s.push_str(&format!("  shapes:  {}\n  scene:   {}; {}\n  text:    {}\n", r.shapes, r.scene, r.shading, r.text));
    s.push_str(&format!("  load + setup {:.1} s; warm-up step {:.1} ms (compiles the pipelines)\n", r.load_s, r.warmup_ms));
    let last = r.first_step + r.steps - 1;
    s.push_str(&format!(
        "  {:.3} ms/step over {} step{} (steps {}..={last}, back to back)\n",
        r.ms_per_step,
        r.steps,
        if r.steps == 1 { "" } else { "s" },
        r.first_step
    ));
    s.push_str(&format!("  field parameters: mean |change| {:.3e} over the timed steps\n", r.field_change));
    match (r.profiled_step, r.kernel_ms) {
        (Some(step), Some(total)) => {
            s.push_str(&format!("  step {step} profiled (timestamps): {total:.3} ms of kernel time\n"));
            s.push_str(&format!("    {:<44} {:>7} {:>12} {:>7}\n", "part", "calls", "ms", "share"));
            for (p, (_, label)) in r.parts.iter().zip(PARTS) {
                s.push_str(&format!("    {label:<44} {:>7} {:>12.3} {:>6.1}%\n", p.calls, p.ms, 100.0 * p.share));
            }
            s.push_str(&format!("    {:<44} {:>7} {:>12} {:>7}\n", "kernel family", "calls", "ms", "share"));
            for f in &r.families {
                s.push_str(&format!("    {:<44} {:>7} {:>12.3} {:>6.1}%\n", f.name, f.calls, f.ms, 100.0 * f.share));
            }
        }
        _ => s.push_str("  no per-kernel breakdown: this adapter has no timestamp queries (or they are switched off)\n"),
    }
    s
}

/// `fsd3d bench fsd-step`: measures and prints each storage type asked for
/// ([`dtypes`]); the reports come back as [`Measurement`]s too.
pub fn run(gpu: &Gpu, args: &BenchArgs) -> Result<Vec<FsdStepReport>> {
    if args.variants.is_some() || args.autotune {
        return Err(Error::Invalid("--variants and --autotune compare kernel variants; bench fsd-step times whole iterations: leave them out".into()));
    }
    let source = PriorSource::from_args(args)?;
    let mut out = Vec::new();
    for dtype in dtypes(gpu, args)? {
        let r = measure(gpu, &source, dtype, args)?;
        if args.json {
            println!("{}", serde_json::to_string(&r).expect("the report serialises"));
        } else {
            print!("{}", format_report(&r));
        }
        out.push(r);
    }
    Ok(out)
}

impl FsdStepReport {
    /// The report as a row of the other benches' table.
    pub fn measurement(&self) -> Measurement {
        Measurement {
            kernel: format!("fsd-step {}", self.model),
            shape: self.shapes.clone(),
            dtype: self.dtype.clone(),
            adapter: self.adapter.clone(),
            ms: self.ms_per_step,
            gflops: None,
            gbps: None,
            iterations: self.steps as u32,
        }
    }
}
