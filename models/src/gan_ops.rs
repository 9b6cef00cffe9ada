//! The 3D GAN's convolutions and transposed convolutions, with the activation after them, as
//! single operations: the host implementations ([`crate::host_conv3d`], [`crate::host_up2x`])
//! behind [`ModelBackend::gan_conv3d`] and [`ModelBackend::gan_up2x`], and their burn autodiff
//! nodes.
//!
//! Each is one node with three parents (input, weight, bias) whose backward computes only the
//! gradients a parent asks for: the generator's first convolution needs none for its input,
//! the adversarial step none for the discriminator's weights. The activation is applied in
//! place on the host, and its derivative read from the output (positive exactly where the
//! input to the activation was): through burn's tensor operations a LeakyReLU costs three
//! passes over the volume forward and as many backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::ModelBackend;
pub use crate::host_conv3d::Conv3dGeometry;
pub use crate::host_up2x::Up2xGeometry;

/// The activation after a GAN layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// None: the layer's output as it is.
    Identity,
    /// `max(0, v)`.
    Relu,
    /// `v` where positive, `slope · v` elsewhere.
    Leaky(f64),
}

impl Activation {
    /// The slope below zero, `None` for the identity.
    pub fn slope(self) -> Option<f32> {
        match self {
            Activation::Identity => None,
            Activation::Relu => Some(0.0),
            Activation::Leaky(s) => Some(s as f32),
        }
    }

    /// Applies it with burn's tensor operations.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Identity => x,
            Activation::Relu => relu(x),
            Activation::Leaky(s) => leaky_relu(x, s),
        }
    }
}

/// What the backward pass of an activated operation needs: its output and the slope.
pub type Activated<B> = Option<(FloatTensor<B>, f32)>;

/// `activation(x ⋆ weight + bias)` for `x: [N, C, D, H, W]` and `weight: [O, C, k, k, k]`
/// (stride 1, zero padding `padding`): one operation where the backend has it
/// ([`ModelBackend::HOST_GAN_OPS`]), otherwise [`crate::conv3d_im2col`] and the activation,
/// differentiated by burn.
pub fn conv3d<B: ModelBackend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    padding: usize,
    activation: Activation,
) -> Tensor<B, 5> {
    if !B::HOST_GAN_OPS {
        return activation.apply(crate::conv3d_im2col(x, weight, bias, padding));
    }
    let [o, c, k, ..] = weight.dims();
    let input = x.dims();
    assert_eq!(
        input[1], c,
        "weight [O, C, k, k, k] must match the input's C"
    );
    let g = Conv3dGeometry {
        input,
        out_channels: o,
        kernel: k,
        padding,
    };
    let bias = bias.unwrap_or_else(|| Tensor::zeros([o], &x.device()));
    Tensor::from_primitive(TensorPrimitive::Float(B::gan_conv3d(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        g,
        activation.slope(),
    )))
}

/// `activation` of the ×2 transposed convolution (kernel 2, stride 2) of `x: [N, C, D, H, W]`
/// with `weight: [C, O, 2, 2, 2]` plus `bias`: one operation where the backend has it,
/// otherwise [`crate::up2x_matmul`] and the activation, differentiated by burn.
pub fn up2x<B: ModelBackend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    activation: Activation,
) -> Tensor<B, 5> {
    if !B::HOST_GAN_OPS {
        return activation.apply(crate::up2x_matmul(x, weight, bias));
    }
    let [c, o, ..] = weight.dims();
    let input = x.dims();
    assert_eq!(
        input[1], c,
        "weight [C, O, 2, 2, 2] must match the input's C"
    );
    let g = Up2xGeometry {
        input,
        out_channels: o,
    };
    let bias = bias.unwrap_or_else(|| Tensor::zeros([o], &x.device()));
    Tensor::from_primitive(TensorPrimitive::Float(B::gan_up2x(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        g,
        activation.slope(),
    )))
}

/// `v ← v` where positive, `slope · v` elsewhere, in place.
fn activate(values: &mut [f32], slope: Option<f32>) {
    if let Some(s) = slope {
        values.par_chunks_mut(1 << 14).for_each(|chunk| {
            for v in chunk {
                if *v < 0.0 {
                    // ReLU's zero without the sign of `v · 0`.
                    *v = if s == 0.0 { 0.0 } else { *v * s };
                }
            }
        });
    }
}

