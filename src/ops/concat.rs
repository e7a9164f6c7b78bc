//! Placeholder: filled in by the concat kernel family.
use crate::gpu::{Caps, KernelKey};

pub fn variants(_caps: Caps) -> Vec<KernelKey> {
    Vec::new()
}
