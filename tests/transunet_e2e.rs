//! The TransUNet stages end to end on tiny phantoms: `transunet_train` killed mid-run resumes
//! from its last checkpoint and ends with the uninterrupted run's weights, bit for bit (CPU);
//! `predict` writes probability volumes and a quality report; a second run executes nothing, and
//! a prediction-only change re-runs only `predict`.

mod common;

use std::path::{Path, PathBuf};

use common::{Scratch, cached_logs, find_file, states};

/// Four phantoms (CT-1, CT-0, CT-2, CT-1) on a 32³ grid, a GAN of two iterations for the
/// pseudo-masks, and a TransUNet at 1/16 width: study_0003 is held out and predicted, one
/// infected study validates, the others train.
const PIPELINE: &str = "name: seg
params:
  predict_batch: 8
datasets:
  studies:
    phantom: {count: 4, seed: 1, size: small}
stages:
  scans: {uses: phantom, foreach: studies}
  grid: {uses: resample, foreach: scans, with: {shape: [48, 48, 32], window: [-1000, 400]}}
  lungs: {uses: lung_mask, foreach: grid}
  crops: {uses: crop, foreach: lungs, with: {shape: [32, 32, 32]}}
  gan:
    uses: gan_train
    needs: [crops]
    with: {iterations: 2, batch: 1, width: 0.125, checkpoint_every: 2, seed: 3}
  pseudo: {uses: pseudo_mask, needs: [gan, crops]}
  seg:
    uses: transunet_train
    needs: [pseudo, crops]
    with:
      holdout: [study_0003]
      contrastive_epochs: 4
      joint_epochs: 36
      batch_high: 2
      batch_low: 2
      channels: 8
      mlp_dim: 16
      blocks: 1
      heads: 2
      lr: 0.001
      lr_patience: 2
      checkpoint_every: 1
      seed: 4
  prediction:
    uses: predict
    needs: [seg, crops]
    with: {batch: '${params.predict_batch}'}
";

/// Epochs of the newest TransUNet checkpoint under `cache`, if any.
fn checkpoint_epoch(cache: &Path) -> Option<u64> {
    let work = std::fs::read_dir(cache.join("work")).ok()?;
    work.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("checkpoint/state.json")).ok())
        .filter_map(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .filter_map(|v| v["history"].as_array().map(|h| h.len() as u64))
        .max()
}

/// `name` from the TransUNet training's output (beside its transunet.json: the GAN writes a
/// history.json of its own).
fn file(cache: PathBuf, name: &str) -> Vec<u8> {
    let info = find_file(cache.join("objects"), "transunet.json").expect("no transunet.json");
    let path = info.with_file_name(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_killed_transunet_training_resumes_bit_for_bit_and_predicts() {
    // The uninterrupted run.
    let straight = Scratch::new();
    straight.write("p.yaml", PIPELINE);
    let report = straight.json(&["run", "p.yaml"]);
    assert_eq!(report["failed"], 0, "{report}");
    let straight_cache = straight.path().join(".covflow");

    // The upstream stages first, so the kill below lands in the training.
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let cache = s.path().join(".covflow");
    assert_eq!(s.json(&["run", "p.yaml", "--until", "pseudo"])["failed"], 0);
    // Killed (SIGKILL: no chance to clean up) once a checkpoint past epoch 5 exists.
    let at_kill = s.kill_when("p.yaml", "seg", checkpoint_epoch, 5);
    assert!(at_kill < 40, "killed too late to show a resume ({at_kill})");

    let report = s.json(&["run", "p.yaml"]);
    assert_eq!(report["failed"], 0, "{report}");
    let logs = cached_logs(&cache);
    let resumed: u64 = logs
        .lines()
        .find_map(|l| l.strip_prefix("resumed from the checkpoint of epoch "))
        .unwrap_or_else(|| panic!("no resume in the logs:\n{logs}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        resumed >= at_kill && resumed > 0,
        "resumed from {resumed}, killed at {at_kill}"
    );
    for name in ["model.safetensors", "best.safetensors", "history.json"] {
        assert!(
            file(cache.clone(), name) == file(straight_cache.clone(), name),
            "{name} differs from the uninterrupted run's"
        );
    }

    // The history: both phases, every epoch, a rate the schedule cut at least once.
    let history: serde_json::Value =
        serde_json::from_slice(&file(cache.clone(), "history.json")).unwrap();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 40);
    assert_eq!(history[0]["phase"], "contrastive");
    assert_eq!(history[39]["phase"], "joint");
    assert!(history[0]["sensitivity"].is_null() && history[39]["sensitivity"].is_number());
    let info: serde_json::Value =
        serde_json::from_slice(&file(cache.clone(), "transunet.json")).unwrap();
    let ids = |k: &str| -> Vec<String> {
        serde_json::from_value(info[k].clone()).unwrap_or_else(|_| panic!("{k}: {info}"))
    };
    let (train, validation) = (ids("train"), ids("validation"));
    assert_eq!(ids("holdout"), ["study_0003"]);
    assert_eq!(validation.len(), 1, "{info}");
    assert!(
        !train.is_empty() && !train.contains(&validation[0]),
        "{info}"
    );
    assert!(!train.iter().chain(&validation).any(|i| i == "study_0003"));

    // The prediction: the held-out item only, probabilities in [0, 1], judged against its
    // lesion mask.
    let prob = find_file(cache.join("objects"), "probability.nii.gz").expect("probability");
    assert!(prob.to_string_lossy().contains("study_0003"), "{prob:?}");
    let object = prob.ancestors().nth(3).unwrap();
    let quality: serde_json::Value =
        serde_json::from_slice(&std::fs::read(object.join("quality.json")).unwrap()).unwrap();
    assert_eq!(quality["holdout_items"], serde_json::json!(["study_0003"]));

    // Nothing re-runs; a prediction-only change re-runs only the prediction.
    let again = s.json(&["run", "p.yaml"]);
    assert_eq!(again["executed"], 0, "{again}");
    let changed = s.json(&["run", "p.yaml", "--set", "params.predict_batch=3"]);
    let executed: Vec<String> = states(&changed)
        .into_iter()
        .filter(|(_, _, state)| state == "executed")
        .map(|(stage, _, _)| stage)
        .collect();
    assert_eq!(executed, ["prediction"], "{changed}");
}
