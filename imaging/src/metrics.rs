//! Overlap metrics between binary masks: one home for every stage that scores a mask.

/// Dice overlap of two binary masks, 2|A∩B| / (|A| + |B|) (1 when both are empty).
///
/// ```
/// let d = covflow_imaging::metrics::dice([true, true, false], [true, false, false]);
/// assert!((d - 2.0 / 3.0).abs() < 1e-12);
/// assert_eq!(covflow_imaging::metrics::dice([false], [false]), 1.0);
/// ```
pub fn dice(a: impl IntoIterator<Item = bool>, b: impl IntoIterator<Item = bool>) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (x, y) in a.into_iter().zip(b) {
        both += (x && y) as usize;
        total += x as usize + y as usize;
    }
    if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    }
}

/// The shape of a lesion mask as the comparison with MosMedData's expert masks counts it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LesionStats {
    /// Lesion volume, ml.
    pub volume_ml: f64,
    /// Connected components in 3-D (6-connectivity, scipy's default).
    pub components: usize,
    /// Volume of the largest component, ml.
    pub largest_ml: f64,
    /// Slices (along the third axis) with any lesion voxel.
    pub slices_with_lesion: usize,
    /// Slices in all.
    pub slices: usize,
}

/// [`LesionStats`] of `mask` (non-zero = lesion) on voxels of `spacing` mm.
///
/// ```
/// use covflow_imaging::metrics::lesion_stats;
/// let mut m = ndarray::Array3::<u8>::zeros((4, 4, 3));
/// m[[0, 0, 0]] = 1;
/// m[[0, 1, 0]] = 1; // joined to the first
/// m[[3, 3, 2]] = 1; // a second component
/// let s = lesion_stats(&covflow_imaging::Kernels::Cpu, &m, [1.0, 1.0, 10.0]);
/// assert_eq!((s.components, s.slices_with_lesion, s.slices), (2, 2, 3));
/// assert!((s.volume_ml - 0.03).abs() < 1e-12 && (s.largest_ml - 0.02).abs() < 1e-12);
/// ```
pub fn lesion_stats(
    kernels: &covflow_kernels::Kernels,
    mask: &ndarray::Array3<u8>,
    spacing: [f64; 3],
) -> LesionStats {
    let (d0, d1, d2) = mask.dim();
    let flat: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
    let labels = kernels.label_components(&flat, [d0, d1, d2], [true; 3]);
    let mut sizes = std::collections::HashMap::<u32, usize>::new();
    for &l in labels.iter().filter(|&&l| l != covflow_kernels::BACKGROUND) {
        *sizes.entry(l).or_default() += 1;
    }
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    let voxels: usize = sizes.values().sum();
    let slices_with_lesion = (0..d2)
        .filter(|&k| mask.index_axis(ndarray::Axis(2), k).iter().any(|&v| v != 0))
        .count();
    LesionStats {
        volume_ml: voxels as f64 * voxel_ml,
        components: sizes.len(),
        largest_ml: sizes.values().max().copied().unwrap_or(0) as f64 * voxel_ml,
        slices_with_lesion,
        slices: d2,
    }
}

/// How well a voxel score separates lesion from healthy lung, before any threshold is chosen:
/// the score of a pseudo-mask or of a baseline against a known lesion mask.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Separation {
    /// Area under the ROC curve: the probability that a random lesion voxel scores above a
    /// random healthy one (ties count half); `None` without voxels of both classes.
    pub roc_auc: Option<f64>,
    /// The best Dice of `score > t` over every threshold `t`.
    pub best_dice: f64,
    /// The threshold that reaches it (the mask is `score > threshold`).
    pub best_threshold: f64,
    /// Lesion voxels and all voxels scored.
    pub positives: usize,
    /// See `positives`.
    pub voxels: usize,
}

