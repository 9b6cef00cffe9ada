//! 3-D connected-component labelling: Playne & Hawick's union-find on the GPU ("A New Algorithm
//! for Parallel Connected-Component Labelling on GPUs", IEEE TPDS 2018).
//!
//! Every foreground voxel starts as its own tree; one launch per connected axis links each voxel
//! to its predecessor along that axis with an atomic-min union (a root always points to a
//! smaller index, so no cycle can form and no lock is needed); a last pass points every voxel at
//! its root. The label of a component is therefore the smallest linear index in it — a canonical
//! labelling that the sequential reference reproduces exactly, so tests compare labels, not
//! partitions.

use cubecl::prelude::*;

use crate::resample::Shape3;

/// The label of background voxels.
pub const BACKGROUND: u32 = u32::MAX;

/// Which axes connect neighbours: `[true; 3]` is 6-connectivity in 3-D; `[true, true, false]`
/// labels each slice (the last axis) on its own, with 4-connectivity.
pub type Connectivity = [bool; 3];

/// Plain CPU reference: sequential union-find with the same canonical labels.
///
/// ```
/// use covflow_kernels::{label_components_reference, BACKGROUND};
/// // Two blobs on a 1 × 1 × 5 line: voxels 0–1 and 3–4.
/// let labels = label_components_reference(&[1, 1, 0, 1, 1], [1, 1, 5], [true; 3]);
/// assert_eq!(labels, vec![0, 0, BACKGROUND, 3, 3]);
/// ```
pub fn label_components_reference(mask: &[u8], shape: Shape3, connect: Connectivity) -> Vec<u32> {
    let n = mask.len();
    assert_eq!(
        n,
        shape.iter().product::<usize>(),
        "mask length must match its shape"
    );
    let strides = [shape[1] * shape[2], shape[2], 1];
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            // Path halving keeps the trees shallow.
            let g = parent[parent[i as usize] as usize];
            parent[i as usize] = g;
            i = g;
        }
        i
    }
    for i in 0..n {
        if mask[i] == 0 {
            continue;
        }
        for axis in 0..3 {
            let along = (i / strides[axis]) % shape[axis];
            if !connect[axis] || along == 0 || mask[i - strides[axis]] == 0 {
                continue;
            }
            let a = find(&mut parent, i as u32);
            let b = find(&mut parent, (i - strides[axis]) as u32);
            let (lo, hi) = (a.min(b), a.max(b));
            parent[hi as usize] = lo;
        }
    }
    (0..n)
        .map(|i| {
            if mask[i] == 0 {
                BACKGROUND
            } else {
                find(&mut parent, i as u32)
            }
        })
        .collect()
}

#[cube]
fn find_root(labels: &Array<Atomic<u32>>, start: u32) -> u32 {
    let mut i = start;
    let mut parent = labels[i as usize].load();
    while parent != i {
        i = parent;
        parent = labels[i as usize].load();
    }
    i
}

/// Each foreground voxel is its own tree; background gets [`BACKGROUND`].
#[cube(launch)]
pub fn ccl_init_kernel(mask: &Array<u32>, labels: &mut Array<Atomic<u32>>) {
    if ABSOLUTE_POS >= mask.len() {
        terminate!();
    }
    if mask[ABSOLUTE_POS] != 0 {
        labels[ABSOLUTE_POS].store(ABSOLUTE_POS as u32);
    } else {
        labels[ABSOLUTE_POS].store(u32::MAX);
    }
}

/// Unites each foreground voxel with its foreground predecessor along one axis.
#[cube(launch)]
pub fn ccl_merge_kernel(
    mask: &Array<u32>,
    labels: &mut Array<Atomic<u32>>,
    stride: u32,
    n_axis: u32,
) {
    if ABSOLUTE_POS >= mask.len() {
        terminate!();
    }
    let idx = ABSOLUTE_POS as u32;
    let along = (idx / stride) % n_axis;
    if mask[ABSOLUTE_POS] != 0 && along > 0 && mask[(idx - stride) as usize] != 0 {
        let mut a = idx;
        let mut b = idx - stride;
        let mut done = false;
        while !done {
            a = find_root(labels, a);
            b = find_root(labels, b);
            if a < b {
                // Hang b's tree under a; if b stopped being a root meanwhile, retry from there.
                let old = labels[b as usize].fetch_min(a);
                done = old == b;
                b = old;
            } else if b < a {
                let old = labels[a as usize].fetch_min(b);
                done = old == a;
                a = old;
            } else {
                done = true;
            }
        }
    }
}

