//! The `predict` stage kind: a trained TransUNet over whole volumes, slice by slice, writing
//! lesion probabilities on each crop's grid and affine.
//!
//! ```yaml
//! prediction:
//!   uses: predict
//!   needs: [seg, crops]                  # a transunet_train stage, then the crops
//!   with: {items: holdout, weights: best}
//! ```

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_models::predict_volumes;
use serde::{Deserialize, Serialize};

use crate::kernel_device;
use crate::masks::{
    Quality, ScoreSet, item_dir, read_crops_of, read_upstream, write, write_scores,
};
use crate::transunet_train::{BEST, INFO, LAST, SegInfo, Target};

/// The network's output per item: what evaluate judges.
const LOGITS: &str = "logits.nii.gz";

/// The `predict` stage kind.
pub struct PredictStage;

/// Which of a training's weights predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// The epoch with the lowest validation loss.
    Best,
    /// The last epoch.
    Last,
}

/// Which items are predicted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Items {
    /// `holdout` (the training's held-out items) or `all` (every crop).
    Named(ItemSet),
    /// These item ids.
    List(Vec<String>),
}

/// A named selection of items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemSet {
    /// The items the training held out.
    Holdout,
    /// Every crop.
    All,
}

/// The `with:` of a `predict` stage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictParams {
    /// Which items: `holdout`, `all`, or a list of ids.
    #[serde(default = "holdout")]
    pub items: Items,
    /// Which weights: `best` (lowest validation loss) or `last`.
    #[serde(default = "best")]
    pub weights: Weights,
    /// Slices per forward pass (memory grows with it).
    #[serde(default = "batch")]
    pub batch: usize,
}

fn holdout() -> Items {
    Items::Named(ItemSet::Holdout)
}
fn best() -> Weights {
    Weights::Best
}
fn batch() -> usize {
    16
}

/// What `predict.json` records.
#[derive(Debug, Serialize)]
struct PredictInfo<'a> {
    weights: Weights,
    items: Vec<&'a str>,
    /// The training's split, so a reader sees whether an item was trained on.
    trained_on: &'a [String],
}

impl Stage for PredictStage {
    type Params = PredictParams;

    fn kind(&self) -> &'static str {
        "predict"
    }

    fn version(&self) -> u32 {
        // 2: writes scores.json and logits.nii.gz.
        // 3: the network's convolutions and BatchNorm as transunet_train version 3 computes them.
        // 4: the CPU convolutions' products as transunet_train version 4 computes them.
        // 5: as transunet_train version 5 computes them.
        5
    }

    fn about(&self) -> &'static str {
        "Runs a transunet_train stage's network (`weights`: best or last) over each selected \
         crop slice by slice, `batch` slices at a time, and writes items/ID/logits.nii.gz (the \
         network's output, which evaluate thresholds at a share of each slice's maximum as the \
         original did) and items/ID/probability.nii.gz (its sigmoid), both on the crop's grid and \
         affine; predict.json; quality.json (ROC \
         AUC and best-threshold Dice against lesion masks where the crops have them, pooled over \
         the training's held-out items, as pseudo_mask judges), and scores.json (for evaluate: \
         the items that fitted the network or its targets). `items`: \
         holdout (the training's held-out items, the default), all, or a list. Needs the \
         transunet_train stage first, then the crops."
    }

    fn check(&self, p: &PredictParams, decl: &StageDecl) -> Result<(), ParamError> {
        crate::check_range("batch", p.batch, 1..=4096, "")?;
        crate::two_inputs(
            self.kind(),
            "[TRAINING, CROPS] (a transunet_train stage, then the crops)",
            decl,
        )
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &PredictParams, ctx: &TaskContext) -> Result<(), StageError> {
        let seg = ctx
            .inputs
            .first()
            .ok_or("predict has no transunet_train input")?;
        let info: SegInfo = read_upstream(&seg.dir.join(INFO), "transunet_train")?;
        let wanted: Option<&[String]> = match &p.items {
            Items::Named(ItemSet::Holdout) => Some(&info.holdout),
            Items::Named(ItemSet::All) => None,
            Items::List(ids) => Some(ids),
        };
        let crops: Vec<_> = read_crops_of(&ctx.inputs[1..], &[], self.kind())?
            .into_iter()
            .filter(|c| wanted.is_none_or(|w| w.contains(&c.id)))
            .collect();
        if let Some(w) = wanted
            && let Some(missing) = w.iter().find(|id| !crops.iter().any(|c| &c.id == *id))
        {
            return Err(format!("{missing}: no such item among the crops\n  help: list ids of the second `needs` stage (`covflow plan` shows them)").into());
        }
        if crops.is_empty() {
            return Err("no items to predict\n  help: the training held nothing out; set `items: all` or list ids".into());
        }
        if let Some(c) = crops.iter().find(|c| c.shape != info.shape) {
            return Err(format!("{} is {:?} but the network was trained on {:?}\n  help: predict on crops of the training's grid", c.id, c.shape, info.shape).into());
        }
        let scans: Vec<Vec<f32>> = crops
            .iter()
            .map(|c| c.ct.iter().map(|v| v.clamp(0.0, 1.0)).collect())
            .collect();
        let views: Vec<&[f32]> = scans.iter().map(Vec::as_slice).collect();
        let weights = seg.dir.join(match p.weights {
            Weights::Best => BEST,
            Weights::Last => LAST,
        });
        let logits = predict_volumes(
            kernel_device(ctx.device),
            &info.recipe.config,
            &weights,
            &views,
            info.shape,
            p.batch,
        )?;
        let mut probabilities = Vec::with_capacity(logits.len());
        for (crop, logits) in crops.iter().zip(logits) {
            let dir = item_dir(ctx.out_dir, &crop.id)?;
            let probability: Vec<f32> = logits.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            write_scores(crop, logits, &dir.join(LOGITS))?;
            write_scores(crop, probability.clone(), &dir.join("probability.nii.gz"))?;
            probabilities.push(probability);
        }
        // Judged the way pseudo_mask and naive_mask judge theirs, so the three compare.
        let quality = Quality::judge(&crops, &probabilities, &info.holdout);
        quality.write(ctx.out_dir)?;
        let trained: Vec<&str> = crops
            .iter()
            .map(|c| c.id.as_str())
            .filter(|id| info.train.iter().any(|t| t == id))
            .collect();
        if !trained.is_empty() {
            ctx.log.line(format!(
                "warning: {trained:?} trained the network; their predictions do not measure generalisation"
            ));
        }
        ScoreSet {
            method: match info.target {
                Target::PseudoMask => "TransUNet",
                Target::Lesion => "TransUNet, supervised",
            }
            .into(),
            file: LOGITS.into(),
            items: crops.iter().map(|c| c.id.clone()).collect(),
            fitted_on: info.fitted_on.clone(),
        }
        .write(ctx.out_dir)?;
        let record = PredictInfo {
            weights: p.weights,
            items: crops.iter().map(|c| c.id.as_str()).collect(),
            trained_on: &info.train,
        };
        write(
            &ctx.out_dir.join("predict.json"),
            &serde_json::to_vec_pretty(&record)?,
        )?;
        ctx.log.line(format!(
            "{} volumes predicted with the {} weights; {}",
            crops.len(),
            match p.weights {
                Weights::Best => "best-validation",
                Weights::Last => "last-epoch",
            },
            quality.summary()
        ));
        Ok(())
    }
}
