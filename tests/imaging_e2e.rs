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
    assert_eq!(v["orientation"], "LAS", "MosMed's orientation");
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
    covflow_imaging::metrics::dice(a.iter().map(|x| *x > 0.5), b.iter().map(|x| *x > 0.5))
}

/// The resample stage on wgpu (the cubecl kernel on lavapipe) against the CPU reference applied
/// to the generator's own volumes: CT within float rounding, lesion and lung masks aligned.
#[test]
fn resample_stage_on_wgpu_matches_the_reference_and_keeps_masks_aligned() {
    use covflow_imaging::Volume;
    use covflow_imaging::resample::{resample_mask, resample_volume};
    use covflow_kernels::Kernels;
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
        );
        let err = ct
            .data
            .iter()
            .zip(want.data.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-5, "{id}: CT differs from the reference by {err}");
        for mask in ["lesion.nii.gz", "lung.nii.gz"] {
            let m = Volume::read(&got.join(mask)).unwrap();
            let r = resample_mask(
                &Kernels::Cpu,
                &Volume::read(&src.join(mask)).unwrap(),
                [64, 64, 12],
            );
            let d = dice(m.data.as_slice().unwrap(), r.data.as_slice().unwrap());
            assert!(d >= 0.95, "{id} {mask}: Dice {d}");
        }
    }
}