/// Points every foreground voxel straight at its root.
#[cube(launch)]
pub fn ccl_compress_kernel(mask: &Array<u32>, labels: &mut Array<Atomic<u32>>) {
    if ABSOLUTE_POS >= mask.len() {
        terminate!();
    }
    if mask[ABSOLUTE_POS] != 0 {
        let root = find_root(labels, ABSOLUTE_POS as u32);
        labels[ABSOLUTE_POS].store(root);
    }
}

/// Launches the labelling passes on device buffers: `mask` (u32, non-zero = foreground) and
/// `labels` (u32, written), `shape.iter().product()` voxels each.
pub fn launch_label_components<R: Runtime>(
    client: &ComputeClient<R>,
    mask: &cubecl::server::Handle,
    labels: &cubecl::server::Handle,
    shape: Shape3,
    connect: Connectivity,
) {
    let n: usize = shape.iter().product();
    let threads = 256u32;
    let count = || crate::cube_count_for(n, threads);
    let arg = |h: &cubecl::server::Handle| unsafe { ArrayArg::from_raw_parts(h.clone(), n) };
    ccl_init_kernel::launch::<R>(
        client,
        count(),
        CubeDim::new_1d(threads),
        arg(mask),
        arg(labels),
    );
    let strides = [shape[1] * shape[2], shape[2], 1];
    for axis in (0..3).filter(|&a| connect[a] && shape[a] > 1) {
        ccl_merge_kernel::launch::<R>(
            client,
            count(),
            CubeDim::new_1d(threads),
            arg(mask),
            arg(labels),
            strides[axis] as u32,
            shape[axis] as u32,
        );
    }
    ccl_compress_kernel::launch::<R>(
        client,
        count(),
        CubeDim::new_1d(threads),
        arg(mask),
        arg(labels),
    );
}

/// Labels the connected components of `mask` (non-zero = foreground) on any cubecl runtime.
/// Same output as [`label_components_reference`].
pub fn label_components<R: Runtime>(
    client: &ComputeClient<R>,
    mask: &[u8],
    shape: Shape3,
    connect: Connectivity,
) -> Vec<u32> {
    let n = mask.len();
    assert_eq!(
        n,
        shape.iter().product::<usize>(),
        "mask length must match its shape"
    );
    assert!(n < u32::MAX as usize, "volume too large for 32-bit labels");
    // WGSL has no 8-bit storage: the mask travels as u32.
    let words: Vec<u32> = mask.iter().map(|&m| (m != 0) as u32).collect();
    let mask_h = client.create_from_slice(u32::as_bytes(&words));
    let labels_h = client.empty(n * 4);
    launch_label_components(client, &mask_h, &labels_h, shape, connect);
    u32::from_bytes(&client.read_one_unchecked(labels_h)).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    /// Random masks whose density sits near the percolation threshold give many components,
    /// long chains and large merged trees: the hard case for a parallel union-find.
    fn random_mask(n: usize, seed: u64, density: f32) -> Vec<u8> {
        crate::random_hu(n, seed)
            .iter()
            .map(|v| ((v + 2048.0) / 3000.0 < density) as u8)
            .collect()
    }

    #[test]
    fn wgpu_labels_match_the_reference_on_random_masks() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        for (seed, shape, density) in [
            (1, [17, 23, 29], 0.31),
            (2, [40, 40, 12], 0.5),
            (3, [1, 64, 64], 0.6),
            (4, [9, 1, 300], 0.8),
        ] {
            let n = shape.iter().product();
            let mask = random_mask(n, seed, density);
            for connect in [[true; 3], [true, true, false]] {
                let want = label_components_reference(&mask, shape, connect);
                let got = label_components(&client, &mask, shape, connect);
                let components = want
                    .iter()
                    .enumerate()
                    .filter(|(i, l)| **l == *i as u32)
                    .count();
                assert!(
                    components > 1,
                    "seed {seed}: the test needs several components"
                );
                assert_eq!(got, want, "seed {seed} shape {shape:?} connect {connect:?}");
            }
        }
    }

    #[test]
    fn reference_separates_slices_and_diagonals() {
        // A 2 × 2 × 2 cube with a diagonal pair: 6-connectivity does not join diagonals.
        let mask = [1, 0, 0, 1, 0, 0, 0, 0];
        let labels = label_components_reference(&mask, [2, 2, 2], [true; 3]);
        assert_eq!(labels[0], 0);
        assert_eq!(labels[3], 3);
        // Two stacked voxels: joined in 3-D, apart slice by slice (the last axis).
        let stacked = [1, 1];
        assert_eq!(
            label_components_reference(&stacked, [1, 1, 2], [true; 3]),
            [0, 0]
        );
        assert_eq!(
            label_components_reference(&stacked, [1, 1, 2], [true, true, false]),
            [0, 1]
        );
    }
}
