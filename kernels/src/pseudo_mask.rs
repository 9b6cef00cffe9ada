//! The pseudo-mask pass: a scan minus its healed twin, each min-max normalised over its volume,
//! kept inside the lung, and each slice's sum (the slice's pseudo-infection score, which splits
//! slices into "high" and "low" for the segmenter's contrastive batches).
//!
//! On a device this is two launches per volume: a reduction (one cube per slice: the slice's
//! minimum and maximum of scan and twin, by a tree in shared memory), then one fused pass (one
//! cube per slice: the volume's range from the per-slice ones, the normalised difference written
//! out, and the slice's sum by the same tree). A constant volume normalises to 0, as in the
//! reference.

use cubecl::prelude::*;

use crate::resample::Shape3;

/// Units per cube; a power of two for the tree reduction.
const THREADS: u32 = 256;

/// Minimum and maximum of `v` (`(+∞, −∞)` when empty).
fn range(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Plain CPU reference: the difference volume and each slice's sum (in f64, in voxel order).
pub fn pseudo_mask_reference(
    scan: &[f32],
    twin: &[f32],
    lung: &[f32],
    [d, h, w]: Shape3,
) -> (Vec<f32>, Vec<f64>) {
    let ((slo, shi), (tlo, thi)) = (range(scan), range(twin));
    let norm = |x: f32, lo: f32, hi: f32| {
        let span = hi - lo;
        if span > 0.0 { (x - lo) / span } else { 0.0 }
    };
    let diff: Vec<f32> = scan
        .iter()
        .zip(twin)
        .zip(lung)
        .map(|((&s, &t), &l)| {
            if l > 0.5 {
                norm(s, slo, shi) - norm(t, tlo, thi)
            } else {
                0.0
            }
        })
        .collect();
    let sums = (0..d)
        .map(|z| {
            diff[z * h * w..(z + 1) * h * w]
                .iter()
                .map(|&v| v as f64)
                .sum()
        })
        .collect();
    (diff, sums)
}

/// Tree sum (or min, max) of a cube's values in shared memory; the result lands in slot 0.
/// `op`: 0 sum, 1 min, 2 max.
#[cube]
pub(crate) fn tree(shared: &mut SharedMemory<f32>, #[comptime] op: u32) {
    let unit = UNIT_POS as usize;
    // The cube's size (THREADS at launch), read at run time so the loop variable is mutable.
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if unit < stride {
            let a = shared[unit];
            let b = shared[unit + stride];
            if comptime![op == 0] {
                shared[unit] = a + b;
            } else if comptime![op == 1] {
                shared[unit] = f32::min(a, b);
            } else {
                shared[unit] = f32::max(a, b);
            }
        }
        sync_cube();
        stride /= 2;
    }
}

/// One cube per slice: `ranges[4z..4z+4] = [min scan, max scan, min twin, max twin]` of slice z.
#[cube(launch)]
pub fn slice_ranges_kernel(
    scan: &Array<f32>,
    twin: &Array<f32>,
    ranges: &mut Array<f32>,
    plane: u32,
) {
    let z = CUBE_POS as u32;
    let unit = UNIT_POS as usize;
    let mut mins = SharedMemory::<f32>::new(THREADS as usize);
    let mut maxs = SharedMemory::<f32>::new(THREADS as usize);
    let mut tmins = SharedMemory::<f32>::new(THREADS as usize);
    let mut tmaxs = SharedMemory::<f32>::new(THREADS as usize);
    // Beyond any finite f32 after rounding: the identities of min and max.
    let mut a = f32::new(3.4e38);
    let mut b = f32::new(-3.4e38);
    let mut c = f32::new(3.4e38);
    let mut e = f32::new(-3.4e38);
    let mut i = UNIT_POS;
    while i < plane {
        let s = scan[(z * plane + i) as usize];
        let t = twin[(z * plane + i) as usize];
        a = f32::min(a, s);
        b = f32::max(b, s);
        c = f32::min(c, t);
        e = f32::max(e, t);
        i += THREADS;
    }
    mins[unit] = a;
    maxs[unit] = b;
    tmins[unit] = c;
    tmaxs[unit] = e;
    sync_cube();
    tree(&mut mins, 1u32);
    tree(&mut maxs, 2u32);
    tree(&mut tmins, 1u32);
    tree(&mut tmaxs, 2u32);
    if unit == 0 {
        let o = (4 * z) as usize;
        ranges[o] = mins[0usize];
        ranges[o + 1] = maxs[0usize];
        ranges[o + 2] = tmins[0usize];
        ranges[o + 3] = tmaxs[0usize];
    }
}

/// One cube per slice: the normalised difference inside the lung into `diff`, its slice sum into
/// `sums[z]`; the volume's ranges come from `ranges` (all `depth` slices).
#[cube(launch)]
pub fn pseudo_mask_kernel(
    scan: &Array<f32>,
    twin: &Array<f32>,
    lung: &Array<f32>,
    ranges: &Array<f32>,
    diff: &mut Array<f32>,
    sums: &mut Array<f32>,
    plane: u32,
    depth: u32,
) {
    let z = CUBE_POS as u32;
    let unit = UNIT_POS as usize;
    let mut slo = f32::new(3.4e38);
    let mut shi = f32::new(-3.4e38);
    let mut tlo = f32::new(3.4e38);
    let mut thi = f32::new(-3.4e38);
    for k in 0..depth {
        let o = (4 * k) as usize;
        slo = f32::min(slo, ranges[o]);
        shi = f32::max(shi, ranges[o + 1]);
        tlo = f32::min(tlo, ranges[o + 2]);
        thi = f32::max(thi, ranges[o + 3]);
    }
    let sspan = shi - slo;
    let tspan = thi - tlo;
    let mut acc = SharedMemory::<f32>::new(THREADS as usize);
    let mut local = 0.0f32;
    let mut i = UNIT_POS;
    while i < plane {
        let v = (z * plane + i) as usize;
        let mut out = 0.0f32;
        if lung[v] > 0.5 {
            let mut a = 0.0f32;
            let mut b = 0.0f32;
            if sspan > 0.0 {
                a = (scan[v] - slo) / sspan;
            }
            if tspan > 0.0 {
                b = (twin[v] - tlo) / tspan;
            }
            out = a - b;
        }
        diff[v] = out;
        local += out;
        i += THREADS;
    }
    acc[unit] = local;
    sync_cube();
    tree(&mut acc, 0u32);
    if unit == 0 {
        sums[z as usize] = acc[0usize];
    }
}

