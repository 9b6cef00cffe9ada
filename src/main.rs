//! The `covflow` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd_bench;

/// Declarative, content-cached pipelines for self-supervised COVID-19 lesion segmentation on CT.
#[derive(Parser, Debug)]
#[command(name = "covflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure covflow's hot paths (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(cmd_bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(b) => cmd_bench::run(b),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
