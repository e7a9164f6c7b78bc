//! The autotune cache: per adapter and driver, the kernel variant that beat
//! the built-in default by enough to matter, per shape bucket. `fsd3d bench
//! --autotune` writes it (bench::variants); the ops read it for their default
//! choice through [`tuned_variant`] (an explicit variant, in the call or
//! `--variant`, always wins). A cache that cannot be read is reported once
//! and ignored.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Caps, Gpu};

/// Environment variable: the autotune cache file to read and write, or `off`
/// for none. Default: `$XDG_CACHE_HOME/fsd3d/autotune-<adapter>.json`
/// (`~/.cache/fsd3d/…` without XDG_CACHE_HOME).
pub const ENV_AUTOTUNE_CACHE: &str = "FSD3D_AUTOTUNE_CACHE";

/// Version of the cache file layout.
pub(crate) const CACHE_FORMAT: u32 = 1;

/// Sizes round up to powers of two: shapes in one bucket share a winner.
/// Each op names its own buckets from these classes (`ops::matmul::autotune_bucket`, …).
pub fn size_class(x: usize) -> usize {
    x.max(1).next_power_of_two()
}

/// What the variants of these families depend on besides the shape: the
/// subgroup path and its size range, and the matrix units (f16 is in the
/// bucket's dtype; the other features do not change these kernels). Cache
/// entries are per caps key.
pub fn caps_key(caps: Caps) -> String {
    let subgroups = if caps.features.subgroups {
        format!("subgroups {}-{}", caps.subgroup_min_size, caps.subgroup_max_size)
    } else {
        "no subgroups".into()
    };
    // With matrix units the defaults (and the winners against them) differ.
    if caps.features.coop_matrix { format!("{subgroups}, coop-matrix") } else { subgroups }
}

/// The adapter's name as a file name: `llvmpipe-llvm-15-0-6-256-bits`.
pub fn adapter_slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() { "adapter".into() } else { slug.into() }
}

/// Where this device's autotune cache lives (None: switched off, or no home).
pub fn cache_path(gpu: &Gpu) -> Option<PathBuf> {
    match std::env::var_os(ENV_AUTOTUNE_CACHE) {
        Some(v) if v == "off" || v == "none" => return None,
        Some(v) if !v.is_empty() => return Some(PathBuf::from(v)),
        _ => {}
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("fsd3d").join(format!("autotune-{}.json", adapter_slug(&gpu.info().name))))
}

/// One tuned bucket: which variant to use there, and the timings that chose it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedEntry {
    /// [`caps_key`] of the device it was measured with (`subgroups 8-8`, `no subgroups`).
    pub caps: String,
    /// The op family: `matmul`, `conv2d`, `attention`.
    pub family: String,
    pub bucket: String,
    pub variant: String,
    /// The shape that was measured, the default then, and both times.
    pub shape: String,
    pub default: String,
    pub default_ms: Option<f64>,
    pub ms: f64,
}

/// The autotune cache of one adapter: the buckets where a variant other than
/// the default paid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutotuneCache {
    pub format: u32,
    pub adapter: String,
    pub driver: String,
    pub entries: Vec<TunedEntry>,
}

impl AutotuneCache {
    /// An empty cache for this device's adapter and driver.
    pub fn new(gpu: &Gpu) -> AutotuneCache {
        let (adapter, driver) = adapter_and_driver(gpu);
        AutotuneCache { format: CACHE_FORMAT, adapter, driver, entries: Vec::new() }
    }

    /// Reads a cache file: `Ok(None)` when there is none, an error naming the
    /// file when it cannot be used.
    pub fn load(path: &Path) -> Result<Option<AutotuneCache>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { path: path.to_path_buf(), cause: e }),
        };
        let bad = |why: String| {
            Error::Invalid(format!(
                "{}: not a usable autotune cache ({why}); delete it or run `fsd3d bench --autotune` again",
                path.display()
            ))
        };
        let cache: AutotuneCache = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if cache.format != CACHE_FORMAT {
            return Err(bad(format!("format {}, this fsd3d reads format {CACHE_FORMAT}", cache.format)));
        }
        Ok(Some(cache))
    }

    /// Writes the cache (atomically, creating its folder).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("the cache serialises");
        crate::io::write_atomic(path, text.as_bytes())
    }

    /// Whether it was measured on this device's adapter and driver.
    pub fn is_for(&self, gpu: &Gpu) -> bool {
        (self.adapter.clone(), self.driver.clone()) == adapter_and_driver(gpu)
    }

    /// The tuned variant of `family` (op name) for `bucket` on a device with `caps`.
    pub fn lookup(&self, caps: Caps, family: &str, bucket: &str) -> Option<&str> {
        let key = caps_key(caps);
        self.entries
            .iter()
            .find(|e| e.caps == key && e.family == family && e.bucket == bucket)
            .map(|e| e.variant.as_str())
    }

    /// Records `entry`, replacing any for the same device caps, family and bucket.
    pub fn insert(&mut self, entry: TunedEntry) {
        self.remove(&entry.caps.clone(), &entry.family.clone(), &entry.bucket.clone());
        self.entries.push(entry);
    }

    /// Forgets a bucket (the default is the best there again).
    pub(crate) fn remove(&mut self, caps: &str, family: &str, bucket: &str) {
        self.entries.retain(|e| !(e.caps == caps && e.family == family && e.bucket == bucket));
    }
}

pub(crate) fn adapter_and_driver(gpu: &Gpu) -> (String, String) {
    let i = gpu.info();
    (i.name.clone(), format!("{} {}", i.driver, i.driver_info).trim().to_string())
}


/// Caches already read, by (file, adapter and driver): the ops look up on every call.
type Loaded = HashMap<(PathBuf, (String, String)), Option<Arc<AutotuneCache>>>;

fn loaded() -> &'static Mutex<Loaded> {
    static LOADED: OnceLock<Mutex<Loaded>> = OnceLock::new();
    LOADED.get_or_init(Mutex::default)
}

pub(crate) fn remember(gpu: &Gpu, path: &Path, cache: Option<Arc<AutotuneCache>>) {
    loaded().lock().unwrap().insert((path.to_path_buf(), adapter_and_driver(gpu)), cache);
}

/// Reads the cache for this device once, warning (once) when it cannot be used.
fn read_for(gpu: &Gpu, path: &Path) -> Option<Arc<AutotuneCache>> {
    match AutotuneCache::load(path) {
        Ok(None) => None,
        Ok(Some(c)) if c.is_for(gpu) => Some(Arc::new(c)),
        Ok(Some(c)) => {
            eprintln!(
                "warning: ignoring the autotune cache {}: it was measured on {} ({}), not on {}",
                path.display(),
                c.adapter,
                c.driver,
                gpu.adapter_name()
            );
            None
        }
        Err(e) => {
            eprintln!("warning: ignoring the autotune cache: {e}");
            None
        }
    }
}

/// The variant the autotune cache names for `family` (op name) at `bucket` on
/// this device, if any. The ops call this for their default choice only; the
/// bucket is computed only when a cache exists.
pub fn tuned_variant(gpu: &Gpu, family: &str, bucket: impl FnOnce() -> String) -> Option<String> {
    let path = cache_path(gpu)?;
    let key = (path, adapter_and_driver(gpu));
    let cache = {
        let mut map = loaded().lock().unwrap();
        if !map.contains_key(&key) {
            let c = read_for(gpu, &key.0);
            map.insert(key.clone(), c);
        }
        map[&key].clone()?
    };
    cache.lookup(gpu.caps(), family, &bucket()).map(str::to_string)
}

