//! What covflow's models need from a backend beyond burn's own operations.
//!
//! [`ModelBackend`] has these operations, each with a provided (portable) implementation and an
//! override on burn's cubecl backends (wgpu, CUDA), registered with burn's autodiff as one node:
//! - the TransUNet decoder's bilinear ×2 upsampling (burn 0.21 has no backward for it): the
//!   exact matrix form everywhere, covflow's cubecl kernels on cubecl backends;
//! - the GAN's 3-D max-pooling (burn has none): burn's 2-D pooling and a max over depth pairs,
//!   differentiated by burn, everywhere; our forward and backward kernels on cubecl backends;
//! - Perlin noise fields for the GAN's augmentation, made on the device where the batch lives;
//! - convolution by implicit GEMM (burn-cubecl's `ConvStrategy::ImplicitGemm`, forward and both
//!   backward passes), which burn only reaches through autotune — whose compile volume kept the
//!   first training step from finishing (BENCHMARKS.md). It needs the device's matrix units
//!   (CMMA); where the kernel cannot be set up, burn's default convolution runs instead, with a
//!   warning once. On NdArray it is covflow's host convolution (im2col + strided GEMM,
//!   [`ModelBackend::HOST_CONV`]); elsewhere burn's `conv2d` and its backward;
//! - the im2col columns of a convolution and their adjoint (one kernel each on cubecl backends);
//! - batch normalisation with its ReLU, forward and backward (four kernels on cubecl backends);
//! - the segmenter's pixel losses and the Adam step (one kernel each on cubecl backends).

use std::borrow::Cow;
use std::sync::Once;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ConvOptions, FloatTensor, FloatTensorOps, ModuleOps};
use burn::tensor::{Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive, backend::Backend};
use burn_cubecl::kernel::conv::{
    ConvStrategy, conv_data_backward, conv_forward, conv_weight_backward,
};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, IntElement, tensor::CubeTensor};
use covflow_kernels::perlin::{Fractal, Permutation};
use covflow_kernels::unfold::Unfold;

use crate::batch_norm::{BatchNormForward, BatchNormInputs, BatchNormSaved};
use crate::gan::max_pool3d_plain;
use crate::gan_ops::{Activated, Conv3dGeometry, Up2xGeometry};
use crate::losses::{mse, sensitivity_bce};
use crate::upsample::{upsample2x_backward_matrix, upsample2x_matrix};

