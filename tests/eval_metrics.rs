//! The evaluation's numbers, table and figure (src/eval) against hand-checkable
//! cases and closed forms: Inception Score of uniform and one-hot predictions,
//! Fréchet distances of known Gaussians and of two-point sets, the Jacobi
//! eigen solver by reconstruction, prompt parsing with the embedded
//! classifier's labels, and the figure's layout. Host only: no GPU.
use fsd3d::eval::figure::{self, method_seed_figure};
use fsd3d::eval::metrics::*;
use fsd3d::eval::report::{CrossFidSplit, Evaluation, RunViews, evaluate, results_json, results_markdown};
use fsd3d::export::image::{Rgb8, read_png};
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn one_hot(k: usize, i: usize) -> Vec<f64> {
    (0..k).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
}

fn uniform(k: usize) -> Vec<f64> {
    vec![1.0 / k as f64; k]
}

fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
    eprintln!("{what}: got {got:.12}, want {want:.12}");
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (tolerance {tol})");
}

/// The embedded classifier's labels, read straight from its config.
fn embedded_labels() -> Labels {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("weights/tiny-shapes/classifier/config.json").unwrap()).unwrap();
    Labels {
        shapes: serde_json::from_value(cfg["shape_labels"].clone()).unwrap(),
        colours: serde_json::from_value(cfg["colour_labels"].clone()).unwrap(),
    }
}

/// Standard normal samples (Box–Muller), f64.
fn gaussians(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(1e-300..1.0);
            let u2: f64 = rng.random_range(0.0..1.0);
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

fn random_symmetric(rng: &mut StdRng, n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let v: f64 = rng.random_range(-1.0..1.0);
            m[i * n + j] = v;
            m[j * n + i] = v;
        }
    }
    m
}

// ---------------------------------------------------------------------------
// Inception Score
// ---------------------------------------------------------------------------

#[test]
fn inception_score_of_identical_uniform_predictions_is_one() {
    for k in [1, 2, 6, 36] {
        let probs = vec![uniform(k); 10];
        assert_near(&format!("IS uniform k={k}"), inception_score(&probs).unwrap(), 1.0, 1e-12);
    }
    // Identical confident predictions: no diversity either.
    assert_near("IS identical one-hot", inception_score(&vec![one_hot(6, 2); 7]).unwrap(), 1.0, 1e-12);
}

#[test]
fn inception_score_of_even_one_hot_predictions_is_the_class_count() {
    for k in [1, 2, 5, 6] {
        for copies in [1, 3] {
            let probs: Vec<Vec<f64>> = (0..k * copies).map(|i| one_hot(6, i % k)).collect();
            assert_near(&format!("IS one-hot over {k} (x{copies})"), inception_score(&probs).unwrap(), k as f64, 1e-12);
        }
    }
}

#[test]
fn inception_score_of_a_mixed_pair_matches_the_hand_computation() {
    // p1 = (1, 0), p2 = (1/2, 1/2): p(y) = (3/4, 1/4);
    // KL1 = ln(4/3), KL2 = 1/2 ln(2/3) + 1/2 ln 2.
    let probs = vec![vec![1.0, 0.0], vec![0.5, 0.5]];
    let kl1 = (4.0f64 / 3.0).ln();
    let kl2 = 0.5 * (2.0f64 / 3.0).ln() + 0.5 * 2.0f64.ln();
    assert_near("IS pair", inception_score(&probs).unwrap(), ((kl1 + kl2) / 2.0).exp(), 1e-14);
}

#[test]
fn joint_inception_score_counts_shape_colour_combinations() {
    // Shapes spread over 6 classes, colour always uniform: 6 combinations' worth.
    let shapes: Vec<Vec<f64>> = (0..12).map(|i| one_hot(6, i % 6)).collect();
    let colours = vec![uniform(6); 12];
    assert_near("joint IS, shapes spread", joint_inception_score(&shapes, &colours).unwrap(), 6.0, 1e-12);
    // 2 shapes × 3 colours, every combination equally often: 6.
    let shapes: Vec<Vec<f64>> = (0..6).map(|i| one_hot(6, i % 2)).collect();
    let colours: Vec<Vec<f64>> = (0..6).map(|i| one_hot(6, i / 2)).collect();
    assert_near("joint IS, 2 x 3 grid", joint_inception_score(&shapes, &colours).unwrap(), 6.0, 1e-12);
    // Shape and colour move together over 3 values: only 3 combinations.
    let shapes: Vec<Vec<f64>> = (0..9).map(|i| one_hot(6, i % 3)).collect();
    let colours: Vec<Vec<f64>> = (0..9).map(|i| one_hot(6, i % 3)).collect();
    assert_near("joint IS, diagonal", joint_inception_score(&shapes, &colours).unwrap(), 3.0, 1e-12);
    // The joint layout: colour fastest.
    let joint = joint_probs(&[vec![0.25, 0.75]], &[vec![0.1, 0.2, 0.7]]).unwrap();
    let want = [0.025, 0.05, 0.175, 0.075, 0.15, 0.525];
    for (g, w) in joint[0].iter().zip(want) {
        assert_near("joint entry", *g, w, 1e-15);
    }
}

