//! The input gradient of [`conv2d`](crate::ops::conv2d::conv2d)
//! (`shaders/conv2d_backward.wgsl`): the transposed convolution of the output
//! gradient with the forward weights, for any kernel size, stride and
//! padding (groups = 1); and [`conv2d_weight_grad`], the weight and bias
//! gradients (a plain loop per weight element).
//!
//! Three kernels: `grad_simple` (one invocation per input-gradient element,
//! the baseline), `grad_gemm` (an implicit GEMM blocking 8 input channels ×
//! 4 pixels per invocation) and `grad_subgroup` (the GEMM with the output
//! gradient shared by subgroup broadcasts), mirroring the forward's kernels.
//! The GEMMs run one dispatch per stride phase so that no tile mixes pixels
//! whose live taps differ (see the shader's header), and read the weights
//! repacked by `grad_pack` (one extra small dispatch per call).

use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor, grid_1d};
use crate::ops::{expect_float, float_dtypes, grid_for, u32_of};

/// The op errors name.
const OP: &str = "conv2d_input_grad";

/// Workgroup size of every conv2d_backward kernel.
const WG: u32 = 64;
/// Input channels × pixel vec4s per grad_gemm invocation (8 × 4 pixels, the
/// forward's fastest GEMM blocking on llvmpipe).
const GEMM_BM: u32 = 8;
const GEMM_PV: u32 = 1;
/// Pixels per grad_subgroup workgroup tile.
const SUBGROUP_TILE_PIXELS: u32 = 64;

crate::ops::kernel_variants! {
    /// The kernel an input-gradient convolution runs with.
    pub enum Conv2dBackwardVariant ("conv2d_backward") {
        /// One invocation per input-gradient element.
        Simple = "simple",
        /// Implicit GEMM, 8 input channels × 4 pixels per invocation.
        Gemm = "gemm",
        /// Implicit GEMM, 4 channels × 8 pixels per invocation, the output
        /// gradient shared by subgroup broadcasts. Needs subgroups of 8 to 64
        /// lanes ([`Conv2dBackwardVariant::available`]).
        Subgroup = "subgroup",
    }
}

impl Conv2dBackwardVariant {
    /// Whether a device with `caps` can run this variant.
    pub fn available(self, caps: Caps) -> bool {
        match self {
            Conv2dBackwardVariant::Subgroup => crate::ops::conv2d::subgroup_tiles_available(caps),
            _ => true,
        }
    }

    /// The variant used when the options name none: `subgroup` where
    /// available, else `gemm`. Measured on llvmpipe (the ignored timing test
    /// in tests/conv2d_backward.rs) for a 3×3 conv, 128 → 128 channels at
    /// 64×64: subgroup 156–185 ms, gemm 370–420 ms, simple 3.5 s; the
    /// forward conv2d of the same layer 124–195 ms (a shared, noisy machine).
    pub fn default_for(gpu: &Gpu) -> Conv2dBackwardVariant {
        if Conv2dBackwardVariant::Subgroup.available(gpu.caps()) {
            Conv2dBackwardVariant::Subgroup
        } else {
            Conv2dBackwardVariant::Gemm
        }
    }
}

/// The forward convolution's geometry and the kernel choice of
/// [`conv2d_input_grad`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dBackwardOpts {
    /// The forward's step between output pixels, both axes (≥ 1).
    pub stride: usize,
    /// The forward's zero padding on every side.
    pub padding: usize,
    /// Kernel to run; `None` takes the device's `--variant
    /// conv2d_backward=NAME` if given, else [`Conv2dBackwardVariant::default_for`].
    pub variant: Option<Conv2dBackwardVariant>,
}

impl Default for Conv2dBackwardOpts {
    fn default() -> Self {
        Conv2dBackwardOpts { stride: 1, padding: 0, variant: None }
    }
}

crate::kernel_params! {
    struct Params {
        batch: u32,
        cin: u32,
        h: u32,
        w: u32,
        cout: u32,
        ho: u32,
        wo: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad: u32,
        n_pix: u32,
        cin_pad: u32,
        tile_c: u32,
        phase_y: u32,
        phase_x: u32,
        hq: u32,
        wq: u32,
        _pad: [u32; 2],
    }
}

