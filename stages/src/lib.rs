//! covflow's stage kinds, one module each, and the models they train.

pub mod bench;
pub mod crop;
pub mod datasets;
pub mod lung_mask;
pub mod models;
pub mod phantom;
pub mod phantom_stage;
pub mod resample;
pub mod volume;

use covflow_engine::Registry;
use covflow_kernels::Device;

/// Registers this crate's stage kinds and dataset sources.
pub fn register(registry: &mut Registry) {
    registry.add_dataset(phantom_stage::PhantomSource);
    registry.add_dataset(datasets::MosmedSource);
    registry.add_dataset(datasets::NiftiSource);
    registry.add_stage(phantom_stage::PhantomStage);
    registry.add_stage(resample::ResampleStage);
    registry.add_stage(lung_mask::LungMaskStage);
    registry.add_stage(crop::CropStage);
}

/// The kernels of a task's device (`ctx.device`).
pub fn kernels_for(device: &str) -> Result<covflow_kernels::Kernels, covflow_engine::StageError> {
    let d: Device = device.parse()?;
    Ok(covflow_kernels::Kernels::on(d)?)
}

/// Errors of the stage kinds.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The binary lacks the runtime for a device.
    #[error(
        "this covflow was built without {0} support\n  help: rebuild with `cargo build --release --features {0}` or pass --device cpu"
    )]
    DeviceNotBuilt(Device),
    /// Anything else, explained.
    #[error("{0}")]
    Other(String),
}
