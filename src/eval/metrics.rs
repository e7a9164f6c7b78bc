//! The numbers of the evaluation (FSD_SPEC §6), in f64 on the host: Inception
//! Score over the classifier's predictions, Fréchet distance between two sets
//! of classifier features (Cross-FID), prompt fidelity (the classifier's
//! probability of the attributes a prompt names; the paper's CLIP score), and
//! mean ± sample std.
//!
//! Everything here takes plain vectors, so the GPU side only has to download
//! the classifier's outputs ([`rows_of`], [`softmax_rows`]) once per batch.
//! Bad input (empty sets, ragged rows, rows that are not distributions,
//! non-finite values) is an [`Error::Invalid`] that says what is wrong.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::classifier::Classifier;

// ---------------------------------------------------------------------------
// Classifier outputs as host rows
// ---------------------------------------------------------------------------

/// Splits a downloaded row-major [rows, width] tensor into f64 rows.
pub fn rows_of(values: &[f32], width: usize, what: &str) -> Result<Vec<Vec<f64>>> {
    if width == 0 || !values.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "{what}: {} values do not split into rows of {width}; pass the whole [rows, {width}] tensor",
            values.len()
        )));
    }
    Ok(values.chunks(width).map(|r| r.iter().map(|&v| v as f64).collect()).collect())
}

/// The softmax of one row of logits (max-shifted, so large logits do not overflow).
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|&z| (z - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Downloaded logits [rows, classes] -> one probability row per image.
pub fn softmax_rows(logits: &[f32], classes: usize, what: &str) -> Result<Vec<Vec<f64>>> {
    let rows = rows_of(logits, classes, what)?;
    check_finite(&rows, what)?;
    Ok(rows.iter().map(|r| softmax(r)).collect())
}

// ---------------------------------------------------------------------------
// Inception Score
// ---------------------------------------------------------------------------

/// Inception Score of a set of predictions p(y|x), one probability row per
/// image: exp( mean_x KL(p(y|x) ‖ p(y)) ) with p(y) the mean of the rows, over
/// the whole set at once (no splits; the paper averages per-prompt scores
/// instead). 1 when every image gets the same prediction; k when confident
/// predictions are spread evenly over k classes. 0·log 0 counts as 0.
///
/// Rows must be distributions: non-negative, summing to 1 within 1e-3 (f32
/// softmaxes do); each is renormalised to sum exactly 1 before use.
pub fn inception_score(probs: &[Vec<f64>]) -> Result<f64> {
    let rows = distributions(probs, "inception_score")?;
    let classes = rows[0].len();
    let mut marginal = vec![0.0; classes];
    for r in &rows {
        for (m, p) in marginal.iter_mut().zip(r) {
            *m += p / rows.len() as f64;
        }
    }
    let mean_kl = rows
        .iter()
        .map(|r| r.iter().zip(&marginal).filter(|(p, _)| **p > 0.0).map(|(p, m)| p * (p / m).ln()).sum::<f64>())
        .sum::<f64>()
        / rows.len() as f64;
    // KL is non-negative; rounding can leave -1e-17, which would put IS a hair under 1.
    Ok(mean_kl.max(0.0).exp())
}

/// The Inception Score as torch-fidelity reports it: the rows cut into
/// `splits` contiguous chunks (rows [i·N/splits, (i+1)·N/splits), in order:
/// its `shuffle=False`), [`inception_score`] of each, and their mean and
/// population standard deviation (numpy's default, ddof 0).
pub fn inception_score_splits(probs: &[Vec<f64>], splits: usize) -> Result<SplitScore> {
    if splits == 0 || splits > probs.len() {
        return Err(Error::Invalid(format!("inception_score: {splits} splits of {} images; each split needs an image", probs.len())));
    }
    let n = probs.len();
    let scores = (0..splits).map(|i| inception_score(&probs[i * n / splits..(i + 1) * n / splits])).collect::<Result<Vec<f64>>>()?;
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / splits as f64).sqrt();
    Ok(SplitScore { mean, std })
}