/// ROC AUC and best-threshold Dice of `(score, is_lesion)` pairs, exact (one sort, ties
/// grouped), so that a pseudo-mask and a baseline are judged the same way.
///
/// ```
/// use covflow_imaging::metrics::separation;
/// let s = separation(vec![(0.9, true), (0.8, true), (0.3, false), (0.1, false)]);
/// assert_eq!(s.roc_auc, Some(1.0));
/// assert_eq!(s.best_dice, 1.0);
/// assert!(s.best_threshold >= 0.3 && s.best_threshold < 0.8);
/// ```
pub fn separation(mut scored: Vec<(f32, bool)>) -> Separation {
    // Descending score; NaN last (never predicted).
    scored.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or_else(|| a.0.is_nan().cmp(&b.0.is_nan()))
    });
    let positives = scored.iter().filter(|s| s.1).count();
    let negatives = scored.len() - positives;
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut auc2, mut best_dice, mut best_threshold) = (0u128, 0.0f64, f64::INFINITY);
    if positives > 0 {
        // Predicting nothing: Dice 0.
        best_threshold = scored.first().map_or(f64::INFINITY, |s| s.0 as f64);
    }
    let mut i = 0;
    while i < scored.len() {
        let value = scored[i].0;
        let (mut tp_group, mut fp_group) = (0usize, 0usize);
        while i < scored.len() && (scored[i].0 == value || (value.is_nan() && scored[i].0.is_nan()))
        {
            if scored[i].1 {
                tp_group += 1
            } else {
                fp_group += 1
            }
            i += 1;
        }
        // Trapezoid in units of ½: each healthy voxel in the group is beaten by every lesion
        // voxel above it and ties with the group's.
        auc2 += fp_group as u128 * (2 * tp as u128 + tp_group as u128);
        tp += tp_group;
        fp += fp_group;
        if value.is_nan() {
            break;
        }
        let dice = 2.0 * tp as f64 / (2 * tp + fp + (positives - tp)) as f64;
        if dice > best_dice {
            best_dice = dice;
            // `score > t` keeps this group: the next lower score (or below this one).
            let next = scored.get(i).map_or(value - 1.0, |s| s.0);
            best_threshold = if next.is_nan() {
                value as f64 - 1.0
            } else {
                next as f64
            };
        }
    }
    let roc_auc = (positives > 0 && negatives > 0)
        .then(|| auc2 as f64 / (2.0 * positives as f64 * negatives as f64));
    Separation {
        roc_auc,
        best_dice,
        best_threshold,
        positives,
        voxels: scored.len(),
    }
}

/// One slice's confusion counts as the evaluation reads them (docs/method.md, stage 8): the
/// prediction is `score > threshold · max(score over the slice)`, the truth a lesion mask; counts
/// over the whole slice, and the slice's lung pixels for its infection %.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceCounts {
    /// Predicted and lesion.
    pub tp: u64,
    /// Predicted, not lesion.
    pub fp: u64,
    /// Lesion, not predicted.
    pub fn_: u64,
    /// Neither.
    pub tn: u64,
    /// Lung pixels.
    pub lung: u64,
}

impl SliceCounts {
    /// Pixels in the slice.
    pub fn pixels(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }

    /// Lesion pixels.
    pub fn lesion(&self) -> u64 {
        self.tp + self.fn_
    }

    /// Whether the slice is scored: its lesion covers more than 1 % of it (the original's rule:
    /// more than 163 pixels of 128²).
    pub fn scored(&self) -> bool {
        100 * self.lesion() > self.pixels()
    }

