//! Training the TransUNet on pseudo-masks (docs/method.md, stage 7): a contrastive phase, then
//! the joint phase, on batches that always hold both slice classes, with the learning rate
//! reduced when the validation loss stops improving; checkpointed so a killed training resumes
//! exactly where it was.
//!
//! Every random draw of optimiser step *k* (which slices, dropout masks) comes from a generator
//! seeded by (seed, *k*), and weights start from the trainer's own seeded initialiser, so a run is
//! a function of its recipe and data, and a resumed one continues the uninterrupted sequence.

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, CheckpointReader, CheckpointWriter};
use crate::dropout::with_seeded_dropout;
use crate::seeded_init::SeededInit;
use crate::train::{LossConfig, SegmentationLearner};
use crate::transunet::{TransUNet, TransUNetConfig};
use crate::{FusedAdam, ModelBackend, mse, sensitivity_bce};

/// PyTorch's `ReduceLROnPlateau` in `min` mode with a relative threshold: after `patience`
/// epochs without a validation loss below `best · (1 − threshold)`, the rate is multiplied by
/// `factor`, never below `min_lr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// Multiplies the rate (0.1).
    pub factor: f64,
    /// Epochs without improvement tolerated (10).
    pub patience: usize,
    /// Relative improvement that counts (1e-4).
    pub threshold: f64,
    /// The lowest rate (0).
    pub min_lr: f64,
}

impl Default for Plateau {
    fn default() -> Self {
        Self {
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            min_lr: 0.0,
        }
    }
}

/// What a segmenter training is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegRecipe {
    /// The network.
    pub config: TransUNetConfig,
    /// The losses' constants.
    pub losses: LossConfig,
    /// Adam's initial learning rate (5e-5).
    pub lr: f64,
    /// Epochs of the contrastive phase (each: 2 contrastive steps, 1 MSE step).
    pub contrastive_epochs: usize,
    /// Epochs of the joint phase (each: `steps_per_epoch` steps of the total loss).
    pub joint_epochs: usize,
    /// Optimiser steps per joint epoch.
    pub steps_per_epoch: usize,
    /// "High" slices per batch (4).
    pub high: usize,
    /// "Low" slices per batch (4).
    pub low: usize,
    /// The learning-rate schedule.
    pub plateau: Plateau,
    /// Seed of every random draw.
    pub seed: u64,
}

/// One slice: `size × size` values row-major, its pseudo-mask in [0, 1] and its class.
#[derive(Clone, Debug)]
pub struct SegSlice {
    /// The CT slice in [0, 1].
    pub image: Vec<f32>,
    /// Its pseudo-mask (the training target), in [0, 1].
    pub target: Vec<f32>,
    /// Above the slice scores' third quartile ("high") or between the quartiles ("low").
    pub high: bool,
}

/// Training and validation slices (from different volumes) of one size.
#[derive(Clone, Debug)]
pub struct SegData {
    /// Slices are `size × size`.
    pub size: usize,
    /// Slices trained on.
    pub train: Vec<SegSlice>,
    /// Slices that only judge (the plateau schedule's loss).
    pub validation: Vec<SegSlice>,
}

/// Which phase an epoch belonged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Contrastive steps and an MSE step.
    Contrastive,
    /// The total loss.
    Joint,
}

impl Phase {
    /// Its name in histories and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Contrastive => "contrastive",
            Self::Joint => "joint",
        }
    }
}

/// One epoch of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegEpoch {
    /// 1-based over both phases.
    pub epoch: usize,
    /// Its phase.
    pub phase: Phase,
    /// Mean training losses of the epoch's steps that computed them (none in a phase that does
    /// not use the loss).
    pub contrastive: Option<f64>,
    /// See `contrastive`.
    pub mse: Option<f64>,
    /// See `contrastive`.
    pub sensitivity: Option<f64>,
    /// MSE + sensitivity on the validation slices, without dropout (NaN when the training
    /// diverged; `null` in JSON, which has no NaN).
    #[serde(with = "nan_as_null")]
    pub validation: f64,
    /// The learning rate the epoch trained with.
    pub lr: f64,
    /// The rate the schedule set for the next epoch, when it changed.
    pub lr_changed_to: Option<f64>,
}

/// JSON has no NaN: write it as `null` and read `null` back as NaN, so a diverged epoch's
/// record survives a checkpoint.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// What a checkpoint's state holds besides the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SegState {
    step: usize,
    lr: f64,
    /// The lowest finite validation loss so far (none before the first such epoch).
    best: Option<f64>,
    /// The epoch that reached `best` (0: none yet).
    best_epoch: usize,
    bad_epochs: usize,
    history: Vec<SegEpoch>,
}

