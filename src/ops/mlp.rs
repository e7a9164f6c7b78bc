//! Small bias-free MLPs (`shaders/mlp.wgsl`): forward, backward with weight
//! gradients by a deterministic two-stage reduction, the spherical-harmonics
//! direction encoding of the background, and the reduction of per-workgroup
//! weight-gradient partials (shared with the fused field of `hashgrid`).

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::grid_for;

const FAMILY: &str = "mlp";
const WG: u32 = 64;
/// Most layers (weight matrices) and the widest layer.
pub const MAX_LAYERS: usize = 4;
pub const MAX_WIDTH: usize = 64;
/// Samples per chunk of the weight-gradient reduction.
const GRAD_CHUNK: usize = 256;

/// Activation of the last layer (hidden layers are ReLU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputAct {
    None,
    Sigmoid,
}

impl OutputAct {
    fn code(self) -> u32 {
        match self {
            OutputAct::None => 0,
            OutputAct::Sigmoid => 1,
        }
    }
}

/// Layer widths `[d0 (input), d1, …, dL (output)]` of a bias-free MLP whose
/// weights are packed `[W1 (d1×d0) | W2 (d2×d1) | …]`, row-major [out][in].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpShape {
    pub dims: Vec<usize>,
}

impl MlpShape {
    /// `input → hidden × hidden_layers → output`, threestudio's VanillaMLP.
    pub fn new(input: usize, hidden: usize, hidden_layers: usize, output: usize) -> MlpShape {
        let mut dims = vec![input];
        dims.extend(std::iter::repeat_n(hidden, hidden_layers));
        dims.push(output);
        MlpShape { dims }
    }
    pub fn validate(&self) -> Result<()> {
        let layers = self.dims.len().saturating_sub(1);
        if layers == 0 || layers > MAX_LAYERS {
            return Err(Error::Invalid(format!("mlp: {layers} layers in {:?}, expected 1..={MAX_LAYERS}", self.dims)));
        }
        if self.dims.iter().any(|&d| d == 0 || d > MAX_WIDTH) {
            return Err(Error::Invalid(format!("mlp: widths {:?} must lie in 1..={MAX_WIDTH}", self.dims)));
        }
        Ok(())
    }
    pub fn layers(&self) -> usize {
        self.dims.len() - 1
    }
    pub fn input(&self) -> usize {
        self.dims[0]
    }
    pub fn output(&self) -> usize {
        *self.dims.last().unwrap()
    }
    /// Floats of the packed weights.
    pub fn n_weights(&self) -> usize {
        self.dims.windows(2).map(|w| w[0] * w[1]).sum()
    }
    /// Floats saved per sample by the backward: layer inputs and deltas.
    fn saved_len(&self) -> usize {
        self.dims[..self.layers()].iter().sum::<usize>() + self.dims[1..].iter().sum::<usize>()
    }
}

crate::kernel_params! {
    struct Params {
        n: u32,
        n_layers: u32,
        out_act: u32,
        chunk: u32,
        n_weights: u32,
        saved_len: u32,
        want_dx: u32,
        degree: u32,
        dims: [u32; 8],
    }
}

fn params(shape: &MlpShape, n: usize, act: OutputAct) -> Params {
    let mut p = Params {
        n: n as u32,
        n_layers: shape.layers() as u32,
        out_act: act.code(),
        n_weights: shape.n_weights() as u32,
        saved_len: shape.saved_len() as u32,
        ..Default::default()
    };
    for (i, &d) in shape.dims.iter().enumerate() {
        p.dims[i] = d as u32;
    }
    p
}

const ENTRIES: [&str; 5] = ["forward", "backward_deltas", "weight_grads", "reduce_partials", "sh_encode"];

fn key(entry: &'static str) -> KernelKey {
    KernelKey::new(FAMILY, entry).params::<Params>()
        .flag("FORWARD", entry == "forward")
        .flag("BACKWARD_DELTAS", entry == "backward_deltas")
        .flag("WEIGHT_GRADS", entry == "weight_grads")
        .flag("REDUCE_PARTIALS", entry == "reduce_partials")
        .flag("SH_ENCODE", entry == "sh_encode")
}

/// Every variant this family dispatches (for validation).
pub fn variants(_caps: Caps) -> Vec<KernelKey> {
    ENTRIES.iter().map(|e| key(e)).collect()
}

fn check(op: &'static str, shape: &MlpShape, weights: &Tensor, x: &Tensor) -> Result<usize> {
    shape.validate()?;
    if weights.dtype() != DType::F32 || weights.numel() != shape.n_weights() {
        return Err(Error::shape(op, format!("weights must be f32 with {} elements for {:?}, got {weights:?}", shape.n_weights(), shape.dims)));
    }
    if x.dtype() != DType::F32 || x.rank() != 2 || x.dim(1) != shape.input() {
        return Err(Error::shape(op, format!("input must be f32 [n, {}], got {x:?}", shape.input())));
    }
    Ok(x.dim(0))
}

