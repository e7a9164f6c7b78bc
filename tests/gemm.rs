//! The workgroup-tiled GEMMs (ops::gemm, shaders/gemm.wgsl): the register
//! kernel and the matrix-unit kernel (on an adapter without matrix units its
//! emulated twin, shaders/coop.wgsl, runs the same tiling and indexing) at
//! every block tiling the device fits, against f64 CPU references, on sizes no
//! block divides; as matmuls (every transpose, batches, bias, activation) and
//! as implicit-GEMM convolutions (padding, stride 2, 1×1, non-square kernels).
//! Then the matrix units' first-use check: a good kernel passes it, a broken
//! one (a wrong product, a shader that does not compile) is switched off with
//! a warning and the tiled kernel gives the right answer.
mod common;
use common::*;
use fsd3d::gpu::{DType, Gpu, GpuOptions};
use fsd3d::ops::conv2d::{Conv2dOpts, Conv2dVariant, conv2d_tiled_as};
use fsd3d::ops::elementwise::Act;
use fsd3d::ops::gemm::{self, COOP_PATH, GemmCore, GemmTiles};
use fsd3d::ops::matmul::{MatmulOpts, MatmulVariant, default_variant, matmul, matmul_tiled_as};
use fsd3d::ops::reference;

/// (trans_a, trans_b) and (m, n, k) of a check.
type Trans = (bool, bool);
type Mnk = (usize, usize, usize);

fn variant_of(core: GemmCore) -> MatmulVariant {
    match core {
        GemmCore::Coop => MatmulVariant::Coop,
        GemmCore::Reg => MatmulVariant::Tiled,
    }
}

/// act(alpha · op(A) op(B) + bias) by the library reference; a shared operand is one matrix for every batch.
#[allow(clippy::too_many_arguments)]
fn matmul_reference(
    (trans_a, trans_b): (bool, bool),
    (batch, bcast_a, bcast_b): (usize, bool, bool),
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    alpha: f32,
    act: Act,
) -> Vec<f32> {
    let shape = reference::MatmulShape { batch, m, n, k, trans_a, trans_b, shared_a: bcast_a, shared_b: bcast_b };
    let want = reference::matmul(&shape, &reference::widen(a), &reference::widen(b), Some(&reference::widen(bias)), alpha as f64, act);
    reference::narrow(&want)
}

/// The tolerance of a core: the matrix units take f16 operands (where the
/// device has f16), so an f32 input is rounded to 2^-11 before its products.
fn core_tol(gpu: &Gpu, core: GemmCore, dtype: DType, k: usize) -> f32 {
    let operands = if gemm::operand_dtype(core, gpu.caps()) == DType::F16 { DType::F16 } else { dtype };
    tol(operands) * (k as f32).sqrt().max(1.0) / 4.0 + tol(dtype)
}

/// One matmul on `core` with `tiles` against the reference.
#[allow(clippy::too_many_arguments)]
fn check_matmul(gpu: &Gpu, core: GemmCore, tiles: GemmTiles, trans: (bool, bool), batch: (usize, bool, bool), mnk: (usize, usize, usize), dt: DType, seed: u64) {
    let (m, n, k) = mnk;
    let (nb, bcast_a, bcast_b) = batch;
    let (ar, ac) = if trans.0 { (k, m) } else { (m, k) };
    let (br, bc) = if trans.1 { (n, k) } else { (k, n) };
    let ab = if bcast_a { 1 } else { nb };
    let bb = if bcast_b { 1 } else { nb };
    let a = quantize(&rand_vec(seed, ab * ar * ac, -1.0, 1.0), dt);
    let b = quantize(&rand_vec(seed + 1, bb * br * bc, -1.0, 1.0), dt);
    let bias = quantize(&rand_vec(seed + 2, n, -1.0, 1.0), dt);
    let (alpha, act) = (0.75, Act::ALL[1 + seed as usize % (Act::ALL.len() - 1)]);
    let at = gpu.upload(&a, &[ab, ar, ac], dt).unwrap();
    let bt = gpu.upload(&b, &[bb, br, bc], dt).unwrap();
    let biast = gpu.upload(&bias, &[n], dt).unwrap();
    let opts = MatmulOpts { trans_a: trans.0, trans_b: trans.1, alpha, act, variant: Some(variant_of(core)), out_dtype: None };
    let c = matmul_tiled_as(gpu, &at, &bt, Some(&biast), &opts, Some(tiles)).unwrap();
    assert_eq!(c.shape(), &[nb, m, n]);
    let want = quantize(&matmul_reference(trans, batch, mnk, &a, &b, &bias, alpha, act), dt);
    let what = format!("{core:?} {tiles:?} trans {trans:?} batch {batch:?} {mnk:?} {}", label(gpu, dt));
    assert_close(&what, &gpu.download(&c).unwrap(), &want, core_tol(gpu, core, dt, k));
}

