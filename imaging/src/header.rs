//! The NIfTI-1 header: checked before anything is allocated or read, and the voxel-to-world
//! affine it declares.

use std::path::Path;

use nifti::NiftiHeader;

use crate::volume::VolumeError;

fn nifti_err(path: &Path) -> impl FnOnce(nifti::NiftiError) -> VolumeError + '_ {
    move |e| VolumeError::Nifti {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The most voxels covflow reads from one file: 2^31 (8 GiB as float32), far above any CT.
pub const MAX_VOXELS: u64 = 1 << 31;

/// Reads and checks a NIfTI-1 header: the fields that decide what is allocated and read
/// (`sizeof_hdr`, `dim`, `pixdim`, `vox_offset`, the affine) must be in range, so that a damaged
/// file is an error naming the field, not a crash or a volume of NaN spacing.
pub fn read_header(path: &Path) -> Result<NiftiHeader, VolumeError> {
    let h = NiftiHeader::from_file(path).map_err(nifti_err(path))?;
    let bad = |field: &str, value: String, why: &str| VolumeError::BadHeader {
        path: path.to_path_buf(),
        field: field.into(),
        value,
        why: why.into(),
    };
    if h.sizeof_hdr != 348 {
        return Err(bad(
            "sizeof_hdr",
            h.sizeof_hdr.to_string(),
            "must be 348 (NIfTI-1)",
        ));
    }
    let rank = h.dim[0];
    if !(1..=7).contains(&rank) {
        return Err(bad("dim[0]", rank.to_string(), "must be 1 to 7 dimensions"));
    }
    let mut voxels: u64 = 1;
    for i in 1..=rank as usize {
        if h.dim[i] < 1 {
            return Err(bad(
                &format!("dim[{i}]"),
                h.dim[i].to_string(),
                "must be at least 1",
            ));
        }
        voxels = voxels.saturating_mul(h.dim[i] as u64);
    }
    if voxels > MAX_VOXELS {
        return Err(bad(
            "dim",
            format!("{:?}", &h.dim[1..=rank as usize]),
            &format!("more than {MAX_VOXELS} voxels"),
        ));
    }
    for i in 1..=3 {
        let p = h.pixdim[i];
        // Voxels from a micrometre to a metre; zero or NaN would make every later size NaN.
        if !(p.is_finite() && (1e-3..=1e3).contains(&p.abs())) {
            return Err(bad(
                &format!("pixdim[{i}]"),
                p.to_string(),
                "must be a voxel size between 0.001 and 1000 mm",
            ));
        }
    }
    // A `.hdr` has its voxels in a separate `.img` (offset 0 there); a `.nii` holds both.
    let min_offset = if path.extension().is_some_and(|e| e == "hdr") {
        0.0
    } else {
        348.0
    };
    if !(h.vox_offset.is_finite() && h.vox_offset >= min_offset && h.vox_offset < 1e9) {
        return Err(bad(
            "vox_offset",
            h.vox_offset.to_string(),
            "must be where the voxels start: 352 or more, within the file",
        ));
    }
    let gzipped = path.extension().is_some_and(|e| e == "gz");
    if !gzipped && let Ok(meta) = std::fs::metadata(path) {
        let bytes = voxels.saturating_mul((h.bitpix.max(8) / 8) as u64);
        if h.vox_offset as u64 + bytes > meta.len() {
            return Err(bad(
                "vox_offset",
                h.vox_offset.to_string(),
                &format!(
                    "the voxels ({bytes} bytes from there) run past the end of the file ({} bytes)",
                    meta.len()
                ),
            ));
        }
    }
    let affine_fields = [h.srow_x, h.srow_y, h.srow_z].concat();
    let quatern = [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ];
    if (h.sform_code > 0 && affine_fields.iter().any(|v| !v.is_finite()))
        || (h.qform_code > 0 && quatern.iter().any(|v| !v.is_finite()))
    {
        return Err(bad(
            "srow/quatern",
            "not finite".into(),
            "the voxel-to-world affine must be finite",
        ));
    }
    Ok(h)
}

/// The voxel-to-world affine a header declares, chosen as the NIfTI standard and nibabel do:
/// sform when `sform_code > 0`, else qform when `qform_code > 0`, else the spacing alone.
pub fn header_affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let mut a = [[0.0; 4]; 4];
    a[3][3] = 1.0;
    if h.sform_code > 0 {
        for (row, src) in a.iter_mut().zip([h.srow_x, h.srow_y, h.srow_z]) {
            for (v, s) in row.iter_mut().zip(src) {
                *v = s as f64;
            }
        }
    } else if h.qform_code > 0 {
        let r = crate::orientation::quaternion_rotation(
            h.quatern_b as f64,
            h.quatern_c as f64,
            h.quatern_d as f64,
        );
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [
            h.pixdim[1] as f64,
            h.pixdim[2] as f64,
            qfac * h.pixdim[3] as f64,
        ];
        for i in 0..3 {
            for j in 0..3 {
                a[i][j] = r[i][j] * scale[j];
            }
        }
        a[0][3] = h.quatern_x as f64;
        a[1][3] = h.quatern_y as f64;
        a[2][3] = h.quatern_z as f64;
    } else {
        for (i, row) in a.iter_mut().take(3).enumerate() {
            row[i] = h.pixdim[i + 1] as f64;
        }
    }
    a
}
