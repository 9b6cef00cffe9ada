//! Batch normalisation followed by a ReLU (or not) as one operation on cubecl backends.
//!
//! The TransUNet's 22 BatchNorm layers keep burn's `BatchNorm` module (its γ, β and running
//! statistics are the reference's `weight`, `bias`, `running_mean`, `running_var`), but a
//! training step through burn's composition spends about 45 kernel launches on each layer and
//! its ReLU; [`batch_norm_relu`] and [`batch_norm`] spend four on cubecl backends
//! (`covflow_kernels::batch_norm`: statistics, normalisation, gradient sums, input gradient),
//! registered with burn's autodiff as one node. Elsewhere (the CPU) they run burn's `BatchNorm`
//! and `relu` themselves, so CPU training is unchanged to the bit.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::nn::BatchNormConfig;
//! use burn::tensor::Tensor;
//! use covflow_models::batch_norm_relu;
//!
//! let device = Default::default();
//! let norm = BatchNormConfig::new(3).init::<NdArray>(&device);
//! let x = Tensor::<NdArray, 4>::ones([2, 3, 4, 4], &device);
//! let y = batch_norm_relu(&norm, x);
//! assert_eq!(y.dims(), [2, 3, 4, 4]);
//! ```

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::BatchNorm;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, IntElement, tensor::CubeTensor};
use covflow_kernels::batch_norm::{
    Affine, ChannelBuffers, ChannelLayout, SavedForward, batch_norm_apply_reference,
    batch_norm_backward_reference, batch_stats_reference, launch_batch_norm_apply,
    launch_batch_norm_backward, launch_batch_stats,
};

use crate::ModelBackend;
use crate::backend::{f32_like, host_values};

/// A layer's parameters and running statistics, as backend tensors (`[C]` each).
#[derive(Clone, Debug)]
pub struct BatchNormInputs<B: Backend> {
    /// γ.
    pub gamma: FloatTensor<B>,
    /// β.
    pub beta: FloatTensor<B>,
    /// Running mean before this batch.
    pub running_mean: FloatTensor<B>,
    /// Running variance before this batch.
    pub running_var: FloatTensor<B>,
    /// Weight of this batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance before its square root.
    pub epsilon: f64,
}

/// The forward pass in training mode.
#[derive(Clone, Debug)]
pub struct BatchNormForward<B: Backend> {
    /// The normalised (and rectified) tensor.
    pub output: FloatTensor<B>,
    /// The batch's per-channel mean.
    pub mean: FloatTensor<B>,
    /// The batch's per-channel biased variance.
    pub var: FloatTensor<B>,
    /// The running mean after this batch.
    pub running_mean: FloatTensor<B>,
    /// The running variance after this batch.
    pub running_var: FloatTensor<B>,
}

/// What the backward pass reads of the forward pass.
#[derive(Clone, Debug)]
pub struct BatchNormSaved<B: Backend> {
    /// The input.
    pub x: FloatTensor<B>,
    /// The output (where it is zero, the ReLU passed no gradient).
    pub output: FloatTensor<B>,
    /// The batch's per-channel mean.
    pub mean: FloatTensor<B>,
    /// The batch's per-channel biased variance.
    pub var: FloatTensor<B>,
    /// γ.
    pub gamma: FloatTensor<B>,
    /// ε.
    pub epsilon: f64,
}

/// `relu(norm(x))` for `x: [N, C, …]`: batch statistics (and a running-statistics update) where
/// the backend differentiates, the running statistics otherwise, exactly as `norm.forward(x)`.
pub fn batch_norm_relu<B: ModelBackend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    normalise(norm, x, true)
}

/// `norm(x)`, as [`batch_norm_relu`] without the ReLU.
pub fn batch_norm<B: ModelBackend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    normalise(norm, x, false)
}

