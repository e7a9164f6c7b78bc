//! The Inception-v3 of FID and IS: pytorch-fid's port of the 2015-12-05
//! TensorFlow graph (`pt_inception-2015-12-05-6726825d.pth`, converted to
//! safetensors by `tools/convert_inception.py`), with the tensor names of its
//! state dict (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.bias`, …).
//!
//! What it computes, as pytorch-fid's `InceptionV3([3], resize_input=True,
//! normalize_input=True, use_fid_inception=True)` does:
//! - images [B, 3, H, W] in [0, 1] are resized to 299 × 299 (bilinear,
//!   `align_corners=False`, no antialiasing) and mapped to [−1, 1];
//! - every convolution is followed by batch norm (eps 0.001, running
//!   statistics; folded into the convolution's weight and bias at load) and ReLU;
//! - the FID blocks differ from torchvision's: their branch average pools
//!   leave the padding out of the count (Mixed_5b–5d, 6b–6e, 7b) and Mixed_7c
//!   pools its branch by a max;
//! - `pool` [B, 2048] is the global average of the last block (FID's
//!   features), `logits` [B, 1008] = fc(pool) with the bias, and
//!   `logits_unbiased` without it (what torch-fidelity's IS is computed from).
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::weights::{Variant, Weights};
use crate::ops::concat::concat;
use crate::ops::conv2d::{Conv2dOpts, conv2d};
use crate::ops::elementwise::{self as ew, Act};
use crate::ops::matmul;
use crate::ops::pool::{Pool, PoolOpts, global_avg_pool, pool2d};
use crate::ops::resample::resize_bilinear;

/// The side the network sees.
pub const INPUT_SIDE: usize = 299;
/// Width of the pool features.
pub const FEATURES: usize = 2048;
/// Classes of the graph's classifier (1000 ImageNet classes and 8 unused).
pub const CLASSES: usize = 1008;
/// Batch norm's epsilon in every block.
const BN_EPS: f64 = 0.001;

/// Convolution + batch norm + ReLU, the norm folded into the convolution.
struct BasicConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: (usize, usize),
}

impl BasicConv {
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let opts = Conv2dOpts { stride: self.stride, padding: self.padding.0, padding_w: Some(self.padding.1), variant: None };
        ew::activation(gpu, &conv2d(gpu, x, &self.weight, Some(&self.bias), opts)?, Act::Relu)
    }
}

/// Reads the network's tensors, checks their shapes, folds the norms.
struct Loader<'a> {
    gpu: &'a Gpu,
    weights: &'a Weights,
    dtype: DType,
}

impl Loader<'_> {
    /// `{name}.conv.weight` [out, inp, kh, kw] and `{name}.bn.*`.
    fn conv(&self, name: &str, inp: usize, out: usize, (kh, kw): (usize, usize), stride: usize, padding: (usize, usize)) -> Result<BasicConv> {
        let w = self.weights.f32_shaped(&format!("{name}.conv.weight"), &[out, inp, kh, kw])?;
        let bn = |p: &str| self.weights.f32_shaped(&format!("{name}.bn.{p}"), &[out]);
        let (gamma, beta, mean, var) = (bn("weight")?, bn("bias")?, bn("running_mean")?, bn("running_var")?);
        let per_out = inp * kh * kw;
        let mut folded = vec![0f32; w.len()];
        let mut bias = vec![0f32; out];
        for o in 0..out {
            if var[o] < 0.0 || !var[o].is_finite() {
                return Err(Error::Invalid(format!(
                    "{}: {name}.bn.running_var[{o}] = {}: a variance must be a finite number ≥ 0; the weights are damaged",
                    self.weights.dir().display(),
                    var[o]
                )));
            }
            let scale = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
            for i in 0..per_out {
                folded[o * per_out + i] = (w[o * per_out + i] as f64 * scale) as f32;
            }
            bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
        }
        Ok(BasicConv {
            weight: self.gpu.upload(&folded, &[out, inp, kh, kw], self.dtype)?,
            bias: self.gpu.upload(&bias, &[out], self.dtype)?,
            stride,
            padding,
        })
    }

    fn square(&self, name: &str, inp: usize, out: usize, k: usize, stride: usize, pad: usize) -> Result<BasicConv> {
        self.conv(name, inp, out, (k, k), stride, (pad, pad))
    }
    /// A 1×k convolution padded to keep the width.
    fn row(&self, name: &str, inp: usize, out: usize, k: usize) -> Result<BasicConv> {
        self.conv(name, inp, out, (1, k), 1, (0, k / 2))
    }
    /// A k×1 convolution padded to keep the height.
    fn column(&self, name: &str, inp: usize, out: usize, k: usize) -> Result<BasicConv> {
        self.conv(name, inp, out, (k, 1), 1, (k / 2, 0))
    }
}

