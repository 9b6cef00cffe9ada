//! The `crop` stage kind: the lung's bounding box, resized to the model's grid.
//!
//! ```yaml
//! crops:
//!   uses: crop
//!   foreach: lungs                      # a lung_mask stage: ct.nii.gz + lung.nii.gz (+ lesion)
//!   with: {shape: [128, 128, 32], margin: 0}
//! ```
//! The box spans every voxel of `lung.nii.gz`: the slices from the first to the **last**
//! non-empty one (the seed's exclusive stop index dropped the last), and the union of their
//! in-plane extents, widened by `margin` voxels within the volume. The CT, the lung mask and the
//! lesion mask get the same box and are resized to `shape` (x, y, z) with the resample stage's
//! method — the CT anti-aliased where an axis shrinks, masks resampled and thresholded at 0.5.
//! Writes the three volumes, `ct.json`, and `crop.json` (the box, in input voxels, inclusive).

use covflow_engine::{Stage, StageDecl, StageError, TaskContext};

use crate::resample::{CtUnits, resample_mask, resample_volume, shape_param};
use crate::volume::Volume;

/// The `crop` stage kind.
pub struct CropStage;

/// A box of voxels, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LungBox {
    /// First voxel on each axis.
    pub lo: [usize; 3],
    /// Last voxel on each axis.
    pub hi: [usize; 3],
}

/// The bounding box of the non-zero voxels of `mask`, widened by `margin` within its shape;
/// `None` when the mask is empty.
///
/// ```
/// use covflow_stages::crop::lung_box;
/// let mut m = ndarray::Array3::<f32>::zeros((5, 5, 4));
/// m[[1, 2, 0]] = 1.0;
/// m[[3, 2, 3]] = 1.0; // the last slice counts
/// let b = lung_box(&m, 0).unwrap();
/// assert_eq!((b.lo, b.hi), ([1, 2, 0], [3, 2, 3]));
/// assert_eq!(lung_box(&m, 1).unwrap().hi, [4, 3, 3]);
/// ```
pub fn lung_box(mask: &ndarray::Array3<f32>, margin: usize) -> Option<LungBox> {
    let dims = mask.dim();
    let dims = [dims.0, dims.1, dims.2];
    let mut lo = dims;
    let mut hi = [0usize; 3];
    let mut any = false;
    for ((i, j, k), &v) in mask.indexed_iter() {
        if v >= 0.5 {
            any = true;
            for (a, p) in [i, j, k].into_iter().enumerate() {
                lo[a] = lo[a].min(p);
                hi[a] = hi[a].max(p);
            }
        }
    }
    any.then(|| LungBox {
        lo: lo.map(|l| l.saturating_sub(margin)),
        hi: [0, 1, 2].map(|a| (hi[a] + margin).min(dims[a] - 1)),
    })
}

fn margin_param(with: &serde_json::Map<String, serde_json::Value>) -> Result<usize, String> {
    match with.get("margin") {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .map(|m| m as usize)
            .ok_or_else(|| "`margin` must be a whole number of voxels (≥ 0)".into()),
    }
}

impl Stage for CropStage {
    fn kind(&self) -> &'static str {
        "crop"
    }

    fn version(&self) -> u32 {
        1
    }

    fn help(&self) -> String {
        "crop takes `shape: [x, y, z]` (output voxels) and optional `margin` (voxels, default 0)"
            .into()
    }

    fn check(&self, decl: &StageDecl) -> Result<(), String> {
        for k in decl.with.keys() {
            if !["shape", "margin"].contains(&k.as_str()) {
                return Err(format!("unknown parameter `{k}` for crop (shape, margin)"));
            }
        }
        shape_param(&decl.with)?;
        margin_param(&decl.with)?;
        if decl.needs.len() != 1 {
            return Err("crop reads exactly one upstream stage (its `foreach` or `needs`)".into());
        }
        Ok(())
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, ctx: &TaskContext) -> Result<(), StageError> {
        let shape = shape_param(ctx.params)?;
        let margin = margin_param(ctx.params)?;
        let input = ctx.inputs.first().ok_or("crop has no input")?;
        let kernels = crate::kernels_for(ctx.device)?;
        let lung_path = input.dir.join("lung.nii.gz");
        if !lung_path.is_file() {
            return Err(format!(
                "{} is missing: crop needs a lung mask\n  help: put a `lung_mask` stage before crop",
                lung_path.display()
            )
            .into());
        }
        let lung = Volume::read(&lung_path)?;
        let bbox = lung_box(&lung.data, margin).ok_or_else(|| {
            format!(
                "{}: the lung mask is empty, so there is nothing to crop\n  help: look at the lung_mask stage's log and lung_mask.json (its `threshold`)",
                lung_path.display()
            )
        })?;
        let ct = Volume::read(&input.dir.join("ct.nii.gz"))?;
        if ct.data.dim() != lung.data.dim() {
            return Err(format!(
                "{}: shape {:?} differs from the CT's {:?}",
                lung_path.display(),
                lung.data.dim(),
                ct.data.dim()
            )
            .into());
        }
        // The CT is already in its final units: no window here.
        resample_volume(&kernels, &ct.crop(bbox.lo, bbox.hi), shape, None, true)?
            .write_f32(&ctx.out_dir.join("ct.nii.gz"))?;
        let mask = |v: &Volume, name: &str| -> Result<(), StageError> {
            resample_mask(&kernels, &v.crop(bbox.lo, bbox.hi), shape)?
                .write_u8(&ctx.out_dir.join(name))?;
            Ok(())
        };
        mask(&lung, "lung.nii.gz")?;
        let lesion = input.dir.join("lesion.nii.gz");
        if lesion.is_file() {
            mask(&Volume::read(&lesion)?, "lesion.nii.gz")?;
        }
        CtUnits::read(&input.dir)?.write(ctx.out_dir)?;
        std::fs::write(
            ctx.out_dir.join("crop.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "box": bbox,
                "input_shape": ct.data.dim(),
                "shape": shape,
            }))?,
        )?;
        ctx.log.line(format!(
            "{}: box {:?}..={:?} of {:?} → {:?}",
            input.dir.display(),
            bbox.lo,
            bbox.hi,
            ct.data.dim(),
            shape
        ));
        Ok(())
    }
}
