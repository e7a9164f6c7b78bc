//! Kernels: WGSL sources (built in, or swapped from a directory), a small
//! preprocessor, naga validation with file/line errors, and the pipeline cache
//! keyed by [`KernelKey`].
//!
//! ## The preprocessor
//! A kernel source is plain WGSL plus two things:
//! - `{{NAME}}` is replaced by the value of define `NAME` (a missing define is
//!   an error, so a typo cannot silently compile);
//! - lines `#if NAME`, `#if !NAME`, `#else`, `#endif` (nestable) keep or drop
//!   the lines between them; `NAME` is true when defined and not `0`/`false`.
//!   Dropped lines become empty lines so naga's line numbers stay those of the file.
//!
//! - `#include "name.wgsl"` pulls in a shared file (activations, say). WGSL
//!   allows module-scope declarations in any order, so included text is
//!   appended after the file's last line (each file once) and the including
//!   file's line numbers stay true.
//!
//! `enable f16;` is added on the first line when some define's value is `f16`
//! (a storage type), and `enable wgpu_cooperative_matrix;` when the define
//! `COOP_HW` is true (see `shaders/coop.wgsl`): kernels never write enable
//! directives themselves.
//! (naga 30 takes subgroup builtins without `enable subgroups;` and rejects
//! the directive, so none is added for them.)
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::device::Caps;
use crate::gpu::params::{Field, KernelParams};

include!(concat!(env!("OUT_DIR"), "/builtin_shaders.rs"));

/// Environment variable: a directory of `.wgsl` files overriding the built-in
/// ones. Same as `--shaders DIR`.
pub const ENV_SHADER_DIR: &str = "FSD3D_SHADERS";

/// Identifies one compiled pipeline: the shader file (family), its entry point
/// and the defines it was expanded with; and the layout of the parameter
/// block the op passes it, which validation checks against the shader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelKey {
    pub family: &'static str,
    pub entry: &'static str,
    /// Sorted by name, so equal sets compare equal.
    pub defines: Vec<(&'static str, String)>,
    /// The host's uniform block at binding 0 ([`KernelKey::params`]); empty: none.
    pub params: &'static [Field],
}

impl KernelKey {
    pub fn new(family: &'static str, entry: &'static str) -> KernelKey {
        KernelKey { family, entry, defines: Vec::new(), params: &[] }
    }
    /// Declares the parameter block `P` the op passes this kernel.
    pub fn params<P: KernelParams>(mut self) -> KernelKey {
        self.params = P::FIELDS;
        self
    }
    /// Adds (or replaces) a define.
    pub fn def(mut self, name: &'static str, value: impl ToString) -> KernelKey {
        let value = value.to_string();
        match self.defines.binary_search_by_key(&name, |(n, _)| n) {
            Ok(i) => self.defines[i].1 = value,
            Err(i) => self.defines.insert(i, (name, value)),
        }
        self
    }
    /// Adds a boolean flag define (`1` or `0`).
    pub fn flag(self, name: &'static str, on: bool) -> KernelKey {
        self.def(name, if on { "1" } else { "0" })
    }
    pub fn file(&self) -> String {
        format!("{}.wgsl", self.family)
    }
}

impl std::fmt::Display for KernelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.family, self.entry)?;
        for (k, v) in &self.defines {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Where kernel sources come from: the built-in files, or a user directory
/// that overrides them file by file.
#[derive(Clone, Debug, Default)]
pub struct ShaderSource {
    dir: Option<PathBuf>,
}

impl ShaderSource {
    pub fn new(dir: Option<PathBuf>) -> Result<ShaderSource> {
        if let Some(d) = &dir {
            if !d.is_dir() {
                return Err(Error::ShaderDir(d.clone()));
            }
        }
        Ok(ShaderSource { dir })
    }
    pub fn builtin() -> ShaderSource {
        ShaderSource { dir: None }
    }
    /// (path shown in errors, source text) of `file`.
    pub fn load(&self, file: &str) -> Result<(String, String)> {
        if let Some(d) = &self.dir {
            let p = d.join(file);
            if p.is_file() {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::Io { path: p.clone(), cause: e })?;
                return Ok((p.display().to_string(), text));
            }
        }
        BUILTIN_SHADERS
            .iter()
            .find(|(n, _)| *n == file)
            .map(|(n, s)| (format!("shaders/{n} (built in)"), s.to_string()))
            .ok_or_else(|| Error::Shader { file: file.to_string(), message: "no such shader file".into() })
    }
}

fn truthy(defines: &[(&str, String)], name: &str) -> bool {
    defines.iter().any(|(n, v)| *n == name && v != "0" && v != "false")
}

/// Expands `#if` blocks and `{{NAME}}` placeholders (see the module docs);
/// a file with `#include` needs [`preprocess_with`].
pub fn preprocess(file: &str, source: &str, defines: &[(&str, String)]) -> Result<String> {
    preprocess_with(file, source, defines, &|name: &str| {
        Err(Error::Shader { file: file.to_string(), message: format!("#include {name:?}: no shader source to include from") })
    })
}

