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
    /// Of those, the bytes not freed yet (see [`BufferPool::trim`]).
    pub bytes_held: u64,
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
    /// A free buffer of size class `class`, if one is idle. Its contents are
    /// whatever the last user left: kernels must overwrite all they expose.
    pub fn reuse(self: &Arc<Self>, class: u64) -> Option<Arc<PooledBuffer>> {
        let buffer = self.free.lock().unwrap().get_mut(&class).and_then(|v| v.pop())?;
        self.stats.lock().unwrap().reuses += 1;
        Some(Arc::new(PooledBuffer { buffer: Some(buffer), class, pool: Arc::downgrade(self) }))
    }

    /// Takes a new buffer into the pool: it joins the free list when its
    /// last tensor drops, and counts as held until the pool frees it.
    pub fn adopt(self: &Arc<Self>, buffer: wgpu::Buffer) -> Arc<PooledBuffer> {
        let class = buffer.size();
        let mut stats = self.stats.lock().unwrap();
        stats.allocations += 1;
        stats.bytes_allocated += class;
        stats.bytes_held += class;
        Arc::new(PooledBuffer { buffer: Some(buffer), class, pool: Arc::downgrade(self) })
    }

    /// Frees every idle buffer (after a phase that will not come back, say).
    pub fn trim(&self) {
        let freed: u64 = self.free.lock().unwrap().drain().map(|(class, v)| class * v.len() as u64).sum();
        self.stats.lock().unwrap().bytes_held -= freed;
    }

    /// Bytes of every buffer the pool gave out and has not freed, in use or idle.
    pub fn held_bytes(&self) -> u64 {
        self.stats.lock().unwrap().bytes_held
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
