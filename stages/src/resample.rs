//! The `resample` stage kind: a study to a fixed grid, CT fused with the HU window.
//!
//! ```yaml
//! preprocess:
//!   uses: resample
//!   foreach: scans                         # an upstream stage writing ct.nii.gz (+ masks)
//!   with: {shape: [128, 128, 32], window: [-1000, 400]}
//! ```
//! Reads `ct.nii.gz` (and `lung.nii.gz`, `lesion.nii.gz` when present) from its one input,
//! resamples each trilinearly to `shape` (voxels along x, y, z; voxel centres aligned), maps the CT
//! through the window to [0, 1] in the same pass, thresholds masks at 0.5, and writes the same
//! file names with the new spacing. On `--device wgpu|cuda` the cubecl kernel runs; on `cpu` its
//! reference. Before shrinking an axis by a factor f, the CT is low-passed along it with a
//! Gaussian of σ = (f − 1)/2 voxels (skimage's `resize(anti_aliasing=True)` choice; edges repeat
//! the border voxel where skimage reflects); `anti_aliasing: false` turns it off.

use covflow_engine::{Stage, StageDecl, StageError, TaskContext};
use covflow_kernels::{Kernels, gaussian_weights};
use ndarray::Array3;

use crate::volume::Volume;

/// What the numbers in a stage's `ct.nii.gz` mean, written beside it as `ct.json`: HU (no file,
/// or `window: null`), or HU mapped through `window` to [0, 1]. Later stages read it to turn
/// thresholds given in HU into the stored units.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CtUnits {
    /// `[low, high]` in HU that became [0, 1].
    pub window: Option<(f32, f32)>,
}