/// A training in progress.
pub struct SegTrainer<B: AutodiffBackend + ModelBackend>
where
    B::InnerBackend: ModelBackend,
{
    /// The network and its projection head.
    pub learner: SegmentationLearner<B>,
    /// The network of the epoch with the lowest validation loss, without autodiff.
    best_net: TransUNet<B::InnerBackend>,
    optim: OptimizerAdaptor<FusedAdam, SegmentationLearner<B>, B>,
    state: SegState,
    recipe: SegRecipe,
    device: B::Device,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn scalar<B: burn::tensor::backend::Backend>(t: &Tensor<B, 1>) -> f64 {
    use burn::tensor::ElementConversion;
    t.clone().into_scalar().elem::<f64>()
}

impl<B: AutodiffBackend + ModelBackend> SegTrainer<B>
where
    B::InnerBackend: ModelBackend,
{
    /// A fresh network (seeded weights) and optimiser.
    pub fn new(recipe: SegRecipe, device: B::Device) -> Self {
        let learner = SegmentationLearner::new(&recipe.config, &device)
            .map(&mut SeededInit::new(recipe.seed));
        Self {
            best_net: learner.net.valid(),
            learner,
            optim: FusedAdam::init(),
            state: SegState {
                step: 0,
                lr: recipe.lr,
                best: None,
                best_epoch: 0,
                bad_epochs: 0,
                history: Vec::new(),
            },
            recipe,
            device,
        }
    }

    /// Epochs done.
    pub fn epoch(&self) -> usize {
        self.state.history.len()
    }

    /// Epochs in all.
    pub fn epochs(&self) -> usize {
        self.recipe.contrastive_epochs + self.recipe.joint_epochs
    }

    /// Every epoch done.
    pub fn history(&self) -> &[SegEpoch] {
        &self.state.history
    }

    /// The epoch with the lowest validation loss (0 before any finite one).
    pub fn best_epoch(&self) -> usize {
        self.state.best_epoch
    }

    /// The network of [`Self::best_epoch`] (the initial weights before it).
    pub fn best_net(&self) -> &TransUNet<B::InnerBackend> {
        &self.best_net
    }

    /// The generator of optimiser step `k` (0-based).
    fn rng(&self, k: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.recipe.seed);
        rng.set_stream(k as u64 + 1);
        rng
    }

    /// `n` slices as `[n, 1, s, s]` images and targets.
    fn tensors(&self, slices: &[&SegSlice], size: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let n = slices.len();
        let image: Vec<f32> = slices
            .iter()
            .flat_map(|s| s.image.iter().copied())
            .collect();
        let target: Vec<f32> = slices
            .iter()
            .flat_map(|s| s.target.iter().copied())
            .collect();
        let t = |v| Tensor::from_data(TensorData::new(v, [n, 1, size, size]), &self.device);
        (t(image), t(target))
    }

    /// One optimiser step on a fresh batch; `parts` picks the losses summed (contrastive, MSE,
    /// sensitivity). Returns the values of the parts computed.
    fn step(&mut self, data: &SegData, parts: [bool; 3]) -> [Option<f64>; 3] {
        let k = self.state.step;
        let mut rng = self.rng(k);
        let (high, low): (Vec<&SegSlice>, Vec<&SegSlice>) = data.train.iter().partition(|s| s.high);
        let mut batch = Vec::with_capacity(self.recipe.high + self.recipe.low);
        let mut labels = Vec::with_capacity(batch.capacity());
        for (set, count, label) in [(&high, self.recipe.high, 1u8), (&low, self.recipe.low, 0u8)] {
            for _ in 0..count {
                batch.push(set[rng.random_range(0..set.len())]);
                labels.push(label);
            }
        }
        let (x, y) = self.tensors(&batch, data.size);
        let cfg = self.recipe.losses.clone();
        let ((total, values), _) = with_seeded_dropout(rng, || {
            let losses = self.learner.losses_of(x, y, &labels, &cfg, parts);
            let values = losses.each_ref().map(|l| l.as_ref().map(scalar));
            let total = losses
                .into_iter()
                .flatten()
                .reduce(|a, b| a + b)
                .expect("at least one loss");
            (total, values)
        });
        let grads = GradientsParams::from_grads(total.backward(), &self.learner);
        self.learner = self.optim.step(self.state.lr, self.learner.clone(), grads);
        self.state.step += 1;
        values
    }

    /// MSE + sensitivity over the validation slices, in batches, without dropout.
    pub fn validation_loss(&self, data: &SegData) -> f64 {
        let net = self.learner.net.valid();
        let chunk = (self.recipe.high + self.recipe.low).max(1);
        let (mut sum, mut n) = (0.0, 0usize);
        for slices in data.validation.chunks(chunk) {
            let refs: Vec<&SegSlice> = slices.iter().collect();
            let (x, y) = self.tensors(&refs, data.size);
            let (x, y) = (x.inner(), y.inner());
            let logits = net.forward(x).logits;
            let loss = mse(logits.clone(), y.clone())
                + sensitivity_bce(logits, y, self.recipe.losses.beta);
            sum += scalar(&loss) * slices.len() as f64;
            n += slices.len();
        }
        if n == 0 { f64::NAN } else { sum / n as f64 }
    }

    /// Trains the next epoch and applies the schedule; returns its record.
    pub fn train_epoch(&mut self, data: &SegData) -> SegEpoch {
        let epoch = self.epoch() + 1;
        let phase = if epoch <= self.recipe.contrastive_epochs {
            Phase::Contrastive
        } else {
            Phase::Joint
        };
        let lr = self.state.lr;
        let mut seen: [Vec<f64>; 3] = Default::default();
        let mut record = |v: [Option<f64>; 3]| {
            for (s, x) in seen.iter_mut().zip(v) {
                s.extend(x);
            }
        };
        match phase {
            Phase::Contrastive => {
                for _ in 0..2 {
                    record(self.step(data, [true, false, false]));
                }
                record(self.step(data, [false, true, false]));
            }
            Phase::Joint => {
                for _ in 0..self.recipe.steps_per_epoch.max(1) {
                    record(self.step(data, [true, true, true]));
                }
            }
        }
        let validation = self.validation_loss(data);
        let mut lr_changed_to = None;
        // The validation loss is the joint phase's MSE + sensitivity, which contrastive epochs
        // barely train: the schedule and the best weights follow it from the joint phase on
        // (from the start when there is no joint phase).
        if phase == Phase::Joint || self.recipe.joint_epochs == 0 {
            lr_changed_to = self.schedule(epoch, validation);
        }
        let e = SegEpoch {
            epoch,
            phase,
            contrastive: mean(&seen[0]),
            mse: mean(&seen[1]),
            sensitivity: mean(&seen[2]),
            validation,
            lr,
            lr_changed_to,
        };
        self.state.history.push(e.clone());
        e
    }

    /// ReduceLROnPlateau after `epoch` scored `validation`; keeps the best network. Returns the
    /// new rate when it changed.
    fn schedule(&mut self, epoch: usize, validation: f64) -> Option<f64> {
        let p = &self.recipe.plateau;
        // A NaN loss never improves, so `best` stays a number the state can write as JSON.
        let improved = validation.is_finite()
            && match self.state.best {
                None => true,
                Some(best) => validation < best * (1.0 - p.threshold),
            };
        if improved {
            self.state.best = Some(validation);
            self.state.best_epoch = epoch;
            self.best_net = self.learner.net.valid();
            self.state.bad_epochs = 0;
            return None;
        }
        self.state.bad_epochs += 1;
        if self.state.bad_epochs <= p.patience {
            return None;
        }
        self.state.bad_epochs = 0;
        let next = (self.state.lr * p.factor).max(p.min_lr);
        (next < self.state.lr).then(|| {
            self.state.lr = next;
            next
        })
    }

    /// Writes the weights, the optimiser, the schedule and the history to `dir` atomically.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), CheckpointError> {
        let w = CheckpointWriter::begin(dir)?;
        w.record("learner", self.learner.clone().into_record())?;
        w.record("adam", self.optim.to_record())?;
        w.record("best", self.best_net.clone().into_record())?;
        w.commit(&self.state)
    }

    /// Loads the last checkpoint at `dir`; `Ok(false)` when there is none.
    pub fn resume(&mut self, dir: &Path) -> Result<bool, CheckpointError> {
        let Some(r) = CheckpointReader::latest(dir) else {
            return Ok(false);
        };
        let learner = r.record("learner", &self.device)?;
        let adam = r.record("adam", &self.device)?;
        let best = r.record("best", &self.device)?;
        self.state = r.state()?;
        self.learner = self.learner.clone().load_record(learner);
        self.best_net = self.best_net.clone().load_record(best);
        self.optim = std::mem::replace(&mut self.optim, FusedAdam::init()).load_record(adam);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray>;

    pub(super) fn recipe() -> SegRecipe {
        SegRecipe {
            config: TransUNetConfig::new()
                .with_img_dim(32)
                .with_out_channels(16)
                .with_mlp_dim(32)
                .with_block_num(1),
            losses: LossConfig::default(),
            lr: 1e-3,
            contrastive_epochs: 1,
            joint_epochs: 3,
            steps_per_epoch: 2,
            high: 2,
            low: 2,
            plateau: Plateau {
                patience: 0,
                ..Plateau::default()
            },
            seed: 5,
        }
    }

    /// A bright square on "high" slices (the target marks it), dim noise on "low" ones.
    pub(super) fn data() -> SegData {
        let size = 32;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let slice = |high: bool, rng: &mut ChaCha8Rng| {
            let mut image: Vec<f32> = (0..size * size)
                .map(|_| rng.random_range(0.0..0.2))
                .collect();
            let mut target = vec![0f32; size * size];
            if high {
                let (r, c) = (rng.random_range(4..20), rng.random_range(4..20));
                for y in r..r + 8 {
                    for x in c..c + 8 {
                        image[y * size + x] = 0.8;
                        target[y * size + x] = 1.0;
                    }
                }
            }
            SegSlice {
                image,
                target,
                high,
            }
        };
        SegData {
            size,
            train: (0..8).map(|i| slice(i % 2 == 0, &mut rng)).collect(),
            validation: (0..4).map(|i| slice(i % 2 == 0, &mut rng)).collect(),
        }
    }

    #[test]
    fn a_resumed_training_is_bit_for_bit_the_uninterrupted_one() {
        let data = data();
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        let mut straight = SegTrainer::<B>::new(recipe(), Default::default());
        for _ in 0..4 {
            straight.train_epoch(&data);
        }
        let mut first = SegTrainer::<B>::new(recipe(), Default::default());
        first.train_epoch(&data);
        first.train_epoch(&data);
        first.save_checkpoint(&ckpt).unwrap();
        first.train_epoch(&data); // lost with the kill
        let mut resumed = SegTrainer::<B>::new(recipe(), Default::default());
        assert!(resumed.resume(&ckpt).unwrap());
        assert_eq!(resumed.epoch(), 2);
        resumed.train_epoch(&data);
        resumed.train_epoch(&data);
        assert_eq!(resumed.history(), straight.history());
        let h = straight.history();
        // NaN would also make the histories differ; finite says the comparison above meant it.
        assert!(h.iter().all(|e| e.validation.is_finite()), "{h:?}");
        assert_eq!(h[0].phase, Phase::Contrastive);
        assert!(h[0].sensitivity.is_none() && h[0].contrastive.is_some());
        assert_eq!(h[3].phase, Phase::Joint);
        // Patience 0: any joint epoch that does not improve cuts the rate, and the history says
        // so; the contrastive epoch does not take part.
        assert_eq!(h[0].lr_changed_to, None);
        assert!(straight.best_epoch() >= 2);
        for w in h.windows(2) {
            let expected = w[0].lr_changed_to.unwrap_or(w[0].lr);
            assert_eq!(w[1].lr, expected);
        }
    }

    #[test]
    fn the_plateau_schedule_cuts_the_rate_as_pytorch_does() {
        let mut r = recipe();
        r.plateau = Plateau {
            factor: 0.1,
            patience: 1,
            threshold: 1e-4,
            min_lr: 2e-5,
        };
        let mut t = SegTrainer::<B>::new(r, Default::default());
        let cuts: Vec<Option<f64>> = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.79995, f64::NAN, 0.9, 0.9]
            .into_iter()
            .enumerate()
            .map(|(i, v)| t.schedule(i + 1, v))
            .collect();
        // Epoch 4 is the second without improvement (patience 1); 0.79995 improves on 0.8 by
        // less than the relative threshold; NaN never improves; the floor stops the last cut.
        let expected = [
            None,
            None,
            None,
            Some(1e-4),
            None,
            None,
            None,
            Some(2e-5),
            None,
            None,
        ];
        assert_eq!(cuts.len(), expected.len());
        for (c, e) in cuts.iter().zip(expected) {
            match (c, e) {
                (Some(c), Some(e)) => assert!((c - e).abs() < 1e-12, "{cuts:?}"),
                (None, None) => {}
                _ => panic!("{cuts:?}"),
            }
        }
        assert_eq!(t.best_epoch(), 6);
        assert_eq!(t.state.lr, 2e-5);
    }
}