#[test]
fn inception_score_rejects_what_is_not_a_set_of_distributions() {
    let logits = vec![vec![2.0, -1.0, 0.5]];
    let err = inception_score(&logits).unwrap_err().to_string();
    assert!(err.contains("not a probability distribution") && err.contains("softmax"), "{err}");
    assert!(inception_score(&[]).unwrap_err().to_string().contains("no values"));
    let ragged = vec![uniform(3), uniform(4)];
    assert!(inception_score(&ragged).unwrap_err().to_string().contains("row 1 has 4 values"));
    assert!(inception_score(&[vec![f64::NAN, 1.0]]).unwrap_err().to_string().contains("non-finite"));
    let mismatch = joint_probs(&[uniform(6)], &[uniform(6), uniform(6)]).unwrap_err().to_string();
    assert!(mismatch.contains("1 shape rows but 2 colour rows"), "{mismatch}");
}

#[test]
fn softmax_rows_turns_downloaded_logits_into_distributions() {
    let p = softmax_rows(&[0.0, 0.0, 1000.0, 1000.0, 0.0, (2.0f32).ln()], 2, "logits").unwrap();
    assert_eq!(p.len(), 3);
    assert_near("softmax equal", p[0][0], 0.5, 1e-15);
    assert_near("softmax large logits (no overflow)", p[1][1], 0.5, 1e-15);
    assert_near("softmax ln 2", p[2][1], 2.0 / 3.0, 1e-7);
    let err = softmax_rows(&[1.0, 2.0, 3.0], 2, "shape logits").unwrap_err().to_string();
    assert!(err.contains("shape logits") && err.contains("rows of 2"), "{err}");
}

// ---------------------------------------------------------------------------
// Jacobi eigen solver
// ---------------------------------------------------------------------------

fn check_decomposition(what: &str, m: &[f64], n: usize) -> SymmetricEigen {
    let eig = symmetric_eigen(m, n).unwrap();
    let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0);
    let (v, l) = (&eig.vectors, &eig.values);
    let mut worst_rebuild = 0.0f64;
    let mut worst_orthogonality = 0.0f64;
    for i in 0..n {
        for j in 0..n {
            let rebuilt: f64 = (0..n).map(|k| v[i * n + k] * l[k] * v[j * n + k]).sum();
            worst_rebuild = worst_rebuild.max((rebuilt - m[i * n + j]).abs());
            let dot: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
            worst_orthogonality = worst_orthogonality.max((dot - if i == j { 1.0 } else { 0.0 }).abs());
        }
    }
    eprintln!("{what}: |A - V L V^T| {worst_rebuild:.1e}, |V^T V - I| {worst_orthogonality:.1e}");
    // Rounding of O(n) rotations per element, each at f64 epsilon: 1e-12 leaves ~40x margin at n = 17.
    assert!(worst_rebuild <= 1e-12 * norm, "{what}: reconstruction error {worst_rebuild}");
    assert!(worst_orthogonality <= 1e-12, "{what}: V is not orthogonal ({worst_orthogonality})");
    assert!(l.windows(2).all(|w| w[0] <= w[1]), "{what}: eigenvalues not ascending: {l:?}");
    eig
}

#[test]
fn jacobi_reconstructs_random_symmetric_matrices() {
    let mut rng = StdRng::seed_from_u64(7);
    for n in [1, 3, 17] {
        for trial in 0..3 {
            let m = random_symmetric(&mut rng, n);
            check_decomposition(&format!("random n={n} #{trial}"), &m, n);
        }
    }
}

#[test]
fn jacobi_finds_known_spectra() {
    let eig = check_decomposition("[[2,1],[1,2]]", &[2.0, 1.0, 1.0, 2.0], 2);
    assert_near("lambda 0", eig.values[0], 1.0, 1e-15);
    assert_near("lambda 1", eig.values[1], 3.0, 1e-15);
    // Q diag(λ) Qᵀ with a Householder reflection Q = I − 2 w wᵀ/|w|²: repeated and zero eigenvalues.
    let n = 17;
    let want: Vec<f64> = (0..n).map(|i| [0.0, 0.0, 0.0, 1.5, 1.5, -2.0, 4.0][i % 7] + if i >= 7 { i as f64 } else { 0.0 }).collect();
    let w: Vec<f64> = (0..n).map(|i| 1.0 + 0.3 * i as f64 - 0.02 * (i * i) as f64).collect();
    let w2: f64 = w.iter().map(|x| x * x).sum();
    let q = |i: usize, j: usize| if i == j { 1.0 } else { 0.0 } - 2.0 * w[i] * w[j] / w2;
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = (0..n).map(|k| q(i, k) * want[k] * q(j, k)).sum();
        }
    }
    let eig = check_decomposition("householder n=17", &m, n);
    let mut sorted = want.clone();
    sorted.sort_by(f64::total_cmp);
    for (g, w) in eig.values.iter().zip(&sorted) {
        assert_near("known eigenvalue", *g, *w, 1e-12 * 20.0);
    }
    // Already diagonal, and the zero matrix: nothing to rotate.
    let eig = check_decomposition("diagonal", &[3.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 3.0], 3);
    assert_eq!(eig.values, vec![-1.0, 3.0, 3.0]);
    check_decomposition("zero", &[0.0; 16], 4);
}

#[test]
fn jacobi_rejects_bad_matrices() {
    let err = symmetric_eigen(&[1.0, 2.0, 0.0, 1.0], 2).unwrap_err().to_string();
    assert!(err.contains("not symmetric at (0, 1)"), "{err}");
    assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).unwrap_err().to_string().contains("not a 2 × 2 matrix"));
    assert!(symmetric_eigen(&[f64::INFINITY], 1).unwrap_err().to_string().contains("non-finite"));
}

// ---------------------------------------------------------------------------
// Fréchet distance
// ---------------------------------------------------------------------------