impl CtUnits {
    /// The units of the CT in `dir` (HU when `ct.json` is absent).
    pub fn read(dir: &std::path::Path) -> Result<Self, StageError> {
        let p = dir.join("ct.json");
        if !p.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&p)?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()).into())
    }

    /// Writes `ct.json` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> Result<(), StageError> {
        std::fs::write(dir.join("ct.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// `hu` in the stored units (clamped to the window's range like the data).
    pub fn from_hu(&self, hu: f32) -> f32 {
        match self.window {
            None => hu,
            Some((lo, hi)) => ((hu - lo) / (hi - lo)).clamp(0.0, 1.0),
        }
    }
}

/// The `resample` stage kind.
pub struct ResampleStage;

/// Where a task's study comes from: an upstream artifact (`ct.nii.gz`, `lung.nii.gz`,
/// `lesion.nii.gz`) or a dataset item (`path`, and `lung`/`mask` when the source has them).
struct StudyFiles {
    ct: std::path::PathBuf,
    lung: Option<std::path::PathBuf>,
    lesion: Option<std::path::PathBuf>,
}

impl StudyFiles {
    fn of(ctx: &TaskContext) -> Result<Self, StageError> {
        if let Some(input) = ctx.inputs.first() {
            let file = |name: &str| Some(input.dir.join(name)).filter(|p| p.is_file());
            return Ok(Self {
                ct: input.dir.join("ct.nii.gz"),
                lung: file("lung.nii.gz"),
                lesion: file("lesion.nii.gz"),
            });
        }
        let item = ctx
            .item
            .ok_or("resample has neither an upstream stage nor an item")?;
        let attr = |k: &str| item.attrs.get(k).map(|p| ctx.pipeline_dir.join(p));
        Ok(Self {
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
}

pub(crate) fn shape_param(
    decl_with: &serde_json::Map<String, serde_json::Value>,
) -> Result<[usize; 3], String> {
    let v = decl_with
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("`shape: [x, y, z]` (output voxels) is missing")?;
    let dims: Vec<usize> = v
        .iter()
        .filter_map(|d| d.as_u64().filter(|d| *d > 0).map(|d| d as usize))
        .collect();
    match dims.as_slice() {
        [x, y, z] => Ok([*x, *y, *z]),
        _ => Err("`shape` must be three positive integers [x, y, z]".into()),
    }
}

/// The output grid of a `resample` task: a fixed number of voxels, or a target spacing.
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
    /// Reads `shape:` or `spacing:` (exactly one of them).
    pub fn from_with(with: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        match (with.get("shape"), with.get("spacing")) {
            (Some(_), Some(_)) => Err("give `shape` or `spacing`, not both".into()),
            (Some(_), None) => shape_param(with).map(Grid::Shape),
            (None, Some(v)) => {
                let bad = || {
                    "`spacing` must be three positive numbers in mm [x, y, z], each or null to keep that axis"
                        .to_string()
                };
                let items = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
                let mut out = [None; 3];
                for (o, item) in out.iter_mut().zip(items) {
                    *o = match item {
                        serde_json::Value::Null => None,
                        x => Some(x.as_f64().filter(|x| *x > 0.0).ok_or_else(bad)?),
                    };
                }
                Ok(Grid::Spacing(out))
            }
            (None, None) => Err(
                "resample needs `shape: [x, y, z]` (output voxels) or `spacing: [x, y, z]` (mm; null keeps an axis)"
                    .into(),
            ),
        }
    }

    /// The output voxels for a volume of `dims` voxels at `spacing` mm.
    ///
    /// ```
    /// use covflow_stages::resample::Grid;
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

fn window_param(
    decl_with: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<(f32, f32)>, String> {
    match decl_with.get("window") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(w) => {
            let v: Vec<f64> = w
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default();
            match v.as_slice() {
                [lo, hi] if lo < hi => Ok(Some((*lo as f32, *hi as f32))),
                _ => Err("`window` must be [low, high] in HU with low < high, or null".into()),
            }
        }
    }
}

/// Anti-aliasing (a Gaussian along each axis that shrinks, σ = (factor − 1) / 2) and then the
/// resample, on the task's device: the cubecl kernels, or their CPU references on `cpu`.
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
/// the axes that shrink when `anti_alias` is set.
pub fn resample_volume(
    kernels: &Kernels,
    volume: &Volume,
    out: [usize; 3],
    window: Option<(f32, f32)>,
    anti_alias: bool,
) -> Result<Volume, StageError> {
    let (nx, ny, nz) = volume.data.dim();
    let input = volume.data.as_standard_layout();
    let data = input.as_slice().expect("standard layout");
    let values = run_kernels(kernels, data, [nx, ny, nz], out, window, anti_alias);
    let data = Array3::from_shape_vec((out[0], out[1], out[2]), values)?;
    let scale = [
        nx as f64 / out[0] as f64,
        ny as f64 / out[1] as f64,
        nz as f64 / out[2] as f64,
    ];
    let mut v = Volume::new(
        data,
        [
            volume.spacing[0] * scale[0],
            volume.spacing[1] * scale[1],
            volume.spacing[2] * scale[2],
        ],
    );
    // New voxel i sits at old index (i + 0.5)·scale − 0.5.
    for (row, old) in v.affine.iter_mut().zip(&volume.affine).take(3) {
        let mut t = old[3];
        for (c, s) in scale.iter().enumerate() {
            row[c] = old[c] * s;
            t += old[c] * (0.5 * s - 0.5);
        }
        row[3] = t;
    }
    Ok(v)
}

/// A binary mask resampled to `out` voxels the way every stage does it: trilinear, not
/// low-passed, thresholded at 0.5.
pub fn resample_mask(
    kernels: &Kernels,
    mask: &Volume,
    out: [usize; 3],
) -> Result<Volume, StageError> {
    let mut m = resample_volume(kernels, mask, out, None, false)?;
    m.data.mapv_inplace(|v| if v >= 0.5 { 1.0 } else { 0.0 });
    Ok(m)
}

impl Stage for ResampleStage {
    fn kind(&self) -> &'static str {
        "resample"
    }

    fn version(&self) -> u32 {
        // 2: anti-aliasing prefilter; 3: writes ct.json (the CT's units).
        3
    }

    fn help(&self) -> String {
        "resample takes `shape: [x, y, z]` (voxels) or `spacing: [x, y, z]` (mm, null keeps an axis), optional `window: [low, high]` (HU; default [-1000, 400], null for none) and `anti_aliasing: true|false` (default true)".into()
    }

    fn check(&self, decl: &StageDecl) -> Result<(), String> {
        for k in decl.with.keys() {
            if !["shape", "spacing", "window", "anti_aliasing"].contains(&k.as_str()) {
                return Err(format!(
                    "unknown parameter `{k}` for resample (shape, spacing, window, anti_aliasing)"
                ));
            }
        }
        Grid::from_with(&decl.with)?;
        window_param(&decl.with)?;
        if decl
            .with
            .get("anti_aliasing")
            .is_some_and(|v| !v.is_boolean())
        {
            return Err("`anti_aliasing` must be true or false".into());
        }
        if decl.needs.len() > 1 || (decl.needs.is_empty() && decl.foreach.is_none()) {
            return Err(
                "resample reads one upstream stage (its `foreach` or `needs`), or the studies of a `mosmed`/`nifti` dataset (`foreach: DATASET`)".into(),
            );
        }
        Ok(())
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, ctx: &TaskContext) -> Result<(), StageError> {
        let grid = Grid::from_with(ctx.params)?;
        let window = if ctx.params.contains_key("window") {
            window_param(ctx.params)?
        } else {
            Some((-1000.0, 400.0))
        };
        let anti_alias = ctx
            .params
            .get("anti_aliasing")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let kernels = crate::kernels_for(ctx.device)?;
        let study = StudyFiles::of(ctx)?;
        let ct_path = study.ct;
        let ct = Volume::read(&ct_path)?;
        let (nx, ny, nz) = ct.data.dim();
        let out = grid.voxels([nx, ny, nz], ct.spacing);
        resample_volume(&kernels, &ct, out, window, anti_alias)?
            .write_f32(&ctx.out_dir.join("ct.nii.gz"))?;
        CtUnits { window }.write(ctx.out_dir)?;
        for (mask, p) in [("lung.nii.gz", study.lung), ("lesion.nii.gz", study.lesion)] {
            if let Some(p) = p {
                let m = Volume::read(&p)?;
                if m.data.dim() != ct.data.dim() {
                    return Err(format!(
                        "{}: {:?} voxels, but its CT {} has {:?}\n  help: a mask must be on its CT's grid",
                        p.display(),
                        m.data.dim(),
                        ct_path.display(),
                        ct.data.dim()
                    )
                    .into());
                }
                resample_mask(&kernels, &m, out)?.write_u8(&ctx.out_dir.join(mask))?;
            }
        }
        ctx.log.line(format!(
            "{}: {:?} → {:?} on {}",
            ct_path.display(),
            ct.data.dim(),
            out,
            ctx.device
        ));
        Ok(())
    }
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
    fn grid_is_a_shape_or_a_spacing() {
        let with = |j: serde_json::Value| Grid::from_with(j.as_object().unwrap());
        assert_eq!(
            with(serde_json::json!({"spacing": [2.0, 2.0, null]})).unwrap(),
            Grid::Spacing([Some(2.0), Some(2.0), None])
        );
        assert!(
            with(serde_json::json!({"shape": [1, 2, 3], "spacing": [1, 1, 1]}))
                .unwrap_err()
                .contains("not both")
        );
        assert!(
            with(serde_json::json!({"spacing": [2, 0, 1]}))
                .unwrap_err()
                .contains("positive")
        );
        assert!(
            with(serde_json::json!({}))
                .unwrap_err()
                .contains("`spacing: [x, y, z]`")
        );
        // The extent is kept: 12 voxels of 0.5 mm at a target of 2 mm are 3 voxels.
        let g = Grid::Spacing([Some(2.0), None, Some(3.0)]);
        assert_eq!(g.voxels([12, 7, 1], [0.5, 1.0, 1.0]), [3, 7, 1]);
    }

    #[test]
    fn geometry_follows_the_sampling() {
        let mut v = Volume::new(Array3::from_elem((8, 6, 4), -500.0), [0.7, 0.8, 8.0]);
        v.affine[0][3] = -100.0;
        v.affine[1][3] = 20.0;
        v.affine[2][3] = 5.0;
        let same = resample_volume(&Kernels::Cpu, &v, [8, 6, 4], None, true).unwrap();
        assert_eq!(same.affine, v.affine);
        assert_eq!(same.data, v.data);
        let half =
            resample_volume(&Kernels::Cpu, &v, [4, 3, 2], Some((-1000.0, 400.0)), true).unwrap();
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
