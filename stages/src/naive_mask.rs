//! The `naive_mask` stage kind: the baseline every learned mask is compared with, an HU
//! threshold inside the lung, written like a pseudo-mask and judged the same way. The original
//! fixes the cut at −500 HU; with `tune: true` the cut is the one that best fits the training
//! studies' own lesion masks, the first thing a skeptical reader would try.
//!
//! ```yaml
//! naive:
//!   uses: naive_mask
//!   needs: [crops]
//!   with: {threshold_hu: -500}
//! naive_tuned:
//!   uses: naive_mask
//!   needs: [crops]
//!   with: {tune: true, holdout: [study_0003, study_0006]}
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};

use crate::masks::{
    Crop, Quality, ScoreSet, SliceTable, infected_categories, item_dir, lung_intensity,
    read_crops_of, write, write_scores,
};
use crate::{check_range, one_input};

/// The `naive_mask` stage kind.
pub struct NaiveMaskStage;

/// The `with:` of a `naive_mask` stage.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NaiveMaskParams {
    /// Lung voxels above this HU are called lesion (ground glass starts near −700 HU; vessels
    /// are brighter still, which is the baseline's weakness).
    #[serde(default = "threshold_hu")]
    pub threshold_hu: f32,
    /// Categories to mask (every item when empty).
    #[serde(default = "infected_categories")]
    pub categories: Vec<String>,
    /// Items whose voxels are pooled in quality.json's `holdout` (the GAN's held-out items, so
    /// both are judged on the same cases).
    #[serde(default)]
    pub holdout: Vec<String>,
    /// Choose the cut instead of `threshold_hu`: the one of −1000, −990, …, 0 HU whose mask has
    /// the best Dice against the lesion masks of every item with one that is not in `holdout`
    /// (their lung voxels pooled). Those items become the method's training items, which
    /// evaluate then refuses to judge it on.
    #[serde(default)]
    pub tune: bool,
}

/// The cut of `tune`, and how well it fits the items it was chosen on.
#[derive(Debug, serde::Serialize)]
struct TunedCut {
    threshold_hu: f32,
    dice: f64,
    tuned_on: Vec<String>,
}

/// The cut in 10 HU steps over −1000…0 HU with the best Dice on `crops`' pooled lung voxels.
fn tune_cut(crops: &[&Crop]) -> TunedCut {
    let candidates: Vec<f32> = (0..=100).map(|i| -1000.0 + 10.0 * i as f32).collect();
    // [true positives, false positives, false negatives] per candidate.
    let mut counts = vec![[0u64; 3]; candidates.len()];
    for crop in crops {
        let lesion = crop
            .lesion
            .as_deref()
            .expect("tuning items have lesion masks");
        let cuts: Vec<f32> = candidates
            .iter()
            .map(|hu| crop.units.from_hu(*hu))
            .collect();
        for ((v, l), t) in crop.ct.iter().zip(&crop.lung).zip(lesion) {
            if *l <= 0.5 {
                continue;
            }
            for (c, cut) in counts.iter_mut().zip(&cuts) {
                match (*v > *cut, *t > 0.5) {
                    (true, true) => c[0] += 1,
                    (true, false) => c[1] += 1,
                    (false, true) => c[2] += 1,
                    (false, false) => {}
                }
            }
        }
    }
    let dice = |[tp, fp, fneg]: [u64; 3]| 2.0 * tp as f64 / (2 * tp + fp + fneg).max(1) as f64;
    let (best, _) = counts
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(b, bd), (i, c)| {
            if dice(*c) > bd {
                (i, dice(*c))
            } else {
                (b, bd)
            }
        });
    TunedCut {
        threshold_hu: candidates[best],
        dice: dice(counts[best]),
        tuned_on: crops.iter().map(|c| c.id.clone()).collect(),
    }
}

fn threshold_hu() -> f32 {
    -500.0
}

impl Stage for NaiveMaskStage {
    type Params = NaiveMaskParams;

