//! The whole chain of `pipelines/demo.yaml` at a tiny size: phantoms to the report. Evaluation
//! counts are checked against a plain recount from the exported NIfTI files, a training item in
//! the evaluation split is refused, an evaluation-only change re-runs only evaluation and
//! figures, `metrics diff` compares both cached results, and the report opens in headless
//! Chromium with every image loaded.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Scratch, states, stderr};
use covflow_imaging::Volume;

/// Four studies (three infected: study_0001 held out, study_0004 validating, study_0003
/// training), a GAN of two iterations, TransUNets of three epochs.
const TINY: [&str; 14] = [
    "--set",
    "params.count=4",
    "--set",
    "params.holdout=[study_0001]",
    "--set",
    "params.gan_iterations=2",
    "--set",
    "params.seg_contrastive_epochs=1",
    "--set",
    "params.seg_joint_epochs=2",
    "--set",
    "params.seg_supervised_epochs=2",
    "--set",
    "stages.figures.with.overlay_count=1",
];

fn with<'a>(args: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [args, &TINY[..], extra].concat()
}

/// `[z][y][x]`-ordered values of a NIfTI file.
fn zyx(path: &Path) -> (Vec<f32>, [usize; 3]) {
    let v = Volume::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let s = v.data.shape().to_vec();
    let values = v
        .data
        .view()
        .permuted_axes([2, 1, 0])
        .iter()
        .copied()
        .collect();
    (values, [s[2], s[1], s[0]])
}