    /// 2|P ∩ T| / (|P| + |T|); 1 when both are empty.
    pub fn dice(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// |P ∩ T| / |T|; 1 when there is no lesion.
    pub fn sensitivity(&self) -> f64 {
        ratio(self.tp, self.lesion())
    }

    /// |P̄ ∩ T̄| / |T̄|; 1 when everything is lesion.
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp)
    }

    /// 100 · |lesion| / |lung| (0 without lung).
    pub fn infection_percent(&self) -> f64 {
        if self.lung == 0 {
            0.0
        } else {
            100.0 * self.lesion() as f64 / self.lung as f64
        }
    }

    /// The counts of several slices together (a volume's 3-D Dice reads the sum).
    pub fn sum<'a>(slices: impl IntoIterator<Item = &'a SliceCounts>) -> SliceCounts {
        slices
            .into_iter()
            .fold(SliceCounts::default(), |a, s| SliceCounts {
                tp: a.tp + s.tp,
                fp: a.fp + s.fp,
                fn_: a.fn_ + s.fn_,
                tn: a.tn + s.tn,
                lung: a.lung + s.lung,
            })
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The per-slice counts of a `[d, h, w]` score volume against its lesion and lung masks (> 0.5 is
/// inside), the prediction thresholded at `threshold` times each slice's maximum score: one
/// kernel pass on a device, its CPU reference on `Kernels::Cpu` (`covflow_kernels::slice_counts`).
///
/// ```
/// use covflow_imaging::metrics::slice_counts;
/// let cpu = covflow_imaging::Kernels::Cpu;
/// // One slice of four pixels: scores 0.9, 0.5, 0.1, 0; the cut 0.5 · 0.9 keeps the first two.
/// let c = slice_counts(&cpu, &[0.9, 0.5, 0.1, 0.0], &[1.0, 0.0, 1.0, 0.0], &[1.0; 4], [1, 2, 2], 0.5);
/// assert_eq!((c[0].tp, c[0].fp, c[0].fn_, c[0].tn), (1, 1, 1, 1));
/// assert_eq!(c[0].dice(), 0.5);
/// ```
pub fn slice_counts(
    kernels: &covflow_kernels::Kernels,
    score: &[f32],
    lesion: &[f32],
    lung: &[f32],
    shape: [usize; 3],
    threshold: f32,
) -> Vec<SliceCounts> {
    kernels
        .slice_counts(score, lesion, lung, shape, threshold)
        .into_iter()
        .map(|[tp, fp, fn_, tn, lung]| SliceCounts {
            tp: tp.into(),
            fp: fp.into(),
            fn_: fn_.into(),
            tn: tn.into(),
            lung: lung.into(),
        })
        .collect()
}

/// Mean and (population) standard deviation, as the evaluation reports them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanStd {
    /// The mean (NaN when there are no values; JSON `null`).
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    /// The standard deviation.
    #[serde(deserialize_with = "nan_if_null")]
    pub std: f64,
    /// How many values.
    pub n: usize,
}

impl MeanStd {
    /// Of `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.into_iter().collect();
        let n = v.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                std: f64::NAN,
                n,
            };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        Self {
            mean,
            std: var.sqrt(),
            n,
        }
    }
}

/// JSON has no NaN (serde_json writes `null`): read `null` back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod separation_tests {
    use super::separation;

    /// AUC by its definition: pairs (lesion, healthy) ordered right, ties half.
    fn pairwise_auc(s: &[(f32, bool)]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for a in s.iter().filter(|a| a.1) {
            for b in s.iter().filter(|b| !b.1) {
                den += 1.0;
                num += if a.0 > b.0 {
                    1.0
                } else if a.0 == b.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        num / den
    }

    /// Best Dice by trying every threshold.
    fn brute_best_dice(s: &[(f32, bool)]) -> f64 {
        let mut best = 0.0f64;
        for t in s.iter().map(|x| x.0) {
            for cut in [t, t - 1e-4] {
                let (mut tp, mut fp, mut fn_) = (0, 0, 0);
                for &(v, l) in s {
                    match (v > cut, l) {
                        (true, true) => tp += 1,
                        (true, false) => fp += 1,
                        (false, true) => fn_ += 1,
                        _ => {}
                    }
                }
                best = best.max(2.0 * tp as f64 / (2 * tp + fp + fn_).max(1) as f64);
            }
        }
        best
    }

    #[test]
    fn separation_matches_the_definitions_on_random_scores_with_ties() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for _ in 0..50 {
            let n = 1 + next() as usize % 60;
            // Few distinct values, so ties are common.
            let s: Vec<(f32, bool)> = (0..n)
                .map(|_| ((next() % 7) as f32 / 7.0, next() % 3 == 0))
                .collect();
            let got = separation(s.clone());
            let both = s.iter().any(|x| x.1) && s.iter().any(|x| !x.1);
            match got.roc_auc {
                Some(a) => assert!((a - pairwise_auc(&s)).abs() < 1e-12),
                None => assert!(!both),
            }
            assert!((got.best_dice - brute_best_dice(&s)).abs() < 1e-12, "{s:?}");
            // The threshold it reports reaches that Dice.
            let (mut tp, mut fp, mut fn_) = (0, 0, 0);
            for &(v, l) in &s {
                match ((v as f64) > got.best_threshold, l) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    _ => {}
                }
            }
            let d = 2.0 * tp as f64 / (2 * tp + fp + fn_).max(1) as f64;
            assert!((d - got.best_dice).abs() < 1e-12, "{s:?} {got:?}");
        }
    }
}

#[cfg(test)]
mod slice_tests {
    use super::{MeanStd, SliceCounts, slice_counts};

    const CPU: covflow_kernels::Kernels = covflow_kernels::Kernels::Cpu;

