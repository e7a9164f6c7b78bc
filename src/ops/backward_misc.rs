//! Small input gradients (`shaders/backward_misc.wgsl`): SiLU, GEGLU and softmax;
//! and the input gradients of attention composed from them and matmul.
//!
//! Every op takes the forward's tensor in its own storage type and the
//! gradient in another (the VAE backward keeps its gradients in f32 while an
//! f16 model stores its activations in f16); the result has the gradient's.

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor, grid_1d};
use crate::ops::concat::{concat, narrow, permute};
use crate::ops::elementwise::add;
use crate::ops::matmul::{MatmulOpts, matmul};
use crate::ops::norm::{WORKGROUP_SIZES, workgroup_size};
use crate::ops::softmax::softmax;
use crate::ops::{WG_1D, expect_float, expect_rank, float_dtypes, grid_for, u32_of};

crate::kernel_params! {
    struct Params {
        n: u32,
        len: u32,
        scale: f32,
        _pad: u32,
    }
}

fn key(entry: &'static str, t: DType, tg: DType, wg: u32, subgroups: bool) -> KernelKey {
    KernelKey::new("backward_misc", entry).params::<Params>()
        .def("T", t.wgsl())
        .def("TG", tg.wgsl())
        .def("WG", wg)
        .flag("SUBGROUP_OPS", subgroups)
        .flag("SILU_GRAD", entry == "silu_grad")
        .flag("GEGLU_GRAD", entry == "geglu_grad")
        .flag("SOFTMAX_GRAD", entry == "softmax_grad")
}

fn silu_key(t: DType, tg: DType) -> KernelKey {
    key("silu_grad", t, tg, WG_1D, false)
}
fn geglu_key(t: DType, tg: DType) -> KernelKey {
    key("geglu_grad", t, tg, WG_1D, false)
}
fn softmax_key(t: DType, tg: DType, wg: u32, subgroups: bool) -> KernelKey {
    key("softmax_grad", t, tg, wg, subgroups)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let subgroups: &[bool] = if caps.features.subgroups { &[false, true] } else { &[false] };
    let mut v = Vec::new();
    for t in float_dtypes(caps) {
        for tg in float_dtypes(caps) {
            v.push(silu_key(t, tg));
            v.push(geglu_key(t, tg));
            for wg in WORKGROUP_SIZES {
                for &sg in subgroups {
                    v.push(softmax_key(t, tg, wg, sg));
                }
            }
        }
    }
    v
}

fn same_shape(op: &'static str, fwd_name: &str, fwd: &Tensor, dy: &Tensor) -> Result<()> {
    expect_float(op, fwd)?;
    expect_float(op, dy)?;
    if fwd.shape() != dy.shape() {
        return Err(Error::shape(op, format!("dy {:?} must have the shape of {fwd_name} {:?}", dy.shape(), fwd.shape())));
    }
    Ok(())
}

/// The gradient of `silu(x)` with respect to x given the output gradient
/// `dy` (same shape): `dy · silu'(x)`, in dy's dtype.
pub fn silu_input_grad(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_input_grad";
    same_shape(OP, "the forward's input x", x, dy)?;
    let dx = gpu.empty(dy.shape(), dy.dtype())?;
    let p = Params { n: u32_of(OP, "elements", x.numel())?, len: 0, scale: 1.0, _pad: 0 };
    gpu.dispatch("backward_misc.silu_grad", &silu_key(x.dtype(), dy.dtype()), &p, &[x, dy, &dx], grid_for(gpu, x.numel(), WG_1D))?;
    Ok(dx)
}

/// The gradient of GEGLU (`y = x[..., :F] · gelu(x[..., F:])`, exact GELU,
/// as [`crate::ops::elementwise::geglu`]) with respect to its input `x`
/// [..., 2F], given `dy` [..., F]: both halves, in dy's dtype.
pub fn geglu_input_grad(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "geglu_input_grad";
    expect_float(OP, x)?;
    expect_float(OP, dy)?;
    let last = x.shape().last().copied().unwrap_or(0);
    let mut half = x.shape().to_vec();
    if let Some(l) = half.last_mut() {
        *l /= 2;
    }
    if x.rank() == 0 || last % 2 != 0 || dy.shape() != half.as_slice() {
        return Err(Error::shape(OP, format!("x must be [..., 2F] and dy [..., F]; got x {:?} and dy {:?}", x.shape(), dy.shape())));
    }
    let dx = gpu.empty(x.shape(), dy.dtype())?;
    if dy.numel() == 0 {
        return Ok(dx);
    }
    let p = Params { n: u32_of(OP, "elements", dy.numel())?, len: (last / 2) as u32, scale: 1.0, _pad: 0 };
    gpu.dispatch("backward_misc.geglu_grad", &geglu_key(x.dtype(), dy.dtype()), &p, &[x, dy, &dx], grid_for(gpu, dy.numel(), WG_1D))?;
    Ok(dx)
}

