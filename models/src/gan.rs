//! The 3D GAN's discriminator (Shabani et al. 2022, as the original Keras code builds it, without
//! its dead first convolution) and 3-D max-pooling, which burn 0.21 lacks.
//!
//! The discriminator tells real healthy volumes from generated ones: valid 3 × 3 × 3
//! convolutions 32 → 64 → 128, each with ReLU and a 2 × 2 × 2 max-pool, a global average pool,
//! dense layers 32 / 16 / 8 with dropout 0.5, and a 2-way softmax. At the reference size
//! (32 × 128 × 128 × 1) it has 282 378 trainable parameters, as a PyTorch port of the original
//! counts.
//!
//! Beyond the original, [`Adversary::Patch`] replaces the average pool and the dense layers by
//! one logit per cell of the last feature map (a 1 × 1 × 1 convolution): a local adversary
//! whose cells each see a 22-voxel-wide region, so that a lesion is judged where it is rather
//! than averaged with the whole lung ([`crate::patch_adversary`]).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};
use serde::{Deserialize, Serialize};

use crate::{Activation, Conv3dLayer, ConvImpl, ModelBackend};

/// How the discriminator judges a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Adversary {
    /// The original: one verdict per volume (global average pool, dense layers, softmax).
    #[default]
    Global,
    /// One logit per cell of the last feature map, judged where the lung is.
    Patch,
}

/// 2 × 2 × 2 max-pooling with stride 2 of `[N, C, D, H, W]`, odd sizes floored (Keras' `valid`),
/// on the backend's best path: our kernels (forward and backward) on cubecl backends, the plain
/// composition [`max_pool3d_plain`] elsewhere.
pub fn max_pool3d<B: ModelBackend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    Tensor::from_primitive(TensorPrimitive::Float(B::max_pool3d(
        x.into_primitive().tensor(),
    )))
}

/// [`max_pool3d`] from burn's 2-D pooling: `max_pool2d` over (H, W) on `[N, C·D, H, W]`, then
/// the larger of each pair of depth slices. Both steps carry exact gradients (to the maximum of
/// each window), so burn differentiates it on every backend.
pub fn max_pool3d_plain<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
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
    /// One verdict per volume (the original) or one per cell.
    #[config(default = "Adversary::Global")]
    pub adversary: Adversary,
    /// The convolutions' activation below zero: 0 is the original's ReLU, a positive slope a
    /// LeakyReLU (0.2 in DCGAN), whose units cannot die.
    #[config(default = 0.0)]
    pub slope: f64,
}

/// Real healthy volume or generated one: `[N, 1, D, H, W]` → `[N, 2]` class probabilities
/// (the original) or `[N, cells]` logits ([`Adversary::Patch`]).
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    conv1: Conv3dLayer<B>,
    conv2: Conv3dLayer<B>,
    conv3: Conv3dLayer<B>,
    head: Head<B>,
    /// The convolutions' slope below zero (0: ReLU).
    slope: f64,
}

/// What turns the last feature map into a verdict.
// One per discriminator: the larger variant's size costs nothing, and burn's Module derive
// takes the layers as they are.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Head<B: Backend> {
    /// Global average pool, dense layers with dropout, 2-way softmax.
    Global(DenseHead<B>),
    /// A logit per cell: the same linear map applied to every cell's channels.
    Patch(Linear<B>),
}

/// The original's dense layers.
#[derive(Module, Debug)]
pub struct DenseHead<B: Backend> {
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
        let head = match self.adversary {
            Adversary::Global => Head::Global(DenseHead {
                dense1: LinearConfig::new(c3, d1).init(device),
                dense2: LinearConfig::new(d1, d2).init(device),
                dense3: LinearConfig::new(d2, d3).init(device),
                out: LinearConfig::new(d3, 2).init(device),
                dropout: DropoutConfig::new(self.dropout).init(),
            }),
            Adversary::Patch => Head::Patch(LinearConfig::new(c3, 1).init(device)),
        };
        Discriminator {
            conv1: conv(1, c1),
            conv2: conv(c1, c2),
            conv3: conv(c2, c3),
            head,
            slope: self.slope,
        }
    }
}

