//! Which burn backend a run's device means.

use covflow_kernels::Device;

/// A device this binary was built without.
#[derive(Debug, thiserror::Error)]
#[error(
    "this covflow was built without {0} support\n  help: rebuild with `cargo build --release --features {0}` or pass --device cpu"
)]
pub struct DeviceNotBuilt(pub Device);

/// Evaluates `$body` with `$B` bound to the autodiff backend of `$device`: NdArray on the CPU,
/// burn's wgpu backend, or CUDA when built in.
macro_rules! on_autodiff_backend {
    ($device:expr, $B:ident => $body:expr) => {
        match $device {
            Device::Cpu => {
                type $B = burn::backend::Autodiff<burn::backend::NdArray>;
                Ok::<_, DeviceNotBuilt>($body)
            }
            Device::Wgpu => {
                type $B = burn::backend::Autodiff<burn::backend::Wgpu>;
                Ok::<_, DeviceNotBuilt>($body)
            }
            Device::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    type $B = burn::backend::Autodiff<burn::backend::Cuda>;
                    Ok::<_, DeviceNotBuilt>($body)
                }
                #[cfg(not(feature = "cuda"))]
                Err(DeviceNotBuilt(Device::Cuda))
            }
        }
    };
}