/// Every tiling of both cores, on sizes that leave partial blocks in M and N
/// and a partial last step of K, so every edge of the staging is exercised:
/// odd sizes (operands read one element at a time) and multiples of 4 that
/// no block divides (read four at a time). The smallest tiling takes every
/// transpose, odd and in fours (each transpose's reads both ways); the others
/// a Linear layer (x · Wᵀ, the commonest GEMM) in fours. Batches broadcast
/// either operand. (Each layout is a kernel that lavapipe compiles anew.)
#[test]
fn every_tiling_and_layout_matches_reference() {
    let gpu = gpu();
    for core in [GemmCore::Reg, GemmCore::Coop] {
        let mut tilings = gemm::tilings(&gpu, core);
        assert!(!tilings.is_empty(), "{core:?}: no tiling fits {}", gpu.adapter_name());
        tilings.reverse();
        for (i, &t) in tilings.iter().enumerate() {
            let odd = (t.bm as usize + 3, t.bn as usize + 5, 2 * t.bk as usize + 7);
            let fours = (t.bm as usize + 4, t.bn as usize + 12, 2 * t.bk as usize + 4);
            let runs: Vec<(Trans, Mnk)> = if i == 0 {
                vec![((false, false), odd), ((false, true), odd), ((true, false), odd), ((true, true), odd), ((false, false), fours), ((true, true), fours)]
            } else {
                vec![((false, true), fours)]
            };
            for (j, (trans, mnk)) in runs.into_iter().enumerate() {
                let batch = if j % 2 == 0 { (2, false, true) } else { (2, true, false) };
                check_matmul(&gpu, core, t, trans, batch, mnk, DType::F32, (i * 100 + j) as u64);
            }
        }
    }
}

/// f16 storage on both cores, and K = 1 and M = N = 1 (one live element in
/// a whole block).
#[test]
fn f16_storage_and_degenerate_sizes_match_reference() {
    for gpu in gpus() {
        for core in [GemmCore::Reg, GemmCore::Coop] {
            let t = *gemm::tilings(&gpu, core).last().unwrap();
            if gpu.features().f16 {
                check_matmul(&gpu, core, t, (false, true), (1, false, false), (37, 19, 45), DType::F16, 50);
            }
            check_matmul(&gpu, core, t, (false, false), (1, false, false), (5, 9, 1), DType::F32, 51);
            check_matmul(&gpu, core, t, (true, true), (3, false, false), (1, 1, 33), DType::F32, 52);
        }
    }
}

/// x [b, cin, h, w] * w [cout, cin, kh, kw] + bias, by the library reference.
#[allow(clippy::too_many_arguments)]
fn conv_reference(x: &[f32], w: &[f32], bias: &[f32], [b, cin, h, wd]: [usize; 4], [cout, kh, kw]: [usize; 3], stride: usize, (pad, pad_w): (usize, usize)) -> Vec<f32> {
    if pad != pad_w {
        // The reference pads both axes alike: pad the input here instead.
        let (hp, wp) = (h + 2 * pad, wd + 2 * pad_w);
        let mut padded = vec![0f32; b * cin * hp * wp];
        for plane in 0..b * cin {
            for y in 0..h {
                for xx in 0..wd {
                    padded[(plane * hp + y + pad) * wp + xx + pad_w] = x[(plane * h + y) * wd + xx];
                }
            }
        }
        return conv_reference(&padded, w, bias, [b, cin, hp, wp], [cout, kh, kw], stride, (0, 0));
    }
    let shape = reference::ConvShape { batch: b, cin, h, w: wd, cout, kh, kw, stride, pad };
    reference::narrow(&reference::conv2d(&shape, &reference::widen(x), &reference::widen(w), Some(&reference::widen(bias))))
}

