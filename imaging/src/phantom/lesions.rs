//! COVID-19 pneumonia as chest CT shows it: multifocal lesions, many small foci and a few larger
//! patches, bilateral, peripheral (subpleural), posterior- and basal-predominant, in ground
//! glass, crazy paving and consolidation, added until the study's category's involvement is
//! reached.
//!
//! Where the choices come from:
//! - Distribution: bilateral, peripheral, posterior and lower-lobe predominance, multifocal
//!   (Bernheim et al., Radiology 2020; Shi et al., Lancet Infect Dis 2020; Ye et al., Eur Radiol
//!   2020).
//! - Patterns and densities: ground glass (GGO) −700 to −300 HU; crazy paving, GGO with thickened
//!   interlobular septa (a reticular pattern); consolidation −100 to +100 HU, more frequent and
//!   larger in extensive disease (Pan et al., Radiology 2020; Ye et al. 2020).
//! - Involvement by category: MosMedData's definition (CT-1 < 25 %, CT-2 25–50 %, CT-3 50–75 %,
//!   CT-4 > 75 % of the lung). Within CT-1, the lesion volume is drawn so that phantoms match the
//!   50 expert masks of MosMedData (all CT-1): median 66 ml (0.4–536), 60 connected components,
//!   largest 25 ml, lesions on 15 of about 40 slices. `covflow phantom --stats` measures it.
//! - Sizes: lesion volumes follow a power law (many small foci, few large patches), the shape
//!   of the size spectrum of the expert masks (a largest component of about 40 % of the total).

use ndarray::Array3;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::Textures;
use super::grid::Grid;
use super::noise::ValueNoise;

/// CT-1 lesion volume: log-normal around the expert masks' median, 66 ml, with a spread (σ of
/// ln) that puts their range (0.4–536 ml) at about ±2.5 σ.
const CT1_MEDIAN_ML: f64 = 66.0;
const CT1_LN_SIGMA: f64 = 1.1;

/// The involvement (lesion share of the lung volume) of a study: CT-2…CT-4 uniform within their
/// MosMed ranges (a margin inside the bounds), CT-1 from its lesion volume.
pub(crate) fn involvement(rng: &mut ChaCha8Rng, category: u8, lung_ml: f64) -> f64 {
    match category {
        0 => 0.0,
        1 => {
            // Box–Muller: one standard normal draw.
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let ml = CT1_MEDIAN_ML * (CT1_LN_SIGMA * z).exp();
            (ml / lung_ml).clamp(0.0001, 0.24)
        }
        2 => rng.random_range(0.27..0.48),
        3 => rng.random_range(0.52..0.73),
        _ => rng.random_range(0.77..0.90),
    }
}

/// The range of [`involvement`] by category, for tests.
#[cfg(test)]
pub(crate) fn involvement_range(category: u8) -> (f64, f64) {
    match category {
        0 => (0.0, 0.0),
        1 => (0.0001, 0.24),
        2 => (0.27, 0.48),
        3 => (0.52, 0.73),
        _ => (0.77, 0.90),
    }
}

/// What lesions are drawn with: the grid, the noise that makes their boundaries irregular and
/// the textures of their ground glass and consolidation.
pub(crate) struct LesionStyle<'a> {
    pub(crate) grid: &'a Grid,
    pub(crate) boundary: &'a ValueNoise,
    pub(crate) textures: &'a Textures,
}

/// A region of the lung where lesions gather (disease is multifocal but not uniform: a few
/// segments carry most of it).
struct Cluster {
    /// Centre, mm.
    centre: [f64; 3],
    /// Spread of its lesions around the centre, mm (in-plane, along z).
    spread: [f64; 2],
}

/// The pattern of one lesion.
#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    GroundGlass,
    CrazyPaving,
    /// Ground glass with a consolidated core.
    Consolidation,
}