#[test]
fn frechet_distance_of_a_set_with_itself_is_zero() {
    let mut rng = StdRng::seed_from_u64(3);
    // n > dim (full-rank covariance) and n < dim (singular: rank 4 in 17 dimensions).
    for (n, dim) in [(40, 8), (5, 17), (2, 3)] {
        let a: Vec<Vec<f64>> = (0..n).map(|_| gaussians(&mut rng, dim).iter().map(|x| 3.0 * x + 1.0).collect()).collect();
        let fd = frechet_distance(&a, &a).unwrap();
        eprintln!("FD(a, a), n={n} dim={dim}: {fd:.3e}");
        // The trace terms are ~9·dim and cancel; what rounding leaves (±1e-13) is clamped at 0.
        assert!(fd <= 1e-9, "FD of a set with itself: {fd}");
    }
}

#[test]
fn trace_sqrt_of_a_singular_covariance_squared_is_its_trace() {
    // Σ = XᵀX/(n−1) from 5 samples in 17 dimensions (rank 4): tr sqrt(Σ Σ) = tr Σ.
    let (n, dim) = (5, 17);
    let mut rng = StdRng::seed_from_u64(13);
    let x: Vec<Vec<f64>> = (0..n).map(|_| gaussians(&mut rng, dim)).collect();
    let mut cov = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            cov[i * dim + j] = x.iter().map(|r| r[i] * r[j]).sum::<f64>() / (n - 1) as f64;
        }
    }
    let trace: f64 = (0..dim).map(|i| cov[i * dim + i]).sum();
    assert_near("tr sqrt(Σ²), rank 5 of 17", trace_sqrt_product(&cov, &cov, dim).unwrap(), trace, 1e-11 * trace);
}

#[test]
fn frechet_distance_at_the_classifier_width_sees_a_pure_shift() {
    // 48 views (two seeds × 24) of 128 features: singular covariances. A set and
    // its translate have the same covariance, so FD = |shift|² exactly.
    let (n, dim) = (48, 128);
    let mut rng = StdRng::seed_from_u64(17);
    let a: Vec<Vec<f64>> = (0..n).map(|_| gaussians(&mut rng, dim).iter().map(|v| v.abs() * 0.8).collect()).collect();
    let shift: Vec<f64> = (0..dim).map(|i| 0.05 * ((i % 7) as f64 - 3.0)).collect();
    let b: Vec<Vec<f64>> = a.iter().map(|r| r.iter().zip(&shift).map(|(x, s)| x + s).collect()).collect();
    let want: f64 = shift.iter().map(|s| s * s).sum();
    let started = std::time::Instant::now();
    let got = frechet_distance(&a, &b).unwrap();
    eprintln!("FD at 48 x 128 took {:.2?}", started.elapsed());
    // The covariance terms cancel to ~1e-9 of tr Σ ≈ 0.3·128 (rounding through two eigensolves).
    assert_near("FD of a shifted set", got, want, 1e-7);
}

#[test]
fn trace_sqrt_product_matches_the_two_by_two_closed_form() {
    // For 2×2 PSD A, B: AB has eigenvalues λ1, λ2 ≥ 0, so
    // tr sqrt(AB) = √λ1 + √λ2 = sqrt(tr(AB) + 2 sqrt(det A · det B)).
    let closed = |a: [f64; 4], b: [f64; 4]| {
        let tr_ab = a[0] * b[0] + a[1] * b[2] + a[2] * b[1] + a[3] * b[3];
        let det = |m: [f64; 4]| m[0] * m[3] - m[1] * m[2];
        (tr_ab + 2.0 * (det(a) * det(b)).max(0.0).sqrt()).sqrt()
    };
    let rotated = |angle: f64, d0: f64, d1: f64| {
        let (c, s) = (angle.cos(), angle.sin());
        [c * c * d0 + s * s * d1, c * s * (d0 - d1), c * s * (d0 - d1), s * s * d0 + c * c * d1]
    };
    let cases = [
        ([2.0, 0.0, 0.0, 0.5], rotated(0.7, 3.0, 0.25)),
        (rotated(-0.3, 1.0, 4.0), rotated(1.1, 0.1, 2.0)),
        ([1.0, 0.0, 0.0, 0.0], rotated(0.4, 2.0, 1.0)), // A singular (rank 1)
        (rotated(0.9, 5.0, 0.0), rotated(0.2, 0.0, 3.0)), // both singular
        ([1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]),
    ];
    for (a, b) in cases {
        let got = trace_sqrt_product(&a, &b, 2).unwrap();
        assert_near(&format!("tr sqrt(AB), A={a:?} B={b:?}"), got, closed(a, b), 1e-7);
    }
}

#[test]
fn frechet_distance_of_two_point_sets_has_a_closed_form() {
    // Two samples x1, x2: mean (x1 + x2)/2, unbiased covariance u uᵀ with
    // u = (x1 − x2)/√2 (rank 1). With Σb = v vᵀ, Σa Σb = (u·v) u vᵀ has the one
    // non-zero eigenvalue (u·v)², so FD = |Δμ|² + |u|² + |v|² − 2|u·v|.
    // In 17 dimensions both covariances are singular (n < dim).
    let mut rng = StdRng::seed_from_u64(11);
    let dim = 17;
    for trial in 0..3 {
        let a = vec![gaussians(&mut rng, dim), gaussians(&mut rng, dim)];
        let b = vec![gaussians(&mut rng, dim), gaussians(&mut rng, dim)];
        let diff = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| (x - y) / 2f64.sqrt()).collect::<Vec<f64>>();
        let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * y).sum::<f64>();
        let (u, v) = (diff(&a[0], &a[1]), diff(&b[0], &b[1]));
        let mean_gap: f64 = (0..dim).map(|i| ((a[0][i] + a[1][i]) / 2.0 - (b[0][i] + b[1][i]) / 2.0).powi(2)).sum();
        let want = mean_gap + dot(&u, &u) + dot(&v, &v) - 2.0 * dot(&u, &v).abs();
        assert_near(&format!("FD two-point sets #{trial}"), frechet_distance(&a, &b).unwrap(), want, 1e-10 * want);
    }
}

