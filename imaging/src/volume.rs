//! A CT volume: voxels plus the geometry that places them in the patient, read from and written to
//! NIfTI-1 (`.nii`, `.nii.gz`).

use std::path::{Path, PathBuf};

use ndarray::Array3;
use nifti::writer::WriterOptions;

pub use crate::header::{MAX_VOXELS, header_affine, read_header};
use nifti::{InMemNiftiVolume, IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};

/// Voxels `[x, y, z]` (NIfTI's i, j, k order) with their spacing and voxel-to-world affine.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Values after `scl_slope`/`scl_inter` (HU for CT).
    pub data: Array3<f32>,
    /// Voxel size in mm along x, y, z.
    pub spacing: [f64; 3],
    /// Voxel index → scanner mm (sform when set, else qform, else a diagonal from the spacing).
    pub affine: [[f64; 4]; 4],
}

/// The ways reading or writing a volume fails; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The NIfTI library failed.
    #[error("{path}: {message}")]
    Nifti {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A header field out of its range: reading on would allocate absurdly, divide by zero or
    /// read outside the file.
    #[error(
        "{path}: header field `{field}` is {value}: {why}\n  help: the file is damaged or not a NIfTI-1 volume; re-export it from the scanner or the viewer"
    )]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// The field (`pixdim[1]`, `vox_offset`, …).
        field: String,
        /// Its value.
        value: String,
        /// What it must be.
        why: String,
    },
    /// A volume that is not 3-D.
    #[error("{path}: expected a 3-D volume, found {dims} dimensions ({shape:?})")]
    NotThreeD {
        /// The file.
        path: PathBuf,
        /// Its dimensionality.
        dims: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
}

/// What `covflow inspect` prints of a file: the header facts, without decoding twice.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VolumeInfo {
    /// The file.
    pub path: PathBuf,
    /// Voxels along x, y, z.
    pub shape: [usize; 3],
    /// mm.
    pub spacing: [f64; 3],
    /// NIfTI datatype (`Int16`, `Float32`, …).
    pub datatype: String,
    /// Orientation code of the affine's axes (`RAS`, `LPS`, …).
    pub orientation: String,
    /// `scl_slope` as stored (NaN and 0 mean identity).
    pub scl_slope: f32,
    /// `scl_inter` as stored.
    pub scl_inter: f32,
    /// qform and sform codes.
    pub qform_code: i16,
    /// See `qform_code`.
    pub sform_code: i16,
    /// Smallest value after scaling.
    pub min: f32,
    /// Largest value after scaling.
    pub max: f32,
}

