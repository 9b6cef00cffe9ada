//! The `lung_mask` stage kind: the classical 3-D lung segmentation that stands in for the seed's
//! pretrained U-Net (whose weights cannot be fetched).
//!
//! ```yaml
//! lungs:
//!   uses: lung_mask
//!   foreach: grid                       # a stage writing ct.nii.gz (HU, or windowed + ct.json)
//!   with: {threshold: -320, closing_mm: 5}
//! ```
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

use covflow_engine::{Stage, StageDecl, StageError, TaskContext};
use covflow_kernels::{BACKGROUND, Kernels, Morph, ellipsoid_offsets};
use ndarray::Array3;

use crate::resample::CtUnits;
use crate::volume::Volume;

/// The `lung_mask` stage kind.
pub struct LungMaskStage;

/// The method's parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LungMaskParams {
    /// Air below this, in HU.
    pub threshold: f32,
    /// Radius of the closing, in mm.
    pub closing_mm: f64,
    /// The second component is a lung when it has at least this share of the first's voxels.
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
    fn from_with(with: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut p = Self::default();
        for (k, v) in with {
            let x = v
                .as_f64()
                .ok_or_else(|| format!("`{k}` must be a number"))?;
            match k.as_str() {
                "threshold" => p.threshold = x as f32,
                "closing_mm" if x >= 0.0 => p.closing_mm = x,
                "min_lung_ratio" if (0.0..=1.0).contains(&x) => p.min_lung_ratio = x,
                "closing_mm" => return Err("`closing_mm` must be ≥ 0".into()),
                "min_lung_ratio" => return Err("`min_lung_ratio` must be in [0, 1]".into()),
                _ => {
                    return Err(format!(
                        "unknown parameter `{k}` for lung_mask (threshold, closing_mm, min_lung_ratio)"
                    ));
                }
            }
        }
        Ok(p)
    }
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
/// use covflow_stages::lung_mask::{LungMaskParams, segment_lungs};
/// use covflow_stages::resample::CtUnits;
/// use covflow_stages::volume::Volume;
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

/// Dice overlap of two binary masks (1 when both are empty).
///
/// ```
/// let d = covflow_stages::lung_mask::dice([true, true, false], [true, false, false]);
/// assert!((d - 2.0 / 3.0).abs() < 1e-12);
/// ```
pub fn dice(a: impl IntoIterator<Item = bool>, b: impl IntoIterator<Item = bool>) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (x, y) in a.into_iter().zip(b) {
        both += (x && y) as usize;
        total += x as usize + y as usize;
    }
    if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    }
}

