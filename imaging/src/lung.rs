//! The classical 3-D lung segmentation that stands in for the seed's pretrained U-Net (whose
//! weights cannot be fetched):
//!
//! 1. Air is every voxel below `threshold` HU (converted to the CT's stored units via `ct.json`),
//!    which includes the −2048/−3024 padding outside the scanner's field of view.
//! 2. 3-D connected components of the air (6-connectivity, the GPU union-find on `wgpu`/`cuda`);
//!    components touching the in-plane faces are outside the body and dropped. The top and
//!    bottom faces do not count: a scan that cuts through the lungs — or has one or two slices —
//!    keeps them.
//! 3. The largest remaining component is kept, and every other one that holds at least
//!    `min_lung_ratio` of the largest's voxels (two lungs, one component spanning both, or a
//!    lung split by dense lesions); smaller air (stomach, bowel, trachea) is dropped.
//! 4. Each kept component on its own: holes filled slice by slice (vessels, airway walls,
//!    consolidation inside the lung), closed by an ellipsoid of `closing_mm` (lesions that dent
//!    the air at the pleura), holes filled again. A larger closing also fills the hilum's notch:
//!    on phantoms 10 mm costs CT-0…CT-2 about 0.015 Dice for +0.06 on CT-4.
//!
//! Writes `lung.nii.gz` (the mask, u8), `ct.nii.gz` with air (−1000 HU) outside the lung,
//! `ct.json`, `lesion.nii.gz` when the input has one, and `lung_mask.json` (the parameters' effect:
//! components, volume, and the Dice against the input's own `lung.nii.gz` when there is one).

use std::path::Path;

use covflow_kernels::{BACKGROUND, Kernels, Morph, ellipsoid_offsets};
use ndarray::Array3;

use crate::error::{Error, Result};
use crate::metrics::dice;
use crate::study::{CT, CtUnits, LESION, LUNG, LUNG_MASK_REPORT, StudyFiles};
use crate::volume::Volume;

/// The method's parameters (the `lung_mask` stage's `with:`).
#[derive(
    Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct LungMaskParams {
    /// Air is below this, in HU (converted to the CT's stored units through `ct.json`).
    pub threshold: f32,
    /// Radius of the closing that smooths each lung, in mm (0 for none; at most 50).
    pub closing_mm: f64,
    /// An air component is a lung when it has at least this share of the largest one's voxels
    /// (0 to 1).
    pub min_lung_ratio: f64,
}

impl Default for LungMaskParams {
    fn default() -> Self {
        Self {
            threshold: -320.0,
            closing_mm: 5.0,
            min_lung_ratio: 0.1,
        }
    }
}

impl LungMaskParams {
    /// The largest closing radius accepted: beyond it the closing costs minutes and fills the
    /// space between the lungs.
    pub const MAX_CLOSING_MM: f64 = 50.0;
}

/// What the segmentation found, written as `lung_mask.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LungMaskReport {
    /// Air components inside the body, before the lungs were chosen.
    pub inner_air_components: usize,
    /// Voxel counts of the kept components, largest first.
    pub kept_components: Vec<usize>,
    /// Voxels in the final mask.
    pub lung_voxels: usize,
    /// Lung volume in millilitres.
    pub lung_volume_ml: f64,
    /// Dice against the input's `lung.nii.gz`, when it has one (phantoms, user masks).
    pub reference_dice: Option<f64>,
}

/// Voxels of slices along the last axis that are not connected (in-plane) to the slice's edge
/// are set: the 2-D hole filling, done for all slices in one labelling.
fn fill_holes_per_slice(kernels: &Kernels, mask: &mut [u8], shape: [usize; 3]) {
    let background: Vec<u8> = mask.iter().map(|&m| (m == 0) as u8).collect();
    let labels = kernels.label_components(&background, shape, [true, true, false]);
    let mut outside = vec![false; mask.len()];
    for_each_in_plane_face(shape, |i| {
        if labels[i] != BACKGROUND {
            outside[labels[i] as usize] = true;
        }
    });
    for (m, &l) in mask.iter_mut().zip(&labels) {
        if l != BACKGROUND && !outside[l as usize] {
            *m = 1;
        }
    }
}

