//! How phantom lesions compare with MosMedData's expert masks (`covflow phantom --stats`).

use rayon::prelude::*;

use super::{PhantomParams, PhantomSize, category_of};
use crate::metrics::{LesionStats, lesion_stats};

/// The 50 expert masks of MosMedData (all CT-1), per study, median (and range): what CT-1
/// phantoms are drawn to match.
pub const MOSMED_CT1: MosmedReference = MosmedReference {
    volume_ml: (66.0, 0.4, 536.0),
    components: (60.0, 3.0, 458.0),
    largest_ml: 25.0,
    slices_with_lesion: 15.0,
    slices: 40.0,
};

/// Per-study medians (and ranges) of real lesion masks.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct MosmedReference {
    /// Lesion volume, ml: (median, min, max).
    pub volume_ml: (f64, f64, f64),
    /// 3-D connected components: (median, min, max).
    pub components: (f64, f64, f64),
    /// Largest component, ml (median).
    pub largest_ml: f64,
    /// Slices with lesion (median).
    pub slices_with_lesion: f64,
    /// Slices per study (about).
    pub slices: f64,
}

/// One generated study's lesion statistics.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StudyStats {
    /// The study's index in its set.
    pub index: u32,
    /// CT-0…CT-4.
    pub category: u8,
    /// Lesion share of the lung.
    pub involvement: f64,
    /// Its lesions.
    #[serde(flatten)]
    pub lesions: LesionStats,
}

/// The first `count` studies of set `seed` that have `category` (all categories when `None`),
/// generated and measured (in parallel).
pub fn phantom_stats(
    seed: u64,
    size: PhantomSize,
    count: usize,
    category: Option<u8>,
) -> Vec<StudyStats> {
    let indices: Vec<u32> = (0u32..)
        .filter(|&i| category.is_none_or(|c| category_of(i) == c))
        .take(count)
        .collect();
    indices
        .into_par_iter()
        .map(|index| {
            let p = PhantomParams { seed, index, size }.generate();
            StudyStats {
                index,
                category: p.category,
                involvement: p.involvement,
                lesions: lesion_stats(&crate::Kernels::Cpu, &p.lesion, p.ct.spacing),
            }
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}
