//! Loading a pipeline into a [`Workflow`]: the stage kinds this binary knows, and the cache.

use std::path::{Path, PathBuf};

use covflow_cache::Store;
use covflow_engine::{Pipeline, Registry, TaskGraph, Workflow};

use crate::{Failure, PipelineArgs};

/// Every stage kind and dataset source of this binary.
pub fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    covflow_stages::register(&mut r);
    r
}

/// The cache directory: `--cache`/`COVFLOW_CACHE`, else `.covflow/` beside the pipeline file.
pub fn cache_dir(args: &PipelineArgs) -> PathBuf {
    args.cache.clone().unwrap_or_else(|| {
        args.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join(".covflow")
    })
}

/// Parses, validates and expands the pipeline and opens its cache.
pub fn load(args: &PipelineArgs) -> Result<Workflow, Failure> {
    if !covflow_stages::device_built(args.device) {
        return Err(Failure::Invalid(format!(
            "--device {}: this covflow was built without it\n  help: rebuild with `--features {}` or pass --device cpu",
            args.device, args.device
        )));
    }
    let registry = registry();
    let pipeline = Pipeline::load(&args.file, &args.set, &registry)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let graph =
        TaskGraph::build(&pipeline, &registry).map_err(|e| Failure::Invalid(e.to_string()))?;
    let store = Store::open(cache_dir(args)).map_err(|e| Failure::Failed(e.to_string()))?;
    Ok(Workflow::new(pipeline, graph, registry, store, args.device))
}
