//! COVID-like lesions: ground glass (−700…−300 HU) with consolidated cores (−100…+50 HU),
//! irregular ellipsoids seeded mostly in the periphery and posteriorly (the subpleural pattern),
//! added until the lung involvement of the study's category is reached.

use ndarray::Array3;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::Textures;
use super::grid::Grid;
use super::noise::ValueNoise;

/// Target fraction of the lung volume that is lesion, by category (MosMed: CT-1 < 25 %,
/// CT-2 25–50 %, CT-3 50–75 %, CT-4 > 75 %).
pub(crate) fn involvement_range(category: u8) -> (f64, f64) {
    match category {
        0 => (0.0, 0.0),
        1 => (0.02, 0.15),
        2 => (0.27, 0.45),
        3 => (0.52, 0.70),
        _ => (0.76, 0.88),
    }
}

/// What lesions are drawn with: the grid, the noise that makes their boundaries irregular and
/// the textures of their ground glass and consolidation.
pub(crate) struct LesionStyle<'a> {
    pub(crate) grid: &'a Grid,
    pub(crate) boundary: &'a ValueNoise,
    pub(crate) textures: &'a Textures,
}

/// Draws lesions inside `lung` until they cover the category's involvement (drawn from its
/// range), painting them into `ct` and `lesion`; returns the lesion voxels.
pub(crate) fn add_lesions(
    rng: &mut ChaCha8Rng,
    style: &LesionStyle,
    category: u8,
    lung: &Array3<u8>,
    ct: &mut Array3<f32>,
    lesion: &mut Array3<u8>,
) -> usize {
    let LesionStyle {
        grid,
        boundary,
        textures,
    } = *style;
    let lung_voxels = lung.iter().filter(|&&v| v == 1).count().max(1);
    let (lo, hi) = involvement_range(category);
    let target = if hi > 0.0 {
        rng.random_range(lo..hi)
    } else {
        0.0
    };
    let mut lesion_voxels = 0usize;
    let lung_points: Vec<[usize; 3]> = if target > 0.0 {
        lung.indexed_iter()
            .filter(|(_, v)| **v == 1)
            .map(|((i, j, k), _)| [i, j, k])
            .collect()
    } else {
        Vec::new()
    };
    let spacing = grid.spacing;
    let mut attempts = 0;
    while (lesion_voxels as f64) < target * lung_voxels as f64 && attempts < 400 {
        attempts += 1;
        // Prefer peripheral, posterior seeds (COVID-19's subpleural pattern): the best of four.
        let score = |q: [usize; 3]| {
            let p = grid.centre(q[0], q[1], q[2]);
            p[0].abs() + 0.6 * p[1]
        };
        let mut best = lung_points[rng.random_range(0..lung_points.len())];
        for _ in 0..3 {
            let c = lung_points[rng.random_range(0..lung_points.len())];
            if score(c) > score(best) {
                best = c;
            }
        }
        let c = grid.centre(best[0], best[1], best[2]);
        let remaining = (target * lung_voxels as f64 - lesion_voxels as f64).max(0.0);
        let voxel_mm3 = spacing[0] * spacing[1] * spacing[2];
        let want_mm3 =
            (remaining * voxel_mm3).min(if category >= 2 { 250_000.0 } else { 30_000.0 });
        let radius = (want_mm3 * 3.0 / (4.0 * std::f64::consts::PI))
            .cbrt()
            .clamp(6.0, 70.0)
            * rng.random_range(0.7..1.2);
        let axes = [
            radius * rng.random_range(0.8..1.3),
            radius * rng.random_range(0.8..1.3),
            radius * rng.random_range(0.6..1.0),
        ];
        let consolidated = rng.random_bool(if category >= 2 { 0.6 } else { 0.3 });
        let lo = [0, 1, 2].map(|a| c[a] - axes[a] * 1.4);
        let hi = [0, 1, 2].map(|a| c[a] + axes[a] * 1.4);
        grid.for_each_between(lo, hi, |[i, j, k], p| {
            if lung[[i, j, k]] == 0 {
                return;
            }
            let q = ((p[0] - c[0]) / axes[0]).powi(2)
                + ((p[1] - c[1]) / axes[1]).powi(2)
                + ((p[2] - c[2]) / axes[2]).powi(2);
            // An irregular boundary: the ellipsoid perturbed by smooth noise.
            let shape = q.sqrt() + 0.35 * boundary.at(p);
            if shape >= 1.0 {
                return;
            }
            if lesion[[i, j, k]] == 0 {
                lesion[[i, j, k]] = 1;
                lesion_voxels += 1;
            }
            let hu = if consolidated && shape < 0.45 {
                -100.0 + 150.0 * (0.5 + 0.5 * textures.fine.at(p))
            } else {
                -700.0 + 400.0 * (1.0 - shape).clamp(0.0, 1.0) + 60.0 * textures.coarse.at(p)
            };
            let cur = ct[[i, j, k]] as f64;
            ct[[i, j, k]] = cur.max(hu.clamp(-700.0, 50.0)) as f32;
        });
    }
    lesion_voxels
}
