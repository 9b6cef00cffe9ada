//! 2-D convolution as im2col + one batched matmul.
//!
//! Why: burn 0.21 built without its `autotune` feature runs every convolution with its *direct*
//! kernel (forward and both backward passes); on an H200 that made a TransUNet training step
//! 382 ms against PyTorch's 33 ms (BENCHMARKS.md). With `autotune` on, the first step instead
//! compiles and times dozens of candidates per convolution shape and did not finish in minutes.
//! As its columns (one `unfold` operation, whose backward is its adjoint `fold`) times the
//! weight, a convolution runs on burn's matmul kernels, which need no autotuning. The columns
//! were once strided slices concatenated along channels: about 65 launches per 3 × 3
//! convolution on a GPU, and on the CPU a quarter of the step in copies, so the columns are one
//! kernel on cubecl backends and the whole convolution one host operation on NdArray.

use burn::module::Module;
use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorPrimitive};
use covflow_kernels::unfold::Unfold;

use crate::ModelBackend;

/// How a [`ConvLayer`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvImpl {
    /// burn's own `conv2d` (its backend's kernel choice).
    Native,
    /// im2col columns times the weight ([`conv2d_im2col`]).
    #[default]
    Im2col,
    /// burn-cubecl's implicit GEMM, forward and backward, without autotune
    /// ([`crate::conv2d_implicit_gemm`]; burn's default convolution where it is unavailable).
    #[serde(rename = "implicit-gemm")]
    ImplicitGemm,
}

/// A 2-D convolution layer with square kernels and symmetric padding, initialised exactly like
/// `burn::nn::conv::Conv2d` (its weights are taken from one).
#[derive(Module, Debug)]
pub struct ConvLayer<B: ModelBackend> {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    stride: usize,
    padding: usize,
    #[module(skip)]
    imp: ConvImpl,
}

impl<B: ModelBackend> ConvLayer<B> {
    /// A layer from burn's configuration (explicit symmetric padding, no groups or dilation).
    pub fn new(config: &Conv2dConfig, imp: ConvImpl, device: &B::Device) -> Self {
        let padding = match config.padding {
            PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => t,
            PaddingConfig2d::Valid => 0,
            ref other => panic!("ConvLayer takes symmetric explicit padding, not {other:?}"),
        };
        assert_eq!(
            config.kernel_size[0], config.kernel_size[1],
            "square kernels"
        );
        assert_eq!(config.stride[0], config.stride[1], "equal strides");
        assert_eq!(config.groups, 1, "no groups");
        assert_eq!(config.dilation, [1, 1], "no dilation");
        let conv = config.init::<B>(device);
        Self {
            weight: conv.weight,
            bias: conv.bias,
            stride: config.stride[0],
            padding,
            imp,
        }
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let w = self.weight.val();
        let b = self.bias.as_ref().map(|b| b.val());
        let options = || {
            ConvOptions::new(
                [self.stride, self.stride],
                [self.padding, self.padding],
                [1, 1],
                1,
            )
        };
        match self.imp {
            ConvImpl::Im2col => conv2d_im2col(x, w, b, self.stride, self.padding),
            ConvImpl::Native => burn::tensor::module::conv2d(x, w, b, options()),
            ConvImpl::ImplicitGemm => crate::conv2d_implicit_gemm(x, w, b, options()),
        }
    }
}

