//! GPU memory: new buffers under an optional budget (`--memory-limit`), and
//! the out-of-memory error that says which tensor did not fit, how much was
//! in use, and what would make the work smaller.
//!
//! Two limits can be hit. The budget is the user's (or a test's): it is
//! checked before the driver is asked, after the pool has given back its
//! idle buffers. The device's own memory is the driver's: its refusal is
//! caught in an error scope around the allocation, so it becomes the same
//! error instead of an abort at the next submit. wgpu cannot tell how much
//! memory a device has, so only the budget can be checked ahead of time.
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::pool::STORAGE_USAGE;
use crate::gpu::tensor::DType;

/// Environment variable: the memory budget, as `--memory-limit` takes it.
pub const ENV_MEMORY_LIMIT: &str = "FSD3D_MEMORY_LIMIT";

/// What the device is doing, for the out-of-memory error: the work and the
/// settings that make it need less memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPhase {
    /// "loading the prior's weights", as in "… does not fit while loading …".
    pub doing: &'static str,
    /// What to change, as a sentence: "store the weights in f16 (--dtype f16)".
    pub smaller: &'static str,
}

impl MemoryPhase {
    pub const LOADING_PRIOR: MemoryPhase = MemoryPhase {
        doing: "loading the prior's weights",
        smaller: "store the weights in f16 (--dtype f16, where the adapter has SHADER_F16), or use a smaller model",
    };
    pub const CREATING_SCENE: MemoryPhase = MemoryPhase {
        doing: "creating the scene",
        smaller: "use a smaller hash grid ([scene.field] log2_table_size in --config)",
    };
    pub const TRAINING_STEP: MemoryPhase = MemoryPhase {
        doing: "in a training step",
        smaller: "render smaller or fewer training views ([camera] width, height and batch_size in --config), \
                  keep fewer samples ([scene.render] max_samples_total), use a smaller hash grid \
                  ([scene.field] log2_table_size), or store the prior in f16 (--dtype f16)",
    };
    pub const WRITING_OUTPUTS: MemoryPhase = MemoryPhase {
        doing: "while writing the outputs",
        smaller: "make the outputs smaller ([output] render_size and mesh_resolution in the run's config.toml), \
                  then `fsd3d generate --resume <run folder>` writes them again",
    };
    pub const SAMPLING: MemoryPhase = MemoryPhase {
        doing: "while sampling",
        smaller: "sample at a smaller size (--height/--width) or in f16 (--dtype f16)",
    };
    /// When no phase was named.
    pub const ANY: MemoryPhase = MemoryPhase {
        doing: "",
        smaller: "use f16 storage (--dtype f16), smaller images or batches, or a GPU with more memory",
    };
}

/// Restores the phase before it when dropped.
pub struct PhaseGuard<'a> {
    slot: &'a Mutex<MemoryPhase>,
    before: MemoryPhase,
}

impl Drop for PhaseGuard<'_> {
    fn drop(&mut self) {
        *self.slot.lock().unwrap() = self.before;
    }
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024; "i"
/// and "B" are optional: `512M`, `512MiB`, `1.5GB`).
pub fn parse_bytes(text: &str) -> Result<u64> {
    let bad = || Error::Invalid(format!("memory size {text:?}: expected bytes or a number with K, M, G or T, e.g. 512MiB or 2G"));
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `12.5 MiB`, as the errors print sizes.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

/// The tensor a new buffer is for, as the error names it.
pub(crate) struct Request<'a> {
    pub what: &'a str,
    pub shape: &'a [usize],
    pub dtype: DType,
}

impl Gpu {
    /// Names the work the next allocations belong to, until the guard drops.
    pub fn memory_phase(&self, phase: MemoryPhase) -> PhaseGuard<'_> {
        let before = std::mem::replace(&mut *self.memory_phase.lock().unwrap(), phase);
        PhaseGuard { slot: &self.memory_phase, before }
    }

    /// The memory budget in bytes, if one was set.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// Bytes of the buffers the engine holds (tensors in use and idle pooled ones).
    pub fn memory_held(&self) -> u64 {
        self.pool.held_bytes()
    }

    /// A new storage buffer of `size` bytes for `request`, filled with
    /// `contents` when given (which must be `size` bytes long): within the
    /// budget, and without letting the driver's out-of-memory abort the run.
    pub(crate) fn new_buffer(&self, request: &Request<'_>, size: u64, contents: Option<&[u8]>) -> Result<wgpu::Buffer> {
        self.check_lost()?;
        if let Some(limit) = self.memory_limit
            && self.pool.held_bytes() + size > limit
        {
            // Idle buffers are the first to go: they are only a cache.
            self.pool.trim();
            if self.pool.held_bytes() + size > limit {
                return Err(self.out_of_memory(request, size, format!("--memory-limit is {}", human_bytes(limit))));
            }
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(request.what),
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        if let Some(data) = contents {
            // Through the queue rather than mapped at creation: on a lost
            // device a mapping panics inside wgpu, a queued write only fails.
            // The write lands before the next submit's commands, and nothing
            // recorded before it can read a buffer this new.
            self.queue.write_buffer(&buffer, 0, data);
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            // Freeing the idle buffers may make room for the next try, but
            // this one is reported: a silent retry would hide a tight fit.
            self.pool.trim();
            return Err(self.out_of_memory(request, size, format!("the device refused it ({e})")));
        }
        Ok(buffer)
    }

    fn out_of_memory(&self, request: &Request<'_>, size: u64, limit: String) -> Error {
        let phase = *self.memory_phase.lock().unwrap();
        Error::OutOfMemory(Box::new(crate::error::OutOfMemory {
            what: request.what.to_string(),
            shape: request.shape.to_vec(),
            dtype: request.dtype.name(),
            bytes: human_bytes(size),
            held: human_bytes(self.pool.held_bytes()),
            limit,
            doing: if phase.doing.is_empty() { String::new() } else { format!(" {}", phase.doing) },
            smaller: phase.smaller,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes(" 64 KiB ").unwrap(), 64 << 10);
        for bad in ["", "M", "12X", "-5M", "0", "1e9", "nan", "99999999999T"] {
            let e = parse_bytes(bad).unwrap_err().to_string();
            assert!(e.contains("512MiB"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sizes_print_in_the_largest_fitting_unit() {
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
