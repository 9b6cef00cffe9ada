//! covflow's cubecl kernels. Every kernel is generic over the cubecl runtime and has a plain CPU
//! reference beside it; the tests run each on fresh random inputs against its reference.

mod device;
mod resample;

pub use device::{Device, UnknownDevice};
pub use resample::{Shape3, resample_window, resample_window_kernel, resample_window_reference};
