//! Activations, broadcasting binary ops, GEGLU and dtype casts
//! (`shaders/elementwise.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor};
use crate::ops::{WG_1D, expect_float, float_dtypes, grid_3d, grid_for, merge_dims};

/// Pointwise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    None,
    Silu,
    Relu,
    /// Exact GELU (erf), as torch's default.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// x·sigmoid(1.702x), CLIP's activation.
    QuickGelu,
}

impl Act {
    pub const ALL: [Act; 6] = [Act::None, Act::Silu, Act::Relu, Act::Gelu, Act::GeluTanh, Act::QuickGelu];
    fn wgsl(self) -> &'static str {
        match self {
            Act::None => "act_none",
            Act::Silu => "act_silu",
            Act::Relu => "act_relu",
            Act::Gelu => "act_gelu",
            Act::GeluTanh => "act_gelu_tanh",
            Act::QuickGelu => "act_quick_gelu",
        }
    }
    /// The code a kernel parameter names it by (`activation_by_code` in
    /// shaders/activations.wgsl).
    pub fn code(self) -> u32 {
        match self {
            Act::None => 0,
            Act::Silu => 1,
            Act::Relu => 2,
            Act::Gelu => 3,
            Act::GeluTanh => 4,
            Act::QuickGelu => 5,
        }
    }
    /// The reference implementation (f64 inside, as the tests' CPU reference).
    pub fn apply(self, x: f32) -> f32 {
        self.apply_f64(x as f64) as f32
    }
    /// The reference implementation in f64 (ops::reference).
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Act::None => x,
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::Relu => x.max(0.0),
            Act::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Act::GeluTanh => 0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh()),
            Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }
    /// Parses a config name (`silu`, `gelu`, `quick_gelu`, `gelu_pytorch_tanh`, ...).
    pub fn parse(s: &str) -> Result<Act> {
        Ok(match s {
            "silu" | "swish" => Act::Silu,
            "relu" => Act::Relu,
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu-approximate" | "gelu_tanh" => Act::GeluTanh,
            "quick_gelu" => Act::QuickGelu,
            "none" | "identity" | "linear" => Act::None,
            _ => return Err(Error::Invalid(format!("unknown activation {s:?}"))),
        })
    }
}

/// erf for the CPU reference, by its Taylor series near 0 and the continued
/// fraction of erfc further out (accurate to ~1e-15).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        let mut sum = a;
        let mut term = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a * a / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

/// Binary operators with broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// a·x + b·y with two scalars (see [`axpby`]).
    Axpby,
}

impl BinOp {
    pub const ALL: [BinOp; 4] = [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div];
    fn wgsl(self) -> &'static str {
        match self {
            BinOp::Add => "op_add",
            BinOp::Sub => "op_sub",
            BinOp::Mul => "op_mul",
            BinOp::Div => "op_div",
            BinOp::Axpby => "op_axpby",
        }
    }
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::Axpby => panic!("Axpby needs its scalars: use axpby"),
        }
    }
}

const MAX_RANK: usize = 8;

crate::kernel_params! {
    struct Params {
        n: u32,
        inner: u32,
        scale: f32,
        shift: f32,
        shape: [u32; MAX_RANK],
        a_strides: [u32; MAX_RANK],
        b_strides: [u32; MAX_RANK],
    }
}

fn params(n: usize) -> Params {
    Params { n: n as u32, inner: 0, scale: 1.0, shift: 0.0, shape: [1; MAX_RANK], a_strides: [0; MAX_RANK], b_strides: [0; MAX_RANK] }
}

fn key(entry: &'static str, ta: DType, tb: DType, to: DType) -> KernelKey {
    KernelKey::new("elementwise", entry).params::<Params>()
        .def("TA", ta.wgsl())
        .def("TB", tb.wgsl())
        .def("TO", to.wgsl())
        .def("WG", WG_1D)
        .flag("UNARY", entry == "unary")
        .flag("BINARY", entry == "binary")
        .flag("GEGLU", entry == "geglu")
}

fn unary_key(ta: DType, to: DType, act: Act) -> KernelKey {
    key("unary", ta, ta, to).def("ACT", act.wgsl()).flag("CLAMP", false)
}

/// How a binary op finds its inputs' elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Indexing {
    /// Same shapes: the output's index.
    Same,
    /// A broadcast of merged rank ≤ 3: coordinates from the dispatch grid.
    Grid,
    /// Any broadcast: coordinates by division.
    Strided,
}

fn binary_key(ta: DType, tb: DType, to: DType, op: BinOp, act: Act, indexing: Indexing) -> KernelKey {
    key("binary", ta, tb, to)
        .def("OP", op.wgsl())
        .def("ACT", act.wgsl())
        .flag("SAME_SHAPE", indexing == Indexing::Same)
        .flag("GRID", indexing == Indexing::Grid)
}

