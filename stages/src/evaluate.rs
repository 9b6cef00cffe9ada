//! The `evaluate` stage kind: every method's lesion scores against the expert masks, on items no
//! model behind those scores was fitted on, with the original's per-slice definitions
//! (docs/method.md, stage 8) and without its defects (a `max` over pixels, evaluating on the
//! training cases).
//!
//! ```yaml
//! evaluation:
//!   uses: evaluate
//!   needs: [prediction, pseudo, naive, crops]   # scoring stages, then the crops with lesion masks
//!   with: {items: [study_0003, study_0006], threshold: 0.2}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use covflow_engine::{Input, ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::Volume;
use covflow_imaging::metrics::{MeanStd, SliceCounts, slice_counts};
use serde::{Deserialize, Serialize};

use crate::kernels_for;
use crate::masks::{Crop, ScoreSet, read_crops_of, to_zyx, write};

/// The `evaluate` stage kind.
pub struct EvaluateStage;

/// The items an evaluation judges.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum EvalItems {
    /// `masked`: every crop with a lesion mask.
    Named(EvalSet),
    /// These item ids.
    List(Vec<String>),
}

/// A named selection of evaluation items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvalSet {
    /// Every crop with a lesion mask.
    Masked,
}

/// The `with:` of an `evaluate` stage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The evaluation split: item ids, or `masked` (every crop with a lesion mask). No item may
    /// have fitted a model behind any method's scores (an error, not a warning).
    pub items: EvalItems,
    /// A slice's prediction is `score > threshold · max(score over the slice)`.
    #[serde(default = "threshold")]
    pub threshold: f64,
    /// Drop predictions outside the lung mask (the maximum is then the lung's): lesions lie in
    /// the lung, and the mask stages score only there already. `false` is the original's rule.
    #[serde(default = "within_lung")]
    pub within_lung: bool,
    /// Edges of the infection-% bins the summary groups slices by (increasing, from 1).
    #[serde(default = "infection_bins")]
    pub infection_bins: Vec<f64>,
}

fn threshold() -> f64 {
    0.2
}
fn within_lung() -> bool {
    true
}
fn infection_bins() -> Vec<f64> {
    vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0]
}

/// One slice of one item as one method scored it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    /// The method's stage.
    pub stage: String,
    /// The item.
    pub item: String,
    /// The item's CT category, when its dataset has one.
    pub category: Option<String>,
    /// z index on the crop's grid.
    pub slice: usize,
    /// Its counts.
    pub counts: SliceCounts,
    /// 100 · lesion / lung.
    pub infection_percent: f64,
    /// Whether the 1 % rule scores the slice (only those enter the means).
    pub scored: bool,
    /// Dice, sensitivity, specificity of the slice.
    pub dice: f64,
    /// See `dice`.
    pub sensitivity: f64,
    /// See `dice`.
    pub specificity: f64,
}

/// One item as one method scored it, all slices together (3-D).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The method's stage.
    pub stage: String,
    /// The item.
    pub item: String,
    /// The item's CT category.
    pub category: Option<String>,
    /// 100 · lesion / lung over the volume.
    pub infection_percent: f64,
    /// Slices the 1 % rule scores.
    pub scored_slices: usize,
    /// 3-D Dice, sensitivity, specificity.
    pub dice: f64,
    /// See `dice`.
    pub sensitivity: f64,
    /// See `dice`.
    pub specificity: f64,
}

/// Mean ± std of the slice metrics of a group of scored slices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The group (`1–5 %`, `CT-1`, …).
    pub label: String,
    /// Slice Dice.
    pub dice: MeanStd,
    /// Slice sensitivity.
    pub sensitivity: MeanStd,
    /// Slice specificity.
    pub specificity: MeanStd,
}

