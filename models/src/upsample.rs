//! Bilinear ×2 upsampling with `align_corners = true`, differentiable on every backend.
//!
//! burn 0.21 has no backward for bilinear `interpolate`. [`ModelBackend`] supplies one: on
//! the cubecl backends (wgpu, CUDA) our own kernel pair from `covflow-kernels` (a forward, and a
//! gather-form backward that needs no atomics), registered with burn's autodiff as one node; on
//! the others (NdArray, burn's fusion wrapper) the exact separable matrix form
//! `Y = A_h · X · A_wᵀ`, where `A_n` is the `2n × n` interpolation matrix, and its transpose for
//! the backward. Both equal PyTorch's `nn.Upsample(scale_factor=2, mode="bilinear",
//! align_corners=True)` up to rounding.

use burn::tensor::{Tensor, TensorData, TensorPrimitive, backend::Backend};

use crate::backend::ModelBackend;

/// The `out × n` matrix that maps `n` samples to `out` samples by linear interpolation with
/// `align_corners = true` (row-major).
///
/// ```
/// let a = covflow_models::interpolation_matrix(2, 4);
/// // Ends map to ends; inner rows mix the two neighbours.
/// assert_eq!(&a[0..2], &[1.0, 0.0]);
/// assert_eq!(&a[6..8], &[0.0, 1.0]);
/// assert!((a[2] - 2.0 / 3.0).abs() < 1e-6);
/// ```
pub fn interpolation_matrix(n: usize, out: usize) -> Vec<f32> {
    let mut a = vec![0f32; out * n];
    if n == 1 {
        a.fill(1.0);
        return a;
    }
    let scale = (n - 1) as f64 / (out - 1).max(1) as f64;
    for r in 0..out {
        let src = r as f64 * scale;
        let i0 = (src.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let frac = (src - i0 as f64) as f32;
        a[r * n + i0] += 1.0 - frac;
        a[r * n + i1] += frac;
    }
    a
}

/// Bilinear ×2 upsampling (align_corners) of `[N, C, H, W]` to `[N, C, 2H, 2W]` on the backend's
/// best path (kernels on cubecl backends).
pub fn upsample2x_bilinear<B: ModelBackend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::upsample2x(
        x.into_primitive().tensor(),
    )))
}

fn interpolation_matrices<B: Backend>(
    h: usize,
    w: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let a = |n: usize| {
        Tensor::<B, 2>::from_data(
            TensorData::new(interpolation_matrix(n, 2 * n), [2 * n, n]),
            device,
        )
    };
    (a(h), a(w))
}

/// The gradient of [`upsample2x_matrix`]: `A_hᵀ · G · A_w`, for an input of `dims`.
pub fn upsample2x_backward_matrix<B: Backend>(g: Tensor<B, 4>, dims: [usize; 4]) -> Tensor<B, 4> {
    let [n, c, h, w] = dims;
    let (a_h, a_w) = interpolation_matrices::<B>(h, w, &g.device());
    let y = g.reshape([n * c * 2 * h, 2 * w]).matmul(a_w);
    let y = y
        .reshape([n * c, 2 * h, w])
        .swap_dims(1, 2)
        .reshape([n * c * w, 2 * h])
        .matmul(a_h);
    y.reshape([n * c, w, h])
        .swap_dims(1, 2)
        .reshape([n, c, h, w])
}

