//! The `gan_curve` stage kind: the GAN's learning curve, measured. Every snapshot a gan_train
//! stage wrote heals the held-out studies, and each twin's pseudo-mask is judged against their
//! lesion masks beside the CT intensity itself, the score any learned one has to beat.
//!
//! ```yaml
//! curve:
//!   uses: gan_curve
//!   needs: [gan, crops]                  # gan_train with `snapshot_every`, then the crops
//! ```

use std::path::Path;

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_models::{heal_volumes, snapshot_name};
use serde::{Deserialize, Serialize};

use crate::gan_train::{GanInfo, INFO, SNAPSHOTS};
use crate::masks::{
    Crop, Quality, infected_categories, lung_intensity, read_crops_of, read_upstream, slice_dice,
    write,
};
use crate::{kernel_device, kernels_for};

/// The `gan_curve` stage kind.
pub struct GanCurveStage;

/// The `with:` of a `gan_curve` stage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GanCurveParams {
    /// Categories of the held-out studies to judge.
    #[serde(default = "infected_categories")]
    pub categories: Vec<String>,
    /// The slice Dice's cut, as the evaluate stage's `threshold`: a voxel is called lesion when
    /// its score is above this share of its slice's maximum inside the lung.
    #[serde(default = "threshold")]
    pub threshold: f64,
    /// Volumes the generator heals at once (memory grows with it).
    #[serde(default = "batch")]
    pub batch: usize,
}

fn threshold() -> f64 {
    0.2
}
fn batch() -> usize {
    2
}

/// One point of the curve: a score judged on the held-out studies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// `generator` (a snapshot's pseudo-masks) or `CT intensity`.
    pub score: String,
    /// The snapshot's iteration; `None` for the CT intensity.
    pub iteration: Option<usize>,
    /// Held-out lung voxels pooled: ROC AUC of the score against the lesion masks.
    pub pooled_auc: Option<f64>,
    /// The same within each held-out study, averaged.
    pub study_auc: Option<f64>,
    /// Lesion against dense healthy tissue (vessels, airway walls) within each study, averaged.
    pub study_dense_auc: Option<f64>,
    /// The best Dice any one cut of the pooled score reaches.
    pub best_dice: f64,
    /// The evaluation's per-slice rule at `threshold`, averaged over the scored slices of every
    /// held-out study.
    pub slice_dice: Option<f64>,
}

impl Stage for GanCurveStage {
    type Params = GanCurveParams;

    fn kind(&self) -> &'static str {
        "gan_curve"
    }

    fn version(&self) -> u32 {
        // 2: the generator's products summed in one order on every CPU (gan_train version 5).
        2
    }

    fn about(&self) -> &'static str {
        "The GAN's learning curve: each generator snapshot of a gan_train stage (its \
         `snapshot_every`) heals the GAN's held-out studies of `categories`, and their \
         pseudo-masks (as pseudo_mask makes them) are judged against the lesion masks: pooled \
         ROC AUC, mean per-study AUC, mean within-study AUC of lesions against dense healthy \
         tissue, best Dice and the evaluation's slice Dice; the CT intensity inside the lung is \
         judged the same way beside them. Writes curve.csv and curve.json. Needs the gan_train \
         stage first, then the crops."
    }

    fn check(&self, p: &GanCurveParams, decl: &StageDecl) -> Result<(), ParamError> {
        crate::check_range("threshold", p.threshold, 0.0..=1.0, "")?;
        crate::check_range("batch", p.batch, 1..=256, "")?;
        crate::two_inputs(
            self.kind(),
            "[GAN, CROPS] (a gan_train stage with `snapshot_every`, then the crops)",
            decl,
        )
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &GanCurveParams, ctx: &TaskContext) -> Result<(), StageError> {
        let gan = ctx
            .inputs
            .first()
            .ok_or("gan_curve has no gan_train input")?;
        let info: GanInfo = read_upstream(&gan.dir.join(INFO), "gan_train")?;
        let crops: Vec<Crop> = read_crops_of(&ctx.inputs[1..], &p.categories, self.kind())?
            .into_iter()
            .filter(|c| c.lesion.is_some() && info.holdout.contains(&c.id))
            .collect();
        if crops.is_empty() {
            return Err(format!("the GAN's holdout {:?} has no study of {:?} with a lesion mask\n  help: hold out infected studies with expert masks in the gan_train stage", info.holdout, p.categories).into());
        }
        let snapshots = snapshot_iterations(&gan.dir.join(SNAPSHOTS))?;
        let kernels = kernels_for(ctx.device)?;
        let scans: Vec<Vec<f32>> = crops
            .iter()
            .map(|c| c.ct.iter().map(|v| v.clamp(0.0, 1.0)).collect())
            .collect();
        let views: Vec<&[f32]> = scans.iter().map(Vec::as_slice).collect();
        let intensity: Vec<Vec<f32>> = crops.iter().map(lung_intensity).collect();
        let mut points = vec![judge(&kernels, &crops, &intensity, None, p, &info)];
        for iteration in snapshots {
            let weights = gan.dir.join(SNAPSHOTS).join(snapshot_name(iteration));
            let twins = heal_volumes(
                kernel_device(ctx.device),
                &info.recipe,
                &weights,
                &views,
                info.shape,
                p.batch,
            )?;
            let diffs: Vec<Vec<f32>> = crops
                .iter()
                .zip(&scans)
                .zip(twins)
                .map(|((c, scan), twin)| kernels.pseudo_mask(scan, &twin, &c.lung, c.shape).0)
                .collect();
            let point = judge(&kernels, &crops, &diffs, Some(iteration), p, &info);
            ctx.log.progress(point.line());
            points.push(point);
        }
        ctx.log.line(points[0].line());
        write_curve(ctx.out_dir, &points)
    }
}