impl Group {
    fn of<'a>(label: String, slices: impl Iterator<Item = &'a SliceRecord> + Clone) -> Self {
        Group {
            label,
            dice: MeanStd::of(slices.clone().map(|s| s.dice)),
            sensitivity: MeanStd::of(slices.clone().map(|s| s.sensitivity)),
            specificity: MeanStd::of(slices.map(|s| s.specificity)),
        }
    }
}

/// One method's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    /// The method's stage.
    pub stage: String,
    /// The method (`TransUNet`, `pseudo-mask`, …).
    pub method: String,
    /// All scored slices.
    pub slices: Group,
    /// Per-volume 3-D Dice over the items.
    pub volume_dice: MeanStd,
    /// Scored slices by infection %.
    pub by_infection: Vec<Group>,
    /// Scored slices by CT category.
    pub by_category: Vec<Group>,
}

/// What `summary.json` holds: the numbers to compare between runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The cut, a share of each slice's maximum.
    pub threshold: f64,
    /// Whether predictions were kept to the lung.
    pub within_lung: bool,
    /// The evaluation items.
    pub items: Vec<String>,
    /// The edges of the infection-% bins.
    pub infection_bins: Vec<f64>,
    /// Every method, in `needs` order.
    pub methods: Vec<MethodSummary>,
}

/// The file name of [`Summary`].
pub const SUMMARY: &str = "summary.json";
/// The file name of the per-slice records (JSON).
pub const SLICES: &str = "slices.json";

impl Summary {
    /// Reads the summary an evaluate stage wrote in `dir`.
    pub fn read(dir: &Path) -> Result<Self, StageError> {
        crate::masks::read_upstream(&dir.join(SUMMARY), "evaluate")
    }
}

impl Stage for EvaluateStage {
    type Params = EvaluateParams;

