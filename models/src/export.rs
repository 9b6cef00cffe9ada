//! TransUNet weights as safetensors under the reference PyTorch implementation's names
//! (`transunet_pytorch`: `encoder.encoder1.downsample.0.weight`,
//! `encoder.vit.transformer.layer_blocks.0.multi_head_attention.qkv_layer.weight`,
//! `decoder.decoder1.layer.0.weight`, …), so PyTorch loads covflow's weights and covflow loads
//! PyTorch's.
//!
//! burn-store writes the tensors; its PyTorch adapter transposes linear weights (burn keeps
//! `[in, out]`, PyTorch `[out, in]`) and renames normalisation parameters (`gamma`/`beta` ↔
//! `weight`/`bias`); the table below renames module paths. PyTorch's BatchNorm also keeps
//! `num_batches_tracked`, which only its momentum-free mode reads: it is not written.
//! `scripts/transunet_check.py` loads a file into the reference model and compares outputs.

use std::path::{Path, PathBuf};

use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::ModelBackend;
use crate::transunet::TransUNet;

/// covflow's module paths → the reference's, applied in order (each to the previous result).
const TO_PYTORCH: &[(&str, &str)] = &[
    (
        r"^vit\.blocks\.(\d+)\.mlp_in\.",
        "encoder.vit.transformer.layer_blocks.$1.mlp.0.",
    ),
    (
        r"^vit\.blocks\.(\d+)\.mlp_out\.",
        "encoder.vit.transformer.layer_blocks.$1.mlp.3.",
    ),
    (r"^vit\.blocks\.", "encoder.vit.transformer.layer_blocks."),
    (r"^vit\.", "encoder.vit."),
    (
        r"^(encoder\d)\.downsample_conv\.",
        "encoder.$1.downsample.0.",
    ),
    (
        r"^(encoder\d)\.downsample_norm\.",
        "encoder.$1.downsample.1.",
    ),
    (r"^(encoder\d)\.", "encoder.$1."),
    (r"^(conv1|norm1|conv2|norm2)\.", "encoder.$1."),
    (r"^(decoder\d)\.conv1\.", "decoder.$1.layer.0."),
    (r"^(decoder\d)\.norm1\.", "decoder.$1.layer.1."),
    (r"^(decoder\d)\.conv2\.", "decoder.$1.layer.3."),
    (r"^(decoder\d)\.norm2\.", "decoder.$1.layer.4."),
    (r"^head\.", "decoder.conv1."),
];

/// The reference's paths → covflow's: the inverse of [`TO_PYTORCH`].
const FROM_PYTORCH: &[(&str, &str)] = &[
    (
        r"^encoder\.vit\.transformer\.layer_blocks\.(\d+)\.mlp\.0\.",
        "vit.blocks.$1.mlp_in.",
    ),
    (
        r"^encoder\.vit\.transformer\.layer_blocks\.(\d+)\.mlp\.3\.",
        "vit.blocks.$1.mlp_out.",
    ),
    (r"^encoder\.vit\.transformer\.layer_blocks\.", "vit.blocks."),
    (r"^encoder\.vit\.", "vit."),
    (
        r"^encoder\.(encoder\d)\.downsample\.0\.",
        "$1.downsample_conv.",
    ),
    (
        r"^encoder\.(encoder\d)\.downsample\.1\.",
        "$1.downsample_norm.",
    ),
    (r"^encoder\.(encoder\d)\.", "$1."),
    (r"^encoder\.(conv1|norm1|conv2|norm2)\.", "$1."),
    (r"^decoder\.(decoder\d)\.layer\.0\.", "$1.conv1."),
    (r"^decoder\.(decoder\d)\.layer\.1\.", "$1.norm1."),
    (r"^decoder\.(decoder\d)\.layer\.3\.", "$1.conv2."),
    (r"^decoder\.(decoder\d)\.layer\.4\.", "$1.norm2."),
    (r"^decoder\.conv1\.", "head."),
];

/// Why weights could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// burn-store failed on the file.
    #[error(
        "{path}: {message}\n  help: the file must be a TransUNet of the same configuration in safetensors, with the reference's parameter names"
    )]
    Store {
        /// The file.
        path: PathBuf,
        /// What burn-store said.
        message: String,
    },
}