/// The gradient of `y = softmax(scale·x)` (along the last dimension, as
/// [`crate::ops::softmax::softmax`]) with respect to x, from the forward's
/// output `y` and the output gradient `dy` (same shape):
/// `scale · y ⊙ (dy − Σ dy⊙y)` per row, in dy's dtype.
pub fn softmax_input_grad(gpu: &Gpu, y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    softmax_input_grad_with_workgroup(gpu, y, dy, scale, workgroup_size(gpu))
}

/// [`softmax_input_grad`] with an explicit workgroup size, one of [`WORKGROUP_SIZES`].
pub fn softmax_input_grad_with_workgroup(gpu: &Gpu, y: &Tensor, dy: &Tensor, scale: f32, wg: u32) -> Result<Tensor> {
    const OP: &str = "softmax_input_grad";
    if !WORKGROUP_SIZES.contains(&wg) {
        return Err(Error::Invalid(format!("{OP}: workgroup size {wg} is not one of {WORKGROUP_SIZES:?}")));
    }
    same_shape(OP, "the forward's output y", y, dy)?;
    let len = *y.shape().last().ok_or_else(|| Error::shape(OP, "expected y of shape [..., D], got a scalar"))?;
    let dx = gpu.empty(dy.shape(), dy.dtype())?;
    if y.numel() == 0 {
        return Ok(dx);
    }
    let rows = u32_of(OP, "rows", y.numel() / len)?;
    u32_of(OP, "elements", y.numel())?;
    let p = Params { n: rows, len: len as u32, scale, _pad: 0 };
    gpu.dispatch(
        "backward_misc.softmax_grad",
        &softmax_key(y.dtype(), dy.dtype(), wg, gpu.features().subgroups),
        &p,
        &[y, dy, &dx],
        grid_1d(rows, gpu.limits().max_compute_workgroups_per_dimension),
    )?;
    Ok(dx)
}

/// The input gradients of multi-head attention.
pub struct AttentionGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

/// The gradients of `o = softmax(q·kᵀ/√D)·v` per head with respect to q, k
/// and v, given `d_out` = ∂L/∂o. Layouts as [`crate::ops::attention::attention`]:
/// q `[B, Lq, H·D]`, k and v `[B, Lk, H·D]`, d_out `[B, Lq, H·D]`; the
/// gradients have their inputs' shapes and d_out's dtype.
///
/// By matmuls and [`softmax_input_grad`], in blocks of query rows: for each
/// block it recomputes the probabilities P = softmax(q·kᵀ/√D) and then
/// dv += Pᵀ·do, dP = do·vᵀ, dS = P ⊙ (dP − Σ dP⊙P)/√D, dq = dS·k,
/// dk += dSᵀ·q (dk and dv summed in f32 over the blocks). Memory: the
/// block's B·H × rows × Lk f32 matrices (scores, P, dP, dS, a few alive at
/// once), each within the adapter's storage binding limit, never the whole
/// Lq × Lk: SD's 64×64 latents (4 096 tokens, 8 heads) go in blocks of
/// 1 024 rows under a 128 MiB limit. A fused (flash) kernel would also keep
/// the blocks out of global memory; this one does not.
pub fn attention_input_grads(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, d_out: &Tensor, heads: usize) -> Result<AttentionGrads> {
    attention_input_grads_within(gpu, q, k, v, d_out, heads, gpu.max_binding_bytes())
}

