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
