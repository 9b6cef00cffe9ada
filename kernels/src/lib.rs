//! covflow's cubecl kernels. Every kernel is generic over the cubecl runtime and has a plain CPU
//! reference beside it; the tests run each on fresh random inputs against its reference.

mod device;

pub use device::{Device, UnknownDevice};
