//! Adapter choice, optional features, limits: the [`Gpu`] every op runs on.
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelCache, ShaderSource};
use crate::gpu::pool::BufferPool;
use crate::gpu::profile::Profiler;
use crate::gpu::recorder::Recorder;

/// Environment variable naming the adapter to use (a case-insensitive substring
/// of its name, as `fsd3d info` prints it). Same as `--adapter`.
pub const ENV_ADAPTER: &str = "FSD3D_ADAPTER";
/// Environment variable listing optional features to switch off, comma
/// separated: `f16`, `f32-atomics`, `subgroups`, `timestamps`, `coop-matrix`
/// (or `all`).
/// Same as `--disable-features`. Lets both the fast path and the fallback be tested.
pub const ENV_DISABLE: &str = "FSD3D_DISABLE_FEATURES";
/// Environment variable: submit and wait after every dispatch (finds the first
/// failing kernel; slow). Any value but `0` turns it on.
pub const ENV_SYNC: &str = "FSD3D_SYNC";

/// The optional features fsd3d uses when the adapter has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    /// f16 storage and arithmetic in shaders (SHADER_F16).
    pub f16: bool,
    /// `atomic<f32>` with atomicAdd (SHADER_FLOAT32_ATOMIC). Reported, but no
    /// kernel takes it now: float atomics add in whatever order they land,
    /// and the hash grid's gradient is scattered in fixed point instead so
    /// that runs are reproducible.
    pub f32_atomics: bool,
    /// Subgroup operations (SUBGROUP); else workgroup-memory reductions.
    pub subgroups: bool,
    /// Timestamp queries for per-kernel profiling (TIMESTAMP_QUERY).
    pub timestamps: bool,
    /// Cooperative matrices (the GPU's matrix units: tensor cores, Metal's
    /// simdgroup matrices) with the configuration the GEMM kernels use:
    /// 16×16×16, f16 operands, f32 accumulator. wgpu's
    /// EXPERIMENTAL_COOPERATIVE_MATRIX; else the workgroup-tiled kernels.
    pub coop_matrix: bool,
}

impl Features {
    pub const ALL: Features = Features { f16: true, f32_atomics: true, subgroups: true, timestamps: true, coop_matrix: true };
    pub const NONE: Features =
        Features { f16: false, f32_atomics: false, subgroups: false, timestamps: false, coop_matrix: false };

    /// Parses a comma-separated list such as `f16,subgroups` (or `all`, or empty).
    pub fn parse_list(s: &str) -> Result<Features> {
        let mut f = Features::NONE;
        for item in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match item.to_ascii_lowercase().as_str() {
                "f16" | "shader-f16" => f.f16 = true,
                "f32-atomics" | "atomics" | "float32-atomic" => f.f32_atomics = true,
                "subgroups" | "subgroup" => f.subgroups = true,
                "timestamps" | "timestamp" => f.timestamps = true,
                "coop-matrix" | "coop" | "cooperative-matrix" | "matrix-units" => f.coop_matrix = true,
                "all" => f = Features::ALL,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown feature {other:?}: expected a comma-separated list of f16, f32-atomics, subgroups, timestamps, coop-matrix, all"
                    )));
                }
            }
        }
        Ok(f)
    }

    fn minus(self, off: Features) -> Features {
        Features {
            f16: self.f16 && !off.f16,
            f32_atomics: self.f32_atomics && !off.f32_atomics,
            subgroups: self.subgroups && !off.subgroups,
            timestamps: self.timestamps && !off.timestamps,
            coop_matrix: self.coop_matrix && !off.coop_matrix,
        }
    }

    /// What the adapter offers. Matrix units count only with the configuration
    /// the kernels are written for ([`has_gemm_coop_config`]), and with f16
    /// and subgroups, which those kernels also use.
    fn from_adapter(f: wgpu::Features, coop_configs: &[wgpu::CooperativeMatrixProperties]) -> Features {
        let f16 = f.contains(wgpu::Features::SHADER_F16);
        let subgroups = f.contains(wgpu::Features::SUBGROUP);
        Features {
            f16,
            f32_atomics: f.contains(wgpu::Features::SHADER_FLOAT32_ATOMIC),
            subgroups,
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            coop_matrix: f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
                && has_gemm_coop_config(coop_configs)
                && f16
                && subgroups,
        }
    }

    fn to_wgpu(self) -> wgpu::Features {
        let mut f = wgpu::Features::empty();
        if self.f16 {
            f |= wgpu::Features::SHADER_F16;
        }
        if self.f32_atomics {
            f |= wgpu::Features::SHADER_FLOAT32_ATOMIC;
        }
        if self.subgroups {
            f |= wgpu::Features::SUBGROUP;
        }
        if self.timestamps {
            f |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if self.coop_matrix {
            f |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        f
    }

    /// Short names of the features that are on, for logs and bench output.
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.f16 {
            v.push("f16");
        }
        if self.f32_atomics {
            v.push("f32-atomics");
        }
        if self.subgroups {
            v.push("subgroups");
        }
        if self.timestamps {
            v.push("timestamps");
        }
        if self.coop_matrix {
            v.push("coop-matrix");
        }
        v
    }

    /// Whether the matrix-unit path can be compiled: cooperative matrices
    /// with f16 operands.
    pub fn coop_hw(self) -> bool {
        self.coop_matrix && self.f16
    }
}