/// The gradient before the activation: `grad` where the output is positive, `slope · grad`
/// elsewhere; `grad` itself without an activation.
fn before_activation<'a, B: ModelBackend>(
    grad: &'a FloatTensor<B>,
    activated: &Activated<B>,
) -> std::borrow::Cow<'a, [f32]> {
    let g = B::host_read(grad);
    let Some((y, s)) = activated else {
        return g;
    };
    let y = B::host_read(y);
    let mut out = g.into_owned();
    out.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(gs, ys)| {
            for (g, y) in gs.iter_mut().zip(ys) {
                if *y <= 0.0 {
                    *g *= s;
                }
            }
        });
    std::borrow::Cow::Owned(out)
}

/// The host computation of one geometry of operation `(x, weight, bias) → y`.
pub(crate) trait HostOp: Copy {
    /// `[x, weight, bias, y]` shapes.
    fn shapes(&self) -> [Vec<usize>; 4];

    fn forward(&self, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32>;

    /// `[dx, dW, db]` for the output's gradient, each only where `need` asks.
    fn backward(
        &self,
        x: &[f32],
        weight: &[f32],
        grad: &[f32],
        need: [bool; 3],
    ) -> [Option<Vec<f32>>; 3];
}

impl HostOp for Conv3dGeometry {
    fn shapes(&self) -> [Vec<usize>; 4] {
        [
            self.input.to_vec(),
            self.weight_shape().to_vec(),
            vec![self.out_channels],
            self.output_shape().to_vec(),
        ]
    }

    fn forward(&self, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        crate::host_conv3d::conv3d_forward(x, weight, Some(bias), *self)
    }

    fn backward(
        &self,
        x: &[f32],
        weight: &[f32],
        grad: &[f32],
        need: [bool; 3],
    ) -> [Option<Vec<f32>>; 3] {
        use crate::host_conv3d::{conv3d_bias_grad, conv3d_input_grad, conv3d_weight_grad};
        [
            need[0].then(|| conv3d_input_grad(grad, weight, *self)),
            need[1].then(|| conv3d_weight_grad(x, grad, *self)),
            need[2].then(|| conv3d_bias_grad(grad, *self)),
        ]
    }
}

impl HostOp for Up2xGeometry {
    fn shapes(&self) -> [Vec<usize>; 4] {
        [
            self.input.to_vec(),
            self.weight_shape().to_vec(),
            vec![self.out_channels],
            self.output_shape().to_vec(),
        ]
    }

    fn forward(&self, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        crate::host_up2x::up2x_forward(x, weight, Some(bias), *self)
    }

    fn backward(
        &self,
        x: &[f32],
        weight: &[f32],
        grad: &[f32],
        need: [bool; 3],
    ) -> [Option<Vec<f32>>; 3] {
        let (dx, dw, db) = crate::host_up2x::up2x_backward(x, weight, grad, *self, need[0]);
        [dx, need[1].then_some(dw), need[2].then_some(db)]
    }
}

/// A [`HostOp`] forward and its activation, on backend `B`'s tensors.
pub(crate) fn host_forward<B: ModelBackend, G: HostOp>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    g: G,
    slope: Option<f32>,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let mut y = g.forward(
        &B::host_read(&x),
        &B::host_read(&weight),
        &B::host_read(&bias),
    );
    activate(&mut y, slope);
    let [.., shape] = g.shapes();
    B::float_from_data(TensorData::new(y, shape), &device)
}

/// A [`HostOp`]'s gradients through its activation, on backend `B`'s tensors.
pub(crate) fn host_backward<B: ModelBackend, G: HostOp>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    g: G,
    need: [bool; 3],
    activated: Activated<B>,
) -> [Option<FloatTensor<B>>; 3] {
    let device = B::float_device(&x);
    let gv = before_activation::<B>(&grad, &activated);
    let results = g.backward(&B::host_read(&x), &B::host_read(&weight), &gv, need);
    let [xs, ws, bs, _] = g.shapes();
    let mut shapes = [xs, ws, bs].into_iter();
    results.map(|r| {
        let shape = shapes.next().expect("three shapes");
        r.map(|v| B::float_from_data(TensorData::new(v, shape), &device))
    })
}

