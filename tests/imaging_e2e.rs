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

fn dice(a: &[f32], b: &[f32]) -> f64 {
    let inter = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x > 0.5 && **y > 0.5)
        .count() as f64;
    let sa = a.iter().filter(|x| **x > 0.5).count() as f64;
    let sb = b.iter().filter(|x| **x > 0.5).count() as f64;
    if sa + sb == 0.0 {
        1.0
    } else {
        2.0 * inter / (sa + sb)
    }
}

/// The resample stage on wgpu (the cubecl kernel on lavapipe) against the CPU reference applied
/// to the generator's own volumes: CT within float rounding, lesion and lung masks aligned.
#[test]
fn resample_stage_on_wgpu_matches_the_reference_and_keeps_masks_aligned() {
    use covflow_kernels::Kernels;
    use covflow_stages::resample::resample_volume;
    use covflow_stages::volume::Volume;
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: pre
datasets:
  studies: {phantom: {count: 2, seed: 5, size: small}}
stages:
  scans: {uses: phantom, foreach: studies}
  grid:
    uses: resample
    foreach: scans
    with: {shape: [64, 64, 12], window: [-1000, 400]}
"#,
    );
    let run = s.json(&["run", "p.yaml", "--device", "wgpu"]);
    assert_eq!(run["failed"], 0, "{run}");
    for stage in ["scans", "grid"] {
        let out = s.run(&["export", "p.yaml", stage, stage, "--device", "wgpu"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The device is part of the resample key: the CPU run is planned separately.
    let plan = s.json(&["plan", "p.yaml", "--device", "cpu"]);
    assert!(
        states(&plan).iter().any(|t| t.0 == "grid" && t.2 == "run"),
        "{plan}"
    );

    for id in ["study_0001", "study_0002"] {
        let src = s.path().join("scans").join(id);
        let got = s.path().join("grid").join(id);
        let ct = Volume::read(&got.join("ct.nii.gz")).unwrap();
        assert_eq!(ct.data.dim(), (64, 64, 12));
        assert!(
            (ct.spacing[0] - 5.6).abs() < 1e-4 && (ct.spacing[2] - 8.0 * 16.0 / 12.0).abs() < 1e-4
        );
        assert!(
            ct.data.iter().all(|v| (0.0..=1.0).contains(v)),
            "windowed to [0, 1]"
        );
        let want = resample_volume(
            &Kernels::Cpu,
            &Volume::read(&src.join("ct.nii.gz")).unwrap(),
            [64, 64, 12],
            Some((-1000.0, 400.0)),
            true,
        )
        .unwrap();
        let err = ct
            .data
            .iter()
            .zip(want.data.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-5, "{id}: CT differs from the reference by {err}");
        for mask in ["lesion.nii.gz", "lung.nii.gz"] {
            let m = Volume::read(&got.join(mask)).unwrap();
            let mut r = resample_volume(
                &Kernels::Cpu,
                &Volume::read(&src.join(mask)).unwrap(),
                [64, 64, 12],
                None,
                false,
            )
            .unwrap();
            r.data.mapv_inplace(|v| if v >= 0.5 { 1.0 } else { 0.0 });
            let d = dice(m.data.as_slice().unwrap(), r.data.as_slice().unwrap());
            assert!(d >= 0.95, "{id} {mask}: Dice {d}");
        }
    }
}
