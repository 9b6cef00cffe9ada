//! Benchmarks of the models on a chosen device (`covflow bench`).

use crate::StageError;
use crate::models::{ConvImpl, TrainingBench, TransUNetConfig, bench_training};
use covflow_kernels::Device;

/// Trains the seed TransUNet for a few steps on `device` and reports first-step and steady-state
/// times. `width_div` shrinks every width (for CPU smoke runs); 1 is the seed configuration.
pub fn transunet(
    device: Device,
    batch: usize,
    steps: usize,
    width_div: usize,
    conv: ConvImpl,
) -> Result<TrainingBench, StageError> {
    let config = TransUNetConfig::new()
        .with_out_channels(128 / width_div)
        .with_mlp_dim(512 / width_div)
        .with_conv(conv);
    let progress = |m: &str| eprintln!("[bench transunet {device} batch {batch}] {m}");
    Ok(match device {
        Device::Cpu => {
            type B = burn::backend::Autodiff<burn::backend::NdArray>;
            bench_training::<B>(&config, &Default::default(), batch, steps, progress)
        }
        Device::Wgpu => {
            type B = burn::backend::Autodiff<burn::backend::Wgpu>;
            bench_training::<B>(&config, &Default::default(), batch, steps, progress)
        }
        Device::Cuda => {
            #[cfg(feature = "cuda")]
            {
                type B = burn::backend::Autodiff<burn::backend::Cuda>;
                bench_training::<B>(&config, &Default::default(), batch, steps, progress)
            }
            #[cfg(not(feature = "cuda"))]
            return Err(StageError::DeviceNotBuilt(device));
        }
    })
}
