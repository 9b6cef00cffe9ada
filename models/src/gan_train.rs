//! Training the 3D GAN (Shabani et al. 2022), with checkpoints that make a killed training
//! resume exactly where it stopped.
//!
//! One iteration, as the original code does it:
//! 1. **reconstruction**: the generator restores healthy volumes from copies with Perlin noise
//!    painted on a quarter of their slices inside the lungs (MSE to the clean volume);
//! 2. **discriminator**: real healthy volumes against the generator's twins of infected ones
//!    (MSE on the 2-way softmax, targets "healthy" = `[1, 0]` and "generated" = `[0, 1]`);
//! 3. **adversarial**: the generator's twins of infected volumes, judged by the discriminator,
//!    pushed toward "healthy" (only the generator is updated).
//!
//! Every random draw of iteration `i` (batch, noise slices, Perlin tables, latent noise,
//! dropout) comes from a generator seeded by `(seed, i)`, so a run resumed from a checkpoint
//! draws what the uninterrupted run drew: on the CPU backend the result is the same bit for bit.

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::checkpoint::CheckpointError;
use crate::checkpoint::{CheckpointReader, CheckpointWriter};
use crate::patch_adversary::{cell_weights, weighted_accuracy, weighted_least_squares};
use crate::seeded_init::{SeededInit, SequentialIds};
use crate::{
    Adversary, Discriminator, DiscriminatorConfig, FusedAdam, Generator, GeneratorConfig,
    ModelBackend, NoiseAugment, NoisePlan, add_noise, plan_noise,
};

/// What a GAN training is: models, optimiser, batch, length, seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GanRecipe {
    /// Filter counts × this (1 = the reference model).
    pub width: f64,
    /// Adam learning rate of the generator (5e-5).
    pub lr_generator: f64,
    /// Adam learning rate of the discriminator (1e-3).
    pub lr_discriminator: f64,
    /// Volumes of each class per iteration.
    pub batch: usize,
    /// Iterations in all.
    pub iterations: usize,
    /// Seed of every random draw.
    pub seed: u64,
    /// The augmentation.
    pub noise: NoiseAugment,
    /// Weight of the minimal-change term added to the adversarial step: the mean absolute
    /// difference between each infected volume and its twin inside the lungs. A twin that
    /// removes lesions changes a few voxels; one that fools the adversary by dimming the whole
    /// lung changes all of them. 0 is the original method (no such term).
    #[serde(default)]
    pub change_weight: f64,
    /// The generator's output activation is LeakyReLU instead of the original's ReLU
    /// ([`GeneratorConfig::leaky_output`]).
    #[serde(default)]
    pub leaky_output: bool,
    /// One verdict per volume (the original) or a lung-weighted one per cell
    /// ([`Adversary::Patch`], least squares on logits).
    #[serde(default)]
    pub adversary: Adversary,
    /// The discriminator's activation below zero: 0 is the original's ReLU, a positive slope a
    /// LeakyReLU whose units cannot die.
    #[serde(default)]
    pub discriminator_slope: f64,
    /// How the convolutions compute.
    pub conv: crate::ConvImpl,
}

/// One volume on the model's grid, `[D, H, W]` row-major, with its lung mask.
#[derive(Clone, Debug)]
pub struct GanSample {
    /// Intensities in [0, 1] (the HU window).
    pub ct: Vec<f32>,
    /// 1 inside the lungs.
    pub lung: Vec<f32>,
}

/// The training set: healthy and infected volumes of one shape.
#[derive(Clone, Debug)]
pub struct GanData {
    /// `[D, H, W]`, each a multiple of 16.
    pub shape: [usize; 3],
    /// Volumes without lesions (CT-0).
    pub healthy: Vec<GanSample>,
    /// Volumes with lesions (CT-1 … CT-4).
    pub infected: Vec<GanSample>,
}