#[test]
fn frechet_distance_of_gaussian_samples_matches_the_closed_form() {
    // a ~ N(μa, diag(1, 2, 0.5)); b ~ N(μb, R diag(3, 0.25) Rᵀ ⊕ 1.5) with R a
    // rotation in the first two axes. Closed form:
    // FD = |μa − μb|² + tr Σa + tr Σb − 2 (tr sqrt of the 2×2 block product + sqrt(0.5 · 1.5)).
    let n = 20_000;
    let mut rng = StdRng::seed_from_u64(5);
    let (mu_a, mu_b): ([f64; 3], [f64; 3]) = ([0.5, -1.0, 2.0], [1.5, 0.0, 1.5]);
    let var_a: [f64; 3] = [1.0, 2.0, 0.5];
    let (angle, d0, d1, var_b2): (f64, f64, f64, f64) = (0.6, 3.0, 0.25, 1.5);
    let (c, s) = (angle.cos(), angle.sin());
    let a: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            let z = gaussians(&mut rng, 3);
            (0..3).map(|i| mu_a[i] + var_a[i].sqrt() * z[i]).collect()
        })
        .collect();
    let b: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            let z = gaussians(&mut rng, 3);
            let (y0, y1) = (d0.sqrt() * z[0], d1.sqrt() * z[1]);
            vec![mu_b[0] + c * y0 - s * y1, mu_b[1] + s * y0 + c * y1, mu_b[2] + var_b2.sqrt() * z[2]]
        })
        .collect();
    let block_b = [c * c * d0 + s * s * d1, c * s * (d0 - d1), c * s * (d0 - d1), s * s * d0 + c * c * d1];
    let tr_ab = var_a[0] * block_b[0] + var_a[1] * block_b[3];
    let cross_2x2 = (tr_ab + 2.0 * (var_a[0] * var_a[1] * d0 * d1).sqrt()).sqrt();
    let cross = cross_2x2 + (var_a[2] * var_b2).sqrt();
    let mean_gap: f64 = (0..3).map(|i| (mu_a[i] - mu_b[i]) * (mu_a[i] - mu_b[i])).sum();
    let want = mean_gap + var_a.iter().sum::<f64>() + d0 + d1 + var_b2 - 2.0 * cross;
    let got = frechet_distance(&a, &b).unwrap();
    // Sampling error: the mean term moves by ~2|Δμ|·σ/√n ≈ 0.03 and the covariance
    // terms by ~σ²·√(2/n) ≈ 0.03 per entry; 0.15 is ~3 standard errors combined.
    assert_near("FD of Gaussian samples", got, want, 0.15);
    // Exact parameters through trace_sqrt_product: no sampling error at all.
    let cov_a = [var_a[0], 0.0, 0.0, 0.0, var_a[1], 0.0, 0.0, 0.0, var_a[2]];
    let cov_b = [block_b[0], block_b[1], 0.0, block_b[2], block_b[3], 0.0, 0.0, 0.0, var_b2];
    assert_near("tr sqrt(Σa Σb), exact", trace_sqrt_product(&cov_a, &cov_b, 3).unwrap(), cross, 1e-9);
}

#[test]
fn frechet_distance_rejects_unusable_sets() {
    let one = vec![vec![1.0, 2.0]];
    let two = vec![vec![1.0, 2.0], vec![0.0, 1.0]];
    assert!(frechet_distance(&one, &two).unwrap_err().to_string().contains("at least 2"));
    let wide = vec![vec![1.0, 2.0, 3.0], vec![0.0, 1.0, 0.0]];
    assert!(frechet_distance(&two, &wide).unwrap_err().to_string().contains("2 and 3 features"));
    let nan = vec![vec![1.0, f64::NAN], vec![0.0, 1.0]];
    assert!(frechet_distance(&nan, &two).unwrap_err().to_string().contains("non-finite"));
}

// ---------------------------------------------------------------------------
// Prompt fidelity, mean ± std
// ---------------------------------------------------------------------------

#[test]
fn prompts_parse_against_the_embedded_classifier_labels() {
    let labels = embedded_labels();
    let idx = |list: &[String], w: &str| list.iter().position(|l| l == w).unwrap();
    let (cube, torus) = (idx(&labels.shapes, "cube"), idx(&labels.shapes, "torus"));
    let (red, orange) = (idx(&labels.colours, "red"), idx(&labels.colours, "orange"));
    let cases = [
        ("a red cube", Some(cube), Some(red)),
        ("an orange torus", Some(torus), Some(orange)),
        ("an orange object", None, Some(orange)),
        ("a cube", Some(cube), None),
        ("A Red CUBE.", Some(cube), Some(red)),
        ("red, cube!", Some(cube), Some(red)),
        ("an object", None, None),
        ("", None, None),
        ("a reddish cubes", None, None), // whole words only
        ("a red cube next to a red cube", Some(cube), Some(red)), // repeated, not ambiguous
        ("a red cube on a blue cube", Some(cube), None), // two colours: ambiguous
    ];
    for (prompt, shape, colour) in cases {
        assert_eq!(parse_prompt(prompt, &labels), PromptAttributes { shape, colour }, "{prompt:?}");
    }
}

