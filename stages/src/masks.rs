//! What `gan_train`, `pseudo_mask` and `naive_mask` share: crops as `[D, H, W]` arrays, the
//! per-item output folders, the slice table with its quartile split, and the judgement of a
//! voxel score against a known lesion mask.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use covflow_engine::{Input, StageError};
use covflow_imaging::Volume;
use covflow_imaging::metrics::{Separation, separation};
use covflow_imaging::study::{self, CtUnits, StudyFiles};
use ndarray::Array3;
use serde::{Deserialize, Serialize};

/// One cropped study as the models see it: `[D, H, W]` = (z, y, x), row-major.
pub struct Crop {
    /// The upstream item id.
    pub id: String,
    /// The item's category (`CT-0` … `CT-4`), when its dataset has one.
    pub category: Option<String>,
    /// The CT in its file's units.
    pub ct: Vec<f32>,
    /// 1 inside the lungs.
    pub lung: Vec<f32>,
    /// 1 on a lesion, when the study has a lesion mask.
    pub lesion: Option<Vec<f32>>,
    /// `[D, H, W]`.
    pub shape: [usize; 3],
    /// The CT's units (its HU window).
    pub units: CtUnits,
    /// The CT as read (grid and affine for the outputs).
    pub volume: Volume,
}

/// `[x, y, z]` array → `[z, y, x]` row-major values.
pub fn to_zyx(a: &Array3<f32>) -> Vec<f32> {
    a.view().permuted_axes([2, 1, 0]).iter().copied().collect()
}

/// `[z, y, x]` row-major values → `[x, y, z]` array.
pub fn from_zyx(v: Vec<f32>, [d, h, w]: [usize; 3]) -> Array3<f32> {
    Array3::from_shape_vec((d, h, w), v)
        .expect("values match the shape")
        .permuted_axes([2, 1, 0])
        .as_standard_layout()
        .into_owned()
}

/// Reads one upstream crop (CT, lung mask, lesion mask when present).
pub fn read_crop(input: &Input, stage: &str) -> Result<Crop, StageError> {
    let files = StudyFiles::in_dir(&input.dir);
    let volume = Volume::read(&files.ct)?;
    let lung = Volume::read(files.require_lung(stage)?)?;
    let lesion = files.lesion.as_deref().map(Volume::read).transpose()?;
    let [x, y, z] = <[usize; 3]>::try_from(volume.data.shape()).expect("3-D");
    let shape = [z, y, x];
    for (name, v) in [(study::LUNG, Some(&lung)), (study::LESION, lesion.as_ref())] {
        if let Some(v) = v
            && v.data.shape() != volume.data.shape()
        {
            return Err(format!(
                "{}: {name} is {:?} but the CT is {:?}\n  help: masks come from the same crop as the CT",
                input.dir.display(),
                v.data.shape(),
                volume.data.shape()
            )
            .into());
        }
    }
    Ok(Crop {
        id: input.item.clone().unwrap_or_else(|| input.stage.clone()),
        category: input.attrs.get("category").cloned(),
        ct: to_zyx(&volume.data),
        lung: to_zyx(&lung.data),
        lesion: lesion.map(|l| to_zyx(&l.data)),
        shape,
        units: CtUnits::read(&input.dir)?,
        volume,
    })
}

/// MosMed's infected categories, CT-1 … CT-4 (the default selection of the mask stages).
pub fn infected_categories() -> Vec<String> {
    (1..=4).map(|k| format!("CT-{k}")).collect()
}

/// Reads the crops among `inputs` whose item's category is in `categories` (all when empty).
pub fn read_crops_of(
    inputs: &[Input],
    categories: &[String],
    stage: &str,
) -> Result<Vec<Crop>, StageError> {
    inputs
        .iter()
        .filter(|i| {
            categories.is_empty()
                || i.attrs
                    .get("category")
                    .is_some_and(|c| categories.contains(c))
        })
        .map(|i| read_crop(i, stage))
        .collect()
}

/// The folder of one item's outputs.
pub fn item_dir(out: &Path, id: &str) -> Result<PathBuf, StageError> {
    let dir = out.join("items").join(id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A score volume written on the crop's grid and affine, so viewers overlay it on the CT.
pub fn write_scores(crop: &Crop, values: Vec<f32>, path: &Path) -> Result<(), StageError> {
    crop.volume
        .with_data(from_zyx(values, crop.shape))
        .write_f32(path)?;
    Ok(())
}

/// A slice's class in the quartile split of the slice scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceClass {
    /// Above the third quartile: the slices the GAN changed most.
    High,
    /// From the first to the third quartile.
    Low,
    /// Below the first quartile: not trained on.
    None,
}

/// A slice's pseudo-infection score and its class in the quartile split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SliceScore {
    /// The item.
    pub item: String,
    /// z index on the crop's grid.
    pub slice: usize,
    /// Sum of the score over the slice's lung voxels.
    pub score: f64,
    /// Its class.
    pub class: SliceClass,
}

