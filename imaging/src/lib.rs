//! covflow's imaging: CT volumes and NIfTI I/O, a study's file names and units, resampling with
//! the HU window, the classical lung segmentation, the lung crop, MosMed-like phantoms with exact
//! masks, and overlap metrics. No engine and no burn here: the stages call into this crate, and
//! the heavy loops run on [`covflow_kernels`] (a GPU through cubecl, or their CPU references).
//!
//! ```
//! use covflow_imaging::{Grid, Kernels, phantom, resample};
//! let p = phantom::generate(1, 0, phantom::PhantomSize::Small);
//! let grid = Grid::Shape([64, 64, 16]).voxels([128, 128, 16], p.ct.spacing);
//! let ct = resample::resample_volume(&Kernels::Cpu, &p.ct, grid, Some(resample::DEFAULT_WINDOW), true);
//! assert_eq!(ct.data.dim(), (64, 64, 16));
//! assert!(ct.data.iter().all(|v| (0.0..=1.0).contains(v)));
//! ```

pub mod bench;
pub mod crop;
mod error;
mod header;
pub mod lung;
pub mod metrics;
pub mod orientation;
pub mod phantom;
pub mod resample;
pub mod study;
pub mod volume;

pub use covflow_kernels::Kernels;
pub use error::{Error, Result};
pub use orientation::Orientation;
pub use resample::Grid;
pub use study::{CtUnits, StudyFiles};
pub use volume::{Volume, VolumeError, VolumeInfo};