#[test]
fn prompt_fidelity_is_the_probability_of_the_named_attributes() {
    let labels = embedded_labels();
    // shapes: cube sphere cone cylinder torus pyramid; colours: red green blue yellow purple orange.
    let shape = [0.7, 0.1, 0.05, 0.05, 0.05, 0.05];
    let colour = [0.2, 0.0, 0.0, 0.0, 0.0, 0.8];
    assert_near("both", prompt_fidelity("a red cube", &shape, &colour, &labels).unwrap(), 0.7 * 0.2, 1e-15);
    assert_near("both (an)", prompt_fidelity("an orange sphere", &shape, &colour, &labels).unwrap(), 0.1 * 0.8, 1e-15);
    assert_near("colour only", prompt_fidelity("an orange object", &shape, &colour, &labels).unwrap(), 0.8, 1e-15);
    assert_near("shape only", prompt_fidelity("a cube", &shape, &colour, &labels).unwrap(), 0.7, 1e-15);
    assert_eq!(prompt_fidelity("an object", &shape, &colour, &labels), None);
    assert_eq!(prompt_fidelity("", &shape, &colour, &labels), None);
}

#[test]
fn mean_std_uses_the_sample_standard_deviation() {
    let m = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_near("mean", m.mean, 2.5, 1e-15);
    assert_near("std (n-1)", m.std, (5.0f64 / 3.0).sqrt(), 1e-15);
    assert_eq!(m.n, 4);
    assert_eq!(mean_std(&[7.0]), Some(MeanStd { mean: 7.0, std: 0.0, n: 1 }));
    assert_eq!(mean_std(&[]), None);
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// A run with one view per seed and hand-chosen predictions and features.
fn run(method: &str, prompt: &str, seed: u64, shape: Vec<f64>, colour: Vec<f64>, feature: Vec<f64>) -> RunViews {
    RunViews {
        method: method.into(),
        prompt: prompt.into(),
        seed,
        shape_probs: vec![shape],
        colour_probs: vec![colour],
        features: vec![feature],
    }
}

/// DDIM: always a red cube. SDS ablation label with a Greek letter: cubes in 4
/// colours (one per seed). FSD: only seeds 0 and 1 (no Cross-FID).
fn synthetic_runs() -> Vec<RunViews> {
    // Features chosen for a hand Cross-FID: seeds {0,1} at (0,0), (2,0); seeds
    // {2,3} at (0,1), (0,3): |Δμ|² = 5, |u|² = |v|² = 2, u·v = 0, so FD = 9.
    let features = [vec![0.0, 0.0], vec![2.0, 0.0], vec![0.0, 1.0], vec![0.0, 3.0]];
    let mut runs = Vec::new();
    for seed in 0..4u64 {
        runs.push(run("DDIM", "a red cube", seed, one_hot(6, 0), one_hot(6, 0), features[seed as usize].clone()));
    }
    for seed in 0..4u64 {
        runs.push(run("SDS β=0.5", "a cube", seed, one_hot(6, 0), one_hot(6, seed as usize), features[seed as usize].clone()));
    }
    for seed in 0..4u64 {
        // Both seed halves are the same two points: Cross-FID 0.
        runs.push(run("SDS β=0.5", "a red cube", seed, uniform(6), one_hot(6, 0), vec![1.0 + seed as f64 % 2.0, 0.0]));
    }
    for seed in 0..2u64 {
        let half = vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0];
        runs.push(run("FSD | constant", "a red cube", seed, half, one_hot(6, 0), features[seed as usize].clone()));
    }
    runs
}

