//! Resampling a study to a fixed grid, the CT fused with the HU window.
//!
//! Trilinear with voxel centres aligned; before shrinking an axis by a factor f, the CT is
//! low-passed along it with a Gaussian of σ = (f − 1)/2 voxels (skimage's
//! `resize(anti_aliasing=True)` choice; edges repeat the border voxel where skimage reflects).
//! Masks are resampled without the low-pass and thresholded at 0.5. On `wgpu`/`cuda` the cubecl
//! kernels run; on `cpu` their references.

use std::path::Path;

use covflow_kernels::{Kernels, gaussian_weights};
use ndarray::Array3;

use crate::error::{Error, Result};
use crate::orientation::{Orientation, reorient};
use crate::study::{CT, CtUnits, LESION, LUNG, StudyFiles};
use crate::volume::Volume;

/// The most voxels a resample makes: 2^28 (1 GiB of float32). Beyond it a typo (a spacing of
/// 0.001 mm) would exhaust memory instead of failing.
pub const MAX_OUTPUT_VOXELS: usize = 1 << 28;

/// The HU window of the method: [−1000, 400] HU becomes [0, 1].
pub const DEFAULT_WINDOW: (f32, f32) = (-1000.0, 400.0);

/// The output grid of a resample: a fixed number of voxels, or a target spacing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Grid {
    /// Voxels along x, y, z.
    Shape([usize; 3]),
    /// Millimetres per voxel along x, y, z; `None` keeps that axis as it is. The field of view
    /// is kept: each axis gets the whole number of voxels nearest to extent / spacing, so the
    /// spacing written is the one that divides the extent exactly (2.003 mm for a target of 2).
    Spacing([Option<f64>; 3]),
}

impl Grid {
    /// The output voxels for a volume of `dims` voxels at `spacing` mm.
    ///
    /// ```
    /// use covflow_imaging::Grid;
    /// let g = Grid::Spacing([Some(2.0), Some(2.0), None]);
    /// assert_eq!(g.voxels([512, 512, 41], [0.7, 0.7, 8.0]), [179, 179, 41]);
    /// assert_eq!(Grid::Shape([128, 128, 32]).voxels([512, 512, 41], [0.7, 0.7, 8.0]), [128, 128, 32]);
    /// ```
    pub fn voxels(&self, dims: [usize; 3], spacing: [f64; 3]) -> [usize; 3] {
        match self {
            Grid::Shape(s) => *s,
            Grid::Spacing(t) => [0, 1, 2].map(|a| {
                t[a].map_or(dims[a], |t| {
                    ((dims[a] as f64 * spacing[a] / t).round() as usize).max(1)
                })
            }),
        }
    }
}

/// Anti-aliasing (a Gaussian along each axis that shrinks, σ = (factor − 1) / 2) and then the
/// resample, on the kernels' device.
fn run_kernels(
    kernels: &Kernels,
    data: &[f32],
    shape: [usize; 3],
    out: [usize; 3],
    window: Option<(f32, f32)>,
    anti_alias: bool,
) -> Vec<f32> {
    let mut v = data.to_vec();
    if anti_alias {
        for axis in 0..3 {
            let factor = shape[axis] as f64 / out[axis] as f64;
            if factor > 1.0 {
                v = kernels.blur_axis(&v, shape, axis, &gaussian_weights((factor - 1.0) / 2.0));
            }
        }
    }
    kernels.resample_window(&v, shape, out, window)
}