    fn kind(&self) -> &'static str {
        "evaluate"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Judges every scoring stage of `needs` (predict, pseudo_mask, naive_mask; the last of \
         `needs` is the crops with the lesion masks) on `items`, which none of them was fitted \
         on (an error otherwise). Per slice: prediction = score > `threshold` · the slice's \
         maximum (over the lung only, with `within_lung`); Dice, sensitivity, specificity where \
         the lesion covers more than 1 % of the \
         slice; infection % = 100 · lesion / lung. Writes slices.csv/json (every slice), \
         volumes.csv (per-item 3-D Dice, sensitivity, specificity) and summary.json (mean ± std \
         over scored slices, per-volume Dice, by infection-% bin and by CT category). The \
         counts come from one kernel pass per volume."
    }

    fn check(&self, p: &EvaluateParams, decl: &StageDecl) -> Result<(), ParamError> {
        check_threshold(p.threshold)?;
        let bins = &p.infection_bins;
        if bins.len() < 2
            || bins
                .windows(2)
                .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_ge()))
            || bins[0] < 0.0
            || bins[bins.len() - 1] > 100.0
        {
            return Err(ParamError::field(
                "infection_bins",
                format!("needs at least two increasing edges within 0..=100 (got {bins:?})"),
            ));
        }
        if let EvalItems::List(ids) = &p.items
            && ids.is_empty()
        {
            return Err(ParamError::field(
                "items",
                "is empty: list the held-out items, or write `masked`",
            ));
        }
        if decl.needs.len() < 2 {
            return Err(ParamError::decl(
                "needs",
                "evaluate reads one or more scoring stages (predict, pseudo_mask, naive_mask), then the crops with the lesion masks",
            ));
        }
        Ok(())
    }

    fn run(&self, p: &EvaluateParams, ctx: &TaskContext) -> Result<(), StageError> {
        let (methods, crop_inputs) = split_inputs(ctx.inputs)?;
        let crops = read_crops_of(&crop_inputs, &[], self.kind())?;
        let items = evaluation_items(&p.items, &crops)?;
        let sets: Vec<(&Input, ScoreSet)> = methods
            .iter()
            .map(|i| Ok((*i, ScoreSet::read(&i.dir)?)))
            .collect::<Result<_, StageError>>()?;
        for (input, set) in &sets {
            let leaked: Vec<&String> = items.iter().filter(|i| set.fitted_on.contains(i)).collect();
            if !leaked.is_empty() {
                return Err(format!(
                    "{leaked:?}: `{}` ({}) was fitted on them, so judging it there measures memory, not generalisation\n  help: take them out of evaluate's `items`, or hold them out of every training upstream of `{}` (its `holdout`)",
                    input.stage, set.method, input.stage
                )
                .into());
            }
        }
        let kernels = kernels_for(ctx.device)?;
        let mut slices = Vec::new();
        let mut volumes = Vec::new();
        for (input, set) in &sets {
            for crop in crops.iter().filter(|c| items.contains(&c.id)) {
                let lesion = crop.lesion.as_ref().ok_or_else(|| {
                    format!("{}: no lesion mask to evaluate against\n  help: evaluate only items with expert masks (`items: masked`)", crop.id)
                })?;
                let mut score = read_score(input, set, crop)?;
                if p.within_lung {
                    // Below any score: never above a share of the slice's maximum, which is
                    // then taken over the lung (a slice without lung predicts nothing).
                    for (s, l) in score.iter_mut().zip(&crop.lung) {
                        if *l <= 0.5 {
                            *s = f32::MIN;
                        }
                    }
                }
                let counts = slice_counts(
                    &kernels,
                    &score,
                    lesion,
                    &crop.lung,
                    crop.shape,
                    p.threshold as f32,
                );
                let records: Vec<SliceRecord> = counts
                    .iter()
                    .enumerate()
                    .map(|(z, c)| SliceRecord {
                        stage: input.stage.clone(),
                        item: crop.id.clone(),
                        category: crop.category.clone(),
                        slice: z,
                        counts: *c,
                        infection_percent: c.infection_percent(),
                        scored: c.scored(),
                        dice: c.dice(),
                        sensitivity: c.sensitivity(),
                        specificity: c.specificity(),
                    })
                    .collect();
                let total = SliceCounts::sum(&counts);
                volumes.push(VolumeRecord {
                    stage: input.stage.clone(),
                    item: crop.id.clone(),
                    category: crop.category.clone(),
                    infection_percent: total.infection_percent(),
                    scored_slices: records.iter().filter(|r| r.scored).count(),
                    dice: total.dice(),
                    sensitivity: total.sensitivity(),
                    specificity: total.specificity(),
                });
                slices.extend(records);
            }
        }
        let summary = Summary {
            threshold: p.threshold,
            within_lung: p.within_lung,
            items: items.clone(),
            infection_bins: p.infection_bins.clone(),
            methods: sets
                .iter()
                .map(|(input, set)| summarise(input, set, &slices, &volumes, &p.infection_bins))
                .collect(),
        };
        write_tables(ctx.out_dir, &slices, &volumes)?;
        write(
            &ctx.out_dir.join(SUMMARY),
            &serde_json::to_vec_pretty(&summary)?,
        )?;
        for m in &summary.methods {
            ctx.log.line(format!(
                "{} ({}): Dice {}, sensitivity {}, specificity {} over {} slices; volume Dice {}",
                m.method,
                m.stage,
                pm(&m.slices.dice),
                pm(&m.slices.sensitivity),
                pm(&m.slices.specificity),
                m.slices.dice.n,
                pm(&m.volume_dice),
            ));
        }
        Ok(())
    }
}

/// Checks a share of the slice maximum.
fn check_threshold(t: f64) -> Result<(), ParamError> {
    crate::check_range("threshold", t, 0.0..=1.0, "")
}

/// `mean ± std` with three decimals, `n/a` without values.
pub fn pm(m: &MeanStd) -> String {
    if m.n == 0 {
        "n/a".into()
    } else {
        format!("{:.3} ± {:.3}", m.mean, m.std)
    }
}