/// The slice table: every slice's score, Q1 and Q3 over all of them, and the classes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SliceTable {
    /// First quartile of the slice scores.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// Every slice of every item.
    pub slices: Vec<SliceScore>,
}

/// Linear-interpolated quantile of sorted values (numpy's default).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl SliceTable {
    /// Scores per slice of `(item, [D, H, W] score volume)`; classes by the quartiles of all.
    pub fn new(scored: &[(String, &[f32], [usize; 3])]) -> Self {
        Self::from_sums(scored.iter().map(|(item, values, [d, h, w])| {
            let sums = (0..*d)
                .map(|z| {
                    values[z * h * w..(z + 1) * h * w]
                        .iter()
                        .map(|&v| v as f64)
                        .sum()
                })
                .collect();
            (item.clone(), sums)
        }))
    }

    /// The table of `(item, each slice's score)`; classes by the quartiles of all.
    pub fn from_sums(items: impl IntoIterator<Item = (String, Vec<f64>)>) -> Self {
        let mut slices = Vec::new();
        for (item, sums) in items {
            for (z, score) in sums.into_iter().enumerate() {
                slices.push(SliceScore {
                    item: item.clone(),
                    slice: z,
                    score,
                    class: SliceClass::None,
                });
            }
        }
        let mut sorted: Vec<f64> = slices.iter().map(|s| s.score).collect();
        sorted.sort_by(f64::total_cmp);
        let (q1, q3) = (quantile(&sorted, 0.25), quantile(&sorted, 0.75));
        for s in &mut slices {
            s.class = if s.score > q3 {
                SliceClass::High
            } else if s.score >= q1 {
                SliceClass::Low
            } else {
                SliceClass::None
            };
        }
        Self { q1, q3, slices }
    }

    /// Reads the `slices.json` a pseudo_mask stage wrote in `dir`.
    pub fn read(dir: &Path) -> Result<Self, StageError> {
        read_upstream(&dir.join("slices.json"), "pseudo_mask")
    }

    /// Writes `slices.csv` and `slices.json`.
    pub fn write(&self, out: &Path) -> Result<(), StageError> {
        let mut csv = String::from("item,slice,score,class\n");
        for s in &self.slices {
            let class = match s.class {
                SliceClass::High => "high",
                SliceClass::Low => "low",
                SliceClass::None => "none",
            };
            csv += &format!("{},{},{},{class}\n", s.item, s.slice, s.score);
        }
        write(&out.join("slices.csv"), csv.as_bytes())?;
        write(&out.join("slices.json"), &serde_json::to_vec_pretty(self)?)
    }
}

/// What a stage that scores voxels for lesions (`predict`, `pseudo_mask`, `naive_mask`) writes
/// as [`SCORES`]: which file holds the score and which items fitted it, so that `evaluate` reads
/// any of them the same way and refuses to judge a method on what it learned from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSet {
    /// The method in tables and figures (`TransUNet`, `pseudo-mask`, …).
    pub method: String,
    /// The score's file in each `items/ID/` folder.
    pub file: String,
    /// The items scored.
    pub items: Vec<String>,
    /// Items whose data fitted a model behind these scores (training or validation), through
    /// every upstream stage: judging on them would measure memory, not generalisation.
    pub fitted_on: Vec<String>,
}

/// The file name of a [`ScoreSet`].
pub const SCORES: &str = "scores.json";

impl ScoreSet {
    /// Reads the score set of an upstream stage's artifact in `dir`.
    pub fn read(dir: &Path) -> Result<Self, StageError> {
        let path = dir.join(SCORES);
        let text = std::fs::read(&path).map_err(|e| {
            format!(
                "{}: {e}\n  help: scores come from a predict, pseudo_mask or naive_mask stage",
                path.display()
            )
        })?;
        Ok(serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?)
    }

    /// Writes it into `out`.
    pub fn write(&self, out: &Path) -> Result<(), StageError> {
        write(&out.join(SCORES), &serde_json::to_vec_pretty(self)?)
    }
}

