//! The `transunet_train` stage kind: trains the 2-D TransUNet on the slices a pseudo_mask stage
//! ranked, with the pseudo-masks as targets (or, for a supervised ceiling, the crops' exact
//! lesion masks), checkpointed in the task's work directory.
//!
//! ```yaml
//! seg:
//!   uses: transunet_train
//!   needs: [pseudo, crops]               # a pseudo_mask stage, then the crops it was made from
//!   with: {contrastive_epochs: 100, joint_epochs: 500, holdout: [study_0003]}
//! ```

use std::collections::BTreeSet;
use std::time::Instant;

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::Volume;
use covflow_models::{
    LossConfig, Plateau, SegData, SegRecipe, SegSlice, SegWeights, TransUNetConfig, train_segmenter,
};
use serde::{Deserialize, Serialize};

use crate::masks::{
    Crop, ScoreSet, SliceClass, SliceTable, read_crops_of, to_zyx, unknown_items, write,
};
use crate::{check_range, kernel_device};

/// The `transunet_train` stage kind.
pub struct TransUNetTrainStage;

/// The weights after the last epoch (safetensors, the reference PyTorch model's names).
pub const LAST: &str = "model.safetensors";
/// The weights of the epoch with the lowest validation loss.
pub const BEST: &str = "best.safetensors";
/// The recipe, grid and split of a training (`SegInfo`).
pub const INFO: &str = "transunet.json";

/// What the network learns to output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The pseudo-masks (scan minus healed twin, negative parts cut to 0): the method.
    PseudoMask,
    /// The crops' exact lesion masks: a supervised ceiling for the self-supervised result.
    Lesion,
}

/// The `with:` of a `transunet_train` stage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransUNetTrainParams {
    /// What the network learns to output.
    #[serde(default = "target")]
    pub target: Target,
    /// Items never trained on or validated on, kept for evaluation (recorded).
    #[serde(default)]
    pub holdout: Vec<String>,
    /// Items whose slices only judge the learning-rate schedule; when empty, the last
    /// `validation_count` training items (by id) are taken.
    #[serde(default)]
    pub validation: Vec<String>,
    /// Validation items picked when `validation` is empty.
    #[serde(default = "validation_count")]
    pub validation_count: usize,
    /// Epochs of the contrastive phase (each: 2 contrastive steps, 1 MSE step).
    #[serde(default = "contrastive_epochs")]
    pub contrastive_epochs: usize,
    /// Epochs of the joint phase (contrastive + MSE + sensitivity).
    #[serde(default = "joint_epochs")]
    pub joint_epochs: usize,
    /// Optimiser steps per joint epoch.
    #[serde(default = "one")]
    pub steps_per_epoch: usize,
    /// "High" slices per batch.
    #[serde(default = "four")]
    pub batch_high: usize,
    /// "Low" slices per batch.
    #[serde(default = "four")]
    pub batch_low: usize,
    /// Adam's initial learning rate.
    #[serde(default = "lr")]
    pub lr: f64,
    /// ReduceLROnPlateau: the factor a stalled rate is multiplied by.
    #[serde(default = "factor")]
    pub lr_factor: f64,
    /// ReduceLROnPlateau: epochs without improvement tolerated.
    #[serde(default = "patience")]
    pub lr_patience: usize,
    /// ReduceLROnPlateau: the lowest rate.
    #[serde(default)]
    pub min_lr: f64,
    /// The network's base width (the reference: 128; every layer scales with it).
    #[serde(default = "channels")]
    pub channels: usize,
    /// Hidden size of the transformer's MLP (the reference: 512).
    #[serde(default = "mlp_dim")]
    pub mlp_dim: usize,
    /// Transformer blocks (the reference: 8).
    #[serde(default = "blocks")]
    pub blocks: usize,
    /// Attention heads (the reference: 4).
    #[serde(default = "four")]
    pub heads: usize,
    /// Seed of every random draw (weights, batches, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Epochs between checkpoints.
    #[serde(default = "checkpoint_every")]
    pub checkpoint_every: usize,
}

