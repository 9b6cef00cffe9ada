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
