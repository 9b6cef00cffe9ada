//! One training step of the pseudo-mask TransUNet, and its benchmark.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, ElementConversion, Tensor};

use crate::losses::{contrastive, mse, mse_and_sensitivity, sensitivity_bce};
use crate::transunet::{TransUNet, TransUNetConfig};

/// Loss weights and constants (docs/method.md, stage 7).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    /// Contrastive temperature τ.
    pub temperature: f64,
    /// Weight `w` of positive pairs.
    pub positive_weight: f64,
    /// Sensitivity factor β.
    pub beta: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            temperature: 0.06,
            positive_weight: 1.5,
            beta: 2.0,
        }
    }
}

/// The TransUNet with the projection head the contrastive loss reads (bottleneck → 128).
#[derive(Module, Debug)]
pub struct SegmentationLearner<B: crate::ModelBackend> {
    /// The segmentation network.
    pub net: TransUNet<B>,
    /// Projection of the pooled bottleneck features.
    pub projection: Linear<B>,
}

impl<B: crate::ModelBackend> SegmentationLearner<B> {
    /// A fresh learner.
    pub fn new(config: &TransUNetConfig, device: &B::Device) -> Self {
        Self {
            net: config.init(device),
            projection: LinearConfig::new(4 * config.out_channels, 128).init(device),
        }
    }

    /// Total loss on a batch of slices `[N, 1, H, W]`, pseudo-masks `[N, 1, H, W]` and
    /// high/low labels.
    pub fn loss(
        &self,
        slices: Tensor<B, 4>,
        pseudo_masks: Tensor<B, 4>,
        labels: &[u8],
        cfg: &LossConfig,
    ) -> Tensor<B, 1> {
        let [c, m, s] = self.losses(slices, pseudo_masks, labels, cfg);
        c + m + s
    }

    /// The three losses, `[contrastive, mse, sensitivity]`, of one batch.
    pub fn losses(
        &self,
        slices: Tensor<B, 4>,
        pseudo_masks: Tensor<B, 4>,
        labels: &[u8],
        cfg: &LossConfig,
    ) -> [Tensor<B, 1>; 3] {
        self.losses_of(slices, pseudo_masks, labels, cfg, [true; 3])
            .map(|l| l.expect("all three asked for"))
    }

    /// The losses `which` asks for (`[contrastive, mse, sensitivity]`); the others build no
    /// graph, so a contrastive step does not pay for the decoder's losses.
    pub fn losses_of(
        &self,
        slices: Tensor<B, 4>,
        pseudo_masks: Tensor<B, 4>,
        labels: &[u8],
        cfg: &LossConfig,
        which: [bool; 3],
    ) -> [Option<Tensor<B, 1>>; 3] {
        let out = self.net.forward(slices);
        let c = which[0].then(|| {
            let pooled: Tensor<B, 2> = out.bottleneck.mean_dim(3).mean_dim(2).flatten(1, 3);
            let z = self.projection.forward(pooled);
            contrastive(z, labels, cfg.temperature, cfg.positive_weight)
        });
        let (m, s) = if B::LOSS_KERNEL && (which[1] || which[2]) {
            // One fused pass computes both; an unused one costs nothing more.
            let (m, s) = mse_and_sensitivity(out.logits, pseudo_masks, cfg.beta);
            (which[1].then_some(m), which[2].then_some(s))
        } else {
            (
                which[1].then(|| mse(out.logits.clone(), pseudo_masks.clone())),
                which[2].then(|| sensitivity_bce(out.logits, pseudo_masks, cfg.beta)),
            )
        };
        [c, m, s]
    }
}