/// A score over splits: their mean and population standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitScore {
    pub mean: f64,
    pub std: f64,
}

/// The joint (shape × colour) prediction of each image: the outer product of
/// the two heads' softmaxes, p(s, c | x) = p(s | x) · p(c | x), flattened with
/// the colour fastest (index = s · colours + c; 6 × 6 = 36 classes for the
/// embedded prior). This assumes the heads are independent given the image,
/// which is what two heads over one feature vector can express.
pub fn joint_probs(shape_probs: &[Vec<f64>], colour_probs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    if shape_probs.len() != colour_probs.len() {
        return Err(Error::Invalid(format!(
            "joint_probs: {} shape rows but {} colour rows; pass both heads' predictions for the same images",
            shape_probs.len(),
            colour_probs.len()
        )));
    }
    let shapes = distributions(shape_probs, "joint_probs (shape head)")?;
    let colours = distributions(colour_probs, "joint_probs (colour head)")?;
    Ok(shapes.iter().zip(&colours).map(|(s, c)| s.iter().flat_map(|ps| c.iter().map(move |pc| ps * pc)).collect()).collect())
}

/// Inception Score over the joint (shape × colour) label space; see [`joint_probs`].
pub fn joint_inception_score(shape_probs: &[Vec<f64>], colour_probs: &[Vec<f64>]) -> Result<f64> {
    inception_score(&joint_probs(shape_probs, colour_probs)?)
}

// ---------------------------------------------------------------------------
// Fréchet distance
// ---------------------------------------------------------------------------

/// Fréchet distance between Gaussians fitted to two feature sets (rows =
/// samples): ‖μa − μb‖² + tr Σa + tr Σb − 2 tr sqrt(Σa Σb), with unbiased
/// (n − 1) covariances. Each set needs at least 2 samples; fewer samples than
/// dimensions is fine (the covariances are then singular, see
/// [`trace_sqrt_product`]). The distance is ≥ 0 in exact arithmetic; a
/// rounding residue below 0 is returned as 0.
///
/// With fewer samples than features (Cross-FID: 48 views per half against
/// Inception's 2048 features) it is computed in the samples' space
/// ([`frechet_distance_via_samples`]), else from the covariances
/// ([`frechet_distance_via_covariances`]); both are the same number in exact
/// arithmetic.
pub fn frechet_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<f64> {
    let dim = common_dim(a, b)?;
    if a.len().max(b.len()) < dim { frechet_distance_via_samples(a, b) } else { frechet_distance_via_covariances(a, b) }
}

fn common_dim(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<usize> {
    let dim_a = feature_dim(a, "frechet_distance (set a)")?;
    let dim_b = feature_dim(b, "frechet_distance (set b)")?;
    if dim_a != dim_b {
        return Err(Error::Invalid(format!(
            "frechet_distance: the sets have {dim_a} and {dim_b} features; compare features of the same classifier layer"
        )));
    }
    Ok(dim_a)
}

/// [`frechet_distance`] in the samples' space. With the centred samples as
/// rows of Xa (na × d) and Xb, Σa = XaᵀXa/(na−1), and the non-zero
/// eigenvalues of Σa Σb are those of M Mᵀ/((na−1)(nb−1)) with M = Xa Xbᵀ
/// (na × nb; AB and BA share them), so tr sqrt(Σa Σb) is M's nuclear norm
/// over sqrt((na−1)(nb−1)), and tr Σ the sum of squares over n − 1. The
/// eigenproblem is na × na instead of d × d: for 48 views of 2048 features,
/// 48³ instead of 2048³ (minutes of Jacobi sweeps).
pub fn frechet_distance_via_samples(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<f64> {
    common_dim(a, b)?;
    let centred = |set: &[Vec<f64>]| -> (Vec<f64>, Vec<Vec<f64>>) {
        let n = set.len() as f64;
        let mut mean = vec![0.0; set[0].len()];
        for row in set {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += x / n;
            }
        }
        let rows = set.iter().map(|r| r.iter().zip(&mean).map(|(x, m)| x - m).collect()).collect();
        (mean, rows)
    };
    let ((mean_a, xa), (mean_b, xb)) = (centred(a), centred(b));
    let (na, nb) = (xa.len(), xb.len());
    let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(x, y)| x * y).sum::<f64>();
    let mean_term: f64 = mean_a.iter().zip(&mean_b).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace_a = xa.iter().map(|r| dot(r, r)).sum::<f64>() / (na - 1) as f64;
    let trace_b = xb.iter().map(|r| dot(r, r)).sum::<f64>() / (nb - 1) as f64;
    let m: Vec<Vec<f64>> = xa.iter().map(|ra| xb.iter().map(|rb| dot(ra, rb)).collect()).collect();
    let mut mmt = vec![0.0; na * na];
    for i in 0..na {
        for j in i..na {
            let v = dot(&m[i], &m[j]);
            mmt[i * na + j] = v;
            mmt[j * na + i] = v;
        }
    }
    let eig = symmetric_eigen(&mmt, na)?;
    let nuclear: f64 = psd_roots(&eig.values, "frechet_distance (M Mᵀ)")?.iter().sum();
    let cross = nuclear / (((na - 1) * (nb - 1)) as f64).sqrt();
    Ok((mean_term + trace_a + trace_b - 2.0 * cross).max(0.0))
}

