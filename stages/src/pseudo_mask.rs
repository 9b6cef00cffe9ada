//! The `pseudo_mask` stage kind: each infected study minus its healed twin, kept inside the
//! lungs, and the slices ranked by how much the twin removed.
//!
//! ```yaml
//! pseudo:
//!   uses: pseudo_mask
//!   needs: [gan, crops]                  # a gan_train stage first, then the crops
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_models::heal_volumes;

use crate::gan_train::{GanInfo, INFO, WEIGHTS};
use crate::masks::{
    Quality, ScoreSet, SliceTable, infected_categories, item_dir, read_crops_of, read_upstream,
    write_scores,
};
use crate::{kernel_device, kernels_for};

/// The `pseudo_mask` stage kind.
pub struct PseudoMaskStage;

/// The `with:` of a `pseudo_mask` stage.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PseudoMaskParams {
    /// Categories to make pseudo-masks for (every item when empty).
    #[serde(default = "infected_categories")]
    pub categories: Vec<String>,
    /// Volumes the generator heals at once (memory grows with it).
    #[serde(default = "batch")]
    pub batch: usize,
}

fn batch() -> usize {
    2
}

impl Stage for PseudoMaskStage {
    type Params = PseudoMaskParams;

    fn kind(&self) -> &'static str {
        "pseudo_mask"
    }

    fn version(&self) -> u32 {
        // 3: writes scores.json.
        // 4: the generator's CPU operations on the host (gan_train version 3): another
        //    summation order.
        // 5: products summed in one order on every CPU (gan_train version 5).
        5
    }

    fn about(&self) -> &'static str {
        "Heals each study of `categories` with a trained gan_train generator (latent noise at \
         its mean, zero) and writes, per item under items/ID/, twin.nii.gz and difference.nii.gz \
         (min-max normalised scan minus twin, inside the lung; on the crop's grid and affine); \
         slices.csv/json (each slice's summed difference, Q1, Q3, and the split: high above Q3, \
         low from Q1 to Q3); quality.json (ROC AUC and best-threshold Dice against lesion masks \
         where the crops have them, pooled over the GAN's held-out items); scores.json (the \
         score file and the items the GAN trained on, for evaluate). Needs the gan_train \
         stage first, then the crops."
    }

    fn check(&self, p: &PseudoMaskParams, decl: &StageDecl) -> Result<(), ParamError> {
        crate::check_range("batch", p.batch, 1..=256, "")?;
        crate::two_inputs(
            self.kind(),
            "[GAN, CROPS] (a gan_train stage, then the crops)",
            decl,
        )
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &PseudoMaskParams, ctx: &TaskContext) -> Result<(), StageError> {
        let gan = ctx
            .inputs
            .first()
            .ok_or("pseudo_mask has no gan_train input")?;
        let info: GanInfo = read_upstream(&gan.dir.join(INFO), "gan_train")?;
        let crops = read_crops_of(&ctx.inputs[1..], &p.categories, self.kind())?;
        if let Some(c) = crops.iter().find(|c| c.shape != info.shape) {
            return Err(format!("{} is {:?} but the GAN was trained on {:?}\n  help: use the crops the GAN was trained on", c.id, c.shape, info.shape).into());
        }
        let scans: Vec<Vec<f32>> = crops
            .iter()
            .map(|c| c.ct.iter().map(|v| v.clamp(0.0, 1.0)).collect())
            .collect();
        let views: Vec<&[f32]> = scans.iter().map(Vec::as_slice).collect();
        let twins = heal_volumes(
            kernel_device(ctx.device),
            &info.recipe,
            &gan.dir.join(WEIGHTS),
            &views,
            info.shape,
            p.batch,
        )?;
        let kernels = kernels_for(ctx.device)?;
        let mut diffs = Vec::with_capacity(crops.len());
        let mut sums = Vec::with_capacity(crops.len());
        for ((crop, scan), twin) in crops.iter().zip(&scans).zip(twins) {
            let (diff, slice_sums) = kernels.pseudo_mask(scan, &twin, &crop.lung, crop.shape);
            sums.push((crop.id.clone(), slice_sums));
            let dir = item_dir(ctx.out_dir, &crop.id)?;
            write_scores(crop, twin, &dir.join("twin.nii.gz"))?;
            write_scores(crop, diff.clone(), &dir.join("difference.nii.gz"))?;
            diffs.push(diff);
        }
        let table = SliceTable::from_sums(sums);
        table.write(ctx.out_dir)?;
        let mut fitted_on = [info.healthy.clone(), info.infected.clone()].concat();
        fitted_on.sort();
        ScoreSet {
            method: "pseudo-mask".into(),
            file: "difference.nii.gz".into(),
            items: crops.iter().map(|c| c.id.clone()).collect(),
            fitted_on,
        }
        .write(ctx.out_dir)?;
        let quality = Quality::judge(&crops, &diffs, &info.holdout);
        quality.write(ctx.out_dir)?;
        ctx.log.line(format!(
            "{} pseudo-masks; slice scores Q1 {:.2}, Q3 {:.2}; {}",
            crops.len(),
            table.q1,
            table.q3,
            quality.summary()
        ));
        Ok(())
    }
}