fn normalise<B: ModelBackend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
    rectify: bool,
) -> Tensor<B, D> {
    if !B::BATCH_NORM_KERNEL {
        let y = norm.forward(x);
        return if rectify { relu(y) } else { y };
    }
    let device = x.device();
    let training = B::ad_enabled(&device);
    let state = |t: Tensor<B, 1>| t.to_device(&device).into_primitive().tensor();
    let (running_mean, running_var) = if training {
        (
            norm.running_mean.value_sync(),
            norm.running_var.value_sync(),
        )
    } else {
        (norm.running_mean.value(), norm.running_var.value())
    };
    let inputs = BatchNormInputs {
        gamma: norm.gamma.val().into_primitive().tensor(),
        beta: norm.beta.val().into_primitive().tensor(),
        running_mean: state(running_mean),
        running_var: state(running_var),
        momentum: norm.momentum,
        epsilon: norm.epsilon,
    };
    let x = x.into_primitive().tensor();
    let tensor = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let output = if training {
        let f = B::batch_norm_train(x, inputs, rectify);
        norm.running_mean.update(tensor(f.running_mean).detach());
        norm.running_var.update(tensor(f.running_var).detach());
        f.output
    } else {
        B::batch_norm_infer(x, inputs, rectify)
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// The `[N, C, S]` view of a tensor `[N, C, …]`.
pub(crate) fn layout_of(shape: &Shape) -> ChannelLayout {
    let (batch, channels) = (shape[0], shape[1]);
    ChannelLayout {
        batch,
        channels,
        spatial: shape.num_elements() / (batch * channels).max(1),
    }
}

fn channel_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> FloatTensor<B> {
    let n = values.len();
    B::float_from_data(TensorData::new(values, [n]), device)
}

/// The provided training forward: the host references.
pub(crate) fn host_train<B: Backend>(
    x: FloatTensor<B>,
    p: BatchNormInputs<B>,
    rectify: bool,
) -> BatchNormForward<B> {
    let shape = x.shape();
    let device = B::float_device(&x);
    let layout = layout_of(&shape);
    let x = host_values::<B>(x);
    let s = batch_stats_reference(
        &x,
        layout,
        &host_values::<B>(p.running_mean),
        &host_values::<B>(p.running_var),
        p.momentum as f32,
    );
    let y = batch_norm_apply_reference(
        &x,
        layout,
        &s.mean,
        &s.var,
        &host_values::<B>(p.gamma),
        &host_values::<B>(p.beta),
        p.epsilon as f32,
        rectify,
    );
    BatchNormForward {
        output: B::float_from_data(TensorData::new(y, shape), &device),
        mean: channel_tensor::<B>(s.mean, &device),
        var: channel_tensor::<B>(s.var, &device),
        running_mean: channel_tensor::<B>(s.running_mean, &device),
        running_var: channel_tensor::<B>(s.running_var, &device),
    }
}

/// The provided inference forward: the host reference with the running statistics.
pub(crate) fn host_infer<B: Backend>(
    x: FloatTensor<B>,
    p: BatchNormInputs<B>,
    rectify: bool,
) -> FloatTensor<B> {
    let shape = x.shape();
    let device = B::float_device(&x);
    let layout = layout_of(&shape);
    let y = batch_norm_apply_reference(
        &host_values::<B>(x),
        layout,
        &host_values::<B>(p.running_mean),
        &host_values::<B>(p.running_var),
        &host_values::<B>(p.gamma),
        &host_values::<B>(p.beta),
        p.epsilon as f32,
        rectify,
    );
    B::float_from_data(TensorData::new(y, shape), &device)
}

/// The provided backward: the host reference. `[dx, dγ, dβ]`.
pub(crate) fn host_backward<B: Backend>(
    saved: BatchNormSaved<B>,
    grad: FloatTensor<B>,
    rectify: bool,
) -> [FloatTensor<B>; 3] {
    let shape = saved.x.shape();
    let device = B::float_device(&saved.x);
    let g = batch_norm_backward_reference(
        &host_values::<B>(saved.x),
        &host_values::<B>(saved.output),
        &host_values::<B>(grad),
        layout_of(&shape),
        &host_values::<B>(saved.mean),
        &host_values::<B>(saved.var),
        &host_values::<B>(saved.gamma),
        saved.epsilon as f32,
        rectify,
    );
    [
        B::float_from_data(TensorData::new(g.x, shape), &device),
        channel_tensor::<B>(g.gamma, &device),
        channel_tensor::<B>(g.beta, &device),
    ]
}

type Cube<R, I, BT> = CubeBackend<R, f32, I, BT>;

fn contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    burn_cubecl::kernel::into_contiguous(t)
}

/// The training forward on a cubecl backend: two launches.
pub(crate) fn cube_train<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    p: BatchNormInputs<Cube<R, I, BT>>,
    rectify: bool,
) -> BatchNormForward<Cube<R, I, BT>> {
    let x = contiguous(x);
    let layout = layout_of(&x.shape());
    let running = ChannelBuffers {
        mean: contiguous(p.running_mean).handle,
        var: contiguous(p.running_var).handle,
    };
    let (batch, next) = launch_batch_stats::<R>(
        &x.client,
        x.handle.clone(),
        layout,
        running,
        p.momentum as f32,
    );
    let affine = Affine {
        gamma: contiguous(p.gamma).handle,
        beta: contiguous(p.beta).handle,
    };
    let y = launch_batch_norm_apply::<R>(
        &x.client,
        x.handle.clone(),
        layout,
        &batch,
        &affine,
        p.epsilon as f32,
        rectify,
    );
    let channels = || Shape::new([layout.channels]);
    BatchNormForward {
        output: f32_like(&x, x.shape(), y),
        mean: f32_like(&x, channels(), batch.mean),
        var: f32_like(&x, channels(), batch.var),
        running_mean: f32_like(&x, channels(), next.mean),
        running_var: f32_like(&x, channels(), next.var),
    }
}

