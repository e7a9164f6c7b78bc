//! What a finished (or interrupted) run leaves in its folder, besides the
//! config, log and checkpoint the loop writes:
//!
//! | file | what |
//! |---|---|
//! | `renders.png` | colour renders from `grid_views` azimuths around the object |
//! | `depth.png`, `normals.png` | the same views' expected depth and normals |
//! | `turntable.png` | a looping animated PNG of `turntable_frames` views |
//! | `mesh.glb`, `mesh.obj` | marching cubes on the density, vertex colours from the albedo (y-up) |
//! | `summary.json` | prompt, method, seed, steps, wall time, adapter, the files, mesh size, and (embedded prior) what its classifier sees in each view |
//!
//! Every file is written atomically.
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::eval::metrics;
use crate::export::{self, Rgb8};
use crate::gpu::{DType, Gpu};
use crate::models::classifier::Classifier;
use crate::ops::render::Shading;
use crate::scene::camera::eval_cameras;
use crate::scene::{Image, Scene};

use super::GenerateConfig;

/// File names of the outputs.
pub mod files {
    pub const RENDERS: &str = "renders.png";
    pub const DEPTH: &str = "depth.png";
    pub const NORMALS: &str = "normals.png";
    pub const TURNTABLE: &str = "turntable.png";
    pub const MESH_GLB: &str = "mesh.glb";
    pub const MESH_OBJ: &str = "mesh.obj";
}

/// The classifier's reading of one view (embedded prior only).
#[derive(Clone, Debug, Serialize)]
pub struct ViewVerdict {
    pub azimuth_deg: f32,
    pub shape: String,
    pub colour: String,
    /// Probability of the prompt's shape / colour word (when the prompt names one).
    pub p_prompt_shape: Option<f32>,
    pub p_prompt_colour: Option<f32>,
}

/// The classifier's reading of the whole turntable.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub views: Vec<ViewVerdict>,
    /// Share of views whose top shape / colour / both match the prompt's words.
    pub shape_agreement: Option<f32>,
    pub colour_agreement: Option<f32>,
    pub both_agreement: Option<f32>,
}

/// Mesh statistics for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct MeshInfo {
    pub vertices: usize,
    pub triangles: usize,
    pub bounds_min: [f32; 3],
    pub bounds_max: [f32; 3],
}

/// What [`write_outputs`] made.
#[derive(Clone, Debug, Serialize)]
pub struct Outputs {
    pub files: Vec<String>,
    pub mesh: Option<MeshInfo>,
    /// Why there is no mesh, when there is none.
    pub mesh_error: Option<String>,
    pub verdict: Option<Verdict>,
    pub seconds: f64,
}

/// Renders the turntable and grids, extracts the mesh, and asks the
/// classifier (when `classifier` is given) what it sees in each view.
pub fn write_outputs(gpu: &Gpu, scene: &Scene, cfg: &GenerateConfig, classifier: Option<&Classifier>, out: &Path, mut progress: impl FnMut(&str)) -> Result<Outputs> {
    let started = std::time::Instant::now();
    let o = &cfg.output;
    let size = o.render_size;
    let mut written = Vec::new();
    let mut put = |name: &str| written.push(name.to_string());

    // One orbit; the grid's views are every k-th frame when the counts
    // divide, so nothing is rendered twice.
    let frames_n = o.turntable_frames;
    let reuse = frames_n.is_multiple_of(o.grid_views);
    let cams = eval_cameras(&cfg.camera, frames_n);
    let mut frames: Vec<Image> = Vec::with_capacity(frames_n);
    for (i, cam) in cams.iter().enumerate() {
        progress(&format!("turntable {}/{frames_n}", i + 1));
        frames.push(scene.render_image(gpu, cam, size, size, Shading::Diffuse)?);
    }
    let grid_images: Vec<Image> = if reuse {
        frames.iter().step_by(frames_n / o.grid_views).cloned().collect()
    } else {
        eval_cameras(&cfg.camera, o.grid_views)
            .iter()
            .map(|cam| scene.render_image(gpu, cam, size, size, Shading::Diffuse))
            .collect::<Result<_>>()?
    };
    let columns = o.grid_views.min(8);
    let to8 = |imgs: &[Image], f: fn(&Image) -> Result<Rgb8>| imgs.iter().map(f).collect::<Result<Vec<_>>>();
    export::write_png(&out.join(files::RENDERS), &export::grid(&to8(&grid_images, export::rgb_to_rgb8)?, columns, 2)?)?;
    put(files::RENDERS);
    export::write_png(&out.join(files::DEPTH), &export::grid(&to8(&grid_images, export::depth_to_rgb)?, columns, 2)?)?;
    put(files::DEPTH);
    export::write_png(&out.join(files::NORMALS), &export::grid(&to8(&grid_images, export::normal_to_rgb)?, columns, 2)?)?;
    put(files::NORMALS);
    export::write_apng(&out.join(files::TURNTABLE), &to8(&frames, export::rgb_to_rgb8)?, (4000 / frames_n.max(1)) as u32)?;
    put(files::TURNTABLE);

    progress("mesh");
    let (mesh, mesh_error) = match export::extract_mesh(gpu, scene, o.mesh_resolution, o.mesh_threshold) {
        Ok(m) if !m.is_empty() => {
            export::write_glb(&out.join(files::MESH_GLB), &m)?;
            export::write_obj(&out.join(files::MESH_OBJ), &m)?;
            put(files::MESH_GLB);
            put(files::MESH_OBJ);
            let (bounds_min, bounds_max) = m.bounds().expect("a non-empty mesh has bounds");
            (Some(MeshInfo { vertices: m.vertex_count(), triangles: m.triangle_count(), bounds_min, bounds_max }), None)
        }
        Ok(_) => (None, Some(format!("marching cubes at density {} found no surface", o.mesh_threshold))),
        Err(e) => (None, Some(e.to_string())),
    };

    let verdict = match classifier {
        Some(c) => {
            progress("classifier");
            Some(classify_views(gpu, scene, cfg, c)?)
        }
        None => None,
    };
    Ok(Outputs { files: written, mesh, mesh_error, verdict, seconds: started.elapsed().as_secs_f64() })
}