/// Reads a JSON record an upstream stage of kind `kind` wrote; when it is missing, the error
/// says the first of `needs` must be such a stage.
pub fn read_upstream<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: &str,
) -> Result<T, StageError> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "{}: {e}\n  help: the first of `needs` must be a {kind} stage",
            path.display()
        )
    })?;
    Ok(serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// How well each item's voxel score finds its known lesions (inside the lung), and over all
/// held-out items together: what `quality.json` holds.
#[derive(Debug, Default, Serialize)]
pub struct Quality {
    /// Per item with a lesion mask.
    pub items: BTreeMap<String, Separation>,
    /// The held-out items' voxels pooled (the number to compare between methods).
    pub holdout: Option<Separation>,
    /// The items pooled in `holdout`.
    pub holdout_items: Vec<String>,
    /// Every item with a lesion mask pooled.
    pub all: Option<Separation>,
    /// The held-out items' lesion voxels against only their *dense* healthy lung voxels (at or
    /// above [`DENSE_HU`]: vessels, airway walls): whether the score tells a lesion from the
    /// structures an intensity threshold mistakes for one. 0.5 is chance.
    pub holdout_dense: Option<Separation>,
    /// The held-out items' ROC AUCs, each within its own study, averaged: pooling rewards a
    /// score that ranks whole studies by their brightness, this does not.
    pub holdout_study_auc: Option<f64>,
    /// The held-out items' lesion-against-dense-tissue AUCs, each within its own study,
    /// averaged: does the score tell a study's lesions from that study's own vessels.
    pub holdout_study_dense_auc: Option<f64>,
}

/// Lung voxels at or above this are dense (vessels, airway walls, lesions): the naive baseline's
/// default threshold.
pub const DENSE_HU: f32 = -500.0;

impl Quality {
    /// Judges `score` (one `[D, H, W]` volume per crop) where the crops have lesion masks.
    pub fn judge(crops: &[Crop], scores: &[Vec<f32>], holdout: &[String]) -> Self {
        let mut q = Quality::default();
        let (mut pooled_holdout, mut pooled_all) = (Vec::new(), Vec::new());
        let mut pooled_dense = Vec::new();
        let (mut study_auc, mut study_dense_auc) = (Vec::new(), Vec::new());
        for (crop, score) in crops.iter().zip(scores) {
            let Some(lesion) = &crop.lesion else { continue };
            let dense = crop.units.from_hu(DENSE_HU);
            let (mut pairs, mut dense_pairs) = (Vec::new(), Vec::new());
            for (((s, l), t), ct) in score.iter().zip(&crop.lung).zip(lesion).zip(&crop.ct) {
                if *l > 0.5 {
                    pairs.push((*s, *t > 0.5));
                    if *t > 0.5 || *ct >= dense {
                        dense_pairs.push((*s, *t > 0.5));
                    }
                }
            }
            if holdout.contains(&crop.id) {
                pooled_holdout.extend_from_slice(&pairs);
                study_auc.extend(separation(pairs.clone()).roc_auc);
                study_dense_auc.extend(separation(dense_pairs.clone()).roc_auc);
                pooled_dense.extend(dense_pairs);
                q.holdout_items.push(crop.id.clone());
            }
            pooled_all.extend_from_slice(&pairs);
            q.items.insert(crop.id.clone(), separation(pairs));
        }
        q.holdout = (!pooled_holdout.is_empty()).then(|| separation(pooled_holdout));
        q.all = (!pooled_all.is_empty()).then(|| separation(pooled_all));
        q.holdout_dense = (!pooled_dense.is_empty()).then(|| separation(pooled_dense));
        q.holdout_study_auc = mean(&study_auc);
        q.holdout_study_dense_auc = mean(&study_dense_auc);
        q
    }

    /// One line for the task log: the held-out numbers.
    pub fn summary(&self) -> String {
        let auc = |s: &Option<Separation>| match s.and_then(|s| s.roc_auc) {
            Some(a) => format!("{a:.3}"),
            None => "n/a".into(),
        };
        let within = |a: Option<f64>| a.map_or("n/a".into(), |a| format!("{a:.3}"));
        match &self.holdout {
            Some(h) => format!(
                "held-out ROC AUC {} (per study {}), best Dice {:.3}; lesions against dense \
                 tissue AUC {} (per study {})",
                auc(&self.holdout),
                within(self.holdout_study_auc),
                h.best_dice,
                auc(&self.holdout_dense),
                within(self.holdout_study_dense_auc)
            ),
            None => "no held-out item with a lesion mask".into(),
        }
    }

    /// Writes `quality.json`.
    pub fn write(&self, out: &Path) -> Result<(), StageError> {
        write(&out.join("quality.json"), &serde_json::to_vec_pretty(self)?)
    }
}

/// The CT itself as a voxel score: its value inside the lung, 0 outside (the naive baseline's
/// score, and the yardstick every learned score must beat).
pub fn lung_intensity(crop: &Crop) -> Vec<f32> {
    crop.ct
        .iter()
        .zip(&crop.lung)
        .map(|(v, l)| if *l > 0.5 { *v } else { 0.0 })
        .collect()
}

/// The mean Dice of `score` over `crop`'s scored slices by the evaluation's rule (inside the
/// lung, `score > threshold · the slice's maximum`; a slice is scored when its lesion covers
/// more than 1 % of it); `None` without a lesion mask or a scored slice.
pub fn slice_dice(
    kernels: &covflow_kernels::Kernels,
    crop: &Crop,
    score: &[f32],
    threshold: f32,
) -> Option<f64> {
    let lesion = crop.lesion.as_ref()?;
    let inside: Vec<f32> = score
        .iter()
        .zip(&crop.lung)
        .map(|(s, l)| if *l > 0.5 { *s } else { f32::MIN })
        .collect();
    let counts = covflow_imaging::metrics::slice_counts(
        kernels, &inside, lesion, &crop.lung, crop.shape, threshold,
    );
    let dice: Vec<f64> = counts
        .iter()
        .filter(|c| c.scored())
        .map(|c| c.dice())
        .collect();
    mean(&dice)
}

/// The mean of `values`, `None` when there are none.
fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Writes a file, naming it when that fails.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The items listed in a parameter that no input has: a typo would otherwise silently train on
/// the cases meant for evaluation.
pub fn unknown_items<'a>(listed: &'a [String], crops: &[Crop]) -> Vec<&'a str> {
    listed
        .iter()
        .filter(|id| !crops.iter().any(|c| &c.id == *id))
        .map(String::as_str)
        .collect()
}