/// [`frechet_distance`] from the d × d covariances, as pytorch-fid computes it.
pub fn frechet_distance_via_covariances(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<f64> {
    let dim_a = common_dim(a, b)?;
    let (mean_a, cov_a) = mean_and_covariance(a);
    let (mean_b, cov_b) = mean_and_covariance(b);
    let mean_term: f64 = mean_a.iter().zip(&mean_b).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &[f64]| (0..dim_a).map(|i| m[i * dim_a + i]).sum::<f64>();
    let cross = trace_sqrt_product(&cov_a, &cov_b, dim_a)?;
    Ok((mean_term + trace(&cov_a) + trace(&cov_b) - 2.0 * cross).max(0.0))
}

/// tr sqrt(A B) for symmetric positive semi-definite A and B (row-major n × n),
/// as Σ sqrt(λ) over the eigenvalues λ of the symmetric PSD matrix
/// sqrt(A) B sqrt(A), which is similar to A B (so has the same eigenvalues)
/// but, unlike A B, symmetric, so [`symmetric_eigen`] applies.
///
/// Eigenvalues of a singular covariance (fewer samples than dimensions) come
/// out of the solver as zeros give or take rounding, ±n·ε·λmax, and the
/// square root would turn that noise into ±sqrt(n·ε·λmax) ≈ 1e-7·sqrt(λmax)
/// each. So eigenvalues at or below n·ε·λmax (including the small negative
/// ones) count as exactly 0 before the square roots, both for sqrt(A) and for
/// the final sum. A clearly negative eigenvalue (below −1e-9·λmax) means a
/// matrix that is not PSD, and is an error.
pub fn trace_sqrt_product(a: &[f64], b: &[f64], n: usize) -> Result<f64> {
    let sqrt_a = psd_sqrt(a, n, "trace_sqrt_product (A)")?;
    let m = multiply(&multiply(&sqrt_a, b, n), &sqrt_a, n);
    let eig = symmetric_eigen(&symmetrised(&m, n), n)?;
    Ok(psd_roots(&eig.values, "trace_sqrt_product (sqrt(A) B sqrt(A))")?.iter().sum())
}

/// Eigenvalues and eigenvectors of a symmetric matrix.
#[derive(Clone, Debug)]
pub struct SymmetricEigen {
    /// Eigenvalues in ascending order.
    pub values: Vec<f64>,
    /// Row-major n × n; column k is the unit eigenvector of `values[k]`, so
    /// A = V diag(values) Vᵀ with V orthogonal.
    pub vectors: Vec<f64>,
}

/// Relative size of the off-diagonal part at which the Jacobi sweeps stop:
/// below this the remaining rotations change nothing representable.
const JACOBI_TOLERANCE: f64 = f64::EPSILON;
/// Cyclic Jacobi converges quadratically (typically 6–10 sweeps); hitting
/// this bound means the input was not a finite symmetric matrix.
const JACOBI_MAX_SWEEPS: usize = 100;

/// Symmetric eigendecomposition of a row-major n × n matrix by cyclic Jacobi
/// rotations: each rotation zeroes one off-diagonal pair (p, q), sweeping over
/// all pairs until the off-diagonal mass is negligible. Slow (O(n³) a sweep)
/// but accurate to rounding and simple; n is the classifier's feature width
/// (128) at most. The input must be symmetric (within 1e-9 relative).
pub fn symmetric_eigen(matrix: &[f64], n: usize) -> Result<SymmetricEigen> {
    if matrix.len() != n * n {
        return Err(Error::Invalid(format!("symmetric_eigen: {} values are not a {n} × {n} matrix", matrix.len())));
    }
    if let Some(bad) = matrix.iter().find(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("symmetric_eigen: the matrix holds a non-finite value ({bad})")));
    }
    let norm = matrix.iter().map(|v| v * v).sum::<f64>().sqrt();
    for p in 0..n {
        for q in p + 1..n {
            if (matrix[p * n + q] - matrix[q * n + p]).abs() > 1e-9 * norm {
                return Err(Error::Invalid(format!(
                    "symmetric_eigen: the matrix is not symmetric at ({p}, {q}): {} vs {}",
                    matrix[p * n + q],
                    matrix[q * n + p]
                )));
            }
        }
    }
    let mut a = matrix.to_vec();
    let mut v = identity(n);
    let off_diagonal = |a: &[f64]| (0..n).flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q))).map(|(p, q)| a[p * n + q] * a[p * n + q]).sum::<f64>().sqrt();
    let mut converged = n < 2;
    for _ in 0..JACOBI_MAX_SWEEPS {
        if off_diagonal(&a) <= JACOBI_TOLERANCE * norm {
            converged = true;
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                jacobi_rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    if !converged && off_diagonal(&a) > JACOBI_TOLERANCE * norm * 1e3 {
        return Err(Error::Invalid(format!("symmetric_eigen: Jacobi did not converge in {JACOBI_MAX_SWEEPS} sweeps (n = {n})")));
    }
    // Ascending eigenvalues, with their columns of V in the same order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[i * n + i].total_cmp(&a[j * n + j]));
    let values = order.iter().map(|&k| a[k * n + k]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for row in 0..n {
            vectors[row * n + new] = v[row * n + old];
        }
    }
    Ok(SymmetricEigen { values, vectors })
}

/// One Jacobi rotation in the (p, q) plane: A ← Jᵀ A J, V ← V J, with the
/// angle that makes A[p][q] zero. t = tan θ is the smaller root of
/// t² + 2 t·cot 2θ − 1 = 0, which keeps |θ| ≤ π/4 (the stable choice).
fn jacobi_rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    // An element far below the rounding of both diagonal entries cannot move
    // the eigenvalues: zero it instead of rotating, so converged matrices end
    // up exactly diagonal (the test in Numerical Recipes' `jacobi`).
    let (app, aqq) = (a[p * n + p].abs(), a[q * n + q].abs());
    let negligible = 100.0 * apq.abs();
    if app + negligible == app && aqq + negligible == aqq {
        a[p * n + q] = 0.0;
        a[q * n + p] = 0.0;
        return;
    }
    let cot_2theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
    let t = if cot_2theta.abs() > 1e150 {
        // θ is tiny; the formula below would square an overflowing value.
        0.5 / cot_2theta
    } else {
        cot_2theta.signum() / (cot_2theta.abs() + (cot_2theta * cot_2theta + 1.0).sqrt())
    };
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    // Columns p and q (A J), then rows p and q (Jᵀ (A J)).
    for k in 0..n {
        let (akp, akq) = (a[k * n + p], a[k * n + q]);
        a[k * n + p] = c * akp - s * akq;
        a[k * n + q] = s * akp + c * akq;
    }
    for k in 0..n {
        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
        a[p * n + k] = c * apk - s * aqk;
        a[q * n + k] = s * apk + c * aqk;
    }
    // Exactly zero by construction; store it so rounding does not linger.
    a[p * n + q] = 0.0;
    a[q * n + p] = 0.0;
    for k in 0..n {
        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = c * vkp - s * vkq;
        v[k * n + q] = s * vkp + c * vkq;
    }
}