/// The implicit GEMM at every tiling of both cores: 3×3 "same", stride 2 on
/// odd sizes, 1×1 (with Cin·kh·kw a multiple of 4), a 2×3 kernel and a 1×7
/// padded along the rows only, with channel and pixel counts no block
/// divides and a batch whose images share blocks.
#[test]
fn implicit_gemm_convolution_matches_reference() {
    let gpu = gpu();
    // (x shape, [cout, kh, kw], stride, (row padding, column padding))
    let cases: [([usize; 4], [usize; 3], usize, (usize, usize)); 5] = [
        ([2, 5, 9, 11], [7, 3, 3], 1, (1, 1)),
        ([1, 7, 17, 9], [33, 3, 3], 2, (1, 1)),
        ([2, 12, 6, 5], [19, 1, 1], 1, (0, 0)), // K = 12: the weight read four at a time
        ([1, 3, 4, 6], [5, 2, 3], 1, (1, 1)),
        ([1, 6, 7, 9], [5, 1, 7], 1, (0, 3)), // Inception's 1×7
    ];
    for core in [GemmCore::Reg, GemmCore::Coop] {
        let variant = if core == GemmCore::Coop { Conv2dVariant::Coop } else { Conv2dVariant::Tiled };
        for (i, &t) in gemm::tilings(&gpu, core).iter().enumerate() {
            // Every case on the first tiling, one each on the others.
            let chosen: Vec<_> = if i == 0 { cases.to_vec() } else { vec![cases[i % cases.len()]] };
            for (j, (xs, [cout, kh, kw], stride, pad)) in chosen.into_iter().enumerate() {
                let seed = (100 + i * 10 + j) as u64;
                let x = rand_vec(seed, xs.iter().product(), -1.0, 1.0);
                let w = rand_vec(seed + 1, cout * xs[1] * kh * kw, -1.0, 1.0);
                let bias = rand_vec(seed + 2, cout, -1.0, 1.0);
                let xt = gpu.upload(&x, &xs, DType::F32).unwrap();
                let wt = gpu.upload(&w, &[cout, xs[1], kh, kw], DType::F32).unwrap();
                let bt = gpu.upload(&bias, &[cout], DType::F32).unwrap();
                let opts = Conv2dOpts { stride, padding: pad.0, variant: Some(variant), padding_w: Some(pad.1) };
                let y = conv2d_tiled_as(&gpu, &xt, &wt, Some(&bt), opts, Some(t)).unwrap();
                let want = conv_reference(&x, &w, &bias, xs, [cout, kh, kw], stride, pad);
                let what = format!("{core:?} {t:?} x {xs:?} w [{cout}, {kh}, {kw}] stride {stride} pad {pad:?}");
                assert_close(&what, &gpu.download(&y).unwrap(), &want, core_tol(&gpu, core, DType::F32, xs[1] * kh * kw));
            }
        }
    }
}

/// A device that stands in for matrix units with the emulated twin,
/// optionally with shader files swapped in from `dir`.
fn emulating(dir: Option<std::path::PathBuf>) -> std::sync::Arc<Gpu> {
    Gpu::new(&GpuOptions { emulate_coop_matrix: true, shader_dir: dir, ..Default::default() }).unwrap()
}

/// A copy of coop.wgsl with `edit` applied, in a fresh shader directory.
fn shader_dir_with_coop(tag: &str, edit: impl Fn(&str) -> String) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fsd3d-coop-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/coop.wgsl")).unwrap();
    let edited = edit(&src);
    assert_ne!(edited, src, "the edit must change the layer");
    std::fs::write(dir.join("coop.wgsl"), edited).unwrap();
    dir
}

/// A Linear-shaped product on the device's default kernel, checked.
fn default_linear_is_right(gpu: &Gpu, seed: u64) {
    let (m, n, k) = (70, 45, 50);
    let a = rand_vec(seed, m * k, -1.0, 1.0);
    let b = rand_vec(seed + 1, n * k, -1.0, 1.0);
    let zero = vec![0.0; n];
    let at = gpu.upload(&a, &[m, k], DType::F32).unwrap();
    let bt = gpu.upload(&b, &[n, k], DType::F32).unwrap();
    let c = matmul(gpu, &at, &bt, None, &MatmulOpts { trans_b: true, ..Default::default() }).unwrap();
    let want = matmul_reference((false, true), (1, false, false), (m, n, k), &a, &b, &zero, 1.0, Act::None);
    assert_close("default matmul", &gpu.download(&c).unwrap(), &want, 1e-2);
}

