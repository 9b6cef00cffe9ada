//! The `naive_mask` stage kind: the baseline every learned mask is compared with, an HU
//! threshold inside the lung, written like a pseudo-mask and judged the same way.
//!
//! ```yaml
//! naive:
//!   uses: naive_mask
//!   needs: [crops]
//!   with: {threshold_hu: -500}
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};

use crate::masks::{
    Quality, ScoreSet, SliceTable, infected_categories, item_dir, read_crops_of, write_scores,
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
        // 3: writes scores.json.
        3
    }

    fn about(&self) -> &'static str {
        "The baseline: per item under items/ID/, difference.nii.gz (the CT inside the lung, its \
         score, 0 outside) and mask.nii.gz (lung voxels above `threshold_hu`); slices.csv/json \
         (lesion voxels per slice and the quartile split, like pseudo_mask); quality.json (ROC \
         AUC and best-threshold Dice of the score against lesion masks, pooled over `holdout`); \
         scores.json (evaluate judges mask.nii.gz). Reads one crop-like stage."
    }

    fn check(&self, p: &NaiveMaskParams, decl: &StageDecl) -> Result<(), ParamError> {
        check_range("threshold_hu", p.threshold_hu, -1100.0..=3000.0, " HU")?;
        one_input(self.kind(), decl)
    }

    fn run(&self, p: &NaiveMaskParams, ctx: &TaskContext) -> Result<(), StageError> {
        let crops = read_crops_of(ctx.inputs, &p.categories, self.kind())?;
        let mut scores = Vec::with_capacity(crops.len());
        let mut masks = Vec::with_capacity(crops.len());
        for crop in &crops {
            let cut = crop.units.from_hu(p.threshold_hu);
            let score: Vec<f32> = crop
                .ct
                .iter()
                .zip(&crop.lung)
                .map(|(v, l)| if *l > 0.5 { *v } else { 0.0 })
                .collect();
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
        ScoreSet {
            method: "naive threshold".into(),
            file: "mask.nii.gz".into(),
            items: crops.iter().map(|c| c.id.clone()).collect(),
            fitted_on: Vec::new(),
        }
        .write(ctx.out_dir)?;
        let quality = Quality::judge(&crops, &scores, &p.holdout);
        quality.write(ctx.out_dir)?;
        ctx.log.line(format!(
            "{} naive masks at {} HU; {}",
            crops.len(),
            p.threshold_hu,
            quality.summary()
        ));
        Ok(())
    }
}