fn key(entry: &'static str, ty: DType, tw: DType) -> KernelKey {
    KernelKey::new("conv2d_backward", entry).params::<Params>()
        .def("TY", ty.wgsl())
        .def("TW", tw.wgsl())
        .def("WG", WG)
        .flag("SIMPLE", entry == "grad_simple")
        .flag("PACK", entry == "grad_pack")
        .flag("GEMM", entry == "grad_gemm")
        .flag("SUBGROUP_GEMM", entry == "grad_subgroup")
        .flag("PACKED", entry == "grad_gemm" || entry == "grad_subgroup")
        .flag("WEIGHT_GRAD", entry == "grad_weight")
}

/// Input channels per grad_subgroup workgroup tile: 4 per lane of the
/// largest subgroup the device may run.
fn subgroup_tile_channels(caps: Caps) -> u32 {
    4 * caps.subgroup_max_size
}

/// The key of `variant`'s kernel.
fn grad_key(variant: Conv2dBackwardVariant, caps: Caps, ty: DType, tw: DType) -> KernelKey {
    match variant {
        Conv2dBackwardVariant::Simple => key("grad_simple", ty, tw),
        Conv2dBackwardVariant::Gemm => key("grad_gemm", ty, tw).def("BM", GEMM_BM).def("PV", GEMM_PV),
        Conv2dBackwardVariant::Subgroup => key("grad_subgroup", ty, tw)
            .def("TP", SUBGROUP_TILE_PIXELS)
            .def("TC", subgroup_tile_channels(caps)),
    }
}

/// The key of the weight packing kernel (the GEMMs' weight layout).
fn pack_key(tw: DType) -> KernelKey {
    key("grad_pack", DType::F32, tw)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let dts = float_dtypes(caps);
    let mut v: Vec<KernelKey> = dts.iter().map(|&tw| pack_key(tw)).collect();
    for &ty in &dts {
        for &tx in &dts {
            v.push(key("grad_weight", ty, tx));
        }
    }
    for variant in Conv2dBackwardVariant::ALL.into_iter().filter(|v| v.available(caps)) {
        for &ty in &dts {
            for &tw in &dts {
                v.push(grad_key(variant, caps, ty, tw));
            }
        }
    }
    v
}

/// The parameters of one dispatch over the whole input (stride phase
/// (0, 0) covering every pixel, channels untiled): what `grad_simple` and
/// `grad_weight` read, and what the GEMMs start from.
fn whole_params(op: &'static str, [b, cin, h, w]: [usize; 4], [cout, ho, wo]: [usize; 3], (kh, kw): (usize, usize), stride: usize, padding: usize) -> Result<Params> {
    Ok(Params {
        batch: b as u32,
        cin: cin as u32,
        h: h as u32,
        w: w as u32,
        cout: cout as u32,
        ho: ho as u32,
        wo: wo as u32,
        kh: kh as u32,
        kw: kw as u32,
        stride: u32_of(op, "stride", stride)?,
        pad: u32_of(op, "padding", padding)?,
        n_pix: u32_of(op, "input pixels", b * h * w)?,
        cin_pad: cin as u32,
        tile_c: 1,
        phase_y: 0,
        phase_x: 0,
        hq: h as u32,
        wq: w as u32,
        _pad: [0; 2],
    })
}

/// Records the repacking of `weight` into the GEMMs' layout
/// `[cin_pad / tile_c, kh·kw·Cout, tile_c]` (see grad_pack in the shader).
fn pack_weights(gpu: &Gpu, weight: &Tensor, p: &Params) -> Result<Tensor> {
    let rows = (p.kh * p.kw * p.cout) as usize;
    let tiles = (p.cin_pad / p.tile_c) as usize;
    let packed = gpu.empty(&[tiles, rows, p.tile_c as usize], weight.dtype())?;
    u32_of(OP, "elements of the packed weight", packed.numel())?;
    gpu.dispatch(
        "conv2d_backward.pack",
        &pack_key(weight.dtype()),
        p,
        &[weight, &packed],
        grid_for(gpu, packed.numel(), WG),
    )?;
    Ok(packed)
}

