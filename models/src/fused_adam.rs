//! Adam with one fused kernel per parameter tensor on cubecl backends
//! ([`ModelBackend::adam_step`]), and burn's own `Adam` elsewhere.
//!
//! burn's `Adam` launches thirteen kernels per parameter tensor per step; for the TransUNet's 205
//! tensors that is about 2 700 of a training step's launches (BENCHMARKS.md, "Kernel launches").
//! The state is burn's `AdamState`, so checkpoints read the same either way.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::ModelBackend;

/// Adam's β₁, β₂ and ε: burn's defaults, which the segmenter and the GAN train with.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Adam whose step is one kernel per parameter tensor where the backend has it.
#[derive(Clone)]
pub struct FusedAdam {
    /// burn's Adam with the same constants: the path of backends without the kernel.
    burn: burn::optim::Adam,
}

impl FusedAdam {
    /// Adam with burn's default β₁ 0.9, β₂ 0.999, ε 1e-5, as an optimiser of module `M`.
    pub fn init<B, M>() -> OptimizerAdaptor<FusedAdam, M, B>
    where
        B: AutodiffBackend,
        B::InnerBackend: ModelBackend,
        M: AutodiffModule<B>,
    {
        OptimizerAdaptor::from(FusedAdam {
            burn: AdamConfig::new()
                .with_beta_1(BETA_1)
                .with_beta_2(BETA_2)
                .with_epsilon(EPSILON)
                .build(),
        })
    }
}

impl<B: ModelBackend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        if !B::ADAM_KERNEL {
            return self.burn.step(lr, tensor, grad, state);
        }
        let prim = |t: Tensor<B, D>| t.into_primitive().tensor();
        let wrap = |x| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(x));
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                Some((prim(s.momentum.moment_1), prim(s.momentum.moment_2))),
            ),
            None => (1, None),
        };
        let scalars = covflow_kernels::AdamScalars::new(lr, BETA_1, BETA_2, EPSILON, time as i32);
        let (p, m, v) = B::adam_step(prim(tensor), prim(grad), moments, scalars);
        let state = AdamState::new(AdaptiveMomentumState::new(time, wrap(m), wrap(v)));
        (wrap(p), Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Tensor};

    type Wgpu = burn::backend::Wgpu;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    fn flat<B: Backend>(net: &Net<B>) -> Vec<f32> {
        [
            net.a.weight.val().into_data(),
            net.a.bias.as_ref().unwrap().val().into_data(),
            net.b.weight.val().into_data(),
            net.b.bias.as_ref().unwrap().val().into_data(),
        ]
        .into_iter()
        .flat_map(|d| d.to_vec::<f32>().unwrap())
        .collect()
    }

    /// Five steps on wgpu: the fused kernel against burn's Adam from the same start.
    #[test]
    fn fused_steps_on_wgpu_follow_burns_adam() {
        type B = Autodiff<Wgpu>;
        let dev = Default::default();
        let net0 = Net::<B> {
            a: LinearConfig::new(33, 70).init(&dev),
            b: LinearConfig::new(70, 5).init(&dev),
        };
        // burn initialises parameters lazily: read them once so both copies start equal.
        let start = flat(&net0);
        let x = Tensor::<B, 2>::random([16, 33], Distribution::Normal(0.0, 1.0), &dev);
        let mut fused = FusedAdam::init::<B, Net<B>>();
        let mut plain = AdamConfig::new().init::<B, Net<B>>();
        let (mut n1, mut n2) = (net0.clone(), net0.clone());
        for _ in 0..5 {
            let loss = |n: &Net<B>| {
                n.b.forward(n.a.forward(x.clone()).tanh())
                    .powf_scalar(2.0)
                    .mean()
            };
            let g1 = GradientsParams::from_grads(loss(&n1).backward(), &n1);
            n1 = fused.step(1e-2, n1, g1);
            let g2 = GradientsParams::from_grads(loss(&n2).backward(), &n2);
            n2 = plain.step(1e-2, n2, g2);
        }
        let (a, b) = (flat(&n1), flat(&n2));
        let moved = a
            .iter()
            .zip(&start)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(moved > 1e-2, "the steps moved the weights ({moved})");
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "fused and burn's Adam differ by {err}");
    }
}
