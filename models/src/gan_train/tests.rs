//! Tests of the GAN trainer: options, resume bit for bit.

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
        change_weight: 0.0,
        leaky_output: false,
        adversary: Adversary::Global,
        discriminator_slope: 0.0,
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
                if lesion && (8..16).contains(&z) && (8..16).contains(&y) && (8..16).contains(&x) {
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

/// The mean change, as the history records it, of a training of `iterations` with the
/// minimal-change term weighted `weight`, over its last three iterations.
fn change_after(weight: f64, iterations: usize) -> f64 {
    // A ReLU output this small and this early is mostly dead: nothing would move it.
    let recipe = GanRecipe {
        change_weight: weight,
        leaky_output: true,
        lr_generator: 1e-2,
        ..recipe()
    };
    let mut t = GanTrainer::<B>::new(recipe, Default::default());
    let data = data();
    for _ in 0..iterations {
        t.step(&data);
    }
    t.history[iterations - 3..]
        .iter()
        .map(|l| l.change)
        .sum::<f64>()
        / 3.0
}

#[test]
fn the_minimal_change_term_keeps_twins_closer_to_their_scans() {
    let free = change_after(0.0, 10);
    let held = change_after(20.0, 10);
    assert!(free > 0.0 && held < 0.8 * free, "{held} vs {free}");
}

#[test]
fn a_resumed_training_is_bit_for_bit_the_uninterrupted_one() {
    for adversary in [Adversary::Global, Adversary::Patch] {
        let recipe = || GanRecipe {
            adversary,
            ..recipe()
        };
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
        assert_eq!(resumed.history, straight.history, "{adversary:?}");
        assert_eq!(weights(&resumed), weights(&straight), "{adversary:?}");
    }
}

/// A patch adversary's verdicts are least squares on logits: its losses differ from the
/// original's, stay finite, and its accuracies are shares.
#[test]
fn a_patch_adversary_trains_on_its_own_losses() {
    let data = data();
    let mut global = GanTrainer::<B>::new(recipe(), Default::default());
    let patch_recipe = GanRecipe {
        adversary: Adversary::Patch,
        ..recipe()
    };
    let mut patch = GanTrainer::<B>::new(patch_recipe, Default::default());
    for i in 0..2 {
        let (g, p) = (global.step(&data), patch.step(&data));
        if i == 0 {
            // Same seed, same generator: the first reconstruction step is the same.
            assert_eq!(g.reconstruction, p.reconstruction);
        }
        assert!(p.discriminator.is_finite() && p.adversarial.is_finite());
        assert_ne!(g.discriminator, p.discriminator);
        for a in [p.accuracy_real, p.accuracy_generated] {
            assert!((0.0..=1.0).contains(&a), "{a}");
        }
        // A fresh adversary's ReLUs are partly alive, never all.
        for live in [g.discriminator_live, p.discriminator_live] {
            assert!(live > 0.0 && live < 1.0, "{live}");
        }
    }
    assert_eq!(patch.discriminator.adversary(), Adversary::Patch);
}