/// The operations covflow's models take from a backend; see the module documentation.
pub trait ModelBackend: Backend {
    /// Bilinear ×2 upsampling (align_corners): `[N, C, H, W]` → `[N, C, 2H, 2W]`.
    fn upsample2x(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(x));
        upsample2x_matrix(x).into_primitive().tensor()
    }

    /// The gradient for the upsampling's `[N, C, H, W]` input, given its output's gradient.
    fn upsample2x_backward(grad: FloatTensor<Self>, input: Shape) -> FloatTensor<Self> {
        let g = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(grad));
        upsample2x_backward_matrix(g, [input[0], input[1], input[2], input[3]])
            .into_primitive()
            .tensor()
    }

    /// Whether [`ModelBackend::max_pool3d_backward`] is this backend's own operation (a kernel
    /// on cubecl backends, a parallel host pass on NdArray). Where it is not, burn
    /// differentiates the plain composition ([`max_pool3d_plain`]) instead.
    const POOL3D_KERNEL: bool = false;

    /// 2 × 2 × 2 max-pooling with stride 2 of `[N, C, D, H, W]` (odd sizes floored).
    fn max_pool3d(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = Tensor::<Self, 5>::from_primitive(TensorPrimitive::Float(x));
        max_pool3d_plain(x).into_primitive().tensor()
    }

    /// The gradient for [`ModelBackend::max_pool3d`]'s input `x`, given its output's gradient
    /// (each window's first maximum takes it). Provided through the host reference; cubecl
    /// backends run the kernel.
    fn max_pool3d_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = Tensor::<Self, 5>::from_primitive(TensorPrimitive::Float(x));
        let g = Tensor::<Self, 5>::from_primitive(TensorPrimitive::Float(grad));
        let dims = x.dims();
        let device = x.device();
        let values: Vec<f32> = x.into_data().convert::<f32>().to_vec().expect("f32 values");
        let grad: Vec<f32> = g.into_data().convert::<f32>().to_vec().expect("f32 values");
        let out = covflow_kernels::max_pool3d_backward_reference(
            &values,
            &grad,
            dims[0] * dims[1],
            [dims[2], dims[3], dims[4]],
        );
        Tensor::<Self, 5>::from_data(TensorData::new(out, dims), &device)
            .into_primitive()
            .tensor()
    }

    /// A float tensor's values in order, on the host: borrowed where the backend keeps them
    /// there in order (NdArray), copied otherwise.
    fn host_read(x: &FloatTensor<Self>) -> Cow<'_, [f32]> {
        Cow::Owned(host_values::<Self>(x.clone()))
    }

    /// Whether [`ModelBackend::gan_conv3d`] and [`ModelBackend::gan_up2x`] are this backend's own
    /// operations, which [`crate::conv3d`] and [`crate::up2x`] then run as one autodiff node
    /// each. Where they are not, burn differentiates their compositions of tensor operations.
    const HOST_GAN_OPS: bool = false;

    /// The GAN's 3-D convolution (see [`crate::host_conv3d`]), then the LeakyReLU of `slope`
    /// where one is given (0: ReLU): `[N, O, Do, Ho, Wo]`. Provided on the host.
    fn gan_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: Conv3dGeometry,
        slope: Option<f32>,
    ) -> FloatTensor<Self> {
        crate::gan_ops::host_forward::<Self, _>(x, weight, bias, g, slope)
    }

    /// `[dx, dW, db]` of [`ModelBackend::gan_conv3d`] for its output's gradient, each only where
    /// `need` asks; `activated` holds the output and slope where there was an activation.
    /// Provided on the host.
    fn gan_conv3d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: Conv3dGeometry,
        need: [bool; 3],
        activated: Activated<Self>,
    ) -> [Option<FloatTensor<Self>>; 3] {
        crate::gan_ops::host_backward::<Self, _>(x, weight, grad, g, need, activated)
    }

    /// The generator's ×2 transposed convolution (see [`crate::host_up2x`]), then the
    /// activation as in [`ModelBackend::gan_conv3d`]: `[N, O, 2D, 2H, 2W]`. Provided on the host.
    fn gan_up2x(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: Up2xGeometry,
        slope: Option<f32>,
    ) -> FloatTensor<Self> {
        crate::gan_ops::host_forward::<Self, _>(x, weight, bias, g, slope)
    }

    /// `[dx, dW, db]` of [`ModelBackend::gan_up2x`], as [`ModelBackend::gan_conv3d_backward`].
    /// Provided on the host.
    fn gan_up2x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: Up2xGeometry,
        need: [bool; 3],
        activated: Activated<Self>,
    ) -> [Option<FloatTensor<Self>>; 3] {
        crate::gan_ops::host_backward::<Self, _>(x, weight, grad, g, need, activated)
    }

    /// Fractal Perlin noise fields, one per `(table, fractal)`, as `[fields, rows, cols]` on
    /// `device` (made there by a kernel on cubecl backends). One octave count for all.
    fn fractal_slices(
        fields: &[(Permutation, Fractal)],
        rows: usize,
        cols: usize,
        device: &Self::Device,
    ) -> FloatTensor<Self> {
        let values = covflow_kernels::perlin::fractal_slices(fields, rows, cols);
        Tensor::<Self, 3>::from_data(TensorData::new(values, [fields.len(), rows, cols]), device)
            .into_primitive()
            .tensor()
    }

    /// Whether [`ModelBackend::adam_step`] is this backend's own fused kernel. Where it is not,
    /// [`crate::FusedAdam`] runs burn's `Adam`, so CPU training stays exactly burn's.
    const ADAM_KERNEL: bool = false;

    /// One Adam step of a parameter tensor: `(parameter, m, v)` after it; `moments` are `(m, v)`
    /// before it, `None` at the first step. Provided through the host reference; cubecl backends
    /// run one kernel.
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        s: covflow_kernels::AdamScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = param.shape();
        let flat = Shape::new([shape.num_elements()]);
        let host = |x: FloatTensor<Self>| -> Vec<f32> {
            Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(Self::float_reshape(
                x,
                flat.clone(),
            )))
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 values")
        };
        let device = Self::float_device(&param);
        let first = moments.is_none();
        let (p, g) = (host(param), host(grad));
        let (m, v) = match moments {
            Some((m, v)) => (host(m), host(v)),
            None => (Vec::new(), Vec::new()),
        };
        let (p, m, v) = covflow_kernels::adam_reference(&p, &g, &m, &v, s, first);
        let back = |x: Vec<f32>| Self::float_from_data(TensorData::new(x, shape.clone()), &device);
        (back(p), back(m), back(v))
    }

    /// Whether [`ModelBackend::pixel_losses`] is this backend's own fused kernel. Where it is
    /// not, the segmenter composes the losses from tensor operations, differentiated by burn.
    const LOSS_KERNEL: bool = false;

    /// `[mse, sensitivity]` of `logits` against `target` (any equal shapes): the means of
    /// [`crate::mse`] and [`crate::sensitivity_bce`] (β = `beta`), as a `[2]` tensor.
    fn pixel_losses(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        beta: f64,
    ) -> FloatTensor<Self> {
        composed_pixel_losses::<Self>(logits, target, beta)
    }

    /// The gradient for [`ModelBackend::pixel_losses`]'s logits given the `[2]` gradient of its
    /// output; the target gets none. Provided through the host reference.
    fn pixel_losses_backward(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        beta: f64,
    ) -> FloatTensor<Self> {
        let shape = logits.shape();
        let device = Self::float_device(&logits);
        let host = |x: FloatTensor<Self>| -> Vec<f32> {
            flat::<Self>(x)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 values")
        };
        let (l, t, g) = (host(logits), host(target), host(grad));
        let out =
            covflow_kernels::pixel_losses_backward_reference(&l, &t, [g[0], g[1]], beta as f32);
        let n = out.len();
        let out = Tensor::<Self, 1>::from_data(TensorData::new(out, [n]), &device);
        Self::float_reshape(out.into_primitive().tensor(), shape)
    }

    /// The columns `[N, C·k·k, Ho·Wo]` of `x: [N, C, H, W]` for a k × k convolution, rows
    /// ordered `(c, dy, dx)` as the weight's `[O, C, k, k]` (see `covflow_kernels::unfold`).
    /// Provided on the host (equal to the kernel's reference); cubecl backends run one kernel.
    fn unfold2d(x: FloatTensor<Self>, u: Unfold) -> FloatTensor<Self> {
        let device = Self::float_device(&x);
        let columns = crate::host_conv::unfold(&host_values::<Self>(x), u);
        Self::float_from_data(TensorData::new(columns, u.columns_shape()), &device)
    }

    /// The adjoint of [`ModelBackend::unfold2d`]: the gradient for `x` given the columns'.
    /// Provided on the host (equal to the kernel's reference); cubecl backends run one kernel.
    fn fold2d(columns: FloatTensor<Self>, u: Unfold) -> FloatTensor<Self> {
        let device = Self::float_device(&columns);
        let x = crate::host_conv::fold(&host_values::<Self>(columns), u);
        Self::float_from_data(TensorData::new(x, u.input), &device)
    }

    /// Whether the batch normalisation operations below are this backend's own kernels. Where
    /// they are not, [`crate::batch_norm_relu`] runs burn's `BatchNorm` and `relu`, so CPU
    /// training stays exactly burn's.
    const BATCH_NORM_KERNEL: bool = false;

    /// Batch normalisation of `x: [N, C, …]` with the batch's statistics, then the ReLU where
    /// `relu`: the output, the statistics and the running statistics after this batch.
    /// Provided through the host reference; cubecl backends run two kernels.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        p: BatchNormInputs<Self>,
        relu: bool,
    ) -> BatchNormForward<Self> {
        crate::batch_norm::host_train::<Self>(x, p, relu)
    }

    /// `[dx, dγ, dβ]` of [`ModelBackend::batch_norm_train`] for its output's gradient `grad`.
    /// Provided through the host reference; cubecl backends run two kernels.
    fn batch_norm_backward(
        saved: BatchNormSaved<Self>,
        grad: FloatTensor<Self>,
        relu: bool,
    ) -> [FloatTensor<Self>; 3] {
        crate::batch_norm::host_backward::<Self>(saved, grad, relu)
    }

    /// Batch normalisation with the running statistics (inference), then the ReLU where `relu`.
    /// Provided through the host reference; cubecl backends run one kernel.
    fn batch_norm_infer(
        x: FloatTensor<Self>,
        p: BatchNormInputs<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        crate::batch_norm::host_infer::<Self>(x, p, relu)
    }

    /// Whether [`ModelBackend::conv2d_gemm`] is the host's im2col + GEMM, which
    /// [`crate::conv2d_im2col`] then runs for the whole convolution: burn-ndarray's `matmul`
    /// copies both operands and its output at every call.
    const HOST_CONV: bool = false;

    /// 2-D convolution without bias as a GEMM: burn-cubecl's implicit GEMM on cubecl backends,
    /// im2col + GEMM on the host for NdArray, burn's `conv2d` elsewhere.
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// The gradient of [`ModelBackend::conv2d_gemm`] for its input.
    fn conv2d_gemm_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    /// The gradient of [`ModelBackend::conv2d_gemm`] for its weight.
    fn conv2d_gemm_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, options)
    }
}

