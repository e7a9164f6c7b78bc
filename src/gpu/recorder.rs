//! Records dispatches into one open command encoder; one submit per flush.
//!
//! Every op calls [`Gpu::dispatch`], which appends a compute pass to the open
//! encoder. Small per-dispatch parameters go into a uniform arena (256-byte
//! aligned slots in 64 KiB chunks) written with one `write_buffer` per chunk
//! just before the submit. Nothing reaches the device until [`Gpu::flush`] or
//! a readback, so a whole distillation step is one submit.
use std::num::NonZeroU64;

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::kernel::KernelKey;
use crate::gpu::params::KernelParams;
use crate::gpu::tensor::Tensor;

const ARENA_CHUNK: u64 = 64 * 1024;

#[derive(Default)]
struct ArenaChunk {
    buffer: Option<wgpu::Buffer>,
    data: Vec<u8>,
}

/// The open encoder and what goes with it.
#[derive(Default)]
pub struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    chunks: Vec<ArenaChunk>,
    /// Chunk being filled.
    current: usize,
    dispatches: usize,
    submits: u64,
}

impl Recorder {
    pub fn pending_dispatches(&self) -> usize {
        self.dispatches
    }
}

impl Gpu {
    fn encoder<'a>(&self, rec: &'a mut Recorder) -> &'a mut wgpu::CommandEncoder {
        rec.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("fsd3d step") })
        })
    }

    /// Places `params` in the uniform arena; returns (buffer, offset, size).
    fn arena_slot(&self, rec: &mut Recorder, params: &[u8]) -> (wgpu::Buffer, u64, u64) {
        let align = self.limits().min_uniform_buffer_offset_alignment as u64;
        let size = (params.len() as u64).div_ceil(16).max(1) * 16;
        loop {
            if rec.current >= rec.chunks.len() {
                rec.chunks.push(ArenaChunk::default());
            }
            let chunk = &mut rec.chunks[rec.current];
            let offset = (chunk.data.len() as u64).div_ceil(align) * align;
            if offset + size <= ARENA_CHUNK {
                let buffer = chunk
                    .buffer
                    .get_or_insert_with(|| {
                        self.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("fsd3d params"),
                            size: ARENA_CHUNK,
                            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        })
                    })
                    .clone();
                chunk.data.resize(offset as usize, 0);
                chunk.data.extend_from_slice(params);
                chunk.data.resize((offset + size) as usize, 0);
                return (buffer, offset, size);
            }
            rec.current += 1;
        }
    }

    /// Records one kernel dispatch. Binding 0 is the uniform `block` (none
    /// for [`NoParams`](crate::gpu::NoParams)), bindings 1.. are `tensors` in
    /// order, as the kernel declares them. `block` must be the one `key` declares
    /// ([`KernelKey::params`]), whose layout validation checked against the shader.
    pub fn dispatch<P: KernelParams>(
        &self,
        label: &str,
        key: &KernelKey,
        block: &P,
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        if P::FIELDS != key.params {
            return Err(Error::Invalid(format!(
                "{label} [{key}]: the op passes a parameter block other than the one its kernel key declares"
            )));
        }
        let params: &[u8] = bytemuck::bytes_of(block);
        let max = self.limits().max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::Invalid(format!(
                "{label}: dispatch of {workgroups:?} workgroups exceeds the adapter's limit of {max} per dimension"
            )));
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let pipeline = self.kernels.get(&self.device, key)?;
        let first = if params.is_empty() { 1 } else { 0 };
        let expected: Vec<u32> = (first..=tensors.len() as u32).collect();
        if pipeline.bindings != expected {
            return Err(Error::Invalid(format!(
                "{label} [{key}]: the shader declares bindings {:?} but the op passes {expected:?} \
                 (binding 0 = parameters, 1.. = tensors in order)",
                pipeline.bindings
            )));
        }
        let mut rec = self.recorder.lock().unwrap();
        let mut entries = Vec::with_capacity(tensors.len() + 1);
        let slot;
        if !params.is_empty() {
            slot = self.arena_slot(&mut rec, params);
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &slot.0,
                    offset: slot.1,
                    size: NonZeroU64::new(slot.2),
                }),
            });
        }
        for (i, t) in tensors.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: t.buffer(),
                    offset: 0,
                    size: NonZeroU64::new(t.binding_bytes()),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.layout,
            entries: &entries,
        });
        let mut prof = self.profiler.lock().unwrap();
        if prof.queries_full() {
            drop(prof);
            drop(rec);
            self.flush()?;
            return self.dispatch(label, key, block, tensors, workgroups);
        }
        let timestamp_writes = prof.begin_dispatch(label);
        let enc = self.encoder(&mut rec);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        drop(prof);
        rec.dispatches += 1;
        drop(rec);
        if self.sync_each_dispatch {
            self.sync().map_err(|e| match e {
                Error::Validation { message, .. } => Error::Validation { context: format!("{label} [{key}]"), message },
                e => e,
            })?;
        }
        Ok(())
    }

    /// Records zero-filling a tensor.
    pub(crate) fn record_clear(&self, t: &Tensor) {
        let mut rec = self.recorder.lock().unwrap();
        let size = t.binding_bytes();
        self.encoder(&mut rec).clear_buffer(t.buffer(), 0, Some(size));
    }

    /// Records a copy of `src` into `dst` (same byte size).
    pub fn copy(&self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.bytes() != dst.bytes() {
            return Err(Error::shape("copy", format!("{src:?} into {dst:?}")));
        }
        let mut rec = self.recorder.lock().unwrap();
        let size = src.binding_bytes();
        self.encoder(&mut rec).copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, size);
        Ok(())
    }

    /// Submits everything recorded so far (does not wait for it).
    pub fn flush(&self) -> Result<()> {
        let mut rec = self.recorder.lock().unwrap();
        self.submit_locked(&mut rec, None)?;
        drop(rec);
        self.take_errors("flush")
    }

    /// Submits and waits until the device is idle.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.wait()?;
        self.take_errors("sync")
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map(|_| ())
            .map_err(|e| {
                self.check_lost().err().unwrap_or_else(|| Error::Readback(e.to_string()))
            })
    }

    /// Submits the open encoder, plus `extra` commands recorded after it.
    fn submit_locked(&self, rec: &mut Recorder, extra: Option<wgpu::CommandBuffer>) -> Result<()> {
        let mut prof = self.profiler.lock().unwrap();
        if rec.encoder.is_none() && extra.is_none() && !prof.has_pending() {
            return Ok(());
        }
        let enc = self.encoder(rec);
        prof.resolve(enc);
        let cmd = rec.encoder.take().unwrap().finish();
        for chunk in &mut rec.chunks {
            if let (Some(b), false) = (&chunk.buffer, chunk.data.is_empty()) {
                self.queue.write_buffer(b, 0, &chunk.data);
            }
            chunk.data.clear();
        }
        rec.current = 0;
        let n = rec.dispatches;
        rec.dispatches = 0;
        rec.submits += 1;
        let started = std::time::Instant::now();
        self.queue.submit(std::iter::once(cmd).chain(extra));
        if prof.enabled() {
            // Timings need the work finished: profiling runs are synchronous.
            self.wait()?;
            prof.collect(&self.device, started.elapsed(), n)?;
        }
        Ok(())
    }

    /// Submits what is recorded, copies `size` bytes of `src` to the host and waits.
    pub(crate) fn read_buffer(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fsd3d readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        {
            let mut rec = self.recorder.lock().unwrap();
            self.submit_locked(&mut rec, Some(enc.finish()))?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        self.take_errors("readback")?;
        let lost = |e: String| self.check_lost().err().unwrap_or(Error::Readback(e));
        rx.recv().map_err(|e| lost(e.to_string()))?.map_err(|e| lost(e.to_string()))?;
        let data = staging.slice(..).get_mapped_range().map_err(|e| Error::Readback(format!("{e:?}")))?.to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Number of submits so far (tests check that a step is one submit).
    pub fn submit_count(&self) -> u64 {
        self.recorder.lock().unwrap().submits
    }
}