/// A three-parent operation `(x, weight, bias) → y` of geometry `Geometry`, with its forward
/// and backward on the inner backend.
trait WeightedOp<B: ModelBackend>: std::fmt::Debug + Send + 'static {
    type Geometry: Clone + Copy + std::fmt::Debug + Send + 'static;

    fn forward(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
        g: Self::Geometry,
        slope: Option<f32>,
    ) -> FloatTensor<B>;

    fn backward(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        g: Self::Geometry,
        need: [bool; 3],
        activated: Activated<B>,
    ) -> [Option<FloatTensor<B>>; 3];
}

#[derive(Debug)]
struct Conv3dNode;

impl<B: ModelBackend> WeightedOp<B> for Conv3dNode {
    type Geometry = Conv3dGeometry;

    fn forward(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        b: FloatTensor<B>,
        g: Conv3dGeometry,
        slope: Option<f32>,
    ) -> FloatTensor<B> {
        B::gan_conv3d(x, w, b, g, slope)
    }

    fn backward(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        grad: FloatTensor<B>,
        g: Conv3dGeometry,
        need: [bool; 3],
        activated: Activated<B>,
    ) -> [Option<FloatTensor<B>>; 3] {
        B::gan_conv3d_backward(x, w, grad, g, need, activated)
    }
}

#[derive(Debug)]
struct Up2xNode;

impl<B: ModelBackend> WeightedOp<B> for Up2xNode {
    type Geometry = Up2xGeometry;

    fn forward(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        b: FloatTensor<B>,
        g: Up2xGeometry,
        slope: Option<f32>,
    ) -> FloatTensor<B> {
        B::gan_up2x(x, w, b, g, slope)
    }

    fn backward(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        grad: FloatTensor<B>,
        g: Up2xGeometry,
        need: [bool; 3],
        activated: Activated<B>,
    ) -> [Option<FloatTensor<B>>; 3] {
        B::gan_up2x_backward(x, w, grad, g, need, activated)
    }
}

/// The autodiff node of a [`WeightedOp`].
#[derive(Debug)]
struct Node<Op>(Op);