/// Picks the lung voxel that best fits COVID-19's distribution among `tries` random ones:
/// peripheral (far from the midline), posterior and basal.
fn typical_site(
    rng: &mut ChaCha8Rng,
    grid: &Grid,
    lung_points: &[[usize; 3]],
    tries: usize,
) -> [f64; 3] {
    let score = |p: [f64; 3]| p[0].abs() + 0.6 * p[1] - 0.5 * p[2];
    let mut best = None;
    for _ in 0..tries {
        let q = lung_points[rng.random_range(0..lung_points.len())];
        let p = grid.centre(q[0], q[1], q[2]);
        if best.is_none_or(|b| score(p) > score(b)) {
            best = Some(p);
        }
    }
    best.expect("tries > 0")
}

/// Draws a lesion volume (mm³) from a power law p(v) ∝ v^(−α) on [v_min, v_max].
fn power_law(rng: &mut ChaCha8Rng, alpha: f64, v_min: f64, v_max: f64) -> f64 {
    let e = 1.0 - alpha;
    let (a, b) = (v_min.powf(e), v_max.max(v_min).powf(e));
    let u: f64 = rng.random();
    (a + u * (b - a)).powf(1.0 / e)
}

/// Draws lesions inside `lung` until they cover the category's involvement, painting them into
/// `ct` and `lesion`; returns the lesion voxels.
pub(crate) fn add_lesions(
    rng: &mut ChaCha8Rng,
    style: &LesionStyle,
    category: u8,
    lung: &Array3<u8>,
    ct: &mut Array3<f32>,
    lesion: &mut Array3<u8>,
) -> usize {
    let grid = style.grid;
    let voxel_mm3 = grid.spacing.iter().product::<f64>();
    let lung_voxels = lung.iter().filter(|&&v| v == 1).count().max(1);
    let target_mm3 = involvement(rng, category, lung_voxels as f64 * voxel_mm3 / 1000.0)
        * lung_voxels as f64
        * voxel_mm3;
    if target_mm3 <= 0.0 {
        return 0;
    }
    let lung_points: Vec<[usize; 3]> = lung
        .indexed_iter()
        .filter(|(_, v)| **v == 1)
        .map(|((i, j, k), _)| [i, j, k])
        .collect();
    // Few clusters for mild disease, more (and wider) as it spreads; at least one per lung.
    let extensive = category >= 2;
    let n_clusters = if extensive {
        rng.random_range(6..10)
    } else {
        rng.random_range(2..5)
    };
    let clusters: Vec<Cluster> = (0..n_clusters)
        .map(|c| {
            let mut centre = typical_site(rng, grid, &lung_points, 4);
            // Bilateral: alternate the sides.
            if (centre[0] > 0.0) != (c % 2 == 0) {
                centre = typical_site(rng, grid, &lung_points, 4);
            }
            let spread = if extensive {
                [rng.random_range(40.0..70.0), rng.random_range(30.0..60.0)]
            } else {
                [rng.random_range(16.0..36.0), rng.random_range(8.0..18.0)]
            };
            Cluster { centre, spread }
        })
        .collect();
    // Mild disease: foci from 0.08 ml, single patches up to a quarter of the lesion volume.
    // Extensive disease: confluent patches from 2 ml up to 250 ml.
    let (v_min, v_max, alpha) = if extensive {
        (2_000.0, 250_000.0, 1.6)
    } else {
        (80.0, (0.25 * target_mm3).max(80.0), 2.0)
    };
    let mut lesion_voxels = 0usize;
    let mut attempts = 0;
    while (lesion_voxels as f64) * voxel_mm3 < target_mm3 && attempts < 4000 {
        attempts += 1;
        let cluster = &clusters[rng.random_range(0..clusters.len())];
        let Some(centre) = site_near(rng, grid, lung, cluster) else {
            continue;
        };
        let remaining = (target_mm3 - lesion_voxels as f64 * voxel_mm3).max(v_min);
        let volume = power_law(rng, alpha, v_min, v_max.min(remaining * 1.2));
        let pattern = {
            let ml = volume / 1000.0;
            let p_consolidation = if extensive {
                0.6
            } else {
                0.15 + 0.3 * (ml / 20.0).min(1.0)
            };
            let p_crazy = 0.2;
            let u: f64 = rng.random();
            if u < p_consolidation {
                Pattern::Consolidation
            } else if u < p_consolidation + p_crazy {
                Pattern::CrazyPaving
            } else {
                Pattern::GroundGlass
            }
        };
        lesion_voxels += paint(rng, style, centre, volume, pattern, lung, ct, lesion);
    }
    lesion_voxels
}