#[test]
fn demo_chain_evaluates_on_held_out_items_plots_and_reports() {
    let s = Scratch::new();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.yaml");
    std::fs::copy(&demo, s.path().join("demo.yaml")).unwrap();

    let first = s.json(&with(&["run", "demo.yaml"], &[]));
    assert_eq!(first["failed"], 0, "{first}");
    let report = s.path().join("demo.report.html");
    assert!(report.exists(), "run writes the report");
    let again = s.json(&with(&["run", "demo.yaml"], &[]));
    assert_eq!(again["executed"], 0, "{again}");

    // The naive baseline's counts, recounted from the exported files with the rule written out.
    let out = s.run(&with(&["export", "demo.yaml", "evaluation", "eval"], &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    for (stage, dest) in [
        ("naive", "naive"),
        ("gan_crops", "crops"),
        ("pseudo", "pseudo"),
        ("curve", "curve"),
    ] {
        let out = s.run(&with(&["export", "demo.yaml", stage, dest], &[]));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (mask, [d, h, w]) = zyx(&s.path().join("naive/items/study_0001/mask.nii.gz"));
    let (lesion, _) = zyx(&s.path().join("crops/study_0001/lesion.nii.gz"));
    let (lung, _) = zyx(&s.path().join("crops/study_0001/lung.nii.gz"));
    let slices: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(s.path().join("eval/slices.json")).unwrap()).unwrap();
    let naive: Vec<&serde_json::Value> = slices.iter().filter(|r| r["stage"] == "naive").collect();
    assert_eq!(naive.len(), d, "one record per slice");
    let mut scored = 0;
    for r in &naive {
        let z = r["slice"].as_u64().unwrap() as usize;
        let plane = z * h * w..(z + 1) * h * w;
        // A binary mask inside the lung: `score > 0.2 · max` keeps exactly the mask.
        let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
        let any = mask[plane.clone()].iter().any(|v| *v > 0.5);
        for k in plane {
            let p = any && mask[k] > 0.5 && lung[k] > 0.5;
            let t = lesion[k] > 0.5;
            tp += u64::from(p && t);
            fp += u64::from(p && !t);
            fn_ += u64::from(!p && t);
        }
        let c = &r["counts"];
        assert_eq!(
            (c["tp"].as_u64(), c["fp"].as_u64(), c["fn_"].as_u64()),
            (Some(tp), Some(fp), Some(fn_)),
            "slice {z}"
        );
        let lesion_px = tp + fn_;
        assert_eq!(r["scored"], 100 * lesion_px > (h * w) as u64, "slice {z}");
        scored += usize::from(r["scored"] == true);
    }
    assert!(scored > 0, "the held-out study has slices over 1 %");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path().join("eval/summary.json")).unwrap())
            .unwrap();
    let methods: Vec<&str> = summary["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "prediction",
            "pseudo",
            "naive",
            "naive_tuned",
            "prediction_supervised"
        ]
    );

    check_curve(s.path());

    // An item that trained the networks is refused as an evaluation item.
    let out = s.run(&with(
        &["run", "demo.yaml"],
        &["--set", "stages.evaluation.with.items=[study_0003]"],
    ));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("study_0003") && err.contains("was fitted on them"),
        "{err}"
    );

    // Only the evaluation and what reads it depend on its threshold; plan says why.
    let change = ["--set", "stages.evaluation.with.threshold=0.5"];
    let plan = s.json(&with(&["plan", "demo.yaml"], &change));
    let run: Vec<(String, String)> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "run")
        .map(|t| {
            (
                t["stage"].as_str().unwrap().to_string(),
                t["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let stages: Vec<&str> = run.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stages, ["evaluation", "figures"], "{plan}");
    assert!(run[0].1.contains("threshold"), "{run:?}");
    let changed = s.json(&with(&["run", "demo.yaml"], &change));
    let executed: Vec<String> = states(&changed)
        .into_iter()
        .filter(|(_, _, state)| state == "executed")
        .map(|(stage, _, _)| stage)
        .collect();
    assert_eq!(executed, ["evaluation", "figures"]);

    // Both results are cached: the diff reads them and runs nothing.
    let out = s.run(&with(
        &["metrics", "diff", "demo.yaml", "--against-set", change[1]],
        &[],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("evaluation.prediction.dice"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("evaluation.naive.slices") && l.trim_end().ends_with("+0.0000")),
        "the slices scored do not depend on the threshold:\n{table}"
    );

    check_in_browser(&report);
}

/// The learning curve: the CT intensity, then the untrained and the trained generator (a
/// snapshot every 50 iterations, the first and the last: 0 and 2 here), and the last point is
/// the pseudo_mask stage's own judgement of the trained generator.
fn check_curve(dir: &Path) {
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(p)).unwrap()).unwrap()
    };
    let curve = read("curve/curve.json");
    let points = curve.as_array().unwrap();
    let at: Vec<Option<u64>> = points.iter().map(|p| p["iteration"].as_u64()).collect();
    assert_eq!(at, [None, Some(0), Some(2)], "{curve}");
    assert_eq!(points[0]["score"], "CT intensity");
    let quality = read("pseudo/quality.json");
    let judged = quality["holdout"]["roc_auc"].as_f64().unwrap();
    let last = points[2]["pooled_auc"].as_f64().unwrap();
    assert!((judged - last).abs() < 1e-9, "{judged} vs {last}");
    let study = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!((study(&points[2]["study_auc"]) - study(&quality["holdout_study_auc"])).abs() < 1e-9);
    let csv = std::fs::read_to_string(dir.join("curve/curve.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + points.len(), "{csv}");
}

/// Chromium, when this machine has it. `COVFLOW_TEST_BROWSER=1` (CI) makes its absence a
/// failure instead of a skip.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(PathBuf::from);
    if found.is_none() {
        assert!(
            std::env::var("COVFLOW_TEST_BROWSER").as_deref() != Ok("1"),
            "COVFLOW_TEST_BROWSER=1 but no chromium on PATH (apt-get install chromium)"
        );
        eprintln!("skipping the browser check: no chromium on PATH");
    }
    found
}

/// Opens the report in headless Chromium and checks that every image decoded and the tables
/// are there. The page is the report itself plus one script that records what it finds.
fn check_in_browser(report: &Path) {
    let Some(chromium) = chromium() else { return };
    let html = std::fs::read_to_string(report).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let probe = r#"<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-check', `images ${ok}/${imgs.length} tables ${document.querySelectorAll('table').length}`);
});</script></body>"#;
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html.replace("</body>", probe)).unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let check = dom
        .split("data-check=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| {
            panic!(
                "the page did not load: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let words: Vec<&str> = check.split(' ').collect();
    let (ok, total) = words[1].split_once('/').unwrap();
    let tables: usize = words[3].parse().unwrap();
    assert_eq!(ok, total, "every image loads: {check}");
    assert!(
        total.parse::<usize>().unwrap() >= 5,
        "the figures are there: {check}"
    );
    assert!(tables >= 4, "summary, bins, categories, run times: {check}");
}