    fn kind(&self) -> &'static str {
        "naive_mask"
    }

    fn version(&self) -> u32 {
        // 3: writes scores.json. 4: `tune`.
        4
    }

    fn about(&self) -> &'static str {
        "The baseline: per item under items/ID/, difference.nii.gz (the CT inside the lung, its \
         score, 0 outside) and mask.nii.gz (lung voxels above `threshold_hu`); slices.csv/json \
         (lesion voxels per slice and the quartile split, like pseudo_mask); quality.json (ROC \
         AUC and best-threshold Dice of the score against lesion masks, pooled over `holdout`); \
         scores.json (evaluate judges mask.nii.gz). With `tune`, the cut is chosen on the \
         lesion masks of the items outside `holdout` (threshold.json says which and how well). \
         Reads one crop-like stage."
    }

    fn check(&self, p: &NaiveMaskParams, decl: &StageDecl) -> Result<(), ParamError> {
        check_range("threshold_hu", p.threshold_hu, -1100.0..=3000.0, " HU")?;
        one_input(self.kind(), decl)
    }

    fn run(&self, p: &NaiveMaskParams, ctx: &TaskContext) -> Result<(), StageError> {
        let crops = read_crops_of(ctx.inputs, &p.categories, self.kind())?;
        let tuned = p.tune.then(|| -> Result<TunedCut, StageError> {
            let training: Vec<&Crop> = crops
                .iter()
                .filter(|c| c.lesion.is_some() && !p.holdout.contains(&c.id))
                .collect();
            if training.is_empty() {
                return Err(concat!(
                    "naive_mask: `tune: true` but no item outside `holdout` has a lesion mask to tune on\n",
                    "  help: tune needs studies with expert masks that are not held out, ",
                    "or set `tune: false` and a `threshold_hu`"
                )
                .into());
            }
            Ok(tune_cut(&training))
        });
        let tuned = tuned.transpose()?;
        let threshold_hu = tuned.as_ref().map_or(p.threshold_hu, |t| t.threshold_hu);
        let mut scores = Vec::with_capacity(crops.len());
        let mut masks = Vec::with_capacity(crops.len());
        for crop in &crops {
            let cut = crop.units.from_hu(threshold_hu);
            let score = lung_intensity(crop);
            let mask: Vec<f32> = crop
                .ct
                .iter()
                .zip(&crop.lung)
                .map(|(v, l)| f32::from(*l > 0.5 && *v > cut))
                .collect();
            let dir = item_dir(ctx.out_dir, &crop.id)?;
            write_scores(crop, score.clone(), &dir.join("difference.nii.gz"))?;
            write_scores(crop, mask.clone(), &dir.join("mask.nii.gz"))?;
            scores.push(score);
            masks.push(mask);
        }
        let scored: Vec<(String, &[f32], [usize; 3])> = crops
            .iter()
            .zip(&masks)
            .map(|(c, m)| (c.id.clone(), m.as_slice(), c.shape))
            .collect();
        SliceTable::new(&scored).write(ctx.out_dir)?;
        // The binary mask, so evaluate's `threshold · slice max` cut keeps exactly it.
        let method = match &tuned {
            Some(t) => format!(
                "HU threshold tuned on training masks ({} HU)",
                t.threshold_hu
            ),
            None => "naive threshold".into(),
        };
        ScoreSet {
            method,
            file: "mask.nii.gz".into(),
            items: crops.iter().map(|c| c.id.clone()).collect(),
            fitted_on: tuned
                .as_ref()
                .map(|t| t.tuned_on.clone())
                .unwrap_or_default(),
        }
        .write(ctx.out_dir)?;
        if let Some(t) = &tuned {
            write(
                &ctx.out_dir.join("threshold.json"),
                &serde_json::to_vec_pretty(t)?,
            )?;
        }
        let quality = Quality::judge(&crops, &scores, &p.holdout);
        quality.write(ctx.out_dir)?;
        ctx.log.line(format!(
            "{} naive masks at {} HU{}; {}",
            crops.len(),
            threshold_hu,
            tuned.as_ref().map_or(String::new(), |t| format!(
                " (tuned on {} items: Dice {:.3} there)",
                t.tuned_on.len(),
                t.dice
            )),
            quality.summary()
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masks::test_crop;

    /// Parenchyma near −850 HU, lesions −450…−250, a vessel at −100 and one voxel outside the
    /// lung: every cut between the parenchyma and the lesions fits exactly, and the search
    /// returns the first of them; the vessel is a false positive at any such cut.
    #[test]
    fn the_tuned_cut_is_the_best_fitting_one_on_the_training_masks() {
        let ct = vec![
            -870.0, -850.0, -830.0, -450.0, -350.0, -250.0, -100.0, 500.0,
        ];
        let lung = vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let lesion = vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let crop = test_crop(ct, lung, lesion);
        let cut = tune_cut(&[&crop]);
        assert_eq!(cut.threshold_hu, -830.0, "{cut:?}");
        // 3 lesion voxels found, the vessel wrongly: 2·3 / (2·3 + 1).
        assert!((cut.dice - 6.0 / 7.0).abs() < 1e-12, "{cut:?}");
        assert_eq!(cut.tuned_on, vec!["study_0001".to_string()]);
    }
}
