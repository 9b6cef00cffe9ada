//! Every kernel behind one device switch: a stage asks [`Kernels::on`] for its run's device and
//! calls the operations; `cpu` runs the references, `wgpu` and `cuda` the cubecl kernels.

use cubecl::Runtime;
use cubecl::prelude::ComputeClient;

use crate::{
    Connectivity, Device, Morph, Shape3, blur_axis, blur_axis_reference, label_components,
    label_components_reference, morph, morph_reference, pseudo_mask, pseudo_mask_reference,
    resample_window, resample_window_reference, slice_counts, slice_counts_reference,
};

/// The kernels of one device.
///
/// ```
/// use covflow_kernels::{Device, Kernels};
/// let k = Kernels::on(Device::Cpu).unwrap();
/// assert_eq!(k.label_components(&[1, 0, 1], [1, 1, 3], [true; 3])[2], 2);
/// ```
pub enum Kernels {
    /// The plain CPU references.
    Cpu,
    /// cubecl on wgpu.
    Wgpu(ComputeClient<cubecl::wgpu::WgpuRuntime>),
    /// cubecl on CUDA.
    #[cfg(feature = "cuda")]
    Cuda(ComputeClient<cubecl::cuda::CudaRuntime>),
}

/// Runs `$gpu` with `client` bound to the device's client, or `$cpu` on the CPU.
macro_rules! dispatch {
    ($self:expr, $cpu:expr, |$client:ident| $gpu:expr) => {
        match $self {
            Kernels::Cpu => $cpu,
            Kernels::Wgpu($client) => $gpu,
            #[cfg(feature = "cuda")]
            Kernels::Cuda($client) => $gpu,
        }
    };
}

impl Kernels {
    /// The kernels of `device`; an error when this binary lacks the device's runtime.
    pub fn on(device: Device) -> Result<Self, String> {
        match device {
            Device::Cpu => Ok(Kernels::Cpu),
            Device::Wgpu => Ok(Kernels::Wgpu(cubecl::wgpu::WgpuRuntime::client(
                &Default::default(),
            ))),
            #[cfg(feature = "cuda")]
            Device::Cuda => Ok(Kernels::Cuda(cubecl::cuda::CudaRuntime::client(
                &Default::default(),
            ))),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => Err(
                "this covflow was built without CUDA\n  help: rebuild with `cargo build --release --features cuda` or pass --device cpu"
                    .into(),
            ),
        }
    }

    /// [`crate::blur_axis`].
    pub fn blur_axis(&self, input: &[f32], shape: Shape3, axis: usize, w: &[f32]) -> Vec<f32> {
        dispatch!(self, blur_axis_reference(input, shape, axis, w), |c| {
            blur_axis(c, input, shape, axis, w)
        })
    }

    /// [`crate::resample_window`].
    pub fn resample_window(
        &self,
        input: &[f32],
        shape: Shape3,
        out: Shape3,
        window: Option<(f32, f32)>,
    ) -> Vec<f32> {
        dispatch!(
            self,
            resample_window_reference(input, shape, out, window),
            |c| resample_window(c, input, shape, out, window)
        )
    }

    /// [`crate::label_components`].
    pub fn label_components(&self, mask: &[u8], shape: Shape3, connect: Connectivity) -> Vec<u32> {
        dispatch!(
            self,
            label_components_reference(mask, shape, connect),
            |c| label_components(c, mask, shape, connect)
        )
    }

    /// [`crate::morph`].
    pub fn morph(&self, mask: &[u8], shape: Shape3, offsets: &[[i32; 3]], op: Morph) -> Vec<u8> {
        dispatch!(self, morph_reference(mask, shape, offsets, op), |c| {
            morph(c, mask, shape, offsets, op)
        })
    }

    /// [`crate::pseudo_mask`]: the difference volume and its slice sums.
    pub fn pseudo_mask(
        &self,
        scan: &[f32],
        twin: &[f32],
        lung: &[f32],
        shape: Shape3,
    ) -> (Vec<f32>, Vec<f64>) {
        dispatch!(self, pseudo_mask_reference(scan, twin, lung, shape), |c| {
            pseudo_mask(c, scan, twin, lung, shape)
        })
    }

    /// [`crate::slice_counts`]: `[tp, fp, fn, tn, lung]` per slice.
    pub fn slice_counts(
        &self,
        score: &[f32],
        lesion: &[f32],
        lung: &[f32],
        shape: Shape3,
        threshold: f32,
    ) -> Vec<[u32; 5]> {
        dispatch!(
            self,
            slice_counts_reference(score, lesion, lung, shape, threshold),
            |c| slice_counts(c, score, lesion, lung, shape, threshold)
        )
    }
}
