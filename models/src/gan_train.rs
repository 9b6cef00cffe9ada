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
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use covflow_kernels::perlin::{Fractal, Permutation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::checkpoint::CheckpointError;
use crate::checkpoint::{CheckpointReader, CheckpointWriter};
use crate::{
    Discriminator, DiscriminatorConfig, FusedAdam, Generator, GeneratorConfig, ModelBackend,
};

/// The Perlin-noise augmentation of step 1 (the original's values are the defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseAugment {
    /// Fraction of each volume's slices that get noise (the original: 8 of 32).
    pub slice_fraction: f64,
    /// Lattice spacing range in pixels at 128 pixels across, scaled with the grid (10–30).
    pub scale: [f32; 2],
    /// Octaves (10).
    pub octaves: u32,
    /// Persistence magnitude; its sign is drawn per slice (±0.5).
    pub persistence: f32,
    /// Lacunarity (2).
    pub lacunarity: f32,
    /// Multiplies the noise (about ±0.3 before) before it is added.
    pub amplitude: f32,
}

impl Default for NoiseAugment {
    fn default() -> Self {
        Self {
            slice_fraction: 0.25,
            scale: [10.0, 30.0],
            octaves: 10,
            persistence: 0.5,
            lacunarity: 2.0,
            amplitude: 1.0,
        }
    }
}

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
    GeneratorConfig::with_width(recipe.width).with_conv(recipe.conv)
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
        let real = self.targets(n, [1.0, 0.0]);
        let fake = self.targets(n, [0.0, 1.0]);

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
        let on_real = self.discriminator.forward_masked(healthy_t, m1);
        let on_twins = self.discriminator.forward_masked(twins, m2);
        let accuracy_real = share_called(&on_real, 0);
        let accuracy_generated = share_called(&on_twins, 1);
        let loss_d = (mse(on_real, real.clone()) + mse(on_twins, fake)) / 2.0;
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
        let twins = self.generator.forward(infected_t, z);
        let masks = self.dropout(&mut rng, n);
        let judge = self.discriminator.clone().no_grad();
        let loss_a = mse(judge.forward_masked(twins, masks), real);
        let adversarial = scalar(&loss_a);
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

    /// Inverted-dropout masks of the discriminator's dense layers for a batch of `n`.
    fn dropout(&self, rng: &mut ChaCha8Rng, n: usize) -> [Tensor<B, 2>; 3] {
        let p = self.discriminator.dropout_prob();
        let keep = (1.0 - p) as f32;
        self.discriminator.dense_widths().map(|w| {
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

/// The noise one volume gets: which slices, and the field painted on each.
pub type NoisePlan = Vec<(usize, Permutation, Fractal)>;

/// Draws the noise of one volume: a random `slice_fraction` of its `d` slices, each with its own
/// table, scale and sign of persistence. Scales are pixels at 128 pixels across (`w` rescales).
pub fn plan_noise(d: usize, w: usize, noise: &NoiseAugment, rng: &mut ChaCha8Rng) -> NoisePlan {
    let count = ((d as f64 * noise.slice_fraction).round() as usize).clamp(1, d);
    let slices = rand::seq::index::sample(rng, d, count);
    let across = w as f32 / 128.0;
    slices
        .into_iter()
        .map(|z| {
            let fractal = Fractal {
                scale: rng.random_range(noise.scale[0]..=noise.scale[1]) * across,
                octaves: noise.octaves,
                persistence: if rng.random_bool(0.5) {
                    noise.persistence
                } else {
                    -noise.persistence
                },
                lacunarity: noise.lacunarity,
            };
            (z, Permutation::seeded(rng.random()), fractal)
        })
        .collect()
}

/// `ct` (`[N, 1, D, H, W]` in [0, 1]) with each volume's planned noise, times `amplitude`, added
/// inside `lung` and clamped to [0, 1]. The fields are made on `ct`'s device.
pub fn add_noise<B: ModelBackend>(
    ct: Tensor<B, 5>,
    lung: Tensor<B, 5>,
    plans: &[NoisePlan],
    amplitude: f32,
) -> Tensor<B, 5> {
    let [n, _, d, h, w] = ct.dims();
    let device = ct.device();
    let fields: Vec<(Permutation, Fractal)> = plans
        .iter()
        .flatten()
        .map(|(_, p, f)| (p.clone(), *f))
        .collect();
    let noise = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(B::fractal_slices(
        &fields, h, w, &device,
    )));
    // Slice z of volume v takes field index[v·D + z]; unplanned slices the zero field at the end.
    let mut index = vec![fields.len() as i64; n * d];
    let planned = plans
        .iter()
        .enumerate()
        .flat_map(|(v, plan)| plan.iter().map(move |(z, _, _)| v * d + z));
    for (field, slot) in planned.enumerate() {
        index[slot] = field as i64;
    }
    let noise = Tensor::cat(vec![noise, Tensor::zeros([1, h, w], &device)], 0);
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n * d]), &device);
    let noise = noise.select(0, index).reshape([n, 1, d, h, w]);
    (ct + noise * lung * amplitude).clamp(0.0, 1.0)
}