fn target() -> Target {
    Target::PseudoMask
}
fn validation_count() -> usize {
    1
}
fn contrastive_epochs() -> usize {
    100
}
fn joint_epochs() -> usize {
    500
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn lr() -> f64 {
    5e-5
}
fn factor() -> f64 {
    0.1
}
fn patience() -> usize {
    10
}
fn channels() -> usize {
    128
}
fn mlp_dim() -> usize {
    512
}
fn blocks() -> usize {
    8
}
fn checkpoint_every() -> usize {
    10
}

/// What `transunet.json` records: how to rebuild the network, on which grid, and the split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegInfo {
    /// The recipe (network, losses, schedule, seed).
    pub recipe: SegRecipe,
    /// What the targets were.
    pub target: Target,
    /// `[D, H, W]` of the volumes the slices came from.
    pub shape: [usize; 3],
    /// Items whose slices trained.
    pub train: Vec<String>,
    /// Items whose slices judged the schedule.
    pub validation: Vec<String>,
    /// Items held out.
    pub holdout: Vec<String>,
    /// Training slices per class: `[high, low]`.
    pub train_slices: [usize; 2],
    /// The epoch whose weights are `best.safetensors`.
    pub best_epoch: usize,
    /// Items whose data fitted this network or the models behind its targets and slice split
    /// (training, validation, and the GAN's training items): what no evaluation may use.
    pub fitted_on: Vec<String>,
}

impl TransUNetTrainParams {
    fn recipe(&self, img_dim: usize) -> SegRecipe {
        SegRecipe {
            config: TransUNetConfig::new()
                .with_img_dim(img_dim)
                .with_out_channels(self.channels)
                .with_mlp_dim(self.mlp_dim)
                .with_block_num(self.blocks)
                .with_head_num(self.heads),
            losses: LossConfig::default(),
            lr: self.lr,
            contrastive_epochs: self.contrastive_epochs,
            joint_epochs: self.joint_epochs,
            steps_per_epoch: self.steps_per_epoch,
            high: self.batch_high,
            low: self.batch_low,
            plateau: Plateau {
                factor: self.lr_factor,
                patience: self.lr_patience,
                min_lr: self.min_lr,
                ..Plateau::default()
            },
            seed: self.seed,
        }
    }
}

/// The slices of `crop` in `table`'s high/low classes, with their targets.
fn slices_of(crop: &Crop, table: &SliceTable, targets: &[f32]) -> impl Iterator<Item = SegSlice> {
    let [_, h, w] = crop.shape;
    let n = h * w;
    table
        .slices
        .iter()
        .filter(move |s| s.item == crop.id && s.class != SliceClass::None)
        .map(move |s| {
            let range = s.slice * n..(s.slice + 1) * n;
            SegSlice {
                image: crop.ct[range.clone()]
                    .iter()
                    .map(|v| v.clamp(0.0, 1.0))
                    .collect(),
                target: targets[range].iter().map(|v| v.clamp(0.0, 1.0)).collect(),
                high: s.class == SliceClass::High,
            }
        })
}

impl Stage for TransUNetTrainStage {
    type Params = TransUNetTrainParams;

