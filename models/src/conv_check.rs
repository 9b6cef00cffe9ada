//! Checks and times a convolution implementation against burn's own `conv2d` on the same backend:
//! forward, and the gradients for input, weight and bias, on fresh random tensors. The tests run
//! it on wgpu; `covflow bench conv --device cuda` runs it at the TransUNet's real shapes on a GPU
//! (the only place implicit GEMM's matrix-unit path can be exercised).

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

use crate::{ConvImpl, ModelBackend, conv2d_im2col, conv2d_implicit_gemm};

/// One convolution shape: batch, in/out channels, square size, kernel, stride, padding.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ConvShape {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Input height = width.
    pub hw: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

/// The TransUNet's convolution shapes at batch `n` (seed configuration): the 7×7 stem, the
/// encoder's strided 3×3s and 1×1s, the bottleneck's 3×3 and the decoder's 3×3s.
pub fn transunet_conv_shapes(n: usize) -> Vec<ConvShape> {
    let s = |c, o, hw, k, stride, pad| ConvShape {
        n,
        c,
        o,
        hw,
        k,
        stride,
        pad,
    };
    vec![
        s(1, 128, 128, 7, 2, 3),
        s(128, 256, 64, 1, 1, 0),
        s(256, 256, 64, 3, 2, 1),
        s(512, 1024, 16, 3, 2, 1),
        s(1024, 512, 8, 3, 1, 1),
        s(1024, 256, 32, 3, 1, 1),
        s(256, 64, 128, 3, 1, 1),
    ]
}

/// What [`check_conv`] found for one shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvCheck {
    /// The shape.
    pub shape: ConvShape,
    /// The implementation checked.
    pub imp: ConvImpl,
    /// Largest absolute difference from burn's conv2d: output, input, weight and bias gradients,
    /// each divided by the reference's largest magnitude (relative to scale).
    pub rel_error: [f32; 4],
    /// Median time of forward + backward, milliseconds: the implementation, then burn's conv2d.
    pub ms: [f64; 2],
}

fn max_rel<B: burn::tensor::backend::Backend, const D: usize>(
    got: Tensor<B, D>,
    want: Tensor<B, D>,
) -> f32 {
    let got: Vec<f32> = got.into_data().convert::<f32>().to_vec().unwrap();
    let want: Vec<f32> = want.into_data().convert::<f32>().to_vec().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    covflow_kernels::max_abs_diff(&got, &want) / scale
}

/// Checks `imp` against burn's `conv2d` at `shape` and times both (`reps` timed runs each).
pub fn check_conv<B: AutodiffBackend + ModelBackend>(
    imp: ConvImpl,
    shape: ConvShape,
    reps: usize,
    device: &B::Device,
) -> ConvCheck {
    let ConvShape {
        n,
        c,
        o,
        hw,
        k,
        stride,
        pad,
    } = shape;
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<B, 4>::random([n, c, hw, hw], normal, device).require_grad();
    let w = Tensor::<B, 4>::random([o, c, k, k], normal, device).require_grad();
    let b = Tensor::<B, 1>::random([o], normal, device).require_grad();
    let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    let run = |imp: ConvImpl| {
        let y = match imp {
            ConvImpl::Native => {
                burn::tensor::module::conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone())
            }
            ConvImpl::Im2col => conv2d_im2col(x.clone(), w.clone(), Some(b.clone()), stride, pad),
            ConvImpl::ImplicitGemm => {
                conv2d_implicit_gemm(x.clone(), w.clone(), Some(b.clone()), options.clone())
            }
        };
        // A fixed upstream gradient (seeded by the shape) so every output element matters.
        let g = Tensor::<B, 4>::random(y.dims(), normal, device);
        let grads = (y.clone() * g).sum().backward();
        (
            y,
            x.grad(&grads).expect("x tracked"),
            w.grad(&grads).expect("w tracked"),
            b.grad(&grads).expect("b tracked"),
        )
    };
    B::seed(device, 11);
    let got = run(imp);
    B::seed(device, 11);
    let want = run(ConvImpl::Native);
    let rel_error = [
        max_rel(got.0.inner(), want.0.inner()),
        max_rel(got.1, want.1),
        max_rel(got.2, want.2),
        max_rel(got.3, want.3),
    ];
    let time = |imp: ConvImpl| {
        let mut t: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let start = Instant::now();
                let out = run(imp);
                // Reading one value waits for the device.
                let _ = out.1.sum().into_scalar();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let ms = [time(imp), time(ConvImpl::Native)];
    ConvCheck {
        shape,
        imp,
        rel_error,
        ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On wgpu (lavapipe has no matrix units, so implicit GEMM falls back to burn's convolution
    /// there: this checks the autodiff node and the fallback; `covflow bench conv` checks the
    /// GEMM path on a GPU) and im2col, against burn's conv2d on the same backend.
    #[test]
    fn implementations_match_burn_conv2d_on_wgpu() {
        type B = burn::backend::Autodiff<burn::backend::Wgpu>;
        let device = Default::default();
        for shape in [
            ConvShape {
                n: 2,
                c: 1,
                o: 4,
                hw: 16,
                k: 7,
                stride: 2,
                pad: 3,
            },
            ConvShape {
                n: 2,
                c: 3,
                o: 5,
                hw: 9,
                k: 3,
                stride: 2,
                pad: 1,
            },
            ConvShape {
                n: 1,
                c: 4,
                o: 3,
                hw: 8,
                k: 1,
                stride: 1,
                pad: 0,
            },
        ] {
            for imp in [ConvImpl::ImplicitGemm, ConvImpl::Im2col] {
                let r = check_conv::<B>(imp, shape, 1, &device);
                assert!(
                    r.rel_error.iter().all(|e| *e < 1e-4),
                    "{imp:?} {shape:?}: {:?}",
                    r.rel_error
                );
            }
        }
    }
}
