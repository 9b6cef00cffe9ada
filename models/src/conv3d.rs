//! 3-D convolution as im2col + one batched matmul, in plain tensor ops: the GAN's CPU path.
//!
//! Why: burn-ndarray 0.21's `conv3d` is a direct loop nest; one training step of the half-width
//! generator on `[2, 1, 16, 64, 64]` took 12 s on 2 cores with it. The same convolution as
//! `k³` shifted slices concatenated along channels and one matmul runs on ndarray's GEMM
//! (BENCHMARKS.md, "3D GAN"); autodiff differentiates it exactly. On cubecl backends burn's
//! own kernels stay ([`ConvImpl::Native`]).

use burn::module::{Module, Param};
use burn::nn::PaddingConfig3d;
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Slice, Tensor, backend::Backend};

use crate::{Activation, ConvImpl, ModelBackend};

/// A 3-D convolution with a cubic kernel, stride 1 and `same` or `valid` padding, initialised
/// exactly like `burn::nn::conv::Conv3d` (its weights are taken from one).
#[derive(Module, Debug)]
pub struct Conv3dLayer<B: Backend> {
    /// `[out, in, k, k, k]`.
    pub weight: Param<Tensor<B, 5>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    padding: usize,
    #[module(skip)]
    imp: ConvImpl,
}

impl<B: Backend> Conv3dLayer<B> {
    /// `channels[0] → channels[1]` with a `k`-voxel cubic kernel; `same` keeps the shape
    /// (odd `k`), otherwise `valid`.
    pub fn new(
        channels: [usize; 2],
        k: usize,
        same: bool,
        imp: ConvImpl,
        device: &B::Device,
    ) -> Self {
        assert!(
            !same || !k.is_multiple_of(2),
            "`same` padding needs an odd kernel, not {k}"
        );
        let padding = if same { k / 2 } else { 0 };
        let conv: Conv3d<B> = Conv3dConfig::new(channels, [k, k, k])
            .with_padding(PaddingConfig3d::Explicit(padding, padding, padding))
            .init(device);
        Self {
            weight: conv.weight,
            bias: conv.bias,
            padding,
            imp,
        }
    }
}

impl<B: ModelBackend> Conv3dLayer<B> {
    /// Applies the convolution to `[N, C, D, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_activated(x, Activation::Identity)
    }

    /// Applies the convolution and then `activation` (one operation on the CPU backend).
    pub fn forward_activated(&self, x: Tensor<B, 5>, activation: Activation) -> Tensor<B, 5> {
        let w = self.weight.val();
        let b = self.bias.as_ref().map(|b| b.val());
        match self.imp {
            ConvImpl::Im2col => crate::conv3d(x, w, b, self.padding, activation),
            ConvImpl::Native | ConvImpl::ImplicitGemm => {
                let p = self.padding;
                let options = ConvOptions::new([1, 1, 1], [p, p, p], [1, 1, 1], 1);
                activation.apply(burn::tensor::module::conv3d(x, w, b, options))
            }
        }
    }
}

/// A transposed 3-D convolution with kernel 2 and stride 2 (each input voxel paints its own
/// 2 × 2 × 2 output block), initialised like `burn::nn::conv::ConvTranspose3d`.
///
/// Because the blocks do not overlap it is one matmul and a voxel shuffle
/// ([`up2x_matmul`]), which on ndarray is far faster than burn's direct kernel.
#[derive(Module, Debug)]
pub struct Up2xLayer<B: Backend> {
    /// `[in, out, 2, 2, 2]`.
    pub weight: Param<Tensor<B, 5>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    imp: ConvImpl,
}

impl<B: Backend> Up2xLayer<B> {
    /// `channels[0] → channels[1]`, doubling every spatial axis.
    pub fn new(channels: [usize; 2], imp: ConvImpl, device: &B::Device) -> Self {
        let conv: ConvTranspose3d<B> = ConvTranspose3dConfig::new(channels, [2, 2, 2])
            .with_stride([2, 2, 2])
            .init(device);
        Self {
            weight: conv.weight,
            bias: conv.bias,
            imp,
        }
    }
}

