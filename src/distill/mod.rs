//! Where the prior meets what is optimised: 2D distillation (later: the 3D
//! loop, run configs, checkpoints).
pub mod image2d;
