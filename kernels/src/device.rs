//! Which compute device a run uses.

use std::fmt;
use std::str::FromStr;

/// A compute device, chosen once per run (`--device`) and recorded in every manifest.
///
/// ```
/// use covflow_kernels::Device;
/// assert_eq!("wgpu".parse::<Device>().unwrap(), Device::Wgpu);
/// assert!("tpu".parse::<Device>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// Plain CPU references (and burn's NdArray backend): the default without a GPU.
    Cpu,
    /// cubecl's wgpu runtime: any Vulkan/Metal/DX12 GPU, or Mesa's lavapipe on the CPU.
    Wgpu,
    /// cubecl's CUDA runtime (binaries built with the `cuda` feature).
    Cuda,
}

impl Device {
    /// Whether this binary was built with support for the device.
    pub fn compiled_in(self) -> bool {
        match self {
            Device::Cpu | Device::Wgpu => true,
            Device::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The lowercase name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a device name that is not one of `cpu`, `wgpu`, `cuda`.
#[derive(Debug, thiserror::Error)]
#[error("unknown device `{0}`: expected one of cpu, wgpu, cuda")]
pub struct UnknownDevice(String);

impl FromStr for Device {
    type Err = UnknownDevice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "wgpu" => Ok(Device::Wgpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(UnknownDevice(other.to_string())),
        }
    }
}