/// The inference forward on a cubecl backend: one launch.
pub(crate) fn cube_infer<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    p: BatchNormInputs<Cube<R, I, BT>>,
    rectify: bool,
) -> CubeTensor<R> {
    let x = contiguous(x);
    let layout = layout_of(&x.shape());
    let stats = ChannelBuffers {
        mean: contiguous(p.running_mean).handle,
        var: contiguous(p.running_var).handle,
    };
    let affine = Affine {
        gamma: contiguous(p.gamma).handle,
        beta: contiguous(p.beta).handle,
    };
    let y = launch_batch_norm_apply::<R>(
        &x.client,
        x.handle.clone(),
        layout,
        &stats,
        &affine,
        p.epsilon as f32,
        rectify,
    );
    f32_like(&x, x.shape(), y)
}

/// The backward pass on a cubecl backend: two launches.
pub(crate) fn cube_backward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    saved: BatchNormSaved<Cube<R, I, BT>>,
    grad: CubeTensor<R>,
    rectify: bool,
) -> [CubeTensor<R>; 3] {
    let x = contiguous(saved.x);
    let layout = layout_of(&x.shape());
    let grad = contiguous(grad);
    let forward = SavedForward {
        x: x.handle.clone(),
        y: contiguous(saved.output).handle,
        stats: ChannelBuffers {
            mean: contiguous(saved.mean).handle,
            var: contiguous(saved.var).handle,
        },
        gamma: contiguous(saved.gamma).handle,
    };
    let (dx, dgamma, dbeta) = launch_batch_norm_backward::<R>(
        &x.client,
        &forward,
        grad.handle,
        layout,
        saved.epsilon as f32,
        rectify,
    );
    let channels = || Shape::new([layout.channels]);
    [
        f32_like(&x, x.shape(), dx),
        f32_like(&x, channels(), dgamma),
        f32_like(&x, channels(), dbeta),
    ]
}

