//! Adam on the device (`shaders/adam.wgsl`): torch.optim.Adam's update,
//! one dispatch per parameter tensor.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::grid_for;

const WG: u32 = 256;

/// Adam's hyper-parameters for one parameter tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

crate::kernel_params! {
    struct Params {
        n: u32,
        _pad: [u32; 3],
        beta1: f32,
        beta2: f32,
        eps: f32,
        grad_scale: f32,
        step_size: f32,
        bias_correction2_sqrt: f32,
        _pad1: [f32; 2],
    }
}

fn key() -> KernelKey {
    KernelKey::new("adam", "adam_step").params::<Params>()
}

/// Every variant this family dispatches (for validation).
pub fn variants(_caps: Caps) -> Vec<KernelKey> {
    vec![key()]
}

#[allow(clippy::too_many_arguments)]
/// Step `step` (1-based) of Adam: updates `param`, `exp_avg` and
/// `exp_avg_sq` in place from `grad`·`grad_scale` (all f32, same size).
pub fn adam_step(
    gpu: &Gpu,
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    hyper: &AdamHyper,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let n = param.numel();
    for (what, t) in [("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
        if t.dtype() != DType::F32 || t.numel() != n {
            return Err(Error::shape("adam", format!("{what} must be f32 with {n} elements, got {t:?}")));
        }
    }
    if step == 0 {
        return Err(Error::Invalid("adam: steps count from 1".into()));
    }
    if !(0.0..1.0).contains(&hyper.beta1) || !(0.0..1.0).contains(&hyper.beta2) || hyper.eps.is_nan() || hyper.eps < 0.0 {
        return Err(Error::Invalid(format!("adam: bad hyper-parameters {hyper:?}")));
    }
    let t = step.min(i32::MAX as u64) as i32;
    let bias1 = 1.0 - (hyper.beta1 as f64).powi(t);
    let bias2 = 1.0 - (hyper.beta2 as f64).powi(t);
    let p = Params {
        n: n as u32,
        _pad: [0; 3],
        beta1: hyper.beta1,
        beta2: hyper.beta2,
        eps: hyper.eps,
        grad_scale,
        step_size: (hyper.lr as f64 / bias1) as f32,
        bias_correction2_sqrt: bias2.sqrt() as f32,
        _pad1: [0.0; 2],
    };
    gpu.dispatch("adam.step", &key(), &p, &[param, grad, exp_avg, exp_avg_sq], grid_for(gpu, n, WG))
}
