//! `covflow bench ...`

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use covflow_kernels::Device;

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
    },
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Transunet {
            device,
            batch,
            steps,
            width_div,
        } => {
            let report = covflow_stages::bench::transunet(device, batch, steps, width_div)?;
            let mut json = serde_json::to_value(&report)?;
            json["device"] = device.name().into();
            json["width_div"] = width_div.into();
            println!("{}", serde_json::to_string(&json)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
