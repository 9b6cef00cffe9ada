//! Per-slice confusion counts for the evaluation (the original TransUNet-on-pseudo-masks paper's
//! per-slice metrics, with its `max`-over-pixels defect removed): a slice's prediction is
//! `score > threshold · max(score over the slice)`, compared pixel by pixel with the expert
//! lesion mask, and the slice's lung pixels are counted for its infection %.
//!
//! One launch per volume, one cube per slice: the slice's maximum by a tree in shared memory,
//! then the five counts by the same tree over `u32`. Counts are exact integers, so the kernel
//! equals the reference exactly (scores must not be NaN: a GPU's `max` need not skip NaN as the
//! reference does).

use cubecl::prelude::*;

use crate::resample::Shape3;

/// Units per cube; a power of two for the tree reduction.
const THREADS: u32 = 256;

/// The counts of one slice, in this order.
pub const COUNTS: [&str; 5] = ["tp", "fp", "fn", "tn", "lung"];

/// Plain CPU reference: for each of the `d` slices of `[d, h, w]` row-major volumes,
/// `[tp, fp, fn, tn, lung]` (lesion and lung are inside above 0.5).
pub fn slice_counts_reference(
    score: &[f32],
    lesion: &[f32],
    lung: &[f32],
    [d, h, w]: Shape3,
    threshold: f32,
) -> Vec<[u32; 5]> {
    let plane = h * w;
    assert!(
        score.len() == d * plane && lesion.len() == d * plane && lung.len() == d * plane,
        "score, lesion and lung must match the volume's shape"
    );
    (0..d)
        .map(|z| {
            let r = z * plane..(z + 1) * plane;
            let max = score[r.clone()]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let cut = threshold * max;
            let mut c = [0u32; 5];
            for ((&s, &t), &l) in score[r.clone()]
                .iter()
                .zip(&lesion[r.clone()])
                .zip(&lung[r])
            {
                let k = match (s > cut, t > 0.5) {
                    (true, true) => 0,
                    (true, false) => 1,
                    (false, true) => 2,
                    (false, false) => 3,
                };
                c[k] += 1;
                c[4] += u32::from(l > 0.5);
            }
            c
        })
        .collect()
}

