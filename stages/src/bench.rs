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

/// Checks `imp` against burn's conv2d on `device` at the TransUNet's convolution shapes (batch
/// `batch`), forward and backward, and times both.
pub fn conv(
    device: Device,
    imp: ConvImpl,
    batch: usize,
    reps: usize,
) -> Result<Vec<crate::models::ConvCheck>, StageError> {
    use crate::models::{check_conv, transunet_conv_shapes};
    let shapes = transunet_conv_shapes(batch);
    Ok(match device {
        Device::Cpu => {
            type B = burn::backend::Autodiff<burn::backend::NdArray>;
            shapes
                .into_iter()
                .map(|s| check_conv::<B>(imp, s, reps, &Default::default()))
                .collect()
        }
        Device::Wgpu => {
            type B = burn::backend::Autodiff<burn::backend::Wgpu>;
            shapes
                .into_iter()
                .map(|s| check_conv::<B>(imp, s, reps, &Default::default()))
                .collect()
        }
        Device::Cuda => {
            #[cfg(feature = "cuda")]
            {
                type B = burn::backend::Autodiff<burn::backend::Cuda>;
                shapes
                    .into_iter()
                    .map(|s| check_conv::<B>(imp, s, reps, &Default::default()))
                    .collect()
            }
            #[cfg(not(feature = "cuda"))]
            return Err(StageError::DeviceNotBuilt(device));
        }
    })
}

/// Time of one preprocessing step on one volume.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepTiming {
    /// What was timed.
    pub step: String,
    /// Input voxels (x × y × z).
    pub shape: [usize; 3],
    /// Median over the repetitions, milliseconds.
    pub median_ms: f64,
}

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Times each preprocessing step on the study at `ct_path` (a `.nii.gz` in HU) on `device`:
/// decoding, resample + window to `grid`, lung mask on the grid and at full resolution, crop.
/// The first repetition of each GPU step includes its kernel compilation; the median does not.
pub fn preprocess(
    device: Device,
    ct_path: &std::path::Path,
    grid: [usize; 3],
    reps: usize,
) -> Result<Vec<StepTiming>, crate::StageError> {
    use crate::lung_mask::{LungMaskParams, segment_lungs};
    use crate::resample::{CtUnits, resample_volume};
    use crate::volume::Volume;
    let kernels =
        covflow_kernels::Kernels::on(device).map_err(|_| StageError::DeviceNotBuilt(device))?;
    let reps = reps.max(1);
    let mut out = Vec::new();
    let mut ct = Volume::read(ct_path).map_err(|e| StageError::Other(e.to_string()))?;
    let (x, y, z) = ct.data.dim();
    let full = [x, y, z];
    out.push(StepTiming {
        step: "decode .nii.gz".into(),
        shape: full,
        median_ms: median_ms(reps, || ct = Volume::read(ct_path).expect("read above")),
    });
    let window = Some((-1000.0, 400.0));
    let units = CtUnits { window };
    let mut g = resample_volume(&kernels, &ct, grid, window, true)
        .map_err(|e| StageError::Other(e.to_string()))?;
    out.push(StepTiming {
        step: "resample + window (anti-aliased)".into(),
        shape: full,
        median_ms: median_ms(reps, || {
            g = resample_volume(&kernels, &ct, grid, window, true).expect("ran above")
        }),
    });
    let params = LungMaskParams::default();
    let (mut mask, _) = segment_lungs(&kernels, &g, units, &params);
    out.push(StepTiming {
        step: "lung_mask on the grid".into(),
        shape: grid,
        median_ms: median_ms(reps, || {
            mask = segment_lungs(&kernels, &g, units, &params).0
        }),
    });
    let _ = segment_lungs(&kernels, &ct, CtUnits::default(), &params);
    out.push(StepTiming {
        step: "lung_mask at full resolution".into(),
        shape: full,
        median_ms: median_ms(reps, || {
            segment_lungs(&kernels, &ct, CtUnits::default(), &params);
        }),
    });
    let lung = mask.mapv(f32::from);
    let b = crate::crop::lung_box(&lung, 0)
        .ok_or_else(|| StageError::Other("empty lung mask".into()))?;
    out.push(StepTiming {
        step: "crop (CT + mask)".into(),
        shape: grid,
        median_ms: median_ms(reps, || {
            let c = g.crop(b.lo, b.hi);
            resample_volume(&kernels, &c, grid, None, true).expect("ran above");
            let mut m = g.clone();
            m.data = lung.clone();
            resample_volume(&kernels, &m.crop(b.lo, b.hi), grid, None, false).expect("ran above");
        }),
    });
    Ok(out)
}