fn store(path: &Path, patterns: &[(&str, &str)]) -> SafetensorsStore {
    patterns.iter().fold(
        SafetensorsStore::from_file(path.to_path_buf()),
        |s, (from, to)| s.with_key_remapping(*from, *to),
    )
}

/// Writes `net`'s weights (and BatchNorm running statistics) to `path` under the reference's
/// PyTorch names.
pub fn save_transunet_safetensors<B: ModelBackend>(
    net: &TransUNet<B>,
    path: &Path,
) -> Result<(), WeightsError> {
    // One metadata entry: burn-store keeps them in a HashMap, so several would be written in a
    // different order by every process and the same weights would give different files (and
    // cache digests). `format: pt` is what Hugging Face's loaders look for.
    let mut s = store(path, TO_PYTORCH)
        .with_to_adapter(BurnToPyTorchAdapter)
        .clear_metadata()
        .metadata("format", "pt");
    net.save_into(&mut s).map_err(|e| WeightsError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Loads weights written by [`save_transunet_safetensors`] or by PyTorch's reference model
/// (`safetensors.torch.save_file(model.state_dict(), path)`) into `net`, which must have the
/// same configuration. Every one of `net`'s tensors must be in the file.
pub fn load_transunet_safetensors<B: ModelBackend>(
    net: &mut TransUNet<B>,
    path: &Path,
) -> Result<(), WeightsError> {
    let mut s = store(path, FROM_PYTORCH).with_from_adapter(PyTorchToBurnAdapter);
    let fail = |message: String| WeightsError::Store {
        path: path.to_path_buf(),
        message,
    };
    let result = net.load_from(&mut s).map_err(|e| fail(e.to_string()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(fail(format!(
            "missing {:?}; errors {:?}",
            result.missing, result.errors
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transunet::TransUNetConfig;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    type B = NdArray;

    fn small() -> TransUNetConfig {
        TransUNetConfig::new()
            .with_img_dim(32)
            .with_out_channels(16)
            .with_mlp_dim(32)
            .with_block_num(2)
    }

    #[test]
    fn weights_round_trip_through_the_reference_names() {
        let device = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a: TransUNet<B> = small().init(&device);
        save_transunet_safetensors(&a, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        for name in [
            "encoder.conv1.weight",
            "encoder.encoder1.downsample.0.weight",
            "encoder.encoder3.norm3.running_var",
            "encoder.vit.cls_token",
            "encoder.vit.transformer.layer_blocks.1.multi_head_attention.qkv_layer.weight",
            "encoder.vit.transformer.layer_blocks.0.mlp.3.bias",
            "encoder.vit.transformer.layer_blocks.0.layer_norm2.weight",
            "decoder.decoder4.layer.4.bias",
            "decoder.conv1.weight",
        ] {
            assert!(
                header.contains(&format!("\"{name}\"")),
                "{name} not written"
            );
        }
        assert!(!header.contains("gamma") && !header.contains("mlp_in"));

        let mut b: TransUNet<B> = small().init(&device);
        load_transunet_safetensors(&mut b, &path).unwrap();
        let x = Tensor::<B, 4>::random([2, 1, 32, 32], Distribution::Default, &device);
        let (ya, yb) = (a.forward(x.clone()).logits, b.forward(x).logits);
        let va: Vec<f32> = ya.into_data().to_vec().unwrap();
        let vb: Vec<f32> = yb.into_data().to_vec().unwrap();
        assert_eq!(va, vb, "the loaded network computes what the saved one did");
    }

    #[test]
    fn a_file_of_another_configuration_is_refused_with_its_name() {
        let device = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save_transunet_safetensors(&small().init::<B>(&device), &path).unwrap();
        let mut wider: TransUNet<B> = small().with_out_channels(32).init(&device);
        let err = load_transunet_safetensors(&mut wider, &path).unwrap_err();
        assert!(err.to_string().contains("w.safetensors"), "{err}");
    }

    #[test]
    fn the_same_weights_give_the_same_file() {
        // Cache digests hash the file: its bytes must not depend on the process or the save.
        let dir = tempfile::tempdir().unwrap();
        let net: TransUNet<B> = small().init(&Default::default());
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let path = dir.path().join(format!("{i}.safetensors"));
                save_transunet_safetensors(&net, &path).unwrap();
                std::fs::read(&path).unwrap()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]));
    }
}