/// Calls `f` with the index of every voxel on the faces of axes 0 and 1.
fn for_each_in_plane_face(shape: [usize; 3], mut f: impl FnMut(usize)) {
    let [d0, d1, d2] = shape;
    let idx = |a: usize, b: usize, c: usize| (a * d1 + b) * d2 + c;
    for c in 0..d2 {
        for a in 0..d0 {
            f(idx(a, 0, c));
            f(idx(a, d1 - 1, c));
        }
        for b in 0..d1 {
            f(idx(0, b, c));
            f(idx(d0 - 1, b, c));
        }
    }
}

/// Segments the lungs of `ct` (stored in `units`) with the method above.
///
/// ```
/// use covflow_kernels::Kernels;
/// use covflow_imaging::lung::{LungMaskParams, segment_lungs};
/// use covflow_imaging::{CtUnits, Volume};
/// // Air around a body of soft tissue that holds two air pockets ("lungs"), 4 slices.
/// let mut hu = ndarray::Array3::from_elem((20, 20, 4), -1000.0f32);
/// hu.slice_mut(ndarray::s![2..18, 2..18, ..]).fill(40.0);
/// hu.slice_mut(ndarray::s![4..9, 4..16, ..]).fill(-850.0);
/// hu.slice_mut(ndarray::s![11..16, 4..16, ..]).fill(-850.0);
/// let ct = Volume::new(hu, [2.0, 2.0, 5.0]);
/// let (mask, report) =
///     segment_lungs(&Kernels::Cpu, &ct, CtUnits::default(), &LungMaskParams::default());
/// assert_eq!(report.kept_components, vec![240, 240]); // two lungs of 5 × 12 × 4 voxels
/// assert_eq!(mask[[6, 10, 0]], 1);
/// assert_eq!(mask[[10, 10, 0]], 0); // the tissue between them
/// assert_eq!(mask[[0, 0, 0]], 0); // the air around the body
/// ```
pub fn segment_lungs(
    kernels: &Kernels,
    ct: &Volume,
    units: CtUnits,
    params: &LungMaskParams,
) -> (Array3<u8>, LungMaskReport) {
    let (d0, d1, d2) = ct.data.dim();
    let shape = [d0, d1, d2];
    let data = ct.data.as_standard_layout();
    let threshold = units.from_hu(params.threshold);
    let air: Vec<u8> = data.iter().map(|&v| (v < threshold) as u8).collect();
    let labels = kernels.label_components(&air, shape, [true; 3]);

    // Component sizes, indexed by root; roots on the in-plane faces are outside the body.
    let mut size = vec![0usize; air.len()];
    for &l in &labels {
        if l != BACKGROUND {
            size[l as usize] += 1;
        }
    }
    for_each_in_plane_face(shape, |i| {
        if labels[i] != BACKGROUND {
            size[labels[i] as usize] = 0;
        }
    });
    let mut inner: Vec<(usize, u32)> = size
        .iter()
        .enumerate()
        .filter(|(_, s)| **s > 0)
        .map(|(root, s)| (*s, root as u32))
        .collect();
    inner.sort_by(|a, b| b.cmp(a));
    let largest = inner.first().map_or(0, |c| c.0) as f64;
    let kept: Vec<(usize, u32)> = inner
        .iter()
        .filter(|c| c.0 as f64 >= params.min_lung_ratio * largest)
        .copied()
        .collect();

    // Each lung is filled and closed on its own: a closing of both together would bridge the
    // mediastinum where the lungs come close.
    let radii = [0, 1, 2].map(|a| params.closing_mm / ct.spacing[a]);
    let ball = ellipsoid_offsets(radii);
    let mut mask = vec![0u8; air.len()];
    // Work in the component's box widened by the element's radius + 1: whatever touches the
    // box's in-plane faces there is outside the lung in the whole volume too, and the closing
    // cannot reach past it, so the result is the same as on the whole volume, for a fraction
    // of the work (each lung fills about a sixth of a MosMed volume's box).
    let pad = [0, 1, 2].map(|a| radii[a].floor() as usize + 1);
    for &(_, root) in &kept {
        let mut lo = shape;
        let mut hi = [0usize; 3];
        for (i, _) in labels.iter().enumerate().filter(|(_, l)| **l == root) {
            let p = [i / (d1 * d2), (i / d2) % d1, i % d2];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        let lo = [0, 1, 2].map(|a| lo[a].saturating_sub(pad[a]));
        let hi = [0, 1, 2].map(|a| (hi[a] + pad[a]).min(shape[a] - 1));
        let sub = [0, 1, 2].map(|a| hi[a] - lo[a] + 1);
        let at = |p: [usize; 3]| ((p[0] + lo[0]) * d1 + p[1] + lo[1]) * d2 + p[2] + lo[2];
        let mut one = vec![0u8; sub.iter().product()];
        for (j, v) in one.iter_mut().enumerate() {
            let p = [j / (sub[1] * sub[2]), (j / sub[2]) % sub[1], j % sub[2]];
            *v = (labels[at(p)] == root) as u8;
        }
        fill_holes_per_slice(kernels, &mut one, sub);
        if ball.len() > 1 {
            let dilated = kernels.morph(&one, sub, &ball, Morph::Dilate);
            one = kernels.morph(&dilated, sub, &ball, Morph::Erode);
            fill_holes_per_slice(kernels, &mut one, sub);
        }
        for (j, v) in one.iter().enumerate() {
            let p = [j / (sub[1] * sub[2]), (j / sub[2]) % sub[1], j % sub[2]];
            mask[at(p)] |= v;
        }
    }

    let lung_voxels = mask.iter().filter(|&&m| m != 0).count();
    let voxel_ml = ct.spacing.iter().product::<f64>() / 1000.0;
    let report = LungMaskReport {
        inner_air_components: inner.len(),
        kept_components: kept.iter().map(|k| k.0).collect(),
        lung_voxels,
        lung_volume_ml: lung_voxels as f64 * voxel_ml,
        reference_dice: None,
    };
    let mask = Array3::from_shape_vec((d0, d1, d2), mask).expect("same shape");
    (mask, report)
}

/// Segments the lungs of the study in `input` and writes into `out_dir`: `lung.nii.gz` (the
/// mask), `ct.nii.gz` with air (−1000 HU) outside the lung, `ct.json`, `lesion.nii.gz` when the
/// input has one, and `lung_mask.json` (the parameters and the report, with the Dice against the
/// input's own `lung.nii.gz` when there is one).
pub fn mask_study(
    kernels: &Kernels,
    input: &Path,
    params: &LungMaskParams,
    out_dir: &Path,
) -> Result<LungMaskReport> {
    let study = StudyFiles::in_dir(input);
    let ct = Volume::read(&study.ct)?;
    let units = CtUnits::read(input)?;
    let (mask, mut report) = segment_lungs(kernels, &ct, units, params);
    if let Some(given) = &study.lung {
        let reference = Volume::read(given)?;
        if reference.data.dim() != mask.dim() {
            return Err(Error::Invalid(format!(
                "{}: shape {:?} differs from the CT's {:?}",
                given.display(),
                reference.data.dim(),
                mask.dim()
            )));
        }
        report.reference_dice = Some(dice(
            mask.iter().map(|&m| m != 0),
            reference.data.iter().map(|&v| v >= 0.5),
        ));
    }
    let air = units.from_hu(-1000.0);
    let mut masked = ct.clone();
    masked.data.zip_mut_with(&mask, |v, &m| {
        if m == 0 {
            *v = air
        }
    });
    masked.write_f32(&out_dir.join(CT))?;
    let mut lung = ct;
    lung.data = mask.mapv(f32::from);
    lung.write_u8(&out_dir.join(LUNG))?;
    units.write(out_dir)?;
    if let Some(lesion) = &study.lesion {
        let to = out_dir.join(LESION);
        std::fs::copy(lesion, &to).map_err(Error::io(&to))?;
    }
    let path = out_dir.join(LUNG_MASK_REPORT);
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "params": params,
        "report": report,
    }))
    .expect("plain structs");
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phantom::{PhantomSize, category_of, generate};
    use crate::resample::resample_volume;

    const WINDOWED: CtUnits = CtUnits {
        window: Some((-1000.0, 400.0)),
        orientation: None,
    };

    /// A phantom's CT and lung mask through the resample reference, as the pipeline sees them.
    fn grid_phantom(index: u32) -> (Volume, Vec<bool>) {
        let p = generate(3, index, PhantomSize::Small);
        let k = Kernels::Cpu;
        let out = [128, 128, 32];
        let ct = resample_volume(&k, &p.ct, out, WINDOWED.window, true);
        let mut lung = p.ct.clone();
        lung.data = p.lung.mapv(f32::from);
        let lung = resample_volume(&k, &lung, out, None, false);
        (ct, lung.data.iter().map(|&v| v >= 0.5).collect())
    }

    fn dice_of(mask: &Array3<u8>, truth: &[bool]) -> f64 {
        dice(mask.iter().map(|&m| m != 0), truth.iter().copied())
    }

    /// A threshold method cannot see dense consolidation against the chest wall: the CT-3 and
    /// CT-4 bounds record that limit (a learned model is needed there), the CT-0…CT-2 one is the
    /// goal. Measured values are in the README.
    #[test]
    fn phantom_lungs_reach_the_dice_goal_by_category() {
        let mut measured = Vec::new();
        for index in 0..8 {
            let (ct, truth) = grid_phantom(index);
            let (mask, report) =
                segment_lungs(&Kernels::Cpu, &ct, WINDOWED, &LungMaskParams::default());
            assert_eq!(
                report.kept_components.len(),
                2,
                "two lungs in phantom {index}"
            );
            measured.push((index, category_of(index), dice_of(&mask, &truth)));
        }
        eprintln!("lung mask Dice (index, category, Dice): {measured:.4?}");
        for &(index, category, d) in &measured {
            let goal = match category {
                0..=2 => 0.97,
                3 => 0.90,
                _ => 0.75,
            };
            assert!(
                d >= goal,
                "phantom {index} (CT-{category}): Dice {d:.4} < {goal}; all: {measured:.4?}"
            );
        }
    }

    #[test]
    fn wgpu_kernels_give_the_reference_mask() {
        let gpu = Kernels::on(covflow_kernels::Device::Wgpu).unwrap();
        for index in [2, 7] {
            let (ct, _) = grid_phantom(index);
            let params = LungMaskParams::default();
            let (want, _) = segment_lungs(&Kernels::Cpu, &ct, WINDOWED, &params);
            let (got, _) = segment_lungs(&gpu, &ct, WINDOWED, &params);
            assert_eq!(got, want, "phantom {index}");
        }
    }

    #[test]
    fn thin_volumes_and_other_padding_values() {
        // Two slices and one slice from the middle of the lungs, in HU, with −3024 outside the
        // field of view (some scanners' value) instead of the phantom's −2048. Every component
        // touches the top and bottom faces, which do not count as outside.
        let p = generate(3, 1, PhantomSize::Small);
        for slices in [7..9, 8..9] {
            let mut ct = p.ct.clone();
            ct.data =
                p.ct.data
                    .slice(ndarray::s![.., .., slices.clone()])
                    .to_owned();
            ct.data
                .mapv_inplace(|v| if v <= -2048.0 { -3024.0 } else { v });
            let truth: Vec<bool> = p
                .lung
                .slice(ndarray::s![.., .., slices.clone()])
                .iter()
                .map(|&v| v == 1)
                .collect();
            let (mask, report) = segment_lungs(
                &Kernels::Cpu,
                &ct,
                CtUnits::default(),
                &LungMaskParams::default(),
            );
            let d = dice_of(&mask, &truth);
            assert!(d >= 0.97, "slices {slices:?}: Dice {d:.4}; {report:?}");
        }
        // No air inside the body at all: an empty mask, not an error.
        let solid = Volume::new(Array3::from_elem((8, 8, 2), 40.0), [1.0; 3]);
        let (mask, report) = segment_lungs(
            &Kernels::Cpu,
            &solid,
            CtUnits::default(),
            &LungMaskParams::default(),
        );
        assert!(mask.iter().all(|&m| m == 0) && report.kept_components.is_empty());
    }
}
