//! The `lung_mask` stage kind: the classical 3-D lung segmentation of
//! [`covflow_imaging::lung`], which stands in for the seed's pretrained U-Net.
//!
//! ```yaml
//! lungs:
//!   uses: lung_mask
//!   foreach: grid                       # a stage writing ct.nii.gz (HU, or windowed + ct.json)
//!   with: {threshold: -320, closing_mm: 5}
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::lung::{LungMaskParams, mask_study};

use crate::{check_range, kernels_for, one_input};

/// The `lung_mask` stage kind.
pub struct LungMaskStage;

impl Stage for LungMaskStage {
    type Params = LungMaskParams;

    fn kind(&self) -> &'static str {
        "lung_mask"
    }

    fn version(&self) -> u32 {
        // 2: keyed on the typed parameters (defaults filled in).
        2
    }

    fn about(&self) -> &'static str {
        "Segments the lungs: air below `threshold` HU; air connected to the in-plane faces \
         (outside the body) dropped; 3-D connected components (union-find on the GPU), those \
         with at least `min_lung_ratio` of the largest's voxels kept; per lung, holes filled \
         slice by slice, closed by an ellipsoid of `closing_mm`, filled again. Writes \
         lung.nii.gz, ct.nii.gz with air outside the lung, ct.json, lesion.nii.gz (passed on) \
         and lung_mask.json (components, volume, Dice against the input's own lung.nii.gz when \
         it has one). Reads one upstream stage with ct.nii.gz."
    }

    fn check(&self, p: &LungMaskParams, decl: &StageDecl) -> Result<(), ParamError> {
        if !p.threshold.is_finite() {
            return Err(ParamError::field("threshold", "must be a number of HU"));
        }
        let max_closing = LungMaskParams::MAX_CLOSING_MM;
        check_range("closing_mm", p.closing_mm, 0.0..=max_closing, " mm")?;
        check_range("min_lung_ratio", p.min_lung_ratio, 0.0..=1.0, "")?;
        one_input(self.kind(), decl)
    }

    fn device_dependent(&self) -> bool {
        // The kernels give the references' labels and masks exactly, but a run records where it
        // ran, like every stage that uses them.
        true
    }

    fn run(&self, p: &LungMaskParams, ctx: &TaskContext) -> Result<(), StageError> {
        let input = ctx.inputs.first().ok_or("lung_mask has no input")?;
        let report = mask_study(&kernels_for(ctx.device)?, &input.dir, p, ctx.out_dir)?;
        if report.kept_components.is_empty() {
            ctx.log.line(format!(
                "warning: {}: no air inside the body below {} HU; the lung mask is empty",
                input.dir.display(),
                p.threshold
            ));
        }
        ctx.log.line(format!(
            "{}: {} lung voxels ({:.0} ml) in {} component(s) on {}{}",
            input.dir.display(),
            report.lung_voxels,
            report.lung_volume_ml,
            report.kept_components.len(),
            ctx.device,
            report
                .reference_dice
                .map(|d| format!(", Dice {d:.4} against the input's lung.nii.gz"))
                .unwrap_or_default()
        ));
        Ok(())
    }
}
