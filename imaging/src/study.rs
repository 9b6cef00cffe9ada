//! One study as the stages hand it on: its file names and what the CT's numbers mean.
//!
//! Every preprocessing stage reads and writes the same set of files in its artifact folder; the
//! names live here so that no stage spells them itself.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The CT (`float32` after `resample`, `int16` HU from `phantom`).
pub const CT: &str = "ct.nii.gz";
/// The lung mask (`uint8`, 1 inside the lungs).
pub const LUNG: &str = "lung.nii.gz";
/// The lesion mask (`uint8`, 1 on a lesion): a phantom's exact mask or an expert's.
pub const LESION: &str = "lesion.nii.gz";
/// The CT's units ([`CtUnits`]).
pub const CT_UNITS: &str = "ct.json";
/// The crop's box and shapes (`crop`).
pub const CROP: &str = "crop.json";
/// The lung segmentation's parameters and report (`lung_mask`).
pub const LUNG_MASK_REPORT: &str = "lung_mask.json";
/// A phantom's facts: category, involvement, seed (`phantom`).
pub const STUDY_INFO: &str = "study.json";

/// The files of one study in an artifact folder; the masks only when present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StudyFiles {
    /// The CT.
    pub ct: PathBuf,
    /// The lung mask, when the folder has one.
    pub lung: Option<PathBuf>,
    /// The lesion mask, when the folder has one.
    pub lesion: Option<PathBuf>,
}

impl StudyFiles {
    /// The study in folder `dir` (the CT's presence is checked when it is read).
    pub fn in_dir(dir: &Path) -> Self {
        let present = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Self {
            ct: dir.join(CT),
            lung: present(LUNG),
            lesion: present(LESION),
        }
    }

    /// The lung mask, or an error that says which stage makes one.
    pub fn require_lung(&self, stage: &str) -> Result<&Path> {
        self.lung.as_deref().ok_or_else(|| {
            let dir = self.ct.parent().unwrap_or(Path::new("."));
            Error::Invalid(format!(
                "{}: no {LUNG}: {stage} needs a lung mask\n  help: put a `lung_mask` stage before {stage}",
                dir.display()
            ))
        })
    }
}

/// What the numbers in a study's CT mean, written beside it as `ct.json`: HU (no file, or
/// `window: null`), or HU mapped through `window` to [0, 1]. Later stages read it to turn
/// thresholds given in HU into the stored units. It also records the voxel axes' orientation
/// when a stage brought the study to one.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CtUnits {
    /// `[low, high]` in HU that became [0, 1].
    pub window: Option<(f32, f32)>,
    /// The orientation the voxels were brought to (`LAS`), when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<crate::Orientation>,
}

impl CtUnits {
    /// The units of the CT in `dir` (HU when `ct.json` is absent).
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(CT_UNITS);
        if !p.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&p).map_err(Error::io(&p))?;
        serde_json::from_str(&text).map_err(|e| Error::Json {
            path: p,
            message: e.to_string(),
        })
    }

    /// Writes `ct.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join(CT_UNITS);
        let text = serde_json::to_string_pretty(self).expect("plain struct");
        std::fs::write(&p, text).map_err(Error::io(&p))
    }

    /// `hu` in the stored units (clamped to the window's range like the data).
    ///
    /// ```
    /// use covflow_imaging::CtUnits;
    /// assert_eq!(CtUnits::default().from_hu(-320.0), -320.0);
    /// let windowed = CtUnits { window: Some((-1000.0, 400.0)), orientation: None };
    /// assert_eq!(windowed.from_hu(-300.0), 0.5);
    /// assert_eq!(windowed.from_hu(2000.0), 1.0);
    /// ```
    pub fn from_hu(&self, hu: f32) -> f32 {
        match self.window {
            None => hu,
            Some((lo, hi)) => ((hu - lo) / (hi - lo)).clamp(0.0, 1.0),
        }
    }
}