/// The training forward under autodiff: one node with parents x, γ and β, whose backward is the
/// inner backend's. The statistics come back untracked.
pub(crate) fn autodiff_train<B: ModelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    p: BatchNormInputs<Autodiff<B, C>>,
    rectify: bool,
) -> BatchNormForward<Autodiff<B, C>> {
    #[derive(Debug)]
    struct BatchNormRelu;

    impl<B: ModelBackend> Backward<B, 3> for BatchNormRelu {
        type State = (BatchNormSaved<B>, bool);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (saved, rectify) = ops.state;
            let [dx, dgamma, dbeta] = B::batch_norm_backward(saved, grad, rectify);
            for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let inner = BatchNormInputs::<B> {
        gamma: p.gamma.primitive.clone(),
        beta: p.beta.primitive,
        running_mean: p.running_mean.primitive,
        running_var: p.running_var.primitive,
        momentum: p.momentum,
        epsilon: p.epsilon,
    };
    let forward = B::batch_norm_train(x.primitive.clone(), inner, rectify);
    let lift = <Autodiff<B, C> as AutodiffBackend>::from_inner;
    let output = match BatchNormRelu
        .prepare::<C>([x.node.clone(), p.gamma.node.clone(), p.beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = BatchNormSaved {
                x: x.primitive,
                output: forward.output.clone(),
                mean: forward.mean.clone(),
                var: forward.var.clone(),
                gamma: p.gamma.primitive,
                epsilon: p.epsilon,
            };
            prep.finish((saved, rectify), forward.output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward.output),
    };
    BatchNormForward {
        output,
        mean: lift(forward.mean),
        var: lift(forward.var),
        running_mean: lift(forward.running_mean),
        running_var: lift(forward.running_var),
    }
}

/// Inference under autodiff (a module not switched to `valid()`): the inner backend's, untracked.
pub(crate) fn autodiff_infer<B: ModelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    p: BatchNormInputs<Autodiff<B, C>>,
    rectify: bool,
) -> FloatTensor<Autodiff<B, C>> {
    let inner = BatchNormInputs::<B> {
        gamma: p.gamma.primitive,
        beta: p.beta.primitive,
        running_mean: p.running_mean.primitive,
        running_var: p.running_var.primitive,
        momentum: p.momentum,
        epsilon: p.epsilon,
    };
    <Autodiff<B, C> as AutodiffBackend>::from_inner(B::batch_norm_infer(
        x.primitive,
        inner,
        rectify,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{NdArray, Wgpu};
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn random(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
        covflow_kernels::random_unit(n, seed)
            .iter()
            .map(|v| (v - 0.5) * scale + offset)
            .collect()
    }

    fn from_data<B: Backend>(data: TensorData, device: &B::Device) -> FloatTensor<B> {
        B::float_from_data(data, device)
    }

    fn relative_error(want: &[f32], got: &[f32]) -> f32 {
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        want.iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs() / scale)
            .fold(0.0, f32::max)
    }

    /// Two training steps' outputs, γ/β/x gradients and running statistics, then an inference
    /// pass, through burn's BatchNorm + ReLU (`fused: false`) or the fused operation.
    fn run<B: AutodiffBackend + ModelBackend>(fused: bool, rectify: bool) -> Vec<(String, Vec<f32>)>
    where
        B::InnerBackend: ModelBackend,
    {
        let device = Default::default();
        let dims = [3, 5, 7, 9];
        let n = dims.iter().product();
        let mut norm = BatchNormConfig::new(5).init::<B>(&device);
        // Non-trivial γ and β, so that their gradients and the ReLU's cut are exercised.
        norm.gamma = norm.gamma.map(|_| {
            Tensor::from_data(TensorData::new(random(5, 1, 1.0, 1.0), [5]), &device).require_grad()
        });
        norm.beta = norm.beta.map(|_| {
            Tensor::from_data(TensorData::new(random(5, 2, 1.0, 0.1), [5]), &device).require_grad()
        });
        let weights =
            Tensor::<B, 4>::from_data(TensorData::new(random(n, 3, 2.0, 0.0), dims), &device);
        let mut out = Vec::new();
        for step in 0..2u64 {
            let x = Tensor::<B, 4>::from_data(
                TensorData::new(random(n, 10 + step, 6.0, 3.0), dims),
                &device,
            )
            .require_grad();
            let y = match (fused, rectify) {
                (true, true) => batch_norm_relu(&norm, x.clone()),
                (true, false) => batch_norm(&norm, x.clone()),
                (false, true) => relu(norm.forward(x.clone())),
                (false, false) => norm.forward(x.clone()),
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            out.push((format!("y{step}"), values(y)));
            out.push((format!("dx{step}"), values(x.grad(&grads).unwrap())));
            out.push((
                format!("dgamma{step}"),
                values(norm.gamma.grad(&grads).unwrap()),
            ));
            out.push((
                format!("dbeta{step}"),
                values(norm.beta.grad(&grads).unwrap()),
            ));
        }
        out.push(("running_mean".into(), values(norm.running_mean.value())));
        out.push(("running_var".into(), values(norm.running_var.value())));
        let valid = norm.valid();
        let x = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(random(n, 20, 6.0, 3.0), dims),
            &device,
        );
        let y = if !fused {
            let y = valid.forward(x);
            if rectify { relu(y) } else { y }
        } else if rectify {
            batch_norm_relu(&valid, x)
        } else {
            batch_norm(&valid, x)
        };
        out.push(("inference".into(), values(y)));
        out
    }

    #[test]
    fn wgpu_fused_layer_matches_burns_batch_norm_and_relu() {
        type Gpu = Autodiff<Wgpu>;
        const { assert!(<Gpu as ModelBackend>::BATCH_NORM_KERNEL) };
        for rectify in [true, false] {
            let fused = run::<Gpu>(true, rectify);
            let plain = run::<Gpu>(false, rectify);
            for ((name, want), (_, got)) in plain.iter().zip(&fused) {
                let err = relative_error(want, got);
                assert!(err < 1e-4, "relu {rectify}: {name} off by {err} (relative)");
            }
        }
    }

    #[test]
    fn without_a_kernel_it_is_burns_batch_norm_exactly() {
        type Cpu = Autodiff<NdArray>;
        const { assert!(!<Cpu as ModelBackend>::BATCH_NORM_KERNEL) };
        assert_eq!(run::<Cpu>(true, true), run::<Cpu>(false, true));
    }

    #[test]
    fn host_references_match_burns_batch_norm() {
        // The provided (host) operations are what a backend without kernels would run through
        // the autodiff node; they must agree with burn's composition too.
        type Cpu = Autodiff<NdArray>;
        let plain = run::<Cpu>(false, true);
        let device = Default::default();
        let dims = [3, 5, 7, 9];
        let n: usize = dims.iter().product();
        let x = Tensor::<NdArray, 4>::from_data(
            TensorData::new(random(n, 10, 6.0, 3.0), dims),
            &device,
        );
        let p = BatchNormInputs::<NdArray> {
            gamma: channel_tensor::<NdArray>(random(5, 1, 1.0, 1.0), &device),
            beta: channel_tensor::<NdArray>(random(5, 2, 1.0, 0.1), &device),
            running_mean: channel_tensor::<NdArray>(vec![0.0; 5], &device),
            running_var: channel_tensor::<NdArray>(vec![1.0; 5], &device),
            momentum: 0.1,
            epsilon: 1e-5,
        };
        let f = host_train::<NdArray>(x.clone().into_primitive().tensor(), p.clone(), true);
        let weights = TensorData::new(random(n, 3, 2.0, 0.0), dims);
        let saved = BatchNormSaved {
            x: x.into_primitive().tensor(),
            output: f.output.clone(),
            mean: f.mean,
            var: f.var,
            gamma: p.gamma,
            epsilon: 1e-5,
        };
        let grad = from_data::<NdArray>(weights, &device);
        let [dx, dgamma, dbeta] = host_backward::<NdArray>(saved, grad, true);
        for (name, got) in [
            ("y0", f.output),
            ("dx0", dx),
            ("dgamma0", dgamma),
            ("dbeta0", dbeta),
        ] {
            let want = &plain.iter().find(|(n, _)| n == name).unwrap().1;
            let err = relative_error(want, &host_values::<NdArray>(got));
            assert!(err < 1e-4, "{name} off by {err} (relative)");
        }
    }
}
