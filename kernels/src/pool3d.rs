//! 3-D max pooling with a 2×2×2 window and stride 2, forward and backward: the GAN
//! discriminator's and generator's downsampling (burn 0.21 has no 3-D pooling).
//!
//! Volumes are `planes` (batch × channels) stacked `[D, H, W]` grids; the output keeps the
//! floor of each half (`ceil_mode = false`, as PyTorch's and Keras' `MaxPool3d(2)`), so the last
//! voxel of an odd axis is never pooled and gets no gradient.
//!
//! Canonical choice: the maximum of a window is its *first* largest voxel in (d, h, w) row-major
//! order, and only that voxel receives the output's gradient. Windows do not overlap, so the
//! backward writes each window's eight voxels from one unit: no atomics, deterministic.

use cubecl::prelude::*;

use crate::resample::Shape3;

/// The pooled grid of `[d, h, w]`.
pub fn pooled_shape([d, h, w]: Shape3) -> Shape3 {
    [d / 2, h / 2, w / 2]
}

/// Voxels of `planes` volumes of `dims`, and of their pooled volumes.
fn voxels(planes: usize, dims: Shape3) -> (usize, usize) {
    let count = |d: Shape3| planes * d.iter().product::<usize>();
    (count(dims), count(pooled_shape(dims)))
}

/// Index, within one plane, of the first largest voxel of output window `(z, y, x)`.
fn winner(plane: &[f32], [_, h, w]: Shape3, [z, y, x]: Shape3) -> usize {
    let mut best = (2 * z * h + 2 * y) * w + 2 * x;
    for k in 0..8 {
        let (dz, dy, dx) = (k / 4, (k / 2) % 2, k % 2);
        let i = ((2 * z + dz) * h + 2 * y + dy) * w + 2 * x + dx;
        if plane[i] > plane[best] {
            best = i;
        }
    }
    best
}

/// Plain CPU reference of the forward: `planes` volumes of `dims` → `planes` of [`pooled_shape`].
pub fn max_pool3d_reference(input: &[f32], planes: usize, dims: Shape3) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let [od, oh, ow] = pooled_shape(dims);
    let mut out = Vec::with_capacity(planes * od * oh * ow);
    for p in 0..planes {
        let plane = &input[p * n..(p + 1) * n];
        for z in 0..od {
            for y in 0..oh {
                for x in 0..ow {
                    out.push(plane[winner(plane, dims, [z, y, x])]);
                }
            }
        }
    }
    out
}

/// Plain CPU reference of the backward: the gradient for `input` given the output's `grad`.
pub fn max_pool3d_backward_reference(
    input: &[f32],
    grad: &[f32],
    planes: usize,
    dims: Shape3,
) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let [od, oh, ow] = pooled_shape(dims);
    let mut out = vec![0f32; input.len()];
    for p in 0..planes {
        let plane = &input[p * n..(p + 1) * n];
        for z in 0..od {
            for y in 0..oh {
                for x in 0..ow {
                    let o = ((p * od + z) * oh + y) * ow + x;
                    out[p * n + winner(plane, dims, [z, y, x])] = grad[o];
                }
            }
        }
    }
    out
}

/// The first largest voxel of the window at output position `(z, y, x)` of the plane starting at
/// `base`, as an absolute input index.
#[cube]
fn window_winner(input: &Array<f32>, base: u32, h: u32, w: u32, z: u32, y: u32, x: u32) -> u32 {
    let mut best = base + ((2 * z) * h + 2 * y) * w + 2 * x;
    for k in 0..8u32 {
        let dz = k / 4;
        let dy = (k / 2) % 2;
        let dx = k % 2;
        let i = base + ((2 * z + dz) * h + 2 * y + dy) * w + 2 * x + dx;
        if input[i as usize] > input[best as usize] {
            best = i;
        }
    }
    best
}

/// One output voxel per unit.
#[cube(launch)]
pub fn max_pool3d_kernel(input: &Array<f32>, output: &mut Array<f32>, d: u32, h: u32, w: u32) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let (od, oh, ow) = (d / 2, h / 2, w / 2);
    let o = ABSOLUTE_POS as u32;
    let x = o % ow;
    let y = (o / ow) % oh;
    let z = (o / (ow * oh)) % od;
    let p = o / (ow * oh * od);
    let best = window_winner(input, p * d * h * w, h, w, z, y, x);
    output[ABSOLUTE_POS] = input[best as usize];
}

/// One output voxel per unit: its gradient to its window's winner, zero to the other seven.
/// Windows do not overlap (stride = size), so no two units write the same voxel.
#[cube(launch)]
pub fn max_pool3d_backward_kernel(
    input: &Array<f32>,
    grad: &Array<f32>,
    output: &mut Array<f32>,
    d: u32,
    h: u32,
    w: u32,
) {
    if ABSOLUTE_POS >= grad.len() {
        terminate!();
    }
    let (od, oh, ow) = (d / 2, h / 2, w / 2);
    let o = ABSOLUTE_POS as u32;
    let x = o % ow;
    let y = (o / ow) % oh;
    let z = (o / (ow * oh)) % od;
    let base = (o / (ow * oh * od)) * d * h * w;
    let best = window_winner(input, base, h, w, z, y, x);
    let g = grad[ABSOLUTE_POS];
    for k in 0..8u32 {
        let dz = k / 4;
        let dy = (k / 2) % 2;
        let dx = k % 2;
        let i = base + ((2 * z + dz) * h + 2 * y + dy) * w + 2 * x + dx;
        let mut v = 0.0f32;
        if i == best {
            v = g;
        }
        output[i as usize] = v;
    }
}

