//! Plain CPU references of the kernel families that have many variants
//! (matmul, conv2d, attention), in f64: what the tests and `bench --variants`
//! check every kernel against. Written for clarity, not speed: loop nests
//! that follow the definitions (torch's conventions), nothing shared with
//! the kernels.
use crate::ops::elementwise::Act;

/// The shapes of a batched matmul: op(A) is [M, K], op(B) is [K, N].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored [K, M] (per batch) and used transposed.
    pub trans_a: bool,
    /// B is stored [N, K] (a Linear weight) and used transposed.
    pub trans_b: bool,
    /// A (B) is one matrix shared by every batch.
    pub shared_a: bool,
    pub shared_b: bool,
}

/// `act(alpha · op(A[b]) · op(B[b]) + bias)`, [batch, M, N] row-major.
pub fn matmul(s: &MatmulShape, a: &[f64], b: &[f64], bias: Option<&[f64]>, alpha: f64, act: Act) -> Vec<f64> {
    let mut out = Vec::with_capacity(s.batch * s.m * s.n);
    for bi in 0..s.batch {
        let a0 = if s.shared_a { 0 } else { bi * s.m * s.k };
        let b0 = if s.shared_b { 0 } else { bi * s.k * s.n };
        for i in 0..s.m {
            for j in 0..s.n {
                let mut sum = 0.0;
                for l in 0..s.k {
                    let av = if s.trans_a { a[a0 + l * s.m + i] } else { a[a0 + i * s.k + l] };
                    let bv = if s.trans_b { b[b0 + j * s.k + l] } else { b[b0 + l * s.n + j] };
                    sum += av * bv;
                }
                let y = sum * alpha + bias.map_or(0.0, |bias| bias[j]);
                out.push(act.apply_f64(y));
            }
        }
    }
    out
}

/// The shapes of a convolution (torch's conv2d, zero padding on every side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    /// (Ho, Wo).
    pub fn out_hw(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.kh) / self.stride + 1, (self.w + 2 * self.pad - self.kw) / self.stride + 1)
    }
}

/// y [B, Cout, Ho, Wo] of x [B, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout].
pub fn conv2d(s: &ConvShape, x: &[f64], weight: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let (ho, wo) = s.out_hw();
    let mut out = Vec::with_capacity(s.batch * s.cout * ho * wo);
    for b in 0..s.batch {
        for co in 0..s.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut sum = bias.map_or(0.0, |bias| bias[co]);
                    for ci in 0..s.cin {
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xv = x[((b * s.cin + ci) * s.h + iy as usize) * s.w + ix as usize];
                                sum += xv * weight[((co * s.cin + ci) * s.kh + ky) * s.kw + kx];
                            }
                        }
                    }
                    out.push(sum);
                }
            }
        }
    }
    out
}

/// The shapes of a multi-head attention: q [B, Lq, H·D], k and v [B, Lk, H·D].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub heads: usize,
    pub d: usize,
    /// Query i sees keys j <= i (aligned at the top left, as torch's is_causal).
    pub causal: bool,
}

/// softmax(scale · q_h k_hᵀ) v_h per batch and head, [B, Lq, H·D].
pub fn attention(s: &AttentionShape, scale: f64, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let hd = s.heads * s.d;
    let mut out = vec![0.0; s.batch * s.lq * hd];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.lq {
                let visible = if s.causal { (i + 1).min(s.lk) } else { s.lk };
                let qi = &q[(b * s.lq + i) * hd + h * s.d..][..s.d];
                let scores: Vec<f64> = (0..visible)
                    .map(|j| scale * qi.iter().zip(&k[(b * s.lk + j) * hd + h * s.d..][..s.d]).map(|(x, y)| x * y).sum::<f64>())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    let vj = &v[(b * s.lk + j) * hd + h * s.d..][..s.d];
                    for (o, x) in out[(b * s.lq + i) * hd + h * s.d..][..s.d].iter_mut().zip(vj) {
                        *o += w / total * x;
                    }
                }
            }
        }
    }
    out
}

/// f32 values as f64, for the references.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// f64 results as f32, for comparing with a kernel's.
pub fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_cases() {
        // [[1, 2], [3, 4]] · [[5, 6], [7, 8]] = [[19, 22], [43, 50]]; + bias, ·alpha.
        let s = MatmulShape { batch: 1, m: 2, n: 2, k: 2, trans_a: false, trans_b: false, shared_a: false, shared_b: false };
        assert_eq!(matmul(&s, &[1., 2., 3., 4.], &[5., 6., 7., 8.], Some(&[1., -1.]), 2.0, Act::None), [39., 43., 87., 99.]);
        // The same with both stored transposed.
        let t = MatmulShape { trans_a: true, trans_b: true, ..s };
        assert_eq!(matmul(&t, &[1., 3., 2., 4.], &[5., 7., 6., 8.], None, 1.0, Act::Relu), [19., 22., 43., 50.]);
        // A 3×3 box filter, padding 1, on a 3×3 image of ones: corners see 4, edges 6, the centre 9.
        let c = ConvShape { batch: 1, cin: 1, h: 3, w: 3, cout: 1, kh: 3, kw: 3, stride: 1, pad: 1 };
        assert_eq!(conv2d(&c, &[1.0; 9], &[1.0; 9], None), [4., 6., 4., 6., 9., 6., 4., 6., 4.]);
        // Two keys with equal scores average the values; causally, query 0 sees key 0 only.
        let a = AttentionShape { batch: 1, lq: 2, lk: 2, heads: 1, d: 1, causal: false };
        assert_eq!(attention(&a, 1.0, &[0., 0.], &[1., 1.], &[2., 4.]), [3., 3.]);
        let ac = AttentionShape { causal: true, ..a };
        assert_eq!(attention(&ac, 1.0, &[0., 0.], &[1., 1.], &[2., 4.]), [2., 3.]);
    }
}
