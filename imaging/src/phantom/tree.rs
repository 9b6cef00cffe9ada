//! A phantom set written in MosMedData's directory layout, so that the `mosmed` dataset source
//! (and any user's own MosMed tooling) reads it like the real data.

use std::path::Path;

use ndarray::Array3;

use super::{PhantomParams, PhantomSize};
use crate::error::{Error, Result};

/// The study id of phantom `index` (MosMed numbering starts at 1).
///
/// ```
/// assert_eq!(covflow_imaging::phantom::study_id(0), "study_0001");
/// ```
pub fn study_id(index: u32) -> String {
    format!("study_{:04}", index + 1)
}

/// One study written by [`write_mosmed_tree`].
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenStudy {
    /// `study_NNNN`.
    pub id: String,
    /// CT-0…CT-4.
    pub category: u8,
    /// Lesion fraction of the lung volume.
    pub involvement: f64,
}

/// Writes `count` phantoms as a MosMed tree under `out`: `studies/CT-k/study_NNNN.nii.gz`,
/// `masks/study_NNNN_mask.nii.gz` (lesions) and `lungs/study_NNNN_lung.nii.gz`.
pub fn write_mosmed_tree(
    out: &Path,
    count: u32,
    seed: u64,
    size: PhantomSize,
) -> Result<Vec<WrittenStudy>> {
    let mut written = Vec::new();
    for index in 0..count {
        let p = PhantomParams { seed, index, size }.generate();
        let id = study_id(index);
        let studies = out.join("studies").join(format!("CT-{}", p.category));
        let masks = out.join("masks");
        let lungs = out.join("lungs");
        for d in [&studies, &masks, &lungs] {
            std::fs::create_dir_all(d).map_err(Error::io(d))?;
        }
        p.ct.write_i16(&studies.join(format!("{id}.nii.gz")))?;
        let as_volume = |m: &Array3<u8>| p.ct.with_data(m.mapv(f32::from));
        as_volume(&p.lesion).write_u8(&masks.join(format!("{id}_mask.nii.gz")))?;
        as_volume(&p.lung).write_u8(&lungs.join(format!("{id}_lung.nii.gz")))?;
        written.push(WrittenStudy {
            id,
            category: p.category,
            involvement: p.involvement,
        });
    }
    Ok(written)
}