/// Zeroes a buffer: the voxels of odd axes' last planes, which no window covers.
#[cube(launch)]
pub fn zero_kernel(output: &mut Array<f32>) {
    if ABSOLUTE_POS < output.len() {
        output[ABSOLUTE_POS] = 0.0;
    }
}

/// Launches the forward on `input` (a device buffer of `planes · d·h·w` floats) into a new
/// buffer of `planes` pooled volumes.
pub fn launch_max_pool3d<R: Runtime>(
    client: &ComputeClient<R>,
    input: cubecl::server::Handle,
    planes: usize,
    dims: Shape3,
) -> cubecl::server::Handle {
    let (n_in, n_out) = voxels(planes, dims);
    let out = client.empty(n_out.max(1) * 4);
    if n_out > 0 {
        max_pool3d_kernel::launch::<R>(
            client,
            crate::cube_count_for(n_out, 256),
            CubeDim::new_1d(256),
            unsafe { ArrayArg::from_raw_parts(input, n_in) },
            unsafe { ArrayArg::from_raw_parts(out.clone(), n_out) },
            dims[0] as u32,
            dims[1] as u32,
            dims[2] as u32,
        );
    }
    out
}

/// Launches the backward: `input` as in the forward, `grad` the pooled output's gradient; a new
/// buffer shaped like `input`.
pub fn launch_max_pool3d_backward<R: Runtime>(
    client: &ComputeClient<R>,
    input: cubecl::server::Handle,
    grad: cubecl::server::Handle,
    planes: usize,
    dims: Shape3,
) -> cubecl::server::Handle {
    let (n_in, n_out) = voxels(planes, dims);
    let out = client.empty(n_in.max(1) * 4);
    if dims.iter().any(|a| a % 2 == 1) || n_out == 0 {
        zero_kernel::launch::<R>(
            client,
            crate::cube_count_for(n_in, 256),
            CubeDim::new_1d(256),
            unsafe { ArrayArg::from_raw_parts(out.clone(), n_in.max(1)) },
        );
    }
    if n_out > 0 {
        max_pool3d_backward_kernel::launch::<R>(
            client,
            crate::cube_count_for(n_out, 256),
            CubeDim::new_1d(256),
            unsafe { ArrayArg::from_raw_parts(input, n_in) },
            unsafe { ArrayArg::from_raw_parts(grad, n_out) },
            unsafe { ArrayArg::from_raw_parts(out.clone(), n_in) },
            dims[0] as u32,
            dims[1] as u32,
            dims[2] as u32,
        );
    }
    out
}

/// Forward and backward on host slices (for checks): `(pooled, input gradient)`.
pub fn max_pool3d<R: Runtime>(
    client: &ComputeClient<R>,
    input: &[f32],
    grad: &[f32],
    planes: usize,
    dims: Shape3,
) -> (Vec<f32>, Vec<f32>) {
    let x = client.create_from_slice(f32::as_bytes(input));
    let g = client.create_from_slice(f32::as_bytes(grad));
    let y = launch_max_pool3d(client, x.clone(), planes, dims);
    let gx = launch_max_pool3d_backward(client, x, g, planes, dims);
    let y = f32::from_bytes(&client.read_one_unchecked(y)).to_vec();
    let gx = f32::from_bytes(&client.read_one_unchecked(gx)).to_vec();
    let (_, n_out) = voxels(planes, dims);
    (y[..n_out].to_vec(), gx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_kernels_match_the_cpu_reference_on_random_volumes() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        // Odd axes leave an unpooled border, which must get no gradient.
        for (planes, dims, seed) in [(3, [4, 6, 8], 1), (2, [5, 7, 9], 2), (1, [2, 2, 2], 3)] {
            let n = planes * dims.iter().product::<usize>();
            let x = crate::random_hu(n, seed);
            let m = planes * pooled_shape(dims).iter().product::<usize>();
            let g = crate::random_hu(m, seed + 10);
            let (y, gx) = max_pool3d(&client, &x, &g, planes, dims);
            assert_eq!(
                y,
                max_pool3d_reference(&x, planes, dims),
                "{dims:?} forward"
            );
            assert_eq!(
                gx,
                max_pool3d_backward_reference(&x, &g, planes, dims),
                "{dims:?} backward"
            );
        }
    }

    #[test]
    fn reference_pools_windows_and_routes_the_gradient_to_each_first_maximum() {
        // One 2×2×4 volume, two windows: the first holds a 3 at (0, 1, 1); the second is
        // constant, so its first voxel (0, 0, 2) wins.
        let mut x = vec![-1f32; 16];
        x[5] = 3.0;
        let y = max_pool3d_reference(&x, 1, [2, 2, 4]);
        assert_eq!(y, vec![3.0, -1.0]);
        let g = max_pool3d_backward_reference(&x, &[10.0, 20.0], 1, [2, 2, 4]);
        let mut want = vec![0f32; 16];
        want[5] = 10.0;
        want[2] = 20.0; // (0, 0, 2), the first voxel of the constant window
        assert_eq!(g, want);
        assert_eq!(
            g.iter().sum::<f32>(),
            30.0,
            "each output's gradient lands once"
        );
    }
}