/// Whether one of the adapter's cooperative-matrix configurations is the one
/// the GEMM kernels are written for: 16×16×16, f16 A and B, f32 C.
pub fn has_gemm_coop_config(configs: &[wgpu::CooperativeMatrixProperties]) -> bool {
    configs.iter().any(|c| {
        (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
            && c.ab_type == wgpu::CooperativeScalarType::F16
            && c.cr_type == wgpu::CooperativeScalarType::F32
    })
}

/// One configuration as `fsd3d info` prints it: `16x16x16 f16·f16+f32`.
pub fn describe_coop_config(c: &wgpu::CooperativeMatrixProperties) -> String {
    let t = |t: wgpu::CooperativeScalarType| match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    };
    let sat = if c.saturating_accumulation { " (saturating)" } else { "" };
    format!("{}x{}x{} {}·{}+{}{sat}", c.m_size, c.n_size, c.k_size, t(c.ab_type), t(c.ab_type), t(c.cr_type))
}

/// What the kernels may use on this device: the enabled features plus the
/// subgroup size range (subgroup kernels must work for any size in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub features: Features,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
}

impl Caps {
    /// Capabilities with every optional feature on (subgroup size 8, as on
    /// lavapipe): used to validate shader variants without a device.
    pub fn all() -> Caps {
        Caps { features: Features::ALL, subgroup_min_size: 8, subgroup_max_size: 8 }
    }
    pub fn none() -> Caps {
        Caps { features: Features::NONE, subgroup_min_size: 0, subgroup_max_size: 0 }
    }
}

/// How to open the device. `Default` picks the best adapter with every
/// feature it has; [`GpuOptions::from_env`] reads the `FSD3D_*` variables.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter name; `None` = best available.
    pub adapter: Option<String>,
    /// Optional features to switch off even where the adapter has them.
    pub disable: Features,
    /// Collect per-kernel timings (timestamp queries where the adapter has them).
    pub profile: bool,
    /// Submit and wait after every dispatch.
    pub sync_each_dispatch: bool,
    /// Directory whose `.wgsl` files replace the built-in ones, file by file.
    pub shader_dir: Option<std::path::PathBuf>,
    /// Kernel variant per family (`matmul` -> `simple`), over each op's default.
    pub variants: Vec<(String, String)>,
    /// Treat the device as having matrix units, running their emulated twin
    /// wherever the real ones would run: the defaults, the first-use check
    /// and its fallback, on an adapter without them. A testing instrument
    /// (slow), as `FSD3D_EMULATE_COOP=1`.
    pub emulate_coop_matrix: bool,
    /// A budget for the engine's GPU buffers, in bytes: an allocation past
    /// it is an out-of-memory error naming the tensor (`--memory-limit`,
    /// `FSD3D_MEMORY_LIMIT`). None: only the device's memory limits.
    pub memory_limit: Option<u64>,
}

/// Environment variable: any value but `0` sets [`GpuOptions::emulate_coop_matrix`].
pub const ENV_EMULATE_COOP: &str = "FSD3D_EMULATE_COOP";

/// Environment variable: kernel variants per family, `matmul=simple,conv2d=gemm8x4`.
/// Same as repeating `--variant FAMILY=NAME`.
pub const ENV_VARIANTS: &str = "FSD3D_VARIANTS";