/// What [`bench_training`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainingBench {
    /// Batch size.
    pub batch: usize,
    /// Trainable parameters of the network (projection head excluded).
    pub params: usize,
    /// The first step, compilation and autotuning included (seconds).
    pub first_step_s: f64,
    /// Every later step (milliseconds).
    pub steps_ms: Vec<f64>,
    /// Median of `steps_ms`.
    pub median_step_ms: f64,
    /// Median inference time of a batch, after warm-up (milliseconds).
    pub median_inference_ms: f64,
    /// Loss of the first and the last step (should fall).
    pub loss_first: f32,
    /// Loss of the last step.
    pub loss_last: f32,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn wait<B: crate::ModelBackend>(device: &B::Device) {
    // A failure to sync shows up again at the next read; timing only needs the barrier.
    let _ = B::sync(device);
}

/// Which Adam a training bench steps with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchOptimizer {
    /// [`crate::FusedAdam`]: one kernel per parameter tensor on cubecl backends (what training
    /// uses).
    Fused,
    /// burn's `Adam`: thirteen tensor operations per parameter tensor.
    Burn,
}

/// Trains `steps` Adam steps on random slices (fixed seed) and times them; every step ends with
/// a device sync so that the time is the device's, not the launch queue's.
pub fn bench_training<B: AutodiffBackend + crate::ModelBackend>(
    config: &TransUNetConfig,
    device: &B::Device,
    batch: usize,
    steps: usize,
    optimizer: BenchOptimizer,
    mut progress: impl FnMut(&str),
) -> TrainingBench
where
    B::InnerBackend: crate::ModelBackend,
{
    B::seed(device, 7);
    let mut learner = SegmentationLearner::<B>::new(config, device);
    let params = crate::transunet::trainable_params(&learner.net);
    let mut fused = crate::FusedAdam::init();
    let mut burn = burn::optim::AdamConfig::new().init();
    let dim = config.img_dim;
    let slices = Tensor::<B, 4>::random(
        [batch, config.in_channels, dim, dim],
        Distribution::Uniform(0.0, 1.0),
        device,
    );
    let masks = Tensor::<B, 4>::random(
        [batch, 1, dim, dim],
        Distribution::Uniform(0.0, 1.0),
        device,
    )
    .greater_elem(0.9)
    .float();
    let labels: Vec<u8> = (0..batch).map(|i| (i % 2) as u8).collect();
    let losses = LossConfig::default();

    let mut step = |learner: SegmentationLearner<B>| {
        let loss = learner.loss(slices.clone(), masks.clone(), &labels, &losses);
        let grads = GradientsParams::from_grads(loss.backward(), &learner);
        let learner = match optimizer {
            BenchOptimizer::Fused => fused.step(5e-5, learner, grads),
            BenchOptimizer::Burn => burn.step(5e-5, learner, grads),
        };
        let value: f32 = loss.into_scalar().elem();
        wait::<B>(device);
        (learner, value)
    };

    let t0 = Instant::now();
    let (l, loss_first) = step(learner);
    learner = l;
    let first_step_s = t0.elapsed().as_secs_f64();
    progress(&format!("first step: {first_step_s:.2} s"));
    let mut steps_ms = Vec::with_capacity(steps);
    let mut loss_last = loss_first;
    for _ in 0..steps {
        let t = Instant::now();
        let (l, v) = step(learner);
        learner = l;
        loss_last = v;
        steps_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median_step_ms = median(&mut steps_ms.clone());
    progress(&format!("median step: {median_step_ms:.2} ms"));

    let net = learner.net.valid();
    let x = slices.inner();
    let mut infer_ms = Vec::new();
    for i in 0..(steps.clamp(3, 20) + 1) {
        let t = Instant::now();
        let out = net.forward(x.clone());
        let _ = out.logits.sum().into_data();
        let dt = t.elapsed();
        if i > 0 {
            infer_ms.push(dt.as_secs_f64() * 1e3);
        }
    }
    let median_inference_ms = median(&mut infer_ms);
    TrainingBench {
        batch,
        params,
        first_step_s,
        steps_ms,
        median_step_ms,
        median_inference_ms,
        loss_first,
        loss_last,
    }
}
