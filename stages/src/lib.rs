//! covflow's stage kinds, one module each: typed parameters in, [`covflow_imaging`] (and soon
//! [`covflow_models`]) calls, artifacts out. The method lives in those crates; this crate is glue.
//!
//! A new stage kind is one module here and one line in [`register`] (see the README's "Adding a
//! stage kind").

pub mod crop;
pub mod datasets;
pub mod evaluate;
pub mod gan_curve;
pub mod gan_train;
pub mod lung_mask;
pub mod masks;
pub mod naive_mask;
pub mod phantom;
pub mod plot;
pub mod predict;
pub mod pseudo_mask;
pub mod resample;
pub mod transunet_train;

use covflow_engine::{Device, ParamError, Registry, StageDecl};
use covflow_kernels::Kernels;

/// Registers this crate's stage kinds and dataset sources.
pub fn register(registry: &mut Registry) {
    registry.add_dataset(phantom::PhantomSource);
    registry.add_dataset(datasets::MosmedSource);
    registry.add_dataset(datasets::NiftiSource);
    registry.add_stage(phantom::PhantomStage);
    registry.add_stage(resample::ResampleStage);
    registry.add_stage(lung_mask::LungMaskStage);
    registry.add_stage(crop::CropStage);
    registry.add_stage(gan_train::GanTrainStage);
    registry.add_stage(pseudo_mask::PseudoMaskStage);
    registry.add_stage(gan_curve::GanCurveStage);
    registry.add_stage(naive_mask::NaiveMaskStage);
    registry.add_stage(transunet_train::TransUNetTrainStage);
    registry.add_stage(predict::PredictStage);
    registry.add_stage(evaluate::EvaluateStage);
    registry.add_stage(plot::PlotStage);
}

/// The kernels' name for a run's device.
pub fn kernel_device(device: Device) -> covflow_kernels::Device {
    match device {
        Device::Cpu => covflow_kernels::Device::Cpu,
        Device::Wgpu => covflow_kernels::Device::Wgpu,
        Device::Cuda => covflow_kernels::Device::Cuda,
    }
}

/// Whether this binary can run `device`.
pub fn device_built(device: Device) -> bool {
    kernel_device(device).compiled_in()
}

/// The kernels of a task's device.
pub fn kernels_for(device: Device) -> Result<Kernels, covflow_engine::StageError> {
    let d = kernel_device(device);
    if !d.compiled_in() {
        return Err(format!(
            "this covflow was built without {d} support\n  help: rebuild with `cargo build --release --features {d}` or pass --device cpu"
        )
        .into());
    }
    Ok(Kernels::on(d)?)
}

/// The largest volume a stage makes: 2^28 voxels (1 GiB of f32), beyond which a typo (an extra
/// zero) would exhaust memory instead of failing.
pub const MAX_VOXELS: usize = covflow_imaging::resample::MAX_OUTPUT_VOXELS;

/// Checks a `[x, y, z]` voxel count parameter: every axis at least 1, at most [`MAX_VOXELS`] in
/// all.
pub fn check_shape(field: &str, shape: [usize; 3]) -> Result<(), ParamError> {
    if shape.contains(&0) {
        return Err(ParamError::field(
            field,
            format!("every axis needs at least one voxel (got {shape:?})"),
        ));
    }
    let voxels = shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .unwrap_or(usize::MAX);
    if voxels > MAX_VOXELS {
        return Err(ParamError::field(
            field,
            format!("{shape:?} is {voxels} voxels, more than the {MAX_VOXELS} a stage makes"),
        ));
    }
    Ok(())
}

/// Checks that a parameter lies in `range` (NaN never does); `unit` follows the numbers.
///
/// ```
/// use covflow_stages::check_range;
/// assert!(check_range("closing_mm", 5.0, 0.0..=50.0, " mm").is_ok());
/// let e = check_range("closing_mm", 1000.0, 0.0..=50.0, " mm").unwrap_err();
/// assert_eq!(e.message, "parameter `closing_mm`: must be between 0 and 50 mm (got 1000 mm)");
/// assert!(check_range("ratio", f64::NAN, 0.0..=1.0, "").is_err());
/// ```
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<(), ParamError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ParamError::field(
        field,
        format!(
            "must be between {} and {}{unit} (got {value}{unit})",
            range.start(),
            range.end()
        ),
    ))
}

/// Checks that a stage kind that reads one upstream artifact has exactly one.
pub fn one_input(kind: &str, decl: &StageDecl) -> Result<(), ParamError> {
    if decl.needs.len() == 1 {
        return Ok(());
    }
    Err(ParamError::decl(
        "needs",
        format!("{kind} reads exactly one upstream stage (its `foreach` or `needs`)"),
    ))
}

/// Checks that a stage kind that reads two upstream artifacts has exactly two; `which` names
/// them (`"[GAN, CROPS] (a gan_train stage, then the crops)"`).
pub fn two_inputs(kind: &str, which: &str, decl: &StageDecl) -> Result<(), ParamError> {
    if decl.needs.len() == 2 {
        return Ok(());
    }
    Err(ParamError::decl(
        "needs",
        format!("{kind} reads two upstream stages: {which}"),
    ))
}

/// The README's Rust examples ("Adding a stage kind") compile against this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
