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
