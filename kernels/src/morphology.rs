//! Binary dilation and erosion of a 3-D mask by an arbitrary structuring element (a list of
//! voxel offsets; [`ellipsoid_offsets`] builds a ball in millimetres on anisotropic voxels).
//!
//! Outside the volume, the mask continues as its nearest face voxel (the volume is padded by
//! replication), so an organ cut by the scan's first or last slice is closed as if it went on.
//! scipy's `binary_closing` with its default `border_value=0` erodes masks that touch the faces
//! (it would cut the lungs' first and last slices); a border of ones instead keeps everything
//! within the element's radius of a face. A closing here never removes a voxel of the mask.

use cubecl::prelude::*;

use crate::resample::Shape3;

/// Dilation or erosion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Morph {
    /// A voxel is set if any voxel under the element is.
    Dilate,
    /// A voxel stays set only if every voxel under the element is.
    Erode,
}

/// Offsets of an ellipsoid with the given radii in voxels (one per axis), centre included.
///
/// ```
/// let ball = covflow_kernels::ellipsoid_offsets([1.0, 1.0, 1.0]);
/// assert_eq!(ball.len(), 7); // the centre and its six face neighbours
/// assert_eq!(covflow_kernels::ellipsoid_offsets([1.0, 1.0, 0.0]).len(), 5);
/// ```
pub fn ellipsoid_offsets(radii: [f64; 3]) -> Vec<[i32; 3]> {
    let r = radii.map(|r| r.max(0.0).floor() as i32);
    let mut out = Vec::new();
    for a in -r[0]..=r[0] {
        for b in -r[1]..=r[1] {
            for c in -r[2]..=r[2] {
                let q: f64 = [a, b, c]
                    .iter()
                    .zip(&radii)
                    .map(|(&o, &rad)| {
                        if o == 0 {
                            0.0
                        } else {
                            (o as f64 / rad).powi(2)
                        }
                    })
                    .sum();
                if q <= 1.0 + 1e-9 {
                    out.push([a, b, c]);
                }
            }
        }
    }
    out
}

/// Plain CPU reference.
pub fn morph_reference(mask: &[u8], shape: Shape3, offsets: &[[i32; 3]], op: Morph) -> Vec<u8> {
    assert_eq!(
        mask.len(),
        shape.iter().product::<usize>(),
        "mask length must match its shape"
    );
    let [d0, d1, d2] = shape.map(|d| d as i32);
    let mut out = vec![0u8; mask.len()];
    for a in 0..d0 {
        for b in 0..d1 {
            for c in 0..d2 {
                let hit = |o: &[i32; 3]| {
                    let p = [
                        (a + o[0]).clamp(0, d0 - 1),
                        (b + o[1]).clamp(0, d1 - 1),
                        (c + o[2]).clamp(0, d2 - 1),
                    ];
                    mask[((p[0] * d1 + p[1]) * d2 + p[2]) as usize] != 0
                };
                let set = match op {
                    Morph::Dilate => offsets.iter().any(hit),
                    Morph::Erode => offsets.iter().all(hit),
                };
                out[((a * d1 + b) * d2 + c) as usize] = set as u8;
            }
        }
    }
    out
}

#[cube]
fn clamp(v: i32, lo: i32, hi: i32) -> i32 {
    let mut r = v;
    if r < lo {
        r = lo;
    }
    if r > hi {
        r = hi;
    }
    r
}

/// One output voxel per unit; `erode` is 0 or 1, offsets are flattened triples.
#[cube(launch)]
pub fn morph_kernel(
    input: &Array<u32>,
    offsets: &Array<i32>,
    output: &mut Array<u32>,
    d1: u32,
    d2: u32,
    d0: u32,
    erode: u32,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let idx = ABSOLUTE_POS as u32;
    let a = (idx / (d1 * d2)) as i32;
    let b = ((idx / d2) % d1) as i32;
    let c = (idx % d2) as i32;
    let n = offsets.len() / 3;
    // Dilation looks for one set voxel, erosion for one clear voxel; the answer flips on a find.
    let mut found = false;
    for k in 0..n {
        if !found {
            let p0 = clamp(a + offsets[3 * k], 0, d0 as i32 - 1);
            let p1 = clamp(b + offsets[3 * k + 1], 0, d1 as i32 - 1);
            let p2 = clamp(c + offsets[3 * k + 2], 0, d2 as i32 - 1);
            let v = input[((p0 as u32 * d1 + p1 as u32) * d2 + p2 as u32) as usize];
            if erode == 0 {
                found = v != 0;
            } else {
                found = v == 0;
            }
        }
    }
    if erode == 0 {
        output[ABSOLUTE_POS] = found as u32;
    } else {
        output[ABSOLUTE_POS] = (!found) as u32;
    }
}