/// A one-row crop in HU (`study_0001`, CT-1) for tests.
#[cfg(test)]
pub(crate) fn test_crop(ct: Vec<f32>, lung: Vec<f32>, lesion: Vec<f32>) -> Crop {
    let shape = [1, 1, ct.len()];
    Crop {
        id: "study_0001".into(),
        category: Some("CT-1".into()),
        volume: Volume {
            data: from_zyx(ct.clone(), shape),
            spacing: [1.0; 3],
            affine: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        },
        ct,
        lung,
        lesion: Some(lesion),
        shape,
        units: CtUnits {
            window: None,
            orientation: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-row crop in HU: parenchyma, a vessel, two lesion voxels, and air outside the lung.
    fn crop() -> Crop {
        test_crop(
            vec![-850.0, -850.0, 40.0, -600.0, -400.0, -1000.0],
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0],
        )
    }

    #[test]
    fn quality_tells_lesions_from_dense_tissue_separately() {
        let c = crop();
        // Intensity ranks the vessel above both lesion voxels: fine against parenchyma, wrong
        // against dense tissue.
        let q = Quality::judge(
            &[crop()],
            std::slice::from_ref(&c.ct),
            std::slice::from_ref(&c.id),
        );
        let h = q.holdout.unwrap();
        assert_eq!((h.positives, h.voxels), (2, 5), "lung voxels only");
        assert_eq!(h.roc_auc, Some(4.0 / 6.0));
        let d = q.holdout_dense.unwrap();
        assert_eq!((d.positives, d.voxels), (2, 3), "lesions and the vessel");
        assert_eq!(d.roc_auc, Some(0.0));
        assert_eq!(
            q.holdout_study_auc,
            Some(4.0 / 6.0),
            "one study: its own AUC"
        );
        assert_eq!(q.holdout_study_dense_auc, Some(0.0));
        // A score that is high on lesions only separates both ways.
        let lesion_only = c.lesion.clone().unwrap();
        let q = Quality::judge(
            &[crop()],
            std::slice::from_ref(&lesion_only),
            std::slice::from_ref(&c.id),
        );
        assert_eq!(q.holdout_dense.unwrap().roc_auc, Some(1.0));
        assert!(
            q.summary().contains("dense tissue AUC 1.000"),
            "{}",
            q.summary()
        );
        // Two studies, each perfectly ranked within itself, but the second one's lesions are
        // dimmer than the first one's parenchyma: pooled AUC falls, per-study AUC does not.
        let mut dim = crop();
        dim.id = "dim".into();
        let dim_score: Vec<f32> = lesion_only.iter().map(|v| v - 2.0).collect();
        let q = Quality::judge(
            &[crop(), dim],
            &[lesion_only.clone(), dim_score],
            &[c.id.clone(), "dim".into()],
        );
        assert!(q.holdout.unwrap().roc_auc.unwrap() < 1.0);
        assert_eq!(q.holdout_study_auc, Some(1.0));
        // Not held out: pooled in `all` only.
        let q = Quality::judge(&[crop()], std::slice::from_ref(&c.ct), &[]);
        assert!(q.holdout.is_none() && q.holdout_dense.is_none() && q.all.is_some());
    }
}