/// sqrt(A) = V sqrt(Λ) Vᵀ of a symmetric PSD matrix (rounding negatives clamped to 0).
fn psd_sqrt(a: &[f64], n: usize, what: &str) -> Result<Vec<f64>> {
    let eig = symmetric_eigen(a, n)?;
    let roots = psd_roots(&eig.values, what)?;
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| eig.vectors[i * n + k] * roots[k] * eig.vectors[j * n + k]).sum();
        }
    }
    Ok(out)
}

/// Square roots of a PSD matrix's eigenvalues, those within rounding of 0
/// (|λ| ≤ n·ε·λmax) taken as 0; see [`trace_sqrt_product`]. Anything more
/// negative than −1e-9·λmax is a real negative eigenvalue: an error.
fn psd_roots(values: &[f64], what: &str) -> Result<Vec<f64>> {
    let scale = values.iter().fold(0.0f64, |s, v| s.max(v.abs()));
    if let Some(v) = values.iter().find(|&&v| v < -1e-9 * scale) {
        return Err(Error::Invalid(format!("{what}: the matrix is not positive semi-definite (eigenvalue {v:e})")));
    }
    let rounding = values.len() as f64 * f64::EPSILON * scale;
    Ok(values.iter().map(|&v| if v <= rounding { 0.0 } else { v.sqrt() }).collect())
}

