//! 2-D convolution as im2col + one batched matmul, in plain tensor ops.
//!
//! Why: burn 0.21 built without its `autotune` feature runs every convolution with its *direct*
//! kernel (forward and both backward passes); on an H200 that made a TransUNet training step
//! 382 ms against PyTorch's 33 ms (BENCHMARKS.md). With `autotune` on, the first step instead
//! compiles and times dozens of candidates per convolution shape and did not finish in minutes.
//! Expressed as shifted (strided) slices concatenated along channels and one matmul per batch,
//! a convolution runs on burn's matmul kernels, which need no autotuning, on every backend, and
//! autodiff differentiates it exactly.

use burn::module::Module;
use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Slice, Tensor, backend::Backend};

use crate::ModelBackend;

/// How a [`ConvLayer`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvImpl {
    /// burn's own `conv2d` (its backend's kernel choice).
    Native,
    /// im2col + matmul in tensor ops ([`conv2d_im2col`]).
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
pub fn conv2d_im2col<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w_in] = x.dims();
    let [o, ci, k, k2] = weight.dims();
    assert_eq!(
        (ci, k),
        (c, k2),
        "weight [O, C, k, k] must match the input's C"
    );
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (w_in + 2 * padding - k) / stride + 1;
    let xp = if padding > 0 {
        x.pad((padding, padding, padding, padding), PadMode::Constant(0.0))
    } else {
        x
    };
    let window = |start: usize, len: usize| {
        Slice::new(
            start as isize,
            Some((start + stride * (len - 1) + 1) as isize),
            stride as isize,
        )
    };
    let full = |d: usize| Slice::new(0, Some(d as isize), 1);
    // Columns ordered (dy, dx, c): one strided view of the padded input per kernel offset.
    let mut cols = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            cols.push(
                xp.clone()
                    .slice([full(n), full(c), window(dy, ho), window(dx, wo)]),
            );
        }
    }
    let cols = if cols.len() == 1 {
        cols.pop().expect("one column block")
    } else {
        Tensor::cat(cols, 1)
    };
    let kk = k * k * c;
    let cols = cols.reshape([n, kk, ho * wo]);
    let w2 = weight.permute([0, 2, 3, 1]).reshape([1, o, kk]);
    let y = w2.matmul(cols).reshape([n, o, ho, wo]);
    match bias {
        Some(b) => y + b.reshape([1, o, 1, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, TensorData};

    type B = Autodiff<NdArray>;

    fn close(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        let a: Vec<f32> = a.into_data().to_vec().unwrap();
        let b: Vec<f32> = b.into_data().to_vec().unwrap();
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Forward and both gradients against burn's reference conv2d, on fresh random inputs, for
    /// every (kernel, stride, padding) the TransUNet uses.
    #[test]
    fn matches_burn_conv2d_forward_and_backward() {
        let device = Default::default();
        for &(k, stride, pad, c, o, hw) in &[
            (7, 2, 3, 1, 4, 16),
            (3, 2, 1, 3, 5, 9),
            (3, 1, 1, 4, 3, 8),
            (1, 2, 0, 6, 2, 8),
            (1, 1, 0, 5, 7, 6),
        ] {
            let x = Tensor::<B, 4>::random([2, c, hw, hw], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let w = Tensor::<B, 4>::random([o, c, k, k], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let bias = Tensor::<B, 1>::from_data(
                TensorData::new((0..o).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), [o]),
                &device,
            )
            .require_grad();
            let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
            let want =
                burn::tensor::module::conv2d(x.clone(), w.clone(), Some(bias.clone()), options);
            let got = conv2d_im2col(x.clone(), w.clone(), Some(bias.clone()), stride, pad);
            assert_eq!(got.dims(), want.dims());
            let err = close(got.clone(), want.clone());
            assert!(err < 1e-4, "forward k{k} s{stride}: {err}");
            // A random upstream gradient so that every output element matters.
            let g = Tensor::<B, 4>::random(want.dims(), Distribution::Normal(0.0, 1.0), &device);
            let gw = (want * g.clone()).sum().backward();
            let gg = (got * g).sum().backward();
            let dx = (x.grad(&gw).unwrap(), x.grad(&gg).unwrap());
            let dw = (w.grad(&gw).unwrap(), w.grad(&gg).unwrap());
            let db = (bias.grad(&gw).unwrap(), bias.grad(&gg).unwrap());
            let e = |a: Tensor<NdArray, 4>, b: Tensor<NdArray, 4>| {
                close(Tensor::from_inner(a), Tensor::from_inner(b))
            };
            assert!(e(dx.0, dx.1) < 1e-3, "dx k{k} s{stride}");
            assert!(e(dw.0, dw.1) < 1e-3, "dw k{k} s{stride}");
            let db: (Vec<f32>, Vec<f32>) = (
                db.0.into_data().to_vec().unwrap(),
                db.1.into_data().to_vec().unwrap(),
            );
            for (a, b) in db.0.iter().zip(&db.1) {
                assert!((a - b).abs() < 1e-3, "db k{k} s{stride}");
            }
        }
    }
}