/// A lung point near `cluster`'s centre (Gaussian spread), or `None` if a few tries miss the
/// lung.
fn site_near(
    rng: &mut ChaCha8Rng,
    grid: &Grid,
    lung: &Array3<u8>,
    cluster: &Cluster,
) -> Option<[f64; 3]> {
    for _ in 0..8 {
        let mut gauss = || {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let p = [
            cluster.centre[0] + cluster.spread[0] * gauss(),
            cluster.centre[1] + cluster.spread[0] * gauss(),
            cluster.centre[2] + cluster.spread[1] * gauss(),
        ];
        let idx = grid.index_of(p).map(|x| x.round());
        let inside = (0..3).all(|a| idx[a] >= 0.0 && (idx[a] as usize) < grid.dims[a]);
        if inside && lung[[idx[0] as usize, idx[1] as usize, idx[2] as usize]] == 1 {
            return Some(p);
        }
    }
    None
}

/// Paints one lesion of about `volume` mm³ at `c`: an ellipsoid with an irregular boundary,
/// clipped to the lung. Returns the lesion voxels it added.
#[allow(clippy::too_many_arguments)]
fn paint(
    rng: &mut ChaCha8Rng,
    style: &LesionStyle,
    c: [f64; 3],
    volume: f64,
    pattern: Pattern,
    lung: &Array3<u8>,
    ct: &mut Array3<f32>,
    lesion: &mut Array3<u8>,
) -> usize {
    let LesionStyle {
        grid,
        boundary,
        textures,
    } = *style;
    let radius = (volume * 3.0 / (4.0 * std::f64::consts::PI)).cbrt();
    // Flattened against the pleura in-plane, taller than wide at most a little.
    let axes = [
        radius * rng.random_range(0.8..1.3),
        radius * rng.random_range(0.8..1.3),
        radius * rng.random_range(0.7..1.1),
    ];
    // Small foci have smooth outlines; patches irregular ones.
    let roughness = 0.35 * (radius / 10.0).min(1.0);
    let lo = [0, 1, 2].map(|a| c[a] - axes[a] * 1.4);
    let hi = [0, 1, 2].map(|a| c[a] + axes[a] * 1.4);
    let mut added = 0;
    grid.for_each_between(lo, hi, |[i, j, k], p| {
        if lung[[i, j, k]] == 0 {
            return;
        }
        let q = (0..3)
            .map(|a| ((p[a] - c[a]) / axes[a]).powi(2))
            .sum::<f64>();
        let shape = q.sqrt() + roughness * boundary.at(p);
        if shape >= 1.0 {
            return;
        }
        if lesion[[i, j, k]] == 0 {
            lesion[[i, j, k]] = 1;
            added += 1;
        }
        let depth = (1.0 - shape).clamp(0.0, 1.0);
        let ggo = -700.0 + 400.0 * depth + 60.0 * textures.coarse.at(p);
        let hu = match pattern {
            Pattern::GroundGlass => ggo,
            // Thickened septa: a reticular network of lines a few mm wide, about 200 HU above
            // the ground glass they cross.
            Pattern::CrazyPaving => {
                let septa = (1.0 - 4.0 * textures.fine.at(p).abs()).max(0.0);
                ggo + 250.0 * septa
            }
            Pattern::Consolidation if shape < 0.55 => {
                -100.0 + 200.0 * (0.5 + 0.5 * textures.fine.at(p))
            }
            Pattern::Consolidation => ggo,
        };
        let cur = ct[[i, j, k]] as f64;
        ct[[i, j, k]] = cur.max(hu.clamp(-700.0, 100.0)) as f32;
    });
    added
}