/// [`attention_input_grads`] whose score-sized matrices each stay within
/// `max_bytes`: the queries go in blocks of rows.
pub fn attention_input_grads_within(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, d_out: &Tensor, heads: usize, max_bytes: u64) -> Result<AttentionGrads> {
    const OP: &str = "attention_input_grads";
    for (name, t) in [("q", q), ("k", k), ("v", v), ("d_out", d_out)] {
        expect_float(OP, t)?;
        expect_rank(OP, t, 3).map_err(|_| Error::shape(OP, format!("{name} must be [B, L, H·D], got {t:?}")))?;
    }
    let (b, lq, hd) = (q.dim(0), q.dim(1), q.dim(2));
    let lk = k.dim(1);
    if k.shape() != [b, lk, hd] || v.shape() != k.shape() || d_out.shape() != q.shape() {
        return Err(Error::shape(
            OP,
            format!("q {:?} and d_out {:?} must be [B, Lq, H·D], k {:?} and v {:?} [B, Lk, H·D]", q.shape(), d_out.shape(), k.shape(), v.shape()),
        ));
    }
    if heads == 0 || hd % heads != 0 {
        return Err(Error::shape(OP, format!("{heads} heads do not divide the width {hd}")));
    }
    let d = hd / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let grad = d_out.dtype();
    // [B, L, H·D] -> [B·H, L, D] and back (no copies for one head).
    let split = |t: &Tensor, l: usize| -> Result<Tensor> {
        if heads == 1 {
            return Ok(t.clone());
        }
        permute(gpu, &t.reshape(&[b, l, heads, d])?, &[0, 2, 1, 3])?.reshape(&[b * heads, l, d])
    };
    let merge = |t: &Tensor, l: usize| -> Result<Tensor> {
        if heads == 1 {
            return Ok(t.clone());
        }
        permute(gpu, &t.reshape(&[b, heads, l, d])?, &[0, 2, 1, 3])?.reshape(&[b, l, hd])
    };
    let (qh, kh, vh, doh) = (split(q, lq)?, split(k, lk)?, split(v, lk)?, split(d_out, lq)?);
    let f32_out = |trans_a: bool, trans_b: bool, out: DType| MatmulOpts { trans_a, trans_b, out_dtype: Some(out), ..Default::default() };

    // Blocks of query rows whose [B·H, rows, Lk] f32 matrices each stay
    // within the binding limit: softmax is per row, so each block's
    // probabilities are exact; dk and dv sum over the blocks.
    let rows = block_rows(b * heads, lq, lk, max_bytes);
    let (mut dq_parts, mut dk, mut dv) = (Vec::new(), None::<Tensor>, None::<Tensor>);
    for start in (0..lq).step_by(rows.max(1)) {
        let n = rows.min(lq - start);
        let (q_blk, do_blk) = if n == lq { (qh.clone(), doh.clone()) } else { (narrow(gpu, &qh, 1, start, n)?, narrow(gpu, &doh, 1, start, n)?) };
        // The probabilities, in f32 whatever the storage.
        let scores = matmul(gpu, &q_blk, &kh, None, &f32_out(false, true, DType::F32))?;
        let probs = softmax(gpu, &scores, scale)?;
        drop(scores);
        let dv_blk = matmul(gpu, &probs, &do_blk, None, &f32_out(true, false, DType::F32))?;
        let dprobs = matmul(gpu, &do_blk, &vh, None, &f32_out(false, true, DType::F32))?;
        let dscores = softmax_input_grad(gpu, &probs, &dprobs, scale)?;
        drop((probs, dprobs));
        dq_parts.push(matmul(gpu, &dscores, &kh, None, &f32_out(false, false, grad))?);
        let dk_blk = matmul(gpu, &dscores, &q_blk, None, &f32_out(true, false, DType::F32))?;
        dk = Some(match dk {
            Some(acc) => add(gpu, &acc, &dk_blk)?,
            None => dk_blk,
        });
        dv = Some(match dv {
            Some(acc) => add(gpu, &acc, &dv_blk)?,
            None => dv_blk,
        });
    }
    let dq = if dq_parts.len() == 1 { dq_parts.remove(0) } else { concat(gpu, &dq_parts.iter().collect::<Vec<_>>(), 1)? };
    let (dk, dv) = (dk.expect("at least one block"), dv.expect("at least one block"));
    let (dk, dv) = (gpu.to_dtype(&dk, grad)?, gpu.to_dtype(&dv, grad)?);
    Ok(AttentionGrads { dq: merge(&dq, lq)?, dk: merge(&dk, lk)?, dv: merge(&dv, lk)? })
}

/// Query rows a block of the attention backward takes so that its
/// [batch, rows, lk] f32 matrices stay within `max_bytes` (at least one row).
fn block_rows(batch: usize, lq: usize, lk: usize, max_bytes: u64) -> usize {
    let row_bytes = (batch * lk * 4).max(1) as u64;
    ((max_bytes / row_bytes) as usize).clamp(1, lq.max(1))
}