/// The sample mean and unbiased (n − 1) covariance, row-major dim × dim.
fn mean_and_covariance(samples: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let (n, dim) = (samples.len(), samples[0].len());
    let mut mean = vec![0.0; dim];
    for s in samples {
        for (m, x) in mean.iter_mut().zip(s) {
            *m += x / n as f64;
        }
    }
    let mut cov = vec![0.0; dim * dim];
    for s in samples {
        for i in 0..dim {
            let di = s[i] - mean[i];
            for j in i..dim {
                cov[i * dim + j] += di * (s[j] - mean[j]);
            }
        }
    }
    for i in 0..dim {
        for j in i..dim {
            let c = cov[i * dim + j] / (n - 1) as f64;
            cov[i * dim + j] = c;
            cov[j * dim + i] = c;
        }
    }
    (mean, cov)
}

fn identity(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}

fn multiply(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// (M + Mᵀ)/2: removes the rounding asymmetry of a product that is symmetric in exact arithmetic.
fn symmetrised(m: &[f64], n: usize) -> Vec<f64> {
    let mut out = m.to_vec();
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = 0.5 * (m[i * n + j] + m[j * n + i]);
        }
    }
    out
}

/// The common width of a sample set with at least two finite rows.
fn feature_dim(samples: &[Vec<f64>], what: &str) -> Result<usize> {
    if samples.len() < 2 {
        return Err(Error::Invalid(format!(
            "{what}: {} sample(s); a covariance needs at least 2 (use more views or seeds)",
            samples.len()
        )));
    }
    let dim = same_width(samples, what)?;
    check_finite(samples, what)?;
    Ok(dim)
}

// ---------------------------------------------------------------------------
// Prompt fidelity
// ---------------------------------------------------------------------------

/// The classifier's label lists, in the order of its heads' outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// The shape head's classes ("cube", "sphere", ...).
    pub shapes: Vec<String>,
    /// The colour head's classes ("red", "green", ...).
    pub colours: Vec<String>,
}

impl Labels {
    /// The labels of a loaded classifier.
    pub fn of(classifier: &Classifier) -> Labels {
        Labels { shapes: classifier.shape_labels.clone(), colours: classifier.colour_labels.clone() }
    }
}

