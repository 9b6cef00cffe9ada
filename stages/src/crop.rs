//! The `crop` stage kind: the lung's bounding box, resized to the model's grid
//! ([`covflow_imaging::crop`]).
//!
//! ```yaml
//! crops:
//!   uses: crop
//!   foreach: lungs                      # a lung_mask stage: ct.nii.gz + lung.nii.gz (+ lesion)
//!   with: {shape: [128, 128, 32], margin: 0}
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::crop::crop_study;

use crate::{check_range, check_shape, kernels_for, one_input};

/// The `crop` stage kind.
pub struct CropStage;

/// The `with:` of a `crop` stage.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CropParams {
    /// Output voxels [x, y, z] of the cropped box.
    pub shape: [usize; 3],
    /// Voxels added around the lung's box on each side, within the volume.
    #[serde(default)]
    pub margin: usize,
}

impl Stage for CropStage {
    type Params = CropParams;

    fn kind(&self) -> &'static str {
        "crop"
    }

    fn version(&self) -> u32 {
        // 2: keyed on the typed parameters (defaults filled in).
        2
    }

    fn about(&self) -> &'static str {
        "Crops a study to the box around every lung voxel (last slice included), widened by \
         `margin`, and resizes the CT, lung and lesion masks to `shape` like resample does \
         (masks thresholded at 0.5). Writes the three volumes, ct.json and crop.json (the box). \
         Reads one upstream lung_mask-like stage."
    }

    fn check(&self, p: &CropParams, decl: &StageDecl) -> Result<(), ParamError> {
        check_shape("shape", p.shape)?;
        check_range("margin", p.margin, 0..=4096, " voxels")?;
        one_input(self.kind(), decl)
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &CropParams, ctx: &TaskContext) -> Result<(), StageError> {
        let input = ctx.inputs.first().ok_or("crop has no input")?;
        let kernels = kernels_for(ctx.device)?;
        let c = crop_study(&kernels, &input.dir, p.shape, p.margin, ctx.out_dir)?;
        ctx.log.line(format!(
            "{}: box {:?}..={:?} of {:?} → {:?}",
            input.dir.display(),
            c.lung_box.lo,
            c.lung_box.hi,
            c.input_shape,
            c.shape
        ));
        Ok(())
    }
}
