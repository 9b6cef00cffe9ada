//! The imaging data path through the binary: phantoms, `inspect`, the `phantom` stage.

mod common;

use common::{Scratch, states, stderr};

#[test]
fn phantom_tree_and_inspect() {
    let s = Scratch::new();
    let out = s.run(&["phantom", "--out", "mm", "--count", "3", "--seed", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Categories cycle CT-1, CT-0, CT-2.
    for f in [
        "mm/studies/CT-1/study_0001.nii.gz",
        "mm/studies/CT-0/study_0002.nii.gz",
        "mm/studies/CT-2/study_0003.nii.gz",
        "mm/masks/study_0003_mask.nii.gz",
        "mm/lungs/study_0003_lung.nii.gz",
    ] {
        assert!(s.path().join(f).is_file(), "{f}");
    }
    let info = s.run(&["inspect", "--json", "mm/studies/CT-2/study_0003.nii.gz"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["shape"], serde_json::json!([128, 128, 16]));
    assert_eq!(v["datatype"], "Int16");
    assert_eq!(v["orientation"], "RAS");
    assert_eq!(v["min"], -2048.0);
    let bad = s.run(&["inspect", "nope.nii.gz"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("nope.nii.gz"), "{}", stderr(&bad));
}

#[test]
fn phantom_stage_runs_cached_and_reruns_on_a_new_seed() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: ph
params: {seed: 1}
datasets:
  studies: {phantom: {count: 2, seed: "${params.seed}", size: small}}
stages:
  scans: {uses: phantom, foreach: studies}
"#,
    );
    let first = s.json(&["run", "p.yaml"]);
    assert_eq!(first["executed"], 2, "{first}");
    let out = s.run(&["export", "p.yaml", "scans", "exported"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["ct.nii.gz", "lung.nii.gz", "lesion.nii.gz", "study.json"] {
        assert!(
            s.path().join("exported/study_0001").join(f).is_file(),
            "{f}"
        );
    }
    let again = s.json(&["run", "p.yaml"]);
    assert_eq!(again["cached"], 2);
    let plan = s.json(&["plan", "p.yaml", "--set", "params.seed=2"]);
    assert!(
        states(&plan).iter().all(|t| t.2 == "run"),
        "a new seed changes every study: {plan}"
    );
    assert_eq!(plan["tasks"][0]["reason"], "item content changed");
}

#[test]
fn mosmed_and_nifti_sources_read_the_layout_and_name_bad_files() {
    let s = Scratch::new();
    let out = s.run(&["phantom", "--out", "mosmed", "--count", "3", "--seed", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    s.write(
        "p.yaml",
        r#"
name: mm
datasets:
  studies: {mosmed: {root: mosmed}}
  files: {nifti: "mosmed/masks/*.nii.gz"}
stages:
  copy:
    uses: exec
    foreach: studies
    with: {run: "echo {item.category} > {out}/c"}
  masks:
    uses: exec
    foreach: files
    with: {run: "cp {item.path} {out}/m.nii.gz"}
"#,
    );
    let plan = s.json(&["plan", "p.yaml"]);
    let tasks = plan["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 6, "{plan}");
    let items = |stage: &str| -> Vec<String> {
        tasks
            .iter()
            .filter(|t| t["stage"] == stage)
            .map(|t| t["item"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(items("copy"), ["study_0001", "study_0002", "study_0003"]);
    assert_eq!(
        items("masks"),
        ["study_0001_mask", "study_0002_mask", "study_0003_mask"]
    );
    let run = s.json(&["run", "p.yaml"]);
    assert_eq!(run["executed"], 6, "{run}");
    let out = s.run(&["export", "p.yaml", "copy", "x"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(s.path().join("x/study_0003/c")).unwrap(),
        "CT-2\n"
    );
    // A corrupt study is an error naming the file.
    s.write("mosmed/studies/CT-1/study_0009.nii.gz", "not a nifti file");
    let bad = s.run(&["plan", "p.yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("study_0009.nii.gz"),
        "{}",
        stderr(&bad)
    );
}
