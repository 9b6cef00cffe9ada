//! MosMed-like synthetic chest CT with exactly known lung and lesion masks.
//!
//! Anatomy in millimetres, so one description serves every grid: a body outline with a fat layer
//! on a scanner table, spine and ribs, the mediastinum with heart and aorta, two lungs whose
//! cross-section follows the apex-to-base profile, parenchyma texture denser posteriorly, vessel
//! trees that branch and thin toward the periphery, trachea and main bronchi, and COVID-like
//! lesions (ground glass −700…−300 HU with consolidated cores −100…+50 HU), mostly peripheral and
//! posterior, added until the lung involvement of the study's category is reached. Outside the
//! scanner's field of view the value is −2048, as on real scans. Vessels and airway walls put
//! ~15–20 % of lung voxels above −500 HU, so a plain threshold inside the lung does not find the
//! lesions. Deterministic in (seed, index).

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::volume::Volume;

/// Bumped whenever the generated volumes change (part of every phantom item's digest).
pub const GENERATOR_VERSION: u32 = 2;

/// Grid of a phantom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhantomSize {
    /// 128 × 128 × 16 at 2.8 × 2.8 × 8 mm: for tests.
    Small,
    /// 512 × 512 × 41 at 0.7 × 0.7 × 8 mm: MosMed's median study.
    Mosmed,
}

impl PhantomSize {
    /// Voxels along x, y, z and their spacing in mm.
    pub fn grid(self) -> ([usize; 3], [f64; 3]) {
        match self {
            PhantomSize::Small => ([128, 128, 16], [2.8, 2.8, 8.0]),
            PhantomSize::Mosmed => ([512, 512, 41], [0.7, 0.7, 8.0]),
        }
    }
}

impl std::str::FromStr for PhantomSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "small" => Ok(Self::Small),
            "mosmed" => Ok(Self::Mosmed),
            o => Err(format!("unknown phantom size `{o}` (small or mosmed)")),
        }
    }
}

/// The MosMed category of study `index`: a fixed cycle that covers CT-0…CT-4 within eight
/// studies and keeps CT-1 the most common, as in MosMed.
pub fn category_of(index: u32) -> u8 {
    [1, 0, 2, 1, 3, 1, 0, 4][index as usize % 8]
}

/// Target fraction of the lung volume that is lesion, by category.
fn involvement_range(category: u8) -> (f64, f64) {
    match category {
        0 => (0.0, 0.0),
        1 => (0.02, 0.15),
        2 => (0.27, 0.45),
        3 => (0.52, 0.70),
        _ => (0.76, 0.88),
    }
}

/// A generated study.
pub struct Phantom {
    /// CT in HU.
    pub ct: Volume,
    /// 1 inside the lungs.
    pub lung: Array3<u8>,
    /// 1 where a lesion is.
    pub lesion: Array3<u8>,
    /// CT-0…CT-4.
    pub category: u8,
    /// Lesion fraction of the lung volume.
    pub involvement: f64,
}

/// Smooth deterministic noise in [-1, 1]: value noise on a lattice of `cell` mm, trilinear.
struct ValueNoise {
    seed: u64,
    cell: f64,
}