#[test]
fn evaluate_scores_runs_prompts_and_methods() {
    let labels = embedded_labels();
    let eval = evaluate(&synthetic_runs(), &labels, &CrossFidSplit::default()).unwrap();
    let methods: Vec<&str> = eval.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(methods, ["DDIM", "SDS β=0.5", "FSD | constant"], "order of first appearance");

    let prompt = |m: &str, p: &str| eval.prompts.iter().find(|r| r.method == m && r.prompt == p).unwrap();
    let ddim = prompt("DDIM", "a red cube");
    assert_eq!((ddim.seeds.clone(), ddim.views), (vec![0, 1, 2, 3], 4));
    assert_near("DDIM fidelity", ddim.fidelity.unwrap(), 1.0, 1e-12);
    assert_near("DDIM IS", ddim.inception_score, 1.0, 1e-12);
    assert_near("DDIM Cross-FID", ddim.cross_fid.unwrap(), 9.0, 1e-9);
    let sds_cube = prompt("SDS β=0.5", "a cube");
    assert_near("SDS cube IS (4 colours)", sds_cube.inception_score, 4.0, 1e-12);
    assert_near("SDS cube shape IS", sds_cube.shape_inception_score, 1.0, 1e-12);
    assert_near("SDS cube fidelity (shape only)", sds_cube.fidelity.unwrap(), 1.0, 1e-12);
    let sds_red = prompt("SDS β=0.5", "a red cube");
    assert_near("SDS red cube fidelity", sds_red.fidelity.unwrap(), 1.0 / 6.0, 1e-12);
    assert_near("SDS red cube Cross-FID (same sets)", sds_red.cross_fid.unwrap(), 0.0, 1e-9);
    let fsd = prompt("FSD | constant", "a red cube");
    assert_eq!(fsd.cross_fid, None, "seeds 2 and 3 missing");
    assert_near("FSD fidelity", fsd.fidelity.unwrap(), 0.5, 1e-12);

    let sds = &eval.methods[1];
    assert_eq!((sds.runs, sds.prompts), (8, 2));
    // Fidelity over 8 runs: four 1s and four 1/6s.
    let f = mean_std(&[1.0, 1.0, 1.0, 1.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0]).unwrap();
    assert_near("SDS fidelity mean", sds.fidelity.unwrap().mean, f.mean, 1e-12);
    assert_near("SDS fidelity std", sds.fidelity.unwrap().std, f.std, 1e-12);
    // IS over prompts: 4 (a cube) and the red cube's uniform-shape/red views: 1.
    assert_near("SDS IS mean", sds.inception_score.unwrap().mean, 2.5, 1e-12);
    assert_near("SDS IS std", sds.inception_score.unwrap().std, (4.5f64).sqrt(), 1e-12);
    assert_near("SDS Cross-FID mean", sds.cross_fid.unwrap().mean, 4.5, 1e-9);
    assert_eq!(eval.methods[2].cross_fid, None);

    let run_row = eval.runs.iter().find(|r| r.method == "SDS β=0.5" && r.prompt == "a cube" && r.seed == 2).unwrap();
    assert_eq!((run_row.predicted_shape.as_str(), run_row.predicted_colour.as_str()), ("cube", "blue"));
    // Uniform shape predictions: a tie, which goes to the first label.
    let tied = eval.runs.iter().find(|r| r.method == "SDS β=0.5" && r.prompt == "a red cube").unwrap();
    assert_eq!(tied.predicted_shape, "cube");
}

#[test]
fn results_markdown_and_json_carry_every_row() {
    let labels = embedded_labels();
    let eval = evaluate(&synthetic_runs(), &labels, &CrossFidSplit::default()).unwrap();
    let md = results_markdown(&eval);
    eprintln!("{md}");
    assert!(md.contains("| Method | Fidelity ↑ | IS (shape×colour) ↑ | IS (shape) ↑ | Cross-FID ↑ |"));
    assert!(md.contains("| DDIM | 1.000 ± 0.000 | 1.00 | 1.00 | 9.00 | 1 | 4 |"), "DDIM row (one prompt: no ± on IS)");
    assert!(md.contains("| SDS β=0.5 | 0.583 ± 0.445 | 2.50 ± 2.12 | 1.00 ± 0.00 | 4.50 ± 6.36 | 2 | 8 |"), "SDS row");
    assert!(md.contains("| FSD \\| constant | 0.500 ± 0.000 | 1.00 | 1.00 | – | 1 | 2 |"), "FSD row (escaped pipe, no Cross-FID)");
    assert!(md.contains("seeds {0, 1} and {2, 3}"));
    assert!(md.contains("| SDS β=0.5 | a cube | 0, 1, 2, 3 | 4 | 1.000 | 4.00 | 1.00 | 9.00 |"), "per-prompt row");
    let json = results_json(&eval).unwrap();
    let back: Evaluation = serde_json::from_str(&json).unwrap();
    // serde_json's default float parser may land one ulp off the printed
    // shortest representation, so numbers compare to 1e-15 relative.
    same_json("evaluation", &serde_json::to_value(&back).unwrap(), &serde_json::to_value(&eval).unwrap());
}

