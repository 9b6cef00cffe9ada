//! The 3D GAN's discriminator (Shabani et al. 2022, as the original Keras code builds it, without
//! its dead first convolution) and 3-D max-pooling, which burn 0.21 lacks.
//!
//! The discriminator tells real healthy volumes from generated ones: valid 3 × 3 × 3
//! convolutions 32 → 64 → 128, each with ReLU and a 2 × 2 × 2 max-pool, a global average pool,
//! dense layers 32 / 16 / 8 with dropout 0.5, and a 2-way softmax. At the reference size
//! (32 × 128 × 128 × 1) it has 282 378 trainable parameters, as a PyTorch port of the original
//! counts.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;

use crate::{Conv3dLayer, ConvImpl};

/// 2 × 2 × 2 max-pooling with stride 2 of `[N, C, D, H, W]`, odd sizes floored (Keras' `valid`).
///
/// Built from burn's 2-D pooling: `max_pool2d` over (H, W) on `[N, C·D, H, W]`, then the larger
/// of each pair of depth slices. Both steps carry exact gradients (to the maximum of each
/// window), so it trains on every backend; a fused kernel can replace it on GPUs.
pub fn max_pool3d<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [n, c, d, h, w] = x.dims();
    let d2 = d / 2;
    // The last slice of an odd depth belongs to no window.
    let x = x.narrow(2, 0, 2 * d2);
    let planes = x.reshape([n, c * 2 * d2, h, w]);
    let pooled = max_pool2d(planes, [2, 2], [2, 2], [0, 0], [1, 1], false);
    let [_, _, h2, w2] = pooled.dims();
    pooled
        .reshape([n * c * d2, 2, h2 * w2])
        .max_dim(1)
        .reshape([n, c, d2, h2, w2])
}

/// The discriminator's configuration; the defaults are the original's.
#[derive(Config, Debug)]
pub struct DiscriminatorConfig {
    /// Channels of the three valid 3 × 3 × 3 convolutions.
    #[config(default = "[32, 64, 128]")]
    pub channels: [usize; 3],
    /// Widths of the dense layers before the 2-way output.
    #[config(default = "[32, 16, 8]")]
    pub dense: [usize; 3],
    /// Dropout after each dense layer.
    #[config(default = 0.5)]
    pub dropout: f64,
    /// How the convolutions compute: im2col on the CPU, burn's kernels on GPUs.
    #[config(default = "ConvImpl::Im2col")]
    pub conv: ConvImpl,
}

/// Real healthy volume or generated one: `[N, 1, D, H, W]` → `[N, 2]` class probabilities.
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    conv1: Conv3dLayer<B>,
    conv2: Conv3dLayer<B>,
    conv3: Conv3dLayer<B>,
    dense1: Linear<B>,
    dense2: Linear<B>,
    dense3: Linear<B>,
    out: Linear<B>,
    dropout: Dropout,
}