/// The three losses of one iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GanLosses {
    /// 1-based.
    pub iteration: usize,
    /// Step 1, the generator's MSE to clean healthy volumes.
    pub reconstruction: f64,
    /// Step 2, the discriminator's MSE.
    pub discriminator: f64,
    /// Step 3, the generator's adversarial MSE.
    pub adversarial: f64,
    /// Step 2: the share of real healthy volumes the discriminator called healthy
    /// (probability above 0.5, its dropout as trained).
    pub accuracy_real: f64,
    /// Step 2: the share of generated twins it called generated.
    pub accuracy_generated: f64,
    /// Step 3: the mean absolute change from each infected volume to its twin inside the
    /// lungs (window units), whether or not the recipe's `change_weight` trains on it.
    #[serde(default)]
    pub change: f64,
    /// Step 2: the share of the discriminator's last feature map (after its ReLUs and pools)
    /// that is above zero on the real healthy volumes. Near 0 the adversary is dead: its
    /// verdict is its bias alone, whatever it is shown.
    #[serde(default)]
    pub discriminator_live: f64,
}

/// A training in progress: both models, both optimisers, the iteration reached and the history.
pub struct GanTrainer<B: AutodiffBackend>
where
    B::InnerBackend: ModelBackend,
{
    /// The generator.
    pub generator: Generator<B>,
    /// The discriminator.
    pub discriminator: Discriminator<B>,
    opt_g: OptimizerAdaptor<FusedAdam, Generator<B>, B>,
    opt_d: OptimizerAdaptor<FusedAdam, Discriminator<B>, B>,
    /// Iterations done.
    pub iteration: usize,
    /// Losses of every iteration done.
    pub history: Vec<GanLosses>,
    recipe: GanRecipe,
    device: B::Device,
}

/// What a checkpoint's `state.json` holds besides the weights.
#[derive(Serialize, Deserialize)]
struct CheckpointState {
    iteration: usize,
    history: Vec<GanLosses>,
}

/// Generator configuration of a recipe.
pub fn generator_config(recipe: &GanRecipe) -> GeneratorConfig {
    GeneratorConfig::with_width(recipe.width)
        .with_conv(recipe.conv)
        .with_leaky_output(recipe.leaky_output)
}

