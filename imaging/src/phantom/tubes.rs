//! Vessel trees and airways: capsules that branch and thin toward the periphery.

use ndarray::Array3;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::Lungs;
use super::grid::Grid;

/// A capsule (segment with radius) of a vessel or airway, mm.
pub(crate) struct Tube {
    pub(crate) a: [f64; 3],
    pub(crate) b: [f64; 3],
    pub(crate) r: f64,
}

impl Tube {
    /// Distance from `p` to the segment's axis.
    fn distance(&self, p: [f64; 3]) -> f64 {
        let ab = [0, 1, 2].map(|c| self.b[c] - self.a[c]);
        let ap = [0, 1, 2].map(|c| p[c] - self.a[c]);
        let len2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
        let t = if len2 > 0.0 {
            ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = [0, 1, 2].map(|c| ap[c] - t * ab[c]);
        (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
    }
}

/// A binary tree of `depth` generations from `start` along `dir`; each child is 0.72 × as thick
/// and turns randomly.
fn grow_tree(
    rng: &mut ChaCha8Rng,
    tubes: &mut Vec<Tube>,
    start: [f64; 3],
    dir: [f64; 3],
    r: f64,
    depth: u32,
) {
    if depth == 0 || r < 0.35 {
        return;
    }
    let len = rng.random_range(18.0..34.0) * (r / 4.0).sqrt().max(0.5);
    let end = [0, 1, 2].map(|c| start[c] + dir[c] * len);
    tubes.push(Tube {
        a: start,
        b: end,
        r,
    });
    for _ in 0..2 {
        let d = [
            dir[0] + rng.random_range(-0.6..0.6),
            dir[1] + rng.random_range(-0.6..0.6),
            dir[2] + rng.random_range(-0.5..0.5),
        ];
        let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-6);
        grow_tree(rng, tubes, end, d.map(|x| x / n), r * 0.72, depth - 1);
    }
}

/// Six vessel trees from each lung's hilum.
pub(crate) fn vessel_trees(rng: &mut ChaCha8Rng, lungs: &Lungs) -> Vec<Tube> {
    let mut vessels = Vec::new();
    for (side, sign) in [(0usize, -1.0), (1, 1.0)] {
        let hilum = [
            lungs.sides[side].0 * 0.55,
            lungs.cy - 5.0,
            lungs.z_centre + 10.0,
        ];
        for k in 0..6 {
            let a = k as f64 / 6.0 * std::f64::consts::TAU;
            let d = [sign * 0.8, 0.5 * a.cos(), 0.7 * a.sin()];
            let r = rng.random_range(3.5..5.0);
            grow_tree(rng, &mut vessels, hilum, d, r, 6);
        }
    }
    vessels
}

/// The trachea from the top of the volume to the carina, the main bronchi, and three lobar
/// bronchi on each side.
pub(crate) fn airway_tree(rng: &mut ChaCha8Rng, lungs: &Lungs, zext: f64) -> Vec<Tube> {
    let carina = [0.0, -15.0, lungs.z_centre + 25.0];
    let mut airways = vec![Tube {
        a: [0.0, -20.0, zext],
        b: carina,
        r: 9.0,
    }];
    for sign in [-1.0, 1.0] {
        let end = [sign * 38.0, -8.0, carina[2] - 30.0];
        airways.push(Tube {
            a: carina,
            b: end,
            r: 6.0,
        });
        for _ in 0..3 {
            let d = [
                sign * rng.random_range(0.4..1.0),
                rng.random_range(-0.5..0.6),
                rng.random_range(-0.8..0.3),
            ];
            let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            airways.push(Tube {
                a: end,
                b: [0, 1, 2].map(|c| end[c] + d[c] / n * 30.0),
                r: 3.5,
            });
        }
    }
    airways
}

/// Draws a tube over its bounding box only: a vessel as soft tissue blended in by partial volume
/// inside the lung; an airway as air with a wall of at least −100 HU.
pub(crate) fn draw_tube(
    grid: &Grid,
    tube: &Tube,
    ct: &mut Array3<f32>,
    lung: &Array3<u8>,
    airway: bool,
) {
    let margin = [2.0, 2.0, grid.spacing[2]];
    let lo = [0, 1, 2].map(|c| tube.a[c].min(tube.b[c]) - tube.r - margin[c]);
    let hi = [0, 1, 2].map(|c| tube.a[c].max(tube.b[c]) + tube.r + margin[c]);
    // Partial volume over the slice thickness and the in-plane voxel.
    let edge = 0.5 * grid.spacing[0].max(1.0);
    grid.for_each_between(lo, hi, |[i, j, k], p| {
        let d = tube.distance(p);
        let v = &mut ct[[i, j, k]];
        if airway {
            if d < tube.r - 1.5 {
                *v = -1000.0;
            } else if d < tube.r {
                *v = v.max(-100.0);
            }
        } else if lung[[i, j, k]] == 1 && d < tube.r + edge {
            let w = ((tube.r + edge - d) / (2.0 * edge)).clamp(0.0, 1.0) as f32;
            *v = v.max(*v + w * (40.0 - *v));
        }
    });
}
