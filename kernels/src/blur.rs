//! Gaussian low-pass along one axis of a 3-D volume: the anti-aliasing prefilter before
//! downsampling (σ = (factor − 1) / 2 per axis, as skimage's `resize(anti_aliasing=True)` picks),
//! applied axis by axis because a Gaussian is separable. Edges repeat the border voxel.

use cubecl::prelude::*;

use crate::resample::Shape3;

/// Normalised Gaussian weights for `sigma`, truncated at 4σ (scipy's default); `[1.0]` when
/// `sigma` is 0.
///
/// ```
/// let w = covflow_kernels::gaussian_weights(1.0);
/// assert_eq!(w.len(), 9);
/// assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
/// assert!(w[4] > w[3] && w[3] == w[5]);
/// ```
pub fn gaussian_weights(sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (4.0 * sigma).ceil() as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

/// Plain CPU reference.
pub fn blur_axis_reference(input: &[f32], shape: Shape3, axis: usize, weights: &[f32]) -> Vec<f32> {
    let r = (weights.len() / 2) as i64;
    let [d0, d1, d2] = shape;
    let strides = [d1 * d2, d2, 1];
    let n_axis = shape[axis] as i64;
    let mut out = vec![0f32; input.len()];
    for a in 0..d0 {
        for b in 0..d1 {
            for c in 0..d2 {
                let pos = [a, b, c];
                let base = a * strides[0] + b * strides[1] + c - pos[axis] * strides[axis];
                let mut acc = 0f32;
                for (k, w) in weights.iter().enumerate() {
                    let j = (pos[axis] as i64 + k as i64 - r).clamp(0, n_axis - 1) as usize;
                    acc += w * input[base + j * strides[axis]];
                }
                out[a * strides[0] + b * strides[1] + c] = acc;
            }
        }
    }
    out
}

/// One output voxel per unit.
#[cube(launch)]
pub fn blur_axis_kernel(
    input: &Array<f32>,
    weights: &Array<f32>,
    output: &mut Array<f32>,
    n_axis: u32,
    stride: u32,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let idx = ABSOLUTE_POS as u32;
    // Position along the blurred axis and the index of that axis' first voxel on this line.
    let along = (idx / stride) % n_axis;
    let base = idx - along * stride;
    let r = (weights.len() as u32) / 2;
    let mut acc = 0.0f32;
    for k in 0..weights.len() as u32 {
        let mut j = along + k;
        // j − r, clamped to [0, n_axis − 1], without going below zero in unsigned arithmetic.
        if j < r {
            j = 0;
        } else {
            j -= r;
        }
        if j >= n_axis {
            j = n_axis - 1;
        }
        acc += weights[k as usize] * input[(base + j * stride) as usize];
    }
    output[ABSOLUTE_POS] = acc;
}

/// Blurs along `axis` on any cubecl runtime.
pub fn blur_axis<R: Runtime>(
    client: &ComputeClient<R>,
    input: &[f32],
    shape: Shape3,
    axis: usize,
    weights: &[f32],
) -> Vec<f32> {
    let n = input.len();
    assert_eq!(
        n,
        shape.iter().product::<usize>(),
        "input length must match its shape"
    );
    let strides = [shape[1] * shape[2], shape[2], 1];
    let inh = client.create_from_slice(f32::as_bytes(input));
    let wh = client.create_from_slice(f32::as_bytes(weights));
    let outh = client.empty(std::mem::size_of_val(input));
    let threads = 256u32;
    blur_axis_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(inh, n) },
        unsafe { ArrayArg::from_raw_parts(wh, weights.len()) },
        unsafe { ArrayArg::from_raw_parts(outh.clone(), n) },
        shape[axis] as u32,
        strides[axis] as u32,
    );
    f32::from_bytes(&client.read_one_unchecked(outh)).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_kernel_matches_the_cpu_reference_on_every_axis() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let shape = [7, 9, 11];
        let input = crate::random_hu(shape.iter().product(), 4);
        for (axis, sigma) in [(0, 0.8), (1, 1.5), (2, 2.0)] {
            let w = gaussian_weights(sigma);
            let want = blur_axis_reference(&input, shape, axis, &w);
            let got = blur_axis(&client, &input, shape, axis, &w);
            let err = crate::max_abs_diff(&want, &got);
            assert!(err < 1e-2, "axis {axis} sigma {sigma}: max error {err} HU");
        }
    }

    #[test]
    fn reference_keeps_constants_and_smooths_a_spike() {
        let c = vec![-700.0f32; 4 * 5 * 6];
        let out = blur_axis_reference(&c, [4, 5, 6], 1, &gaussian_weights(1.2));
        assert!(out.iter().all(|v| (v + 700.0).abs() < 1e-3));
        let mut spike = vec![0f32; 9];
        spike[4] = 1.0;
        let out = blur_axis_reference(&spike, [1, 1, 9], 2, &gaussian_weights(1.0));
        assert!(
            (out.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "mass preserved away from edges"
        );
        assert!(out[4] < 0.5 && out[3] > 0.0);
    }
}