/// The scoring inputs (one per stage, in `needs` order) and the crop inputs (the last stage's).
fn split_inputs(inputs: &[Input]) -> Result<(Vec<&Input>, Vec<Input>), StageError> {
    let last = inputs.last().ok_or("evaluate has no inputs")?.stage.clone();
    let crops: Vec<Input> = inputs.iter().filter(|i| i.stage == last).cloned().collect();
    if crops.iter().any(|i| i.item.is_none()) {
        return Err(format!("`{last}`, the last of `needs`, is not a stage of items\n  help: the last of `needs` must be the crops (a stage with `foreach`)").into());
    }
    let methods: Vec<&Input> = inputs.iter().filter(|i| i.stage != last).collect();
    if let Some(i) = methods.iter().find(|i| i.item.is_some()) {
        return Err(format!("`{}` is a stage of items, not a scoring stage\n  help: `needs` lists predict, pseudo_mask or naive_mask stages, then the crops last", i.stage).into());
    }
    Ok((methods, crops))
}

/// The evaluation items, checked against the crops.
fn evaluation_items(items: &EvalItems, crops: &[Crop]) -> Result<Vec<String>, StageError> {
    let ids: Vec<String> = match items {
        EvalItems::Named(EvalSet::Masked) => crops
            .iter()
            .filter(|c| c.lesion.is_some())
            .map(|c| c.id.clone())
            .collect(),
        EvalItems::List(ids) => ids.clone(),
    };
    let unknown = crate::masks::unknown_items(&ids, crops);
    if !unknown.is_empty() {
        return Err(format!("`items` names {unknown:?}, which the crops do not have\n  help: use ids of the last `needs` stage (`covflow plan` lists them)").into());
    }
    if ids.is_empty() {
        return Err("no crop has a lesion mask to evaluate against\n  help: evaluate needs expert masks (phantoms carry exact ones; MosMed's are in masks/)".into());
    }
    Ok(ids)
}

/// The method's score volume of one crop, `[D, H, W]`.
fn read_score(input: &Input, set: &ScoreSet, crop: &Crop) -> Result<Vec<f32>, StageError> {
    let path = input.dir.join("items").join(&crop.id).join(&set.file);
    if !path.exists() {
        return Err(format!(
            "`{}` has no score for {} ({})\n  help: make `{}` score it (a predict stage's `items`, a mask stage's `categories`)",
            input.stage,
            crop.id,
            path.display(),
            input.stage
        )
        .into());
    }
    let v = Volume::read(&path)?;
    let score = to_zyx(&v.data);
    if score.len() != crop.ct.len() {
        return Err(format!("{}: its grid differs from the crop's {:?}\n  help: the last of `needs` must be the crops `{}` scored", path.display(), crop.shape, input.stage).into());
    }
    Ok(score)
}

fn summarise(
    input: &Input,
    set: &ScoreSet,
    slices: &[SliceRecord],
    volumes: &[VolumeRecord],
    bins: &[f64],
) -> MethodSummary {
    let scored = slices.iter().filter(|s| s.stage == input.stage && s.scored);
    let by_infection = bins
        .windows(2)
        .map(|w| {
            Group::of(
                format!("{}–{} %", w[0], w[1]),
                scored
                    .clone()
                    .filter(move |s| s.infection_percent > w[0] && s.infection_percent <= w[1]),
            )
        })
        .collect();
    let mut categories = BTreeMap::<String, Vec<&SliceRecord>>::new();
    for s in scored.clone() {
        let c = s.category.clone().unwrap_or_else(|| "none".into());
        categories.entry(c).or_default().push(s);
    }
    MethodSummary {
        stage: input.stage.clone(),
        method: set.method.clone(),
        slices: Group::of("all".into(), scored.clone()),
        volume_dice: MeanStd::of(
            volumes
                .iter()
                .filter(|v| v.stage == input.stage)
                .map(|v| v.dice),
        ),
        by_infection,
        by_category: categories
            .into_iter()
            .map(|(c, s)| Group::of(c, s.into_iter()))
            .collect(),
    }
}

