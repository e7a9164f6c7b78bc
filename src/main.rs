//! The fsd3d command line: parse, call the library, report. Nothing else.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fsd3d::gpu::{Features, Gpu, GpuOptions};

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
    /// Optional features to switch off: comma list of f16, f32-atomics, subgroups, timestamps, all.
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
        /// A pipeline folder or the component's own folder (config.json + *.safetensors).
        #[arg(long)]
        model: Option<PathBuf>,
        /// unet | text-encoder | vae-encode | vae-decode
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
        /// Pipeline folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, vae/).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Guidance scale (diffusers' convention; 1 = no guidance).
        #[arg(long, default_value_t = 7.5)]
        cfg: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Negative prompt (default: the empty prompt).
        #[arg(long)]
        negative: Option<String>,
        /// Initial noise: a safetensors file with `latents` [1, C, h, w] (f32), instead of the seeded noise.
        #[arg(long)]
        latents: Option<PathBuf>,
        #[arg(long, default_value = "sample.png")]
        out: PathBuf,
        /// Storage type of weights and activations.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print per-kernel timings at the end and write them beside the output as JSON.
        #[arg(long)]
        profile: bool,
    },
    /// 2D distillation of one image (the paper's Table 3 settings by default).
    Image {
        prompt: String,
        /// sds | nfsd | fsd | fsd-euler | ddim
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
        #[arg(long, default_value = "image.png")]
        out: PathBuf,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long)]
        profile: bool,
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
        Command::Sample { prompt, model, steps, cfg, seed, negative, latents, out, dtype, profile } => {
            let gpu = cli.gpu.open(*profile)?;
            let prior = load_pipeline(&gpu, model.as_deref(), dtype)?;
            let latents = match latents {
                Some(p) => {
                    let t = fsd3d::models::forward::read_tensors(p)?;
                    let l = t.get("latents").with_context(|| format!("{} has no tensor named `latents`", p.display()))?;
                    Some(l.data.clone())
                }
                None => None,
            };
            let req = fsd3d::diffusion::sampler::SampleRequest {
                prompt: prompt.clone(),
                negative: negative.clone(),
                steps: *steps,
                cfg: *cfg,
                seed: *seed,
                latents,
            };
            let bar = progress_bar(*steps as u64, "sampling");
            let started = std::time::Instant::now();
            let img = fsd3d::diffusion::sampler::ddim_sample(&gpu, &prior, &req, |i, _| bar.set_position(i as u64))?;
            bar.finish_and_clear();
            write_image(&gpu, &img, out, started)?;
            report_profile(&gpu, *profile, out)
        }
        Command::Image { prompt, method, model, seed, steps, cfg, lr, negative, out, dtype, profile } => {
            let gpu = cli.gpu.open(*profile)?;
            let prior = load_pipeline(&gpu, model.as_deref(), dtype)?;
            let m = fsd3d::distill::image2d::Method2d::parse(method)?;
            let mut c = fsd3d::distill::image2d::Image2dConfig::paper_defaults(m);
            c.seed = *seed;
            c.negative = negative.clone();
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
            let img = fsd3d::distill::image2d::distill_image(&gpu, &prior, prompt, &c, |i, _, t| {
                bar.set_position(i as u64);
                bar.set_message(format!("{method} t={t}"));
            })?;
            bar.finish_and_clear();
            write_image(&gpu, &img, out, started)?;
            report_profile(&gpu, *profile, out)
        }
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

/// Prints the per-kernel profile and writes it as JSON beside `out`.
fn report_profile(gpu: &Gpu, profile: bool, out: &std::path::Path) -> Result<()> {
    if !profile {
        return Ok(());
    }
    let entries = gpu.profile_report();
    let timestamps = gpu.profile_uses_timestamps();
    eprint!("{}", fsd3d::gpu::profile::format_report(&entries, timestamps));
    let path = out.with_extension("profile.json");
    let json = serde_json::json!({ "adapter": gpu.adapter_name(), "timestamps": timestamps, "kernels": entries });
    fsd3d::io::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    eprintln!("profile written to {}", path.display());
    Ok(())
}

fn load_pipeline(gpu: &Gpu, model: Option<&std::path::Path>, dtype: &str) -> Result<fsd3d::models::prior::StableDiffusion> {
    let dir = fsd3d::models::model_dir(model);
    fsd3d::models::prior::StableDiffusion::load(gpu, &dir, fsd3d::gpu::DType::parse(dtype)?)
        .with_context(|| format!("loading the pipeline in {}", dir.display()))
}

/// Writes image 0 of a [B, 3, H, W] tensor in [-1, 1] as a PNG and says so.
fn write_image(gpu: &Gpu, img: &fsd3d::gpu::Tensor, out: &std::path::Path, started: std::time::Instant) -> Result<()> {
    let rgb = fsd3d::export::image::from_signed_nchw(&gpu.download(img)?, img.shape(), 0)?;
    fsd3d::export::image::write_png(out, &rgb)?;
    eprintln!("wrote {} ({}x{}) in {:.1} s", out.display(), rgb.width, rgb.height, started.elapsed().as_secs_f64());
    Ok(())
}