/// Parses `FAMILY=NAME` pairs separated by commas.
pub fn parse_variants(s: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|item| {
            let (f, n) = item.split_once('=').ok_or_else(|| {
                Error::Invalid(format!("variant {item:?} should be FAMILY=NAME, e.g. matmul=simple"))
            })?;
            Ok((f.trim().to_string(), n.trim().to_string()))
        })
        .collect()
}

impl GpuOptions {
    pub fn from_env() -> Result<GpuOptions> {
        let adapter = std::env::var(ENV_ADAPTER).ok().filter(|s| !s.is_empty());
        let disable = match std::env::var(ENV_DISABLE) {
            Ok(s) => Features::parse_list(&s)?,
            Err(_) => Features::NONE,
        };
        let sync_each_dispatch = std::env::var(ENV_SYNC).map(|v| v != "0" && !v.is_empty()).unwrap_or(false);
        let shader_dir = std::env::var_os(crate::gpu::kernel::ENV_SHADER_DIR).map(Into::into);
        let variants = parse_variants(&std::env::var(ENV_VARIANTS).unwrap_or_default())?;
        let emulate_coop_matrix = std::env::var(ENV_EMULATE_COOP).is_ok_and(|v| v != "0" && !v.is_empty());
        let memory_limit = match std::env::var(crate::gpu::memory::ENV_MEMORY_LIMIT) {
            Ok(s) if !s.is_empty() => Some(crate::gpu::memory::parse_bytes(&s)?),
            _ => None,
        };
        Ok(GpuOptions { adapter, disable, profile: false, sync_each_dispatch, shader_dir, variants, emulate_coop_matrix, memory_limit })
    }
}

/// One opened device with everything the ops need: kernels, buffer pool,
/// the open recorder and the profiler.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    caps: Caps,
    limits: wgpu::Limits,
    pub(crate) kernels: KernelCache,
    pub(crate) pool: Arc<BufferPool>,
    pub(crate) recorder: Mutex<Recorder>,
    pub(crate) profiler: Mutex<Profiler>,
    /// Validation errors caught by the uncaptured-error handler, reported at the next flush.
    pub(crate) errors: Arc<Mutex<Vec<String>>>,
    pub(crate) sync_each_dispatch: bool,
    variants: Vec<(String, String)>,
    /// The adapter's cooperative-matrix configurations (whether or not in use).
    coop_configs: Vec<wgpu::CooperativeMatrixProperties>,
    emulate_coop_matrix: bool,
    /// Paths switched off at run time (a first-use check failed), with why.
    switched_off: Mutex<Vec<(&'static str, String)>>,
    /// Kernels that have been through their first use (see [`Gpu::first_use`]).
    used_kernels: Mutex<std::collections::HashSet<crate::gpu::KernelKey>>,
    /// See [`GpuOptions::memory_limit`].
    pub(crate) memory_limit: Option<u64>,
    /// Why the device was lost, once it is (set by wgpu's device-lost callback).
    pub(crate) lost: Arc<Mutex<Option<String>>>,
    /// The work allocations are for, named in out-of-memory errors.
    pub(crate) memory_phase: Mutex<crate::gpu::memory::MemoryPhase>,
}

fn device_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Lists the adapters wgpu can see (compute-capable backends only).
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = new_instance();
    pollster::block_on(instance.enumerate_adapters(compute_backends()))
        .iter()
        .map(|a| a.get_info())
        .collect()
}

fn compute_backends() -> wgpu::Backends {
    // GL has no storage buffers in compute on many drivers: only as a last resort.
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
}

fn new_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = compute_backends();
    wgpu::Instance::new(desc)
}