    fn kind(&self) -> &'static str {
        "transunet_train"
    }

    fn version(&self) -> u32 {
        // 2: transunet.json records `fitted_on`.
        // 3: convolutions by our unfold (columns ordered as the weight) and, on cubecl backends,
        //    the fused BatchNorm + ReLU: the same network, summed in a different order.
        // 4: the CPU convolutions' products on the `gemm` crate (another summation order).
        // 5: those products summed in one order on every CPU.
        5
    }

    fn about(&self) -> &'static str {
        "Trains the 2-D TransUNet on the high and low slices of a pseudo_mask stage: a \
         contrastive phase (2 contrastive steps + 1 MSE step per epoch), then the joint phase \
         (contrastive + MSE + sensitivity-enhanced BCE); batches of `batch_high` + `batch_low` \
         slices; Adam with ReduceLROnPlateau on the validation items' loss. Targets are the \
         pseudo-masks (negative differences cut to 0) or, with `target: lesion`, the crops' \
         exact lesion masks. Items in `holdout` are never trained or validated on. Checkpoints \
         every `checkpoint_every` epochs in the task's work directory; a killed training \
         resumes from the last one. Writes model.safetensors (last epoch) and best.safetensors \
         (lowest validation loss) under the reference PyTorch model's names, transunet.json \
         (recipe, grid, split) and history.csv/json (losses, validation loss, learning rate). \
         Needs the pseudo_mask stage first, then the crops."
    }

    fn check(&self, p: &TransUNetTrainParams, decl: &StageDecl) -> Result<(), ParamError> {
        check_range(
            "contrastive_epochs",
            p.contrastive_epochs,
            0..=1_000_000,
            "",
        )?;
        check_range("joint_epochs", p.joint_epochs, 0..=1_000_000, "")?;
        if p.contrastive_epochs + p.joint_epochs == 0 {
            return Err(ParamError::field(
                "joint_epochs",
                "no epochs to train: set `contrastive_epochs` or `joint_epochs` above 0",
            ));
        }
        check_range("steps_per_epoch", p.steps_per_epoch, 1..=100_000, "")?;
        // Two of each class: the contrastive loss needs a positive pair for every row.
        check_range("batch_high", p.batch_high, 2..=256, "")?;
        check_range("batch_low", p.batch_low, 2..=256, "")?;
        check_range("lr", p.lr, 1e-9..=1.0, "")?;
        check_range("lr_factor", p.lr_factor, 1e-6..=1.0, "")?;
        check_range("lr_patience", p.lr_patience, 0..=1_000_000, "")?;
        check_range("min_lr", p.min_lr, 0.0..=1.0, "")?;
        check_range("channels", p.channels, 8..=1024, "")?;
        if !p.channels.is_multiple_of(8) {
            return Err(ParamError::field(
                "channels",
                format!(
                    "must be a multiple of 8 (the last decoder has channels / 8; got {})",
                    p.channels
                ),
            ));
        }
        check_range("mlp_dim", p.mlp_dim, 1..=65_536, "")?;
        check_range("blocks", p.blocks, 1..=64, "")?;
        check_range("heads", p.heads, 1..=64, "")?;
        if !(8 * p.channels).is_multiple_of(p.heads) {
            return Err(ParamError::field(
                "heads",
                format!(
                    "must divide the transformer's width 8 × channels = {} (got {})",
                    8 * p.channels,
                    p.heads
                ),
            ));
        }
        check_range("validation_count", p.validation_count, 1..=1_000_000, "")?;
        check_range("checkpoint_every", p.checkpoint_every, 1..=1_000_000, "")?;
        if let Some(v) = p.validation.iter().find(|v| p.holdout.contains(v)) {
            return Err(ParamError::field(
                "validation",
                format!("{v} is also held out; an item is trained, validated or held out, once"),
            ));
        }
        crate::two_inputs(
            self.kind(),
            "[PSEUDO, CROPS] (a pseudo_mask stage, then the crops)",
            decl,
        )
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &TransUNetTrainParams, ctx: &TaskContext) -> Result<(), StageError> {
        let pseudo = ctx
            .inputs
            .first()
            .ok_or("transunet_train has no pseudo_mask input")?;
        let table = SliceTable::read(&pseudo.dir)?;
        let scored: BTreeSet<&str> = table.slices.iter().map(|s| s.item.as_str()).collect();
        let crops: Vec<Crop> = read_crops_of(&ctx.inputs[1..], &[], self.kind())?
            .into_iter()
            .filter(|c| scored.contains(c.id.as_str()))
            .collect();
        for (field, listed) in [("holdout", &p.holdout), ("validation", &p.validation)] {
            let unknown = unknown_items(listed, &crops);
            if !unknown.is_empty() {
                return Err(format!(
                    "`{field}` names items with no pseudo-mask: {unknown:?}\n  help: use ids from the pseudo_mask stage's slices.csv"
                )
                .into());
            }
        }
        let shape = crops.first().ok_or("no crop matches the pseudo_mask stage's items\n  help: the second of `needs` must be the crops the pseudo-masks were made from")?.shape;
        if let Some(c) = crops.iter().find(|c| c.shape != shape) {
            return Err(format!("{} is {:?} but {} is {:?}: the network trains on one grid\n  help: crop every study to the same `shape`", c.id, c.shape, crops[0].id, shape).into());
        }
        let [_, h, w] = shape;
        if h != w || !h.is_multiple_of(16) || h < 32 {
            return Err(format!("slices are {h}×{w}: the TransUNet takes square slices whose side is a multiple of 16 (four halvings) and at least 32\n  help: set the crop stage's `shape` to e.g. [64, 64, 32]").into());
        }
        let mut candidates: Vec<&str> = crops
            .iter()
            .map(|c| c.id.as_str())
            .filter(|id| !p.holdout.iter().any(|h| h == id))
            .collect();
        candidates.sort_unstable();
        let validation: Vec<String> = if p.validation.is_empty() {
            let k = p.validation_count.min(candidates.len().saturating_sub(1));
            candidates[candidates.len() - k..]
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            p.validation.clone()
        };
        let mut info = SegInfo {
            recipe: p.recipe(h),
            target: p.target,
            shape,
            train: Vec::new(),
            validation: validation.clone(),
            holdout: p.holdout.clone(),
            train_slices: [0, 0],
            best_epoch: 0,
            fitted_on: Vec::new(),
        };
        let mut data = SegData {
            size: h,
            train: Vec::new(),
            validation: Vec::new(),
        };
        for crop in &crops {
            if p.holdout.contains(&crop.id) {
                continue;
            }
            let targets = match p.target {
                Target::PseudoMask => {
                    let path = pseudo
                        .dir
                        .join("items")
                        .join(&crop.id)
                        .join("difference.nii.gz");
                    to_zyx(&Volume::read(&path)?.data)
                }
                Target::Lesion => crop.lesion.clone().ok_or_else(|| {
                    format!("{}: no lesion mask, so `target: lesion` cannot train on it\n  help: hold it out, or train on `target: pseudo_mask`", crop.id)
                })?,
            };
            if targets.len() != crop.ct.len() {
                return Err(format!("{}: the pseudo-mask's grid differs from the crop's\n  help: the second of `needs` must be the crops the pseudo_mask stage read", crop.id).into());
            }
            let slices = slices_of(crop, &table, &targets);
            if validation.contains(&crop.id) {
                data.validation.extend(slices);
            } else {
                info.train.push(crop.id.clone());
                data.train.extend(slices);
            }
        }
        let fitted: BTreeSet<String> = ScoreSet::read(&pseudo.dir)?
            .fitted_on
            .into_iter()
            .chain(info.train.iter().cloned())
            .chain(validation.iter().cloned())
            .collect();
        info.fitted_on = fitted.into_iter().collect();
        let highs = data.train.iter().filter(|s| s.high).count();
        info.train_slices = [highs, data.train.len() - highs];
        if highs == 0 || highs == data.train.len() || data.validation.is_empty() {
            return Err(format!(
                "training needs high and low slices and validation slices: {} high, {} low from {:?}, {} validation slices from {:?}\n  help: give the pseudo_mask stage more items, or change `holdout`/`validation`",
                highs, data.train.len() - highs, info.train, data.validation.len(), validation
            ).into());
        }
        let epochs = p.contrastive_epochs + p.joint_epochs;
        ctx.log.line(format!(
            "training on {} slices ({highs} high) of {:?}, validating on {} slices of {:?}, {} held out; {} + {} epochs",
            data.train.len(),
            info.train,
            data.validation.len(),
            validation,
            p.holdout.len(),
            p.contrastive_epochs,
            p.joint_epochs
        ));
        let start = Instant::now();
        let report_every = (epochs / 50).max(1);
        let weights = SegWeights {
            last: ctx.out_dir.join(LAST),
            best: ctx.out_dir.join(BEST),
        };
        let mut said_resumed = false;
        let outcome = train_segmenter(
            kernel_device(ctx.device),
            &info.recipe,
            &data,
            &ctx.work_dir.join("checkpoint"),
            p.checkpoint_every,
            &weights,
            &mut |e, resumed_from| {
                if !said_resumed && resumed_from > 0 {
                    // Said at once, so a long run's log shows it was resumed.
                    ctx.log.line(format!(
                        "resumed from the checkpoint of epoch {resumed_from}"
                    ));
                }
                said_resumed = true;
                if e.epoch.is_multiple_of(report_every) || e.epoch == epochs {
                    let per = start.elapsed().as_secs_f64() / (e.epoch - resumed_from) as f64;
                    let eta = per * (epochs - e.epoch) as f64;
                    let phase = e.phase.name();
                    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
                    ctx.log.progress(format!(
                        "epoch {}/{epochs} ({phase}): contrastive {}, mse {}, sensitivity {}, validation {:.4}, lr {:.1e} ({per:.2} s/epoch, ETA {eta:.0} s)",
                        e.epoch, f(e.contrastive), f(e.mse), f(e.sensitivity), e.validation, e.lr
                    ));
                }
                if let Some(lr) = e.lr_changed_to {
                    ctx.log.line(format!(
                        "epoch {}: validation loss stalled; learning rate {lr:.1e}",
                        e.epoch
                    ));
                }
                !ctx.cancel.is_cancelled()
            },
        )?;
        info.best_epoch = outcome.best_epoch;
        let mut csv =
            String::from("epoch,phase,contrastive,mse,sensitivity,validation,lr,lr_changed_to\n");
        let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        for e in &outcome.history {
            let phase = e.phase.name();
            csv += &format!(
                "{},{phase},{},{},{},{},{},{}\n",
                e.epoch,
                cell(e.contrastive),
                cell(e.mse),
                cell(e.sensitivity),
                e.validation,
                e.lr,
                cell(e.lr_changed_to)
            );
        }
        write(&ctx.out_dir.join("history.csv"), csv.as_bytes())?;
        write(
            &ctx.out_dir.join("history.json"),
            &serde_json::to_vec(&outcome.history)?,
        )?;
        write(&ctx.out_dir.join(INFO), &serde_json::to_vec_pretty(&info)?)?;
        ctx.log.line(format!(
            "best validation loss at epoch {} of {epochs}",
            outcome.best_epoch
        ));
        Ok(())
    }
}
