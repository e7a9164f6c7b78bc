//! Per-kernel timing. With TIMESTAMP_QUERY every dispatch's compute pass
//! writes a begin and an end timestamp; the pairs are resolved at each submit
//! and summed per label, and per section where the caller named the part of
//! the work it is recording ([`Gpu::set_profile_section`]: e.g. a model inside
//! a larger step, whose kernels share labels with the rest). Without it, the
//! profiler times whole submits on the wall clock and says so.
//!
//! Profiling can be switched on for part of a run ([`Gpu::set_profiling`]):
//! a profiled submit waits for its work, so a bench times its steps with the
//! profiler off and profiles one more.
//!
//! [`Gpu::set_profile_section`]: crate::gpu::Gpu::set_profile_section
//! [`Gpu::set_profiling`]: crate::gpu::Gpu::set_profiling
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
    /// The device can write timestamps (the query set is made on first use).
    has_timestamps: bool,
    timestamps: Option<Timestamps>,
    table: HashMap<String, (u64, f64)>,
    /// The section the next dispatches belong to.
    section: Option<String>,
    sections: HashMap<String, (u64, f64)>,
}

/// A dispatch waiting for its timestamps: its label and section.
struct Pending {
    label: String,
    section: Option<String>,
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
    labels: Vec<Pending>,
    resolved: bool,
}

impl Timestamps {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Timestamps {
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
    }
}

impl Profiler {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, enabled: bool, has_timestamps: bool) -> Profiler {
        let mut p = Profiler {
            enabled: false,
            has_timestamps,
            timestamps: None,
            table: HashMap::new(),
            section: None,
            sections: HashMap::new(),
        };
        p.set_enabled(device, queue, enabled);
        p
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// Switches timing on or off; the caller makes sure nothing timed is
    /// pending (see [`Gpu::set_profiling`](crate::gpu::Gpu::set_profiling)).
    pub(crate) fn set_enabled(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, on: bool) {
        if on && self.has_timestamps && self.timestamps.is_none() {
            self.timestamps = Some(Timestamps::new(device, queue));
        }
        self.enabled = on;
    }
    /// True when timings come from timestamp queries, false for wall clock.
    pub fn uses_timestamps(&self) -> bool {
        self.has_timestamps
    }
    pub(crate) fn queries_full(&self) -> bool {
        self.timestamps.as_ref().is_some_and(|t| t.labels.len() as u32 >= MAX_PAIRS)
    }
    pub(crate) fn has_pending(&self) -> bool {
        self.timestamps.as_ref().is_some_and(|t| !t.labels.is_empty())
    }

    /// Timestamp writes for the next dispatch's pass (None when not timing).
    pub(crate) fn begin_dispatch(&mut self, label: &str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        if !self.enabled {
            return None;
        }
        let ts = self.timestamps.as_mut()?;
        let i = ts.labels.len() as u32;
        ts.labels.push(Pending { label: label.to_string(), section: self.section.clone() });
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
            for (i, p) in ts.labels.iter().enumerate() {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * ts.period_ns * 1e-6;
                let e = self.table.entry(p.label.clone()).or_default();
                e.0 += 1;
                e.1 += dt;
                if let Some(s) = &p.section {
                    let e = self.sections.entry(s.clone()).or_default();
                    e.0 += 1;
                    e.1 += dt;
                }
            }
        }
        ts.readback.unmap();
        ts.labels.clear();
        ts.resolved = false;
        Ok(())
    }

    /// The table so far, longest total first.
    pub fn report(&self) -> Vec<ProfileEntry> {
        entries(&self.table)
    }

    /// The time of the dispatches recorded in each named section (timestamps only), longest first.
    pub fn section_report(&self) -> Vec<ProfileEntry> {
        entries(&self.sections)
    }

    /// Names the section of the dispatches recorded from now on (None: no section).
    pub(crate) fn set_section(&mut self, section: Option<&str>) {
        self.section = section.map(str::to_string);
    }

    pub fn reset(&mut self) {
        self.table.clear();
        self.sections.clear();
    }
}

fn entries(table: &HashMap<String, (u64, f64)>) -> Vec<ProfileEntry> {
    let mut v: Vec<ProfileEntry> =
        table.iter().map(|(k, (c, t))| ProfileEntry { label: k.clone(), calls: *c, total_ms: *t }).collect();
    v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    v
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

    /// Starts or stops collecting per-kernel timings (as if opened with
    /// `profile`). Everything recorded so far is submitted and waited for
    /// first, so the switch falls between two pieces of work and no dispatch
    /// is half timed.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        self.sync()?;
        self.profiler.lock().unwrap().set_enabled(&self.device, &self.queue, on);
        Ok(())
    }

    /// Whether per-kernel timings are being collected.
    pub fn is_profiling(&self) -> bool {
        self.profiler.lock().unwrap().enabled()
    }

    /// Names the part of the work that the dispatches recorded from now on
    /// belong to (None: none), for [`Gpu::profile_sections`]. Free when not profiling.
    pub fn set_profile_section(&self, section: Option<&str>) {
        self.profiler.lock().unwrap().set_section(section)
    }

    /// Kernel time per named section so far (empty without timestamps, or unless profiling).
    pub fn profile_sections(&self) -> Vec<ProfileEntry> {
        self.profiler.lock().unwrap().section_report()
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