/// The gradient of a convolution's loss with respect to its input: given the
/// output gradient `dy` `[B, Cout, Ho, Wo]`, the forward `weight`
/// `[Cout, Cin, kh, kw]` and the forward input's spatial size `input_hw`
/// = (H, W), returns dx `[B, Cin, H, W]` in dy's dtype (the bias has no
/// part in it). (H, W) is needed because with a stride several input sizes
/// give the same output size; it must give exactly (Ho, Wo):
/// Ho = (H + 2·padding − kh) / stride + 1. dy and weight may each be f32 or
/// f16; accumulation is f32. Rows and columns of the input that no output
/// reads (past the last full stride) get a zero gradient.
pub fn conv2d_input_grad(
    gpu: &Gpu,
    dy: &Tensor,
    weight: &Tensor,
    input_hw: (usize, usize),
    opts: Conv2dBackwardOpts,
) -> Result<Tensor> {
    expect_float(OP, dy)?;
    expect_float(OP, weight)?;
    if dy.rank() != 4 {
        return Err(Error::shape(OP, format!("expected dy of shape [B, Cout, Ho, Wo], got {:?}", dy.shape())));
    }
    if weight.rank() != 4 {
        return Err(Error::shape(OP, format!("expected weight of shape [Cout, Cin, kh, kw], got {:?}", weight.shape())));
    }
    let [b, cout, ho, wo] = [dy.dim(0), dy.dim(1), dy.dim(2), dy.dim(3)];
    let [wcout, cin, kh, kw] = [weight.dim(0), weight.dim(1), weight.dim(2), weight.dim(3)];
    let (h, w) = input_hw;
    if wcout != cout {
        return Err(Error::shape(
            OP,
            format!("weight {:?} has {wcout} output channels, but dy {:?} has {cout}", weight.shape(), dy.shape()),
        ));
    }
    if opts.stride == 0 {
        return Err(Error::shape(OP, "stride must be at least 1"));
    }
    let (ph, pw) = (h + 2 * opts.padding, w + 2 * opts.padding);
    if kh == 0 || kw == 0 || kh > ph || kw > pw {
        return Err(Error::shape(
            OP,
            format!("kernel {kh}×{kw} does not fit the padded input {ph}×{pw} (input {h}×{w}, padding {})", opts.padding),
        ));
    }
    let forward_out = ((ph - kh) / opts.stride + 1, (pw - kw) / opts.stride + 1);
    if forward_out != (ho, wo) {
        return Err(Error::shape(
            OP,
            format!(
                "dy {:?} is {ho}×{wo}, but the forward convolution of a {h}×{w} input (kernel {kh}×{kw}, stride {}, \
                 padding {}) gives {}×{}: pass the forward input's size",
                dy.shape(),
                opts.stride,
                opts.padding,
                forward_out.0,
                forward_out.1
            ),
        ));
    }
    if cout == 0 {
        // No output channel: nothing reaches the input.
        return gpu.zeros(&[b, cin, h, w], dy.dtype());
    }
    let dx = gpu.empty(&[b, cin, h, w], dy.dtype())?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    u32_of(OP, "elements of dy", dy.numel())?;
    u32_of(OP, "elements of weight", weight.numel())?;
    u32_of(OP, "elements of dx", dx.numel())?;
    let p = whole_params(OP, [b, cin, h, w], [cout, ho, wo], (kh, kw), opts.stride, opts.padding)?;

    let variant = match (opts.variant, gpu.variant_override("conv2d_backward")) {
        (Some(v), _) => v,
        (None, Some(name)) => Conv2dBackwardVariant::parse(name)?,
        (None, None) => Conv2dBackwardVariant::default_for(gpu),
    };
    if !variant.available(gpu.caps()) {
        return Err(Error::Unsupported {
            what: format!("conv2d_backward variant {}", variant.name()),
            feature: "SUBGROUP (with subgroups of 8 to 64 lanes)",
            hint: "use another variant, or none to let conv2d_input_grad choose",
        });
    }
    let label = format!("conv2d_backward.{}", variant.name());
    let key = grad_key(variant, gpu.caps(), dy.dtype(), weight.dtype());
    let (tile_c, tile_pixels) = match variant {
        Conv2dBackwardVariant::Simple => {
            gpu.dispatch(&label, &key, &p, &[dy, weight, &dx], grid_for(gpu, dx.numel(), WG))?;
            return Ok(dx);
        }
        Conv2dBackwardVariant::Gemm => (GEMM_BM, WG * 4 * GEMM_PV),
        Conv2dBackwardVariant::Subgroup => (subgroup_tile_channels(gpu.caps()), SUBGROUP_TILE_PIXELS),
    };
    let p = Params { cin_pad: p.cin.next_multiple_of(tile_c), tile_c, ..p };
    let packed = pack_weights(gpu, weight, &p)?;
    // One dispatch per stride phase; every pixel of dx is in exactly one.
    let s = opts.stride;
    for py in 0..s.min(h) {
        for px in 0..s.min(w) {
            let (hq, wq) = ((h - py).div_ceil(s), (w - px).div_ceil(s));
            let phase = Params {
                phase_y: py as u32,
                phase_x: px as u32,
                hq: hq as u32,
                wq: wq as u32,
                n_pix: u32_of(OP, "pixels of a phase", b * hq * wq)?,
                ..p
            };
            let [gx, gz, _] = grid_1d(phase.n_pix.div_ceil(tile_pixels), gpu.limits().max_compute_workgroups_per_dimension);
            gpu.dispatch(&label, &key, &phase, &[dy, &packed, &dx], [gx, p.cin_pad / tile_c, gz])?;
        }
    }
    Ok(dx)
}

