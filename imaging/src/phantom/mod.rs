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

mod anatomy;
mod grid;
mod lesions;
mod noise;
mod stats;
mod tree;
mod tubes;

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::volume::Volume;
use anatomy::{Body, OUTSIDE_FOV_HU, Textures, paint_body};
use grid::Grid;
use lesions::{LesionStyle, add_lesions};
use noise::ValueNoise;
use tubes::{Tube, airway_tree, draw_tube, vessel_trees};

pub use stats::{MOSMED_CT1, MosmedReference, StudyStats, median, phantom_stats};
pub use tree::{WrittenStudy, study_id, write_mosmed_tree};

/// Bumped whenever the generated volumes change (part of every phantom item's digest).
pub const GENERATOR_VERSION: u32 = 3;

/// Grid of a phantom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhantomSize {
    /// 128 × 128 × 16 at 2.8 × 2.8 × 8 mm: for tests.
    #[default]
    Small,
    /// 512 × 512 × 41 at 0.7 × 0.7 × 8 mm: MosMed's median study.
    Mosmed,
}

impl PhantomSize {
    /// The name used in pipelines and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PhantomSize::Small => "small",
            PhantomSize::Mosmed => "mosmed",
        }
    }

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

/// Which study of which phantom set: everything a phantom is a function of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhantomParams {
    /// The set's seed.
    pub seed: u64,
    /// The study's index in the set (its category is [`category_of`] it).
    pub index: u32,
    /// The grid.
    pub size: PhantomSize,
}

/// Everything random about one study's anatomy, drawn from its seed in one fixed order (a change
/// to how one part is drawn changes every part after it: a generator version bump).
struct Anatomy {
    body: Body,
    vessels: Vec<Tube>,
    airways: Vec<Tube>,
    textures: Textures,
    lesion_boundary: ValueNoise,
    scanner_noise_seed: u64,
    rib_angles: Vec<f64>,
}

impl Anatomy {
    fn draw(rng: &mut ChaCha8Rng, grid: &Grid) -> Self {
        let body = Body::draw(rng, grid);
        let vessels = vessel_trees(rng, &body.lungs);
        let airways = airway_tree(rng, &body.lungs, grid.zext);
        let mut noise = |cell: f64| ValueNoise {
            seed: rng.random(),
            cell,
        };
        let textures = Textures {
            coarse: noise(6.0),
            fine: noise(2.0),
        };
        let lesion_boundary = noise(9.0);
        let scanner_noise_seed = rng.random();
        // Eleven ribs around the back and sides, each turned slightly.
        let rib_angles = (0..11)
            .map(|i| -2.6 + i as f64 * 0.52 + rng.random_range(-0.05..0.05))
            .collect();
        Self {
            body,
            vessels,
            airways,
            textures,
            lesion_boundary,
            scanner_noise_seed,
            rib_angles,
        }
    }
}

