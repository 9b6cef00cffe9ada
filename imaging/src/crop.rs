//! The lung's bounding box, and a study cropped to it and resized to the model's grid.
//!
//! The box spans every voxel of the lung mask: the slices from the first to the **last**
//! non-empty one (the seed's exclusive stop index dropped the last), and the union of their
//! in-plane extents, widened by `margin` voxels within the volume. The CT, the lung mask and the
//! lesion mask get the same box and are resized with [`crate::resample`]'s method — the CT
//! anti-aliased where an axis shrinks, masks resampled and thresholded at 0.5.

use std::path::Path;

use covflow_kernels::Kernels;

use crate::error::{Error, Result};
use crate::resample::{resample_mask, resample_volume};
use crate::study::{CROP, CT, CtUnits, LESION, LUNG, StudyFiles};
use crate::volume::Volume;

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
/// use covflow_imaging::crop::lung_box;
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

/// What [`crop_study`] did, written as `crop.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Cropped {
    /// The box, in input voxels, both ends inclusive.
    #[serde(rename = "box")]
    pub lung_box: LungBox,
    /// The input's voxels.
    pub input_shape: [usize; 3],
    /// The output's voxels.
    pub shape: [usize; 3],
}

/// Crops the study in `input` (CT, lung mask, lesion mask when present) to the lung's box widened
/// by `margin`, resizes each to `shape` and writes them into `out_dir` with `ct.json` and
/// `crop.json`. The CT keeps its units: no window is applied again.
pub fn crop_study(
    kernels: &Kernels,
    input: &Path,
    shape: [usize; 3],
    margin: usize,
    out_dir: &Path,
) -> Result<Cropped> {
    let study = StudyFiles::in_dir(input);
    let lung_path = study.require_lung("crop")?;
    let lung = Volume::read(lung_path)?;
    let lung_box = lung_box(&lung.data, margin).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: the lung mask is empty, so there is nothing to crop\n  help: look at the lung_mask stage's log and lung_mask.json (its `threshold`)",
            lung_path.display()
        ))
    })?;
    let ct = Volume::read(&study.ct)?;
    if ct.data.dim() != lung.data.dim() {
        return Err(Error::Invalid(format!(
            "{}: shape {:?} differs from the CT's {:?}",
            lung_path.display(),
            lung.data.dim(),
            ct.data.dim()
        )));
    }
    let (lo, hi) = (lung_box.lo, lung_box.hi);
    resample_volume(kernels, &ct.crop(lo, hi), shape, None, true).write_f32(&out_dir.join(CT))?;
    resample_mask(kernels, &lung.crop(lo, hi), shape).write_u8(&out_dir.join(LUNG))?;
    if let Some(lesion) = &study.lesion {
        resample_mask(kernels, &Volume::read(lesion)?.crop(lo, hi), shape)
            .write_u8(&out_dir.join(LESION))?;
    }
    CtUnits::read(input)?.write(out_dir)?;
    let (x, y, z) = ct.data.dim();
    let cropped = Cropped {
        lung_box,
        input_shape: [x, y, z],
        shape,
    };
    let path = out_dir.join(CROP);
    let text = serde_json::to_string_pretty(&cropped).expect("plain struct");
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok(cropped)
}
