//! Evaluation of finished runs (FSD_SPEC §6): prompt fidelity, Inception
//! Score and Cross-FID on the embedded prior's classifier, which stands in
//! for the paper's CLIP and Inception networks.
//!
//! - [`metrics`]: the numbers, in f64 on the host (IS, Fréchet distance with
//!   its own symmetric eigen solver, prompt parsing and fidelity, mean ± std);
//! - [`report`]: runs -> per-run, per-prompt and per-method rows; the table as
//!   markdown and the whole evaluation as JSON;
//! - [`figure`]: the methods × seeds image grid with built-in bitmap labels;
//! - [`run`]: `fsd3d eval`, the whole job: runs, views, the DDIM reference,
//!   results.md / results.json and the figures, resumable.
//!
//! The GPU work (rendering views, running the classifier) is [`run`]'s;
//! the other modules take downloaded values.
pub mod figure;
pub mod metrics;
pub mod report;
pub mod run;