impl Stage for LungMaskStage {
    fn kind(&self) -> &'static str {
        "lung_mask"
    }

    fn version(&self) -> u32 {
        1
    }

    fn help(&self) -> String {
        "lung_mask takes optional `threshold` (HU, default -320), `closing_mm` (default 5) and `min_lung_ratio` (default 0.1)".into()
    }

    fn check(&self, decl: &StageDecl) -> Result<(), String> {
        LungMaskParams::from_with(&decl.with)?;
        if decl.needs.len() != 1 {
            return Err(
                "lung_mask reads exactly one upstream stage (its `foreach` or `needs`)".into(),
            );
        }
        Ok(())
    }

    fn device_dependent(&self) -> bool {
        // The kernels give the references' labels and masks exactly, but a run records where it
        // ran, like every stage that uses them.
        true
    }

    fn run(&self, ctx: &TaskContext) -> Result<(), StageError> {
        let params = LungMaskParams::from_with(ctx.params)?;
        let input = ctx.inputs.first().ok_or("lung_mask has no input")?;
        let kernels = crate::kernels_for(ctx.device)?;
        let ct_path = input.dir.join("ct.nii.gz");
        let ct = Volume::read(&ct_path)?;
        let units = CtUnits::read(&input.dir)?;
        let (mask, mut report) = segment_lungs(&kernels, &ct, units, &params);

        let given = input.dir.join("lung.nii.gz");
        if given.is_file() {
            let reference = Volume::read(&given)?;
            if reference.data.dim() != mask.dim() {
                return Err(format!(
                    "{}: shape {:?} differs from the CT's {:?}",
                    given.display(),
                    reference.data.dim(),
                    mask.dim()
                )
                .into());
            }
            report.reference_dice = Some(dice(
                mask.iter().map(|&m| m != 0),
                reference.data.iter().map(|&v| v >= 0.5),
            ));
        }
        if report.kept_components.is_empty() {
            ctx.log.line(format!(
                "warning: {}: no air inside the body below {} HU; the lung mask is empty",
                ct_path.display(),
                params.threshold
            ));
        }

        let air = units.from_hu(-1000.0);
        let mut masked = ct.clone();
        masked.data.zip_mut_with(&mask, |v, &m| {
            if m == 0 {
                *v = air
            }
        });
        masked.write_f32(&ctx.out_dir.join("ct.nii.gz"))?;
        let mut lung = ct.clone();
        lung.data = mask.mapv(f32::from);
        lung.write_u8(&ctx.out_dir.join("lung.nii.gz"))?;
        units.write(ctx.out_dir)?;
        let lesion = input.dir.join("lesion.nii.gz");
        if lesion.is_file() {
            std::fs::copy(&lesion, ctx.out_dir.join("lesion.nii.gz"))?;
        }
        std::fs::write(
            ctx.out_dir.join("lung_mask.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "params": params,
                "report": report,
            }))?,
        )?;
        ctx.log.line(format!(
            "{}: {} lung voxels ({:.0} ml) in {} component(s) on {}{}",
            ct_path.display(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phantom::{PhantomSize, category_of, generate};
    use crate::resample::resample_volume;

    const WINDOWED: CtUnits = CtUnits {
        window: Some((-1000.0, 400.0)),
    };

    /// A phantom's CT and lung mask through the resample reference, as the pipeline sees them.
    fn grid_phantom(index: u32) -> (Volume, Vec<bool>) {
        let p = generate(3, index, PhantomSize::Small);
        let k = Kernels::Cpu;
        let out = [128, 128, 32];
        let ct = resample_volume(&k, &p.ct, out, WINDOWED.window, true).unwrap();
        let mut lung = p.ct.clone();
        lung.data = p.lung.mapv(f32::from);
        let lung = resample_volume(&k, &lung, out, None, false).unwrap();
        (ct, lung.data.iter().map(|&v| v >= 0.5).collect())
    }

    fn dice_of(mask: &Array3<u8>, truth: &[bool]) -> f64 {
        dice(mask.iter().map(|&m| m != 0), truth.iter().copied())
    }

    /// Measured with the defaults (2026-11-28): CT-0…CT-2 0.986–0.994, CT-3 0.954, CT-4 0.803.
    /// A threshold method cannot see dense consolidation against the chest wall: the CT-4 bound
    /// records that limit (a learned model is needed there), the others the issue's goal.
    #[test]
    fn phantom_lungs_reach_the_dice_goal_by_category() {
        for index in 0..8 {
            let (ct, truth) = grid_phantom(index);
            let (mask, report) =
                segment_lungs(&Kernels::Cpu, &ct, WINDOWED, &LungMaskParams::default());
            let d = dice_of(&mask, &truth);
            let category = category_of(index);
            let goal = match category {
                0..=2 => 0.97,
                3 => 0.95,
                _ => 0.78,
            };
            assert!(
                d >= goal,
                "phantom {index} (CT-{category}): Dice {d:.4} < {goal}; {report:?}"
            );
            assert_eq!(
                report.kept_components.len(),
                2,
                "two lungs in phantom {index}"
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

    #[test]
    fn parameters_are_checked() {
        let with = |j: serde_json::Value| LungMaskParams::from_with(j.as_object().unwrap());
        assert_eq!(
            with(serde_json::json!({})).unwrap(),
            LungMaskParams::default()
        );
        assert!(
            with(serde_json::json!({"closing_mm": -1}))
                .unwrap_err()
                .contains("closing_mm")
        );
        assert!(
            with(serde_json::json!({"treshold": -300}))
                .unwrap_err()
                .contains("unknown parameter `treshold`")
        );
        assert!(
            with(serde_json::json!({"threshold": "low"}))
                .unwrap_err()
                .contains("must be a number")
        );
    }
}