    fn counts(pred: &[u8], truth: &[u8]) -> SliceCounts {
        let score: Vec<f32> = pred.iter().map(|&p| f32::from(p)).collect();
        let t: Vec<f32> = truth.iter().map(|&p| f32::from(p)).collect();
        slice_counts(&CPU, &score, &t, &vec![1.0; t.len()], [1, 1, t.len()], 0.5)[0]
    }

    #[test]
    fn slice_metrics_on_hand_made_masks() {
        // 10 pixels: truth on 0..4, prediction on 2..6: TP 2, FP 2, FN 2, TN 4.
        let c = counts(
            &[0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
            &[1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (2, 2, 2, 4));
        assert_eq!(c.dice(), 0.5);
        assert_eq!(c.sensitivity(), 0.5);
        assert!((c.specificity() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(c.infection_percent(), 40.0);
        // An empty prediction on a lesion: Dice and sensitivity 0, specificity 1.
        let c = counts(&[0; 4], &[1, 1, 0, 0]);
        assert_eq!(
            (c.dice(), c.sensitivity(), c.specificity()),
            (0.0, 0.0, 1.0)
        );
        // No truth, no prediction: nothing to miss (Dice 1), and the slice is not scored.
        let c = counts(&[0; 4], &[0; 4]);
        assert_eq!(
            (c.dice(), c.sensitivity(), c.specificity()),
            (1.0, 1.0, 1.0)
        );
        assert!(!c.scored());
        // No truth but a prediction: Dice 0, specificity below 1.
        let c = counts(&[1, 0, 0, 0], &[0; 4]);
        assert_eq!((c.dice(), c.specificity()), (0.0, 0.75));
    }

    #[test]
    fn the_one_percent_rule_scores_slices_with_more_than_163_lesion_pixels_of_128_squared() {
        let slice = |lesion_pixels: usize| {
            let truth: Vec<u8> = (0..128 * 128)
                .map(|i| u8::from(i < lesion_pixels))
                .collect();
            counts(&vec![0; 128 * 128], &truth)
        };
        assert!(!slice(163).scored());
        assert!(slice(164).scored());
    }

    #[test]
    fn the_threshold_is_relative_to_each_slices_maximum() {
        // Two slices whose scores are a factor 10 apart predict the same pixels.
        let score = [0.9, 0.3, 0.09, 0.03];
        let lesion = [1.0, 0.0, 1.0, 0.0];
        let c = slice_counts(&CPU, &score, &lesion, &[1.0; 4], [2, 1, 2], 0.2);
        assert_eq!(c[0], c[1]);
        assert_eq!((c[0].tp, c[0].fp), (1, 1));
        let total = SliceCounts::sum(&c);
        assert_eq!((total.tp, total.fp, total.fn_, total.tn), (2, 2, 0, 0));
    }

    #[test]
    fn the_originals_max_over_pixels_scores_differ() {
        // The original returned the maximum of a per-pixel score, so one correct pixel made a
        // slice perfect. Here one lesion pixel of 200 is found: Dice 2/201, not 1.
        let truth: Vec<u8> = (0..1000).map(|i| u8::from(i < 200)).collect();
        let pred: Vec<u8> = (0..1000).map(|i| u8::from(i == 0)).collect();
        let c = counts(&pred, &truth);
        let per_pixel_max = pred
            .iter()
            .zip(&truth)
            .map(|(&p, &t)| {
                let (p, t) = (f64::from(p), f64::from(t));
                if p + t == 0.0 {
                    0.0
                } else {
                    2.0 * p * t / (p + t)
                }
            })
            .fold(0.0, f64::max);
        assert_eq!(per_pixel_max, 1.0);
        assert!((c.dice() - 2.0 / 201.0).abs() < 1e-12);
        assert!((c.sensitivity() - 1.0 / 200.0).abs() < 1e-12);
    }

    #[test]
    fn mean_and_std() {
        let m = MeanStd::of([1.0, 2.0, 3.0, 4.0]);
        assert_eq!((m.mean, m.n), (2.5, 4));
        assert!((m.std - 1.25f64.sqrt()).abs() < 1e-12);
        assert!(MeanStd::of([]).mean.is_nan());
        let json = serde_json::to_string(&MeanStd::of([])).unwrap();
        assert_eq!(json, r#"{"mean":null,"std":null,"n":0}"#);
        let back: MeanStd = serde_json::from_str(&json).unwrap();
        assert!(back.mean.is_nan() && back.std.is_nan());
    }
}
