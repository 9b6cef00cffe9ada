//! The 3D GAN's generator (Shabani et al. 2022): a DenseNet-style 3-D U-Net that turns a lung
//! volume with lesions into a healthy-looking twin.
//!
//! Encoder levels of 8-16-32-64 filters at full width; at each level two 3 × 3 × 3 convolutions
//! with LeakyReLU 0.3, each convolution's output concatenated to the level's input (the DenseNet
//! habit the paper describes), then 2 × 2 × 2 max-pooling. The bottleneck (128 filters, at
//! 1/16 of the grid: 2 × 8 × 8 for 32 × 128 × 128) is the same dense level whose first
//! convolution also sees latent noise z ∈ U(−0.5, 0.5) of 10 channels, then three parallel
//! convolutions with kernels 1, 3 and 5 whose outputs are concatenated. The decoder is
//! transposed convolutions (kernel 2, stride 2) of 256/128/64/32 filters, each followed by the
//! encoder level's output of the same size (skip connection); a 1 × 1 × 1 convolution and ReLU
//! make the output (LeakyReLU with [`GeneratorConfig::leaky_output`]).
//!
//! The original Keras code is not public; this is our reading of its description. At the
//! reference configuration it has 7 876 362 parameters against the 7 861 643 a PyTorch port of
//! the original counts (+0.19 %): of the readings we tried (one or two convolutions per level,
//! growing or input-only concatenation, noise before or after the bottleneck, summed or
//! concatenated parallel convolutions, kernel 2 or 3 in the decoder, with or without
//! convolutions after each skip) this one comes closest.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::{Activation, Conv3dLayer, ConvImpl, ModelBackend, Up2xLayer, max_pool3d};

/// The generator's configuration; the defaults are the reference model.
#[derive(Config, Debug)]
pub struct GeneratorConfig {
    /// Filters of the four encoder levels.
    #[config(default = "[8, 16, 32, 64]")]
    pub encoder: [usize; 4],
    /// Filters of the bottleneck level and of each of its three parallel convolutions.
    #[config(default = 128)]
    pub bottleneck: usize,
    /// Filters of the four transposed convolutions.
    #[config(default = "[256, 128, 64, 32]")]
    pub decoder: [usize; 4],
    /// Channels of the latent noise concatenated at the bottleneck.
    #[config(default = 10)]
    pub noise_channels: usize,
    /// Negative slope of the LeakyReLUs.
    #[config(default = 0.3)]
    pub leaky_slope: f64,
    /// How the convolutions compute: im2col on the CPU, burn's kernels on GPUs.
    #[config(default = "ConvImpl::Im2col")]
    pub conv: ConvImpl,
    /// The output's activation: ReLU (false, the original) or LeakyReLU of `leaky_slope`. Once
    /// the adversary drives a ReLU output below zero everywhere, no loss has a gradient left to
    /// bring it back: the twin stays black and the pseudo-mask is the scan itself.
    #[config(default = false)]
    pub leaky_output: bool,
}

impl GeneratorConfig {
    /// The reference model with every filter count multiplied by `width` (at least 1 filter),
    /// for CPU runs: 0.5 has about a quarter of the parameters.
    pub fn with_width(width: f64) -> Self {
        let scale = |f: usize| ((f as f64 * width).round() as usize).max(1);
        let d = Self::new();
        Self::new()
            .with_encoder(d.encoder.map(scale))
            .with_bottleneck(scale(d.bottleneck))
            .with_decoder(d.decoder.map(scale))
    }

    /// A generator with fresh weights on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Generator<B> {
        let conv = |i, o, k: usize| Conv3dLayer::new([i, o], k, true, self.conv, device);
        // `extra`: channels the first convolution also sees (the bottleneck's noise).
        let dense = |c_in, extra, f| DenseLevel {
            first: conv(c_in + extra, f, 3),
            second: conv(c_in + f, f, 3),
        };
        let mut levels = Vec::new();
        let mut skips = Vec::new();
        let mut c = 1;
        for f in self.encoder {
            levels.push(dense(c, 0, f));
            c += f;
            skips.push(c);
        }
        let bottleneck = dense(c, self.noise_channels, self.bottleneck);
        let c_mid = c + self.bottleneck;
        let b = self.bottleneck;
        let parallel = [conv(c_mid, b, 1), conv(c_mid, b, 3), conv(c_mid, b, 5)];
        let mut c = 3 * b;
        let mut up = Vec::new();
        for (f, skip) in self.decoder.into_iter().zip(skips.iter().rev()) {
            up.push(Up2xLayer::new([c, f], self.conv, device));
            c = f + skip;
        }
        let [p1, p3, p5] = parallel;
        Generator {
            levels,
            bottleneck,
            parallel1: p1,
            parallel3: p3,
            parallel5: p5,
            up,
            out: conv(c, 1, 1),
            noise_channels: self.noise_channels,
            slope: self.leaky_slope,
            output_slope: if self.leaky_output {
                self.leaky_slope
            } else {
                0.0
            },
        }
    }
}