/// Initialises every parameter as burn's layers do (uniform in ±1/√fan_in, Kaiming's uniform
/// with gain 1/√3, biases with the same bound as their weights; normalisation scales 1 and
/// shifts 0, running means 0 and variances 1; the TransUNet's positional embedding uniform in [0, 1) and class token standard
/// normal, as the reference) from a seeded generator.
pub(crate) struct SeededInit {
    rng: ChaCha8Rng,
    /// The kind of layer being visited (`Struct:Linear`, `Struct:Up2xLayer`, …).
    layer: String,
    /// The field being visited (`weight`, `gamma`, `embedding`, …).
    field: String,
    /// The last weight's fan-in, for the bias after it.
    fan_in: usize,
}

impl SeededInit {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            layer: String::new(),
            field: String::new(),
            fan_in: 1,
        }
    }

    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let v: f64 = self.rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

impl<B: Backend> burn::module::ModuleMapper<B> for SeededInit {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type.starts_with("Struct:") {
            self.layer = container_type.to_string();
        }
        self.field = name.to_string();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims();
        if D > 1 {
            let rest: usize = shape[2..].iter().product();
            self.fan_in = match self.layer.as_str() {
                // `[in, out]`.
                "Struct:Linear" => shape[0],
                // Transposed convolution `[in, out, k, k, k]`: burn's fan-in is `out · k³`.
                "Struct:Up2xLayer" => shape[1] * rest,
                // Convolution `[out, in, k, k, k]`.
                _ => shape[1] * rest,
            };
        }
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = match (self.layer.as_str(), self.field.as_str()) {
            ("Struct:BatchNorm" | "Struct:LayerNorm", "gamma") => vec![1.0; n],
            ("Struct:BatchNorm" | "Struct:LayerNorm", "beta") => vec![0.0; n],
            // burn maps the running statistics like parameters: a random "variance" would make
            // inference NaN.
            ("Struct:BatchNorm", "running_mean") => vec![0.0; n],
            ("Struct:BatchNorm", "running_var") => vec![1.0; n],
            ("Struct:Vit", "embedding") => (0..n).map(|_| self.rng.random::<f32>()).collect(),
            ("Struct:Vit", "cls_token") => (0..n).map(|_| self.normal() as f32).collect(),
            _ => {
                let bound = 1.0 / (self.fan_in.max(1) as f64).sqrt();
                (0..n)
                    .map(|_| self.rng.random_range(-bound..bound) as f32)
                    .collect()
            }
        };
        let device = tensor.device();
        let fresh = Tensor::<B, D>::from_data(TensorData::new(values, shape), &device);
        let fresh = if tensor.is_require_grad() {
            fresh.require_grad()
        } else {
            fresh
        };
        burn::module::Param::from_mapped_value(id, fresh, mapper)
    }
}

/// Numbers parameters in traversal order from a start. burn draws parameter ids at random and
/// writes them into every record, so without this the same weights would give different files
/// (and cache digests) in every run. Only for saving: giving the live autodiff
/// models fixed ids changed the resume test's losses in the last bit (two trainers in one
/// process then share ids).
struct SequentialIds(u64);

impl<B: Backend> burn::module::ModuleMapper<B> for SequentialIds {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        burn::module::Param::from_mapped_value(burn::module::ParamId::from(self.0), tensor, mapper)
    }
}

