//! `covflow bench ...`

use clap::Subcommand;
use covflow_kernels::Device;
use covflow_models::BenchOptimizer;

use crate::Failure;

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
pub enum Optim {
    Fused,
    Burn,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
pub enum Conv {
    Im2col,
    Native,
    ImplicitGemm,
}

impl From<Conv> for covflow_models::ConvImpl {
    fn from(c: Conv) -> Self {
        match c {
            Conv::Im2col => Self::Im2col,
            Conv::Native => Self::Native,
            Conv::ImplicitGemm => Self::ImplicitGemm,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Train the seed TransUNet for a few steps: first step (compilation, autotune), steady-state
    /// step (median) and inference. Prints one JSON object.
    Transunet {
        /// cpu (NdArray), wgpu, or cuda.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Slices per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed steps after the first.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Divide every width by this (1 = the seed configuration, 66.9 M parameters).
        #[arg(long, default_value_t = 1)]
        width_div: usize,
        /// Convolution implementation: im2col (+ matmul, covflow's default), native (burn's
        /// default kernel choice) or implicit-gemm (burn-cubecl's, without autotune).
        #[arg(long, value_enum, default_value_t = Conv::Im2col)]
        conv: Conv,
        /// Adam: fused (one kernel per parameter tensor on GPU backends, what training uses) or
        /// burn (burn's Adam, thirteen operations per tensor).
        #[arg(long, value_enum, default_value_t = Optim::Fused)]
        optimizer: Optim,
    },
    /// Train the 3D GAN for a few iterations (reconstruction, discriminator and adversarial
    /// steps) on random volumes: first iteration and median of the rest. Prints one JSON object.
    Gan {
        /// cpu (NdArray), wgpu, or cuda.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Volumes of each class per iteration.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Timed iterations after the first.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Filter counts × this (1 = the reference model, 7.9 M parameters).
        #[arg(long, default_value_t = 0.25)]
        width: f64,
        /// Grid z,y,x (each a multiple of 16, at least 32).
        #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [32, 64, 64])]
        grid: Vec<usize>,
        /// Convolution implementation (im2col: matmuls, the CPU default; native: burn's).
        #[arg(long, value_enum, default_value_t = Conv::Im2col)]
        conv: Conv,
    },
    /// Check a convolution implementation against burn's conv2d on the same device at the
    /// TransUNet's shapes (forward, input/weight/bias gradients, relative error) and time both
    /// (one JSON line per shape; exit 1 when an error exceeds 1e-3).
    Conv {
        /// cpu, wgpu, or cuda.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// The implementation to check.
        #[arg(long, value_enum, default_value_t = Conv::ImplicitGemm)]
        conv: Conv,
        /// Batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed repetitions (median).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Check every GPU kernel against its CPU reference at MosMed sizes and time it beside a
    /// plain copy (one JSON line per kernel).
    Kernels {
        /// wgpu or cuda.
        #[arg(long, default_value = "wgpu")]
        device: Device,
        /// Timed launches per kernel (the median is reported).
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
    /// Time each preprocessing step (decode, resample + window, lung mask, crop) on one study,
    /// on the CPU references or the GPU kernels (one JSON line per step).
    Preprocess {
        /// A CT in HU (`covflow phantom --size mosmed` writes MosMed-like ones).
        input: std::path::PathBuf,
        /// cpu, wgpu, or cuda.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// The resample grid, x,y,z.
        #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [128, 128, 32])]
        grid: Vec<usize>,
        /// Repetitions per step (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Hash files the way the cache does (blake3, parallel, mmap for large files); prints GB/s.
    Hash {
        /// Files to hash.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Repetitions (the best is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
}

pub fn run(cmd: BenchCommand) -> Result<(), Failure> {
    match cmd {
        BenchCommand::Transunet {
            device,
            batch,
            steps,
            width_div,
            conv,
            optimizer,
        } => {
            let imp = conv.into();
            let optimizer = match optimizer {
                Optim::Fused => BenchOptimizer::Fused,
                Optim::Burn => BenchOptimizer::Burn,
            };
            let report =
                covflow_models::bench::transunet(device, batch, steps, width_div, imp, optimizer)?;
            let mut json = serde_json::to_value(&report)?;
            json["device"] = device.name().into();
            json["width_div"] = width_div.into();
            json["conv"] = serde_json::to_value(imp)?;
            json["optimizer"] = serde_json::to_value(optimizer)?;
            println!("{}", serde_json::to_string(&json)?);
        }
        BenchCommand::Gan {
            device,
            batch,
            steps,
            width,
            grid,
            conv,
        } => {
            let recipe = covflow_models::GanRecipe {
                width,
                lr_generator: 5e-5,
                lr_discriminator: 1e-3,
                batch,
                iterations: steps + 1,
                seed: 0,
                noise: Default::default(),
                conv: conv.into(),
                change_weight: 0.0,
                leaky_output: false,
                adversary: Default::default(),
                discriminator_slope: 0.0,
            };
            let shape = [grid[0], grid[1], grid[2]];
            let report = covflow_models::bench::gan(device, &recipe, shape, steps)?;
            let mut json = serde_json::to_value(&report)?;
            json["device"] = device.name().into();
            json["width"] = width.into();
            json["conv"] = serde_json::to_value(recipe.conv)?;
            println!("{}", serde_json::to_string(&json)?);
        }
        BenchCommand::Conv {
            device,
            conv,
            batch,
            reps,
        } => {
            let mut bad = 0;
            for r in covflow_models::bench::conv(device, conv.into(), batch, reps)? {
                bad += r.rel_error.iter().any(|e| e.is_nan() || *e >= 1e-3) as usize;
                let mut json = serde_json::to_value(&r)?;
                json["device"] = device.name().into();
                println!("{}", serde_json::to_string(&json)?);
            }
            if bad > 0 {
                return Err(Failure::Failed(format!(
                    "{bad} shape(s) differ from burn's conv2d by more than 1e-3 (relative)"
                )));
            }
        }
        BenchCommand::Preprocess {
            input,
            device,
            grid,
            reps,
        } => {
            let grid = [grid[0], grid[1], grid[2]];
            let kernels = covflow_kernels::Kernels::on(device)?;
            for t in covflow_imaging::bench::preprocess(&kernels, &input, grid, reps)? {
                let mut json = serde_json::to_value(&t)?;
                json["device"] = device.name().into();
                println!("{}", serde_json::to_string(&json)?);
            }
        }
        BenchCommand::Kernels { device, reps } => {
            let reports = covflow_kernels::bench_on(device, reps).map_err(Failure::Failed)?;
            let mut bad = 0;
            for r in &reports {
                let mut json = serde_json::to_value(r)?;
                json["device"] = device.name().into();
                println!("{json}");
                // NaN (a kernel that produced garbage) counts as a failure too.
                // Values are HU up to ~3000 before the window: allow float rounding of sums.
                if r.max_error.is_nan() || r.max_error >= 1e-2 {
                    bad += 1;
                }
            }
            if bad > 0 {
                return Err(Failure::Failed(format!(
                    "{bad} kernel(s) differ from their CPU reference"
                )));
            }
        }
        BenchCommand::Hash { files, repeat } => {
            let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
            let mut best = f64::INFINITY;
            let mut bytes = 0;
            for _ in 0..repeat.max(1) {
                let t = std::time::Instant::now();
                bytes = 0;
                for r in covflow_cache::hash_files(&paths) {
                    bytes += r?.1;
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{}",
                serde_json::json!({"bytes": bytes, "seconds": best, "gb_per_s": bytes as f64 / best / 1e9,
                    "threads": rayon_threads()})
            );
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
