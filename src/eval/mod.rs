//! Evaluation of finished runs (FSD_SPEC §6): prompt fidelity, Inception
//! Score and Cross-FID on the embedded prior's classifier, which stands in
//! for the paper's CLIP and Inception networks; with `--clip` and
//! `--inception`, the paper's own metrics on those networks.
//!
//! - [`metrics`]: the numbers, in f64 on the host (IS, Fréchet distance with
//!   its own symmetric eigen solver, prompt parsing and fidelity, mean ± std);
//! - [`report`]: runs -> per-run, per-prompt and per-method rows; the table as
//!   markdown and the whole evaluation as JSON;
//! - [`paper`]: the same for the paper's networks: CLIP score, IS and
//!   Cross-FID on Inception-v3, in the layout of the paper's Table 1;
//! - [`figure`]: the methods × seeds image grid with built-in bitmap labels;
//! - [`run`]: `fsd3d eval`, the whole job: runs, views, the DDIM reference,
//!   results.md / results.json and the figures, resumable;
//! - [`prior_check`]: `fsd3d prior-check`, the prior's own 2D samples of every
//!   shape × colour prompt judged by the classifier (does the prior draw what
//!   it is asked for, and how many objects does an open prompt give?).
//!
//! The GPU work (rendering views, running the classifier) is [`run`]'s;
//! the other modules take downloaded values.
pub mod figure;
pub mod metrics;
pub mod paper;
pub mod prior_check;
pub mod report;
pub mod run;
