//! Per-kernel timing. With TIMESTAMP_QUERY every dispatch's compute pass
//! writes a begin and an end timestamp; the pairs are resolved at each submit
//! and summed per label. Without it, the profiler times whole submits on the
//! wall clock and says so.
use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};

const MAX_PAIRS: u32 = 2048;

/// One line of the profile: a kernel label, how often it ran, for how long.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileEntry {
    pub label: String,
    pub calls: u64,
    pub total_ms: f64,
}

pub struct Profiler {
    enabled: bool,
    timestamps: Option<Timestamps>,
    table: HashMap<String, (u64, f64)>,
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
    labels: Vec<String>,
    resolved: bool,
}

impl Profiler {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, enabled: bool, has_timestamps: bool) -> Profiler {
        let timestamps = (enabled && has_timestamps).then(|| {
            let bytes = MAX_PAIRS as u64 * 2 * 8;
            Timestamps {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("fsd3d timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: MAX_PAIRS * 2,
                }),
                resolve: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamp resolve"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamp readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                period_ns: queue.get_timestamp_period() as f64,
                labels: Vec::new(),
                resolved: false,
            }
        });
        Profiler { enabled, timestamps, table: HashMap::new() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// True when timings come from timestamp queries, false for wall clock.
    pub fn uses_timestamps(&self) -> bool {
        self.timestamps.is_some()
    }
    pub(crate) fn queries_full(&self) -> bool {
        self.timestamps.as_ref().is_some_and(|t| t.labels.len() as u32 >= MAX_PAIRS)
    }
    pub(crate) fn has_pending(&self) -> bool {
        self.timestamps.as_ref().is_some_and(|t| !t.labels.is_empty())
    }

    /// Timestamp writes for the next dispatch's pass (None when not timing).
    pub(crate) fn begin_dispatch(&mut self, label: &str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let ts = self.timestamps.as_mut()?;
        let i = ts.labels.len() as u32;
        ts.labels.push(label.to_string());
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &ts.set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    /// Records the resolve of this submit's queries at the end of the encoder.
    pub(crate) fn resolve(&mut self, enc: &mut wgpu::CommandEncoder) {
        if let Some(ts) = self.timestamps.as_mut() {
            let n = ts.labels.len() as u32 * 2;
            if n > 0 {
                enc.resolve_query_set(&ts.set, 0..n, &ts.resolve, 0);
                enc.copy_buffer_to_buffer(&ts.resolve, 0, &ts.readback, 0, n as u64 * 8);
                ts.resolved = true;
            }
        }
    }

    /// After the submit finished: adds its timings to the table.
    pub(crate) fn collect(&mut self, device: &wgpu::Device, wall: Duration, dispatches: usize) -> Result<()> {
        let Some(ts) = self.timestamps.as_mut() else {
            if dispatches > 0 {
                let e = self.table.entry(format!("submit (wall clock, {dispatches} dispatches)")).or_default();
                e.0 += 1;
                e.1 += wall.as_secs_f64() * 1e3;
            }
            return Ok(());
        };
        if !ts.resolved {
            return Ok(());
        }
        let n = ts.labels.len();
        let slice = ts.readback.slice(0..(n as u64 * 16));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Readback(e.to_string()))?;
        rx.recv().map_err(|e| Error::Readback(e.to_string()))?.map_err(|e| Error::Readback(e.to_string()))?;
        {
            let data = slice.get_mapped_range().map_err(|e| Error::Readback(format!("{e:?}")))?;
            let ticks: &[u64] = bytemuck::cast_slice(&data);
            for (i, label) in ts.labels.iter().enumerate() {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * ts.period_ns * 1e-6;
                let e = self.table.entry(label.clone()).or_default();
                e.0 += 1;
                e.1 += dt;
            }
        }
        ts.readback.unmap();
        ts.labels.clear();
        ts.resolved = false;
        Ok(())
    }

    /// The table so far, longest total first.
    pub fn report(&self) -> Vec<ProfileEntry> {
        let mut v: Vec<ProfileEntry> = self
            .table
            .iter()
            .map(|(k, (c, t))| ProfileEntry { label: k.clone(), calls: *c, total_ms: *t })
            .collect();
        v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        v
    }

    pub fn reset(&mut self) {
        self.table.clear();
    }
}

impl crate::gpu::device::Gpu {
    /// The per-kernel profile collected so far (empty unless opened with `profile`).
    pub fn profile_report(&self) -> Vec<ProfileEntry> {
        self.profiler.lock().unwrap().report()
    }
    pub fn profile_uses_timestamps(&self) -> bool {
        self.profiler.lock().unwrap().uses_timestamps()
    }
    pub fn profile_reset(&self) {
        self.profiler.lock().unwrap().reset()
    }
}

/// Formats a profile as a text table: label, calls, total ms, share.
pub fn format_report(entries: &[ProfileEntry], timestamps: bool) -> String {
    let total: f64 = entries.iter().map(|e| e.total_ms).sum();
    let mut s = format!("{:<40} {:>8} {:>12} {:>7}\n", "kernel", "calls", "total ms", "share");
    for e in entries {
        let share = if total > 0.0 { 100.0 * e.total_ms / total } else { 0.0 };
        s.push_str(&format!("{:<40} {:>8} {:>12.3} {:>6.1}%\n", e.label, e.calls, e.total_ms, share));
    }
    if !timestamps {
        s.push_str("note: this adapter has no timestamp queries (or they are switched off); times are wall clock per submit\n");
    }
    s
}