/// What a prompt asks for, as indices into the classifier's label lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PromptAttributes {
    pub shape: Option<usize>,
    pub colour: Option<usize>,
}

/// Reads the attributes a prompt names: its words (lower-cased, split at
/// anything not a letter or digit) that are shape or colour labels, so
/// "a red cube", "An orange object." and "a cube" all parse. A prompt that
/// names two different labels of one kind ("a red cube on a blue cube") is
/// ambiguous for that kind, which is then left unscored.
pub fn parse_prompt(prompt: &str, labels: &Labels) -> PromptAttributes {
    let lower = prompt.to_lowercase();
    let words: Vec<&str> = lower.split(|ch: char| !ch.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let named = |list: &[String]| {
        let mut found: Option<usize> = None;
        for w in &words {
            if let Some(i) = list.iter().position(|l| l.to_lowercase() == *w) {
                if found.is_some_and(|f| f != i) {
                    return None;
                }
                found = Some(i);
            }
        }
        found
    };
    PromptAttributes { shape: named(&labels.shapes), colour: named(&labels.colours) }
}

/// The classifier's probability that an image shows what the prompt asks for:
/// p(shape) · p(colour) when the prompt names both (the heads taken as
/// independent given the image, as in [`joint_probs`]), the one probability
/// when it names one, and None when it names neither ("an object", "").
/// `shape_probs` and `colour_probs` are one image's softmaxes.
pub fn prompt_fidelity(prompt: &str, shape_probs: &[f64], colour_probs: &[f64], labels: &Labels) -> Option<f64> {
    let want = parse_prompt(prompt, labels);
    let p_shape = want.shape.map(|i| shape_probs.get(i).copied().unwrap_or(0.0));
    let p_colour = want.colour.map(|i| colour_probs.get(i).copied().unwrap_or(0.0));
    match (p_shape, p_colour) {
        (Some(s), Some(c)) => Some(s * c),
        (Some(p), None) | (None, Some(p)) => Some(p),
        (None, None) => None,
    }
}

// ---------------------------------------------------------------------------
// Mean ± std
// ---------------------------------------------------------------------------

/// A mean with its sample standard deviation, as the paper's tables report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 when n = 1 (then there is no spread to report).
    pub std: f64,
    /// How many values went in.
    pub n: usize,
}

/// Mean ± sample std of the values; None when there are none.
pub fn mean_std(values: &[f64]) -> Option<MeanStd> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n < 2 { 0.0 } else { (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64).sqrt() };
    Some(MeanStd { mean, std, n })
}

// ---------------------------------------------------------------------------
// Input checks
// ---------------------------------------------------------------------------

fn same_width(rows: &[Vec<f64>], what: &str) -> Result<usize> {
    let width = rows.first().map_or(0, Vec::len);
    if width == 0 {
        return Err(Error::Invalid(format!("{what}: no values (empty set or empty rows)")));
    }
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
        return Err(Error::Invalid(format!("{what}: row {i} has {} values, row 0 has {width}; rows must have one width", r.len())));
    }
    Ok(width)
}

fn check_finite(rows: &[Vec<f64>], what: &str) -> Result<()> {
    for (i, r) in rows.iter().enumerate() {
        if let Some(v) = r.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("{what}: row {i} holds a non-finite value ({v})")));
        }
    }
    Ok(())
}

/// Checks that each row is a probability distribution and renormalises it to sum exactly 1.
fn distributions(rows: &[Vec<f64>], what: &str) -> Result<Vec<Vec<f64>>> {
    same_width(rows, what)?;
    check_finite(rows, what)?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let sum: f64 = r.iter().sum();
            if r.iter().any(|&p| p < 0.0) || (sum - 1.0).abs() > 1e-3 {
                return Err(Error::Invalid(format!(
                    "{what}: row {i} is not a probability distribution (sum {sum}, min {}); pass softmaxes, not logits (see softmax_rows)",
                    r.iter().copied().fold(f64::INFINITY, f64::min)
                )));
            }
            Ok(r.iter().map(|p| p / sum).collect())
        })
        .collect()
}
