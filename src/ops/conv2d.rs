//! 2-D convolution with PyTorch semantics (`shaders/conv2d.wgsl`): NCHW input,
//! torch-layout weights, optional bias, zero padding, stride.
//!
//! Two kernels: `conv_simple` (one invocation per output, the baseline) and
//! `conv_gemm`, an implicit GEMM whose invocations each accumulate a block of
//! BM output channels × BN pixels in registers; [`Conv2dVariant`] names the
//! blockings on offer. `conv_gemm` reads the weights repacked by `conv_pack`
//! (one extra small dispatch per call) so that four output channels' weights
//! come in one vec4 load.

use crate::gpu::autotune::{size_class, tuned_variant};
use crate::error::{Error, Result};
use crate::gpu::{Caps, DType, Gpu, KernelKey, Tensor, grid_1d};
use crate::ops::gemm::{self, ConvGeometry, GemmCore, GemmTiles};
use crate::ops::{expect_float, float_dtypes, grid_for, u32_of};

/// The op errors name.
const OP: &str = "conv2d";

/// Workgroup size of every conv2d kernel.
const WG: u32 = 64;
/// Pixels per conv_subgroup workgroup tile.
const SUBGROUP_TILE_PIXELS: u32 = 64;

crate::ops::kernel_variants! {
    /// The kernel (and blocking) a convolution runs with.
    pub enum Conv2dVariant ("conv2d") {
        /// One invocation per output element.
        Simple = "simple",
        /// Implicit GEMM, 4 output channels × 4 pixels per invocation.
        Gemm4x4 = "gemm4x4",
        /// Implicit GEMM, 8 channels × 4 pixels per invocation.
        Gemm8x4 = "gemm8x4",
        /// Implicit GEMM, 8 channels × 8 pixels per invocation.
        Gemm8x8 = "gemm8x8",
        /// Implicit GEMM, 4 channels × 8 pixels per invocation, the inputs shared
        /// by subgroup broadcasts. Needs subgroups of 8 to 64 lanes
        /// ([`Conv2dVariant::available`]).
        Subgroup = "subgroup",
        /// For GPUs: an implicit GEMM on workgroup-memory tiles (im2col
        /// addressing while staging, the weights read as stored), sums in
        /// registers ([`crate::ops::gemm`]).
        Tiled = "tiled",
        /// The same on the matrix units where the device has them, else on
        /// their emulated twin (correct, slow: for testing).
        Coop = "coop",
    }
}

impl Conv2dVariant {
    /// Whether a device with `caps` can run this variant.
    pub fn available(self, caps: Caps) -> bool {
        match self {
            Conv2dVariant::Subgroup => subgroup_tiles_available(caps),
            _ => true,
        }
    }

    /// The variant used when the options name none, by adapter class. GPUs:
    /// the matrix units where the device has them (and they passed their
    /// first-use check), else the workgroup-tiled implicit GEMM. CPU
    /// adapters: the fastest measured on llvmpipe, `subgroup` where available
    /// (2.3× `gemm8x4`), else `gemm8x4` (4×4, 4×8, 8×8, 16×4, 16×8 and 32×4
    /// blockings were 1.3–2.5× slower: fewer loads per FMA do not pay for
    /// the spilled accumulators).
    pub fn default_for(gpu: &Gpu) -> Conv2dVariant {
        if gemm::coop_in_use(gpu) {
            return Conv2dVariant::Coop;
        }
        if gpu.info().device_type != wgpu::DeviceType::Cpu {
            return Conv2dVariant::Tiled;
        }
        if Conv2dVariant::Subgroup.available(gpu.caps()) { Conv2dVariant::Subgroup } else { Conv2dVariant::Gemm8x4 }
    }

    /// The tiled core this variant runs on, if it is one of the tiled GEMMs.
    fn gemm_core(self) -> Option<GemmCore> {
        match self {
            Conv2dVariant::Tiled => Some(GemmCore::Reg),
            Conv2dVariant::Coop => Some(GemmCore::Coop),
            _ => None,
        }
    }