impl<B: AutodiffBackend + ModelBackend> GanTrainer<B>
where
    B::InnerBackend: ModelBackend,
{
    /// Fresh models (seeded) and optimisers.
    pub fn new(recipe: GanRecipe, device: B::Device) -> Self {
        // Weights from our own generator: burn's is one per process, shared with every other
        // model (and test) that draws from it at the same time.
        let mut init = SeededInit::new(recipe.seed);
        let generator = generator_config(&recipe).init(&device).map(&mut init);
        let discriminator = DiscriminatorConfig::new()
            .with_conv(recipe.conv)
            .with_adversary(recipe.adversary)
            .with_slope(recipe.discriminator_slope)
            .init(&device)
            .map(&mut init);
        Self {
            generator,
            discriminator,
            opt_g: FusedAdam::init(),
            opt_d: FusedAdam::init(),
            iteration: 0,
            history: Vec::new(),
            recipe,
            device,
        }
    }

    /// The random generator of iteration `i` (0-based).
    fn rng(&self, i: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.recipe.seed);
        rng.set_stream(i as u64 + 1);
        rng
    }

    /// One iteration (the three steps of the module documentation).
    pub fn step(&mut self, data: &GanData) -> GanLosses {
        let i = self.iteration;
        let mut rng = self.rng(i);
        let n = self.recipe.batch;
        let pick = |rng: &mut ChaCha8Rng, set: &[GanSample]| -> Vec<GanSample> {
            (0..n)
                .map(|_| set[rng.random_range(0..set.len())].clone())
                .collect()
        };
        let healthy = pick(&mut rng, &data.healthy);
        let infected = pick(&mut rng, &data.infected);
        let [d, _, w] = data.shape;
        let plans: Vec<NoisePlan> = healthy
            .iter()
            .map(|_| plan_noise(d, w, &self.recipe.noise, &mut rng))
            .collect();
        let healthy_t = self.batch(healthy.iter().map(|s| s.ct.as_slice()), data.shape);
        let lung_t = self.batch(healthy.iter().map(|s| s.lung.as_slice()), data.shape);
        let noisy_t = add_noise(
            healthy_t.clone(),
            lung_t,
            &plans,
            self.recipe.noise.amplitude,
        );
        let infected_t = self.batch(infected.iter().map(|s| s.ct.as_slice()), data.shape);
        let infected_lung = self.batch(infected.iter().map(|s| s.lung.as_slice()), data.shape);

        // 1. Reconstruction.
        let z = self.latent(&mut rng, noisy_t.dims());
        let restored = self.generator.forward(noisy_t, z);
        let loss_r = mse(restored, healthy_t.clone());
        let reconstruction = scalar(&loss_r);
        let grads = GradientsParams::from_grads(loss_r.backward(), &self.generator);
        self.generator = self
            .opt_g
            .step(self.recipe.lr_generator, self.generator.clone(), grads);

        // 2. Discriminator: real healthy against twins of infected volumes.
        let z = self.latent(&mut rng, infected_t.dims());
        let twins = self.generator.forward(infected_t.clone(), z).detach();
        let (m1, m2) = (self.dropout(&mut rng, n), self.dropout(&mut rng, n));
        let (on_real, discriminator_live) = self.discriminator.forward_masked_live(healthy_t, m1);
        let on_twins = self.discriminator.forward_masked(twins, m2);
        let (loss_real, accuracy_real) = self.verdict(on_real, &healthy, data.shape, true);
        let (loss_twins, accuracy_generated) = self.verdict(on_twins, &infected, data.shape, false);
        let loss_d = (loss_real + loss_twins) / 2.0;
        let discriminator = scalar(&loss_d);
        let grads = GradientsParams::from_grads(loss_d.backward(), &self.discriminator);
        self.discriminator = self.opt_d.step(
            self.recipe.lr_discriminator,
            self.discriminator.clone(),
            grads,
        );

        // 3. Adversarial: twins toward "healthy"; only the generator learns, so the judge is
        // a frozen copy (its weights' gradients would be computed and thrown away).
        let z = self.latent(&mut rng, infected_t.dims());
        let twins = self.generator.forward(infected_t.clone(), z);
        let change_t = mean_change_in_lung(twins.clone(), infected_t, infected_lung);
        let masks = self.dropout(&mut rng, n);
        let judge = self.discriminator.clone().no_grad();
        // The loss alone: its accuracy would cost a host read per iteration for nothing.
        let loss_a = self.verdict_loss(
            judge.forward_masked(twins, masks),
            &infected,
            data.shape,
            true,
        );
        let (adversarial, change) = (scalar(&loss_a), scalar(&change_t));
        // Without the term, the original's graph exactly: its results stay bit for bit.
        let weight = self.recipe.change_weight;
        let loss_a = if weight > 0.0 {
            loss_a + change_t * weight
        } else {
            loss_a
        };
        let grads = GradientsParams::from_grads(loss_a.backward(), &self.generator);
        self.generator = self
            .opt_g
            .step(self.recipe.lr_generator, self.generator.clone(), grads);

        self.iteration += 1;
        let losses = GanLosses {
            iteration: self.iteration,
            reconstruction,
            discriminator,
            adversarial,
            accuracy_real,
            accuracy_generated,
            change,
            discriminator_live,
        };
        self.history.push(losses);
        losses
    }

    fn batch<'a>(
        &self,
        volumes: impl Iterator<Item = &'a [f32]>,
        [d, h, w]: [usize; 3],
    ) -> Tensor<B, 5> {
        let mut flat = Vec::new();
        let mut n = 0;
        for v in volumes {
            flat.extend_from_slice(v);
            n += 1;
        }
        Tensor::from_data(TensorData::new(flat, [n, 1, d, h, w]), &self.device)
    }

    /// The adversary's loss on the scores of `volumes` when they should be judged real healthy
    /// (`healthy`) or generated, and the share it judged so.
    fn verdict(
        &self,
        scores: Tensor<B, 2>,
        volumes: &[GanSample],
        shape: [usize; 3],
        healthy: bool,
    ) -> (Tensor<B, 1>, f64) {
        let accuracy = match self.recipe.adversary {
            Adversary::Global => share_called(&scores, if healthy { 0 } else { 1 }),
            Adversary::Patch => weighted_accuracy(&scores, &self.cells(volumes, shape), healthy),
        };
        (self.verdict_loss(scores, volumes, shape, healthy), accuracy)
    }

    /// The original's MSE between class probabilities and one-hot targets, or a patch
    /// adversary's lung-weighted least squares.
    fn verdict_loss(
        &self,
        scores: Tensor<B, 2>,
        volumes: &[GanSample],
        shape: [usize; 3],
        healthy: bool,
    ) -> Tensor<B, 1> {
        match self.recipe.adversary {
            Adversary::Global => {
                let class = if healthy { [1.0, 0.0] } else { [0.0, 1.0] };
                mse(scores, self.targets(volumes.len(), class))
            }
            Adversary::Patch => {
                let target = if healthy { 1.0 } else { 0.0 };
                weighted_least_squares(scores, target, self.cells(volumes, shape))
            }
        }
    }

    /// The lung share each discriminator cell sees, per volume.
    fn cells(&self, volumes: &[GanSample], shape: [usize; 3]) -> Tensor<B, 2> {
        cell_weights::<B>(
            volumes.iter().map(|v| v.lung.as_slice()),
            shape,
            &self.device,
        )
    }

    /// Inverted-dropout masks of the discriminator's dense layers for a batch of `n` (none for
    /// a patch adversary).
    fn dropout(&self, rng: &mut ChaCha8Rng, n: usize) -> Vec<Tensor<B, 2>> {
        let p = self.discriminator.dropout_prob();
        let keep = (1.0 - p) as f32;
        self.discriminator
            .dense_widths()
            .into_iter()
            .map(|w| {
                let m: Vec<f32> = (0..n * w)
                    .map(|_| {
                        if rng.random::<f64>() < p {
                            0.0
                        } else {
                            1.0 / keep
                        }
                    })
                    .collect();
                Tensor::from_data(TensorData::new(m, [n, w]), &self.device)
            })
            .collect()
    }

    fn targets(&self, n: usize, class: [f32; 2]) -> Tensor<B, 2> {
        let flat: Vec<f32> = (0..n).flat_map(|_| class).collect();
        Tensor::from_data(TensorData::new(flat, [n, 2]), &self.device)
    }

    fn latent(&self, rng: &mut ChaCha8Rng, volume: [usize; 5]) -> Tensor<B, 5> {
        let shape = self.generator.noise_shape(volume);
        let len = shape.iter().product();
        let z: Vec<f32> = (0..len).map(|_| rng.random_range(-0.5..0.5)).collect();
        Tensor::from_data(TensorData::new(z, shape), &self.device)
    }

    /// Writes a checkpoint to `dir` atomically: a new folder beside it, renamed over the old
    /// one, so a kill at any moment leaves one whole checkpoint.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), CheckpointError> {
        let w = CheckpointWriter::begin(dir)?;
        w.record("generator", self.generator.clone().into_record())?;
        w.record("discriminator", self.discriminator.clone().into_record())?;
        w.record("generator_adam", self.opt_g.to_record())?;
        w.record("discriminator_adam", self.opt_d.to_record())?;
        w.commit(&CheckpointState {
            iteration: self.iteration,
            history: self.history.clone(),
        })
    }

    /// Loads the checkpoint in `dir` (or the previous one, when a kill interrupted the swap);
    /// `Ok(false)` when there is none.
    pub fn resume(&mut self, dir: &Path) -> Result<bool, CheckpointError> {
        let Some(r) = CheckpointReader::latest(dir) else {
            return Ok(false);
        };
        let g = r.record("generator", &self.device)?;
        let d = r.record("discriminator", &self.device)?;
        let og = r.record("generator_adam", &self.device)?;
        let od = r.record("discriminator_adam", &self.device)?;
        let state: CheckpointState = r.state()?;
        self.generator = self.generator.clone().load_record(g);
        self.discriminator = self.discriminator.clone().load_record(d);
        self.opt_g = std::mem::replace(&mut self.opt_g, FusedAdam::init()).load_record(og);
        self.opt_d = std::mem::replace(&mut self.opt_d, FusedAdam::init()).load_record(od);
        self.iteration = state.iteration;
        self.history = state.history;
        Ok(true)
    }

    /// The generator for inference (no autodiff).
    pub fn inference_generator(&self) -> Generator<B::InnerBackend> {
        self.generator.valid()
    }
}

