//! The `resample` stage kind: a study to a fixed grid, the CT fused with the HU window
//! ([`covflow_imaging::resample`]).
//!
//! ```yaml
//! grid:
//!   uses: resample
//!   foreach: scans                         # a stage writing ct.nii.gz (+ masks), or a dataset
//!   with: {shape: [128, 128, 32], window: [-1000, 400]}
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::resample::{DEFAULT_WINDOW, ResampleOptions, resample_study};
use covflow_imaging::{Grid, Orientation, StudyFiles};

use crate::{check_shape, kernels_for};

/// The `resample` stage kind.
pub struct ResampleStage;

/// The `with:` of a `resample` stage.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResampleParams {
    /// Output voxels [x, y, z] (voxel centres aligned). Give this or `spacing`.
    pub shape: Option<[usize; 3]>,
    /// Output spacing [x, y, z] in mm, null keeping an axis; the field of view is kept, so the
    /// spacing written is the one that divides it. Give this or `shape`.
    pub spacing: Option<[Option<f64>; 3]>,
    /// [low, high] in HU, mapped to [0, 1] in the same pass; null keeps HU.
    pub window: Option<[f32; 2]>,
    /// Low-pass the CT along each axis it shrinks by a factor f (Gaussian, σ = (f − 1)/2 voxels,
    /// skimage's choice). Masks are never low-passed; they are thresholded at 0.5.
    pub anti_aliasing: bool,
    /// Bring the voxel axes to this orientation first (exact permutations and flips, before any
    /// interpolation), so that every scanner's export reaches the model the same way round:
    /// `LAS` is MosMedData's. `shape` and `spacing` are in these axes. null keeps the file's
    /// voxel order.
    pub orientation: Option<Orientation>,
}

impl Default for ResampleParams {
    fn default() -> Self {
        Self {
            shape: None,
            spacing: None,
            window: Some([DEFAULT_WINDOW.0, DEFAULT_WINDOW.1]),
            anti_aliasing: true,
            orientation: Some(Orientation::LAS),
        }
    }
}

impl ResampleParams {
    fn grid(&self) -> Result<Grid, ParamError> {
        match (self.shape, self.spacing) {
            (Some(shape), None) => Ok(Grid::Shape(shape)),
            (None, Some(spacing)) => Ok(Grid::Spacing(spacing)),
            (Some(_), Some(_)) => Err(ParamError::field(
                "spacing",
                "give `shape` or `spacing`, not both",
            )),
            (None, None) => Err(ParamError::decl(
                "with",
                "resample needs `shape: [x, y, z]` (output voxels) or `spacing: [x, y, z]` (mm; null keeps an axis)",
            )),
        }
    }
}

/// Where a task's study comes from: its one upstream artifact, or the files of a `mosmed` or
/// `nifti` dataset item (`path`, and `lung`/`mask` when the source has them).
fn study_of(ctx: &TaskContext) -> Result<StudyFiles, StageError> {
    if let Some(input) = ctx.inputs.first() {
        return Ok(StudyFiles::in_dir(&input.dir));
    }
    let item = ctx
        .item
        .ok_or("resample has neither an upstream stage nor an item")?;
    let attr = |k: &str| item.attrs.get(k).map(|p| ctx.pipeline_dir.join(p));
    Ok(StudyFiles {
        ct: attr("path").ok_or_else(|| {
            format!(
                "item `{}` has no `path`\n  help: `foreach:` a `mosmed` or `nifti` dataset, or a stage that writes ct.nii.gz",
                item.id
            )
        })?,
        lung: attr("lung"),
        lesion: attr("mask"),
    })
}

impl Stage for ResampleStage {
    type Params = ResampleParams;

    fn kind(&self) -> &'static str {
        "resample"
    }

    fn version(&self) -> u32 {
        // 2: anti-aliasing prefilter; 3: writes ct.json (the CT's units); 4: keyed on the typed
        // parameters (defaults filled in); 5: reorients to `orientation` (LAS) first.
        5
    }

    fn about(&self) -> &'static str {
        "Resamples a study (ct.nii.gz, and lung.nii.gz / lesion.nii.gz when present, which must \
         be on the CT's grid) trilinearly to a fixed grid, maps the CT through the HU window, \
         and writes the same names with the new spacing and affine, plus ct.json (the CT's \
         units). Reads one upstream stage, or `foreach:` a `mosmed`/`nifti` dataset directly. \
         The device is part of its cache key."
    }

    fn check(&self, p: &ResampleParams, decl: &StageDecl) -> Result<(), ParamError> {
        if let Grid::Shape(shape) = p.grid()? {
            check_shape("shape", shape)?;
        }
        if let Some(spacing) = p.spacing
            && spacing
                .iter()
                .flatten()
                .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(ParamError::field(
                "spacing",
                "each axis must be a positive number of mm, or null to keep it",
            ));
        }
        if let Some([lo, hi]) = p.window
            && !(lo.is_finite()
                && hi.is_finite()
                && lo.partial_cmp(&hi) == Some(std::cmp::Ordering::Less))
        {
            return Err(ParamError::field(
                "window",
                format!("[low, high] needs low < high (got [{lo}, {hi}])"),
            ));
        }
        if decl.needs.len() > 1 || (decl.needs.is_empty() && decl.foreach.is_none()) {
            return Err(ParamError::decl(
                "needs",
                "resample reads one upstream stage (its `foreach` or `needs`), or the studies of a `mosmed`/`nifti` dataset (`foreach: DATASET`)",
            ));
        }
        Ok(())
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &ResampleParams, ctx: &TaskContext) -> Result<(), StageError> {
        let grid = p.grid().map_err(|e| e.message)?;
        let study = study_of(ctx)?;
        let options = ResampleOptions {
            grid,
            window: p.window.map(|[lo, hi]| (lo, hi)),
            anti_alias: p.anti_aliasing,
            orientation: p.orientation,
        };
        let done = resample_study(&kernels_for(ctx.device)?, &study, &options, ctx.out_dir)?;
        ctx.log.line(format!(
            "{}: {:?} → {:?} on {}",
            study.ct.display(),
            done.input_shape,
            done.shape,
            ctx.device
        ));
        Ok(())
    }
}