/// As [`preprocess`], loading included files with `load` (name -> (path, text)).
pub fn preprocess_with(
    file: &str,
    source: &str,
    defines: &[(&str, String)],
    load: &dyn Fn(&str) -> Result<(String, String)>,
) -> Result<String> {
    let mut included = vec![file.to_string()];
    let body = expand(file, source, defines, load, &mut included)?;
    finish(body, defines)
}

fn expand(
    file: &str,
    source: &str,
    defines: &[(&str, String)],
    load: &dyn Fn(&str) -> Result<(String, String)>,
    included: &mut Vec<String>,
) -> Result<String> {
    let err = |line: usize, msg: String| Error::Shader { file: format!("{file}:{}", line + 1), message: msg };
    // Stack of (this block is active, some branch taken already).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut includes: Vec<String> = Vec::new();
    let mut out = String::with_capacity(source.len() + 64);
    for (ln, line) in source.lines().enumerate() {
        let t = line.trim_start();
        let active = stack.iter().all(|(a, _)| *a);
        if let Some(rest) = t.strip_prefix("#if ") {
            let cond = rest.trim();
            let v = match cond.strip_prefix('!') {
                Some(n) => !truthy(defines, n.trim()),
                None => truthy(defines, cond),
            };
            stack.push((v, v));
            out.push('\n');
            continue;
        } else if t.starts_with("#else") {
            let top = stack.last_mut().ok_or_else(|| err(ln, "#else without #if".into()))?;
            top.0 = !top.1;
            top.1 = true;
            out.push('\n');
            continue;
        } else if t.starts_with("#endif") {
            stack.pop().ok_or_else(|| err(ln, "#endif without #if".into()))?;
            out.push('\n');
            continue;
        }
        if !active {
            out.push('\n');
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include") {
            let name = rest.trim().trim_matches('"');
            if !included.iter().any(|n| n == name) {
                included.push(name.to_string());
                includes.push(name.to_string());
            }
            out.push('\n');
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let j = rest[i..].find("}}").ok_or_else(|| err(ln, "unclosed {{".into()))? + i;
            let name = rest[i + 2..j].trim();
            let v = defines
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| err(ln, format!("placeholder {{{{{name}}}}} has no define")))?;
            out.push_str(&v.1);
            rest = &rest[j + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err(err(source.lines().count(), "#if without #endif".into()));
    }
    for name in includes {
        let (path, text) = load(&name)?;
        out.push_str(&format!("// ---- included from {path} ----\n"));
        out.push_str(&expand(&path, &text, defines, load, included)?);
    }
    Ok(out)
}

/// Adds the enable directives on the first line (so line numbers do not move).
fn finish(out: String, defines: &[(&str, String)]) -> Result<String> {
    let mut enables = String::new();
    if defines.iter().any(|(_, v)| v == "f16") {
        enables.push_str("enable f16; ");
    }
    if truthy(defines, "COOP_HW") {
        enables.push_str("enable wgpu_cooperative_matrix; ");
    }
    Ok(enables + &out)
}

fn naga_caps(caps: Caps) -> naga::valid::Capabilities {
    use naga::valid::Capabilities as C;
    let mut c = C::empty();
    if caps.features.f16 {
        c |= C::SHADER_FLOAT16;
    }
    if caps.features.subgroups {
        c |= C::SUBGROUP | C::SUBGROUP_BARRIER;
    }
    if caps.features.f32_atomics {
        c |= C::SHADER_FLOAT32_ATOMIC;
    }
    if caps.features.coop_matrix {
        c |= C::COOPERATIVE_MATRIX;
    }
    c
}

/// Loads, expands and validates one kernel with naga, as the device with
/// `caps` would see it. Errors name the file and line.
pub fn validate(source: &ShaderSource, key: &KernelKey, caps: Caps) -> Result<(String, naga::Module)> {
    let (path, text) = source.load(&key.file())?;
    let expanded = preprocess_with(&path, &text, &key.defines, &|name: &str| source.load(name))?;
    let module = naga::front::wgsl::parse_str(&expanded).map_err(|e| Error::Shader {
        file: path.clone(),
        message: format!("[{key}]\n{}", e.emit_to_string_with_path(&expanded, &path)),
    })?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga_caps(caps));
    if caps.features.subgroups {
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
        validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator.validate(&module).map_err(|e| Error::Shader {
        file: path.clone(),
        message: format!("[{key}]\n{}", e.emit_to_string_with_path(&expanded, &path)),
    })?;
    if !module.entry_points.iter().any(|ep| ep.name == key.entry) {
        return Err(Error::Shader { file: path, message: format!("[{key}] has no entry point {:?}", key.entry) });
    }
    crate::gpu::params::check_against(&module, key.params).map_err(|why| Error::Shader {
        file: path.clone(),
        message: format!("[{key}] the uniform parameter block does not match the host's: {why}"),
    })?;
    Ok((expanded, module))
}

/// Translates one kernel to SPIR-V as the Vulkan backend would, after
/// [`validate`]: the check, without a device, of kernels that need hardware
/// the test machine lacks (the matrix units). Returns the words.
pub fn to_spirv(source: &ShaderSource, key: &KernelKey, caps: Caps) -> Result<Vec<u32>> {
    let (_, module) = validate(source, key, caps)?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga_caps(caps));
    if caps.features.subgroups {
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
        validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    let info = validator
        .validate(&module)
        .map_err(|e| Error::Shader { file: key.file(), message: format!("[{key}] {e}") })?;
    let options = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
    let pipeline = naga::back::spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: key.entry.to_string() };
    naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| Error::Shader { file: key.file(), message: format!("[{key}] SPIR-V: {e}") })
}