fn same_json(path: &str, a: &serde_json::Value, b: &serde_json::Value) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-15 * x.abs().max(y.abs()), "{path}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: length");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same_json(&format!("{path}[{i}]"), p, q);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{path}: keys");
            for (k, p) in x {
                same_json(&format!("{path}.{k}"), p, &y[k]);
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn evaluate_rejects_malformed_runs() {
    let labels = embedded_labels();
    let mut runs = synthetic_runs();
    runs.push(runs[0].clone());
    let err = evaluate(&runs, &labels, &CrossFidSplit::default()).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");
    let mut short = run("X", "a cube", 0, uniform(6), uniform(6), vec![0.0]);
    short.features.clear();
    let err = evaluate(&[short], &labels, &CrossFidSplit::default()).unwrap_err().to_string();
    assert!(err.contains("every view needs one of each"), "{err}");
    let narrow = run("X", "a cube", 0, uniform(5), uniform(6), vec![0.0]);
    let err = evaluate(&[narrow], &labels, &CrossFidSplit::default()).unwrap_err().to_string();
    assert!(err.contains("6 shape and 6 colour"), "{err}");
    assert!(evaluate(&[], &labels, &CrossFidSplit::default()).is_err());
}

#[test]
fn runs_read_downloaded_classifier_outputs() {
    let labels = embedded_labels();
    // Two views: logits favour (cube, red) and (torus, orange).
    let mut shape_logits = vec![0.0f32; 12];
    let mut colour_logits = vec![0.0f32; 12];
    shape_logits[0] = 9.0;
    shape_logits[6 + 4] = 9.0;
    colour_logits[0] = 9.0;
    colour_logits[6 + 5] = 9.0;
    let features: Vec<f32> = (0..2 * 128).map(|i| i as f32).collect();
    let r = RunViews::from_classifier_outputs("FSD", "a red cube", 3, &features, &shape_logits, &colour_logits, &labels).unwrap();
    assert_eq!((r.shape_probs.len(), r.features.len(), r.features[1].len()), (2, 2, 128));
    assert_eq!(r.features[1][0], 128.0);
    let p = (9.0f64).exp() / ((9.0f64).exp() + 5.0);
    assert_near("softmax of the first view's cube", r.shape_probs[0][0], p, 1e-6);
    let err = RunViews::from_classifier_outputs("FSD", "a", 0, &features[..255], &shape_logits, &colour_logits, &labels).unwrap_err();
    assert!(err.to_string().contains("do not split over 2 views"), "{err}");
}

// ---------------------------------------------------------------------------
// Figure
// ---------------------------------------------------------------------------

fn solid(w: usize, h: usize, rgb: [u8; 3]) -> Rgb8 {
    Rgb8 { width: w, height: h, data: rgb.repeat(w * h) }
}

fn pixel(img: &Rgb8, x: usize, y: usize) -> [u8; 3] {
    let at = (y * img.width + x) * 3;
    [img.data[at], img.data[at + 1], img.data[at + 2]]
}

fn dark_pixels(img: &Rgb8, x0: usize, y0: usize, x1: usize, y1: usize) -> usize {
    (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| pixel(img, x, y).iter().all(|&c| c < 100)).count()
}

#[test]
fn method_seed_figure_lays_out_labelled_cells() {
    let colours = [[200, 30, 30], [30, 180, 40], [30, 60, 230], [240, 210, 30]];
    let rows = vec![
        ("DDIM".to_string(), colours.iter().map(|&c| solid(32, 32, c)).collect::<Vec<_>>()),
        ("FSD β=0.5".to_string(), colours[..3].iter().map(|&c| solid(32, 16, c)).collect()),
        (String::new(), vec![solid(32, 32, [0, 0, 0])]),
    ];
    let cell = 64;
    let img = method_seed_figure(&rows, cell).unwrap();
    // Layout at cell 64: labels 1×, padding 3, gap 2; label column = widest
    // label ("FSD β=0.5", 9 glyphs: 9·6 − 1 = 53) + 2·3 = 59; header = 8 + 2·3 = 14.
    let (label_w, header, gap, c) = (59, 14, 2, cell as usize);
    assert_eq!((img.width, img.height), (label_w + 4 * (c + gap) + gap, header + 3 * (c + gap) + gap));
    let cell_origin = |i: usize, j: usize| (label_w + gap + j * (c + gap), header + gap + i * (c + gap));
    // Row labels and seed headers are drawn; the unlabelled row's label area stays white.
    for i in 0..2 {
        let (_, y) = cell_origin(i, 0);
        assert!(dark_pixels(&img, 0, y, label_w, y + c) > 20, "row {i} label");
    }
    let (_, y2) = cell_origin(2, 0);
    assert_eq!(dark_pixels(&img, 0, y2, label_w, y2 + c), 0, "empty label");
    for j in 0..4 {
        let (x, _) = cell_origin(0, j);
        assert!(dark_pixels(&img, x, 0, x + c, header) > 20, "seed {j} header");
    }
    // Each render fills its cell (centre pixel), inside a grey frame.
    for (j, &col) in colours.iter().enumerate() {
        let (x, y) = cell_origin(0, j);
        assert_eq!(pixel(&img, x + c / 2, y + c / 2), col, "cell (0, {j})");
        assert_eq!(pixel(&img, x, y), [170, 170, 170], "frame (0, {j})");
    }
    // A 2:1 render keeps its aspect: coloured in the middle, white above and below.
    let (x, y) = cell_origin(1, 0);
    assert_eq!(pixel(&img, x + c / 2, y + c / 2), colours[0]);
    assert_eq!(pixel(&img, x + c / 2, y + 4), [255, 255, 255]);
    // A missing seed is a light grey cell.
    let (x, y) = cell_origin(1, 3);
    assert_eq!(pixel(&img, x + c / 2, y + c / 2), [235, 235, 235]);

    // Written as PNG and read back unchanged.
    let path = std::env::temp_dir().join(format!("fsd3d_eval_figure_{}.png", std::process::id()));
    figure::write_method_seed_figure(&path, &rows, cell).unwrap();
    assert_eq!(read_png(&path).unwrap(), img);
    std::fs::remove_file(&path).ok();

    assert!(method_seed_figure(&rows, 2).unwrap_err().to_string().contains("too small"));
    assert!(method_seed_figure(&[], 64).unwrap_err().to_string().contains("no rows"));
    let broken = vec![("x".to_string(), vec![Rgb8 { width: 4, height: 4, data: vec![0; 5] }])];
    assert!(method_seed_figure(&broken, 64).unwrap_err().to_string().contains("malformed"));
}

#[test]
fn the_bitmap_font_covers_labels_and_its_glyphs_differ() {
    let needed = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,:-+=_/()%|βθΘτε";
    for ch in needed.chars() {
        assert!(figure::glyph_bits(ch).is_some(), "no glyph for {ch:?}");
    }
    let glyphs: Vec<(char, [u8; 8])> = figure::font_chars().map(|c| (c, figure::glyph_bits(c).unwrap())).collect();
    for (i, (a, ga)) in glyphs.iter().enumerate() {
        for (b, gb) in &glyphs[i + 1..] {
            // Θ and θ may not coincide, nor 0/O, 1/l, etc.: every glyph is its own picture.
            assert_ne!(ga, gb, "glyphs {a:?} and {b:?} are identical");
        }
    }
    // Drawing at scale 2 puts 4 pixels of ink per glyph bit.
    let mut img = solid(40, 20, [255, 255, 255]);
    figure::draw_text(&mut img, 1, 1, "A1", 2, [0, 0, 0]);
    let bits: u32 = ['A', '1'].iter().map(|&c| figure::glyph_bits(c).unwrap().iter().map(|r| r.count_ones()).sum::<u32>()).sum();
    assert_eq!(dark_pixels(&img, 0, 0, 40, 20), 4 * bits as usize);
    assert_eq!(figure::text_size("A1", 2), (22, 16));
    // A character the font lacks still leaves a mark (a box), never nothing.
    let mut img = solid(10, 10, [255, 255, 255]);
    figure::draw_text(&mut img, 0, 0, "€", 1, [0, 0, 0]);
    assert!(dark_pixels(&img, 0, 0, 10, 10) > 10);
}

// ---------------------------------------------------------------------------
// Against pytorch-fid and torch-fidelity (tests/fixtures/metrics/fid_is.safetensors,
// made by tools/golden/make_metric_fixtures.py)
// ---------------------------------------------------------------------------

/// The f64 tensors of the fixture, as rows.
fn fid_is_fixture() -> std::collections::HashMap<String, (Vec<f64>, Vec<usize>)> {
    let bytes = std::fs::read("tests/fixtures/metrics/fid_is.safetensors").unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F64, "{name}");
            let data = v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            (name, (data, v.shape().to_vec()))
        })
        .collect()
}