impl<B: ModelBackend> Up2xLayer<B> {
    /// `[N, C, D, H, W]` → `[N, O, 2D, 2H, 2W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_activated(x, Activation::Identity)
    }

    /// Applies the transposed convolution and then `activation` (one operation on the CPU
    /// backend).
    pub fn forward_activated(&self, x: Tensor<B, 5>, activation: Activation) -> Tensor<B, 5> {
        let w = self.weight.val();
        let b = self.bias.as_ref().map(|b| b.val());
        match self.imp {
            ConvImpl::Im2col => crate::up2x(x, w, b, activation),
            ConvImpl::Native | ConvImpl::ImplicitGemm => {
                let options =
                    ConvTransposeOptions::new([2, 2, 2], [0, 0, 0], [0, 0, 0], [1, 1, 1], 1);
                activation.apply(burn::tensor::module::conv_transpose3d(x, w, b, options))
            }
        }
    }
}

/// Transposed convolution, kernel 2, stride 2, of `x: [N, C, D, H, W]` with
/// `weight: [C, O, 2, 2, 2]`, as one matmul and a shuffle of each voxel's 2 × 2 × 2 block into
/// place (in steps of rank ≤ 6, ndarray's limit).
pub fn up2x_matmul<B: Backend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 5> {
    let [n, c, d, h, w] = x.dims();
    let [ci, o, ..] = weight.dims();
    assert_eq!(ci, c, "weight [C, O, 2, 2, 2] must match the input's C");
    let wm = weight
        .reshape([c, o * 8])
        .transpose()
        .reshape([1, o * 8, c]);
    // [N, (o, a, b, c'), (d, h, w)]: output voxel (2d + a, 2h + b, 2w + c').
    let y = wm.matmul(x.reshape([n, c, d * h * w]));
    let y = y
        .reshape([n * o * 2, 2, 2, d, h, w])
        .permute([0, 3, 4, 1, 5, 2])
        .reshape([n * o, 2, d, 2 * h, 2 * w])
        .permute([0, 2, 1, 3, 4])
        .reshape([n, o, 2 * d, 2 * h, 2 * w]);
    match bias {
        Some(b) => y + b.reshape([1, o, 1, 1, 1]),
        None => y,
    }
}

/// Zero padding of `p` voxels on each side of the last three axes.
fn pad3<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 5> {
    if p == 0 {
        return x;
    }
    let [n, c, d, h, w] = x.dims();
    let device = x.device();
    let planes = x
        .reshape([n, c * d, h, w])
        .pad((p, p, p, p), burn::tensor::ops::PadMode::Constant(0.0))
        .reshape([n, c, d, h + 2 * p, w + 2 * p]);
    let zeros = Tensor::zeros([n, c, p, h + 2 * p, w + 2 * p], &device);
    Tensor::cat(vec![zeros.clone(), planes, zeros], 2)
}