    /// (output channels, pixels) accumulated per invocation by the GEMM
    /// variants. Channels are a multiple of 4 (vec4 weight loads), pixels
    /// too (vec4 accumulators).
    fn block(self) -> Option<(u32, u32)> {
        match self {
            Conv2dVariant::Simple | Conv2dVariant::Subgroup | Conv2dVariant::Tiled | Conv2dVariant::Coop => None,
            Conv2dVariant::Gemm4x4 => Some((4, 4)),
            Conv2dVariant::Gemm8x4 => Some((8, 4)),
            Conv2dVariant::Gemm8x8 => Some((8, 8)),
        }
    }
}

/// The kernel a convolution runs with: `requested` (the call's
/// [`Conv2dOpts::variant`]), else the device's `--variant conv2d=NAME`, else
/// the autotuned winner for its `bucket` (see `fsd3d bench --autotune`), else
/// [`Conv2dVariant::default_for`] the device.
pub fn choose_variant(gpu: &Gpu, requested: Option<Conv2dVariant>, bucket: impl FnOnce() -> String) -> Result<Conv2dVariant> {
    if let Some(v) = requested {
        return Ok(v);
    }
    if let Some(name) = gpu.variant_override("conv2d") {
        return Conv2dVariant::parse(name);
    }
    // A cache naming a variant this build or device lacks falls back to the default.
    let tuned = tuned_variant(gpu, "conv2d", bucket)
        .and_then(|name| Conv2dVariant::parse(&name).ok())
        .filter(|v| v.available(gpu.caps()));
    Ok(tuned.unwrap_or_else(|| Conv2dVariant::default_for(gpu)))
}

/// Stride, padding and kernel choice of [`conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOpts {
    /// Step between output pixels, both axes (≥ 1).
    pub stride: usize,
    /// Zero padding added on every side.
    pub padding: usize,
    /// Zero columns added left and right instead of `padding` (Inception's
    /// 1×7 and 7×1 convolutions pad one axis only); `padding` then pads the
    /// rows alone.
    pub padding_w: Option<usize>,
    /// Kernel to run; `None` takes the device's `--variant conv2d=NAME` if
    /// given, else [`Conv2dVariant::default_for`] the device.
    pub variant: Option<Conv2dVariant>,
}

impl Default for Conv2dOpts {
    fn default() -> Self {
        Conv2dOpts { stride: 1, padding: 0, padding_w: None, variant: None }
    }
}

/// Whether the subgroup-broadcast GEMM tiles (forward and input-gradient
/// convolutions) can run: subgroups of a power-of-two size from 8 to 64.
pub(crate) fn subgroup_tiles_available(caps: Caps) -> bool {
    caps.features.subgroups && caps.subgroup_min_size >= 8 && caps.subgroup_max_size <= 64 && caps.subgroup_max_size.is_power_of_two()
}

/// The autotune bucket of a convolution: kernel and stride exactly, channels
/// and output pixels (batch × Ho × Wo) by power-of-two size class.
pub fn autotune_bucket(dtype: DType, cin: usize, cout: usize, kernel: (usize, usize), stride: usize, pixels: usize) -> String {
    format!(
        "{dtype} k{}x{} s{stride} Cin{} Cout{} P{}",
        kernel.0,
        kernel.1,
        size_class(cin),
        size_class(cout),
        size_class(pixels)
    )
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
        cout_pad: u32,
        tile_c: u32,
        pad_w: u32,
        _pad: u32,
    }
}

fn key(entry: &'static str, tx: DType, tw: DType, bias: Option<DType>) -> KernelKey {
    KernelKey::new("conv2d", entry).params::<Params>()
        .def("TX", tx.wgsl())
        .def("TW", tw.wgsl())
        .def("TB", bias.unwrap_or(DType::F32).wgsl())
        .flag("HAS_BIAS", bias.is_some())
        .def("WG", WG)
        .flag("SIMPLE", entry == "conv_simple")
        .flag("GEMM", entry == "conv_gemm")
        .flag("PACK", entry == "conv_pack")
        .flag("SUBGROUP_GEMM", entry == "conv_subgroup")
}

/// Output channels per conv_subgroup workgroup tile: 4 per lane of the
/// largest subgroup the device may run.
fn subgroup_tile_channels(caps: Caps) -> u32 {
    4 * caps.subgroup_max_size
}