/// A float tensor's elements in order, on the host.
pub(crate) fn host_values<B: Backend>(x: FloatTensor<B>) -> Vec<f32> {
    let data = burn::tensor::try_read_sync(B::float_into_data(x))
        .expect("a synchronous read")
        .expect("the tensor's data");
    data.convert::<f32>().into_vec().expect("f32 values")
}

/// A float tensor of any rank as its elements in order.
fn flat<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    Tensor::from_primitive(TensorPrimitive::Float(B::float_reshape(x, Shape::new([n]))))
}

/// `[mse, sensitivity]` composed from tensor operations (differentiated by burn under autodiff).
fn composed_pixel_losses<B: Backend>(
    logits: FloatTensor<B>,
    target: FloatTensor<B>,
    beta: f64,
) -> FloatTensor<B> {
    let n = logits.shape().num_elements();
    let (l, t) = (
        flat::<B>(logits).reshape([1, 1, 1, n]),
        flat::<B>(target).reshape([1, 1, 1, n]),
    );
    Tensor::cat(
        vec![mse(l.clone(), t.clone()), sensitivity_bce(l, t, beta)],
        0,
    )
    .into_primitive()
    .tensor()
}

/// The geometry of a convolution [`crate::host_conv`] computes (square kernel, equal strides and
/// paddings, no dilation or groups), or `None`.
fn host_geometry(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Option<Unfold> {
    let square = weight[2] == weight[3]
        && options.stride[0] == options.stride[1]
        && options.padding[0] == options.padding[1]
        && options.dilation == [1, 1]
        && options.groups == 1;
    square.then(|| Unfold {
        input: [x[0], x[1], x[2], x[3]],
        kernel: weight[2],
        stride: options.stride[0],
        padding: options.padding[0],
    })
}

/// An NdArray float tensor's values in order, borrowed where its layout is standard:
/// burn-ndarray's `into_data` walks a tensor that is shared (as the autodiff graph shares every
/// input it keeps) element by element through dynamic-rank indices, which cost more than the
/// convolution itself.
fn ndarray_values(x: &burn_ndarray::NdArrayTensor) -> std::borrow::Cow<'_, [f32]> {
    if let burn_ndarray::NdArrayTensor::F32(storage) = x {
        let view = storage.view();
        if let Some(values) = view.to_slice() {
            return std::borrow::Cow::Borrowed(values);
        }
        return std::borrow::Cow::Owned(view.iter().copied().collect());
    }
    std::borrow::Cow::Owned(host_values::<NdArray>(x.clone()))
}

