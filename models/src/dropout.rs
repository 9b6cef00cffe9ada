//! Dropout whose masks come from the training step's own seeded generator.
//!
//! burn's `Dropout` draws from the backend's process-wide generator, so two trainings in one
//! process (parallel tasks of a run, parallel tests) interleave their draws and neither is
//! reproducible, and a resumed training cannot continue the uninterrupted one's sequence. A
//! training step therefore runs inside [`with_seeded_dropout`], which lends the current thread a
//! ChaCha generator derived from (seed, step); [`dropout`] draws its masks from it. Outside such a
//! step (inference, benchmarks) it behaves as burn's `Dropout`.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

thread_local! {
    static SOURCE: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
}

/// Runs `f` with every [`dropout`] on this thread drawing from `rng`; returns `f`'s result and
/// the generator in its new state.
///
/// ```
/// use rand::SeedableRng;
/// use rand_chacha::ChaCha8Rng;
/// let (x, _) = covflow_models::with_seeded_dropout(ChaCha8Rng::seed_from_u64(1), || 2 + 2);
/// assert_eq!(x, 4);
/// ```
pub fn with_seeded_dropout<R>(rng: ChaCha8Rng, f: impl FnOnce() -> R) -> (R, ChaCha8Rng) {
    /// What was lent before (an enclosing step's generator, usually none), put back even when
    /// `f` panics, so a reused thread never draws from a stale generator.
    struct Lent(Option<Option<ChaCha8Rng>>);
    impl Drop for Lent {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                SOURCE.with(|s| *s.borrow_mut() = previous);
            }
        }
    }
    let mut lent = Lent(Some(SOURCE.with(|s| s.borrow_mut().replace(rng))));
    let out = f();
    let previous = lent.0.take().expect("set above");
    let used = SOURCE
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), previous))
        .expect("the generator stays lent while the step runs");
    (out, used)
}

/// `layer`'s dropout of `x`: with autodiff (training), a mask of `keep / (1 − p)` or 0 per
/// element drawn from the generator [`with_seeded_dropout`] lent this thread, or burn's own
/// draw when none is lent; without autodiff, `x` unchanged.
pub fn dropout<B: Backend, const D: usize>(layer: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let p = layer.prob;
    if !B::ad_enabled(&x.device()) || p == 0.0 {
        return x;
    }
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let mask = SOURCE.with(|s| {
        s.borrow_mut().as_mut().map(|rng| {
            let keep = (1.0 / (1.0 - p)) as f32;
            (0..n)
                .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                .collect::<Vec<f32>>()
        })
    });
    match mask {
        Some(m) => {
            let device = x.device();
            x * Tensor::<B, D>::from_data(TensorData::new(m, dims), &device)
        }
        None => layer.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::DropoutConfig;
    use rand::SeedableRng;

    type A = Autodiff<NdArray>;

    fn run(seed: u64) -> Vec<f32> {
        let layer = DropoutConfig::new(0.5).init();
        let x = Tensor::<A, 2>::ones([8, 16], &Default::default());
        let (y, _) = with_seeded_dropout(ChaCha8Rng::seed_from_u64(seed), || dropout(&layer, x));
        y.into_data().to_vec().unwrap()
    }

    #[test]
    fn masks_follow_the_lent_generator_and_scale_what_they_keep() {
        let (a, b, c) = (run(1), run(1), run(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| *v == 0.0 || *v == 2.0));
        let kept = a.iter().filter(|v| **v == 2.0).count();
        assert!((32..=96).contains(&kept), "{kept} of 128 kept at p = 0.5");
        // Parallel trainings do not disturb each other's masks.
        let others: Vec<_> = (0..4).map(|s| std::thread::spawn(move || run(s))).collect();
        assert_eq!(run(1), a);
        for h in others {
            h.join().unwrap();
        }
    }

    #[test]
    fn inference_keeps_everything() {
        let layer = DropoutConfig::new(0.5).init();
        let x = Tensor::<NdArray, 2>::ones([4, 4], &Default::default());
        let (y, _) = with_seeded_dropout(ChaCha8Rng::seed_from_u64(1), || dropout(&layer, x));
        assert!(
            y.into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| *v == 1.0)
        );
    }
}