/// The whole preprocessing on wgpu: phantom → resample → lung_mask → crop. Outputs have the
/// declared shape, spacing and range; the lung mask matches the generator's; the lesion mask
/// comes out of the crop aligned with the generator's own mask put through the CPU references
/// with the same box; the CPU run gives the same volumes.
#[test]
fn preprocessing_on_wgpu_keeps_lesions_aligned_through_the_crop() {
    use covflow_imaging::Volume;
    use covflow_imaging::resample::resample_mask;
    use covflow_kernels::Kernels;
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: pre
datasets:
  studies: {phantom: {count: 3, seed: 9, size: small}}
stages:
  scans: {uses: phantom, foreach: studies}
  grid:
    uses: resample
    foreach: scans
    with: {shape: [128, 128, 32]}
  lungs: {uses: lung_mask, foreach: grid}
  crops:
    uses: crop
    foreach: lungs
    with: {shape: [96, 80, 24], margin: 1}
"#,
    );
    for device in ["wgpu", "cpu"] {
        let run = s.json(&["run", "p.yaml", "--device", device]);
        assert_eq!(run["failed"], 0, "{run}");
        for stage in ["scans", "lungs", "crops"] {
            let out = s.run(&[
                "export",
                "p.yaml",
                stage,
                &format!("{device}/{stage}"),
                "--device",
                device,
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
    let read = |p: std::path::PathBuf| Volume::read(&p).unwrap();
    for id in ["study_0001", "study_0002", "study_0003"] {
        let got = s.path().join("wgpu/crops").join(id);
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(s.path().join("wgpu/lungs").join(id).join("lung_mask.json"))
                .unwrap(),
        )
        .unwrap();
        let lung_dice = report["report"]["reference_dice"].as_f64().unwrap();
        assert!(lung_dice >= 0.97, "{id}: lung mask Dice {lung_dice}");

        let crop: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(got.join("crop.json")).unwrap()).unwrap();
        let lo: Vec<usize> = serde_json::from_value(crop["box"]["lo"].clone()).unwrap();
        let hi: Vec<usize> = serde_json::from_value(crop["box"]["hi"].clone()).unwrap();
        let ct = read(got.join("ct.nii.gz"));
        assert_eq!(ct.data.dim(), (96, 80, 24));
        assert!(
            ct.data.iter().all(|v| (0.0..=1.0).contains(v)),
            "{id}: windowed CT"
        );
        // Spacing: the box's extent on the 128 × 128 × 32 grid, spread over the output voxels.
        let grid_spacing = [2.8, 2.8, 4.0];
        for (a, n) in [96, 80, 24].into_iter().enumerate() {
            let want = (hi[a] - lo[a] + 1) as f64 * grid_spacing[a] / n as f64;
            assert!(
                (ct.spacing[a] - want).abs() < 1e-4,
                "{id} axis {a}: {} vs {want}",
                ct.spacing[a]
            );
        }
        let cpu = read(s.path().join("cpu/crops").join(id).join("ct.nii.gz"));
        let err = ct
            .data
            .iter()
            .zip(cpu.data.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{id}: wgpu and cpu crops differ by {err}");
        for mask in ["lung.nii.gz", "lesion.nii.gz"] {
            let a = read(got.join(mask));
            let b = read(s.path().join("cpu/crops").join(id).join(mask));
            assert!(
                dice(a.data.as_slice().unwrap(), b.data.as_slice().unwrap()) > 0.999,
                "{id} {mask}: devices disagree"
            );
        }

        // The generator's lesion mask through the CPU references with the crop's own box.
        let truth = read(s.path().join("wgpu/scans").join(id).join("lesion.nii.gz"));
        let k = Kernels::Cpu;
        let g = resample_mask(&k, &truth, [128, 128, 32]);
        let box_ = g.crop([lo[0], lo[1], lo[2]], [hi[0], hi[1], hi[2]]);
        let want = resample_mask(&k, &box_, [96, 80, 24]);
        let lesion = read(got.join("lesion.nii.gz"));
        let lesion_voxels = want.data.iter().filter(|v| **v > 0.5).count();
        if id == "study_0002" {
            assert_eq!(lesion_voxels, 0, "CT-0 has no lesions");
        } else {
            assert!(lesion_voxels > 100, "{id}: a lesion to compare");
        }
        let d = dice(
            lesion.data.as_slice().unwrap(),
            want.data.as_slice().unwrap(),
        );
        assert!(d >= 0.95, "{id}: lesion Dice after the crop {d}");
    }
}

/// `pipelines/mosmed.yaml` on a MosMed-layout tree (phantoms written by `covflow phantom`): the
/// resample stage reads the studies, their expert masks and lung masks straight from the dataset.
#[test]
fn mosmed_pipeline_reads_the_layout_directly() {
    let s = Scratch::new();
    // CT-1, CT-0, CT-2, CT-1, CT-3: healthy and infected studies for the whole chain below.
    let out = s.run(&["phantom", "--out", "mm", "--count", "5", "--seed", "6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pipeline = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/mosmed.yaml");
    std::fs::copy(&pipeline, s.path().join("mosmed.yaml")).unwrap();
    let set = [
        "--set",
        "params.root=mm",
        "--set",
        "params.grid=[128, 128, 32]",
    ];
    // The preprocessing first.
    let run = s.json(&[&["run", "mosmed.yaml", "--until", "crops"][..], &set].concat());
    assert_eq!(run["failed"], 0, "{run}");
    assert_eq!(run["executed"], 15, "{run}");
    let out = s.run(&[&["export", "mosmed.yaml", "lungs", "lungs"][..], &set].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    for id in ["study_0001", "study_0002", "study_0003"] {
        let dir = s.path().join("lungs").join(id);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("lung_mask.json")).unwrap())
                .unwrap();
        let d = report["report"]["reference_dice"].as_f64().unwrap();
        assert!(
            d >= 0.97,
            "{id}: lung Dice {d} against the tree's lungs/ mask"
        );
        // The tree's masks/ (every phantom has one, empty for CT-0) travel with the study.
        assert!(dir.join("lesion.nii.gz").is_file(), "{id}");
    }
    // Then the whole chain to the report, with the GPU-sized trainings cut to a few steps.
    let tiny = [
        "--set",
        "params.holdout=[study_0003]",
        "--set",
        "stages.crops.with.shape=[64, 64, 32]",
        "--set",
        "stages.gan.with.iterations=2",
        "--set",
        "stages.gan.with.width=0.25",
        "--set",
        "stages.gan.with.batch=2",
        "--set",
        "stages.seg.with.channels=16",
        "--set",
        "stages.seg.with.mlp_dim=64",
        "--set",
        "stages.seg.with.blocks=2",
        "--set",
        "stages.seg.with.contrastive_epochs=1",
        "--set",
        "stages.seg.with.joint_epochs=2",
        "--set",
        "stages.seg.with.validation_count=1",
    ];
    let run = s.json(&[&["run", "mosmed.yaml"][..], &set, &tiny].concat());
    assert_eq!(run["failed"], 0, "{run}");
    assert!(s.path().join("mosmed.report.html").is_file());
    let out = s.run(&[&["metrics", "show", "mosmed.yaml"][..], &set, &tiny].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for method in ["prediction", "pseudo", "naive"] {
        assert!(
            table.contains(&format!("evaluation.{method}.dice")),
            "{table}"
        );
    }
}

/// `spacing:` instead of `shape:` keeps the field of view; a mask that is not on its CT's grid
/// is an error naming the file.
#[test]
fn resample_to_a_spacing_and_reject_a_mask_off_its_grid() {
    use covflow_imaging::Volume;
    let s = Scratch::new();
    let out = s.run(&["phantom", "--out", "mm", "--count", "2", "--seed", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    s.write(
        "p.yaml",
        r#"
name: spacing
datasets:
  studies: {mosmed: {root: mm}}
stages:
  grid:
    uses: resample
    foreach: studies
    with: {spacing: [5.6, 5.6, null]}
"#,
    );
    let run = s.json(&["run", "p.yaml"]);
    assert_eq!(run["failed"], 0, "{run}");
    let out = s.run(&["export", "p.yaml", "grid", "grid"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ct = Volume::read(&s.path().join("grid/study_0001/ct.nii.gz")).unwrap();
    assert_eq!(ct.data.dim(), (64, 64, 16));
    assert!((ct.spacing[0] - 5.6).abs() < 1e-4 && (ct.spacing[2] - 8.0).abs() < 1e-4);

    // Study 2's expert mask replaced by one on another grid.
    let mask = s.path().join("mm/masks/study_0002_mask.nii.gz");
    Volume::new(ndarray::Array3::zeros((64, 64, 16)), [5.6, 5.6, 8.0])
        .write_u8(&mask)
        .unwrap();
    let out = s.run(&["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("study_0002_mask.nii.gz") && err.contains("must be on its CT's grid"),
        "{err}"
    );
}