/// A compiled kernel: the pipeline and the layout of its bind group 0.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// The bindings the shader declares in group 0, sorted.
    pub bindings: Vec<u32>,
}

/// The layout of group 0 as the module declares it (not only what the entry
/// point happens to use), so that a swapped-in variant that ignores an input
/// still takes the same bind group.
fn declared_layout(module: &naga::Module) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut entries = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if rb.group != 0 {
            continue;
        }
        let ty = match var.space {
            naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
            naga::AddressSpace::Storage { access } => wgpu::BufferBindingType::Storage {
                read_only: !access.contains(naga::StorageAccess::STORE),
            },
            _ => continue,
        };
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: rb.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        });
    }
    entries.sort_by_key(|e| e.binding);
    entries
}

/// KernelKey -> pipeline, compiled on first use.
pub struct KernelCache {
    source: ShaderSource,
    caps: Caps,
    pipelines: Mutex<HashMap<KernelKey, Arc<Pipeline>>>,
}

impl KernelCache {
    pub fn new(source: ShaderSource, caps: Caps) -> KernelCache {
        KernelCache { source, caps, pipelines: Mutex::default() }
    }

    pub fn get(&self, device: &wgpu::Device, key: &KernelKey) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(key) {
            return Ok(p.clone());
        }
        let (expanded, naga_module) = validate(&self.source, key, self.caps)?;
        let label = key.to_string();
        let entries = declared_layout(&naga_module);
        // A driver may still refuse what naga accepted (the experimental
        // matrix-unit shaders above all): caught here, it is this kernel's
        // error, not a surprise at the next flush.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(expanded.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: key.file(), message: format!("[{key}] the driver refused the pipeline: {e}") });
        }
        let bindings = entries.iter().map(|e| e.binding).collect();
        let p = Arc::new(Pipeline { pipeline, layout, bindings });
        self.pipelines.lock().unwrap().insert(key.clone(), p.clone());
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn source(&self) -> &ShaderSource {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_substitutes_and_keeps_line_numbers() {
        let src = "a {{X}}\n#if F\nyes\n#else\nno\n#endif\n#if !F\nneg\n#endif\nz";
        let d = vec![("F", "1".to_string()), ("X", "7".to_string())];
        let out = preprocess("t", src, &d).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0], "a 7");
        assert_eq!(lines[2], "yes");
        assert_eq!(lines[4], "");
        assert_eq!(lines[7], "");
        assert_eq!(lines[9], "z");
        let d0 = vec![("F", "0".to_string()), ("X", "7".to_string())];
        let out0 = preprocess("t", src, &d0).unwrap();
        assert!(out0.contains("no") && out0.contains("neg") && !out0.contains("yes"));
    }

    #[test]
    fn includes_are_appended_once_after_the_file() {
        let load = |name: &str| -> Result<(String, String)> {
            match name {
                "a.wgsl" => Ok(("a.wgsl".into(), "fn a() {}\n#include \"b.wgsl\"".into())),
                "b.wgsl" => Ok(("b.wgsl".into(), "fn b() -> {{T}} {}".into())),
                _ => Err(Error::Invalid(name.into())),
            }
        };
        let src = "#include \"a.wgsl\"\nline2\n#include \"b.wgsl\"";
        let out = preprocess_with("main", src, &[("T", "f32".into())], &load).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "line2", "the includer's lines keep their numbers");
        assert_eq!(out.matches("fn b()").count(), 1, "each file once");
        assert!(out.contains("fn a() {}") && out.contains("fn b() -> f32"));
        assert!(preprocess("t", "#include \"x.wgsl\"", &[]).is_err());
    }

    #[test]
    fn preprocess_rejects_missing_define_and_unbalanced_blocks() {
        assert!(preprocess("t", "{{NOPE}}", &[]).is_err());
        assert!(preprocess("t", "#if A\nx", &[]).is_err());
        assert!(preprocess("t", "#endif", &[]).is_err());
    }

    #[test]
    fn enable_directives_follow_defines() {
        let out = preprocess("t", "var<private> x: {{T}}; // f16", &[("T", "f16".into())]).unwrap();
        assert!(out.starts_with("enable f16; var<private> x: f16;"));
        let out = preprocess("t", "var<private> x: {{T}}; // f16", &[("T", "f32".into())]).unwrap();
        assert!(!out.contains("enable"));
    }
}