/// The broadcast of `p` (shape and strides padded to MAX_RANK) with size-1
/// dimensions dropped and neighbours contiguous in both inputs merged (the
/// output is contiguous everywhere), placed in the last slots, and its shape
/// outermost first; `None` past rank 3 (then `p` is kept as it is).
fn merged_broadcast(p: &Params) -> Option<(Params, Vec<usize>)> {
    let dims = (0..MAX_RANK).map(|d| (p.shape[d] as usize, [p.a_strides[d] as usize, p.b_strides[d] as usize]));
    let merged = merge_dims(dims);
    if merged.len() > 3 {
        return None;
    }
    let mut q = Params { shape: [1; MAX_RANK], a_strides: [0; MAX_RANK], b_strides: [0; MAX_RANK], ..*p };
    for (k, &(size, [sa, sb])) in merged.iter().rev().enumerate() {
        let slot = MAX_RANK - 1 - k;
        (q.shape[slot], q.a_strides[slot], q.b_strides[slot]) = (size as u32, sa as u32, sb as u32);
    }
    Some((q, merged.iter().map(|d| d.0).collect()))
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let dts = float_dtypes(caps);
    let mut v = Vec::new();
    for &ta in &dts {
        for &to in &dts {
            for act in Act::ALL {
                v.push(unary_key(ta, to, act));
            }
        }
        v.push(unary_key(ta, DType::U32, Act::None));
        v.push(unary_key(DType::U32, ta, Act::None));
        for op in BinOp::ALL {
            for indexing in [Indexing::Same, Indexing::Grid, Indexing::Strided] {
                v.push(binary_key(ta, ta, ta, op, Act::None, indexing));
            }
        }
        v.push(binary_key(ta, ta, ta, BinOp::Add, Act::Silu, Indexing::Grid));
        v.push(binary_key(ta, ta, ta, BinOp::Add, Act::Silu, Indexing::Strided));
        v.push(binary_key(ta, ta, ta, BinOp::Axpby, Act::None, Indexing::Same));
        v.push(clamp_key(ta));
        v.push(key("geglu", ta, ta, ta));
    }
    v
}

/// y = act(x·scale + shift), stored as `out` dtype.
pub fn unary_to(gpu: &Gpu, x: &Tensor, act: Act, scale: f32, shift: f32, out: DType) -> Result<Tensor> {
    let y = gpu.empty(x.shape(), out)?;
    let mut p = params(x.numel());
    p.scale = scale;
    p.shift = shift;
    gpu.dispatch(
        "elementwise.unary",
        &unary_key(x.dtype(), out, act),
        &p,
        &[x, &y],
        grid_for(gpu, x.numel(), WG_1D),
    )?;
    Ok(y)
}

/// y = act(x), same dtype.
pub fn activation(gpu: &Gpu, x: &Tensor, act: Act) -> Result<Tensor> {
    expect_float("activation", x)?;
    unary_to(gpu, x, act, 1.0, 0.0, x.dtype())
}

pub fn silu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    activation(gpu, x, Act::Silu)
}
pub fn gelu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    activation(gpu, x, Act::Gelu)
}
pub fn quick_gelu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    activation(gpu, x, Act::QuickGelu)
}

/// y = x·scale + shift.
pub fn affine(gpu: &Gpu, x: &Tensor, scale: f32, shift: f32) -> Result<Tensor> {
    expect_float("affine", x)?;
    unary_to(gpu, x, Act::None, scale, shift, x.dtype())
}

/// y = x·scale.
pub fn scale(gpu: &Gpu, x: &Tensor, s: f32) -> Result<Tensor> {
    affine(gpu, x, s, 0.0)
}

/// y = min(max(x, lo), hi).
pub fn clamp(gpu: &Gpu, x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    expect_float("clamp", x)?;
    let y = gpu.empty(x.shape(), x.dtype())?;
    let mut p = params(x.numel());
    p.scale = lo;
    p.shift = hi;
    gpu.dispatch("elementwise.clamp", &clamp_key(x.dtype()), &p, &[x, &y], grid_for(gpu, x.numel(), WG_1D))?;
    Ok(y)
}

fn clamp_key(dt: DType) -> KernelKey {
    key("unary", dt, dt, dt).def("ACT", "act_none").flag("CLAMP", true)
}

/// Converts storage type (f32 <-> f16, and float <-> u32 for indices).
pub fn cast(gpu: &Gpu, x: &Tensor, to: DType) -> Result<Tensor> {
    unary_to(gpu, x, Act::None, 1.0, 0.0, to)
}

