//! covflow's TransUNet weights, written as safetensors under the reference's names, loaded into
//! the PyTorch reference model (`scripts/transunet_check.py`): both compute the same outputs.
//!
//! Needs a Python with torch: `COVFLOW_TORCH_PYTHON=/path/to/python` (default `python3`); without
//! torch the test says so and passes without checking. `COVFLOW_TORCH_CHECK_FULL=1` also checks
//! the seed configuration (66 870 129 parameters; about a minute).

use std::path::Path;
use std::process::Command;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use covflow_models::{
    TransUNet, TransUNetConfig, load_transunet_safetensors, save_transunet_safetensors,
};
use rand::{Rng, SeedableRng};

type B = NdArray;

fn python() -> String {
    std::env::var("COVFLOW_TORCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn has_torch(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Exports a network of `config` (its BatchNorm statistics brought near the data's by training-
/// mode passes, so that no layer is silenced by ReLU after a fresh BatchNorm),
/// runs it on a seeded batch and has PyTorch do the same; returns the script's JSON line.
fn check(config: &TransUNetConfig, batch: usize, python: &str) -> serde_json::Value {
    let device = Default::default();
    let d = config.img_dim;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(0.0..1.0)).collect() };
    let trained: TransUNet<Autodiff<B>> = config.init(&device);
    for _ in 0..30 {
        let x = Tensor::<Autodiff<B>, 4>::from_data(
            TensorData::new(draw(batch * d * d), [batch, 1, d, d]),
            &device,
        );
        let _ = trained.forward(x);
    }
    let net: TransUNet<B> = trained.valid();
    let x = draw(batch * d * d);
    let out = net.forward(Tensor::from_data(
        TensorData::new(x.clone(), [batch, 1, d, d]),
        &device,
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    save_transunet_safetensors(&net, &file("w.safetensors")).unwrap();
    write_f32(&file("x.f32"), &x);
    let logits = out.logits.into_data().to_vec::<f32>().unwrap();
    write_f32(&file("logits.f32"), &logits);
    write_f32(
        &file("bottleneck.f32"),
        &out.bottleneck.into_data().to_vec::<f32>().unwrap(),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/transunet_check.py");
    let arg = |p: &str| file(p).display().to_string();
    let o = Command::new(python)
        .arg(script)
        .args(["--weights", &arg("w.safetensors")])
        .args(["--input", &arg("x.f32")])
        .args(["--logits", &arg("logits.f32")])
        .args(["--bottleneck", &arg("bottleneck.f32")])
        .args(["--batch", &batch.to_string()])
        .args(["--img-dim", &d.to_string()])
        .args(["--out-channels", &config.out_channels.to_string()])
        .args(["--heads", &config.head_num.to_string()])
        .args(["--mlp-dim", &config.mlp_dim.to_string()])
        .args(["--blocks", &config.block_num.to_string()])
        .args(["--patch", &config.patch_dim.to_string()])
        .args(["--save-torch", &arg("torch.safetensors")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the check printed no result:\n{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    eprintln!("{report}");
    // And back: the file PyTorch wrote (its names, its BatchNorm counters) loads into a fresh
    // network that then computes what the exported one did.
    if report["ok"].as_bool() == Some(true) {
        let mut back: TransUNet<B> = config.init(&device);
        load_transunet_safetensors(&mut back, &file("torch.safetensors")).unwrap();
        let again = back.forward(Tensor::from_data(
            TensorData::new(x, [batch, 1, d, d]),
            &device,
        ));
        assert_eq!(
            again.logits.into_data().to_vec::<f32>().unwrap(),
            logits,
            "weights read back from PyTorch's file"
        );
    }
    report
}

#[test]
fn pytorch_computes_what_covflow_computes_with_covflows_weights() {
    let python = python();
    if !has_torch(&python) {
        eprintln!(
            "skipped: `{python}` has no torch (set COVFLOW_TORCH_PYTHON to a Python with torch to run the check)"
        );
        return;
    }
    let small = TransUNetConfig::new()
        .with_img_dim(64)
        .with_out_channels(16)
        .with_mlp_dim(32)
        .with_block_num(2);
    let mut configs = vec![(small, 2)];
    if std::env::var_os("COVFLOW_TORCH_CHECK_FULL").is_some() {
        configs.push((TransUNetConfig::new(), 2));
    }
    for (config, batch) in configs {
        let r = check(&config, batch, &python);
        assert_eq!(r["missing"], serde_json::json!([]), "{r}");
        assert_eq!(r["unexpected"], serde_json::json!([]), "{r}");
        let diff = r["max_abs_diff_logits"]
            .as_f64()
            .unwrap()
            .max(r["max_abs_diff_bottleneck"].as_f64().unwrap());
        assert!(diff < 1e-4, "outputs differ by {diff}: {r}");
        assert!(r["ok"].as_bool().unwrap(), "{r}");
        // Outputs that vary over the image: every layer took part.
        assert!(
            r["logits_std"].as_f64().unwrap() > 1e-3,
            "constant logits: {r}"
        );
    }
}