impl<B: ModelBackend> Discriminator<B> {
    /// Class probabilities (softmax over "real healthy", "generated"), or the cells' logits.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let features = self.features(x);
        match &self.head {
            Head::Global(h) => {
                let x = h.dropout.forward(relu(h.dense1.forward(average(features))));
                let x = h.dropout.forward(relu(h.dense2.forward(x)));
                let x = h.dropout.forward(relu(h.dense3.forward(x)));
                softmax(h.out.forward(x), 1)
            }
            Head::Patch(logit) => per_cell(logit, features),
        }
    }

    /// [`Discriminator::forward`] with the dropout masks given (`keep / (1 − p)` or 0 per unit,
    /// one `[N, width]` mask per dense layer, none for a patch head), so training draws them
    /// from its own seeded generator rather than the backend's process-wide one.
    pub fn forward_masked(&self, x: Tensor<B, 5>, masks: Vec<Tensor<B, 2>>) -> Tensor<B, 2> {
        self.judge(self.features(x), masks)
    }

    /// [`Discriminator::forward_masked`] and the share of the last feature map's units above
    /// zero (after the ReLUs and pools). Near 0 the adversary is dead: its verdict is its bias
    /// alone, whatever it is shown.
    pub fn forward_masked_live(
        &self,
        x: Tensor<B, 5>,
        masks: Vec<Tensor<B, 2>>,
    ) -> (Tensor<B, 2>, f64) {
        let features = self.features(x);
        let live = features.clone().detach().greater_elem(0.0).float().mean();
        (
            self.judge(features, masks),
            live.into_scalar().elem::<f64>(),
        )
    }

    fn judge(&self, features: Tensor<B, 5>, masks: Vec<Tensor<B, 2>>) -> Tensor<B, 2> {
        match &self.head {
            Head::Global(h) => {
                let [m1, m2, m3]: [Tensor<B, 2>; 3] = masks
                    .try_into()
                    .expect("the dense head takes three dropout masks");
                let x = relu(h.dense1.forward(average(features))) * m1;
                let x = relu(h.dense2.forward(x)) * m2;
                let x = relu(h.dense3.forward(x)) * m3;
                softmax(h.out.forward(x), 1)
            }
            Head::Patch(logit) => per_cell(logit, features),
        }
    }

    /// The widths of the dense layers (the dropout masks' columns); none for a patch head.
    pub fn dense_widths(&self) -> Vec<usize> {
        match &self.head {
            Head::Global(h) => [&h.dense1, &h.dense2, &h.dense3]
                .map(|l| l.weight.dims()[1])
                .to_vec(),
            Head::Patch(_) => Vec::new(),
        }
    }

    /// The dropout probability (0 for a patch head, which has none).
    pub fn dropout_prob(&self) -> f64 {
        match &self.head {
            Head::Global(h) => h.dropout.prob,
            Head::Patch(_) => 0.0,
        }
    }

    /// How this discriminator judges.
    pub fn adversary(&self) -> Adversary {
        match &self.head {
            Head::Global(_) => Adversary::Global,
            Head::Patch(_) => Adversary::Patch,
        }
    }

    /// Convolutions and pools: `[N, C, d, h, w]`, a cell per 8 voxels along each axis.
    fn features(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let act = if self.slope > 0.0 {
            Activation::Leaky(self.slope)
        } else {
            Activation::Relu
        };
        let x = max_pool3d(self.conv1.forward_activated(x, act));
        let x = max_pool3d(self.conv2.forward_activated(x, act));
        max_pool3d(self.conv3.forward_activated(x, act))
    }
}

/// The global average pool over depth, height and width: `[N, C]`.
fn average<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 2> {
    let [n, c, ..] = x.dims();
    x.reshape([n as i32, c as i32, -1])
        .mean_dim(2)
        .reshape([n, c])
}

