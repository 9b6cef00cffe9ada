//! covflow's cubecl kernels. Every kernel is generic over the cubecl runtime and has a plain CPU
//! reference beside it; the tests run each on fresh random inputs against its reference.

/// A cube count that covers `n` units in cubes of `threads`, spread over two dimensions when one
/// would exceed the 65 535-cube limit some APIs (Vulkan, WebGPU) put on each. Kernels index with
/// the linear `ABSOLUTE_POS` and bounds-check it.
pub(crate) fn cube_count_for(n: usize, threads: u32) -> cubecl::prelude::CubeCount {
    let cubes = (n as u32).div_ceil(threads).max(1);
    let x = cubes.min(65_535);
    cubecl::prelude::CubeCount::Static(x, cubes.div_ceil(x), 1)
}

/// Checks and times every kernel on `device` (the CPU device runs nothing: its kernels are the
/// references themselves).
pub fn bench_on(device: Device, reps: usize) -> Result<Vec<KernelReport>, String> {
    use cubecl::Runtime;
    match device {
        Device::Cpu => Ok(Vec::new()),
        Device::Wgpu => {
            let client = cubecl::wgpu::WgpuRuntime::client(&Default::default());
            Ok(bench_kernels(&client, reps))
        }
        Device::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let client = cubecl::cuda::CudaRuntime::client(&Default::default());
                Ok(bench_kernels(&client, reps))
            }
            #[cfg(not(feature = "cuda"))]
            Err("this covflow was built without CUDA; rebuild with `--features cuda`".into())
        }
    }
}

mod bench;
mod device;
mod resample;

pub use bench::{KernelReport, bench_kernels, copy_kernel};

pub use device::{Device, UnknownDevice};
pub use resample::{Shape3, resample_window, resample_window_kernel, resample_window_reference};