/// `y = act(W_L·relu(… relu(W_1·x)))` for `x` f32 `[n, d0]`: `[n, dL]`.
pub fn forward(gpu: &Gpu, shape: &MlpShape, weights: &Tensor, x: &Tensor, act: OutputAct) -> Result<Tensor> {
    let n = check("mlp.forward", shape, weights, x)?;
    let y = gpu.empty(&[n, shape.output()], DType::F32)?;
    let p = params(shape, n, act);
    gpu.dispatch("mlp.forward", &key("forward"), &p, &[weights, x, &y], grid_for(gpu, n, WG))?;
    Ok(y)
}

#[allow(clippy::too_many_arguments)]
/// Backward of [`forward`] given dL/dy `[n, dL]`: adds dL/dweights to
/// `grad_weights` and returns dL/dx `[n, d0]` when `want_dx`.
pub fn backward(
    gpu: &Gpu,
    shape: &MlpShape,
    weights: &Tensor,
    x: &Tensor,
    dy: &Tensor,
    act: OutputAct,
    grad_weights: &Tensor,
    want_dx: bool,
) -> Result<Option<Tensor>> {
    const OP: &str = "mlp.backward";
    let n = check(OP, shape, weights, x)?;
    if dy.dtype() != DType::F32 || dy.shape() != [n, shape.output()] {
        return Err(Error::shape(OP, format!("dy must be f32 [{n}, {}], got {dy:?}", shape.output())));
    }
    if grad_weights.dtype() != DType::F32 || grad_weights.numel() != shape.n_weights() {
        return Err(Error::shape(OP, format!("grad_weights must be f32 with {} elements, got {grad_weights:?}", shape.n_weights())));
    }
    let mut p = params(shape, n, act);
    p.want_dx = want_dx as u32;
    let saved = gpu.empty(&[n.max(1), shape.saved_len()], DType::F32)?;
    let dx = if want_dx { gpu.empty(&[n, shape.input()], DType::F32)? } else { gpu.empty(&[1], DType::F32)? };
    gpu.dispatch(
        "mlp.backward_deltas",
        &key("backward_deltas"),
        &p,
        &[weights, x, dy, &saved, &dx],
        grid_for(gpu, n, WG),
    )?;
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let chunk = GRAD_CHUNK.max(n.div_ceil(max));
    let chunks = n.div_ceil(chunk).max(1);
    p.chunk = chunk as u32;
    let partials = gpu.empty(&[chunks, shape.n_weights()], DType::F32)?;
    let wx = (shape.n_weights() as u32).div_ceil(WG);
    gpu.dispatch("mlp.weight_grads", &key("weight_grads"), &p, &[&saved, &partials], [wx, chunks as u32, 1])?;
    reduce_partials(gpu, &partials, grad_weights)?;
    Ok(want_dx.then_some(dx))
}

/// `grad[i] += Σ_c partials[c, i]` for `partials` f32 `[chunks, P]`, `grad` f32 `[P]`.
pub fn reduce_partials(gpu: &Gpu, partials: &Tensor, grad: &Tensor) -> Result<()> {
    if partials.dtype() != DType::F32 || grad.dtype() != DType::F32 || partials.rank() != 2 || partials.dim(1) != grad.numel() {
        return Err(Error::shape("mlp.reduce_partials", format!("partials {partials:?} do not match gradient {grad:?}")));
    }
    let p = Params { n: grad.numel() as u32, chunk: partials.dim(0) as u32, ..Default::default() };
    gpu.dispatch("mlp.reduce_partials", &key("reduce_partials"), &p, &[partials, grad], grid_for(gpu, grad.numel(), WG))
}

/// tcnn's spherical-harmonics encoding of the ray directions of `rays`
/// (f32 `[n, 8]`: origin, 0, direction, 0): `[n, degree²]`, degree 1..=4.
pub fn sh_encode(gpu: &Gpu, rays: &Tensor, degree: u32) -> Result<Tensor> {
    if !(1..=4).contains(&degree) {
        return Err(Error::Invalid(format!("spherical harmonics degree {degree}, expected 1..=4")));
    }
    if rays.dtype() != DType::F32 || rays.rank() != 2 || rays.dim(1) != 8 {
        return Err(Error::shape("mlp.sh_encode", format!("rays must be f32 [n, 8], got {rays:?}")));
    }
    let n = rays.dim(0);
    let out = gpu.empty(&[n, (degree * degree) as usize], DType::F32)?;
    let p = Params { n: n as u32, degree, ..Default::default() };
    gpu.dispatch("mlp.sh_encode", &key("sh_encode"), &p, &[rays, &out], grid_for(gpu, n, WG))?;
    Ok(out)
}
