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
}

impl GpuArgs {
    fn open(&self, profile: bool) -> Result<Arc<Gpu>> {
        let opts = GpuOptions {
            adapter: self.adapter.clone(),
            disable: Features::parse_list(&self.disable_features)?,
            profile,
            sync_each_dispatch: self.sync_each_kernel || std::env::var("FSD3D_SYNC").is_ok_and(|v| v != "0"),
            shader_dir: self.shaders.clone(),
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
