//! The body: outline with a fat layer on a scanner table, spine and ribs, mediastinum with the
//! heart and aorta, and two lungs whose cross-section follows the apex-to-base profile, with
//! parenchyma texture denser posteriorly.

use ndarray::Array3;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::grid::Grid;
use super::noise::ValueNoise;

/// The descending aorta's centre in the axial plane (x toward the patient's left, y toward the
/// back, mm): left of and in front of the spine.
pub(crate) const AORTA: [f64; 2] = [18.0, 25.0];

/// Outside the scanner's field-of-view circle, as real scanners write it.
pub(crate) const OUTSIDE_FOV_HU: f32 = -2048.0;

/// Lung geometry of one study (mm, origin at the volume centre, y grows posterior, z cranial).
pub(crate) struct Lungs {
    /// (centre x, semi-axis x, semi-axis y) for right (x < 0) and left lung.
    pub(crate) sides: [(f64, f64, f64); 2],
    pub(crate) cy: f64,
    pub(crate) z_centre: f64,
    pub(crate) z_half: f64,
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

/// The body of one study: its outline's semi-axes and the lungs inside it.
pub(crate) struct Body {
    /// Semi-axes of the outline (x, y), mm.
    pub(crate) axes: (f64, f64),
    /// The outline's centre along y, mm.
    pub(crate) cy: f64,
    pub(crate) lungs: Lungs,
}

impl Body {
    /// Draws a body: each size jittered by ±8 % around an adult's.
    pub(crate) fn draw(rng: &mut ChaCha8Rng, grid: &Grid) -> Self {
        let jitter = |rng: &mut ChaCha8Rng, v: f64| v * rng.random_range(0.92..1.08);
        let axes = (jitter(rng, 158.0), jitter(rng, 112.0));
        let lungs = Lungs {
            sides: [
                (-jitter(rng, 72.0), jitter(rng, 56.0), jitter(rng, 80.0)),
                (jitter(rng, 70.0), jitter(rng, 52.0), jitter(rng, 78.0)),
            ],
            cy: 4.0,
            z_centre: rng.random_range(-0.08..0.08) * grid.zext,
            z_half: grid.zext * rng.random_range(0.47..0.53),
        };
        Self {
            axes,
            cy: 8.0,
            lungs,
        }
    }
}

/// The parenchyma's textures (coarse and fine).
pub(crate) struct Textures {
    pub(crate) coarse: ValueNoise,
    pub(crate) fine: ValueNoise,
}

/// Paints the body into `ct` (HU) and the lungs into `lung` over the whole grid. `rib_angles`
/// are the ribs' directions around the body's centre, radians.
pub(crate) fn paint_body(
    grid: &Grid,
    body: &Body,
    rib_angles: &[f64],
    textures: &Textures,
    ct: &mut Array3<f32>,
    lung: &mut Array3<u8>,
) {
    let lungs = &body.lungs;
    let (ax, ay) = body.axes;
    for ((i, j, k), v) in ct.indexed_iter_mut() {
        let p = grid.centre(i, j, k);
        let r_fov = (p[0] * p[0] + p[1] * p[1]).sqrt();
        if r_fov > grid.fov / 2.0 * 0.98 {
            *v = OUTSIDE_FOV_HU;
            continue;
        }
        let bx = p[0] / ax;
        let by = (p[1] - body.cy) / ay;
        let e = bx * bx + by * by;
        let hu: f64 = if e >= 1.0 {
            let table = (p[1] - (body.cy + ay + 18.0)).abs() < 5.0 && p[0].abs() < 150.0;
            if table { 250.0 } else { -1000.0 }
        } else if lungs.contains(p).is_some() && e < 0.64 {
            // Inside the rib cage (ribs at √e = 0.83): a chest wall always separates the lungs
            // from the air around the body.
            lung[[i, j, k]] = 1;
            let posterior = ((p[1] - lungs.cy) / 80.0).clamp(-1.0, 1.0);
            -850.0
                + 40.0 * textures.coarse.at(p)
                + 15.0 * textures.fine.at(p)
                + 45.0 * posterior.max(0.0)
        } else if e > 0.86 {
            -100.0 // subcutaneous fat
        } else {
            // Spine, ribs, mediastinum (heart, aorta), muscle.
            let spine = ((p[0]).powi(2) + (p[1] - (body.cy + ay * 0.62)).powi(2)).sqrt();
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
                // The descending aorta, left of the spine: unenhanced blood is denser than the
                // soft tissue around it (about 50 against 40 HU).
                let aorta = ((p[0] - AORTA[0]).powi(2) + (p[1] - AORTA[1]).powi(2)).sqrt() < 14.0;
                if aorta { 50.0 } else { 40.0 }
            }
        };
        *v = hu as f32;
    }
}