/// Convolution of `x: [N, C, D, H, W]` with `weight: [O, C, k, k, k]`, stride 1, zero padding
/// `padding` on each side: output `[N, O, D + 2·padding − k + 1, …]`.
pub fn conv3d_im2col<B: Backend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    padding: usize,
) -> Tensor<B, 5> {
    let [n, c, ..] = x.dims();
    let [o, ci, k, ..] = weight.dims();
    assert_eq!(ci, c, "weight [O, C, k, k, k] must match the input's C");
    let xp = pad3(x, padding);
    let [_, _, dp, hp, wp] = xp.dims();
    let (d, h, w) = (dp - k + 1, hp - k + 1, wp - k + 1);
    let span =
        |start: usize, len: usize| Slice::new(start as isize, Some((start + len) as isize), 1);
    let all = |len: usize| Slice::new(0, Some(len as isize), 1);
    // Columns ordered (dz, dy, dx, c): one shifted view of the padded input per kernel offset.
    let mut cols = Vec::with_capacity(k * k * k);
    for dz in 0..k {
        for dy in 0..k {
            for dx in 0..k {
                cols.push(xp.clone().slice([
                    all(n),
                    all(c),
                    span(dz, d),
                    span(dy, h),
                    span(dx, w),
                ]));
            }
        }
    }
    let cols = if cols.len() == 1 {
        cols.pop().expect("one column block")
    } else {
        Tensor::cat(cols, 1)
    };
    let kk = k * k * k * c;
    let cols = cols.reshape([n, kk, d * h * w]);
    let w2 = weight.permute([0, 2, 3, 4, 1]).reshape([1, o, kk]);
    let y = w2.matmul(cols).reshape([n, o, d, h, w]);
    match bias {
        Some(b) => y + b.reshape([1, o, 1, 1, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    type B = Autodiff<NdArray>;

    fn max_rel(a: &Tensor<B, 5>, b: &Tensor<B, 5>) -> f32 {
        let a: Vec<f32> = a.to_data().to_vec().unwrap();
        let b: Vec<f32> = b.to_data().to_vec().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    #[test]
    fn up2x_matches_burns_transposed_convolution_and_its_gradients() {
        let device = Default::default();
        for (shape, o) in [([2, 3, 2, 3, 4], 5), ([1, 4, 3, 2, 2], 2)] {
            let x = Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let w = Tensor::<B, 5>::random(
                [shape[1], o, 2, 2, 2],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let b =
                Tensor::<B, 1>::random([o], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let ours = up2x_matmul(x.clone(), w.clone(), Some(b.clone()));
            let options = ConvTransposeOptions::new([2, 2, 2], [0, 0, 0], [0, 0, 0], [1, 1, 1], 1);
            let theirs = burn::tensor::module::conv_transpose3d(
                x.clone(),
                w.clone(),
                Some(b.clone()),
                options,
            );
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_rel(&ours, &theirs) < 1e-5, "{shape:?}");
            let g = Tensor::<B, 5>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ga = (ours * g.clone()).sum().backward();
            let gb = (theirs * g).sum().backward();
            let lift = |t: Tensor<NdArray, 5>| Tensor::<B, 5>::from_inner(t);
            assert!(max_rel(&lift(x.grad(&ga).unwrap()), &lift(x.grad(&gb).unwrap())) < 1e-5);
            assert!(max_rel(&lift(w.grad(&ga).unwrap()), &lift(w.grad(&gb).unwrap())) < 1e-5);
        }
    }

    #[test]
    fn im2col_matches_burns_conv3d_and_its_gradients_on_random_volumes() {
        let device = Default::default();
        for (shape, o, k, padding) in [
            ([2, 3, 5, 6, 7], 4, 3, 1),
            ([1, 2, 4, 4, 4], 3, 1, 0),
            ([1, 2, 7, 6, 5], 2, 5, 2),
            ([1, 3, 6, 6, 6], 2, 3, 0),
        ] {
            let x = Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let w = Tensor::<B, 5>::random(
                [o, shape[1], k, k, k],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let b =
                Tensor::<B, 1>::random([o], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let ours = conv3d_im2col(x.clone(), w.clone(), Some(b.clone()), padding);
            let options = ConvOptions::new([1, 1, 1], [padding; 3], [1, 1, 1], 1);
            let theirs =
                burn::tensor::module::conv3d(x.clone(), w.clone(), Some(b.clone()), options);
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_rel(&ours, &theirs) < 1e-5, "{shape:?} k={k}");
            // The same upstream gradient through both: d/dx and d/dw agree.
            let g = Tensor::<B, 5>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ga = (ours * g.clone()).sum().backward();
            let gb = (theirs * g).sum().backward();
            let (xa, xb) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
            let (wa, wb) = (w.grad(&ga).unwrap(), w.grad(&gb).unwrap());
            let lift = |t: Tensor<NdArray, 5>| Tensor::<B, 5>::from_inner(t);
            assert!(max_rel(&lift(xa), &lift(xb)) < 1e-5, "dx {shape:?} k={k}");
            assert!(max_rel(&lift(wa), &lift(wb)) < 1e-5, "dw {shape:?} k={k}");
        }
    }
}
