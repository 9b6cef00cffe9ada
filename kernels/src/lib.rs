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

/// Deterministic pseudo-random values in [0, 1) (xorshift64, 24 bits each), for kernel checks
/// and the tests of the crates that build on these kernels.
pub fn random_unit(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Deterministic pseudo-random HU-like values in [-2048, 952), for kernel checks and tests.
pub(crate) fn random_hu(n: usize, seed: u64) -> Vec<f32> {
    random_unit(n, seed)
        .into_iter()
        .map(|u| u * 3000.0 - 2048.0)
        .collect()
}

/// Largest absolute difference between two equally long slices (a kernel against its reference).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared outputs differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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

mod adam;
pub mod batch_norm;
mod bench;
mod blur;
mod ccl;
mod device;
mod losses;
mod morphology;
mod ops;
pub mod perlin;
mod pool3d;
mod pseudo_mask;
mod resample;
mod slice_counts;
pub mod unfold;
mod upsample;

pub use adam::{AdamScalars, adam_kernel, adam_reference, launch_adam};
pub use bench::{KernelReport, bench_kernels, copy_kernel};
pub use blur::{blur_axis, blur_axis_kernel, blur_axis_reference, gaussian_weights};
pub use ccl::{
    BACKGROUND, Connectivity, ccl_compress_kernel, ccl_init_kernel, ccl_merge_kernel,
    label_components, label_components_reference, launch_label_components,
};
pub use losses::{
    launch_pixel_losses, launch_pixel_losses_backward, pixel_loss_cubes, pixel_losses,
    pixel_losses_backward, pixel_losses_backward_kernel, pixel_losses_backward_reference,
    pixel_losses_kernel, pixel_losses_reference,
};
pub use morphology::{
    Morph, ellipsoid_offsets, launch_morph, morph, morph_kernel, morph_reference,
};

pub use device::{Device, UnknownDevice};
pub use ops::Kernels;
pub use pool3d::{
    launch_max_pool3d, launch_max_pool3d_backward, max_pool3d, max_pool3d_backward_kernel,
    max_pool3d_backward_reference, max_pool3d_kernel, max_pool3d_reference, pooled_shape,
};
pub use pseudo_mask::{
    launch_pseudo_mask, pseudo_mask, pseudo_mask_kernel, pseudo_mask_reference, slice_ranges_kernel,
};
pub use resample::{Shape3, resample_window, resample_window_kernel, resample_window_reference};
pub use slice_counts::{
    COUNTS, launch_slice_counts, slice_counts, slice_counts_kernel, slice_counts_reference,
};
pub use upsample::{
    launch_upsample2x, launch_upsample2x_backward, upsample2x_backward_kernel,
    upsample2x_backward_reference, upsample2x_kernel, upsample2x_reference,
};
