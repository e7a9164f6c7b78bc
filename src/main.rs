//! The fsd3d command line: parse, call the library, report. Nothing else.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fsd3d::gpu::{Features, Gpu, GpuOptions};
use fsd3d::models::pixel_prior::SamplingSpec;

#[derive(Parser)]
#[command(name = "fsd3d", version, about = "Text-to-3D with Flow Score Distillation on wgpu")]
struct Cli {
    #[command(flatten)]
    gpu: GpuArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GpuArgs {
    /// Adapter to use: a case-insensitive part of its name (see `fsd3d info --all`).
    #[arg(long, global = true, env = "FSD3D_ADAPTER")]
    adapter: Option<String>,
    /// Optional features to switch off: comma list of f16, f32-atomics, subgroups, timestamps, coop-matrix, all.
    #[arg(long, global = true, env = "FSD3D_DISABLE_FEATURES", default_value = "")]
    disable_features: String,
    /// Directory of .wgsl files that replace the built-in shaders, file by file.
    #[arg(long, global = true, env = "FSD3D_SHADERS")]
    shaders: Option<PathBuf>,
    /// Submit and wait after every kernel (slow; finds the first failing one).
    #[arg(long, global = true)]
    sync_each_kernel: bool,
    /// Kernel variant for a family, e.g. `--variant matmul=simple` (repeatable; env FSD3D_VARIANTS=a=b,c=d).
    #[arg(long = "variant", global = true, value_name = "FAMILY=NAME")]
    variants: Vec<String>,
    /// A budget for the GPU memory the engine allocates (e.g. 6GiB, 512M): work past it stops with an
    /// error that names the tensor and what to make smaller, before the driver runs out.
    #[arg(long, global = true, env = "FSD3D_MEMORY_LIMIT", value_name = "SIZE")]
    memory_limit: Option<String>,
}

impl GpuArgs {
    fn open(&self, profile: bool) -> Result<Arc<Gpu>> {
        let opts = GpuOptions {
            adapter: self.adapter.clone(),
            disable: Features::parse_list(&self.disable_features)?,
            profile,
            sync_each_dispatch: self.sync_each_kernel || std::env::var("FSD3D_SYNC").is_ok_and(|v| v != "0"),
            shader_dir: self.shaders.clone(),
            variants: {
                let mut v = fsd3d::gpu::device::parse_variants(&std::env::var(fsd3d::gpu::device::ENV_VARIANTS).unwrap_or_default())?;
                for item in &self.variants {
                    v.extend(fsd3d::gpu::device::parse_variants(item)?);
                }
                v
            },
            emulate_coop_matrix: std::env::var(fsd3d::gpu::device::ENV_EMULATE_COOP).is_ok_and(|v| v != "0" && !v.is_empty()),
            memory_limit: self.memory_limit.as_deref().filter(|s| !s.is_empty()).map(fsd3d::gpu::memory::parse_bytes).transpose()?,
        };
        Ok(Gpu::new(&opts)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show the adapter, backend, features and limits in use.
    Info {
        /// List every adapter wgpu can see.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure kernels: one line per case (kernel, shape, dtype, adapter, ms, GFLOP/s or GB/s).
    Bench(fsd3d::bench::BenchArgs),
    /// Run one module of a diffusers checkpoint on tensors from a safetensors file.
    Forward {
        /// A pipeline folder or the component's own folder (config.json + *.safetensors); for inception, its .safetensors file.
        #[arg(long)]
        model: Option<PathBuf>,
        /// unet | text-encoder | vae-encode | vae-decode | clip-image | clip-text | inception
        #[arg(long)]
        module: String,
        /// Input tensors by name (see `fsd3d forward --help` in the docs).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the output tensors (f32).
        #[arg(long)]
        output: PathBuf,
        /// Storage type of weights and activations (f16 needs SHADER_F16).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// DDIM text-to-image with a diffusers pipeline (default: the embedded prior).
    Sample {
        /// The prompt.
        prompt: String,
        /// Pipeline folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, vae/), or a single-file checkpoint (.safetensors, its LDM config YAML beside it).
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Negative prompt (default: the empty prompt).
        #[arg(long)]
        negative: Option<String>,
        #[command(flatten)]
        size: SizeArgs,
        /// Initial noise: a safetensors file with `latents` [1, C, h, w], instead of the seeded noise; its h × w sets the image size.
        #[arg(long)]
        latents: Option<PathBuf>,
        #[arg(long, default_value = "sample.png")]
        out: PathBuf,
        /// Storage type of weights and activations: f32, f16, or auto (f16 for Stable Diffusion on a GPU, else f32).
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Print per-kernel timings at the end and write them beside the output as JSON.
        #[arg(long)]
        profile: bool,
    },
    /// 2D distillation of one image (the paper's Table 3 settings by default).
    Image {
        prompt: String,
        /// sds | nfsd | fsd | fsd-euler | ddim | csd
        #[arg(long, default_value = "fsd")]
        method: String,
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Steps (default: 500 for Adam methods, 50 for fsd-euler and ddim).
        #[arg(long)]
        steps: Option<usize>,
        /// Guidance scale (default per method, Table 3).
        #[arg(long)]
        cfg: Option<f32>,
        /// Adam learning rate (default per method, Table 3).
        #[arg(long)]
        lr: Option<f32>,
        /// Negative prompt (NFSD's default list for nfsd).
        #[arg(long)]
        negative: Option<String>,
        #[command(flatten)]
        size: SizeArgs,
        #[arg(long, default_value = "image.png")]
        out: PathBuf,
        /// Storage type of weights and activations: f32, f16, or auto (f16 for Stable Diffusion on a GPU, else f32).
        #[arg(long, default_value = "auto")]
        dtype: String,
        #[arg(long)]
        profile: bool,
    },
    /// Text to 3D: optimise a NeRF with FSD (or SDS / NFSD) and write renders, a turntable, a mesh and a summary.
    Generate(GenerateArgs),
    /// The paper's evaluation: every prompt × method × seed as a 3D run (reused or resumed when its folder has one), the DDIM reference, results.md/json and a figure per prompt.
    Eval(EvalArgs),
    /// Check a prior with a classifier (the embedded one): DDIM samples of every "a {colour} {shape}" prompt × seeds, judged by the classifier, and one open prompt over many seeds.
    PriorCheck(PriorCheckArgs),
    /// The paper's CLIP score of images against a prompt: 100 × the cosine of their CLIP embeddings.
    ClipScore {
        /// A transformers CLIPModel folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json), e.g. openai/clip-vit-base-patch32.
        #[arg(long)]
        model: PathBuf,
        /// The text the images are scored against.
        #[arg(long)]
        prompt: String,
        /// PNG images (any size: CLIP's preprocessing resizes and crops them).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of prompts as JSON: {"input_ids": [[...77 ints...], ...]}.
    Tokenize {
        /// Model folder (a diffusers pipeline, or its tokenizer/ folder); default: the embedded prior.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The prompts.
        #[arg(required = true)]
        prompts: Vec<String>,
    },
}

#[derive(Args)]
struct GenerateArgs {
    /// The prompt (not needed with --resume or --prompts).
    #[arg(required_unless_present_any = ["resume", "prompts"], conflicts_with = "prompts")]
    prompt: Option<String>,
    /// A batch of assets: a text file with one prompt per line, each run in
    /// OUT/<prompt>-<method>-s<seed> (OUT: --out, default runs); finished ones are skipped, killed ones resume.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    prompts: Option<PathBuf>,
    /// With --prompts: run the I-th of N disjoint slices of the prompts (a Slurm array task, a Kubernetes Job index).
    #[arg(long, value_name = "I/N", requires = "prompts", conflicts_with = "unit")]
    shard: Option<String>,
    /// With --prompts: run only the K-th prompt (0-based, comments and blank lines not counted).
    #[arg(long, value_name = "K", requires = "prompts")]
    unit: Option<usize>,
    /// fsd | sds | nfsd | fsd-constant | csd | vsd (VSD trains a LoRA particle score beside the scene: about 3× a step)
    #[arg(long, default_value = "fsd")]
    method: String,
    #[arg(long)]
    seed: Option<u64>,
    /// Optimisation steps (default per prior: 300 for the embedded prior, 10 000 for Stable Diffusion).
    #[arg(long)]
    steps: Option<u64>,
    /// Pipeline folder, or a single-file checkpoint (.safetensors with its LDM config YAML beside it) (default: $FSD3D_MODEL, else the embedded prior).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A TOML file with any keys of the run config (see `config.toml` of a run) to change.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (default: runs/<prompt>-<method>-s<seed>); with --prompts, the folder of the batch's runs (default: runs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (its config.toml is used; --steps may extend it).
    #[arg(long, conflicts_with_all = ["prompt", "config", "model", "out"])]
    resume: Option<PathBuf>,
    /// Guidance scale (default per prior: 7.5 embedded, 100 Stable Diffusion).
    #[arg(long)]
    cfg: Option<f32>,
    /// World-map noise: angular span Θ of one patch, degrees (default 180).
    #[arg(long)]
    theta: Option<f64>,
    /// World-map noise: blend β, 1 = fully deterministic (default 1).
    #[arg(long)]
    beta: Option<f32>,
    /// World-map noise: opacity threshold α0 of the foreground mask (default 0.5).
    #[arg(long)]
    alpha0: Option<f32>,
    /// World-map noise: redraw the background noise every step instead of keeping it fixed.
    #[arg(long)]
    fresh_background: bool,
    /// Storage type of the prior's weights and activations: f32, f16, or auto
    /// (the default: f16 for Stable Diffusion on a GPU, else f32; config.toml records what it resolved to).
    #[arg(long)]
    dtype: Option<String>,
    /// Print per-kernel timings at the end and write them as profile.json in the output folder.
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Text file with one prompt per line (blank lines and lines starting with # are skipped).
    #[arg(long)]
    prompts: PathBuf,
    /// Seeds, comma-separated (the first half against the second for Cross-FID).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    seeds: Vec<u64>,
    /// Methods, comma-separated: fsd, sds, nfsd, fsd-constant, csd, vsd (table rows in this order).
    #[arg(long, value_delimiter = ',', default_value = "fsd,sds")]
    methods: Vec<String>,
    /// Pipeline folder or single-file checkpoint (default: $FSD3D_MODEL, else the embedded prior); without a classifier/ it needs --clip and/or --inception.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Optimisation steps of every run (default per prior: 300 for the embedded prior, 10 000 for Stable Diffusion).
    #[arg(long)]
    steps: Option<u64>,
    /// A TOML file with any keys of the run config to change in every run.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: results.md, results.json, figure_<prompt>.png and runs/.
    #[arg(long)]
    out: PathBuf,
    /// Views per object for the classifier (the paper: 24).
    #[arg(long, default_value_t = 24)]
    views: usize,
    /// Side of the figure's renders as a multiple of the prior's resolution (4: 128² for the embedded prior).
    #[arg(long, default_value_t = 4)]
    figure_scale: u32,
    /// DDIM steps of the reference row.
    #[arg(long, default_value_t = 50)]
    ddim_steps: usize,
    /// Guidance scale of the reference row [default: the prior's `sampling` in fsd3d_prior.json, else 7.5].
    #[arg(long)]
    ddim_cfg: Option<f32>,
    /// DDIM's η in the reference row [default: the prior's, else 0].
    #[arg(long)]
    ddim_eta: Option<f32>,
    /// DDIM samples per seed in the reference row (Cross-FID needs at least 2 images per seed half).
    #[arg(long, default_value_t = 6)]
    ddim_samples: usize,
    /// Leave out the DDIM reference row.
    #[arg(long)]
    no_ddim: bool,
    /// Ablation: expand fsd into one row per world-map blend β, e.g. 0,0.25,0.5,0.75,1.
    #[arg(long, value_delimiter = ',')]
    beta: Vec<f32>,
    /// Ablation: expand fsd into one row per world-map patch span Θ in degrees, e.g. 120,180,240,300,360.
    #[arg(long, value_delimiter = ',')]
    theta: Vec<f64>,
    /// The paper's CLIP score: a transformers CLIPModel folder (e.g. openai/clip-vit-base-patch32, with its tokenizer files).
    #[arg(long)]
    clip: Option<PathBuf>,
    /// The paper's IS and Cross-FID on Inception-v3: pytorch-fid's weights converted by tools/convert_inception.py.
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Write the plan (OUT/plan.json: its units, numbered) and print the number of units; run nothing.
    #[arg(long, conflicts_with_all = ["shard", "unit", "report"])]
    plan: bool,
    /// Run the I-th of N disjoint slices of the units (a Slurm array task, a Kubernetes Job index); no results.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["unit", "report"])]
    shard: Option<String>,
    /// Run one unit of the plan (its number in plan.json); no results.
    #[arg(long, value_name = "K", conflicts_with = "report")]
    unit: Option<usize>,
    /// Run nothing: results.md / .json and the figures from the units that are complete, naming the missing ones.
    #[arg(long)]
    report: bool,
}

#[derive(Args)]
struct PriorCheckArgs {
    /// Pipeline folder (default: $FSD3D_MODEL, else the embedded prior); it needs a classifier/.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Seeds, comma-separated: every prompt is drawn once per seed.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    seeds: Vec<u64>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Samples drawn together (one UNet call per step for the batch).
    #[arg(long, default_value_t = 12)]
    batch: usize,
    /// The open prompt, drawn with seeds 0..--open-seeds ("" skips it).
    #[arg(long, default_value = "a red object")]
    open_prompt: String,
    #[arg(long, default_value_t = 16)]
    open_seeds: usize,
    /// Output folder: samples.png, open_prompt.png, prior_check.json and prior_check.md.
    #[arg(long, default_value = "prior-check")]
    out: PathBuf,
    /// Storage type of weights and activations: f32, f16, or auto (f16 for Stable Diffusion on a GPU, else f32).
    #[arg(long, default_value = "auto")]
    dtype: String,
}

/// The image size of `sample` and `image`, as diffusers' `height=` and `width=`.
#[derive(Args, Debug)]
struct SizeArgs {
    /// Image height in pixels, a multiple of the VAE's scale factor [default: the UNet's sample_size × that factor; with `sample --latents`, the latents' own].
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels, a multiple of the VAE's scale factor [default: as --height].
    #[arg(long)]
    width: Option<usize>,
}

impl SizeArgs {
    fn size(&self) -> fsd3d::diffusion::size::ImageSize {
        fsd3d::diffusion::size::ImageSize { height: self.height, width: self.width }
    }
}

/// DDIM settings of a sampling command; what is not given comes from the
/// prior's `fsd3d_prior.json`, else from diffusers' defaults.
#[derive(Args, Debug)]
struct SamplingArgs {
    /// DDIM steps [default: the prior's `sampling` in fsd3d_prior.json, else 50].
    #[arg(long)]
    steps: Option<usize>,
    /// Guidance scale (diffusers' convention; 1 = no guidance) [default: the prior's, else 7.5].
    #[arg(long)]
    cfg: Option<f32>,
    /// DDIM's η: 0 deterministic, 1 ancestral (fresh seeded noise every step) [default: the prior's, else 0].
    #[arg(long)]
    eta: Option<f32>,
}

impl SamplingArgs {
    fn resolve(&self, model_dir: &std::path::Path) -> Result<SamplingSpec> {
        let d = SamplingSpec::for_model(model_dir)?;
        Ok(SamplingSpec { steps: self.steps.unwrap_or(d.steps), cfg: self.cfg.unwrap_or(d.cfg), eta: self.eta.unwrap_or(d.eta) })
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Info { all, json } => info(&cli.gpu, *all, *json),
        Command::Bench(args) => {
            let gpu = cli.gpu.open(false).context("opening the GPU")?;
            fsd3d::bench::run(&gpu, args)?;
            Ok(())
        }
        Command::Forward { model, module, input, output, dtype } => {
            let gpu = cli.gpu.open(false)?;
            let dir = fsd3d::models::model_dir(model.as_deref());
            let inputs = fsd3d::models::forward::read_tensors(input)?;
            let dtype = fsd3d::gpu::DType::parse(dtype)?;
            let outputs = fsd3d::models::forward::run(&gpu, &dir, module, &inputs, dtype)
                .with_context(|| format!("running {module} of {}", dir.display()))?;
            fsd3d::models::forward::write_tensors(output, &outputs)?;
            for (name, t) in &outputs {
                eprintln!("{name}: {:?}", t.shape);
            }
            Ok(())
        }
        Command::Sample { prompt, model, sampling, seed, negative, size, latents, out, dtype, profile } => {
            let gpu = cli.gpu.open(*profile)?;
            let prior = load_pipeline(&gpu, model.as_deref(), dtype)?;
            let sampling = sampling.resolve(&fsd3d::models::model_dir(model.as_deref()))?;
            let steps = &sampling.steps;
            let latents = match latents {
                Some(p) => {
                    let mut t = fsd3d::models::forward::read_tensors(p)?;
                    let l = t.remove("latents").with_context(|| format!("{} has no tensor named `latents`", p.display()))?;
                    Some(fsd3d::diffusion::size::Latents::new(&l.shape, l.data).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            let req = fsd3d::diffusion::sampler::SampleRequest {
                prompt: prompt.clone(),
                negative: negative.clone(),
                steps: *steps,
                cfg: sampling.cfg,
                eta: sampling.eta,
                seed: *seed,
                size: size.size(),
                latents,
            };
            let bar = progress_bar(*steps as u64, "sampling");
            let started = std::time::Instant::now();
            let img = fsd3d::diffusion::sampler::ddim_sample(&gpu, &prior, &req, |i, _| bar.set_position(i as u64))?;
            bar.finish_and_clear();
            write_image(&gpu, &img, out, started)?;
            report_profile(&gpu, *profile, &out.with_extension("profile.json"))
        }
        Command::Image { prompt, method, model, seed, steps, cfg, lr, negative, size, out, dtype, profile } => {
            let gpu = cli.gpu.open(*profile)?;
            let prior = load_pipeline(&gpu, model.as_deref(), dtype)?;
            let m = fsd3d::image2d::Method2d::parse(method)?;
            let mut c = fsd3d::image2d::Image2dConfig::paper_defaults(m);
            c.seed = *seed;
            c.negative = negative.clone();
            c.size = size.size();
            if let Some(v) = steps {
                c.steps = *v;
            }
            if let Some(v) = cfg {
                c.cfg = *v;
            }
            if let Some(v) = lr {
                c.lr = *v;
            }
            let bar = progress_bar(c.steps as u64, method);
            let started = std::time::Instant::now();
            let img = fsd3d::image2d::distill_image(&gpu, &prior, prompt, &c, |i, _, t| {
                bar.set_position(i as u64);
                bar.set_message(format!("{method} t={t}"));
            })?;
            bar.finish_and_clear();
            write_image(&gpu, &img, out, started)?;
            report_profile(&gpu, *profile, &out.with_extension("profile.json"))
        }
        Command::Generate(args) => generate(&cli.gpu, args),
        Command::Eval(args) => eval(&cli.gpu, args),
        Command::PriorCheck(args) => prior_check(&cli.gpu, args),
        Command::ClipScore { model, prompt, images, json } => clip_score(&cli.gpu, model, prompt, images, *json),
        Command::Tokenize { model, prompts } => {
            let dir = fsd3d::models::model_dir(model.as_deref());
            let tok = fsd3d::models::tokenizer::PromptTokenizer::from_dir(&dir)
                .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
            let ids = prompts.iter().map(|p| tok.encode(p)).collect::<fsd3d::Result<Vec<_>>>()?;
            println!("{}", serde_json::json!({ "input_ids": ids }));
            Ok(())
        }
    }
}

fn generate(gpu_args: &GpuArgs, a: &GenerateArgs) -> Result<()> {
    use fsd3d::generate::job::{GenerateJob, GenerateRequest};
    let gpu = gpu_args.open(a.profile)?;
    if let Some(file) = &a.prompts {
        return generate_batch(&gpu, a, file);
    }
    let request = match &a.resume {
        Some(dir) => GenerateRequest::Resume { dir: dir.clone(), steps: a.steps },
        None => new_request(a, a.prompt.clone().expect("clap requires a prompt without --resume or --prompts"), a.out.clone())?,
    };
    let job = GenerateJob::prepare(&gpu, request)?;
    if !run_generate_job(&gpu, &job, a.profile)? {
        std::process::exit(130);
    }
    Ok(())
}

/// A new run of `prompt` with the command's flags.
fn new_request(a: &GenerateArgs, prompt: String, out: Option<PathBuf>) -> Result<fsd3d::generate::job::GenerateRequest> {
    use fsd3d::generate::config::{ConfigFlags, ConfigOverlay};
    Ok(fsd3d::generate::job::GenerateRequest::New {
        prompt,
        method: fsd3d::diffusion::guidance::Method::parse(&a.method)?,
        overlay: a.config.as_deref().map(ConfigOverlay::read).transpose()?,
        flags: ConfigFlags {
            model: a.model.clone(),
            seed: a.seed,
            steps: a.steps,
            cfg: a.cfg,
            theta_deg: a.theta,
            beta: a.beta,
            alpha0: a.alpha0,
            fresh_background: a.fresh_background,
            dtype: a.dtype.clone(),
        },
        out,
    })
}

/// `generate --prompts FILE`: one asset per prompt, as units of a sweep:
/// a finished run is skipped, a killed one resumes from its checkpoint, a
/// run another worker holds (its lock in OUT/locks) is left to it.
fn generate_batch(gpu: &fsd3d::gpu::Gpu, a: &GenerateArgs, file: &std::path::Path) -> Result<()> {
    use fsd3d::generate::{claims, job::GenerateJob};
    let prompts = fsd3d::eval::run::read_prompts(file)?;
    let n = prompts.len();
    let selected = |k: usize| -> Result<bool> {
        Ok(match (&a.shard, a.unit) {
            (Some(s), _) => match fsd3d::eval::run::Selection::parse_shard(s)? {
                fsd3d::eval::run::Selection::Shard { i, n } => k % n == i,
                _ => unreachable!("parse_shard gives a shard"),
            },
            (None, Some(u)) => k == u,
            (None, None) => true,
        })
    };
    if let Some(u) = a.unit.filter(|&u| u >= n) {
        anyhow::bail!("--unit {u}: {} has {n} prompts, numbered 0 to {}", file.display(), n - 1);
    }
    let root = a.out.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let (mut done, mut made, mut busy) = (0, 0, Vec::new());
    for (k, prompt) in prompts.iter().enumerate() {
        if !selected(k)? {
            continue;
        }
        let mut job = GenerateJob::prepare(gpu, new_request(a, prompt.clone(), None)?)?;
        let name = job.out.file_name().expect("a run folder has a name").to_string_lossy().into_owned();
        job.out = root.join(&name);
        if run_is_complete(&job.out, job.cfg.steps) {
            eprintln!("[{}/{n}] {prompt:?}: complete in {}, skipped", k + 1, job.out.display());
            done += 1;
            continue;
        }
        let _claim = match claims::claim(&claims::lock_path(&root, &name), claims::STALE_AFTER)? {
            claims::Claimed::Mine(c) => c,
            claims::Claimed::Busy(holder) => {
                eprintln!("[{}/{n}] {prompt:?}: {holder} is working on it, skipped", k + 1);
                busy.push(name);
                continue;
            }
        };
        job.resume = job.checkpoint().is_file();
        eprintln!("[{}/{n}] {prompt:?}", k + 1);
        if !run_generate_job(gpu, &job, a.profile)? {
            std::process::exit(130);
        }
        made += 1;
    }
    eprintln!("batch {}: {made} runs made, {done} already complete, {} held by other workers", file.display(), busy.len());
    Ok(())
}

/// A run whose summary says it completed its `steps` and whose outputs are there.
fn run_is_complete(dir: &std::path::Path, steps: u64) -> bool {
    let summary = std::fs::read_to_string(dir.join(fsd3d::generate::files::SUMMARY)).ok();
    let v: Option<serde_json::Value> = summary.and_then(|t| serde_json::from_str(&t).ok());
    v.is_some_and(|v| {
        v.get("completed").and_then(|c| c.as_bool()) == Some(true)
            && v.get("steps_done").and_then(|s| s.as_u64()) == Some(steps)
            && v.get("outputs").and_then(|o| o.get("files")).and_then(|f| f.as_array()).is_some_and(|f| {
                f.iter().filter_map(|x| x.as_str()).all(|x| dir.join(x).is_file())
            })
    })
}

/// Runs a prepared job to its end and writes its outputs; false when Ctrl-C
/// (or SIGTERM) stopped it after a checkpoint.
fn run_generate_job(gpu: &fsd3d::gpu::Gpu, job: &fsd3d::generate::job::GenerateJob, profile: bool) -> Result<bool> {
    use fsd3d::generate::job;
    let gpu = gpu;
    let (cfg, out) = (&job.cfg, &job.out);
    let prior = job.load_prior(gpu).with_context(|| format!("loading the pipeline in {}", job.model_dir.display()))?;
    let run = job.start(gpu, &prior);
    let mut run = if job.resume { run.with_context(|| format!("resuming from {}", job.checkpoint().display()))? } else { run? };
    let stop = job::stop_on_ctrl_c();
    if job.restarted {
        eprintln!("{} has no checkpoint yet (the run stopped before its first one): starting it again from step 0", out.display());
    }
    eprintln!(
        "{} \"{}\": {} steps on {} (seed {}), writing to {}{}",
        cfg.method.name(),
        cfg.prompt,
        cfg.steps,
        gpu.adapter_name(),
        cfg.seed,
        out.display(),
        if job.resume { format!(", resuming at step {}", run.step) } else { String::new() }
    );
    let bar = progress_bar(cfg.steps, cfg.method.name());
    bar.set_position(run.step);
    bar.reset_eta();
    let outcome = job::run_to_end(&mut run, out, stop, |r| {
        bar.set_position(r.step);
        if let Some(rms) = r.grad_rms {
            bar.set_message(format!("{} t={} |g|={rms:.3}", cfg.method.name(), r.t));
        }
    })?;
    bar.finish_and_clear();
    if outcome.finish == fsd3d::generate::Finish::Interrupted {
        eprintln!("interrupted at step {}: checkpoint written; continue with `fsd3d generate --resume {}`", run.step, out.display());
        return Ok(false);
    }
    eprintln!(
        "optimised {} steps in {:.1} s ({:.0} ms/step); writing renders and the mesh",
        outcome.steps_done,
        outcome.seconds,
        outcome.mean_step_ms()
    );
    let spinner = indicatif::ProgressBar::new_spinner();
    let outputs = job.write_outputs(gpu, &run, &outcome, |what| spinner.set_message(what.to_string()))?;
    spinner.finish_and_clear();
    if let Some(e) = &outputs.mesh_error {
        eprintln!("warning: no mesh: {e}");
    }
    if let Some(v) = &outputs.verdict {
        let pct = |x: Option<f32>| x.map_or("-".to_string(), |x| format!("{:.0}%", 100.0 * x));
        eprintln!("classifier over the turntable: shape {} colour {} both {}", pct(v.shape_agreement), pct(v.colour_agreement), pct(v.both_agreement));
    }
    eprintln!("wrote {} in {}", outputs.files.join(", "), out.display());
    report_profile(gpu, profile, &out.join("profile.json"))?;
    Ok(true)
}

fn prior_check(gpu_args: &GpuArgs, a: &PriorCheckArgs) -> Result<()> {
    use fsd3d::eval::prior_check as pc;
    let gpu = gpu_args.open(false)?;
    let dir = fsd3d::models::model_dir(a.model.as_deref());
    let prior = load_pipeline(&gpu, Some(&dir), &a.dtype)?;
    let classifier = fsd3d::models::classifier::Classifier::load(&gpu, &dir)
        .with_context(|| format!("prior-check needs a classifier/ in {} (the embedded prior has one)", dir.display()))?;
    let sampling = a.sampling.resolve(&dir)?;
    let plan = pc::PriorCheckPlan {
        seeds: a.seeds.clone(),
        steps: sampling.steps,
        cfg: sampling.cfg,
        eta: sampling.eta,
        batch: a.batch,
        open_prompt: (!a.open_prompt.is_empty() && a.open_seeds > 0).then(|| (a.open_prompt.clone(), a.open_seeds)),
        cell: 64,
    };
    eprintln!("prior-check: {} on {}, writing to {}", dir.display(), gpu.adapter_name(), a.out.display());
    let bar = progress_bar(0, "samples");
    let report = pc::run_prior_check(&gpu, &prior, &classifier, &dir, &plan, &a.out, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let labels = fsd3d::eval::metrics::Labels::of(&classifier);
    print!("{}", pc::report_markdown(&report, &labels));
    eprintln!("wrote samples.png, open_prompt.png, prior_check.json and prior_check.md in {}", a.out.display());
    Ok(())
}

fn eval(gpu_args: &GpuArgs, a: &EvalArgs) -> Result<()> {
    use fsd3d::eval::run::{self as er, EvalEvent, Work};
    let defaults = SamplingSpec::for_model(&fsd3d::models::model_dir(a.model.as_deref()))?;
    let reference = er::DdimReference {
        steps: a.ddim_steps,
        cfg: a.ddim_cfg.unwrap_or(defaults.cfg),
        eta: a.ddim_eta.unwrap_or(defaults.eta),
        samples_per_seed: a.ddim_samples,
    };
    let plan = er::EvalPlan {
        prompts: er::read_prompts(&a.prompts)?,
        seeds: a.seeds.clone(),
        methods: er::expand_methods(&a.methods, &a.beta, &a.theta)?,
        model: a.model.clone(),
        steps: a.steps,
        config: a.config.as_deref().map(fsd3d::generate::config::ConfigOverlay::read).transpose()?,
        views: a.views,
        figure_scale: a.figure_scale,
        reference: (!a.no_ddim).then_some(reference),
        clip: a.clip.clone(),
        inception: a.inception.clone(),
        command_line: std::env::args().map(|s| if s.contains(' ') { format!("\"{s}\"") } else { s }).collect::<Vec<_>>().join(" "),
    };
    plan.validate()?;
    if a.plan {
        let file = plan.claim_folder(&a.out)?;
        println!("{}", file.units.len());
        eprintln!(
            "wrote {}: {} units (run them with --shard I/N, or --unit K for K in 0..{}), then --report",
            a.out.join(er::files::PLAN).display(),
            file.units.len(),
            file.units.len()
        );
        return Ok(());
    }
    let selection = match (&a.shard, a.unit, a.report) {
        (Some(s), _, _) => er::Selection::parse_shard(s)?,
        (None, Some(k), _) => er::Selection::Unit(k),
        (None, None, true) => er::Selection::Report,
        (None, None, false) => er::Selection::All,
    };
    let gpu = gpu_args.open(false)?;
    let stop = fsd3d::generate::job::stop_on_ctrl_c();
    eprintln!(
        "eval: {} prompts × {} methods × {} seeds{} on {}, writing to {}",
        plan.prompts.len(),
        plan.methods.len(),
        plan.seeds.len(),
        if plan.reference.is_some() { " + the DDIM reference" } else { "" },
        gpu.adapter_name(),
        a.out.display()
    );
    // One bar over the units (runs and reference seeds); its message is the current unit's step.
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{pos}/{len}] {elapsed_precise} {msg}").expect("valid template"),
    );
    let mut unit = String::new();
    let summary = er::run_eval_units(&gpu, &plan, &a.out, selection, stop, |e| match e {
        EvalEvent::Unit { index, total, label, prompt, seed, work, step, steps } => {
            bar.set_length(*total as u64);
            bar.set_position(*index as u64);
            unit = format!("{label} · \"{prompt}\" · seed {seed}");
            let what = match work {
                Work::Fresh => format!("step 0/{steps}"),
                Work::Resumed => format!("resuming at step {step}/{steps}"),
                Work::Reused => "reused".to_string(),
                Work::Sampled => "sampling".to_string(),
            };
            bar.set_message(format!("{unit}: {what}"));
        }
        EvalEvent::Step(r) => {
            let g = r.grad_rms.map_or(String::new(), |g| format!(" |g|={g:.3}"));
            bar.set_message(format!("{unit}: step {}/{} t={}{g}", r.step, r.steps, r.t));
        }
        EvalEvent::Sample { samples, step, steps } => bar.set_message(format!("{unit}: {samples} samples, step {step}/{steps}")),
        EvalEvent::Views => bar.set_message(format!("{unit}: rendering and classifying the views")),
        EvalEvent::Writing => {
            bar.set_position(bar.length().unwrap_or(0));
            bar.set_message("writing results and figures");
        }
    })?;
    bar.finish_and_clear();
    let counts = format!(
        "runs: {} fresh, {} resumed, {} reused ({} steps); DDIM samples: {} drawn, {} reused; {:.1} s",
        summary.fresh, summary.resumed, summary.reused, summary.steps_optimised, summary.samples_drawn, summary.samples_reused, summary.wall_seconds
    );
    if !summary.finished {
        eprintln!("interrupted ({counts}): the current run is checkpointed; run the same command again to continue");
        std::process::exit(130);
    }
    for b in &summary.busy {
        eprintln!("skipped {b}: another worker holds it");
    }
    if !summary.missing.is_empty() && summary.results.is_some() {
        eprintln!("{} units missing from the results: {}", summary.missing.len(), summary.missing.join(", "));
    }
    eprintln!("{counts}");
    if let Some(r) = &summary.results {
        // The tables alone; results.md has the notes and per-prompt rows.
        if let Some(m) = &r.metrics {
            eprint!("{}", fsd3d::eval::paper::metrics_markdown(m).split("\n\n").next().unwrap_or(""));
            eprintln!();
        }
        if let Some(e) = &r.evaluation {
            eprint!("{}", fsd3d::eval::report::results_markdown(e).split("\n\n").next().unwrap_or(""));
            eprintln!();
        }
    }
    for f in &summary.files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

fn clip_score(gpu_args: &GpuArgs, model: &std::path::Path, prompt: &str, images: &[PathBuf], json: bool) -> Result<()> {
    use fsd3d::models::{clip, clip_image::ClipPreprocess, tokenizer::PromptTokenizer};
    let gpu = gpu_args.open(false)?;
    let net = clip::ClipModel::load(&gpu, model, fsd3d::gpu::DType::F32).with_context(|| format!("loading the CLIP model in {}", model.display()))?;
    let tokenizer = PromptTokenizer::from_dir(model).with_context(|| format!("the CLIP folder {} needs its tokenizer files", model.display()))?;
    let preprocess = ClipPreprocess::load(model, net.image_size())?;
    let text = gpu.download(&net.text_embeds(&gpu, &[tokenizer.encode(prompt)?])?)?;
    let side = net.image_size();
    let mut scores = Vec::with_capacity(images.len());
    for path in images {
        let img = fsd3d::export::image::read_png(path).with_context(|| format!("reading {} (clip-score reads PNG images)", path.display()))?;
        let pixels = preprocess.apply(&img).with_context(|| format!("preprocessing {}", path.display()))?;
        let x = gpu.upload(&pixels, &[1, 3, side, side], fsd3d::gpu::DType::F32)?;
        scores.push(clip::clip_score(&gpu.download(&net.image_embeds(&gpu, &x)?)?, &text));
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    if json {
        let rows: Vec<_> = images.iter().zip(&scores).map(|(p, s)| serde_json::json!({ "image": p.display().to_string(), "clip_score": s })).collect();
        println!("{}", serde_json::json!({ "model": model.display().to_string(), "prompt": prompt, "images": rows, "mean": mean }));
    } else {
        for (p, s) in images.iter().zip(&scores) {
            println!("{s:.4}\t{}", p.display());
        }
        if scores.len() > 1 {
            println!("{mean:.4}\tmean of {}", scores.len());
        }
    }
    Ok(())
}

fn info(args: &GpuArgs, all: bool, json: bool) -> Result<()> {
    if all {
        for a in fsd3d::gpu::device::list_adapters() {
            println!("{} ({:?}, {:?}, driver {} {})", a.name, a.backend, a.device_type, a.driver, a.driver_info);
        }
    }
    let gpu = args.open(false)?;
    let report = fsd3d::gpu::device::InfoReport::of(&gpu);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Prints the per-kernel profile and writes it as JSON to `path`.
fn report_profile(gpu: &Gpu, profile: bool, path: &std::path::Path) -> Result<()> {
    if !profile {
        return Ok(());
    }
    let entries = gpu.profile_report();
    let timestamps = gpu.profile_uses_timestamps();
    eprint!("{}", fsd3d::gpu::profile::format_report(&entries, timestamps));
    let json = serde_json::json!({ "adapter": gpu.adapter_name(), "timestamps": timestamps, "kernels": entries });
    fsd3d::io::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    eprintln!("profile written to {}", path.display());
    Ok(())
}

fn load_pipeline(gpu: &Gpu, model: Option<&std::path::Path>, dtype: &str) -> Result<fsd3d::models::prior::StableDiffusion> {
    let dir = fsd3d::models::model_dir(model);
    let dtype = fsd3d::models::resolve_dtype(gpu, dtype, &dir)?;
    fsd3d::models::prior::StableDiffusion::load(gpu, &dir, dtype).with_context(|| format!("loading the pipeline in {}", dir.display()))
}

/// Writes a [B, 3, H, W] tensor in [-1, 1] as a PNG and says so: its one
/// image, or its images side by side (a multi-view prior's views).
fn write_image(gpu: &Gpu, img: &fsd3d::gpu::Tensor, out: &std::path::Path, started: std::time::Instant) -> Result<()> {
    let values = gpu.download(img)?;
    let views = (0..img.dim(0)).map(|k| fsd3d::export::image::from_signed_nchw(&values, img.shape(), k)).collect::<std::result::Result<Vec<_>, _>>()?;
    let rgb = if views.len() == 1 { views.into_iter().next().unwrap() } else { fsd3d::export::grid::grid(&views, views.len(), 0)? };
    fsd3d::export::image::write_png(out, &rgb)?;
    eprintln!("wrote {} ({}x{}) in {:.1} s", out.display(), rgb.width, rgb.height, started.elapsed().as_secs_f64());
    Ok(())
}
