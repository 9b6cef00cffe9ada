//! Voxel-axis orientation: which world direction each voxel axis increases toward, and exact
//! reorientation (axis permutations and flips of the voxels and the affine, no interpolation),
//! like MONAI's `Orientation` transform or nibabel's `as_reoriented`.
//!
//! World space is NIfTI's RAS+: x toward the patient's Right, y Anterior, z Superior. Codes name,
//! for voxel axes i, j, k, the direction each increases toward: MosMedData's files are `LAS`
//! (i toward the patient's left, j anterior, k superior).

use std::fmt;
use std::str::FromStr;

use ndarray::Axis;

use crate::volume::Volume;

/// Orientation codes of a volume's voxel axes, such as `LAS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Orientation([Direction; 3]);

/// A world direction: an axis of RAS+ space and a sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Direction {
    /// 0 = x (R/L), 1 = y (A/P), 2 = z (S/I).
    world_axis: usize,
    /// Toward R, A or S.
    positive: bool,
}

impl Direction {
    fn code(self) -> char {
        ["RL", "AP", "SI"][self.world_axis]
            .chars()
            .nth(usize::from(!self.positive))
            .expect("two letters")
    }
}

impl Orientation {
    /// MosMedData's orientation, which covflow's models are trained in.
    pub const LAS: Orientation = Orientation([
        Direction {
            world_axis: 0,
            positive: false,
        },
        Direction {
            world_axis: 1,
            positive: true,
        },
        Direction {
            world_axis: 2,
            positive: true,
        },
    ]);

    /// The orientation of an affine: for each voxel axis, the world direction its column points
    /// to most.
    ///
    /// ```
    /// use covflow_imaging::orientation::Orientation;
    /// let mut a = [[0.0; 4]; 4];
    /// (a[0][0], a[1][1], a[2][2], a[3][3]) = (-0.7, 0.7, 8.0, 1.0);
    /// assert_eq!(Orientation::of(&a).to_string(), "LAS");
    /// ```
    pub fn of(affine: &[[f64; 4]; 4]) -> Self {
        Orientation([0, 1, 2].map(|axis| {
            let col = [affine[0][axis], affine[1][axis], affine[2][axis]];
            let world_axis = (0..3)
                .max_by(|&a, &b| col[a].abs().total_cmp(&col[b].abs()))
                .expect("three rows");
            Direction {
                world_axis,
                positive: col[world_axis] >= 0.0,
            }
        }))
    }
}

impl fmt::Display for Orientation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|d| write!(f, "{}", d.code()))
    }
}

impl FromStr for Orientation {
    type Err = String;

    /// Three letters, one of each pair R/L, A/P, S/I, in any order.
    ///
    /// ```
    /// use covflow_imaging::orientation::Orientation;
    /// assert_eq!("las".parse::<Orientation>().unwrap(), Orientation::LAS);
    /// assert!("LRS".parse::<Orientation>().unwrap_err().contains("one of each"));
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an orientation: three letters, one of each pair R/L, A/P, S/I (e.g. LAS, RAS, LPS)"
            )
        };
        let dirs: Vec<Direction> = s
            .chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                let world_axis = ["RL", "AP", "SI"].iter().position(|p| p.contains(c))?;
                Some(Direction {
                    world_axis,
                    positive: "RAS".contains(c),
                })
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let [a, b, c] = dirs[..] else {
            return Err(bad());
        };
        let mut axes = [a.world_axis, b.world_axis, c.world_axis];
        axes.sort_unstable();
        if axes != [0, 1, 2] {
            return Err(bad());
        }
        Ok(Orientation([a, b, c]))
    }
}

impl serde::Serialize for Orientation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Orientation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Orientation {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Orientation".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string"
        })
    }
}

/// `volume` with its voxel axes permuted and flipped so that its orientation is `target`; the
/// affine changes with them, so every voxel keeps its place in the patient. Exact: no voxel value
/// changes.
///
/// ```
/// use covflow_imaging::{Volume, orientation::{Orientation, reorient}};
/// let mut v = Volume::new(ndarray::Array3::from_shape_fn((2, 3, 4), |(i, j, k)| (100 * i + 10 * j + k) as f32), [1.0, 2.0, 3.0]);
/// // RAS (the diagonal affine) to LAS: the first axis flips.
/// let las = reorient(&v, Orientation::LAS);
/// assert_eq!(las.data[[0, 2, 3]], v.data[[1, 2, 3]]);
/// assert_eq!(las.affine[0][0], -1.0);
/// assert_eq!(Orientation::of(&las.affine), Orientation::LAS);
/// ```
pub fn reorient(volume: &Volume, target: Orientation) -> Volume {
    let from = Orientation::of(&volume.affine);
    // For each target axis, the source axis along the same world axis, and whether it flips.
    let source: [(usize, bool); 3] = target.0.map(|t| {
        let s = (0..3)
            .find(|&s| from.0[s].world_axis == t.world_axis)
            .expect("both orientations name every world axis");
        (s, from.0[s].positive != t.positive)
    });
    let mut data = volume.data.view().permuted_axes(source.map(|(s, _)| s));
    let dims = data.shape().to_vec();
    let mut affine = volume.affine;
    for (row, old) in affine.iter_mut().zip(volume.affine).take(3) {
        for (t, &(s, flip)) in source.iter().enumerate() {
            row[t] = if flip { -old[s] } else { old[s] };
            if flip {
                row[3] += old[s] * (dims[t] as f64 - 1.0);
            }
        }
    }
    for (t, &(_, flip)) in source.iter().enumerate() {
        if flip {
            data.invert_axis(Axis(t));
        }
    }
    Volume {
        data: data.as_standard_layout().into_owned(),
        spacing: source.map(|(s, _)| volume.spacing[s]),
        affine,
    }
}