/// The gradients of a convolution's loss with respect to its weight and
/// bias: given the forward input `x` `[B, Cin, H, W]`, the output gradient
/// `dy` `[B, Cout, Ho, Wo]` and the forward's kernel size, stride and
/// padding, returns (dW `[Cout, Cin, kh, kw]`, db `[Cout]`), both f32 (x and
/// dy may each be f32 or f16; accumulation is f32).
pub fn conv2d_weight_grad(gpu: &Gpu, x: &Tensor, dy: &Tensor, kernel: (usize, usize), stride: usize, padding: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "conv2d_weight_grad";
    expect_float(OP, x)?;
    expect_float(OP, dy)?;
    if x.rank() != 4 || dy.rank() != 4 || x.dim(0) != dy.dim(0) || stride == 0 {
        return Err(Error::shape(OP, format!("expected x [B, Cin, H, W], dy [B, Cout, Ho, Wo] and a stride ≥ 1; got {:?}, {:?}, stride {stride}", x.shape(), dy.shape())));
    }
    let [b, cin, h, w] = [x.dim(0), x.dim(1), x.dim(2), x.dim(3)];
    let [cout, ho, wo] = [dy.dim(1), dy.dim(2), dy.dim(3)];
    let (kh, kw) = kernel;
    let out = |n: usize, k: usize| (n + 2 * padding).checked_sub(k).map(|v| v / stride + 1);
    if out(h, kh) != Some(ho) || out(w, kw) != Some(wo) {
        return Err(Error::shape(OP, format!("a {kh}×{kw} kernel with stride {stride} and padding {padding} maps {h}×{w} to {:?}×{:?}, not dy's {ho}×{wo}", out(h, kh), out(w, kw))));
    }
    let p = whole_params(OP, [b, cin, h, w], [cout, ho, wo], (kh, kw), stride, padding)?;
    let dw = gpu.empty(&[cout, cin, kh, kw], DType::F32)?;
    if dw.numel() > 0 {
        u32_of(OP, "weight elements", dw.numel())?;
        gpu.dispatch("conv2d_backward.grad_weight", &key("grad_weight", dy.dtype(), x.dtype()), &p, &[dy, x, &dw], grid_for(gpu, dw.numel(), WG))?;
    }
    // db = Σ over the batch and the map of dy: the maps' means × their size, summed over the batch.
    let means = crate::ops::pool::global_avg_pool(gpu, &gpu.to_dtype(dy, DType::F32)?)?.reshape(&[b, cout])?;
    let ones = gpu.upload(&vec![(ho * wo) as f32; b], &[1, b], DType::F32)?;
    let db = crate::ops::matmul::matmul(gpu, &ones, &means, None, &Default::default())?.reshape(&[cout])?;
    Ok((dw, db))
}