/// burn-ndarray: convolutions as host im2col + GEMM ([`crate::host_conv`]), the GAN's 3-D
/// operations on the host ([`crate::gan_ops`]).
impl ModelBackend for NdArray {
    const HOST_CONV: bool = true;
    const HOST_GAN_OPS: bool = true;
    const POOL3D_KERNEL: bool = true;

    fn host_read(x: &FloatTensor<Self>) -> Cow<'_, [f32]> {
        ndarray_values(x)
    }

    fn max_pool3d(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let dims: [usize; 5] = std::array::from_fn(|i| shape[i]);
        let y = crate::host_pool3d::max_pool3d(&ndarray_values(&x), dims);
        let [d, h, w] = covflow_kernels::pooled_shape([dims[2], dims[3], dims[4]]);
        let device = Self::float_device(&x);
        Self::float_from_data(TensorData::new(y, [dims[0], dims[1], d, h, w]), &device)
    }

    fn max_pool3d_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let dims: [usize; 5] = std::array::from_fn(|i| shape[i]);
        let dx = crate::host_pool3d::max_pool3d_backward(
            &ndarray_values(&x),
            &ndarray_values(&grad),
            dims,
        );
        let device = Self::float_device(&x);
        Self::float_from_data(TensorData::new(dx, dims), &device)
    }

    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        let Some(u) = host_geometry(&xs, &ws, &options) else {
            return Self::conv2d(x, weight, None, options);
        };
        let device = Self::float_device(&x);
        let o = ws[0];
        let y = crate::host_conv::conv_forward(&ndarray_values(&x), &ndarray_values(&weight), o, u);
        let [ho, wo] = u.output_size();
        Self::float_from_data(TensorData::new(y, [xs[0], o, ho, wo]), &device)
    }

    fn conv2d_gemm_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        let Some(u) = host_geometry(&xs, &ws, &options) else {
            return Self::conv2d_x_backward(x, weight, grad, options);
        };
        let device = Self::float_device(&x);
        let dx = crate::host_conv::conv_input_grad(
            &ndarray_values(&grad),
            &ndarray_values(&weight),
            ws[0],
            u,
        );
        Self::float_from_data(TensorData::new(dx, xs), &device)
    }

    fn conv2d_gemm_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        let Some(u) = host_geometry(&xs, &ws, &options) else {
            return Self::conv2d_weight_backward(x, weight, grad, options);
        };
        let device = Self::float_device(&x);
        let dw = crate::host_conv::conv_weight_grad(
            &ndarray_values(&x),
            &ndarray_values(&grad),
            ws[0],
            u,
        );
        Self::float_from_data(TensorData::new(dw, ws), &device)
    }
}