/// Launches the dilation or erosion on device buffers: `input` and `output` (u32, one per voxel)
/// and `offsets` (i32, flattened triples, `n_offsets` of them).
pub fn launch_morph<R: Runtime>(
    client: &ComputeClient<R>,
    input: &cubecl::server::Handle,
    offsets: &cubecl::server::Handle,
    n_offsets: usize,
    output: &cubecl::server::Handle,
    shape: Shape3,
    op: Morph,
) {
    let n: usize = shape.iter().product();
    let threads = 256u32;
    morph_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(input.clone(), n) },
        unsafe { ArrayArg::from_raw_parts(offsets.clone(), 3 * n_offsets) },
        unsafe { ArrayArg::from_raw_parts(output.clone(), n) },
        shape[1] as u32,
        shape[2] as u32,
        shape[0] as u32,
        (op == Morph::Erode) as u32,
    );
}

/// Dilates or erodes `mask` on any cubecl runtime. Same output as [`morph_reference`].
pub fn morph<R: Runtime>(
    client: &ComputeClient<R>,
    mask: &[u8],
    shape: Shape3,
    offsets: &[[i32; 3]],
    op: Morph,
) -> Vec<u8> {
    let n = mask.len();
    assert_eq!(
        n,
        shape.iter().product::<usize>(),
        "mask length must match its shape"
    );
    let words: Vec<u32> = mask.iter().map(|&m| (m != 0) as u32).collect();
    let flat: Vec<i32> = offsets.iter().flatten().copied().collect();
    let in_h = client.create_from_slice(u32::as_bytes(&words));
    let off_h = client.create_from_slice(i32::as_bytes(&flat));
    let out_h = client.empty(n * 4);
    launch_morph(client, &in_h, &off_h, offsets.len(), &out_h, shape, op);
    u32::from_bytes(&client.read_one_unchecked(out_h))
        .iter()
        .map(|&v| v as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_matches_the_reference_on_random_masks() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let shape = [13, 17, 7];
        let n = shape.iter().product();
        for (seed, density) in [(5, 0.2), (6, 0.7)] {
            let mask: Vec<u8> = crate::random_hu(n, seed)
                .iter()
                .map(|v| ((v + 2048.0) / 3000.0 < density) as u8)
                .collect();
            for radii in [[1.0, 1.0, 1.0], [2.5, 2.5, 1.0], [3.0, 1.0, 0.0]] {
                let se = ellipsoid_offsets(radii);
                for op in [Morph::Dilate, Morph::Erode] {
                    let want = morph_reference(&mask, shape, &se, op);
                    let got = morph(&client, &mask, shape, &se, op);
                    assert_eq!(got, want, "seed {seed} radii {radii:?} {op:?}");
                }
            }
        }
    }

    #[test]
    fn closing_fills_a_gap_and_keeps_faces() {
        // A bar along the last axis with a one-voxel gap, touching both ends of the volume.
        let shape = [3, 3, 9];
        let mut mask = vec![0u8; 81];
        for c in 0..9 {
            if c != 4 {
                mask[(3 + 1) * 9 + c] = 1;
            }
        }
        let se = ellipsoid_offsets([0.0, 0.0, 1.0]);
        let closed = morph_reference(
            &morph_reference(&mask, shape, &se, Morph::Dilate),
            shape,
            &se,
            Morph::Erode,
        );
        let bar: Vec<u8> = (0..9).map(|c| closed[(3 + 1) * 9 + c]).collect();
        assert_eq!(bar, vec![1; 9], "gap filled, end voxels kept");
        assert_eq!(closed.iter().map(|&v| v as usize).sum::<usize>(), 9);
    }
}
