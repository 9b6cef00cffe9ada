//! The augmentation of the GAN's reconstruction step: Perlin noise painted on a share of a
//! healthy volume's slices inside the lungs, which the generator learns to remove.

use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use covflow_kernels::perlin::{Fractal, Permutation};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ModelBackend;

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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use rand::SeedableRng;

    type B = Autodiff<NdArray>;

    /// A 32³ volume with a lung box and its mask.
    struct Sample {
        ct: Vec<f32>,
        lung: Vec<f32>,
    }

    fn sample() -> ([usize; 3], Sample) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut ct, mut lung) = (vec![0.0f32; 32 * 32 * 32], vec![0.0f32; 32 * 32 * 32]);
        for (i, (c, l)) in ct.iter_mut().zip(lung.iter_mut()).enumerate() {
            let (y, x) = ((i / 32) % 32, i % 32);
            if (4..28).contains(&y) && (4..28).contains(&x) {
                *l = 1.0;
                *c = 0.1 + 0.02 * rng.random::<f32>();
            }
        }
        ([32, 32, 32], Sample { ct, lung })
    }

    #[test]
    fn augmentation_stays_inside_the_lungs_and_the_intensity_range() {
        let (shape, s) = sample();
        let s = &s;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let noise = NoiseAugment {
            amplitude: 3.0,
            ..NoiseAugment::default()
        };
        let plan = plan_noise(shape[0], shape[2], &noise, &mut rng);
        let volume = |v: &[f32]| {
            let [d, h, w] = shape;
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
        fn noisy<A: ModelBackend>(s: &Sample, shape: [usize; 3], plans: &[NoisePlan]) -> Vec<f32> {
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
        let (shape, s) = sample();
        let s = &s;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let plan = plan_noise(shape[0], shape[2], &NoiseAugment::default(), &mut rng);
        let cpu = noisy::<burn::backend::NdArray>(s, shape, std::slice::from_ref(&plan));
        let gpu = noisy::<burn::backend::Wgpu>(s, shape, &[plan]);
        let err = covflow_kernels::max_abs_diff(&cpu, &gpu);
        assert!(err < 1e-5, "max difference {err}");
        assert_ne!(cpu, s.ct, "noise was added");
    }
}