/// Mean squared difference (the plain one: the GAN's outputs are values, not logits).
fn mse<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, 1> {
    (a - b).powi_scalar(2).mean()
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
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray>;

    fn recipe() -> GanRecipe {
        GanRecipe {
            width: 0.125,
            lr_generator: 1e-3,
            lr_discriminator: 1e-3,
            batch: 2,
            iterations: 4,
            seed: 7,
            noise: NoiseAugment::default(),
            conv: crate::ConvImpl::Im2col,
        }
    }

    /// Two healthy and two infected 32 × 32 × 32 volumes (the smallest the discriminator's
    /// three valid convolutions and pools take): a lung box, lesions as a bright cube.
    fn data() -> GanData {
        let shape = [32, 32, 32];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sample = |rng: &mut ChaCha8Rng, lesion: bool| {
            let mut ct = vec![0.0f32; 32 * 32 * 32];
            let mut lung = vec![0.0f32; 32 * 32 * 32];
            for (i, (c, l)) in ct.iter_mut().zip(lung.iter_mut()).enumerate() {
                let (z, y, x) = (i / 1024, (i / 32) % 32, i % 32);
                if (4..28).contains(&y) && (4..28).contains(&x) {
                    *l = 1.0;
                    *c = 0.1 + 0.02 * rng.random::<f32>();
                    if lesion
                        && (8..16).contains(&z)
                        && (8..16).contains(&y)
                        && (8..16).contains(&x)
                    {
                        *c = 0.5;
                    }
                }
            }
            GanSample { ct, lung }
        };
        GanData {
            shape,
            healthy: (0..2).map(|_| sample(&mut rng, false)).collect(),
            infected: (0..2).map(|_| sample(&mut rng, true)).collect(),
        }
    }

    fn weights(t: &GanTrainer<B>) -> Vec<f32> {
        let g = heal(
            &t.inference_generator(),
            &[&data().infected[0].ct],
            [32, 32, 32],
            &Default::default(),
        );
        g.concat()
    }

    #[test]
    fn a_resumed_training_is_bit_for_bit_the_uninterrupted_one() {
        let data = data();
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        let mut straight = GanTrainer::<B>::new(recipe(), Default::default());
        for _ in 0..4 {
            straight.step(&data);
        }
        let mut first = GanTrainer::<B>::new(recipe(), Default::default());
        first.step(&data);
        first.step(&data);
        first.save_checkpoint(&ckpt).unwrap();
        first.step(&data); // lost with the kill
        let mut resumed = GanTrainer::<B>::new(recipe(), Default::default());
        assert!(resumed.resume(&ckpt).unwrap());
        assert_eq!(resumed.iteration, 2);
        resumed.step(&data);
        resumed.step(&data);
        assert_eq!(resumed.history, straight.history);
        assert_eq!(weights(&resumed), weights(&straight));
    }

    #[test]
    fn augmentation_stays_inside_the_lungs_and_the_intensity_range() {
        let data = data();
        let s = &data.healthy[0];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let noise = NoiseAugment {
            amplitude: 3.0,
            ..NoiseAugment::default()
        };
        let plan = plan_noise(data.shape[0], data.shape[2], &noise, &mut rng);
        let volume = |v: &[f32]| {
            let [d, h, w] = data.shape;
            Tensor::<B, 5>::from_data(
                TensorData::new(v.to_vec(), [1, 1, d, h, w]),
                &Default::default(),
            )
        };
        let out: Vec<f32> = add_noise(volume(&s.ct), volume(&s.lung), &[plan], noise.amplitude)
            .into_data()
            .to_vec()
            .unwrap();
        let changed: Vec<usize> = (0..out.len()).filter(|&i| out[i] != s.ct[i]).collect();
        assert!(!changed.is_empty());
        assert!(changed.iter().all(|&i| s.lung[i] > 0.5));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        // A quarter of 32 slices, each with lung: 8 slices touched.
        let slices: std::collections::BTreeSet<usize> = changed.iter().map(|i| i / 1024).collect();
        assert_eq!(slices.len(), 8);
    }

    /// The augmentation made on wgpu by our kernel equals the one made on the CPU reference.
    #[test]
    fn noise_made_on_wgpu_matches_the_cpu_noise() {
        fn noisy<A: ModelBackend>(
            s: &GanSample,
            shape: [usize; 3],
            plans: &[NoisePlan],
        ) -> Vec<f32> {
            let [d, h, w] = shape;
            let device = Default::default();
            let volume = |v: &[f32]| {
                Tensor::<A, 5>::from_data(TensorData::new(v.to_vec(), [1, 1, d, h, w]), &device)
            };
            add_noise(volume(&s.ct), volume(&s.lung), plans, 0.5)
                .into_data()
                .to_vec()
                .unwrap()
        }
        let data = data();
        let s = &data.healthy[0];
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let plan = plan_noise(
            data.shape[0],
            data.shape[2],
            &NoiseAugment::default(),
            &mut rng,
        );
        let cpu = noisy::<burn::backend::NdArray>(s, data.shape, std::slice::from_ref(&plan));
        let gpu = noisy::<burn::backend::Wgpu>(s, data.shape, &[plan]);
        let err = covflow_kernels::max_abs_diff(&cpu, &gpu);
        assert!(err < 1e-5, "max difference {err}");
        assert_ne!(cpu, s.ct, "noise was added");
    }
}