/// The pass on device buffers of one `[d, h, w]` volume: `(difference, slice sums)` handles.
pub fn launch_pseudo_mask<R: Runtime>(
    client: &ComputeClient<R>,
    scan: cubecl::server::Handle,
    twin: cubecl::server::Handle,
    lung: cubecl::server::Handle,
    [d, h, w]: Shape3,
) -> (cubecl::server::Handle, cubecl::server::Handle) {
    let (n, plane) = (d * h * w, h * w);
    let ranges = client.empty(4 * d * 4);
    let diff = client.empty(n * 4);
    let sums = client.empty(d * 4);
    let cubes = CubeCount::Static(d as u32, 1, 1);
    slice_ranges_kernel::launch::<R>(
        client,
        cubes.clone(),
        CubeDim::new_1d(THREADS),
        unsafe { ArrayArg::from_raw_parts(scan.clone(), n) },
        unsafe { ArrayArg::from_raw_parts(twin.clone(), n) },
        unsafe { ArrayArg::from_raw_parts(ranges.clone(), 4 * d) },
        plane as u32,
    );
    pseudo_mask_kernel::launch::<R>(
        client,
        cubes,
        CubeDim::new_1d(THREADS),
        unsafe { ArrayArg::from_raw_parts(scan, n) },
        unsafe { ArrayArg::from_raw_parts(twin, n) },
        unsafe { ArrayArg::from_raw_parts(lung, n) },
        unsafe { ArrayArg::from_raw_parts(ranges, 4 * d) },
        unsafe { ArrayArg::from_raw_parts(diff.clone(), n) },
        unsafe { ArrayArg::from_raw_parts(sums.clone(), d) },
        plane as u32,
        d as u32,
    );
    (diff, sums)
}

/// [`launch_pseudo_mask`] on host slices: the difference and the slice sums.
pub fn pseudo_mask<R: Runtime>(
    client: &ComputeClient<R>,
    scan: &[f32],
    twin: &[f32],
    lung: &[f32],
    dims: Shape3,
) -> (Vec<f32>, Vec<f64>) {
    let n: usize = dims.iter().product();
    assert!(
        scan.len() == n && twin.len() == n && lung.len() == n,
        "scan, twin and lung must match the volume's shape"
    );
    if n == 0 {
        return (Vec::new(), vec![0.0; dims[0]]);
    }
    let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
    let (diff, sums) = launch_pseudo_mask(client, up(scan), up(twin), up(lung), dims);
    let diff = f32::from_bytes(&client.read_one_unchecked(diff)).to_vec();
    let sums = f32::from_bytes(&client.read_one_unchecked(sums))
        .iter()
        .map(|&s| f64::from(s))
        .collect();
    (diff, sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    fn volume(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::random_hu(n, seed)
            .iter()
            .map(|v| v * scale)
            .collect()
    }

    #[test]
    fn wgpu_pass_matches_the_cpu_reference_on_random_volumes() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        // A plane smaller than a cube, one that is not a multiple of it, and a larger one.
        for (dims, seed) in [([3, 5, 7], 1), ([4, 19, 23], 2), ([2, 64, 64], 3)] {
            let n: usize = dims.iter().product();
            let scan = volume(n, seed, 1e-3);
            let twin = volume(n, seed + 100, 2e-3);
            let lung: Vec<f32> = volume(n, seed + 200, 1.0)
                .iter()
                .map(|v| f32::from(*v > -500.0))
                .collect();
            let (want, want_sums) = pseudo_mask_reference(&scan, &twin, &lung, dims);
            let (got, got_sums) = pseudo_mask(&client, &scan, &twin, &lung, dims);
            let err = crate::max_abs_diff(&want, &got);
            assert!(err < 1e-6, "{dims:?}: difference off by {err}");
            for (a, b) in want_sums.iter().zip(&got_sums) {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + a.abs()),
                    "{dims:?}: sum {a} vs {b}"
                );
            }
            assert!(
                want.iter().any(|v| v.abs() > 0.1),
                "a difference worth comparing"
            );
        }
    }

    #[test]
    fn reference_normalises_each_volume_and_keeps_to_the_lung() {
        // Scan 0..4 normalises to 0, 1/3, 2/3, 1; a constant twin normalises to 0.
        let scan = [10.0, 20.0, 30.0, 40.0];
        let (diff, sums) =
            pseudo_mask_reference(&scan, &[5.0; 4], &[1.0, 1.0, 0.0, 1.0], [2, 1, 2]);
        assert_eq!(diff, vec![0.0, 1.0 / 3.0, 0.0, 1.0]);
        assert_eq!(sums, vec![f64::from(1.0f32 / 3.0), 1.0]);
    }
}