impl Gpu {
    /// Opens the adapter the options ask for (the best one by default).
    pub fn new(opts: &GpuOptions) -> Result<Arc<Gpu>> {
        let instance = new_instance();
        let adapters = pollster::block_on(instance.enumerate_adapters(compute_backends()));
        if adapters.is_empty() {
            return Err(Error::NoAdapter);
        }
        let adapter = match &opts.adapter {
            Some(want) => {
                let w = want.to_lowercase();
                adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&w)).ok_or_else(|| {
                    Error::AdapterNotFound {
                        wanted: want.clone(),
                        available: list_adapters().iter().map(describe).collect::<Vec<_>>().join(", "),
                    }
                })?
            }
            None => adapters.into_iter().min_by_key(|a| device_rank(a.get_info().device_type)).unwrap(),
        };
        let info = adapter.get_info();
        let coop_configs = adapter.cooperative_matrix_properties();
        let features = Features::from_adapter(adapter.features(), &coop_configs).minus(opts.disable);
        let limits = adapter.limits();
        // Cooperative matrices are one of wgpu's experimental features, which
        // must be opted into. SAFETY: the only experimental feature requested
        // is cooperative matrices, and only where the adapter lists the
        // configuration the kernels use; each matrix-unit kernel is checked
        // against the tiled kernel at first use (ops::gemm's self-check) and
        // switched off, with a warning, where the driver gets it wrong.
        let experimental_features = if features.coop_matrix {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fsd3d"),
            required_features: features.to_wgpu(),
            required_limits: limits.clone(),
            experimental_features,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device { adapter: describe(&info), message: e.to_string() })?;

        // Validation errors become typed errors at the next flush instead of a panic.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));

        // A lost device (driver reset, GPU fault, unplugged eGPU) fails every
        // later call; the reason is kept so that the error says what happened.
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let why = match reason {
                wgpu::DeviceLostReason::Destroyed => "destroyed".to_string(),
                _ => format!("{reason:?}"),
            };
            *lost_sink.lock().unwrap() = Some(if message.is_empty() { why } else { format!("{why}: {message}") });
        });

        let caps = Caps {
            features,
            subgroup_min_size: if features.subgroups { info.subgroup_min_size } else { 0 },
            subgroup_max_size: if features.subgroups { info.subgroup_max_size } else { 0 },
        };
        let source = ShaderSource::new(opts.shader_dir.clone())?;
        let profiler = Profiler::new(&device, &queue, opts.profile, features.timestamps);
        Ok(Arc::new(Gpu {
            kernels: KernelCache::new(source, caps),
            pool: Arc::new(BufferPool::default()),
            recorder: Mutex::new(Recorder::default()),
            profiler: Mutex::new(profiler),
            errors,
            sync_each_dispatch: opts.sync_each_dispatch,
            variants: opts.variants.clone(),
            coop_configs,
            emulate_coop_matrix: opts.emulate_coop_matrix,
            switched_off: Mutex::default(),
            used_kernels: Mutex::default(),
            memory_limit: opts.memory_limit,
            lost,
            memory_phase: Mutex::new(crate::gpu::memory::MemoryPhase::ANY),
            device,
            queue,
            info,
            caps,
            limits,
        }))
    }

    /// Opens the device as the environment says ([`GpuOptions::from_env`]).
    pub fn from_env() -> Result<Arc<Gpu>> {
        Gpu::new(&GpuOptions::from_env()?)
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }
    pub fn caps(&self) -> Caps {
        self.caps
    }
    pub fn features(&self) -> Features {
        self.caps.features
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    /// The cooperative-matrix configurations the adapter offers (listed by
    /// `fsd3d info`; the kernels use one, see [`Features::coop_matrix`]).
    pub fn coop_configs(&self) -> &[wgpu::CooperativeMatrixProperties] {
        &self.coop_configs
    }
    /// Largest tensor (bytes) one storage binding may hold on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }
    /// "name (backend)", as benches and summaries print it.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Why the device was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().unwrap().clone()
    }

    /// [`Error::DeviceLost`] once the device is lost: every call after that
    /// fails, and this error says why instead of the symptom.
    pub(crate) fn check_lost(&self) -> Result<()> {
        match self.lost_reason() {
            Some(reason) => Err(Error::DeviceLost { reason, then: String::new() }),
            None => Ok(()),
        }
    }

    /// Takes and clears the validation errors raised since the last check.
    pub(crate) fn take_errors(&self, context: &str) -> Result<()> {
        self.check_lost()?;
        let mut errs = self.errors.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        // Errors may be the first sign of a lost device, whose callback wgpu
        // runs when the device is next polled: poll, so the error says so.
        let _ = self.device.poll(wgpu::PollType::Poll);
        if let Err(lost) = self.check_lost() {
            errs.clear();
            return Err(lost);
        }
        let message = errs.join("\n");
        errs.clear();
        Err(Error::Validation { context: context.to_string(), message })
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", describe(&self.info))
    }
}