/// The key of `variant`'s convolution kernel.
fn conv_key(variant: Conv2dVariant, caps: Caps, tx: DType, tw: DType, bias: Option<DType>) -> KernelKey {
    match (variant, variant.block()) {
        (Conv2dVariant::Subgroup, _) => key("conv_subgroup", tx, tw, bias)
            .def("TP", SUBGROUP_TILE_PIXELS)
            .def("TC", subgroup_tile_channels(caps)),
        (_, None) => key("conv_simple", tx, tw, bias),
        (_, Some((bm, bn))) => key("conv_gemm", tx, tw, bias).def("BM", bm).def("PV", bn / 4),
    }
}

/// The key of the weight packing kernel (the GEMMs' weight layout).
fn pack_key(tw: DType) -> KernelKey {
    key("conv_pack", DType::F32, tw, None)
}

/// Every variant this family dispatches (for validation).
pub fn variants(caps: Caps) -> Vec<KernelKey> {
    let dts = float_dtypes(caps);
    let mut biases: Vec<Option<DType>> = vec![None];
    biases.extend(dts.iter().map(|&d| Some(d)));
    let mut v: Vec<KernelKey> = dts.iter().map(|&tw| pack_key(tw)).collect();
    // The tiled GEMMs' kernels are listed by ops::gemm.
    for variant in Conv2dVariant::ALL.into_iter().filter(|v| v.available(caps) && v.gemm_core().is_none()) {
        for &tx in &dts {
            for &tw in &dts {
                for &tb in &biases {
                    v.push(conv_key(variant, caps, tx, tw, tb));
                }
            }
        }
    }
    v
}

/// Records the repacking of `weight` into the GEMMs' layout
/// `[cout_pad / tile_c, kh·kw·Cin, tile_c]` (see conv_pack in the shader).
fn pack_weights(gpu: &Gpu, weight: &Tensor, p: &Params) -> Result<Tensor> {
    let rows = (p.kh * p.kw * p.cin) as usize;
    let tiles = (p.cout_pad / p.tile_c) as usize;
    let packed = gpu.empty(&[tiles, rows, p.tile_c as usize], weight.dtype())?;
    u32_of(OP, "elements of the packed weight", packed.numel())?;
    gpu.dispatch(
        "conv2d.pack",
        &pack_key(weight.dtype()),
        p,
        &[weight, &packed],
        grid_for(gpu, packed.numel(), WG),
    )?;
    Ok(packed)
}

/// The repacked weights of one convolution whose weights do not change (a
/// model layer's), kept between calls: the CPU kernels read the weights
/// repacked, and repacking a frozen UNet's weights on every call was 3 % of
/// the embedded prior's step. Holds a handle on the weights it was packed
/// from and repacks when given other ones (another buffer, dtype or
/// tiling); weights written in place would not be noticed, so only layers
/// that never do that keep one. Costs the packed copy's memory (the
/// weights' size again) for as long as it lives.
#[derive(Default)]
pub struct PackedWeights(std::sync::Mutex<Option<PackedEntry>>);

struct PackedEntry {
    weight: Tensor,
    cout_pad: u32,
    tile_c: u32,
    packed: Tensor,
}