/// The rotation of a NIfTI quaternion `(b, c, d)` (`a` is implied, ≥ 0), as the standard's
/// `quatern_to_mat44` computes it.
pub(crate) fn quaternion_rotation(b: f64, c: f64, d: f64) -> [[f64; 3]; 3] {
    let aa = (1.0 - b * b - c * c - d * d).max(0.0).sqrt();
    [
        [
            aa * aa + b * b - c * c - d * d,
            2.0 * (b * c - aa * d),
            2.0 * (b * d + aa * c),
        ],
        [
            2.0 * (b * c + aa * d),
            aa * aa + c * c - b * b - d * d,
            2.0 * (c * d - aa * b),
        ],
        [
            2.0 * (b * d - aa * c),
            2.0 * (c * d + aa * b),
            aa * aa + d * d - c * c - b * b,
        ],
    ]
}

/// The NIfTI quaternion of an affine whose 3 × 3 part is a rotation (with an optional
/// reflection, `qfac`) times positive scales: `(b, c, d, qfac)`, as the standard's
/// `mat44_to_quatern` computes it; `None` when the columns are not orthogonal.
pub(crate) fn quaternion(affine: &[[f64; 4]; 4]) -> Option<(f64, f64, f64, f64)> {
    let mut r = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let norm = (0..3).map(|i| affine[i][c].powi(2)).sum::<f64>().sqrt();
        if norm == 0.0 {
            return None;
        }
        for i in 0..3 {
            r[i][c] = affine[i][c] / norm;
        }
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        if (0..3).map(|i| r[i][a] * r[i][b]).sum::<f64>().abs() > 1e-6 {
            return None;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in &mut r {
            row[2] = -row[2];
        }
    }
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (a, b, c, d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r[0][1] + r[1][0]) / b;
            d = 0.25 * (r[0][2] + r[2][0]) / b;
            a = 0.25 * (r[2][1] - r[1][2]) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r[0][1] + r[1][0]) / c;
            d = 0.25 * (r[1][2] + r[2][1]) / c;
            a = 0.25 * (r[0][2] - r[2][0]) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r[0][2] + r[2][0]) / d;
            c = 0.25 * (r[1][2] + r[2][1]) / d;
            a = 0.25 * (r[1][0] - r[0][1]) / d;
        }
    }
    // The standard keeps a ≥ 0 (only b, c, d are stored).
    let s = if a < 0.0 { -1.0 } else { 1.0 };
    Some((s * b, s * c, s * d, qfac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn volume() -> Volume {
        let mut v = Volume::new(
            Array3::from_shape_fn((3, 4, 5), |(i, j, k)| (100 * i + 10 * j + k) as f32),
            [0.7, 0.8, 8.0],
        );
        v.affine[0][3] = -90.0;
        v.affine[1][3] = 12.0;
        v.affine[2][3] = 40.0;
        v
    }

    /// World position of voxel `i`.
    fn world(v: &Volume, i: [usize; 3]) -> [f64; 3] {
        let a = &v.affine;
        [0, 1, 2].map(|r| (0..3).map(|c| a[r][c] * i[c] as f64).sum::<f64>() + a[r][3])
    }

    #[test]
    fn every_voxel_keeps_its_place_in_the_patient() {
        let v = volume();
        for code in ["LAS", "RAS", "LPS", "SAR", "PIL", "ASL"] {
            let o: Orientation = code.parse().unwrap();
            let r = reorient(&v, o);
            assert_eq!(Orientation::of(&r.affine), o, "{code}");
            // Each value sits at the same world point as before.
            for ((i, j, k), &x) in r.data.indexed_iter() {
                let src = v
                    .data
                    .indexed_iter()
                    .find(|(_, y)| **y == x)
                    .map(|(p, _)| [p.0, p.1, p.2])
                    .unwrap();
                let (a, b) = (world(&r, [i, j, k]), world(&v, src));
                assert!(
                    (0..3).all(|c| (a[c] - b[c]).abs() < 1e-9),
                    "{code}: {a:?} vs {b:?}"
                );
            }
            // And back.
            let back = reorient(&r, Orientation::of(&v.affine));
            assert_eq!(back.data, v.data, "{code}");
            assert_eq!(back.affine, v.affine, "{code}");
            assert_eq!(back.spacing, v.spacing, "{code}");
        }
    }

    #[test]
    fn quaternions_reproduce_axis_aligned_affines() {
        let v = volume();
        for code in ["LAS", "RAS", "LPS", "SAR", "PIL"] {
            let a = reorient(&v, code.parse().unwrap()).affine;
            let (b, c, d, qfac) = quaternion(&a).unwrap();
            let r = quaternion_rotation(b, c, d);
            for i in 0..3 {
                for j in 0..3 {
                    let scale = (0..3).map(|k| a[k][j].powi(2)).sum::<f64>().sqrt();
                    let q = if j == 2 { qfac } else { 1.0 };
                    assert!(
                        (r[i][j] * scale * q - a[i][j]).abs() < 1e-9,
                        "{code} [{i}][{j}]"
                    );
                }
            }
        }
    }
}
