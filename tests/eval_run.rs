//! `fsd3d eval` as a library (`eval::run::run_eval`): on the embedded prior
//! with tiny settings, the whole job writes results.md / results.json and a
//! figure per prompt with the rows it should have; a second call reuses every
//! run and sample and gives the same numbers; Ctrl-C stops after a
//! checkpoint and the next call resumes; a changed config in an existing
//! folder, an empty prompts file and an unknown method are clear errors.
mod common;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use fsd3d::diffusion::guidance::Method;
use fsd3d::eval::run::{self as er, DdimReference, EvalEvent, EvalPlan, EvalResults, Work};
use fsd3d::generate as g;
use fsd3d::generate::config::{ConfigFlags, ConfigOverlay};
use fsd3d::generate::job::{self, GenerateJob, GenerateRequest, slug};

/// Small scene, cheap renders: what tests/generate.rs's tiny_config changes,
/// plus a smaller hash table (the checkpoints stay small).
const TINY: &str = "[scene.render]\nsamples_per_ray = 48\n[scene.material]\nambient_only_steps = 1\n\
                    [scene.field]\nlog2_table_size = 12\n[output]\nlog_every = 1\ncheckpoint_every = 0\n";

fn tiny_plan(prompts: &[&str], seeds: &[u64], methods: &[&str], steps: u64) -> EvalPlan {
    EvalPlan {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        seeds: seeds.to_vec(),
        methods: er::expand_methods(&methods.iter().map(|m| m.to_string()).collect::<Vec<_>>(), &[], &[]).unwrap(),
        model: None,
        steps: Some(steps),
        config: Some(ConfigOverlay { name: "tiny.toml".into(), text: TINY.into() }),
        views: 4,
        // 64² renders in the figure: a 128² one costs seconds per run on lavapipe.
        figure_scale: 2,
        reference: Some(DdimReference { steps: 2, cfg: 3.0, eta: 1.0, samples_per_seed: 2 }),
        command_line: "fsd3d eval (test)".into(),
        clip: None,
        inception: None,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fsd3d-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read_results(out: &Path) -> EvalResults {
    serde_json::from_str(&std::fs::read_to_string(out.join(er::files::RESULTS_JSON)).unwrap()).unwrap()
}

#[test]
fn eval_writes_results_reuses_runs_and_resumes_after_ctrl_c() {
    let gpu = common::gpu();
    let out = temp_dir("job");
    let never = AtomicBool::new(false);
    let prompts = ["a red cube", "a blue sphere"];
    let plan = tiny_plan(&prompts, &[0, 1], &["fsd", "sds"], 2);

    // First call: everything fresh.
    let mut units = Vec::new();
    let first = er::run_eval(&gpu, &plan, &out, &never, |e| {
        if let EvalEvent::Unit { index, total, work, .. } = e {
            units.push((*index, *total, *work));
        }
    })
    .unwrap();
    assert!(first.finished);
    assert_eq!((first.runs, first.fresh, first.resumed, first.reused, first.steps_optimised), (8, 8, 0, 0, 16));
    assert_eq!((first.samples_drawn, first.samples_reused), (8, 0));
    // 8 runs + 2 prompts × 2 seeds of reference samples, in order, each announced once.
    assert_eq!(units.iter().map(|u| u.0).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
    assert!(units.iter().all(|u| u.1 == 12));
    assert_eq!(units.iter().filter(|u| u.2 == Work::Sampled).count(), 4);

    let results = read_results(&out);
    let ev = results.evaluation.as_ref().expect("the embedded prior has a classifier");
    assert!(results.metrics.is_none(), "no metric networks were named");
    let labels: Vec<&str> = ev.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(labels, [er::DDIM_LABEL, "FSD", "SDS"]);
    assert_eq!(ev.runs.len(), 12);
    assert_eq!(ev.prompts.len(), 6);
    for m in &ev.methods {
        assert_eq!((m.runs, m.prompts), (4, 2), "{}", m.method);
    }
    for r in &ev.runs {
        let views = if r.method == er::DDIM_LABEL { 2 } else { 4 };
        assert_eq!(r.views, views, "{} {} seed {}", r.method, r.prompt, r.seed);
        // Both prompts name a shape and a colour: every run has a fidelity, a probability.
        assert!(r.fidelity.is_some_and(|f| (0.0..=1.0).contains(&f)), "{r:?}");
    }
    for p in &ev.prompts {
        // Seeds {0} vs {1}: 4 views (2 reference samples) per half, enough for a covariance.
        let fid = p.cross_fid.unwrap_or_else(|| panic!("no Cross-FID for {} / {}", p.method, p.prompt));
        assert!(fid.is_finite() && fid >= 0.0);
        assert!(p.inception_score >= 1.0 - 1e-9 && p.shape_inception_score >= 1.0 - 1e-9);
    }
    assert_eq!(ev.cross_fid_split.a, [0]);
    assert_eq!(ev.cross_fid_split.b, [1]);
    assert_eq!(results.steps_per_run, [2]);
    assert_eq!(results.runs.iter().filter(|r| r.work == Work::Fresh).count(), 8);
    assert_eq!(results.date.len(), 10);

    let md = std::fs::read_to_string(out.join(er::files::RESULTS_MD)).unwrap();
    for want in ["fsd3d eval (test)", "Steps per run: 2", er::DDIM_LABEL, "| FSD |", "| SDS |", &results.adapter, "Cross-FID"] {
        assert!(md.contains(want), "results.md lacks {want:?}:\n{md}");
    }
    // Figures: 3 rows (reference, FSD, SDS) × 2 seeds of 64² cells (2 × 32), with labels.
    for p in prompts {
        let fig = fsd3d::export::image::read_png(&out.join(er::files::figure(&slug(p)))).unwrap();
        assert!(fig.width > 2 * 64 && fig.height > 3 * 64 && fig.height < 4 * 64, "{p}: figure {}x{}", fig.width, fig.height);
    }
    // A run folder has what a person needs to look and to resume.
    let run_dir = EvalPlan::run_dir(&out, "a red cube", "fsd", 1);
    for f in [g::files::CONFIG, g::files::LOG, g::files::CHECKPOINT, g::files::SUMMARY, er::files::VIEW_GRID, er::files::FRONT, er::files::VIEWS] {
        assert!(run_dir.join(f).is_file(), "{} lacks {f}", run_dir.display());
    }
    let front = fsd3d::export::image::read_png(&run_dir.join(er::files::FRONT)).unwrap();
    assert_eq!((front.width, front.height), (64, 64));
    let cfg = g::GenerateConfig::from_toml(&std::fs::read_to_string(run_dir.join(g::files::CONFIG)).unwrap(), "config").unwrap();
    assert_eq!((cfg.seed, cfg.steps, cfg.method, cfg.scene.field.log2_table_size), (1, 2, Method::Fsd, 12));
    assert!(out.join("runs/a-blue-sphere/ddim/s0").join(er::files::ddim_sample(1)).is_file());

    // Second call: nothing optimised or sampled, the same numbers.
    let again = er::run_eval(&gpu, &plan, &out, &never, |_| {}).unwrap();
    assert!(again.finished);
    assert_eq!((again.fresh, again.resumed, again.reused, again.steps_optimised), (0, 0, 8, 0));
    assert_eq!((again.samples_drawn, again.samples_reused), (0, 8));
    assert_eq!(read_results(&out).evaluation, results.evaluation);

    // Ctrl-C in a longer run: it stops after step 3 of 4 with a checkpoint...
    let longer = tiny_plan(&["a red cube"], &[0], &["sds"], 4);
    let stop = AtomicBool::new(false);
    let cut = er::run_eval(&gpu, &longer, &out, &stop, |e| {
        if let EvalEvent::Step(r) = e
            && r.step == 3
        {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(!cut.finished);
    assert_eq!(cut.steps_optimised, 1, "resumed from the finished 2-step run, stopped after step 3");
    assert!(cut.files.is_empty());
    // ...and the next call continues from it.
    let mut resumed_at = None;
    let rest = er::run_eval(&gpu, &longer, &out, &never, |e| {
        if let EvalEvent::Unit { work: Work::Resumed, step, .. } = e {
            resumed_at = Some(*step);
        }
    })
    .unwrap();
    assert!(rest.finished);
    assert_eq!((rest.resumed, rest.steps_optimised, resumed_at), (1, 1, Some(3)));
    assert_eq!(read_results(&out).steps_per_run, [4]);
    let log = std::fs::read_to_string(EvalPlan::run_dir(&out, "a red cube", "sds", 0).join(g::files::LOG)).unwrap();
    let steps: Vec<&str> = log.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["1", "2", "3", "4"], "{log}");

    // A folder made with another config is not silently redone.
    let mut changed = tiny_plan(&["a red cube"], &[0], &["sds"], 4);
    changed.config.as_mut().unwrap().text.push_str("[guidance]\ncfg = 5.0\n");
    let e = er::run_eval(&gpu, &changed, &out, &never, |_| {}).expect_err("a changed config").to_string();
    assert!(e.contains("guidance.cfg") && e.contains("--out"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn methods_expand_into_labelled_ablation_rows() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let rows = er::expand_methods(&names(&["fsd", "sds", "fsd-constant"]), &[0.0, 0.5], &[]).unwrap();
    let got: Vec<(&str, &str)> = rows.iter().map(|m| (m.label.as_str(), m.slug.as_str())).collect();
    assert_eq!(got, [("FSD β=0", "fsd-beta-0"), ("FSD β=0.5", "fsd-beta-0.5"), ("SDS", "sds"), ("FSD constant noise", "fsd-constant")]);
    let rows = er::expand_methods(&names(&["fsd"]), &[], &[120.0, 360.0]).unwrap();
    assert_eq!(rows.iter().map(|m| m.slug.as_str()).collect::<Vec<_>>(), ["fsd-theta-120", "fsd-theta-360"]);
    assert_eq!(rows[0].label, "FSD Θ=120");
    // Both lists: every combination.
    let both = er::expand_methods(&names(&["fsd"]), &[0.5, 1.0], &[120.0, 240.0]).unwrap();
    assert_eq!(both.len(), 4);
    assert_eq!(both[1].label, "FSD β=0.5 Θ=240");
    // The row's setting lands in the run config over the defaults and the overlay.
    let kind = g::PriorKind::Pixel(fsd3d::models::pixel_prior::PixelPriorSpec::load(&fsd3d::models::embedded_prior_dir()).unwrap().unwrap());
    let mut plan = tiny_plan(&["a red cube"], &[3], &["fsd"], 7);
    plan.config.as_mut().unwrap().text.push_str("[noise]\nbeta = 0.9\ntheta_deg = 90.0\n");
    let cfg = plan.run_config("a red cube", &both[1], 3, &kind).unwrap();
    assert_eq!((cfg.noise.beta, cfg.noise.theta_deg, cfg.seed, cfg.steps, cfg.scene.render.samples_per_ray), (0.5, 240.0, 3, 7, 48));
    let plain = plan.run_config("a red cube", &er::EvalMethod::plain(Method::Fsd), 3, &kind).unwrap();
    assert_eq!((plain.noise.beta, plain.noise.theta_deg), (0.9, 90.0));
    // Folder names stay plain.
    assert_eq!(slug("An orange Cube, front view!"), "an-orange-cube-front-view");
    assert_eq!(slug("???"), "untitled");
    assert_eq!(plan.cross_fid_split().a, Vec::<u64>::new());
    let mut four = plan.clone();
    four.seeds = vec![0, 1, 2, 3];
    assert_eq!((four.cross_fid_split().a, four.cross_fid_split().b), (vec![0, 1], vec![2, 3]));
}

#[test]
fn bad_input_gives_clear_errors() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let e = er::expand_methods(&names(&["fsd", "dreamfusion"]), &[], &[]).unwrap_err().to_string();
    assert!(e.contains("dreamfusion") && e.contains("sds") && e.contains("fsd-constant"), "{e}");
    let e = er::expand_methods(&names(&["sds"]), &[0.5], &[]).unwrap_err().to_string();
    assert!(e.contains("--beta") && e.contains("no fsd"), "{e}");
    let e = er::expand_methods(&names(&["fsd"]), &[1.5], &[]).unwrap_err().to_string();
    assert!(e.contains("1.5") && e.contains("[0, 1]"), "{e}");
    let e = er::expand_methods(&names(&["fsd"]), &[], &[0.0]).unwrap_err().to_string();
    assert!(e.contains("Θ"), "{e}");
    let e = er::expand_methods(&names(&["sds", "sds"]), &[], &[]).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    assert!(er::expand_methods(&names(&[""]), &[], &[]).is_err());

    // Prompts files: comments and blank lines are skipped; none left is an error that says so.
    let dir = temp_dir("prompts");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "# shapes\n\n  a red cube  \n#a blue cube\nan orange cone\n").unwrap();
    assert_eq!(er::read_prompts(&file).unwrap(), ["a red cube", "an orange cone"]);
    std::fs::write(&file, "# nothing yet\n\n   \n").unwrap();
    let e = er::read_prompts(&file).unwrap_err().to_string();
    assert!(e.contains("no prompts") && e.contains("prompts.txt"), "{e}");
    assert!(er::read_prompts(&dir.join("missing.txt")).unwrap_err().to_string().contains("missing.txt"));
    let _ = std::fs::remove_dir_all(&dir);

    // Plans are checked before any work.
    let mut plan = tiny_plan(&["a red cube", "A red cube!"], &[0, 1], &["fsd"], 2);
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("a-red-cube"), "{e}");
    plan.prompts.pop();
    plan.seeds = vec![0, 0];
    assert!(plan.validate().unwrap_err().to_string().contains("seed 0"));
    plan.seeds = vec![0];
    plan.views = 0;
    assert!(plan.validate().unwrap_err().to_string().contains("--views"));
    plan.views = 4;
    plan.figure_scale = 0;
    assert!(plan.validate().unwrap_err().to_string().contains("--figure-scale"));
    plan.figure_scale = 2;
    plan.validate().unwrap();
    // A bad overlay key is named before anything runs.
    plan.config = Some(ConfigOverlay { name: "typo.toml".into(), text: "[guidance]\ncfgg = 3\n".into() });
    let kind = g::PriorKind::Latent;
    let e = plan.run_config("a red cube", &plan.methods[0], 0, &kind).unwrap_err().to_string();
    assert!(e.contains("cfgg") && e.contains("typo.toml"), "{e}");
}

/// One prompt, one folder name: `generate` (its default `runs/<prompt>-<method>-s<seed>`)
/// and `eval` (`runs/<prompt>/<method>/s<seed>`) cut a long prompt to the
/// same 60 characters and drop the '-' the cut can leave; and they lay the
/// same config layers over it.
#[test]
fn generate_and_eval_name_and_configure_a_long_prompt_alike() {
    // The 60th character is the space before "cube": cut there, a bare cut ends in '-'.
    let prompt = format!("{} cube", "x".repeat(59));
    let stem = "x".repeat(59);
    assert_eq!(slug(&prompt), stem);
    let gpu = common::gpu();
    let overlay = ConfigOverlay { name: "tiny.toml".into(), text: format!("prompt = \"not this one\"\nseed = 9\n{TINY}") };
    let request = GenerateRequest::New {
        prompt: prompt.clone(),
        method: Method::Fsd,
        overlay: Some(overlay.clone()),
        flags: ConfigFlags { seed: Some(3), steps: Some(7), ..ConfigFlags::default() },
        out: None,
    };
    let generate = GenerateJob::prepare(&gpu, request).unwrap();
    assert_eq!(generate.out, Path::new("runs").join(format!("{stem}-fsd-s3")));
    assert_eq!(generate.out, job::default_run_dir(&generate.cfg));

    let mut plan = tiny_plan(&[&prompt], &[3], &["fsd"], 7);
    plan.config = Some(overlay);
    let out = Path::new("OUT");
    assert_eq!(EvalPlan::run_dir(out, &prompt, "fsd", 3), out.join("runs").join(&stem).join("fsd").join("s3"));
    assert_eq!(out.join(er::files::figure(&slug(&prompt))), out.join(format!("figure_{stem}.png")));

    // The command line's prompt and seed win over the overlay's, in both.
    let kind = job::prior_kind(&fsd3d::models::embedded_prior_dir()).unwrap();
    let mut eval_cfg = plan.run_config(&prompt, &plan.methods[0], 3, &kind).unwrap();
    job::resolve_dtype(&gpu, &mut eval_cfg).unwrap();
    assert_eq!((generate.cfg.prompt.as_str(), generate.cfg.seed, generate.cfg.steps), (prompt.as_str(), 3, 7));
    assert_eq!(generate.cfg.scene.field.log2_table_size, 12, "the overlay reached the config");
    assert_eq!(eval_cfg, generate.cfg);
}

#[test]
fn dates_are_civil_utc() {
    assert_eq!(er::date_of_unix_days(0), "1970-01-01");
    // 2000-02-29 (a leap day of a century divisible by 400) and 2026-11-25.
    assert_eq!(er::date_of_unix_days(951_782_400 / 86_400), "2000-02-29");
    assert_eq!(er::date_of_unix_days(1_795_611_600 / 86_400), "2026-11-25");
    assert_eq!(er::date_of_unix_days(-1), "1969-12-31");
    assert_eq!(er::reference_seed(3, 0), 3);
    assert_eq!(er::reference_seed(3, 2), 3 + (2 << 32));
}

/// `fsd3d prior-check` on the embedded prior (2 DDIM steps: the pictures are
/// noise, the bookkeeping is what is checked): a verdict per shape × colour ×
/// seed, totals that agree with the verdicts, the open prompt's counts, the
/// figures at their sizes.
#[test]
fn prior_check_judges_every_prompt_and_seed() {
    use fsd3d::eval::metrics::Labels;
    use fsd3d::eval::prior_check::{PriorCheckPlan, caption, run_prior_check};
    let gpu = common::gpu();
    let dir = fsd3d::models::model_dir(None);
    let prior = fsd3d::models::prior::StableDiffusion::load(&gpu, &dir, fsd3d::gpu::DType::F32).unwrap();
    let classifier = fsd3d::models::classifier::Classifier::load(&gpu, &dir).unwrap();
    let labels = Labels::of(&classifier);
    let out = temp_dir("prior-check");
    let plan = PriorCheckPlan { seeds: vec![0], steps: 2, cfg: 3.0, eta: 1.0, batch: 16, open_prompt: Some(("a red object".into(), 3)), cell: 32 };
    let mut calls = Vec::new();
    let r = run_prior_check(&gpu, &prior, &classifier, &dir, &plan, &out, |done, total| calls.push((done, total))).unwrap();
    let (ns, nc) = (labels.shapes.len(), labels.colours.len());
    assert_eq!(r.samples.len(), ns * nc);
    assert_eq!(calls.last(), Some(&(ns * nc + 3, ns * nc + 3)), "progress ends at the total");
    assert!(r.samples.iter().any(|v| v.prompt == caption("orange", "torus")));
    let right = |f: &dyn Fn(&fsd3d::eval::prior_check::SampleVerdict) -> bool| r.samples.iter().filter(|v| f(v)).count();
    assert_eq!(r.colour_right, right(&|v| v.colour_right()));
    assert_eq!(r.both_right, right(&|v| v.shape_right() && v.colour_right()));
    assert!(r.both_right <= r.shape_right.min(r.colour_right));
    let open = r.open.as_ref().unwrap();
    assert_eq!(open.samples.len(), 3);
    assert_eq!(open.shapes.iter().map(|c| c.count).sum::<usize>(), 3);
    assert!(open.samples.iter().all(|v| v.shape.is_none() && v.colour.as_deref() == Some("red")));
    let samples = fsd3d::export::image::read_png(&out.join("samples.png")).unwrap();
    let open_png = fsd3d::export::image::read_png(&out.join("open_prompt.png")).unwrap();
    assert!(samples.width > nc * 32 && samples.height > ns * 32, "{}x{}", samples.width, samples.height);
    assert!(open_png.width > 3 * 32 && open_png.width < samples.width);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("prior_check.json")).unwrap()).unwrap();
    assert_eq!(json["samples"].as_array().unwrap().len(), ns * nc);
    let md = std::fs::read_to_string(out.join("prior_check.md")).unwrap();
    assert!(md.contains("| both |") && md.contains("\"a red object\" over 3 seeds"), "{md}");
}

const CLIP: &str = "tests/fixtures/models/clip_vit";

/// The paper's networks beside the classifier: the same runs (reused, not
/// optimised again) get a second table with CLIP, IS and Cross-FID; the
/// classifier's numbers do not change; a rerun reads every network output
/// back from the runs' caches; and the DDIM row's CLIP scores are those of
/// its sample PNGs scored directly.
#[test]
fn eval_adds_the_papers_metrics_with_clip_and_inception() {
    use fsd3d::models::{clip, clip_image::ClipPreprocess, tokenizer::PromptTokenizer};
    let gpu = common::gpu();
    let out = temp_dir("paper");
    let never = AtomicBool::new(false);
    let prompts = ["a red cube"];
    let mut plan = tiny_plan(&prompts, &[0, 1], &["fsd"], 2);
    // Two views a run: each view is one Inception pass at 299² (~1 s on lavapipe).
    plan.views = 2;
    let first = er::run_eval(&gpu, &plan, &out, &never, |_| {}).unwrap();
    assert!(first.finished);
    let classifier_only = read_results(&out);

    let inception = common::inception_formula::formula_inception("eval");
    let with_nets = EvalPlan { clip: Some(CLIP.into()), inception: Some(inception.clone()), ..plan.clone() };
    let second = er::run_eval(&gpu, &with_nets, &out, &never, |_| {}).unwrap();
    assert_eq!((second.fresh, second.resumed, second.reused, second.steps_optimised), (0, 0, 2, 0), "runs are reused, only re-rendered");
    let results = read_results(&out);
    assert_eq!(results.evaluation, classifier_only.evaluation, "the classifier's table is unchanged");
    let m = results.metrics.as_ref().expect("the paper's table");
    assert_eq!(m.networks.clip.as_deref(), Some(CLIP));
    assert_eq!(m.networks.inception.as_deref(), Some(inception.to_str().unwrap()));
    assert_eq!(m.methods.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), [er::DDIM_LABEL, "FSD"]);
    for row in &m.methods {
        let clip = row.clip_score.unwrap_or_else(|| panic!("{}: no CLIP score", row.method));
        assert!(clip.mean.abs() <= 100.0 && clip.n == 2, "{row:?}");
        assert!(row.inception_score.is_some_and(|s| s.mean >= 1.0 - 1e-9), "{row:?}");
        assert!(row.cross_fid.is_some_and(|f| f.mean.is_finite() && f.mean >= 0.0), "{row:?}");
    }
    for r in &m.runs {
        assert_eq!(r.views, 2);
    }
    let run_dir = EvalPlan::run_dir(&out, "a red cube", "fsd", 0);
    assert!(run_dir.join("metric_views.safetensors").is_file());
    let md = std::fs::read_to_string(out.join(er::files::RESULTS_MD)).unwrap();
    for want in ["## The paper's metrics", "| Method | CLIP ↑ | IS ↑ | Cross-FID ↑ |", CLIP, "## The prior's classifier"] {
        assert!(md.contains(want), "results.md lacks {want:?}:\n{md}");
    }

    // The DDIM row's CLIP score is the mean over its samples' own scores.
    let net = clip::ClipModel::load(&gpu, Path::new(CLIP), fsd3d::gpu::DType::F32).unwrap();
    let tok = PromptTokenizer::from_dir(Path::new(CLIP)).unwrap();
    let pre = ClipPreprocess::load(Path::new(CLIP), net.image_size()).unwrap();
    let text = gpu.download(&net.text_embeds(&gpu, &[tok.encode("a red cube").unwrap()]).unwrap()).unwrap();
    for seed in [0, 1] {
        let dir = out.join(format!("runs/a-red-cube/ddim/s{seed}"));
        let scores: Vec<f64> = (0..2)
            .map(|k| {
                let img = fsd3d::export::image::read_png(&dir.join(er::files::ddim_sample(k))).unwrap();
                let x = gpu.upload(&pre.apply(&img).unwrap(), &[1, 3, 32, 32], fsd3d::gpu::DType::F32).unwrap();
                clip::clip_score(&gpu.download(&net.image_embeds(&gpu, &x).unwrap()).unwrap(), &text)
            })
            .collect();
        let row = m.runs.iter().find(|r| r.method == er::DDIM_LABEL && r.seed == seed).unwrap();
        let want = scores.iter().sum::<f64>() / 2.0;
        assert!((row.clip_score.unwrap() - want).abs() < 1e-4, "DDIM seed {seed}: {:?} vs {want}", row.clip_score);
    }

    // A rerun renders nothing and gives the same numbers.
    let mut events = Vec::new();
    let third = er::run_eval(&gpu, &with_nets, &out, &never, |e| {
        if matches!(e, EvalEvent::Views) {
            events.push("views");
        }
    })
    .unwrap();
    assert!(third.finished && events.is_empty(), "every run's network outputs come from its cache");
    assert_eq!(read_results(&out).metrics, results.metrics);
    let _ = std::fs::remove_dir_all(inception.parent().unwrap());
    if std::env::var_os("FSD3D_KEEP_TEST_OUTPUT").is_none() {
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A prior without a classifier (a Stable Diffusion pipeline) is evaluated
/// by the paper's networks alone; without them it is a clear error.
#[test]
fn a_prior_without_a_classifier_needs_the_papers_networks() {
    let gpu = common::gpu();
    let out = temp_dir("sd");
    let never = AtomicBool::new(false);
    let mut plan = tiny_plan(&["a red cube"], &[0, 1], &["fsd"], 1);
    plan.model = Some("tests/fixtures/models/pipeline".into());
    plan.views = 2;
    plan.figure_scale = 1;
    let e = er::run_eval(&gpu, &plan, &out, &never, |_| {}).unwrap_err().to_string();
    assert!(e.contains("no classifier/") && e.contains("--clip") && e.contains("--inception"), "{e}");
    plan.clip = Some(CLIP.into());
    let done = er::run_eval(&gpu, &plan, &out, &never, |_| {}).unwrap();
    assert!(done.finished);
    let results = read_results(&out);
    assert!(results.evaluation.is_none());
    let m = results.metrics.unwrap();
    assert!(m.methods.iter().all(|r| r.clip_score.is_some() && r.inception_score.is_none() && r.cross_fid.is_none()), "{m:?}");
    let md = std::fs::read_to_string(out.join(er::files::RESULTS_MD)).unwrap();
    assert!(md.contains("| Method | CLIP ↑ | Prompts | Runs |") && !md.contains("classifier"), "{md}");
    // A wrong network path fails before any run.
    plan.clip = Some("tests/fixtures/models/clip_quick_gelu".into());
    let e = er::run_eval(&gpu, &plan, &temp_dir("sd-bad"), &never, |_| {}).unwrap_err().to_string();
    assert!(e.contains("not a CLIP model"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

// ---------------------------------------------------------------------------
// Sweeps: a plan of units, shards, single units, the report, claims
// ---------------------------------------------------------------------------

use er::Selection;

/// Shards of a plan, then --report, give the serial eval's table number for
/// number; a shard run twice changes nothing; --report before the last shard
/// names what is missing; a unit stopped by Ctrl-C resumes from its checkpoint.
#[test]
fn sharded_units_merge_into_the_serial_table() {
    let gpu = common::gpu();
    let never = AtomicBool::new(false);
    let plan = tiny_plan(&["a red cube"], &[0, 1], &["fsd"], 2);
    let units = plan.units();
    assert_eq!(units.len(), 4, "2 reference seeds + 2 runs");
    assert_eq!(units.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["a-red-cube/ddim/s0", "a-red-cube/ddim/s1", "a-red-cube/fsd/s0", "a-red-cube/fsd/s1"]);

    let serial_dir = temp_dir("serial");
    er::run_eval(&gpu, &plan, &serial_dir, &never, |_| {}).unwrap();
    let serial = read_results(&serial_dir);

    let sweep = temp_dir("sweep");
    // Shard 0 of 2: units 0 and 2. No results yet.
    let s0 = er::run_eval_units(&gpu, &plan, &sweep, Selection::Shard { i: 0, n: 2 }, &never, |_| {}).unwrap();
    assert!(s0.finished && s0.results.is_none() && s0.files.is_empty());
    assert_eq!((s0.fresh, s0.samples_drawn), (1, 2));
    assert!(sweep.join(er::files::PLAN).is_file());
    // A report now names the two missing units and still scores the rest.
    let partial = er::run_eval_units(&gpu, &plan, &sweep, Selection::Report, &never, |_| {}).unwrap();
    assert_eq!(partial.missing, ["a-red-cube/ddim/s1", "a-red-cube/fsd/s1"]);
    let r = read_results(&sweep);
    assert_eq!(r.missing, partial.missing);
    assert_eq!(r.runs.len(), 2);
    let md = std::fs::read_to_string(sweep.join(er::files::RESULTS_MD)).unwrap();
    assert!(md.contains("2 units of the plan are missing") && md.contains("a-red-cube/fsd/s1"), "{md}");
    assert!(!sweep.join(er::files::figure("a-red-cube")).exists(), "a prompt with a hole has no figure yet");
    assert_eq!((partial.fresh, partial.steps_optimised, partial.samples_drawn), (0, 0, 0), "a report works on nothing");

    // Shard 1 of 2 through its single units, the run stopped by Ctrl-C once and resumed.
    er::run_eval_units(&gpu, &plan, &sweep, Selection::Unit(1), &never, |_| {}).unwrap();
    let stop = AtomicBool::new(false);
    let cut = er::run_eval_units(&gpu, &plan, &sweep, Selection::Unit(3), &stop, |e| {
        if let EvalEvent::Step(r) = e
            && r.step == 1
        {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(!cut.finished);
    let mut resumed_at = None;
    let rest = er::run_eval_units(&gpu, &plan, &sweep, Selection::Unit(3), &never, |e| {
        if let EvalEvent::Unit { work: Work::Resumed, step, .. } = e {
            resumed_at = Some(*step);
        }
    })
    .unwrap();
    assert!(rest.finished);
    assert_eq!((rest.resumed, rest.steps_optimised, resumed_at), (1, 1, Some(1)));

    // The merged table is the serial one, number for number.
    let merged = er::run_eval_units(&gpu, &plan, &sweep, Selection::Report, &never, |_| {}).unwrap();
    assert!(merged.missing.is_empty());
    let merged = read_results(&sweep);
    assert_eq!(merged.evaluation, serial.evaluation);
    assert!(merged.missing.is_empty());
    assert!(sweep.join(er::files::figure("a-red-cube")).is_file());

    // A shard run again does nothing and changes no byte of its runs.
    let run0 = EvalPlan::run_dir(&sweep, "a red cube", "fsd", 0).join(g::files::CHECKPOINT);
    let before = std::fs::read(&run0).unwrap();
    let again = er::run_eval_units(&gpu, &plan, &sweep, Selection::Shard { i: 0, n: 2 }, &never, |_| {}).unwrap();
    assert_eq!((again.fresh, again.resumed, again.steps_optimised, again.samples_drawn), (0, 0, 0, 0));
    assert_eq!(std::fs::read(&run0).unwrap(), before);
    assert!(!sweep.join(er::files::LOCKS).read_dir().unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "lock")), "claims are released");
    let _ = std::fs::remove_dir_all(&serial_dir);
    let _ = std::fs::remove_dir_all(&sweep);
}

/// A unit another live worker holds is skipped; a claim whose worker is gone
/// (a dead pid here, or a lock from another host left unrefreshed) is taken over.
#[test]
fn units_held_by_live_workers_are_skipped_and_stale_claims_taken_over() {
    let gpu = common::gpu();
    let never = AtomicBool::new(false);
    let mut plan = tiny_plan(&["a blue cube"], &[0], &["sds"], 1);
    plan.reference = None;
    let out = temp_dir("claims");
    plan.claim_folder(&out).unwrap();
    let unit = &plan.units()[0];
    let lock = out.join(er::files::LOCKS).join("a-blue-cube__sds__s0.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    // Held by this (live) process, as another worker on this host would hold it.
    std::fs::write(&lock, format!(r#"{{"host":"{host}","pid":{},"since":0}}"#, std::process::id())).unwrap();
    let busy = er::run_eval_units(&gpu, &plan, &out, Selection::Unit(unit.index), &never, |_| {}).unwrap();
    assert_eq!(busy.busy.len(), 1, "{:?}", busy.busy);
    assert!(busy.busy[0].starts_with("a-blue-cube/sds/s0 (pid"), "{:?}", busy.busy);
    assert_eq!(busy.fresh, 0);
    // Held by a pid that no longer exists on this host: taken over.
    let dead = (4_000_000..4_194_304).find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap();
    std::fs::write(&lock, format!(r#"{{"host":"{host}","pid":{dead},"since":0}}"#)).unwrap();
    let taken = er::run_eval_units(&gpu, &plan, &out, Selection::Unit(unit.index), &never, |_| {}).unwrap();
    assert_eq!((taken.busy.len(), taken.fresh), (0, 1));
    assert!(!lock.exists(), "released when done");
    // Another host's claim: fresh, it is respected; unrefreshed for long, it is taken over.
    let mut second = plan.clone();
    second.seeds = vec![0];
    std::fs::write(&lock, r#"{"host":"node-17","pid":1,"since":0}"#).unwrap();
    let respected = er::run_eval_units(&gpu, &second, &out, Selection::Unit(0), &never, |_| {}).unwrap();
    assert_eq!(respected.busy.len(), 1);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&lock).unwrap().set_modified(old).unwrap();
    let after = er::run_eval_units(&gpu, &second, &out, Selection::Unit(0), &never, |_| {}).unwrap();
    assert_eq!(after.busy.len(), 0, "a stale claim from another host is taken over");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sweep_input_errors_are_clear() {
    let gpu = common::gpu();
    let never = AtomicBool::new(false);
    for bad in ["2/2", "1", "a/b", "0/0", "-1/2"] {
        let e = Selection::parse_shard(bad).unwrap_err().to_string();
        assert!(e.contains("I/N") && e.contains(bad), "{e}");
    }
    assert_eq!(Selection::parse_shard(" 1/3").unwrap(), Selection::Shard { i: 1, n: 3 });
    let plan = tiny_plan(&["a red cube"], &[0, 1], &["fsd"], 2);
    let out = temp_dir("sweep-bad");
    let e = er::run_eval_units(&gpu, &plan, &out, Selection::Unit(4), &never, |_| {}).unwrap_err().to_string();
    assert!(e.contains("--unit 4") && e.contains("0 to 3"), "{e}");
    let e = er::run_eval_units(&gpu, &plan, &out, Selection::Shard { i: 0, n: 5 }, &never, |_| {}).unwrap_err().to_string();
    assert!(e.contains("only 4 units"), "{e}");
    // A report with nothing done.
    let e = er::run_eval_units(&gpu, &plan, &out, Selection::Report, &never, |_| {}).unwrap_err().to_string();
    assert!(e.contains("none of the plan's 4 units"), "{e}");
    // The folder is this plan's: another plan is refused, naming what differs.
    let mut other = plan.clone();
    other.seeds = vec![0, 1, 2, 3];
    let e = other.claim_folder(&out).unwrap_err().to_string();
    assert!(e.contains("different plan") && e.contains("seeds"), "{e}");
    // A damaged plan.json.
    std::fs::write(out.join(er::files::PLAN), "{\"fsd3d_plan\": 1, \"units\": [").unwrap();
    let e = plan.claim_folder(&out).unwrap_err().to_string();
    assert!(e.contains("plan.json") && e.contains("another --out"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}