impl<B: ModelBackend, Op: WeightedOp<B>> Backward<B, 3> for Node<Op> {
    /// The input's and the weight's checkpoints, the geometry, the output and slope.
    type State = (NodeId, NodeId, Op::Geometry, Activated<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, w_id, g, activated) = ops.state;
        let need = ops.parents.each_ref().map(Option::is_some);
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_id);
        let results = Op::backward(x, w, grad, g, need, activated);
        for (parent, result) in ops.parents.into_iter().zip(results) {
            if let (Some(node), Some(gradient)) = (parent, result) {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

/// Records `Op`'s forward of `(x, weight, bias)` as one node on the tape.
fn record<B, C, Op>(
    op: Op,
    [x, weight, bias]: [FloatTensor<Autodiff<B, C>>; 3],
    g: Op::Geometry,
    slope: Option<f32>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: ModelBackend,
    C: CheckpointStrategy,
    Op: WeightedOp<B>,
{
    let parents = [x.node.clone(), weight.node.clone(), bias.node.clone()];
    match Node(op).prepare::<C>(parents).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let x_id = prep.checkpoint(&x);
            let w_id = prep.checkpoint(&weight);
            let y = Op::forward(x.primitive, weight.primitive, bias.primitive, g, slope);
            let activated = slope.map(|s| (y.clone(), s));
            prep.finish((x_id, w_id, g, activated), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(Op::forward(
            x.primitive,
            weight.primitive,
            bias.primitive,
            g,
            slope,
        )),
    }
}

/// [`ModelBackend::gan_conv3d`] under autodiff.
pub(crate) fn autodiff_conv3d<B: ModelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    g: Conv3dGeometry,
    slope: Option<f32>,
) -> FloatTensor<Autodiff<B, C>> {
    record::<B, C, _>(Conv3dNode, [x, weight, bias], g, slope)
}

/// [`ModelBackend::gan_up2x`] under autodiff.
pub(crate) fn autodiff_up2x<B: ModelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    g: Up2xGeometry,
    slope: Option<f32>,
) -> FloatTensor<Autodiff<B, C>> {
    record::<B, C, _>(Up2xNode, [x, weight, bias], g, slope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;
    use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

    type B = Autodiff<NdArray>;

    fn max_rel(a: Tensor<NdArray, 5>, b: Tensor<NdArray, 5>) -> f32 {
        let a: Vec<f32> = a.into_data().to_vec().unwrap();
        let b: Vec<f32> = b.into_data().to_vec().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
    }

    /// Ours (one host node) and burn's (its own operation and activation) on the same input,
    /// with the same upstream gradient: outputs and the three gradients.
    fn compare(
        input: [usize; 5],
        weight: [usize; 5],
        ours: impl Fn(Tensor<B, 5>, Tensor<B, 5>, Tensor<B, 1>) -> Tensor<B, 5>,
        theirs: impl Fn(Tensor<B, 5>, Tensor<B, 5>, Tensor<B, 1>) -> Tensor<B, 5>,
        what: &str,
    ) {
        let (x, w) = (random(input), random(weight));
        let bias_len = if what.starts_with("up2x") {
            weight[1]
        } else {
            weight[0]
        };
        let b = random([bias_len]);
        let a = ours(x.clone(), w.clone(), b.clone());
        let t = theirs(x.clone(), w.clone(), b.clone());
        assert_eq!(a.dims(), t.dims(), "{what}");
        assert!(
            max_rel(a.clone().inner(), t.clone().inner()) < 1e-5,
            "{what}: values"
        );
        let g = Tensor::<B, 5>::random(
            a.dims(),
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let ga = (a * g.clone()).sum().backward();
        let gt = (t * g).sum().backward();
        let lift = |t: Tensor<NdArray, 1>| t.reshape([1, 1, 1, 1, bias_len]);
        for (name, d) in [
            ("dx", max_rel(x.grad(&ga).unwrap(), x.grad(&gt).unwrap())),
            ("dW", max_rel(w.grad(&ga).unwrap(), w.grad(&gt).unwrap())),
            (
                "db",
                max_rel(lift(b.grad(&ga).unwrap()), lift(b.grad(&gt).unwrap())),
            ),
        ] {
            assert!(d < 1e-5, "{what}: {name} off by {d}");
        }
    }

    #[test]
    fn host_convolution_nodes_match_burns_operations_values_and_gradients() {
        let activations = [
            Activation::Identity,
            Activation::Relu,
            Activation::Leaky(0.3),
        ];
        let shapes = [
            ([2, 3, 5, 6, 7], [4, 3, 3, 3, 3], 1),
            ([1, 5, 4, 6, 5], [2, 5, 3, 3, 3], 0),
            ([2, 4, 4, 4, 4], [3, 4, 1, 1, 1], 0),
            ([1, 2, 6, 6, 6], [3, 2, 5, 5, 5], 2),
        ];
        for ((input, weight, p), act) in shapes.into_iter().zip(activations.into_iter().cycle()) {
            compare(
                input,
                weight,
                |x, w, b| conv3d(x, w, Some(b), p, act),
                |x, w, b| {
                    let options = ConvOptions::new([1, 1, 1], [p, p, p], [1, 1, 1], 1);
                    act.apply(burn::tensor::module::conv3d(x, w, Some(b), options))
                },
                &format!("conv3d {input:?} {weight:?} p={p} {act:?}"),
            );
        }
        for (input, o) in [([2, 3, 2, 3, 4], 5), ([1, 4, 3, 2, 2], 2)] {
            let act = Activation::Leaky(0.3);
            compare(
                input,
                [input[1], o, 2, 2, 2],
                |x, w, b| up2x(x, w, Some(b), act),
                |x, w, b| {
                    let options =
                        ConvTransposeOptions::new([2, 2, 2], [0, 0, 0], [0, 0, 0], [1, 1, 1], 1);
                    act.apply(burn::tensor::module::conv_transpose3d(
                        x,
                        w,
                        Some(b),
                        options,
                    ))
                },
                &format!("up2x {input:?} → {o}"),
            );
        }
    }
}
