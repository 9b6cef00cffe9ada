//! The models' benchmarks on a chosen device (`covflow bench transunet`, `covflow bench conv`).

use covflow_kernels::Device;

use crate::{ConvCheck, ConvImpl, TrainingBench, TransUNetConfig, bench_training};
use crate::{check_conv, transunet_conv_shapes};

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
                Ok($body)
            }
            Device::Wgpu => {
                type $B = burn::backend::Autodiff<burn::backend::Wgpu>;
                Ok($body)
            }
            Device::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    type $B = burn::backend::Autodiff<burn::backend::Cuda>;
                    Ok($body)
                }
                #[cfg(not(feature = "cuda"))]
                Err(DeviceNotBuilt(Device::Cuda))
            }
        }
    };
}

/// Trains the seed TransUNet for a few steps on `device` and reports first-step and steady-state
/// times. `width_div` shrinks every width (for CPU smoke runs); 1 is the seed configuration.
pub fn transunet(
    device: Device,
    batch: usize,
    steps: usize,
    width_div: usize,
    conv: ConvImpl,
) -> Result<TrainingBench, DeviceNotBuilt> {
    let config = TransUNetConfig::new()
        .with_out_channels(128 / width_div)
        .with_mlp_dim(512 / width_div)
        .with_conv(conv);
    let progress = |m: &str| eprintln!("[bench transunet {device} batch {batch}] {m}");
    on_autodiff_backend!(device, B => {
        bench_training::<B>(&config, &Default::default(), batch, steps, progress)
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