impl PackedWeights {
    fn get_or_pack(&self, gpu: &Gpu, weight: &Tensor, p: &Params) -> Result<Tensor> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.as_ref() {
            let same = e.weight.same_buffer(weight) && e.weight.dtype() == weight.dtype() && e.weight.shape() == weight.shape();
            if same && e.cout_pad == p.cout_pad && e.tile_c == p.tile_c {
                return Ok(e.packed.clone());
            }
        }
        let packed = pack_weights(gpu, weight, p)?;
        *slot = Some(PackedEntry { weight: weight.clone(), cout_pad: p.cout_pad, tile_c: p.tile_c, packed: packed.clone() });
        Ok(packed)
    }

    /// Whether a packed copy is held (tests).
    pub fn is_filled(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Workgroups for the GEMMs: pixel tiles folded into x and z, channel tiles in y.
fn pixel_tiles_grid(gpu: &Gpu, pixel_tiles: u32, channel_tiles: u32) -> [u32; 3] {
    let [x, z, _] = grid_1d(pixel_tiles, gpu.limits().max_compute_workgroups_per_dimension);
    [x, channel_tiles, z]
}

/// 2-D convolution as torch.nn.functional.conv2d: x `[B, Cin, H, W]`, weight
/// `[Cout, Cin, kh, kw]`, bias `[Cout]`, giving `[B, Cout, Ho, Wo]` with
/// Ho = (H + 2·padding − kh) / stride + 1 (likewise Wo), in x's dtype.
/// Input, weight and bias may each be f32 or f16; accumulation is f32.
pub fn conv2d(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, opts: Conv2dOpts) -> Result<Tensor> {
    conv2d_with(gpu, x, weight, bias, None, opts, None, None)
}

/// [`conv2d`] (plus `residual` when given) with weights that do not change
/// between calls: kernels that read repacked weights pack them once into
/// `packed` and reuse them.
pub fn conv2d_frozen(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    opts: Conv2dOpts,
    packed: &PackedWeights,
) -> Result<Tensor> {
    conv2d_with(gpu, x, weight, bias, residual, opts, None, Some(packed))
}

/// [`conv2d`] + `residual` (shaped as the result): a ResNet block's skip
/// connection, fused into the epilogue of the tiled kernels (no pass of its
/// own there), a separate add after the others.
pub fn conv2d_add(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor, opts: Conv2dOpts) -> Result<Tensor> {
    conv2d_with(gpu, x, weight, bias, Some(residual), opts, None, None)
}

/// [`conv2d`] with the block tiling of the `tiled` / `coop` kernels given
/// (tests and benches reach every tiling with it; `None` lets the kernel
/// choose). With another variant the tiling is an error.
pub fn conv2d_tiled_as(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv2dOpts,
    tiles: Option<GemmTiles>,
) -> Result<Tensor> {
    conv2d_with(gpu, x, weight, bias, None, opts, tiles, None)
}

#[allow(clippy::too_many_arguments)]
fn conv2d_with(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    opts: Conv2dOpts,
    tiles: Option<GemmTiles>,
    packed: Option<&PackedWeights>,
) -> Result<Tensor> {
    expect_float(OP, x)?;
    expect_float(OP, weight)?;
    if x.rank() != 4 {
        return Err(Error::shape(OP, format!("expected x of shape [B, Cin, H, W], got {:?}", x.shape())));
    }
    if weight.rank() != 4 {
        return Err(Error::shape(OP, format!("expected weight of shape [Cout, Cin, kh, kw], got {:?}", weight.shape())));
    }
    let [b, cin, h, w] = [x.dim(0), x.dim(1), x.dim(2), x.dim(3)];
    let [cout, wcin, kh, kw] = [weight.dim(0), weight.dim(1), weight.dim(2), weight.dim(3)];
    if wcin != cin {
        return Err(Error::shape(
            OP,
            format!("weight {:?} expects {wcin} input channels, but x {:?} has {cin}", weight.shape(), x.shape()),
        ));
    }
    if let Some(bias) = bias {
        expect_float(OP, bias)?;
        if bias.shape() != [cout] {
            return Err(Error::shape(OP, format!("bias must have shape [{cout}], got {:?}", bias.shape())));
        }
    }
    if opts.stride == 0 {
        return Err(Error::shape(OP, "stride must be at least 1"));
    }
    let pad_w = opts.padding_w.unwrap_or(opts.padding);
    let (ph, pw) = (h + 2 * opts.padding, w + 2 * pad_w);
    if kh == 0 || kw == 0 || kh > ph || kw > pw {
        return Err(Error::shape(
            OP,
            format!("kernel {kh}×{kw} does not fit the padded input {ph}×{pw} (x {:?}, padding {}×{pad_w})", x.shape(), opts.padding),
        ));
    }
    let (ho, wo) = ((ph - kh) / opts.stride + 1, (pw - kw) / opts.stride + 1);
    let y = gpu.empty(&[b, cout, ho, wo], x.dtype())?;
    if y.numel() == 0 {
        return Ok(y);
    }
    if cin == 0 {
        return Err(Error::shape(OP, format!("x {:?} has no input channels", x.shape())));
    }
    u32_of(OP, "elements of x", x.numel())?;
    u32_of(OP, "elements of weight", weight.numel())?;
    let p = Params {
        batch: b as u32,
        cin: cin as u32,
        h: h as u32,
        w: w as u32,
        cout: cout as u32,
        ho: ho as u32,
        wo: wo as u32,
        kh: kh as u32,
        kw: kw as u32,
        stride: u32_of(OP, "stride", opts.stride)?,
        pad: u32_of(OP, "padding", opts.padding)?,
        pad_w: u32_of(OP, "padding", pad_w)?,
        n_pix: u32_of(OP, "output pixels", b * ho * wo)?,
        cout_pad: cout as u32,
        tile_c: 1,
        _pad: 0,
    };
    u32_of(OP, "elements of the output", y.numel())?;

    let variant = choose_variant(gpu, opts.variant, || {
        autotune_bucket(x.dtype(), cin, cout, (kh, kw), opts.stride, b * ho * wo)
    })?;
    if !variant.available(gpu.caps()) {
        return Err(Error::Unsupported {
            what: format!("conv2d variant {}", variant.name()),
            feature: "SUBGROUP (with subgroups of 8 to 64 lanes)",
            hint: "use another variant, or none to let conv2d choose",
        });
    }
    if tiles.is_some() && variant.gemm_core().is_none() {
        return Err(Error::Invalid(format!("conv2d: a block tiling applies to the tiled and coop kernels, not {}", variant.name())));
    }
    if let Some(r) = residual {
        expect_float(OP, r)?;
        if r.shape() != y.shape() {
            return Err(Error::shape(OP, format!("the residual must have the result's shape {:?}, got {r:?}", y.shape())));
        }
    }
    // The epilogue adds a residual stored as the result is; another is added apart.
    let fused_residual = residual.filter(|r| r.dtype() == y.dtype());
    if let Some(core) = variant.gemm_core() {
        u32_of(OP, "Cin·kh·kw", cin * kh * kw)?;
        let g = ConvGeometry {
            batch: p.batch,
            cin: p.cin,
            h: p.h,
            w: p.w,
            cout: p.cout,
            ho: p.ho,
            wo: p.wo,
            kh: p.kh,
            kw: p.kw,
            stride: p.stride,
            pad: p.pad,
            pad_w: p.pad_w,
        };
        gemm::conv2d(gpu, core, tiles, x, weight, bias, fused_residual, &y, g)?;
        return match (residual, fused_residual) {
            (Some(r), None) => crate::ops::elementwise::add(gpu, &y, r),
            _ => Ok(y),
        };
    }
    let label = format!("conv2d.{}", variant.name());
    let key = conv_key(variant, gpu.caps(), x.dtype(), weight.dtype(), bias.map(|t| t.dtype()));
    // The GEMMs read packed weights, channels padded to their channel tile.
    let pack = |p: &Params| match packed {
        Some(cache) => cache.get_or_pack(gpu, weight, p),
        None => pack_weights(gpu, weight, p),
    };
    let (weight, p, workgroups) = match (variant, variant.block()) {
        (Conv2dVariant::Subgroup, _) => {
            let tc = subgroup_tile_channels(gpu.caps());
            let p = Params { cout_pad: p.cout.next_multiple_of(tc), tile_c: tc, ..p };
            (pack(&p)?, p, pixel_tiles_grid(gpu, p.n_pix.div_ceil(SUBGROUP_TILE_PIXELS), p.cout_pad / tc))
        }
        (_, None) => (weight.clone(), p, grid_for(gpu, y.numel(), WG)),
        (_, Some((bm, bn))) => {
            let p = Params { cout_pad: p.cout.next_multiple_of(bm), tile_c: bm, ..p };
            (pack(&p)?, p, pixel_tiles_grid(gpu, p.n_pix.div_ceil(WG * bn), p.cout_pad / bm))
        }
    };
    let mut tensors = vec![x, &weight];
    tensors.extend(bias);
    tensors.push(&y);
    gpu.dispatch(&label, &key, &p, &tensors, workgroups)?;
    match residual {
        Some(r) => crate::ops::elementwise::add(gpu, &y, r),
        None => Ok(y),
    }
}
