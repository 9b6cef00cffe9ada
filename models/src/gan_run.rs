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

/// Where a training keeps its files.
#[derive(Clone, Copy, Debug)]
pub struct GanFiles<'a> {
    /// The checkpoint folder: resumed from when it holds one, rewritten every
    /// `checkpoint_every` iterations.
    pub checkpoint: &'a Path,
    /// Iterations between checkpoints.
    pub checkpoint_every: usize,
    /// Where the trained generator's weights go.
    pub weights: &'a Path,
    /// A folder for the generator's weights every so many iterations, before the first and
    /// after the last ([`snapshot_iterations`]), as `iteration-NNNNNN.bin`: the learning
    /// curve's points. Files written before a kill are the ones the resumed run would write
    /// again.
    pub snapshots: Option<(&'a Path, usize)>,
}

/// The iterations a training of `iterations` snapshots when it does so every `every`: 0, the
/// multiples of `every`, and the last, so that a curve always ends at the trained generator.
pub fn snapshot_iterations(iterations: usize, every: usize) -> Vec<usize> {
    let every = every.max(1);
    (0..=iterations)
        .filter(|i| i.is_multiple_of(every) || *i == iterations)
        .collect()
}

/// The file name (without burn's `.bin`) of the snapshot after `iteration` iterations.
pub fn snapshot_name(iteration: usize) -> String {
    format!("iteration-{iteration:06}")
}

/// Trains `recipe` on `data` to its last iteration, resuming from the checkpoint in `files`
/// when there is one, writing checkpoints and snapshots as `files` says (and a checkpoint when
/// `on_step` returns `false`, which stops the training), and the generator's weights at the
/// end.
pub fn train_gan(
    device: Device,
    recipe: &GanRecipe,
    data: &GanData,
    files: GanFiles<'_>,
    on_step: &mut dyn FnMut(&GanLosses) -> bool,
) -> Result<GanOutcome, GanError> {
    let outcome = on_autodiff_backend!(device, B => {
        let mut t = GanTrainer::<B>::new(recipe.clone(), Default::default());
        t.resume(files.checkpoint)?;
        let resumed_from = t.iteration;
        let snapshot = |t: &GanTrainer<B>| -> Result<(), CheckpointError> {
            match files.snapshots {
                Some((dir, every))
                    if t.iteration.is_multiple_of(every.max(1))
                        || t.iteration == recipe.iterations =>
                {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| CheckpointError::io(dir, e))?;
                    save_generator(&t.inference_generator(), &dir.join(snapshot_name(t.iteration)))
                }
                _ => Ok(()),
            }
        };
        if resumed_from == 0 {
            snapshot(&t)?;
        }
        while t.iteration < recipe.iterations {
            let losses = t.step(data);
            let stop = !on_step(&losses);
            let every = files.checkpoint_every.max(1);
            if stop || t.iteration.is_multiple_of(every) || t.iteration == recipe.iterations {
                t.save_checkpoint(files.checkpoint)?;
            }
            // Before a stop, so that a resumed run never skips a snapshot.
            snapshot(&t)?;
            if stop {
                return Err(GanError::Cancelled(t.iteration));
            }
        }
        save_generator(&t.inference_generator(), files.weights)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_come_before_the_first_iteration_every_k_and_after_the_last() {
        assert_eq!(snapshot_iterations(250, 100), [0, 100, 200, 250]);
        assert_eq!(snapshot_iterations(200, 100), [0, 100, 200]);
        assert_eq!(snapshot_iterations(2, 50), [0, 2]);
        assert_eq!(snapshot_iterations(3, 0), [0, 1, 2, 3]);
    }
}
