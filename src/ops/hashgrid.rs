//! Placeholder: filled in by the hashgrid kernel family (the 3D side).
use crate::gpu::{Caps, KernelKey};

pub fn variants(_caps: Caps) -> Vec<KernelKey> {
    Vec::new()
}