/// Tree sum of a cube's counts in shared memory; the result lands in slot 0.
#[cube]
fn tree_sum(shared: &mut SharedMemory<u32>) {
    let unit = UNIT_POS as usize;
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if unit < stride {
            shared[unit] = shared[unit] + shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
}

/// One cube per slice: `counts[5z..5z+5] = [tp, fp, fn, tn, lung]` of slice z.
#[cube(launch)]
pub fn slice_counts_kernel(
    score: &Array<f32>,
    lesion: &Array<f32>,
    lung: &Array<f32>,
    counts: &mut Array<u32>,
    plane: u32,
    threshold: f32,
) {
    let z = CUBE_POS as u32;
    let unit = UNIT_POS as usize;
    let mut maxs = SharedMemory::<f32>::new(THREADS as usize);
    // Below any finite f32: the identity of max.
    let mut m = f32::new(-3.4e38);
    let mut i = UNIT_POS;
    while i < plane {
        m = f32::max(m, score[(z * plane + i) as usize]);
        i += THREADS;
    }
    maxs[unit] = m;
    sync_cube();
    crate::pseudo_mask::tree(&mut maxs, 2u32);
    let cut = threshold * maxs[0usize];

    let mut tp = SharedMemory::<u32>::new(THREADS as usize);
    let mut fp = SharedMemory::<u32>::new(THREADS as usize);
    let mut fn_ = SharedMemory::<u32>::new(THREADS as usize);
    let mut tn = SharedMemory::<u32>::new(THREADS as usize);
    let mut lu = SharedMemory::<u32>::new(THREADS as usize);
    let mut a = 0u32;
    let mut b = 0u32;
    let mut c = 0u32;
    let mut e = 0u32;
    let mut l = 0u32;
    let mut j = UNIT_POS;
    while j < plane {
        let v = (z * plane + j) as usize;
        let predicted = score[v] > cut;
        let truth = lesion[v] > 0.5;
        if predicted && truth {
            a += 1;
        } else if predicted {
            b += 1;
        } else if truth {
            c += 1;
        } else {
            e += 1;
        }
        if lung[v] > 0.5 {
            l += 1;
        }
        j += THREADS;
    }
    tp[unit] = a;
    fp[unit] = b;
    fn_[unit] = c;
    tn[unit] = e;
    lu[unit] = l;
    sync_cube();
    tree_sum(&mut tp);
    tree_sum(&mut fp);
    tree_sum(&mut fn_);
    tree_sum(&mut tn);
    tree_sum(&mut lu);
    if unit == 0 {
        let o = (5 * z) as usize;
        counts[o] = tp[0usize];
        counts[o + 1] = fp[0usize];
        counts[o + 2] = fn_[0usize];
        counts[o + 3] = tn[0usize];
        counts[o + 4] = lu[0usize];
    }
}

/// The counts of one `[d, h, w]` volume on device buffers: a handle of `5 · d` `u32`s.
pub fn launch_slice_counts<R: Runtime>(
    client: &ComputeClient<R>,
    score: cubecl::server::Handle,
    lesion: cubecl::server::Handle,
    lung: cubecl::server::Handle,
    [d, h, w]: Shape3,
    threshold: f32,
) -> cubecl::server::Handle {
    let (n, plane) = (d * h * w, h * w);
    let counts = client.empty(5 * d * 4);
    slice_counts_kernel::launch::<R>(
        client,
        CubeCount::Static(d as u32, 1, 1),
        CubeDim::new_1d(THREADS),
        unsafe { ArrayArg::from_raw_parts(score, n) },
        unsafe { ArrayArg::from_raw_parts(lesion, n) },
        unsafe { ArrayArg::from_raw_parts(lung, n) },
        unsafe { ArrayArg::from_raw_parts(counts.clone(), 5 * d) },
        plane as u32,
        threshold,
    );
    counts
}

/// [`launch_slice_counts`] on host slices.
pub fn slice_counts<R: Runtime>(
    client: &ComputeClient<R>,
    score: &[f32],
    lesion: &[f32],
    lung: &[f32],
    dims: Shape3,
    threshold: f32,
) -> Vec<[u32; 5]> {
    let n: usize = dims.iter().product();
    assert!(
        score.len() == n && lesion.len() == n && lung.len() == n,
        "score, lesion and lung must match the volume's shape"
    );
    if n == 0 {
        return vec![[0; 5]; dims[0]];
    }
    let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
    let counts = launch_slice_counts(client, up(score), up(lesion), up(lung), dims, threshold);
    u32::from_bytes(&client.read_one_unchecked(counts))
        .chunks_exact(5)
        .map(|c| [c[0], c[1], c[2], c[3], c[4]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_counts_equal_the_cpu_reference_on_random_volumes() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        // A plane smaller than a cube, one that is not a multiple of it, and the model's 128².
        for (dims, seed) in [([3, 5, 7], 1), ([5, 19, 23], 2), ([4, 128, 128], 3)] {
            let n: usize = dims.iter().product();
            // Scores in [0, 1) with a different maximum per slice; masks of about a third.
            let score: Vec<f32> = crate::random_hu(n, seed)
                .iter()
                .enumerate()
                .map(|(i, v)| (v + 2048.0) / 3000.0 / (1 + i / (dims[1] * dims[2])) as f32)
                .collect();
            let mask = |s: u64| -> Vec<f32> {
                crate::random_hu(n, s)
                    .iter()
                    .map(|v| f32::from(*v > 0.0))
                    .collect()
            };
            let (lesion, lung) = (mask(seed + 100), mask(seed + 200));
            for threshold in [0.2, 0.5, 0.9] {
                let want = slice_counts_reference(&score, &lesion, &lung, dims, threshold);
                let got = slice_counts(&client, &score, &lesion, &lung, dims, threshold);
                assert_eq!(want, got, "{dims:?} at threshold {threshold}");
                let plane = (dims[1] * dims[2]) as u32;
                assert!(want.iter().all(|c| c[..4].iter().sum::<u32>() == plane));
                if dims[1] == 128 {
                    assert!(
                        want.iter()
                            .all(|c| c[0] > 0 && c[1] > 0 && c[2] > 0 && c[3] > 0),
                        "every count is exercised: {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn reference_thresholds_each_slice_at_a_share_of_its_own_maximum() {
        // Slice 0 max 1.0 (cut 0.5), slice 1 max 0.1 (cut 0.05).
        let score = [1.0, 0.4, 0.1, 0.04];
        let lesion = [1.0, 1.0, 0.0, 1.0];
        let lung = [1.0, 0.0, 1.0, 1.0];
        let c = slice_counts_reference(&score, &lesion, &lung, [2, 1, 2], 0.5);
        assert_eq!(c, vec![[1, 0, 1, 0, 1], [0, 1, 1, 0, 2]]);
    }
}