/// Numpy-style broadcast of two shapes (aligned at the right).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Element strides of `shape` when broadcast to `out` (0 on broadcast dims),
/// padded in front to MAX_RANK.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> [u32; MAX_RANK] {
    let mut s = [0u32; MAX_RANK];
    let mut stride = 1usize;
    for k in 0..out.len() {
        let d_out = out.len() - 1 - k;
        let slot = MAX_RANK - 1 - k;
        if k < shape.len() {
            let d = shape[shape.len() - 1 - k];
            s[slot] = if d == 1 && out[d_out] != 1 { 0 } else { stride as u32 };
            stride *= d;
        }
    }
    s
}

/// act(a ∘ b) with numpy broadcasting; the result has `a`'s dtype.
pub fn binary_act(gpu: &Gpu, a: &Tensor, b: &Tensor, op: BinOp, act: Act) -> Result<Tensor> {
    binary_scalars(gpu, a, b, op, act, 1.0, 0.0)
}

/// α·x + β·y for same-shape tensors, in one dispatch.
pub fn axpby(gpu: &Gpu, alpha: f32, x: &Tensor, beta: f32, y: &Tensor) -> Result<Tensor> {
    if x.shape() != y.shape() {
        return Err(Error::shape("axpby", format!("{x:?} and {y:?} differ in shape")));
    }
    binary_scalars(gpu, x, y, BinOp::Axpby, Act::None, alpha, beta)
}

fn binary_scalars(gpu: &Gpu, a: &Tensor, b: &Tensor, op: BinOp, act: Act, scale: f32, shift: f32) -> Result<Tensor> {
    expect_float("binary", a)?;
    expect_float("binary", b)?;
    let out_shape = broadcast_shape(a.shape(), b.shape())
        .ok_or_else(|| Error::shape("binary", format!("shapes {:?} and {:?} do not broadcast", a.shape(), b.shape())))?;
    if out_shape.len() > MAX_RANK {
        return Err(Error::shape("binary", format!("rank {} is over the supported {MAX_RANK}", out_shape.len())));
    }
    let y = gpu.empty(&out_shape, a.dtype())?;
    let same = a.shape() == out_shape.as_slice() && b.shape() == out_shape.as_slice();
    let mut p = params(y.numel());
    p.scale = scale;
    p.shift = shift;
    for (k, d) in out_shape.iter().rev().enumerate() {
        p.shape[MAX_RANK - 1 - k] = *d as u32;
    }
    p.a_strides = broadcast_strides(a.shape(), &out_shape);
    p.b_strides = broadcast_strides(b.shape(), &out_shape);
    if y.numel() == 0 {
        return Ok(y);
    }
    let grid = merged_broadcast(&p).filter(|_| !same).and_then(|(q, shape)| Some((q, grid_3d(gpu, &shape, WG_1D)?)));
    let (indexing, p, workgroups) = match grid {
        Some((q, g)) => (Indexing::Grid, q, g),
        None if same => (Indexing::Same, p, grid_for(gpu, y.numel(), WG_1D)),
        None => (Indexing::Strided, p, grid_for(gpu, y.numel(), WG_1D)),
    };
    gpu.dispatch("elementwise.binary", &binary_key(a.dtype(), b.dtype(), y.dtype(), op, act, indexing), &p, &[a, b, &y], workgroups)?;
    Ok(y)
}

pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_act(gpu, a, b, BinOp::Add, Act::None)
}
pub fn sub(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_act(gpu, a, b, BinOp::Sub, Act::None)
}
pub fn mul(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_act(gpu, a, b, BinOp::Mul, Act::None)
}
pub fn div(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_act(gpu, a, b, BinOp::Div, Act::None)
}

/// GEGLU: x [..., 2F] -> x[..., :F] · gelu(x[..., F:]) of shape [..., F].
pub fn geglu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    expect_float("geglu", x)?;
    let last = *x.shape().last().ok_or_else(|| Error::shape("geglu", "scalar input"))?;
    if last % 2 != 0 {
        return Err(Error::shape("geglu", format!("last dimension of {:?} must be even", x.shape())));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = last / 2;
    let y = gpu.empty(&shape, x.dtype())?;
    let mut p = params(y.numel());
    p.inner = (last / 2) as u32;
    gpu.dispatch(
        "elementwise.geglu",
        &key("geglu", x.dtype(), x.dtype(), x.dtype()),
        &p,
        &[x, &y],
        grid_for(gpu, y.numel(), WG_1D),
    )?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from tables of the error function.
        for (x, e) in [(0.0, 0.0), (0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (3.0, 0.9999779095030014)] {
            assert!((erf(x) - e).abs() < 1e-12, "erf({x}) = {} vs {e}", erf(x));
            assert!((erf(-x) + e).abs() < 1e-12);
        }
    }

    #[test]
    fn broadcast_shapes_and_strides() {
        assert_eq!(broadcast_shape(&[2, 3, 4], &[4]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[2, 3], &[4]), None);
        let s = broadcast_strides(&[3, 1], &[2, 3, 4]);
        assert_eq!(&s[MAX_RANK - 3..], &[0, 1, 0]);
    }
}
