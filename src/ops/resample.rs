//! Placeholder: filled in by the resample kernel family.
use crate::gpu::{Caps, KernelKey};

pub fn variants(_caps: Caps) -> Vec<KernelKey> {
    Vec::new()
}