/// `logit` applied to every cell's channels: `[N, C, d, h, w]` → `[N, d·h·w]`, cells in
/// row-major (depth, height, width) order.
fn per_cell<B: Backend>(logit: &Linear<B>, x: Tensor<B, 5>) -> Tensor<B, 2> {
    let [n, c, d, h, w] = x.dims();
    let cells = d * h * w;
    let channels_last = x
        .reshape([n, c, cells])
        .swap_dims(1, 2)
        .reshape([n * cells, c]);
    logit.forward(channels_last).reshape([n, cells])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray;

    /// Pooled output and input gradient of `sum(max_pool3d(x) ⊙ r)` on backend `A`.
    fn pool_and_grad<A: burn::tensor::backend::AutodiffBackend + ModelBackend>(
        x: &[f32],
        r: &[f32],
        shape: [usize; 5],
    ) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let xt =
            Tensor::<A, 5>::from_data(TensorData::new(x.to_vec(), shape), &device).require_grad();
        let y = max_pool3d(xt.clone());
        let rt = Tensor::<A, 5>::from_data(TensorData::new(r.to_vec(), y.dims()), &device);
        let grads = (y.clone() * rt).sum().backward();
        let g = xt.grad(&grads).expect("x is tracked");
        (
            y.into_data().to_vec().unwrap(),
            g.into_data().to_vec().unwrap(),
        )
    }

    fn random(shape: [usize; 5], seed: u64) -> (Vec<f32>, Vec<f32>) {
        let n: usize = shape.iter().product();
        let m = shape[0] * shape[1] * (shape[2] / 2) * (shape[3] / 2) * (shape[4] / 2);
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut draw =
            |k: usize| -> Vec<f32> { (0..k).map(|_| rng.random_range(-1.0..1.0)).collect() };
        (draw(n), draw(m))
    }

    const SHAPES: [[usize; 5]; 3] = [[2, 3, 4, 6, 8], [1, 2, 5, 7, 6], [1, 1, 3, 3, 3]];

    /// The fallback (burn's 2-D pooling and a max over depth pairs, differentiated by burn)
    /// against the kernels' plain reference; and the provided host backward against both.
    #[test]
    fn max_pool3d_fallback_and_its_gradient_match_the_reference_on_random_volumes() {
        for (k, shape) in SHAPES.into_iter().enumerate() {
            let (x, r) = random(shape, k as u64);
            let (planes, dims) = (shape[0] * shape[1], [shape[2], shape[3], shape[4]]);
            let (y, g) = pool_and_grad::<Autodiff<B>>(&x, &r, shape);
            assert_eq!(y, covflow_kernels::max_pool3d_reference(&x, planes, dims));
            let want = covflow_kernels::max_pool3d_backward_reference(&x, &r, planes, dims);
            assert_eq!(g, want, "{shape:?}");
            let device = Default::default();
            let xt = Tensor::<B, 5>::from_data(TensorData::new(x.clone(), shape), &device);
            let pooled = [shape[0], shape[1], shape[2] / 2, shape[3] / 2, shape[4] / 2];
            let rt = Tensor::<B, 5>::from_data(TensorData::new(r.clone(), pooled), &device);
            let host = <B as ModelBackend>::max_pool3d_backward(
                xt.into_primitive().tensor(),
                rt.into_primitive().tensor(),
            );
            let host: Vec<f32> = Tensor::<B, 5>::from_primitive(TensorPrimitive::Float(host))
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(host, want, "{shape:?} provided backward");
        }
    }

    /// Our kernels, registered with burn's autodiff on wgpu, against the fallback on NdArray.
    #[test]
    fn wgpu_max_pool3d_kernels_match_the_fallback_forward_and_backward() {
        type Gpu = Autodiff<burn::backend::Wgpu>;
        for (k, shape) in SHAPES.into_iter().enumerate() {
            let (x, r) = random(shape, k as u64);
            let (y_gpu, g_gpu) = pool_and_grad::<Gpu>(&x, &r, shape);
            let (y_cpu, g_cpu) = pool_and_grad::<Autodiff<B>>(&x, &r, shape);
            assert_eq!(y_gpu, y_cpu, "{shape:?} forward");
            assert_eq!(g_gpu, g_cpu, "{shape:?} gradient");
        }
    }

    #[test]
    fn the_discriminator_has_the_reference_parameter_count() {
        let d = DiscriminatorConfig::new().init::<Autodiff<B>>(&Default::default());
        assert_eq!(crate::trainable_params(&d), 282_378);
    }

    #[test]
    fn the_patch_discriminator_has_the_trunk_and_one_logit_per_cell() {
        let device = Default::default();
        let config = DiscriminatorConfig::new().with_adversary(Adversary::Patch);
        let d = config.init::<Autodiff<B>>(&device);
        // The convolutions' 277 568 and a 128 → 1 linear map.
        assert_eq!(crate::trainable_params(&d), 277_697);
        assert_eq!(d.adversary(), Adversary::Patch);
        assert!(d.dense_widths().is_empty());
        // Odd sizes: 33 × 40 × 47 → 2 × 3 × 4 cells (crate::patch_adversary::cell_grid).
        let x = Tensor::<Autodiff<B>, 5>::random(
            [2, 1, 33, 40, 47],
            Distribution::Uniform(0.0, 1.0),
            &device,
        );
        assert_eq!(d.forward(x.clone()).dims(), [2, 24]);
        assert_eq!(d.forward_masked(x, Vec::new()).dims(), [2, 24]);
    }

    /// The slope reaches every convolution: the same weights judge differently, and nothing
    /// is added to train.
    #[test]
    fn a_leaky_discriminator_shares_the_weights_and_changes_the_verdict() {
        let device = Default::default();
        let relu = DiscriminatorConfig::new().with_adversary(Adversary::Patch);
        let d = relu.init::<Autodiff<B>>(&device);
        let leaky = DiscriminatorConfig::new()
            .with_adversary(Adversary::Patch)
            .with_slope(0.2)
            .init::<Autodiff<B>>(&device)
            .load_record(d.clone().into_record());
        assert_eq!(crate::trainable_params(&leaky), crate::trainable_params(&d));
        let x = Tensor::<Autodiff<B>, 5>::random(
            [1, 1, 24, 40, 40],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let (a, b): (Vec<f32>, Vec<f32>) = (
            d.forward(x.clone()).into_data().to_vec().unwrap(),
            leaky.forward(x).into_data().to_vec().unwrap(),
        );
        assert_ne!(a, b);
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