impl ValueNoise {
    fn lattice(&self, x: i64, y: i64, z: i64) -> f64 {
        let mut h = self.seed
            ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ (z as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn at(&self, p: [f64; 3]) -> f64 {
        let f = |v: f64| v / self.cell;
        let (x, y, z) = (f(p[0]), f(p[1]), f(p[2]));
        let (x0, y0, z0) = (x.floor(), y.floor(), z.floor());
        let (tx, ty, tz) = (x - x0, y - y0, z - z0);
        let s = |t: f64| t * t * (3.0 - 2.0 * t);
        let (sx, sy, sz) = (s(tx), s(ty), s(tz));
        let (xi, yi, zi) = (x0 as i64, y0 as i64, z0 as i64);
        let mut acc = 0.0;
        for (dz, wz) in [(0, 1.0 - sz), (1, sz)] {
            for (dy, wy) in [(0, 1.0 - sy), (1, sy)] {
                for (dx, wx) in [(0, 1.0 - sx), (1, sx)] {
                    acc += wx * wy * wz * self.lattice(xi + dx, yi + dy, zi + dz);
                }
            }
        }
        acc
    }
}

/// A capsule (segment with radius) of a vessel or airway.
struct Tube {
    a: [f64; 3],
    b: [f64; 3],
    r: f64,
}

impl Tube {
    /// Distance from `p` to the segment's axis.
    fn distance(&self, p: [f64; 3]) -> f64 {
        let ab = [
            self.b[0] - self.a[0],
            self.b[1] - self.a[1],
            self.b[2] - self.a[2],
        ];
        let ap = [p[0] - self.a[0], p[1] - self.a[1], p[2] - self.a[2]];
        let len2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
        let t = if len2 > 0.0 {
            ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
        (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
    }
}

/// Lung geometry of one study (mm, origin at the volume centre, y grows posterior, z cranial).
struct Lungs {
    /// (centre x, semi-axis x, semi-axis y) for right (x < 0) and left lung.
    sides: [(f64, f64, f64); 2],
    cy: f64,
    z_centre: f64,
    z_half: f64,
}

impl Lungs {
    /// Which lung (0, 1) contains `p`, if any.
    fn contains(&self, p: [f64; 3]) -> Option<usize> {
        let t = (p[2] - self.z_centre) / self.z_half;
        if t.abs() >= 1.0 {
            return None;
        }
        // Narrow apex (top), broad base sitting on the diaphragm.
        let profile = if t > 0.0 {
            (1.0 - t * t).sqrt()
        } else {
            (1.0 - t.powi(4)).sqrt()
        };
        for (i, &(cx, ax, ay)) in self.sides.iter().enumerate() {
            let dx = (p[0] - cx) / (ax * profile);
            let dy = (p[1] - self.cy) / (ay * profile);
            // A flattened medial side, where the mediastinum is.
            let medial = if i == 0 { dx > 0.55 } else { dx < -0.55 };
            if dx * dx + dy * dy < 1.0 && !(medial && dy.abs() < 0.45) {
                return Some(i);
            }
        }
        None
    }
}

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
    let end = [
        start[0] + dir[0] * len,
        start[1] + dir[1] * len,
        start[2] + dir[2] * len,
    ];
    tubes.push(Tube {
        a: start,
        b: end,
        r,
    });
    for _ in 0..2 {
        let mut d = [
            dir[0] + rng.random_range(-0.6..0.6),
            dir[1] + rng.random_range(-0.6..0.6),
            dir[2] + rng.random_range(-0.5..0.5),
        ];
        let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-6);
        d = [d[0] / n, d[1] / n, d[2] / n];
        grow_tree(rng, tubes, end, d, r * 0.72, depth - 1);
    }
}

/// Generates study `index` of a phantom set with seed `seed`.
pub fn generate(seed: u64, index: u32, size: PhantomSize) -> Phantom {
    let category = category_of(index);
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let ([nx, ny, nz], spacing) = size.grid();
    let fov = nx as f64 * spacing[0];
    let zext = nz as f64 * spacing[2];
    let jitter = |rng: &mut ChaCha8Rng, v: f64| v * rng.random_range(0.92..1.08);

    let body = (jitter(&mut rng, 158.0), jitter(&mut rng, 112.0));
    let body_cy = 8.0;
    let lungs = Lungs {
        sides: [
            (
                -jitter(&mut rng, 72.0),
                jitter(&mut rng, 56.0),
                jitter(&mut rng, 80.0),
            ),
            (
                jitter(&mut rng, 70.0),
                jitter(&mut rng, 52.0),
                jitter(&mut rng, 78.0),
            ),
        ],
        cy: 4.0,
        z_centre: rng.random_range(-0.08..0.08) * zext,
        z_half: zext * rng.random_range(0.47..0.53),
    };

    // Vessel trees from each hilum, airways from the carina.
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
            grow_tree(&mut rng, &mut vessels, hilum, d, r, 6);
        }
    }
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
            let e2 = [
                end[0] + d[0] / n * 30.0,
                end[1] + d[1] / n * 30.0,
                end[2] + d[2] / n * 30.0,
            ];
            airways.push(Tube {
                a: end,
                b: e2,
                r: 3.5,
            });
        }
    }

    let texture = ValueNoise {
        seed: rng.random(),
        cell: 6.0,
    };
    let fine = ValueNoise {
        seed: rng.random(),
        cell: 2.0,
    };
    let lesion_field = ValueNoise {
        seed: rng.random(),
        cell: 9.0,
    };
    let noise_seed: u64 = rng.random();

    let centre = |i: usize, j: usize, k: usize| -> [f64; 3] {
        [
            (i as f64 + 0.5) * spacing[0] - fov / 2.0,
            (j as f64 + 0.5) * spacing[1] - fov / 2.0,
            (k as f64 + 0.5) * spacing[2] - zext / 2.0,
        ]
    };

    let mut ct = Array3::<f32>::from_elem((nx, ny, nz), -1000.0);
    let mut lung = Array3::<u8>::zeros((nx, ny, nz));
    let mut rib_angles: Vec<f64> = (0..11).map(|i| -2.6 + i as f64 * 0.52).collect();
    rib_angles
        .iter_mut()
        .for_each(|a| *a += rng.random_range(-0.05..0.05));

    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = centre(i, j, k);
                let r_fov = (p[0] * p[0] + p[1] * p[1]).sqrt();
                let v: f64 = if r_fov > fov / 2.0 * 0.98 {
                    -2048.0
                } else {
                    let bx = p[0] / body.0;
                    let by = (p[1] - body_cy) / body.1;
                    let e = bx * bx + by * by;
                    let table =
                        (p[1] - (body_cy + body.1 + 18.0)).abs() < 5.0 && p[0].abs() < 150.0;
                    if e >= 1.0 {
                        if table { 250.0 } else { -1000.0 }
                    } else if let Some(_side) = lungs.contains(p).filter(|_| e < 0.64) {
                        // Inside the rib cage (ribs at √e = 0.83): a chest wall always
                        // separates the lungs from the air around the body.
                        lung[[i, j, k]] = 1;
                        let posterior = ((p[1] - lungs.cy) / 80.0).clamp(-1.0, 1.0);
                        -850.0
                            + 40.0 * texture.at(p)
                            + 15.0 * fine.at(p)
                            + 45.0 * posterior.max(0.0)
                    } else if e > 0.86 {
                        -100.0 // subcutaneous fat
                    } else {
                        // Spine, ribs, mediastinum (heart, aorta), muscle.
                        let spine =
                            ((p[0]).powi(2) + (p[1] - (body_cy + body.1 * 0.62)).powi(2)).sqrt();
                        let theta = p[1].atan2(p[0]);
                        let rib_r = ((bx * bx + by * by).sqrt() - 0.83).abs();
                        let rib = rib_r < 0.035
                            && rib_angles
                                .iter()
                                .any(|a| (theta - a).abs() < 0.07 + 0.02 * ((k % 3) as f64));
                        if spine < 16.0 {
                            if spine < 6.0 { 20.0 } else { 550.0 }
                        } else if rib {
                            450.0
                        } else {
                            let aorta =
                                ((p[0] - 18.0).powi(2) + (p[1] - 25.0).powi(2)).sqrt() < 14.0;
                            if aorta { 45.0 } else { 40.0 }
                        }
                    }
                };
                ct[[i, j, k]] = v as f32;
            }
        }
    }

    // Vessels and airways, drawn over their bounding boxes only.
    let to_index = |p: [f64; 3]| -> [f64; 3] {
        [
            (p[0] + fov / 2.0) / spacing[0] - 0.5,
            (p[1] + fov / 2.0) / spacing[1] - 0.5,
            (p[2] + zext / 2.0) / spacing[2] - 0.5,
        ]
    };
    let draw = |tube: &Tube, ct: &mut Array3<f32>, lung: &Array3<u8>, airway: bool| {
        let lo = to_index([
            tube.a[0].min(tube.b[0]) - tube.r - 2.0,
            tube.a[1].min(tube.b[1]) - tube.r - 2.0,
            tube.a[2].min(tube.b[2]) - tube.r - spacing[2],
        ]);
        let hi = to_index([
            tube.a[0].max(tube.b[0]) + tube.r + 2.0,
            tube.a[1].max(tube.b[1]) + tube.r + 2.0,
            tube.a[2].max(tube.b[2]) + tube.r + spacing[2],
        ]);
        let range = |l: f64, h: f64, n: usize| {
            (l.floor().max(0.0) as usize)..((h.ceil() + 1.0).max(0.0) as usize).min(n)
        };
        for k in range(lo[2], hi[2], nz) {
            for j in range(lo[1], hi[1], ny) {
                for i in range(lo[0], hi[0], nx) {
                    let p = centre(i, j, k);
                    let d = tube.distance(p);
                    // Partial volume over the slice thickness and the in-plane voxel.
                    let edge = 0.5 * spacing[0].max(1.0);
                    let inside = lung[[i, j, k]] == 1;
                    if airway {
                        if d < tube.r - 1.5 {
                            ct[[i, j, k]] = -1000.0;
                        } else if d < tube.r {
                            ct[[i, j, k]] = ct[[i, j, k]].max(-100.0);
                        }
                    } else if inside && d < tube.r + edge {
                        let w = ((tube.r + edge - d) / (2.0 * edge)).clamp(0.0, 1.0) as f32;
                        let cur = ct[[i, j, k]];
                        ct[[i, j, k]] = cur.max(cur + w * (40.0 - cur));
                    }
                }
            }
        }
    };
    for t in &vessels {
        draw(t, &mut ct, &lung, false);
    }
    for t in &airways {
        draw(t, &mut ct, &lung, true);
    }

    // Lesions until the category's involvement is reached.
    let lung_voxels = lung.iter().filter(|&&v| v == 1).count().max(1);
    let (lo, hi) = involvement_range(category);
    let target = if hi > 0.0 {
        rng.random_range(lo..hi)
    } else {
        0.0
    };
    let mut lesion = Array3::<u8>::zeros((nx, ny, nz));
    let mut lesion_voxels = 0usize;
    let lung_points: Vec<[usize; 3]> = if target > 0.0 {
        lung.indexed_iter()
            .filter(|(_, v)| **v == 1)
            .map(|((i, j, k), _)| [i, j, k])
            .collect()
    } else {
        Vec::new()
    };
    let mut attempts = 0;
    while (lesion_voxels as f64) < target * lung_voxels as f64 && attempts < 400 {
        attempts += 1;
        // Prefer peripheral, posterior seeds (COVID-19's subpleural pattern).
        let seed_pt = {
            let mut best = lung_points[rng.random_range(0..lung_points.len())];
            for _ in 0..3 {
                let c = lung_points[rng.random_range(0..lung_points.len())];
                let score = |q: [usize; 3]| {
                    let p = centre(q[0], q[1], q[2]);
                    p[0].abs() + 0.6 * p[1]
                };
                if score(c) > score(best) {
                    best = c;
                }
            }
            best
        };
        let c = centre(seed_pt[0], seed_pt[1], seed_pt[2]);
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
        let lo = to_index([
            c[0] - axes[0] * 1.4,
            c[1] - axes[1] * 1.4,
            c[2] - axes[2] * 1.4,
        ]);
        let hi = to_index([
            c[0] + axes[0] * 1.4,
            c[1] + axes[1] * 1.4,
            c[2] + axes[2] * 1.4,
        ]);
        let range = |l: f64, h: f64, n: usize| {
            (l.floor().max(0.0) as usize)..((h.ceil() + 1.0).max(0.0) as usize).min(n)
        };
        for k in range(lo[2], hi[2], nz) {
            for j in range(lo[1], hi[1], ny) {
                for i in range(lo[0], hi[0], nx) {
                    if lung[[i, j, k]] == 0 {
                        continue;
                    }
                    let p = centre(i, j, k);
                    let q = ((p[0] - c[0]) / axes[0]).powi(2)
                        + ((p[1] - c[1]) / axes[1]).powi(2)
                        + ((p[2] - c[2]) / axes[2]).powi(2);
                    // An irregular boundary: the ellipsoid perturbed by smooth noise.
                    let shape = q.sqrt() + 0.35 * lesion_field.at(p);
                    if shape < 1.0 {
                        if lesion[[i, j, k]] == 0 {
                            lesion[[i, j, k]] = 1;
                            lesion_voxels += 1;
                        }
                        let hu = if consolidated && shape < 0.45 {
                            -100.0 + 150.0 * (0.5 + 0.5 * fine.at(p))
                        } else {
                            -700.0 + 400.0 * (1.0 - shape).clamp(0.0, 1.0) + 60.0 * texture.at(p)
                        };
                        let cur = ct[[i, j, k]] as f64;
                        ct[[i, j, k]] = cur.max(hu.clamp(-700.0, 50.0)) as f32;
                    }
                }
            }
        }
    }

    // Scanner noise inside the field of view.
    let noise = ValueNoise {
        seed: noise_seed,
        cell: spacing[0] * 0.5,
    };
    for ((i, j, k), v) in ct.indexed_iter_mut() {
        if *v > -2048.0 {
            *v += (12.0 * noise.at(centre(i, j, k))) as f32;
        }
    }

    let involvement = lesion_voxels as f64 / lung_voxels as f64;
    let mut vol = Volume::new(ct, spacing);
    // Origin at the first voxel's centre, as scanners write it.
    vol.affine[0][3] = -fov / 2.0 + spacing[0] / 2.0;
    vol.affine[1][3] = -fov / 2.0 + spacing[1] / 2.0;
    vol.affine[2][3] = -zext / 2.0 + spacing[2] / 2.0;
    Phantom {
        ct: vol,
        lung,
        lesion,
        category,
        involvement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_categories_reach_their_involvement() {
        let a = generate(3, 2, PhantomSize::Small);
        let b = generate(3, 2, PhantomSize::Small);
        assert_eq!(a.ct.data, b.ct.data);
        assert_eq!(a.lesion, b.lesion);
        for index in 0..8 {
            let p = generate(11, index, PhantomSize::Small);
            let (lo, hi) = involvement_range(p.category);
            if p.category == 0 {
                assert_eq!(p.involvement, 0.0);
            } else {
                assert!(
                    p.involvement >= lo * 0.9 && p.involvement <= hi * 1.15,
                    "CT-{} involvement {}",
                    p.category,
                    p.involvement
                );
            }
            // Lesions only inside the lung.
            assert!(
                p.lesion
                    .iter()
                    .zip(p.lung.iter())
                    .all(|(l, m)| *l == 0 || *m == 1)
            );
        }
    }

    #[test]
    fn realistic_intensities() {
        let p = generate(5, 1, PhantomSize::Small); // CT-0: no lesions
        let lung_hu: Vec<f32> =
            p.ct.data
                .iter()
                .zip(p.lung.iter())
                .filter(|(_, m)| **m == 1)
                .map(|(v, _)| *v)
                .collect();
        let mut sorted = lung_hu.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted[sorted.len() / 2];
        assert!((-900.0..-750.0).contains(&median), "lung median {median}");
        let above = lung_hu.iter().filter(|v| **v > -500.0).count() as f64 / lung_hu.len() as f64;
        assert!(
            above > 0.02,
            "vessels put some lung voxels above -500 HU: {above}"
        );
        assert!(
            p.ct.data.iter().any(|v| *v == -2048.0),
            "outside the field of view"
        );
        assert!(p.ct.data.iter().any(|v| *v > 300.0), "bone");
    }
}
