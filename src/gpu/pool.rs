//! Buffer reuse between steps: freed tensors hand their buffer back, and the
//! next allocation of a similar size takes it instead of asking the driver.
//!
//! Sizes are rounded up to quarter steps between powers of two (at most 25 %
//! slack), so buffers of nearly the same size share a free list.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Usage of every pooled buffer: kernels read and write it, copies move it.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    stats: Mutex<PoolStats>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub allocations: u64,
    pub reuses: u64,
    pub bytes_allocated: u64,
}

/// A buffer that goes back to its pool when the last tensor using it drops.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    pool: Weak<BufferPool>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().unwrap()
    }
    /// Capacity in bytes (at least what was asked for).
    pub fn capacity(&self) -> u64 {
        self.class
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(b), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            pool.free.lock().unwrap().entry(self.class).or_default().push(b);
        }
    }
}

/// The size class a request of `bytes` is served from.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let p = 63 - bytes.leading_zeros() as u64; // floor(log2)
    let base = 1u64 << p;
    if base == bytes {
        return bytes;
    }
    let quarter = (base / 4).max(1);
    bytes.div_ceil(quarter) * quarter
}

impl BufferPool {
    /// A buffer of at least `bytes`, reused where one is free. Its contents are
    /// whatever the last user left: kernels must overwrite all they expose.
    pub fn get(self: &Arc<Self>, device: &wgpu::Device, bytes: u64) -> Arc<PooledBuffer> {
        let class = size_class(bytes);
        let reused = self.free.lock().unwrap().get_mut(&class).and_then(|v| v.pop());
        let mut stats = self.stats.lock().unwrap();
        let buffer = match reused {
            Some(b) => {
                stats.reuses += 1;
                b
            }
            None => {
                stats.allocations += 1;
                stats.bytes_allocated += class;
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fsd3d pooled"),
                    size: class,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                })
            }
        };
        Arc::new(PooledBuffer { buffer: Some(buffer), class, pool: Arc::downgrade(self) })
    }

    /// Wraps a buffer made elsewhere (an upload) so that it joins the pool when freed.
    pub fn adopt(self: &Arc<Self>, buffer: wgpu::Buffer) -> Arc<PooledBuffer> {
        let class = buffer.size();
        let mut stats = self.stats.lock().unwrap();
        stats.allocations += 1;
        stats.bytes_allocated += class;
        Arc::new(PooledBuffer { buffer: Some(buffer), class, pool: Arc::downgrade(self) })
    }

    /// Frees every idle buffer (after a phase that will not come back, say).
    pub fn trim(&self) {
        self.free.lock().unwrap().clear();
    }

    pub fn stats(&self) -> PoolStats {
        *self.stats.lock().unwrap()
    }

    /// Bytes held by idle buffers.
    pub fn idle_bytes(&self) -> u64 {
        self.free.lock().unwrap().iter().map(|(k, v)| k * v.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_at_most_a_quarter_slack() {
        for bytes in [1u64, 255, 256, 257, 1000, 4096, 4097, 5000, 123_457, 1 << 27] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c <= (bytes.max(256) as f64 * 1.25) as u64 + 1, "{bytes} -> {c}");
        }
        assert_eq!(size_class(5000), size_class(4500), "nearby sizes share a class");
    }
}