/// Convolution of `x: [N, C, H, W]` with `weight: [O, C, k, k]`: zero padding `padding` on each
/// side, stride `stride`; output `[N, O, Ho, Wo]`, `Ho = (H + 2·padding − k) / stride + 1`.
/// The columns come from [`ModelBackend::unfold2d`] (one kernel on cubecl backends), except for
/// a plain 1 × 1 convolution, whose columns are the input itself. On the host
/// ([`ModelBackend::HOST_CONV`]) the whole convolution is one operation instead.
pub fn conv2d_im2col<B: ModelBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [o, ci, k, k2] = weight.dims();
    assert_eq!(
        (ci, k),
        (c, k2),
        "weight [O, C, k, k] must match the input's C"
    );
    let u = Unfold {
        input: [n, c, h, w],
        kernel: k,
        stride,
        padding,
    };
    if B::HOST_CONV {
        let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
        return crate::conv2d_implicit_gemm(x, weight, bias, options);
    }
    let [ho, wo] = u.output_size();
    let columns = if k == 1 && stride == 1 && padding == 0 {
        x.reshape([n, c, h * w])
    } else {
        Tensor::from_primitive(TensorPrimitive::Float(B::unfold2d(
            x.into_primitive().tensor(),
            u,
        )))
    };
    let y = weight
        .reshape([1, o, c * k * k])
        .matmul(columns)
        .reshape([n, o, ho, wo]);
    match bias {
        Some(b) => y + b.reshape([1, o, 1, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray, Wgpu};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, TensorData};

    fn close(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "shapes differ");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_burn_conv2d_forward_and_backward() {
        against_burn_conv2d::<Autodiff<NdArray>>();
    }

    #[test]
    fn wgpu_matches_burn_conv2d_forward_and_backward() {
        against_burn_conv2d::<Autodiff<Wgpu>>();
    }

    /// Output and the three gradients of one convolution on backend `B`, `im2col` or burn's own.
    fn conv_and_grads<B: AutodiffBackend + ModelBackend>(
        data: [&TensorData; 4],
        (stride, pad): (usize, usize),
        im2col: bool,
    ) -> [Vec<f32>; 4] {
        let device = Default::default();
        let [x, w, bias, g] = data.map(|d| d.clone());
        let x = Tensor::<B, 4>::from_data(x, &device).require_grad();
        let w = Tensor::<B, 4>::from_data(w, &device).require_grad();
        let bias = Tensor::<B, 1>::from_data(bias, &device).require_grad();
        let y = if im2col {
            conv2d_im2col(x.clone(), w.clone(), Some(bias.clone()), stride, pad)
        } else {
            let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
            burn::tensor::module::conv2d(x.clone(), w.clone(), Some(bias.clone()), options)
        };
        let grads = (y.clone() * Tensor::from_data(g, &device)).sum().backward();
        let v = |d: TensorData| d.convert::<f32>().to_vec::<f32>().unwrap();
        [
            v(y.into_data()),
            v(x.grad(&grads).unwrap().into_data()),
            v(w.grad(&grads).unwrap().into_data()),
            v(bias.grad(&grads).unwrap().into_data()),
        ]
    }

    /// Forward and the three gradients on `B` against burn's conv2d on the CPU, on fresh random
    /// inputs, for every (kernel, stride, padding) the TransUNet uses. (Not against burn's conv2d
    /// on the same backend: on wgpu its input gradient for the 1 × 1, stride-2 convolution is
    /// wrong in burn 0.21, zero at positions the convolution reads.)
    fn against_burn_conv2d<B: AutodiffBackend + ModelBackend>() {
        let device = Default::default();
        for &(k, stride, pad, c, o, hw) in &[
            (7, 2, 3, 1, 4, 16),
            (3, 2, 1, 3, 5, 9),
            (3, 1, 1, 4, 3, 8),
            (1, 2, 0, 6, 2, 8),
            (1, 1, 0, 5, 7, 6),
        ] {
            let normal = |dims: [usize; 4]| {
                Tensor::<NdArray, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device)
                    .into_data()
            };
            let x = normal([2, c, hw, hw]);
            let w = normal([o, c, k, k]);
            let bias = TensorData::new((0..o).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), [o]);
            let ho = (hw + 2 * pad - k) / stride + 1;
            // A random upstream gradient so that every output element matters.
            let g = normal([2, o, ho, ho]);
            let data = [&x, &w, &bias, &g];
            let want = conv_and_grads::<Autodiff<NdArray>>(data, (stride, pad), false);
            let got = conv_and_grads::<B>(data, (stride, pad), true);
            for (name, want, got, tol) in [
                ("output", &want[0], &got[0], 1e-4),
                ("dx", &want[1], &got[1], 1e-3),
                ("dw", &want[2], &got[2], 1e-3),
                ("dbias", &want[3], &got[3], 1e-3),
            ] {
                let err = close(want, got);
                assert!(err < tol, "{name} k{k} s{stride}: off by {err}");
            }
        }
    }
}