/// The matrix form of the ×2 upsampling, differentiable by any backend (plain matmuls).
pub fn upsample2x_matrix<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let (a_h, a_w) = interpolation_matrices::<B>(h, w, &x.device());
    let (a_h_t, a_w_t) = (a_h.transpose(), a_w.transpose());
    // Along W: rows of length W times A_wᵀ.
    let y = x.reshape([n * c * h, w]).matmul(a_w_t);
    // Along H: bring H last, multiply, bring it back.
    let y = y
        .reshape([n * c, h, 2 * w])
        .swap_dims(1, 2)
        .reshape([n * c * 2 * w, h])
        .matmul(a_h_t);
    y.reshape([n * c, 2 * w, 2 * h])
        .swap_dims(1, 2)
        .reshape([n, c, 2 * h, 2 * w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    /// Plain per-pixel reference of PyTorch's bilinear align_corners upsampling.
    fn reference(src: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (oh, ow) = (2 * h, 2 * w);
        let sy = (h - 1) as f32 / (oh - 1) as f32;
        let sx = (w - 1) as f32 / (ow - 1) as f32;
        let mut out = vec![0f32; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let fy = oy as f32 * sy;
                let fx = ox as f32 * sx;
                let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
                let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                let (ty, tx) = (fy - y0 as f32, fx - x0 as f32);
                let v = |y: usize, x: usize| src[y * w + x];
                out[oy * ow + ox] = (1.0 - ty) * ((1.0 - tx) * v(y0, x0) + tx * v(y0, x1))
                    + ty * ((1.0 - tx) * v(y1, x0) + tx * v(y1, x1));
            }
        }
        out
    }

    fn random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Output and input gradient of `sum(upsample(x) ⊙ r)` on backend `B`.
    fn forward_and_grad<B: burn::tensor::backend::AutodiffBackend + ModelBackend>(
        x: &[f32],
        r: &[f32],
        dims: [usize; 4],
        matrix: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let [n, c, h, w] = dims;
        let xt =
            Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), dims), &device).require_grad();
        let rt =
            Tensor::<B, 4>::from_data(TensorData::new(r.to_vec(), [n, c, 2 * h, 2 * w]), &device);
        let y = if matrix {
            upsample2x_matrix(xt.clone())
        } else {
            upsample2x_bilinear(xt.clone())
        };
        let grads = (y.clone() * rt).sum().backward();
        let g = xt.grad(&grads).expect("x is tracked");
        (
            y.into_data().to_vec().unwrap(),
            g.into_data().to_vec().unwrap(),
        )
    }

    /// The cubecl kernels, registered with burn's autodiff on wgpu, against the matrix form
    /// differentiated by burn on NdArray: same output, same input gradient.
    #[test]
    fn wgpu_kernel_op_matches_the_matrix_form_forward_and_backward() {
        type Gpu = burn::backend::Autodiff<burn::backend::Wgpu>;
        type Cpu = burn::backend::Autodiff<NdArray>;
        for dims in [[2, 3, 5, 7], [1, 4, 8, 8]] {
            let [n, c, h, w] = dims;
            let x = random(n * c * h * w, 0x2545_f491);
            let r = random(n * c * 4 * h * w, 0x1234_5677);
            let (y_gpu, g_gpu) = forward_and_grad::<Gpu>(&x, &r, dims, false);
            let (y_cpu, g_cpu) = forward_and_grad::<Cpu>(&x, &r, dims, true);
            let err = covflow_kernels::max_abs_diff(&y_gpu, &y_cpu);
            assert!(err < 1e-5, "{dims:?} forward: {err}");
            let err = covflow_kernels::max_abs_diff(&g_gpu, &g_cpu);
            assert!(err < 1e-4, "{dims:?} gradient: {err}");
            assert!(
                g_cpu.iter().any(|v| v.abs() > 0.1),
                "a gradient worth comparing"
            );
        }
    }

    #[test]
    fn matches_per_pixel_reference_on_random_input() {
        let (h, w) = (5, 7);
        let mut state = 0x2545_f491_u32;
        let data: Vec<f32> = (0..2 * h * w)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect();
        let device = Default::default();
        let x =
            Tensor::<NdArray, 4>::from_data(TensorData::new(data.clone(), [1, 2, h, w]), &device);
        let y: Vec<f32> = upsample2x_bilinear(x).into_data().to_vec().unwrap();
        for ch in 0..2 {
            let want = reference(&data[ch * h * w..(ch + 1) * h * w], h, w);
            let got = &y[ch * 4 * h * w..(ch + 1) * 4 * h * w];
            for (a, b) in want.iter().zip(got) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
