//! The models' benchmarks on a chosen device (`covflow bench transunet`, `covflow bench conv`).

use covflow_kernels::Device;

use crate::DeviceNotBuilt;

use crate::{BenchOptimizer, ConvCheck, ConvImpl, TrainingBench, TransUNetConfig, bench_training};
use crate::{check_conv, transunet_conv_shapes};

/// Trains the seed TransUNet for a few steps on `device` and reports first-step and steady-state
/// times. `width_div` shrinks every width (for CPU smoke runs); 1 is the seed configuration.
pub fn transunet(
    device: Device,
    batch: usize,
    steps: usize,
    width_div: usize,
    conv: ConvImpl,
    optimizer: BenchOptimizer,
) -> Result<TrainingBench, DeviceNotBuilt> {
    let config = TransUNetConfig::new()
        .with_out_channels(128 / width_div)
        .with_mlp_dim(512 / width_div)
        .with_conv(conv);
    let progress = |m: &str| eprintln!("[bench transunet {device} batch {batch}] {m}");
    on_autodiff_backend!(device, B => {
        bench_training::<B>(&config, &Default::default(), batch, steps, optimizer, progress)
    })
}

/// Checks `imp` against burn's conv2d on `device` at the TransUNet's convolution shapes (batch
/// `batch`), forward and backward, and times both.
pub fn conv(
    device: Device,
    imp: ConvImpl,
    batch: usize,
    reps: usize,
) -> Result<Vec<ConvCheck>, DeviceNotBuilt> {
    let shapes = transunet_conv_shapes(batch);
    on_autodiff_backend!(device, B => {
        shapes
            .into_iter()
            .map(|s| check_conv::<B>(imp, s, reps, &Default::default()))
            .collect()
    })
}

/// What `covflow bench gan` reports: GAN iterations (the three steps) on random lung-like
/// volumes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GanBench {
    /// `[D, H, W]`.
    pub shape: [usize; 3],
    /// Volumes of each class per iteration.
    pub batch: usize,
    /// Generator parameters.
    pub generator_params: usize,
    /// Discriminator parameters.
    pub discriminator_params: usize,
    /// The first iteration (seconds).
    pub first_s: f64,
    /// Every later iteration (seconds).
    pub steps_s: Vec<f64>,
    /// Their median (seconds).
    pub median_s: f64,
}

/// Times `steps` GAN iterations after a first one on `device`.
pub fn gan(
    device: Device,
    recipe: &crate::GanRecipe,
    shape: [usize; 3],
    steps: usize,
) -> Result<GanBench, DeviceNotBuilt> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let len = shape.iter().product();
    let mut sample = |lesion: f32| crate::GanSample {
        ct: (0..len)
            .map(|_| 0.1 + lesion * rng.random::<f32>())
            .collect(),
        lung: vec![1.0; len],
    };
    let data = crate::GanData {
        shape,
        healthy: (0..2).map(|_| sample(0.05)).collect(),
        infected: (0..2).map(|_| sample(0.5)).collect(),
    };
    on_autodiff_backend!(device, B => {
        let mut t = crate::GanTrainer::<B>::new(recipe.clone(), Default::default());
        let timed = |t: &mut crate::GanTrainer<B>| {
            let start = std::time::Instant::now();
            t.step(&data);
            start.elapsed().as_secs_f64()
        };
        let first_s = timed(&mut t);
        let steps_s: Vec<f64> = (0..steps).map(|_| timed(&mut t)).collect();
        let mut sorted = steps_s.clone();
        sorted.sort_by(f64::total_cmp);
        GanBench {
            shape,
            batch: recipe.batch,
            generator_params: crate::trainable_params(&t.generator),
            discriminator_params: crate::trainable_params(&t.discriminator),
            first_s,
            median_s: sorted.get(sorted.len() / 2).copied().unwrap_or(first_s),
            steps_s,
        }
    })
}