impl PhantomParams {
    /// Generates the study: body and lungs, vessels and airways, lesions, scanner noise.
    pub fn generate(&self) -> Phantom {
        let category = category_of(self.index);
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.index as u64),
        );
        let (dims, spacing) = self.size.grid();
        let grid = Grid::new(dims, spacing);
        let anatomy = Anatomy::draw(&mut rng, &grid);

        let shape = (dims[0], dims[1], dims[2]);
        let mut ct = Array3::<f32>::from_elem(shape, -1000.0);
        let mut lung = Array3::<u8>::zeros(shape);
        let textures = &anatomy.textures;
        paint_body(
            &grid,
            &anatomy.body,
            &anatomy.rib_angles,
            textures,
            &mut ct,
            &mut lung,
        );
        for t in &anatomy.vessels {
            draw_tube(&grid, t, &mut ct, &lung, false);
        }
        for t in &anatomy.airways {
            draw_tube(&grid, t, &mut ct, &lung, true);
        }
        let mut lesion = Array3::<u8>::zeros(shape);
        let style = LesionStyle {
            grid: &grid,
            boundary: &anatomy.lesion_boundary,
            textures,
        };
        let lesion_voxels = add_lesions(&mut rng, &style, category, &lung, &mut ct, &mut lesion);
        // Scanner noise inside the field of view.
        let noise = ValueNoise {
            seed: anatomy.scanner_noise_seed,
            cell: spacing[0] * 0.5,
        };
        for ((i, j, k), v) in ct.indexed_iter_mut() {
            if *v > OUTSIDE_FOV_HU {
                *v += (12.0 * noise.at(grid.centre(i, j, k))) as f32;
            }
        }

        let lung_voxels = lung.iter().filter(|&&v| v == 1).count().max(1);
        // The anatomy is drawn with y toward the patient's back; MosMed's files are LAS (j
        // toward the front), so the voxels are written with j reversed and a LAS affine.
        Phantom {
            ct: Volume {
                data: front_to_back(ct),
                spacing,
                affine: grid.las_affine(),
            },
            lung: front_to_back(lung),
            lesion: front_to_back(lesion),
            category,
            involvement: lesion_voxels as f64 / lung_voxels as f64,
        }
    }
}

/// `a` with its j axis reversed (drawn toward the back, written toward the front).
fn front_to_back<T: Clone>(mut a: Array3<T>) -> Array3<T> {
    a.invert_axis(ndarray::Axis(1));
    a.as_standard_layout().into_owned()
}

/// Generates study `index` of a phantom set with seed `seed`.
pub fn generate(seed: u64, index: u32, size: PhantomSize) -> Phantom {
    PhantomParams { seed, index, size }.generate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lesions::involvement_range;

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

    /// The mean world position (RAS+, mm) of the voxels whose value `keep` accepts.
    fn centroid(v: &Volume, keep: impl Fn(f32) -> bool) -> [f64; 3] {
        let (mut sum, mut n) = ([0.0; 3], 0.0);
        for ((i, j, k), &x) in v.data.indexed_iter() {
            if keep(x) {
                let ijk = [i as f64, j as f64, k as f64];
                for (r, s) in sum.iter_mut().enumerate() {
                    *s += (0..3).map(|c| v.affine[r][c] * ijk[c]).sum::<f64>() + v.affine[r][3];
                }
                n += 1.0;
            }
        }
        assert!(n > 0.0, "no voxel selected");
        sum.map(|s| s / n)
    }

    #[test]
    fn the_header_agrees_with_the_anatomy() {
        // Read back from the file, as a viewer would: MosMed's LAS, the patient supine.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ct.nii.gz");
        generate(4, 0, PhantomSize::Small)
            .ct
            .write_i16(&path)
            .unwrap();
        let ct = Volume::read(&path).unwrap();
        assert_eq!(crate::Orientation::of(&ct.affine), crate::Orientation::LAS);
        let body = centroid(&ct, |v| v > -500.0 && v < 300.0);
        // The table (250 HU) and the spine's cortex (550 HU) lie behind the body's centre (world
        // y is anterior), the spine on the midline.
        let table = centroid(&ct, |v| (225.0..275.0).contains(&v));
        let spine = centroid(&ct, |v| (525.0..575.0).contains(&v));
        assert!(table[1] < body[1] - 80.0, "table {table:?} body {body:?}");
        assert!(spine[1] < body[1] - 40.0, "spine {spine:?} body {body:?}");
        assert!(spine[0].abs() < 5.0, "spine {spine:?}");
        // The descending aorta (50 HU, denser than the 40 HU around it) on the patient's left:
        // world x is toward the right, so its x is negative; in front of the spine.
        // Scanner noise is at most ±12 HU, so only blood reaches 53–62 HU.
        let near_aorta = centroid(&ct, |v| (53.0..62.0).contains(&v));
        assert!(near_aorta[0] < -5.0, "aorta {near_aorta:?}");
        assert!(
            near_aorta[1] > spine[1],
            "aorta {near_aorta:?} spine {spine:?}"
        );
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
