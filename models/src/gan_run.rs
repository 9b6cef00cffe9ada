//! The GAN on a run's device, for the stages: train with checkpoints, heal volumes. Nothing
//! here is generic, so the stages need no burn types.

use std::path::Path;

use covflow_kernels::Device;

use crate::{
    CheckpointError, ConvImpl, DeviceNotBuilt, GanData, GanLosses, GanRecipe, GanTrainer, heal,
    load_generator, save_generator,
};

/// Why a GAN run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum GanError {
    /// The device is not in this build.
    #[error(transparent)]
    Device(#[from] DeviceNotBuilt),
    /// A checkpoint or the weights could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The caller asked to stop; the last checkpoint is on disk.
    #[error("cancelled at iteration {0}; the checkpoint resumes it")]
    Cancelled(usize),
}

/// What a finished training reports.
#[derive(Clone, Debug)]
pub struct GanOutcome {
    /// The iteration a checkpoint resumed from (0: a fresh start).
    pub resumed_from: usize,
    /// Losses of every iteration, the resumed ones included.
    pub history: Vec<GanLosses>,
}

/// How convolutions compute on `device`: matmuls on the CPU, burn's kernels on GPUs.
pub fn conv_for(device: Device) -> ConvImpl {
    match device {
        Device::Cpu => ConvImpl::Im2col,
        Device::Wgpu | Device::Cuda => ConvImpl::Native,
    }
}

/// Trains `recipe` on `data` to its last iteration, resuming from the checkpoint in
/// `checkpoint` when there is one and writing one every `every` iterations (and when
/// `on_step` returns `false`, which stops the training). Writes the generator's weights to
/// `weights`.
pub fn train_gan(
    device: Device,
    recipe: &GanRecipe,
    data: &GanData,
    checkpoint: &Path,
    every: usize,
    weights: &Path,
    on_step: &mut dyn FnMut(&GanLosses) -> bool,
) -> Result<GanOutcome, GanError> {
    let outcome = on_autodiff_backend!(device, B => {
        let mut t = GanTrainer::<B>::new(recipe.clone(), Default::default());
        t.resume(checkpoint)?;
        let resumed_from = t.iteration;
        while t.iteration < recipe.iterations {
            let losses = t.step(data);
            let stop = !on_step(&losses);
            if stop || t.iteration.is_multiple_of(every.max(1)) || t.iteration == recipe.iterations {
                t.save_checkpoint(checkpoint)?;
            }
            if stop {
                return Err(GanError::Cancelled(t.iteration));
            }
        }
        save_generator(&t.inference_generator(), weights)?;
        GanOutcome { resumed_from, history: t.history }
    })?;
    Ok(outcome)
}

/// The healthy twins of `volumes` (`[D, H, W]` each) by the generator saved at `weights`,
/// `batch` volumes at a time so memory stays bounded.
pub fn heal_volumes(
    device: Device,
    recipe: &GanRecipe,
    weights: &Path,
    volumes: &[&[f32]],
    shape: [usize; 3],
    batch: usize,
) -> Result<Vec<Vec<f32>>, GanError> {
    let twins = on_autodiff_backend!(device, B => {
        use burn::tensor::backend::AutodiffBackend;
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        let g = load_generator::<I>(recipe, weights, &dev)?;
        let mut out = Vec::with_capacity(volumes.len());
        for chunk in volumes.chunks(batch.max(1)) {
            out.extend(heal(&g, chunk, shape, &dev));
        }
        out
    })?;
    Ok(twins)
}