fn nifti_err(path: &Path) -> impl FnOnce(nifti::NiftiError) -> VolumeError + '_ {
    move |e| VolumeError::Nifti {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The standard's rule for scaling: a slope of 0 (or NaN, as MosMed writes) means none.
fn effective_scaling(header: &NiftiHeader) -> (f32, f32) {
    if header.scl_slope.is_finite() && header.scl_slope != 0.0 {
        let inter = if header.scl_inter.is_finite() {
            header.scl_inter
        } else {
            0.0
        };
        (header.scl_slope, inter)
    } else {
        (1.0, 0.0)
    }
}

/// Axis codes of an affine: for each voxel axis, the world direction it mostly points to.
pub fn orientation(affine: &[[f64; 4]; 4]) -> String {
    crate::orientation::Orientation::of(affine).to_string()
}

/// Writes `$array` (`[x, y, z]`, any element type NIfTI supports) with `$volume`'s geometry to a
/// temporary file beside `$path`, then renames it into place.
macro_rules! write_atomically {
    ($volume:expr, $path:expr, $array:expr) => {{
        let path: &Path = $path;
        let tmp = Volume::temporary_path(path);
        let header = $volume.header();
        WriterOptions::new(&tmp)
            .reference_header(&header)
            .write_nifti(&$array)
            .map_err(nifti_err(path))?;
        std::fs::rename(&tmp, path).map_err(|e| VolumeError::Nifti {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }};
}

impl Volume {
    /// A volume with a diagonal affine (RAS, origin 0).
    pub fn new(data: Array3<f32>, spacing: [f64; 3]) -> Self {
        let mut affine = [[0.0; 4]; 4];
        for (i, s) in spacing.iter().enumerate() {
            affine[i][i] = *s;
        }
        affine[3][3] = 1.0;
        Self {
            data,
            spacing,
            affine,
        }
    }

    /// The voxels from `lo` to `hi` (inclusive) on each axis; the affine moves its origin to
    /// voxel `lo`, so every kept voxel stays where it was in the patient.
    ///
    /// ```
    /// use covflow_imaging::Volume;
    /// let v = Volume::new(ndarray::Array3::from_elem((4, 5, 6), 1.0), [0.5, 0.5, 2.0]);
    /// let c = v.crop([1, 2, 3], [2, 4, 3]);
    /// assert_eq!(c.data.dim(), (2, 3, 1));
    /// assert_eq!([c.affine[0][3], c.affine[1][3], c.affine[2][3]], [0.5, 1.0, 6.0]);
    /// ```
    pub fn crop(&self, lo: [usize; 3], hi: [usize; 3]) -> Volume {
        use ndarray::s;
        let data = self
            .data
            .slice(s![lo[0]..=hi[0], lo[1]..=hi[1], lo[2]..=hi[2]])
            .to_owned();
        let mut affine = self.affine;
        for row in affine.iter_mut().take(3) {
            row[3] += (0..3).map(|c| row[c] * lo[c] as f64).sum::<f64>();
        }
        Volume {
            data,
            spacing: self.spacing,
            affine,
        }
    }

    /// Other voxels on this volume's grid (a mask of this CT, say): same spacing and affine.
    ///
    /// # Panics
    /// When `data`'s shape is not this volume's.
    pub fn with_data(&self, data: Array3<f32>) -> Volume {
        assert_eq!(data.dim(), self.data.dim(), "with_data keeps the grid");
        Volume {
            data,
            spacing: self.spacing,
            affine: self.affine,
        }
    }

    /// Reads a `.nii` or `.nii.gz`.
    pub fn read(path: &Path) -> Result<Self, VolumeError> {
        Ok(Self::read_with_info(path)?.0)
    }

    /// Reads a volume and the header facts `inspect` shows.
    pub fn read_with_info(path: &Path) -> Result<(Self, VolumeInfo), VolumeError> {
        // The header alone first: its fields decide how much is allocated and read.
        read_header(path)?;
        let object = ReaderOptions::new()
            .read_file(path)
            .map_err(nifti_err(path))?;
        let stored = object.header().clone();
        let mut header = stored.clone();
        let (slope, inter) = effective_scaling(&header);
        header.scl_slope = slope;
        header.scl_inter = inter;
        let raw = object.into_volume().into_raw_data();
        // The nifti crate panics when the data's length disagrees with the header (found by
        // fuzzing): check it here.
        let datatype = header.data_type().map_err(nifti_err(path))?;
        let voxels: usize = header.dim[1..=header.dim[0].clamp(1, 7) as usize]
            .iter()
            .map(|&d| d as usize)
            .product();
        let expected = voxels.saturating_mul(datatype.size_of());
        if raw.len() != expected {
            return Err(VolumeError::BadHeader {
                path: path.to_path_buf(),
                field: "dim/datatype".into(),
                value: format!(
                    "{:?} of {datatype:?}",
                    &header.dim[1..=header.dim[0].clamp(1, 7) as usize]
                ),
                why: format!(
                    "that is {expected} bytes of voxels, but the file holds {}",
                    raw.len()
                ),
            });
        }
        let volume = InMemNiftiVolume::from_raw_data(&header, raw).map_err(nifti_err(path))?;
        let array = volume.into_ndarray::<f32>().map_err(nifti_err(path))?;
        let shape = array.shape().to_vec();
        if shape.len() != 3 {
            return Err(VolumeError::NotThreeD {
                path: path.to_path_buf(),
                dims: shape.len(),
                shape,
            });
        }
        let data = array
            .into_dimensionality::<ndarray::Ix3>()
            .expect("checked 3-D");
        // Standard (C) layout, so that x-rows of one z-slice are contiguous per y.
        let data = data.as_standard_layout().into_owned();
        let spacing = [
            header.pixdim[1].abs() as f64,
            header.pixdim[2].abs() as f64,
            header.pixdim[3].abs() as f64,
        ];
        let affine = header_affine(&header);
        let (min, max) = data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let info = VolumeInfo {
            path: path.to_path_buf(),
            shape: [shape[0], shape[1], shape[2]],
            spacing,
            datatype: format!("{:?}", stored.data_type().unwrap_or(NiftiType::Float32)),
            orientation: orientation(&affine),
            scl_slope: stored.scl_slope,
            scl_inter: stored.scl_inter,
            qform_code: stored.qform_code,
            sform_code: stored.sform_code,
            min,
            max,
        };
        Ok((
            Self {
                data,
                spacing,
                affine,
            },
            info,
        ))
    }

    /// A header carrying this volume's geometry: the affine as sform (code 1), and as qform
    /// (code 1) too when it has no rotation, as scanners write MosMed's files.
    fn header(&self) -> NiftiHeader {
        let mut h = NiftiHeader::default();
        h.pixdim[0] = 1.0;
        h.pixdim[1] = self.spacing[0] as f32;
        h.pixdim[2] = self.spacing[1] as f32;
        h.pixdim[3] = self.spacing[2] as f32;
        h.xyzt_units = 2; // mm
        let a = &self.affine;
        h.srow_x = [
            a[0][0] as f32,
            a[0][1] as f32,
            a[0][2] as f32,
            a[0][3] as f32,
        ];
        h.srow_y = [
            a[1][0] as f32,
            a[1][1] as f32,
            a[1][2] as f32,
            a[1][3] as f32,
        ];
        h.srow_z = [
            a[2][0] as f32,
            a[2][1] as f32,
            a[2][2] as f32,
            a[2][3] as f32,
        ];
        h.sform_code = 1;
        // The qform too, as scanners (and MosMed) write it, when the affine is a rotation with
        // scales; readers that ignore the sform then see the same geometry.
        match crate::orientation::quaternion(a) {
            Some((b, c, d, qfac)) => {
                h.qform_code = 1;
                h.pixdim[0] = qfac as f32;
                h.quatern_b = b as f32;
                h.quatern_c = c as f32;
                h.quatern_d = d as f32;
                h.quatern_x = a[0][3] as f32;
                h.quatern_y = a[1][3] as f32;
                h.quatern_z = a[2][3] as f32;
            }
            None => h.qform_code = 0,
        }
        h
    }

    /// Writes as float32 (`.nii.gz` compresses). Written to a temporary name and renamed, so a
    /// killed writer never leaves half a file.
    pub fn write_f32(&self, path: &Path) -> Result<(), VolumeError> {
        let out = self.data.clone();
        write_atomically!(self, path, out)
    }

    /// Writes rounded to int16 (CT in HU), clamping to its range.
    pub fn write_i16(&self, path: &Path) -> Result<(), VolumeError> {
        let out = self
            .data
            .mapv(|v| v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16);
        write_atomically!(self, path, out)
    }

    /// Writes as uint8 (masks).
    pub fn write_u8(&self, path: &Path) -> Result<(), VolumeError> {
        let out = self.data.mapv(|v| v.round().clamp(0.0, 255.0) as u8);
        write_atomically!(self, path, out)
    }

    fn temporary_path(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Keep the extension: the writer compresses when the name ends in `.gz`.
        let ext = if name.ends_with(".gz") {
            "nii.gz"
        } else {
            "nii"
        };
        // No dots before the extension: the writer derives its output name by replacing the
        // last extension.
        let stem = name.replace('.', "_");
        path.with_file_name(format!(".{stem}_{}_tmp.{ext}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_volume(shape: (usize, usize, usize), seed: u64) -> Volume {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let data = Array3::from_shape_simple_fn(shape, || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 3000) as f32 - 1500.0
        });
        let mut v = Volume::new(data, [0.71, 0.69, 8.0]);
        v.affine[0][3] = -180.5;
        v.affine[1][3] = -170.25;
        v.affine[2][3] = 12.0;
        v
    }

    #[test]
    fn round_trips_int16_float32_uint8_gz_and_plain() {
        let dir = tempfile::tempdir().unwrap();
        let v = random_volume((7, 5, 3), 1);
        for name in ["a.nii.gz", "a.nii"] {
            let p = dir.path().join(name);
            v.write_i16(&p).unwrap();
            let (back, info) = Volume::read_with_info(&p).unwrap();
            assert_eq!(
                back.data, v.data,
                "{name}: int16 values are integers, so exact"
            );
            assert_eq!(back.data.dim(), (7, 5, 3));
            assert_eq!(info.datatype, "Int16");
            for i in 0..3 {
                assert!((back.spacing[i] - v.spacing[i]).abs() < 1e-6);
                for j in 0..4 {
                    assert!((back.affine[i][j] - v.affine[i][j]).abs() < 1e-4, "{i},{j}");
                }
            }
            assert_eq!(info.orientation, "RAS");
        }
        let p = dir.path().join("f.nii.gz");
        let mut f = v.clone();
        f.data.mapv_inplace(|x| x * 0.37);
        f.write_f32(&p).unwrap();
        assert_eq!(Volume::read(&p).unwrap().data, f.data);
        let p = dir.path().join("m.nii.gz");
        let mut m = v.clone();
        m.data.mapv_inplace(|x| if x > 0.0 { 1.0 } else { 0.0 });
        m.write_u8(&p).unwrap();
        assert_eq!(Volume::read(&p).unwrap().data, m.data);
        // Nothing temporary is left beside the outputs.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    /// MosMed's headers: int16, `scl_slope = NaN` (which the standard says means no scaling;
    /// applied literally it would turn every voxel into NaN), qform = sform = 1.
    #[test]
    fn mosmed_like_header_with_nan_slope_reads_as_hu() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("study_0255.nii");
        let v = random_volume((6, 4, 2), 2);
        v.write_i16(&p).unwrap();
        // The writer always stores slope 1: patch the header as MosMed's files have it.
        let patch = |slope: f32, inter: f32| {
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[112..116].copy_from_slice(&slope.to_le_bytes());
            bytes[116..120].copy_from_slice(&inter.to_le_bytes());
            std::fs::write(&p, bytes).unwrap();
        };
        patch(f32::NAN, 0.0);
        let (back, info) = Volume::read_with_info(&p).unwrap();
        assert!(info.scl_slope.is_nan());
        assert_eq!(info.datatype, "Int16");
        assert_eq!((info.qform_code, info.sform_code), (1, 1));
        assert_eq!(back.data, v.data);
        // A slope of 0 also means none; a real slope is applied.
        patch(0.0, 5.0);
        assert_eq!(Volume::read(&p).unwrap().data, v.data);
        patch(2.0, -1024.0);
        assert_eq!(
            Volume::read(&p).unwrap().data,
            v.data.mapv(|x| 2.0 * x - 1024.0)
        );
    }

    #[test]
    fn qform_only_and_flipped_axes_give_the_right_affine() {
        // 180° about z: x and y flip (LPS-like).
        let h = NiftiHeader {
            pixdim: [-1.0, 0.7, 0.8, 5.0, 0.0, 0.0, 0.0, 0.0],
            qform_code: 1,
            sform_code: 0,
            quatern_b: 0.0,
            quatern_c: 0.0,
            quatern_d: 1.0,
            quatern_x: 10.0,
            ..NiftiHeader::default()
        };
        let a = header_affine(&h);
        assert!((a[0][0] + 0.7).abs() < 1e-6 && (a[1][1] + 0.8).abs() < 1e-6);
        assert!((a[2][2] + 5.0).abs() < 1e-6, "qfac = -1 flips z");
        assert_eq!(a[0][3], 10.0);
        assert_eq!(orientation(&a), "LPI");
    }
}