/// Renders the turntable azimuths at the prior's own resolution (what the
/// classifier was trained on: 8-bit renders, x = rgb·2 − 1) and classifies them.
pub fn classify_views(gpu: &Gpu, scene: &Scene, cfg: &GenerateConfig, c: &Classifier) -> Result<Verdict> {
    let (w, h) = (cfg.camera.width, cfg.camera.height);
    let cams = eval_cameras(&cfg.camera, cfg.output.turntable_frames);
    let mut images = Vec::with_capacity(cams.len());
    for cam in &cams {
        images.push(export::rgb_to_rgb8(&scene.render_image(gpu, cam, w, h, Shading::Diffuse)?)?);
    }
    let (pixels, shape) = export::image::to_signed_nchw(&images)?;
    let x = gpu.upload(&pixels, &shape, DType::F32)?;
    let out = c.classify(gpu, &x)?;
    // Probabilities as f64 rows; the prompt's words read as `eval` reads them.
    let shape_p = metrics::softmax_rows(&gpu.download(&out.shape_logits)?, c.shape_labels.len(), "shape logits")?;
    let colour_p = metrics::softmax_rows(&gpu.download(&out.colour_logits)?, c.colour_labels.len(), "colour logits")?;
    let wanted = metrics::parse_prompt(&cfg.prompt, &metrics::Labels::of(c));
    let (want_shape, want_colour) = (wanted.shape, wanted.colour);
    let argmax = |p: &[f64]| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    let mut views = Vec::new();
    let (mut s_ok, mut c_ok, mut both_ok) = (0usize, 0usize, 0usize);
    for (i, cam) in cams.iter().enumerate() {
        let (sp, cp) = (&shape_p[i], &colour_p[i]);
        let (si, ci) = (argmax(sp), argmax(cp));
        let s_hit = want_shape.is_none_or(|k| k == si);
        let c_hit = want_colour.is_none_or(|k| k == ci);
        s_ok += s_hit as usize;
        c_ok += c_hit as usize;
        both_ok += (s_hit && c_hit) as usize;
        views.push(ViewVerdict {
            azimuth_deg: cam.azimuth,
            shape: c.shape_labels[si].clone(),
            colour: c.colour_labels[ci].clone(),
            p_prompt_shape: want_shape.map(|k| sp[k] as f32),
            p_prompt_colour: want_colour.map(|k| cp[k] as f32),
        });
    }
    let n = cams.len().max(1) as f32;
    let share = |k: usize, named: bool| named.then_some(k as f32 / n);
    Ok(Verdict {
        views,
        shape_agreement: share(s_ok, want_shape.is_some()),
        colour_agreement: share(c_ok, want_colour.is_some()),
        both_agreement: share(both_ok, want_shape.is_some() || want_colour.is_some()),
    })
}

/// `summary.json` (written by `job::write_summary`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary<'a> {
    pub prompt: &'a str,
    pub method: &'a str,
    pub seed: u64,
    pub steps: u64,
    pub steps_done: u64,
    pub completed: bool,
    /// Wall time of the optimisation in this process (a resumed run counts from the resume).
    pub optimise_seconds: f64,
    pub outputs_seconds: f64,
    pub mean_step_ms: f64,
    pub adapter: String,
    pub model: String,
    pub final_grad_rms: Option<f32>,
    pub outputs: &'a Outputs,
}
