//! The TransUNet on a run's device, for the stages: train with checkpoints, predict volumes.
//! Nothing here is generic, so the stages need no burn types.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use covflow_kernels::Device;

use crate::seg_train::{SegData, SegEpoch, SegRecipe, SegTrainer};
use crate::transunet::TransUNetConfig;
use crate::{
    CheckpointError, DeviceNotBuilt, WeightsError, load_transunet_safetensors,
    save_transunet_safetensors,
};

/// Why a segmenter run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// The device is not in this build.
    #[error(transparent)]
    Device(#[from] DeviceNotBuilt),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Weights could not be written or read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The caller asked to stop; the last checkpoint is on disk.
    #[error("cancelled after epoch {0}; the checkpoint resumes it")]
    Cancelled(usize),
    /// A volume's slices are not the network's input size.
    #[error(
        "slices are {got}×{got} pixels but the network takes {want}×{want}\n  help: train and predict on crops of one grid"
    )]
    SliceSize {
        /// The slices' size.
        got: usize,
        /// The network's `img_dim`.
        want: usize,
    },
}

/// Where a finished training writes its weights (safetensors, the reference's names).
#[derive(Clone, Debug)]
pub struct SegWeights {
    /// The weights after the last epoch.
    pub last: PathBuf,
    /// The weights of the epoch with the lowest validation loss.
    pub best: PathBuf,
}

/// What a finished training reports.
#[derive(Clone, Debug)]
pub struct SegOutcome {
    /// Epochs a checkpoint restored (0: a fresh start).
    pub resumed_from: usize,
    /// Every epoch, the resumed ones included.
    pub history: Vec<SegEpoch>,
    /// The epoch whose weights are `best` (1-based).
    pub best_epoch: usize,
}

/// Trains `recipe` on `data` to its last epoch, resuming from the checkpoint in `checkpoint`
/// when there is one and writing one every `every` epochs (and when `on_epoch` returns
/// `false`, which stops the training).
pub fn train_segmenter(
    device: Device,
    recipe: &SegRecipe,
    data: &SegData,
    checkpoint: &Path,
    every: usize,
    weights: &SegWeights,
    on_epoch: &mut dyn FnMut(&SegEpoch, usize) -> bool,
) -> Result<SegOutcome, SegError> {
    let want = recipe.config.img_dim;
    if data.size != want {
        return Err(SegError::SliceSize {
            got: data.size,
            want,
        });
    }
    let outcome = on_autodiff_backend!(device, B => {
        let mut t = SegTrainer::<B>::new(recipe.clone(), Default::default());
        t.resume(checkpoint)?;
        let resumed_from = t.epoch();
        while t.epoch() < t.epochs() {
            let e = t.train_epoch(data);
            let stop = !on_epoch(&e, resumed_from);
            if stop || t.epoch().is_multiple_of(every.max(1)) || t.epoch() == t.epochs() {
                t.save_checkpoint(checkpoint)?;
            }
            if stop {
                return Err(SegError::Cancelled(t.epoch()));
            }
        }
        save_transunet_safetensors(&t.learner.net.valid(), &weights.last)?;
        save_transunet_safetensors(t.best_net(), &weights.best)?;
        SegOutcome { resumed_from, history: t.history().to_vec(), best_epoch: t.best_epoch() }
    })?;
    Ok(outcome)
}

/// The TransUNet's output (logits) over `volumes` (`[D, H, W]` each, slices `H × W` in [0, 1]),
/// by the network of `config` saved at `weights`, `batch` slices at a time so memory stays
/// bounded. Its sigmoid is the lesion probability.
pub fn predict_volumes(
    device: Device,
    config: &TransUNetConfig,
    weights: &Path,
    volumes: &[&[f32]],
    shape: [usize; 3],
    batch: usize,
) -> Result<Vec<Vec<f32>>, SegError> {
    let [_, h, w] = shape;
    if h != config.img_dim || w != config.img_dim {
        return Err(SegError::SliceSize {
            got: h.max(w),
            want: config.img_dim,
        });
    }
    let logits = on_autodiff_backend!(device, B => {
        use burn::tensor::backend::AutodiffBackend;
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        let mut net = config.init::<I>(&dev);
        load_transunet_safetensors(&mut net, weights)?;
        let mut out = Vec::with_capacity(volumes.len());
        for v in volumes {
            let mut p = Vec::with_capacity(v.len());
            for chunk in v.chunks(batch.max(1) * h * w) {
                let n = chunk.len() / (h * w);
                let x = Tensor::<I, 4>::from_data(TensorData::new(chunk.to_vec(), [n, 1, h, w]), &dev);
                let y: Vec<f32> = net.forward(x).logits
                    .into_data()
                    .to_vec()
                    .expect("f32 output");
                p.extend(y);
            }
            out.push(p);
        }
        out
    })?;
    Ok(logits)
}