fn run(gpu: &Gpu, x: &Tensor, convs: &[BasicConv]) -> Result<Tensor> {
    let mut h = convs[0].forward(gpu, x)?;
    for c in &convs[1..] {
        h = c.forward(gpu, &h)?;
    }
    Ok(h)
}

/// The 3×3 branch pool of the FID blocks: an average without the padding in the count.
fn avg3(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    pool2d(gpu, x, PoolOpts { pool: Pool::Avg { count_include_pad: false }, kernel: 3, stride: 1, padding: 1 })
}

fn max3(gpu: &Gpu, x: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    pool2d(gpu, x, PoolOpts { pool: Pool::Max, kernel: 3, stride, padding })
}

/// Mixed_5b–5d (pytorch-fid's FIDInceptionA).
struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn load(l: &Loader, n: &str, inp: usize, pool_features: usize) -> Result<BlockA> {
        Ok(BlockA {
            b1: l.square(&format!("{n}.branch1x1"), inp, 64, 1, 1, 0)?,
            b5: [l.square(&format!("{n}.branch5x5_1"), inp, 48, 1, 1, 0)?, l.square(&format!("{n}.branch5x5_2"), 48, 64, 5, 1, 2)?],
            b3: [
                l.square(&format!("{n}.branch3x3dbl_1"), inp, 64, 1, 1, 0)?,
                l.square(&format!("{n}.branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
                l.square(&format!("{n}.branch3x3dbl_3"), 96, 96, 3, 1, 1)?,
            ],
            pool: l.square(&format!("{n}.branch_pool"), inp, pool_features, 1, 1, 0)?,
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let parts = [self.b1.forward(gpu, x)?, run(gpu, x, &self.b5)?, run(gpu, x, &self.b3)?, self.pool.forward(gpu, &avg3(gpu, x)?)?];
        concat(gpu, &parts.iter().collect::<Vec<_>>(), 1)
    }
}

/// Mixed_6a (torchvision's InceptionB): the 35² → 17² reduction.
struct BlockB {
    b3: BasicConv,
    b3dbl: [BasicConv; 3],
}

impl BlockB {
    fn load(l: &Loader, n: &str, inp: usize) -> Result<BlockB> {
        Ok(BlockB {
            b3: l.square(&format!("{n}.branch3x3"), inp, 384, 3, 2, 0)?,
            b3dbl: [
                l.square(&format!("{n}.branch3x3dbl_1"), inp, 64, 1, 1, 0)?,
                l.square(&format!("{n}.branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
                l.square(&format!("{n}.branch3x3dbl_3"), 96, 96, 3, 2, 0)?,
            ],
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let parts = [self.b3.forward(gpu, x)?, run(gpu, x, &self.b3dbl)?, max3(gpu, x, 2, 0)?];
        concat(gpu, &parts.iter().collect::<Vec<_>>(), 1)
    }
}

/// Mixed_6b–6e (FIDInceptionC): factorised 7×7 branches.
struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    b7dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn load(l: &Loader, n: &str, inp: usize, c7: usize) -> Result<BlockC> {
        let b = |s: &str| format!("{n}.{s}");
        Ok(BlockC {
            b1: l.square(&b("branch1x1"), inp, 192, 1, 1, 0)?,
            b7: [l.square(&b("branch7x7_1"), inp, c7, 1, 1, 0)?, l.row(&b("branch7x7_2"), c7, c7, 7)?, l.column(&b("branch7x7_3"), c7, 192, 7)?],
            b7dbl: [
                l.square(&b("branch7x7dbl_1"), inp, c7, 1, 1, 0)?,
                l.column(&b("branch7x7dbl_2"), c7, c7, 7)?,
                l.row(&b("branch7x7dbl_3"), c7, c7, 7)?,
                l.column(&b("branch7x7dbl_4"), c7, c7, 7)?,
                l.row(&b("branch7x7dbl_5"), c7, 192, 7)?,
            ],
            pool: l.square(&b("branch_pool"), inp, 192, 1, 1, 0)?,
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let parts = [self.b1.forward(gpu, x)?, run(gpu, x, &self.b7)?, run(gpu, x, &self.b7dbl)?, self.pool.forward(gpu, &avg3(gpu, x)?)?];
        concat(gpu, &parts.iter().collect::<Vec<_>>(), 1)
    }
}

/// Mixed_7a (torchvision's InceptionD): the 17² → 8² reduction.
struct BlockD {
    b3: [BasicConv; 2],
    b7x3: [BasicConv; 4],
}

impl BlockD {
    fn load(l: &Loader, n: &str, inp: usize) -> Result<BlockD> {
        let b = |s: &str| format!("{n}.{s}");
        Ok(BlockD {
            b3: [l.square(&b("branch3x3_1"), inp, 192, 1, 1, 0)?, l.square(&b("branch3x3_2"), 192, 320, 3, 2, 0)?],
            b7x3: [
                l.square(&b("branch7x7x3_1"), inp, 192, 1, 1, 0)?,
                l.row(&b("branch7x7x3_2"), 192, 192, 7)?,
                l.column(&b("branch7x7x3_3"), 192, 192, 7)?,
                l.square(&b("branch7x7x3_4"), 192, 192, 3, 2, 0)?,
            ],
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let parts = [run(gpu, x, &self.b3)?, run(gpu, x, &self.b7x3)?, max3(gpu, x, 2, 0)?];
        concat(gpu, &parts.iter().collect::<Vec<_>>(), 1)
    }
}

/// Mixed_7b and 7c (FIDInceptionE_1 / _2): branches that split into 1×3 and 3×1.
struct BlockE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2: [BasicConv; 2],
    b3dbl: [BasicConv; 2],
    b3dbl_3: [BasicConv; 2],
    pool: BasicConv,
    /// Mixed_7c pools its branch by a max, 7b by an average.
    max_pool: bool,
}

impl BlockE {
    fn load(l: &Loader, n: &str, inp: usize, max_pool: bool) -> Result<BlockE> {
        let b = |s: &str| format!("{n}.{s}");
        Ok(BlockE {
            b1: l.square(&b("branch1x1"), inp, 320, 1, 1, 0)?,
            b3_1: l.square(&b("branch3x3_1"), inp, 384, 1, 1, 0)?,
            b3_2: [l.row(&b("branch3x3_2a"), 384, 384, 3)?, l.column(&b("branch3x3_2b"), 384, 384, 3)?],
            b3dbl: [l.square(&b("branch3x3dbl_1"), inp, 448, 1, 1, 0)?, l.square(&b("branch3x3dbl_2"), 448, 384, 3, 1, 1)?],
            b3dbl_3: [l.row(&b("branch3x3dbl_3a"), 384, 384, 3)?, l.column(&b("branch3x3dbl_3b"), 384, 384, 3)?],
            pool: l.square(&b("branch_pool"), inp, 192, 1, 1, 0)?,
            max_pool,
        })
    }
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(gpu, x)?;
        let h = self.b3_1.forward(gpu, x)?;
        let (a, b) = (self.b3_2[0].forward(gpu, &h)?, self.b3_2[1].forward(gpu, &h)?);
        let h = run(gpu, x, &self.b3dbl)?;
        let (c, d) = (self.b3dbl_3[0].forward(gpu, &h)?, self.b3dbl_3[1].forward(gpu, &h)?);
        let pooled = if self.max_pool { max3(gpu, x, 1, 1)? } else { avg3(gpu, x)? };
        let p = self.pool.forward(gpu, &pooled)?;
        concat(gpu, &[&b1, &a, &b, &c, &d, &p], 1)
    }
}

/// What [`Inception::forward`] returns for a batch.
pub struct InceptionOutputs {
    /// [B, 2048]: FID's features.
    pub pool: Tensor,
    /// [B, 1008]: fc(pool), with the bias.
    pub logits: Tensor,
    /// [B, 1008]: fc(pool) without the bias (torch-fidelity's IS input).
    pub logits_unbiased: Tensor,
}

/// The FID Inception-v3.
pub struct Inception {
    file: PathBuf,
    stem: Vec<BasicConv>,
    stem2: Vec<BasicConv>,
    a: Vec<BlockA>,
    b: BlockB,
    c: Vec<BlockC>,
    d: BlockD,
    e: Vec<BlockE>,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl Inception {
    /// Loads a safetensors file with pytorch-fid's tensor names (or a folder holding one).
    pub fn load(gpu: &Gpu, path: &Path, dtype: DType) -> Result<Inception> {
        let weights = if path.is_dir() { Weights::open(path, Variant::Full)? } else { Weights::open_file(path)? };
        if !weights.is_random() && (!weights.contains("Mixed_7c.branch_pool.conv.weight") || !weights.contains("fc.weight")) {
            return Err(Error::Invalid(format!(
                "{}: not the FID Inception-v3 (no Mixed_7c.branch_pool / fc tensors); convert pytorch-fid's \
                 pt_inception-2015-12-05-6726825d.pth with tools/convert_inception.py",
                path.display()
            )));
        }
        let l = Loader { gpu, weights: &weights, dtype };
        let stem = vec![
            l.square("Conv2d_1a_3x3", 3, 32, 3, 2, 0)?,
            l.square("Conv2d_2a_3x3", 32, 32, 3, 1, 0)?,
            l.square("Conv2d_2b_3x3", 32, 64, 3, 1, 1)?,
        ];
        let stem2 = vec![l.square("Conv2d_3b_1x1", 64, 80, 1, 1, 0)?, l.square("Conv2d_4a_3x3", 80, 192, 3, 1, 0)?];
        let a = vec![BlockA::load(&l, "Mixed_5b", 192, 32)?, BlockA::load(&l, "Mixed_5c", 256, 64)?, BlockA::load(&l, "Mixed_5d", 288, 64)?];
        let b = BlockB::load(&l, "Mixed_6a", 288)?;
        let c = vec![
            BlockC::load(&l, "Mixed_6b", 768, 128)?,
            BlockC::load(&l, "Mixed_6c", 768, 160)?,
            BlockC::load(&l, "Mixed_6d", 768, 160)?,
            BlockC::load(&l, "Mixed_6e", 768, 192)?,
        ];
        let d = BlockD::load(&l, "Mixed_7a", 768)?;
        let e = vec![BlockE::load(&l, "Mixed_7b", 1280, false)?, BlockE::load(&l, "Mixed_7c", 2048, true)?];
        let fc_weight = weights.load(gpu, "fc.weight", &[CLASSES, FEATURES], dtype)?;
        let fc_bias = weights.load(gpu, "fc.bias", &[CLASSES], dtype)?;
        Ok(Inception { file: path.to_path_buf(), stem, stem2, a, b, c, d, e, fc_weight, fc_bias })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// images [B, 3, H, W] with values in [0, 1] (see [`check_images`]).
    pub fn forward(&self, gpu: &Gpu, images: &Tensor) -> Result<InceptionOutputs> {
        if images.rank() != 4 || images.dim(1) != 3 || images.dim(2) == 0 || images.dim(3) == 0 {
            return Err(Error::shape("inception", format!("images must be [B, 3, H, W] RGB in [0, 1], got {:?}", images.shape())));
        }
        let b = images.dim(0);
        let x = resize_bilinear(gpu, images, INPUT_SIDE, INPUT_SIDE)?;
        let x = ew::affine(gpu, &x, 2.0, -1.0)?;
        let x = max3(gpu, &run(gpu, &x, &self.stem)?, 2, 0)?;
        let mut x = max3(gpu, &run(gpu, &x, &self.stem2)?, 2, 0)?;
        for block in &self.a {
            x = block.forward(gpu, &x)?;
        }
        x = self.b.forward(gpu, &x)?;
        for block in &self.c {
            x = block.forward(gpu, &x)?;
        }
        x = self.d.forward(gpu, &x)?;
        for block in &self.e {
            x = block.forward(gpu, &x)?;
        }
        let pool = global_avg_pool(gpu, &x)?.reshape(&[b, FEATURES])?;
        let logits_unbiased = matmul::linear(gpu, &pool, &self.fc_weight, None)?;
        let logits = matmul::linear(gpu, &pool, &self.fc_weight, Some(&self.fc_bias))?;
        Ok(InceptionOutputs { pool, logits, logits_unbiased })
    }
}

/// Images for [`Inception::forward`] must be RGB in [0, 1]: an image in
/// [0, 255] or [−1, 1] would give features, just wrong ones.
pub fn check_images(values: &[f32], shape: &[usize]) -> Result<()> {
    if shape.len() != 4 || shape[1] != 3 {
        return Err(Error::Invalid(format!("images must be [B, 3, H, W] RGB, got shape {shape:?}")));
    }
    if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(Error::Invalid(format!(
            "images must have values in [0, 1] (found {v}); divide 8-bit images by 255, map [-1, 1] images by (x + 1) / 2"
        )));
    }
    Ok(())
}