#[test]
fn a_good_matrix_unit_kernel_passes_its_first_use_check() {
    let gpu = emulating(None);
    assert!(gemm::coop_in_use(&gpu));
    assert_eq!(default_variant(&gpu), MatmulVariant::Coop, "matrix units are the default where present");
    default_linear_is_right(&gpu, 60);
    assert!(gpu.switched_off().is_empty(), "{:?}", gpu.switched_off());
    assert!(gemm::coop_in_use(&gpu));
}

#[test]
fn a_wrong_matrix_unit_kernel_is_switched_off_and_the_tiled_one_answers() {
    // A product that drops the last k of every fragment: small, systematic, wrong.
    let dir = shader_dir_with_coop("wrong", |s| s.replace("for (var k = 0u; k < 16u; k++)", "for (var k = 0u; k < 15u; k++)"));
    let gpu = emulating(Some(dir.clone()));
    default_linear_is_right(&gpu, 61);
    let off = gpu.switched_off();
    assert_eq!(off.len(), 1, "{off:?}");
    assert_eq!(off[0].0, COOP_PATH);
    assert!(off[0].1.contains("first-use check") && off[0].1.contains("--disable-features coop-matrix"), "{}", off[0].1);
    assert!(!gemm::coop_in_use(&gpu));
    assert_ne!(default_variant(&gpu), MatmulVariant::Coop);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_matrix_unit_shader_that_does_not_compile_is_switched_off() {
    let dir = shader_dir_with_coop("broken", |s| s.replace("fn coop_mma(", "fn coop_mma_renamed("));
    let gpu = emulating(Some(dir.clone()));
    default_linear_is_right(&gpu, 62);
    let off = gpu.switched_off();
    assert_eq!(off.len(), 1, "{off:?}");
    assert!(off[0].1.contains("the kernel failed"), "{}", off[0].1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_matrix_units_switch_off_like_the_other_features() {
    let f = fsd3d::gpu::Features::parse_list("coop-matrix").unwrap();
    assert!(f.coop_matrix && !f.f16 && !f.subgroups);
    assert!(fsd3d::gpu::Features::ALL.names().contains(&"coop-matrix"));
    let gpu = Gpu::new(&GpuOptions { disable: f, ..Default::default() }).unwrap();
    assert!(!gpu.features().coop_matrix);
    assert!(!gemm::coop_in_use(&gpu), "without matrix units and without emulation, the twin is never the default");
    assert_ne!(default_variant(&gpu), MatmulVariant::Coop);
}

/// The real matrix-unit layer, which no CI adapter runs: every kernel that
/// uses it (the GEMMs, flash attention) validates with naga and translates to SPIR-V with the
/// cooperative-matrix capability, as wgpu's Vulkan backend would.
#[test]
fn the_matrix_unit_kernels_translate_to_spirv() {
    let caps = fsd3d::gpu::Caps::all();
    let src = fsd3d::gpu::kernel::ShaderSource::builtin();
    let hw: Vec<_> = fsd3d::ops::all_variants(caps).into_iter().filter(|k| k.defines.iter().any(|(n, v)| *n == "COOP_HW" && v == "1")).collect();
    for family in ["gemm", "attention_coop"] {
        assert!(hw.iter().any(|k| k.family == family), "no matrix-unit {family} kernel listed");
    }
    for key in &hw {
        let words = fsd3d::gpu::kernel::to_spirv(&src, key, caps).unwrap_or_else(|e| panic!("{e}"));
        // OpCapability CooperativeMatrixKHR (6022): the layer really is the hardware one.
        let has_cap = words.windows(2).any(|w| w[0] == (2 << 16 | 17) && w[1] == 6022);
        assert!(has_cap, "{key}: no CooperativeMatrixKHR capability in the SPIR-V");
    }
}

/// A skip connection added in the epilogue (tiled kernels) or after it (the
/// others), for matmuls and convolutions, a residual of another storage type
/// (added apart), and a residual of the wrong shape (an error).
#[test]
fn the_epilogue_adds_a_residual() {
    use fsd3d::ops::conv2d::{Conv2dVariant, conv2d_add};
    use fsd3d::ops::matmul::matmul_add;
    let gpu = gpu();
    let (m, n, k) = (37, 29, 24);
    let a = rand_vec(70, m * k, -1.0, 1.0);
    let b = rand_vec(71, n * k, -1.0, 1.0);
    let bias = rand_vec(72, n, -1.0, 1.0);
    let res = rand_vec(73, m * n, -1.0, 1.0);
    let at = gpu.upload(&a, &[m, k], DType::F32).unwrap();
    let bt = gpu.upload(&b, &[n, k], DType::F32).unwrap();
    let biast = gpu.upload(&bias, &[n], DType::F32).unwrap();
    let rt = gpu.upload(&res, &[m, n], DType::F32).unwrap();
    let plain = matmul_reference((false, true), (1, false, false), (m, n, k), &a, &b, &bias, 1.0, Act::Silu);
    let want: Vec<f32> = plain.iter().zip(&res).map(|(p, r)| p + r).collect();
    for variant in [MatmulVariant::Tiled, MatmulVariant::Coop, MatmulVariant::Blocked] {
        let opts = MatmulOpts { trans_b: true, act: Act::Silu, variant: Some(variant), ..Default::default() };
        let got = gpu.download(&matmul_add(&gpu, &at, &bt, Some(&biast), &rt, &opts).unwrap()).unwrap();
        let t = if variant == MatmulVariant::Coop { 1e-2 } else { 1e-5 };
        assert_close(&format!("{variant} + residual"), &got, &want, t);
    }
    if gpu.features().f16 {
        let r16 = gpu.upload(&res, &[m, n], DType::F16).unwrap();
        let want16: Vec<f32> = plain.iter().zip(quantize(&res, DType::F16)).map(|(p, r)| p + r).collect();
        let opts = MatmulOpts { trans_b: true, act: Act::Silu, variant: Some(MatmulVariant::Tiled), ..Default::default() };
        let got = gpu.download(&matmul_add(&gpu, &at, &bt, Some(&biast), &r16, &opts).unwrap()).unwrap();
        assert_close("tiled + f16 residual", &got, &want16, 1e-5);
    }
    let bad = gpu.upload(&res[..m * (n - 1)], &[m, n - 1], DType::F32).unwrap();
    let opts = MatmulOpts { trans_b: true, ..Default::default() };
    let e = matmul_add(&gpu, &at, &bt, None, &bad, &opts).unwrap_err().to_string();
    assert!(e.contains("residual") && e.contains(&format!("{:?}", [m, n])), "{e}");

    // A 3×3 "same" convolution with its skip connection.
    let (xs, cout) = ([2usize, 6, 7, 5], 9usize);
    let x = rand_vec(74, xs.iter().product(), -1.0, 1.0);
    let w = rand_vec(75, cout * xs[1] * 9, -1.0, 1.0);
    let cb = rand_vec(76, cout, -1.0, 1.0);
    let cres = rand_vec(77, xs[0] * cout * xs[2] * xs[3], -1.0, 1.0);
    let want: Vec<f32> =
        conv_reference(&x, &w, &cb, xs, [cout, 3, 3], 1, (1, 1)).iter().zip(&cres).map(|(p, r)| p + r).collect();
    let (xt, wt, cbt) = (
        gpu.upload(&x, &xs, DType::F32).unwrap(),
        gpu.upload(&w, &[cout, xs[1], 3, 3], DType::F32).unwrap(),
        gpu.upload(&cb, &[cout], DType::F32).unwrap(),
    );
    let crt = gpu.upload(&cres, &[xs[0], cout, xs[2], xs[3]], DType::F32).unwrap();
    for variant in [Conv2dVariant::Tiled, Conv2dVariant::Coop, Conv2dVariant::Gemm8x4] {
        let opts = Conv2dOpts { stride: 1, padding: 1, variant: Some(variant), padding_w: None };
        let got = gpu.download(&conv2d_add(&gpu, &xt, &wt, Some(&cbt), &crt, opts).unwrap()).unwrap();
        let t = if variant == Conv2dVariant::Coop { 1e-2 } else { 1e-5 };
        assert_close(&format!("conv {} + residual", variant.name()), &got, &want, t);
    }
}