/// What `fsd3d info` prints: the adapter, features in use and the limits that matter.
#[derive(Debug, serde::Serialize)]
pub struct InfoReport {
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub features: Vec<&'static str>,
    /// The adapter's cooperative-matrix configurations, `MxNxK a·b+c`.
    pub coop_matrix_configs: Vec<String>,
    /// Whether the matrix-unit kernels are in use, and if not, why.
    pub coop_matrix: String,
    pub subgroup_size: [u32; 2],
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

impl InfoReport {
    pub fn of(gpu: &Gpu) -> InfoReport {
        let i = gpu.info();
        let l = gpu.limits();
        InfoReport {
            adapter: i.name.clone(),
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
            features: gpu.features().names(),
            coop_matrix_configs: gpu.coop_configs().iter().map(describe_coop_config).collect(),
            coop_matrix: coop_status(gpu),
            subgroup_size: [gpu.caps().subgroup_min_size, gpu.caps().subgroup_max_size],
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        }
    }
}

/// Whether the GEMM kernels use the matrix units, in words.
fn coop_status(gpu: &Gpu) -> String {
    if gpu.features().coop_matrix {
        return "in use: 16x16x16 f16·f16+f32 (switch off with --disable-features coop-matrix)".into();
    }
    if !has_gemm_coop_config(gpu.coop_configs()) {
        return "not in use: no 16x16x16 f16·f16+f32 configuration; kernels without matrix units run instead".into();
    }
    "not in use: switched off, or the adapter lacks f16 or subgroups; kernels without matrix units run instead".into()
}

impl std::fmt::Display for InfoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(f, "adapter:   {}", self.adapter)?;
        writeln!(f, "backend:   {} ({})", self.backend, self.device_type)?;
        writeln!(f, "driver:    {}", self.driver)?;
        let feats = if self.features.is_empty() { "none".to_string() } else { self.features.join(", ") };
        writeln!(f, "features:  {feats}")?;
        let configs = if self.coop_matrix_configs.is_empty() { "none".to_string() } else { self.coop_matrix_configs.join(", ") };
        writeln!(f, "matrix units: {configs}")?;
        writeln!(f, "             {}", self.coop_matrix)?;
        if self.subgroup_size[1] > 0 {
            writeln!(f, "subgroups: size {}..{}", self.subgroup_size[0], self.subgroup_size[1])?;
        }
        writeln!(f, "limits:")?;
        writeln!(f, "  max storage binding       {:.0} MiB", mib(self.max_storage_buffer_binding_size))?;
        writeln!(f, "  max buffer                {:.0} MiB", mib(self.max_buffer_size))?;
        writeln!(f, "  workgroup storage         {} KiB", self.max_compute_workgroup_storage_size / 1024)?;
        writeln!(f, "  invocations / workgroup   {}", self.max_compute_invocations_per_workgroup)?;
        writeln!(f, "  workgroups / dimension    {}", self.max_compute_workgroups_per_dimension)?;
        writeln!(f, "  storage buffers / stage   {}", self.max_storage_buffers_per_shader_stage)
    }
}

impl Gpu {
    /// The variant the user chose for a kernel family (`--variant FAMILY=NAME`),
    /// which the family's op uses when the call itself does not name one.
    pub fn variant_override(&self, family: &str) -> Option<&str> {
        self.variants.iter().rev().find(|(f, _)| f == family).map(|(_, n)| n.as_str())
    }

    /// Whether the device stands in for matrix units with their emulated twin
    /// ([`GpuOptions::emulate_coop_matrix`]).
    pub fn emulates_coop_matrix(&self) -> bool {
        self.emulate_coop_matrix
    }

    /// Switches a kernel path off for the rest of this device's life (the
    /// ops ask [`Gpu::is_switched_off`] before choosing it), printing `why`
    /// once as a warning.
    pub fn switch_off(&self, path: &'static str, why: &str) {
        let mut off = self.switched_off.lock().unwrap();
        if off.iter().all(|(p, _)| *p != path) {
            eprintln!("warning: {why}");
            off.push((path, why.to_string()));
        }
    }

    pub fn is_switched_off(&self, path: &str) -> bool {
        self.switched_off.lock().unwrap().iter().any(|(p, _)| *p == path)
    }

    /// The paths switched off at run time, with the reason.
    pub fn switched_off(&self) -> Vec<(&'static str, String)> {
        self.switched_off.lock().unwrap().clone()
    }

    /// True the first time it is asked about `key` on this device: where an
    /// op checks a kernel once before trusting it.
    pub fn first_use(&self, key: &crate::gpu::KernelKey) -> bool {
        self.used_kernels.lock().unwrap().insert(key.clone())
    }

    /// Allocation counters of the buffer pool.
    pub fn pool_stats(&self) -> crate::gpu::pool::PoolStats {
        self.pool.stats()
    }
}