/// Two convolutions, each output concatenated to the level's input.
#[derive(Module, Debug)]
struct DenseLevel<B: Backend> {
    first: Conv3dLayer<B>,
    second: Conv3dLayer<B>,
}

impl<B: ModelBackend> DenseLevel<B> {
    /// `extra` joins the input of the first convolution only (the bottleneck's latent noise).
    fn forward(&self, x: Tensor<B, 5>, extra: Option<Tensor<B, 5>>, slope: f64) -> Tensor<B, 5> {
        let first_in = match extra {
            Some(e) => Tensor::cat(vec![x.clone(), e], 1),
            None => x.clone(),
        };
        let act = Activation::Leaky(slope);
        let y = self.first.forward_activated(first_in, act);
        let y = self
            .second
            .forward_activated(Tensor::cat(vec![x.clone(), y], 1), act);
        Tensor::cat(vec![x, y], 1)
    }
}

/// Lung volume `[N, 1, D, H, W]` (D, H, W divisible by 16) and noise → its healthy-looking twin.
#[derive(Module, Debug)]
pub struct Generator<B: Backend> {
    levels: Vec<DenseLevel<B>>,
    bottleneck: DenseLevel<B>,
    parallel1: Conv3dLayer<B>,
    parallel3: Conv3dLayer<B>,
    parallel5: Conv3dLayer<B>,
    up: Vec<Up2xLayer<B>>,
    out: Conv3dLayer<B>,
    noise_channels: usize,
    slope: f64,
    /// The output activation's negative slope (0: ReLU).
    output_slope: f64,
}

impl<B: ModelBackend> Generator<B> {
    /// The shape of the latent noise for a batch of `[n, 1, d, h, w]` volumes.
    pub fn noise_shape(&self, [n, _, d, h, w]: [usize; 5]) -> [usize; 5] {
        [n, self.noise_channels, d / 16, h / 16, w / 16]
    }

    /// The healthy twin of `x`, given latent noise of [`Generator::noise_shape`].
    pub fn forward(&self, x: Tensor<B, 5>, noise: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, d, h, w] = x.dims();
        assert!(
            d.is_multiple_of(16) && h.is_multiple_of(16) && w.is_multiple_of(16),
            "the generator pools four times: every axis of {:?} must be a multiple of 16",
            [d, h, w]
        );
        let mut skips = Vec::with_capacity(self.levels.len());
        let mut x = x;
        for level in &self.levels {
            let y = level.forward(x, None, self.slope);
            x = max_pool3d(y.clone());
            skips.push(y);
        }
        let x = self.bottleneck.forward(x, Some(noise), self.slope);
        let act = Activation::Leaky(self.slope);
        let mut x = Tensor::cat(
            vec![
                self.parallel1.forward_activated(x.clone(), act),
                self.parallel3.forward_activated(x.clone(), act),
                self.parallel5.forward_activated(x, act),
            ],
            1,
        );
        for (up, skip) in self.up.iter().zip(skips.into_iter().rev()) {
            x = Tensor::cat(vec![up.forward_activated(x, act), skip], 1);
        }
        let out = if self.output_slope > 0.0 {
            Activation::Leaky(self.output_slope)
        } else {
            Activation::Relu
        };
        self.out.forward_activated(x, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray;

    #[test]
    fn the_reference_generator_has_our_readings_parameter_count() {
        let g = GeneratorConfig::new().init::<burn::backend::Autodiff<B>>(&Default::default());
        // 7 861 643 in the PyTorch port of the original (module documentation).
        assert_eq!(crate::trainable_params(&g), 7_876_362);
    }

    #[test]
    fn the_generator_keeps_the_volume_shape_and_is_non_negative() {
        let device = Default::default();
        let g = GeneratorConfig::with_width(0.25).init::<B>(&device);
        let x =
            Tensor::<B, 5>::random([2, 1, 16, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
        let z = Tensor::random(
            g.noise_shape(x.dims()),
            Distribution::Uniform(-0.5, 0.5),
            &device,
        );
        let y = g.forward(x, z);
        assert_eq!(y.dims(), [2, 1, 16, 32, 32]);
        let min: f32 = y.min().into_scalar();
        assert!(min >= 0.0, "{min}");
    }
}