#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> ModelBackend for burn_fusion::Fusion<B> {}

fn warn_gemm_unavailable(what: &str, err: impl std::fmt::Debug) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "implicit-GEMM convolution unavailable on this device ({what}: {err:?}); using burn's default convolution"
        )
    });
}

/// A float32 tensor of `shape` over `handle`, on `like`'s device.
pub(crate) fn f32_like<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Shape,
    handle: cubecl::server::Handle,
) -> CubeTensor<R> {
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        burn::tensor::DType::F32,
    )
}

/// The upsampling kernels and burn-cubecl's implicit-GEMM convolution, on float32 tensors.
impl<R: CubeRuntime, I: IntElement, BT: BoolElement> ModelBackend for CubeBackend<R, f32, I, BT> {
    const POOL3D_KERNEL: bool = true;

    fn max_pool3d(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = burn_cubecl::kernel::into_contiguous(x);
        let s = x.shape();
        let dims = [s[2], s[3], s[4]];
        let out =
            covflow_kernels::launch_max_pool3d::<R>(&x.client, x.handle.clone(), s[0] * s[1], dims);
        let [d, h, w] = covflow_kernels::pooled_shape(dims);
        f32_like(&x, Shape::new([s[0], s[1], d, h, w]), out)
    }

    const ADAM_KERNEL: bool = true;

    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        s: covflow_kernels::AdamScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let p = burn_cubecl::kernel::into_contiguous(param);
        let g = burn_cubecl::kernel::into_contiguous(grad);
        let first = moments.is_none();
        let (m, v) = match moments {
            Some((m, v)) => (
                burn_cubecl::kernel::into_contiguous(m).handle,
                burn_cubecl::kernel::into_contiguous(v).handle,
            ),
            None => (g.handle.clone(), g.handle.clone()),
        };
        let n = p.shape().num_elements();
        let (p2, m2, v2) = covflow_kernels::launch_adam::<R>(
            &p.client,
            p.handle.clone(),
            g.handle.clone(),
            m,
            v,
            n,
            s,
            first,
        );
        let shape = p.shape();
        (
            f32_like(&p, shape.clone(), p2),
            f32_like(&p, shape.clone(), m2),
            f32_like(&p, shape, v2),
        )
    }

    fn unfold2d(x: FloatTensor<Self>, u: Unfold) -> FloatTensor<Self> {
        let x = burn_cubecl::kernel::into_contiguous(x);
        let columns = covflow_kernels::unfold::launch_unfold::<R>(&x.client, x.handle.clone(), u);
        f32_like(&x, Shape::new(u.columns_shape()), columns)
    }

    fn fold2d(columns: FloatTensor<Self>, u: Unfold) -> FloatTensor<Self> {
        let c = burn_cubecl::kernel::into_contiguous(columns);
        let x = covflow_kernels::unfold::launch_fold::<R>(&c.client, c.handle.clone(), u);
        f32_like(&c, Shape::new(u.input), x)
    }

    const BATCH_NORM_KERNEL: bool = true;

    fn batch_norm_train(
        x: FloatTensor<Self>,
        p: BatchNormInputs<Self>,
        relu: bool,
    ) -> BatchNormForward<Self> {
        crate::batch_norm::cube_train(x, p, relu)
    }

    fn batch_norm_backward(
        saved: BatchNormSaved<Self>,
        grad: FloatTensor<Self>,
        relu: bool,
    ) -> [FloatTensor<Self>; 3] {
        crate::batch_norm::cube_backward(saved, grad, relu)
    }

    fn batch_norm_infer(
        x: FloatTensor<Self>,
        p: BatchNormInputs<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        crate::batch_norm::cube_infer(x, p, relu)
    }

    const LOSS_KERNEL: bool = true;

    fn pixel_losses(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        beta: f64,
    ) -> FloatTensor<Self> {
        let l = burn_cubecl::kernel::into_contiguous(logits);
        let t = burn_cubecl::kernel::into_contiguous(target);
        let n = l.shape().num_elements();
        let partials = covflow_kernels::launch_pixel_losses::<R>(
            &l.client,
            l.handle.clone(),
            t.handle.clone(),
            n,
            beta as f32,
        );
        let cubes = covflow_kernels::pixel_loss_cubes(n);
        let partials = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(f32_like(
            &l,
            Shape::new([cubes, 2]),
            partials,
        )));
        (partials.sum_dim(0).reshape([2]) / n.max(1) as f32)
            .into_primitive()
            .tensor()
    }

    fn pixel_losses_backward(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        beta: f64,
    ) -> FloatTensor<Self> {
        let l = burn_cubecl::kernel::into_contiguous(logits);
        let t = burn_cubecl::kernel::into_contiguous(target);
        let g = burn_cubecl::kernel::into_contiguous(grad);
        let n = l.shape().num_elements();
        let out = covflow_kernels::launch_pixel_losses_backward::<R>(
            &l.client,
            l.handle.clone(),
            t.handle.clone(),
            g.handle.clone(),
            n,
            beta as f32,
        );
        f32_like(&l, l.shape(), out)
    }

    fn max_pool3d_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = burn_cubecl::kernel::into_contiguous(x);
        let g = burn_cubecl::kernel::into_contiguous(grad);
        let s = x.shape();
        let out = covflow_kernels::launch_max_pool3d_backward::<R>(
            &x.client,
            x.handle.clone(),
            g.handle.clone(),
            s[0] * s[1],
            [s[2], s[3], s[4]],
        );
        f32_like(&x, s, out)
    }

    fn fractal_slices(
        fields: &[(Permutation, Fractal)],
        rows: usize,
        cols: usize,
        device: &Self::Device,
    ) -> FloatTensor<Self> {
        let client = R::client(device);
        let out = covflow_kernels::perlin::launch_fractal_slices::<R>(&client, fields, rows, cols);
        CubeTensor::new_contiguous(
            client,
            device.clone(),
            Shape::new([fields.len(), rows, cols]),
            out,
            burn::tensor::DType::F32,
        )
    }

    fn upsample2x(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = burn_cubecl::kernel::into_contiguous(x);
        let s = x.shape();
        let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
        let out =
            covflow_kernels::launch_upsample2x::<R>(&x.client, x.handle.clone(), planes, h, w);
        f32_like(&x, Shape::new([s[0], s[1], 2 * h, 2 * w]), out)
    }

    fn upsample2x_backward(grad: FloatTensor<Self>, input: Shape) -> FloatTensor<Self> {
        let g = burn_cubecl::kernel::into_contiguous(grad);
        let (planes, h, w) = (input[0] * input[1], input[2], input[3]);
        let out = covflow_kernels::launch_upsample2x_backward::<R>(
            &g.client,
            g.handle.clone(),
            planes,
            h,
            w,
        );
        f32_like(&g, input, out)
    }

    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        conv_forward::<R, 2>(
            x.clone(),
            weight.clone(),
            None,
            options.clone(),
            ConvStrategy::ImplicitGemm,
        )
        .unwrap_or_else(|e| {
            warn_gemm_unavailable("forward", e);
            Self::conv2d(x, weight, None, options)
        })
    }

    fn conv2d_gemm_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        conv_data_backward::<R, 2>(
            grad.clone(),
            weight.clone(),
            x.shape(),
            options.clone(),
            ConvStrategy::ImplicitGemm,
        )
        .unwrap_or_else(|e| {
            warn_gemm_unavailable("input gradient", e);
            Self::conv2d_x_backward(x, weight, grad, options)
        })
    }

    fn conv2d_gemm_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        conv_weight_backward::<R, 2>(
            x.clone(),
            grad.clone(),
            weight.shape(),
            options.clone(),
            ConvStrategy::ImplicitGemm,
        )
        .unwrap_or_else(|e| {
            warn_gemm_unavailable("weight gradient", e);
            Self::conv2d_weight_backward(x, weight, grad, options)
        })
    }
}