impl DiscriminatorConfig {
    /// A discriminator with fresh weights on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Discriminator<B> {
        let [c1, c2, c3] = self.channels;
        let [d1, d2, d3] = self.dense;
        let conv = |i, o| Conv3dLayer::new([i, o], 3, false, self.conv, device);
        Discriminator {
            conv1: conv(1, c1),
            conv2: conv(c1, c2),
            conv3: conv(c2, c3),
            dense1: LinearConfig::new(c3, d1).init(device),
            dense2: LinearConfig::new(d1, d2).init(device),
            dense3: LinearConfig::new(d2, d3).init(device),
            out: LinearConfig::new(d3, 2).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl<B: Backend> Discriminator<B> {
    /// Class probabilities (softmax over "real healthy", "generated").
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let x = self.pooled(x);
        let x = self.dropout.forward(relu(self.dense1.forward(x)));
        let x = self.dropout.forward(relu(self.dense2.forward(x)));
        let x = self.dropout.forward(relu(self.dense3.forward(x)));
        softmax(self.out.forward(x), 1)
    }

    /// Class probabilities with the dropout masks given (`keep / (1 − p)` or 0 per unit, one
    /// `[N, width]` mask per dense layer), so training draws them from its own seeded generator
    /// rather than the backend's process-wide one.
    pub fn forward_masked(&self, x: Tensor<B, 5>, masks: [Tensor<B, 2>; 3]) -> Tensor<B, 2> {
        let [m1, m2, m3] = masks;
        let x = self.pooled(x);
        let x = relu(self.dense1.forward(x)) * m1;
        let x = relu(self.dense2.forward(x)) * m2;
        let x = relu(self.dense3.forward(x)) * m3;
        softmax(self.out.forward(x), 1)
    }

    /// The widths of the three dense layers (the dropout masks' columns).
    pub fn dense_widths(&self) -> [usize; 3] {
        [
            self.dense1.weight.dims()[1],
            self.dense2.weight.dims()[1],
            self.dense3.weight.dims()[1],
        ]
    }

    /// The dropout probability.
    pub fn dropout_prob(&self) -> f64 {
        self.dropout.prob
    }

    /// Convolutions, pools and the global average pool over depth, height and width.
    fn pooled(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let x = max_pool3d(relu(self.conv1.forward(x)));
        let x = max_pool3d(relu(self.conv2.forward(x)));
        let x = max_pool3d(relu(self.conv3.forward(x)));
        let [n, c, ..] = x.dims();
        x.reshape([n as i32, c as i32, -1])
            .mean_dim(2)
            .reshape([n, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    type B = NdArray;

    /// The plain reference: the maximum of each 2 × 2 × 2 window, and where it is.
    fn reference(x: &[f32], [n, c, d, h, w]: [usize; 5]) -> (Vec<f32>, Vec<usize>) {
        let (d2, h2, w2) = (d / 2, h / 2, w / 2);
        let at = |b, k, z, y, x_| (((b * c + k) * d + z) * h + y) * w + x_;
        let (mut out, mut argmax) = (Vec::new(), Vec::new());
        for b in 0..n {
            for k in 0..c {
                for z in 0..d2 {
                    for y in 0..h2 {
                        for x_ in 0..w2 {
                            let mut best = (f32::NEG_INFINITY, 0);
                            for (dz, dy, dx) in (0..8).map(|i| (i >> 2, (i >> 1) & 1, i & 1)) {
                                let i = at(b, k, 2 * z + dz, 2 * y + dy, 2 * x_ + dx);
                                if x[i] > best.0 {
                                    best = (x[i], i);
                                }
                            }
                            out.push(best.0);
                            argmax.push(best.1);
                        }
                    }
                }
            }
        }
        (out, argmax)
    }

    #[test]
    fn max_pool3d_and_its_gradient_match_the_reference_on_random_volumes() {
        let device = Default::default();
        for shape in [[2, 3, 4, 6, 8], [1, 2, 5, 7, 6], [1, 1, 3, 3, 3]] {
            let x =
                Tensor::<Autodiff<B>, 5>::random(shape, Distribution::Normal(0.0, 1.0), &device)
                    .require_grad();
            let values: Vec<f32> = x.to_data().to_vec().unwrap();
            let (want, argmax) = reference(&values, shape);
            let y = max_pool3d(x.clone());
            let got: Vec<f32> = y.to_data().to_vec().unwrap();
            assert_eq!(got, want, "{shape:?}");
            // d(sum y)/dx: 1 at each window's maximum, 0 elsewhere.
            let grads = y.sum().backward();
            let g: Vec<f32> = x.grad(&grads).unwrap().to_data().to_vec().unwrap();
            let mut expected = vec![0.0f32; values.len()];
            for i in argmax {
                expected[i] = 1.0;
            }
            assert_eq!(g, expected, "{shape:?}");
        }
    }

    #[test]
    fn the_discriminator_has_the_reference_parameter_count() {
        let d = DiscriminatorConfig::new().init::<Autodiff<B>>(&Default::default());
        assert_eq!(crate::trainable_params(&d), 282_378);
    }

    #[test]
    fn the_discriminator_gives_probabilities() {
        let device = Default::default();
        let d = DiscriminatorConfig::new().init::<B>(&device);
        // A small volume that survives three valid convolutions and pools: 24 × 40 × 40.
        let x =
            Tensor::<B, 5>::random([2, 1, 24, 40, 40], Distribution::Uniform(0.0, 1.0), &device);
        let p = d.forward(x);
        assert_eq!(p.dims(), [2, 2]);
        let sums: Vec<f32> = p.sum_dim(1).to_data().to_vec().unwrap();
        for s in sums {
            assert!((s - 1.0).abs() < 1e-5, "{s}");
        }
    }
}