fn fixture_rows(t: &(Vec<f64>, Vec<usize>)) -> Vec<Vec<f64>> {
    t.0.chunks(t.1[1]).map(|r| r.to_vec()).collect()
}

#[test]
fn frechet_distance_matches_pytorch_fid_by_both_routes() {
    let f = fid_is_fixture();
    let (a, b) = (fixture_rows(&f["features_a"]), fixture_rows(&f["features_b"]));
    // 50 and 60 samples of 64 features: singular covariances, as real Cross-FID has.
    // The exact value (40 digits, mpmath) first; then pytorch-fid's, which is
    // 3.4e-9 relative off it here: scipy's sqrtm of a singular product.
    let (exact, pytorch_fid) = (f["fid_exact"].0[0], f["fid"].0[0]);
    for (route, got) in [
        ("the samples' space", frechet_distance_via_samples(&a, &b).unwrap()),
        ("the covariances", frechet_distance_via_covariances(&a, &b).unwrap()),
        ("the default", frechet_distance(&a, &b).unwrap()),
    ] {
        assert_near(&format!("FID via {route} (exact)"), got, exact, 1e-11 * exact);
        assert_near(&format!("FID via {route} (pytorch-fid)"), got, pytorch_fid, 1e-8 * exact);
    }
}

#[test]
fn the_two_frechet_routes_agree_in_either_regime() {
    let mut rng = StdRng::seed_from_u64(29);
    // More samples than features, fewer, and unequal set sizes.
    for (na, nb, dim) in [(40, 30, 6), (7, 12, 33), (48, 48, 96)] {
        let a: Vec<Vec<f64>> = (0..na).map(|_| gaussians(&mut rng, dim)).collect();
        let b: Vec<Vec<f64>> = (0..nb).map(|_| gaussians(&mut rng, dim).iter().enumerate().map(|(i, x)| 1.5 * x + 0.1 * i as f64).collect()).collect();
        let (s, c) = (frechet_distance_via_samples(&a, &b).unwrap(), frechet_distance_via_covariances(&a, &b).unwrap());
        assert_near(&format!("FID routes at {na}, {nb} × {dim}"), s, c, 1e-9 * c);
    }
}

#[test]
fn frechet_distance_at_inceptions_width_is_quick() {
    // Cross-FID on Inception features: 48 views per half, 2048 features. The
    // covariance route would take Jacobi minutes here.
    let (n, dim) = (48, 2048);
    let mut rng = StdRng::seed_from_u64(31);
    let a: Vec<Vec<f64>> = (0..n).map(|_| gaussians(&mut rng, dim).iter().map(|v| v.abs()).collect()).collect();
    let shift: Vec<f64> = (0..dim).map(|i| 0.01 * ((i % 5) as f64 - 2.0)).collect();
    let b: Vec<Vec<f64>> = a.iter().map(|r| r.iter().zip(&shift).map(|(x, s)| x + s).collect()).collect();
    let started = std::time::Instant::now();
    let got = frechet_distance(&a, &b).unwrap();
    let took = started.elapsed();
    eprintln!("FD at 48 x 2048 took {took:.2?}");
    assert_near("FD of a shifted set at 2048 features", got, shift.iter().map(|s| s * s).sum(), 1e-7);
}

#[test]
fn inception_score_matches_torch_fidelity() {
    let f = fid_is_fixture();
    let logits = &f["logits"];
    let probs: Vec<Vec<f64>> = fixture_rows(logits).iter().map(|r| softmax(r)).collect();
    // One split: the score of the whole set.
    assert_near("IS, splits=1", inception_score(&probs).unwrap(), f["inception_score"].0[0], 1e-10);
    // Ten contiguous splits, mean and (population) std, as torch-fidelity reports them.
    let got = inception_score_splits(&probs, 10).unwrap();
    assert_near("IS, splits=10 (mean)", got.mean, f["inception_score_10"].0[0], 1e-10);
    assert_near("IS, splits=10 (std)", got.std, f["inception_score_10_std"].0[0], 1e-10);
}