/// `volume` resampled to `out` voxels (the affine and spacing follow), low-passed first along
/// the axes that shrink when `anti_alias` is set, and mapped through `window` to [0, 1].
pub fn resample_volume(
    kernels: &Kernels,
    volume: &Volume,
    out: [usize; 3],
    window: Option<(f32, f32)>,
    anti_alias: bool,
) -> Volume {
    let (nx, ny, nz) = volume.data.dim();
    let input = volume.data.as_standard_layout();
    let data = input.as_slice().expect("standard layout");
    let values = run_kernels(kernels, data, [nx, ny, nz], out, window, anti_alias);
    let data =
        Array3::from_shape_vec((out[0], out[1], out[2]), values).expect("kernels fill `out`");
    let scale = [
        nx as f64 / out[0] as f64,
        ny as f64 / out[1] as f64,
        nz as f64 / out[2] as f64,
    ];
    let mut v = Volume::new(data, [0, 1, 2].map(|a| volume.spacing[a] * scale[a]));
    // New voxel i sits at old index (i + 0.5)·scale − 0.5.
    for (row, old) in v.affine.iter_mut().zip(&volume.affine).take(3) {
        let mut t = old[3];
        for (c, s) in scale.iter().enumerate() {
            row[c] = old[c] * s;
            t += old[c] * (0.5 * s - 0.5);
        }
        row[3] = t;
    }
    v
}

/// A binary mask resampled to `out` voxels the way every stage does it: trilinear, not
/// low-passed, thresholded at 0.5.
pub fn resample_mask(kernels: &Kernels, mask: &Volume, out: [usize; 3]) -> Volume {
    let mut m = resample_volume(kernels, mask, out, None, false);
    m.data.mapv_inplace(|v| if v >= 0.5 { 1.0 } else { 0.0 });
    m
}

/// What [`resample_study`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Resampled {
    /// The input's voxels.
    pub input_shape: [usize; 3],
    /// The output's voxels.
    pub shape: [usize; 3],
}

/// How [`resample_study`] resamples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResampleOptions {
    /// The output grid, in the axes of `orientation` when it is set.
    pub grid: Grid,
    /// `[low, high]` in HU mapped to [0, 1]; `None` keeps HU.
    pub window: Option<(f32, f32)>,
    /// Low-pass the CT along each axis it shrinks.
    pub anti_alias: bool,
    /// Permute and flip the voxels to this orientation first (exactly, before any
    /// interpolation); `None` keeps the file's voxel order.
    pub orientation: Option<Orientation>,
}

