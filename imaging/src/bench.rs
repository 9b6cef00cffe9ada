//! Timing of the preprocessing steps on one study (`covflow bench preprocess`).

use std::path::Path;

use covflow_kernels::Kernels;

use crate::crop::lung_box;
use crate::error::{Error, Result};
use crate::lung::{LungMaskParams, segment_lungs};
use crate::resample::{DEFAULT_WINDOW, resample_mask, resample_volume};
use crate::study::CtUnits;
use crate::volume::Volume;

/// Time of one preprocessing step on one volume.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepTiming {
    /// What was timed.
    pub step: String,
    /// Input voxels (x × y × z).
    pub shape: [usize; 3],
    /// Median over the repetitions, milliseconds.
    pub median_ms: f64,
}

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Times each preprocessing step on the study at `ct_path` (a `.nii.gz` in HU) with `kernels`:
/// decoding, resample + window to `grid`, lung mask on the grid and at full resolution, crop.
/// The first repetition of each GPU step includes its kernel compilation; the median does not.
pub fn preprocess(
    kernels: &Kernels,
    ct_path: &Path,
    grid: [usize; 3],
    reps: usize,
) -> Result<Vec<StepTiming>> {
    let reps = reps.max(1);
    let mut out = Vec::new();
    let mut ct = Volume::read(ct_path)?;
    let (x, y, z) = ct.data.dim();
    let full = [x, y, z];
    out.push(StepTiming {
        step: "decode .nii.gz".into(),
        shape: full,
        median_ms: median_ms(reps, || ct = Volume::read(ct_path).expect("read above")),
    });
    let window = Some(DEFAULT_WINDOW);
    let units = CtUnits {
        window,
        orientation: None,
    };
    let mut g = resample_volume(kernels, &ct, grid, window, true);
    out.push(StepTiming {
        step: "resample + window (anti-aliased)".into(),
        shape: full,
        median_ms: median_ms(reps, || {
            g = resample_volume(kernels, &ct, grid, window, true)
        }),
    });
    let params = LungMaskParams::default();
    let (mut mask, _) = segment_lungs(kernels, &g, units, &params);
    out.push(StepTiming {
        step: "lung_mask on the grid".into(),
        shape: grid,
        median_ms: median_ms(reps, || mask = segment_lungs(kernels, &g, units, &params).0),
    });
    let _ = segment_lungs(kernels, &ct, CtUnits::default(), &params);
    out.push(StepTiming {
        step: "lung_mask at full resolution".into(),
        shape: full,
        median_ms: median_ms(reps, || {
            segment_lungs(kernels, &ct, CtUnits::default(), &params);
        }),
    });
    let lung = g.with_data(mask.mapv(f32::from));
    let b = lung_box(&lung.data, 0)
        .ok_or_else(|| Error::Invalid(format!("{}: empty lung mask", ct_path.display())))?;
    out.push(StepTiming {
        step: "crop (CT + mask)".into(),
        shape: grid,
        median_ms: median_ms(reps, || {
            resample_volume(kernels, &g.crop(b.lo, b.hi), grid, None, true);
            resample_mask(kernels, &lung.crop(b.lo, b.hi), grid);
        }),
    });
    Ok(out)
}
