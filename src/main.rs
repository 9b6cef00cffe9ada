//! The `covflow` command line: parses arguments, wires the stage kinds into the engine, renders
//! errors for people, and maps outcomes to exit codes (0 ok, 1 run failed, 2 invalid input).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod cmd_bench;
mod cmd_cache;
mod cmd_imaging;
mod cmd_report;
mod cmd_run;
mod workflow;

/// Declarative, content-cached pipelines for self-supervised COVID-19 lesion segmentation on CT.
#[derive(Parser, Debug)]
#[command(name = "covflow", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// More log output (-v: each task, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Options shared by every command that reads a pipeline.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// The pipeline file (YAML).
    pub file: PathBuf,
    /// Override a value: `params.NAME=VALUE` or `stages.NAME.with.KEY=VALUE` (YAML-typed).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Cache directory [default: .covflow/ beside the pipeline file].
    #[arg(long, env = "COVFLOW_CACHE")]
    pub cache: Option<PathBuf>,
    /// Compute device: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu", env = "COVFLOW_DEVICE")]
    pub device: covflow_engine::Device,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: execute what is not cached.
    Run(cmd_run::RunArgs),
    /// Show every task with its state (cached or run) and why it must run. Changes nothing.
    Plan(cmd_run::PlanArgs),
    /// Run single tasks (the contract cluster schedulers call).
    #[command(subcommand)]
    Stage(cmd_run::StageCommand),
    /// Re-hash every artifact the pipeline refers to and check manifests and keys.
    Audit(cmd_cache::AuditArgs),
    /// Print the task graph as Graphviz DOT.
    Graph(cmd_run::GraphArgs),
    /// Inspect and maintain the cache.
    #[command(subcommand)]
    Cache(cmd_cache::CacheCommand),
    /// Copy a stage's artifacts out of the cache, one folder per item.
    Export(cmd_cache::ExportArgs),
    /// Write one self-contained HTML page of the cached results: metric tables, figures, and
    /// the provenance of each.
    Report(cmd_report::ReportArgs),
    /// Show or compare the evaluation's summary metrics (from the cache; nothing runs).
    #[command(subcommand)]
    Metrics(cmd_report::MetricsCommand),
    /// Measure covflow's hot paths (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(cmd_bench::BenchCommand),
    /// Show shape, spacing, datatype, orientation, scaling and value range of NIfTI files.
    Inspect(cmd_imaging::InspectArgs),
    /// Write a MosMed-like directory tree of synthetic studies with exact masks.
    Phantom(cmd_imaging::PhantomArgs),
}

/// How a command ended, beyond success.
#[derive(Debug)]
pub enum Failure {
    /// Invalid input or usage: exit code 2.
    Invalid(String),
    /// The run failed: exit code 1.
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.to_string())
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COVFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Plan(a) => cmd_run::plan(a),
        Command::Stage(c) => cmd_run::stage(c),
        Command::Graph(a) => cmd_run::graph(a),
        Command::Audit(a) => cmd_cache::audit(a),
        Command::Cache(c) => cmd_cache::cache(c),
        Command::Export(a) => cmd_cache::export(a),
        Command::Report(a) => cmd_report::report(a),
        Command::Metrics(c) => cmd_report::metrics(c),
        Command::Bench(b) => cmd_bench::run(b),
        Command::Inspect(a) => cmd_imaging::inspect(a),
        Command::Phantom(a) => cmd_imaging::phantom(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}