/// Resamples a study's CT (and its masks, which must be on the CT's grid) as `options` say and
/// writes them into `out_dir` under the same names, with `ct.json` saying the CT's units and
/// orientation.
pub fn resample_study(
    kernels: &Kernels,
    study: &StudyFiles,
    options: &ResampleOptions,
    out_dir: &Path,
) -> Result<Resampled> {
    let ResampleOptions {
        grid,
        window,
        anti_alias,
        orientation,
    } = *options;
    let oriented = |v: Volume| match orientation {
        Some(o) => reorient(&v, o),
        None => v,
    };
    let ct = Volume::read(&study.ct)?;
    let input_shape = ct.data.dim();
    let ct = oriented(ct);
    let (nx, ny, nz) = ct.data.dim();
    let out = grid.voxels([nx, ny, nz], ct.spacing);
    let voxels = out.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    if voxels.is_none_or(|v| v > MAX_OUTPUT_VOXELS) {
        return Err(Error::Invalid(format!(
            "{}: {:?} voxels of {:?} mm resampled as {grid:?} would be {out:?} voxels, more than {MAX_OUTPUT_VOXELS}\n  help: choose a coarser `spacing` or a `shape`",
            study.ct.display(),
            [nx, ny, nz],
            ct.spacing
        )));
    }
    resample_volume(kernels, &ct, out, window, anti_alias).write_f32(&out_dir.join(CT))?;
    CtUnits {
        window,
        orientation,
    }
    .write(out_dir)?;
    for (name, path) in [(LUNG, &study.lung), (LESION, &study.lesion)] {
        let Some(path) = path else { continue };
        let m = Volume::read(path)?;
        if m.data.dim() != input_shape {
            return Err(Error::Invalid(format!(
                "{}: {:?} voxels, but its CT {} has {:?}\n  help: a mask must be on its CT's grid",
                path.display(),
                m.data.dim(),
                study.ct.display(),
                input_shape
            )));
        }
        resample_mask(kernels, &oriented(m), out).write_u8(&out_dir.join(name))?;
    }
    Ok(Resampled {
        input_shape: [input_shape.0, input_shape.1, input_shape.2],
        shape: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// World position of voxel `i`.
    fn world(v: &Volume, i: [f64; 3]) -> [f64; 3] {
        let a = &v.affine;
        [0, 1, 2].map(|r| a[r][0] * i[0] + a[r][1] * i[1] + a[r][2] * i[2] + a[r][3])
    }

    #[test]
    fn a_spacing_keeps_the_extent() {
        // 12 voxels of 0.5 mm at a target of 2 mm are 3 voxels.
        let g = Grid::Spacing([Some(2.0), None, Some(3.0)]);
        assert_eq!(g.voxels([12, 7, 1], [0.5, 1.0, 1.0]), [3, 7, 1]);
    }

    #[test]
    fn every_orientation_of_a_study_resamples_to_the_same_volume() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::phantom::generate(2, 0, crate::phantom::PhantomSize::Small);
        let lung = p.ct.with_data(p.lung.mapv(f32::from));
        let options = ResampleOptions {
            grid: Grid::Shape([40, 48, 12]),
            window: Some(DEFAULT_WINDOW),
            anti_alias: true,
            orientation: Some(Orientation::LAS),
        };
        let mut results = Vec::new();
        for code in ["LAS", "RAS", "LPS", "PIR", "SLA"] {
            let o: Orientation = code.parse().unwrap();
            let input = dir.path().join(code);
            let out = dir.path().join(format!("{code}-out"));
            std::fs::create_dir_all(&input).unwrap();
            std::fs::create_dir_all(&out).unwrap();
            // Written as a scanner would have, in orientation `code`.
            reorient(&p.ct, o).write_i16(&input.join(CT)).unwrap();
            reorient(&lung, o).write_u8(&input.join(LUNG)).unwrap();
            let written = Volume::read(&input.join(CT)).unwrap();
            assert_eq!(Orientation::of(&written.affine), o);
            resample_study(&Kernels::Cpu, &StudyFiles::in_dir(&input), &options, &out).unwrap();
            let ct = Volume::read(&out.join(CT)).unwrap();
            let mask = Volume::read(&out.join(LUNG)).unwrap();
            assert_eq!(
                CtUnits::read(&out).unwrap().orientation,
                Some(Orientation::LAS)
            );
            results.push((code, ct, mask));
        }
        let (_, want_ct, want_mask) = &results[0];
        assert_eq!(want_ct.data.dim(), (40, 48, 12));
        for (code, ct, mask) in &results[1..] {
            assert_eq!(ct.data, want_ct.data, "{code}: CT");
            assert_eq!(mask.data, want_mask.data, "{code}: lung mask");
            for r in 0..3 {
                for c in 0..4 {
                    let (a, b) = (ct.affine[r][c], want_ct.affine[r][c]);
                    assert!((a - b).abs() < 1e-4, "{code}: affine [{r}][{c}] {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn geometry_follows_the_sampling() {
        let mut v = Volume::new(Array3::from_elem((8, 6, 4), -500.0), [0.7, 0.8, 8.0]);
        v.affine[0][3] = -100.0;
        v.affine[1][3] = 20.0;
        v.affine[2][3] = 5.0;
        let same = resample_volume(&Kernels::Cpu, &v, [8, 6, 4], None, true);
        assert_eq!(same.affine, v.affine);
        assert_eq!(same.data, v.data);
        let half = resample_volume(&Kernels::Cpu, &v, [4, 3, 2], Some(DEFAULT_WINDOW), true);
        assert_eq!(half.spacing, [1.4, 1.6, 16.0]);
        // New voxel 0 samples old index 0.5 on every axis: the same point in the patient.
        let a = world(&half, [0.0, 0.0, 0.0]);
        let b = world(&v, [0.5, 0.5, 0.5]);
        for k in 0..3 {
            assert!((a[k] - b[k]).abs() < 1e-9, "{a:?} vs {b:?}");
        }
        assert!(half.data.iter().all(|x| (x - 500.0 / 1400.0).abs() < 1e-6));
    }
}
