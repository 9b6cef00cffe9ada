//! The 3D GAN stages end to end on tiny phantoms: a `gan_train` killed mid-run resumes from its
//! last checkpoint and ends with the weights of the uninterrupted run, bit for bit (CPU);
//! `pseudo_mask` and `naive_mask` write their volumes, slice tables and quality reports.

mod common;

use std::path::PathBuf;

use common::{Scratch, cached_logs, find_file};

/// Two phantoms (CT-1, CT-0) on a 32³ grid and a GAN of eight iterations at 1/8 width,
/// checkpointed after every iteration.
const PIPELINE: &str = "name: gan
datasets:
  studies:
    phantom: {count: 2, seed: 1, size: small}
stages:
  scans: {uses: phantom, foreach: studies}
  grid: {uses: resample, foreach: scans, with: {shape: [48, 48, 32], window: [-1000, 400]}}
  lungs: {uses: lung_mask, foreach: grid}
  crops: {uses: crop, foreach: lungs, with: {shape: [32, 32, 32]}}
  gan:
    uses: gan_train
    needs: [crops]
    with: {iterations: 8, batch: 1, width: 0.125, lr_generator: 0.001, checkpoint_every: 1, seed: 3}
  pseudo: {uses: pseudo_mask, needs: [gan, crops]}
  naive: {uses: naive_mask, needs: [crops]}
";

/// The newest checkpoint's iteration under `cache`, if any.
fn checkpoint_iteration(cache: &std::path::Path) -> Option<u64> {
    let work = std::fs::read_dir(cache.join("work")).ok()?;
    work.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("checkpoint/state.json")).ok())
        .filter_map(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .filter_map(|v| v["iteration"].as_u64())
        .max()
}

fn weights(cache: PathBuf) -> Vec<u8> {
    std::fs::read(find_file(cache.join("objects"), "generator.bin").expect("generator.bin"))
        .unwrap()
}

#[test]
fn a_killed_gan_training_resumes_from_its_checkpoint_and_ends_bit_for_bit_the_same() {
    // The uninterrupted run.
    let straight = Scratch::new();
    straight.write("p.yaml", PIPELINE);
    let report = straight.json(&["run", "p.yaml"]);
    assert_eq!(report["failed"], 0, "{report}");

    // Killed (SIGKILL: no chance to clean up) once a checkpoint past iteration 2 exists.
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let cache = s.path().join(".covflow");
    let at_kill = s.kill_when("p.yaml", "gan", checkpoint_iteration, 2);
    assert!(at_kill < 8, "killed too late to show a resume ({at_kill})");

    let report = s.json(&["run", "p.yaml"]);
    assert_eq!(report["failed"], 0, "{report}");
    let logs = cached_logs(&cache);
    let resumed = logs
        .lines()
        .find_map(|l| l.strip_prefix("resumed from the checkpoint of iteration "))
        .unwrap_or_else(|| panic!("no resume in the logs:\n{logs}"));
    let resumed: u64 = resumed.trim().parse().unwrap();
    assert!(
        resumed >= at_kill && resumed > 0,
        "resumed from {resumed}, killed at {at_kill}"
    );
    assert_eq!(weights(cache), weights(straight.path().join(".covflow")));

    // The masks: a twin and a difference per infected item, slice tables, quality reports.
    let objects = s.path().join(".covflow/objects");
    for name in [
        "twin.nii.gz",
        "difference.nii.gz",
        "mask.nii.gz",
        "slices.csv",
        "quality.json",
    ] {
        assert!(find_file(objects.clone(), name).is_some(), "no {name}");
    }
    let quality: serde_json::Value = serde_json::from_slice(
        &std::fs::read(find_file(objects, "quality.json").unwrap()).unwrap(),
    )
    .unwrap();
    let auc = quality["all"]["roc_auc"]
        .as_f64()
        .expect("the CT-1 phantom has lesions");
    assert!((0.0..=1.0).contains(&auc), "{quality}");
}