fn write_tables(
    out: &Path,
    slices: &[SliceRecord],
    volumes: &[VolumeRecord],
) -> Result<(), StageError> {
    let mut csv = String::from(
        "stage,item,category,slice,tp,fp,fn,tn,lung,lesion,infection_percent,scored,dice,sensitivity,specificity\n",
    );
    for s in slices {
        let c = &s.counts;
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            s.stage,
            s.item,
            s.category.as_deref().unwrap_or(""),
            s.slice,
            c.tp,
            c.fp,
            c.fn_,
            c.tn,
            c.lung,
            c.lesion(),
            s.infection_percent,
            s.scored,
            s.dice,
            s.sensitivity,
            s.specificity
        );
    }
    write(&out.join("slices.csv"), csv.as_bytes())?;
    write(&out.join(SLICES), &serde_json::to_vec(slices)?)?;
    let mut csv = String::from(
        "stage,item,category,infection_percent,scored_slices,dice,sensitivity,specificity\n",
    );
    for v in volumes {
        csv += &format!(
            "{},{},{},{},{},{},{},{}\n",
            v.stage,
            v.item,
            v.category.as_deref().unwrap_or(""),
            v.infection_percent,
            v.scored_slices,
            v.dice,
            v.sensitivity,
            v.specificity
        );
    }
    write(&out.join("volumes.csv"), csv.as_bytes())?;
    write(&out.join("volumes.json"), &serde_json::to_vec(volumes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(
        stage: &str,
        category: &str,
        infection: f64,
        lesion: u64,
        dice_tp: u64,
    ) -> SliceRecord {
        // 10 000 pixels, so 1 % is 100 lesion pixels.
        let counts = SliceCounts {
            tp: dice_tp,
            fp: 0,
            fn_: lesion - dice_tp,
            tn: 10_000 - lesion,
            lung: 5_000,
        };
        SliceRecord {
            stage: stage.into(),
            item: "study_0001".into(),
            category: Some(category.into()),
            slice: 0,
            counts,
            infection_percent: infection,
            scored: counts.scored(),
            dice: counts.dice(),
            sensitivity: counts.sensitivity(),
            specificity: counts.specificity(),
        }
    }

    #[test]
    fn summaries_average_scored_slices_only_by_bin_and_category() {
        let input = Input {
            stage: "naive".into(),
            item: None,
            attrs: Default::default(),
            dir: Default::default(),
        };
        let set = ScoreSet {
            method: "naive threshold".into(),
            file: "mask.nii.gz".into(),
            items: vec!["study_0001".into()],
            fitted_on: vec![],
        };
        let slices = vec![
            // Scored: half the lesion found (Dice 2/3), in 1–5 % and CT-1.
            slice("naive", "CT-1", 4.0, 200, 100),
            // Scored: all found (Dice 1), in 25–50 % and CT-2.
            slice("naive", "CT-2", 30.0, 1_500, 1_500),
            // Not scored (100 of 10 000 pixels is not more than 1 %): left out of every mean.
            slice("naive", "CT-2", 2.0, 100, 0),
            // Another method's slice.
            slice("pseudo", "CT-1", 4.0, 200, 0),
        ];
        let m = summarise(&input, &set, &slices, &[], &infection_bins());
        assert_eq!(m.slices.dice.n, 2);
        assert!((m.slices.dice.mean - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        let bin = |label: &str| m.by_infection.iter().find(|g| g.label == label).unwrap();
        assert_eq!(bin("1–5 %").dice.n, 1);
        assert!((bin("1–5 %").sensitivity.mean - 0.5).abs() < 1e-12);
        assert_eq!(bin("25–50 %").dice.n, 1);
        assert_eq!(bin("5–10 %").dice.n, 0);
        let labels: Vec<&str> = m.by_category.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["CT-1", "CT-2"]);
        assert_eq!(
            m.by_category[1].dice.n, 1,
            "the unscored CT-2 slice is left out"
        );
    }
}