/// One autodiff node per operation, whose backward calls the inner backend's.
impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    const LOSS_KERNEL: bool = B::LOSS_KERNEL;

    const BATCH_NORM_KERNEL: bool = B::BATCH_NORM_KERNEL;
    const HOST_CONV: bool = B::HOST_CONV;
    const HOST_GAN_OPS: bool = B::HOST_GAN_OPS;

    fn gan_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: Conv3dGeometry,
        slope: Option<f32>,
    ) -> FloatTensor<Self> {
        crate::gan_ops::autodiff_conv3d::<B, C>(x, weight, bias, g, slope)
    }

    fn gan_up2x(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: Up2xGeometry,
        slope: Option<f32>,
    ) -> FloatTensor<Self> {
        crate::gan_ops::autodiff_up2x::<B, C>(x, weight, bias, g, slope)
    }

    fn unfold2d(x: FloatTensor<Self>, u: Unfold) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Unfold2d;

        impl<B: ModelBackend> Backward<B, 1> for Unfold2d {
            type State = Unfold;

            fn backward(self, ops: Ops<Unfold, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = parent {
                    grads.register::<B>(node.id, B::fold2d(grad, ops.state));
                }
            }
        }

        match Unfold2d
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(u, B::unfold2d(x.primitive, u)),
            OpsKind::UnTracked(prep) => prep.finish(B::unfold2d(x.primitive, u)),
        }
    }

    fn batch_norm_train(
        x: FloatTensor<Self>,
        p: BatchNormInputs<Self>,
        relu: bool,
    ) -> BatchNormForward<Self> {
        crate::batch_norm::autodiff_train(x, p, relu)
    }

    fn batch_norm_infer(
        x: FloatTensor<Self>,
        p: BatchNormInputs<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        crate::batch_norm::autodiff_infer(x, p, relu)
    }

    fn pixel_losses(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        beta: f64,
    ) -> FloatTensor<Self> {
        if !B::LOSS_KERNEL {
            return composed_pixel_losses::<Self>(logits, target, beta);
        }

        #[derive(Debug)]
        struct PixelLosses;

        impl<B: ModelBackend> Backward<B, 1> for PixelLosses {
            /// The logits' checkpoint, the target (data: it gets no gradient), β.
            type State = (NodeId, FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (logits_id, target, beta) = ops.state;
                if let Some(node) = parent {
                    let logits: FloatTensor<B> = checkpointer.retrieve_node_output(logits_id);
                    grads.register::<B>(
                        node.id,
                        B::pixel_losses_backward(logits, target, grad, beta),
                    );
                }
            }
        }

        let target = target.primitive;
        match PixelLosses
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let id = prep.checkpoint(&logits);
                let out = B::pixel_losses(logits.primitive, target.clone(), beta);
                prep.finish((id, target, beta), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::pixel_losses(logits.primitive, target, beta))
            }
        }
    }

    fn max_pool3d(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !B::POOL3D_KERNEL {
            let x = Tensor::<Self, 5>::from_primitive(TensorPrimitive::Float(x));
            return max_pool3d_plain(x).into_primitive().tensor();
        }

        #[derive(Debug)]
        struct MaxPool3d;

        impl<B: ModelBackend> Backward<B, 1> for MaxPool3d {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<NodeId, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = parent {
                    let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
                    grads.register::<B>(node.id, B::max_pool3d_backward(x, grad));
                }
            }
        }

        match MaxPool3d
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                prep.finish(x_id, B::max_pool3d(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool3d(x.primitive)),
        }
    }

    fn fractal_slices(
        fields: &[(Permutation, Fractal)],
        rows: usize,
        cols: usize,
        device: &Self::Device,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::fractal_slices(fields, rows, cols, device))
    }

    fn upsample2x(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Upsample2x;

        impl<B: ModelBackend> Backward<B, 1> for Upsample2x {
            type State = Shape;

            fn backward(self, ops: Ops<Shape, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = parent {
                    grads.register::<B>(node.id, B::upsample2x_backward(grad, ops.state));
                }
            }
        }

        match Upsample2x
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let shape = x.primitive.shape();
                prep.finish(shape, B::upsample2x(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::upsample2x(x.primitive)),
        }
    }

    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dGemm;

        impl<B: ModelBackend> Backward<B, 2> for Conv2dGemm {
            type State = (NodeId, NodeId, ConvOptions<2>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_id, w_id, options) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
                let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_id);
                if let Some(node) = node_w {
                    let g = B::conv2d_gemm_weight_backward(
                        x.clone(),
                        w.clone(),
                        grad.clone(),
                        options.clone(),
                    );
                    grads.register::<B>(node.id, g);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::conv2d_gemm_x_backward(x, w, grad, options));
                }
            }
        }

        match Conv2dGemm
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let w_id = prep.checkpoint(&weight);
                let out = B::conv2d_gemm(x.primitive, weight.primitive, options.clone());
                prep.finish((x_id, w_id, options), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv2d_gemm(x.primitive, weight.primitive, options))
            }
        }
    }
}

/// `x: [N, C, H, W]` convolved with `weight: [O, C, k, k]` (+ `bias`) by implicit GEMM where the
/// backend has it (see [`ModelBackend`]).
pub fn conv2d_implicit_gemm<B: ModelBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let y = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(B::conv2d_gemm(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        options,
    )));
    match bias {
        Some(b) => {
            let o = b.dims()[0];
            y + b.reshape([1, o, 1, 1])
        }
        None => y,
    }
}