/// Saves trained generator weights.
pub fn save_generator<B: Backend>(g: &Generator<B>, path: &Path) -> Result<(), CheckpointError> {
    BinFileRecorder::<FullPrecisionSettings>::new()
        .record(
            g.clone().map(&mut SequentialIds(0)).into_record(),
            path.to_path_buf(),
        )
        .map_err(|e| CheckpointError::Record(path.to_path_buf(), e.to_string()))
}

/// Loads generator weights saved by [`save_generator`] into a model of `recipe`'s shape.
pub fn load_generator<B: Backend>(
    recipe: &GanRecipe,
    path: &Path,
    device: &B::Device,
) -> Result<Generator<B>, CheckpointError> {
    let record = BinFileRecorder::<FullPrecisionSettings>::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| CheckpointError::Record(path.to_path_buf(), e.to_string()))?;
    Ok(generator_config(recipe)
        .init::<B>(device)
        .load_record(record))
}

/// The healthy twin of each volume: the generator at the latent noise's mean (zero), so the
/// twin is a function of the scan alone. `[D, H, W]` volumes in, the same out.
pub fn heal<B: ModelBackend>(
    generator: &Generator<B>,
    volumes: &[&[f32]],
    shape: [usize; 3],
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let [d, h, w] = shape;
    let n = volumes.len();
    let flat: Vec<f32> = volumes.iter().flat_map(|v| v.iter().copied()).collect();
    let x = Tensor::<B, 5>::from_data(TensorData::new(flat, [n, 1, d, h, w]), device);
    let z = Tensor::zeros(generator.noise_shape([n, 1, d, h, w]), device);
    let y: Vec<f32> = generator
        .forward(x, z)
        .into_data()
        .to_vec()
        .expect("f32 output");
    y.chunks(d * h * w).map(<[f32]>::to_vec).collect()
}

/// Mean squared difference (the plain one: the GAN's outputs are values, not logits).
fn mse<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, 1> {
    (a - b).powi_scalar(2).mean()
}

/// Mean of `|twin − scan|` over the voxels where `lung` is 1 (1 where there are none).
fn mean_change_in_lung<B: Backend>(
    twin: Tensor<B, 5>,
    scan: Tensor<B, 5>,
    lung: Tensor<B, 5>,
) -> Tensor<B, 1> {
    let voxels = lung.clone().sum().clamp_min(1.0);
    ((twin - scan).abs() * lung).sum() / voxels
}

/// The share of rows of the `[N, 2]` class probabilities `p` whose class `class` is above 0.5.
fn share_called<B: Backend>(p: &Tensor<B, 2>, class: usize) -> f64 {
    let [n, _] = p.dims();
    let values: Vec<f32> = p
        .clone()
        .narrow(1, class, 1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 probabilities");
    values.iter().filter(|v| **v > 0.5).count() as f64 / n.max(1) as f64
}

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    use burn::tensor::ElementConversion;
    t.clone().into_scalar().elem::<f64>()
}

#[cfg(test)]
mod tests;