impl CurvePoint {
    /// One line for the task log.
    fn line(&self) -> String {
        let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3}"));
        let at = self
            .iteration
            .map_or(String::new(), |i| format!(" at iteration {i}"));
        format!(
            "{}{at}: pooled AUC {}, per-study AUC {}, lesion vs dense {}, best Dice {:.3}, slice Dice {}",
            self.score,
            f(self.pooled_auc),
            f(self.study_auc),
            f(self.study_dense_auc),
            self.best_dice,
            f(self.slice_dice)
        )
    }
}

/// Judges one score per crop on the held-out crops.
fn judge(
    kernels: &covflow_kernels::Kernels,
    crops: &[Crop],
    scores: &[Vec<f32>],
    iteration: Option<usize>,
    p: &GanCurveParams,
    info: &GanInfo,
) -> CurvePoint {
    let q = Quality::judge(crops, scores, &info.holdout);
    let slice: Vec<f64> = crops
        .iter()
        .zip(scores)
        .filter_map(|(c, s)| slice_dice(kernels, c, s, p.threshold as f32))
        .collect();
    CurvePoint {
        score: if iteration.is_some() {
            "generator"
        } else {
            "CT intensity"
        }
        .into(),
        iteration,
        pooled_auc: q.holdout.and_then(|s| s.roc_auc),
        study_auc: q.holdout_study_auc,
        study_dense_auc: q.holdout_study_dense_auc,
        best_dice: q.holdout.map_or(0.0, |s| s.best_dice),
        slice_dice: (!slice.is_empty()).then(|| slice.iter().sum::<f64>() / slice.len() as f64),
    }
}

/// The iterations of the snapshots in `dir`, in order.
fn snapshot_iterations(dir: &Path) -> Result<Vec<usize>, StageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "{}: {e}\n  help: give the gan_train stage a `snapshot_every`",
            dir.display()
        )
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        let iteration = name
            .strip_prefix("iteration-")
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<usize>().ok());
        found.extend(iteration);
    }
    found.sort_unstable();
    Ok(found)
}

/// Writes curve.csv (one row per point) and curve.json.
fn write_curve(out: &Path, points: &[CurvePoint]) -> Result<(), StageError> {
    let f = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut csv =
        String::from("score,iteration,pooled_auc,study_auc,study_dense_auc,best_dice,slice_dice\n");
    for p in points {
        csv += &format!(
            "{},{},{},{},{},{},{}\n",
            p.score,
            p.iteration.map_or(String::new(), |i| i.to_string()),
            f(p.pooled_auc),
            f(p.study_auc),
            f(p.study_dense_auc),
            p.best_dice,
            f(p.slice_dice)
        );
    }
    write(&out.join("curve.csv"), csv.as_bytes())?;
    write(&out.join("curve.json"), &serde_json::to_vec_pretty(points)?)
}
