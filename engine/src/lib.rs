//! covflow's engine: a YAML pipeline becomes a task graph, the graph and the cache give a plan,
//! and an executor runs what the plan says must run.
//!
//! ```text
//! pipeline.yaml ─▶ Pipeline (spec) ─▶ TaskGraph (graph) ─▶ plan (with the cache) ─▶ executor
//! ```
//! Each arrow is one module; nothing flows backwards. Stage kinds are registered by the binary
//! ([`Registry`]), so the engine runs and is tested with its own `exec` kind alone.
//!
//! ```
//! use covflow_engine::{Pipeline, Registry, TaskGraph};
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("p.yaml");
//! std::fs::write(&file, "name: demo\ndatasets:\n  xs: {list: [a, b]}\nstages:\n  hello:\n    uses: exec\n    foreach: xs\n    with: {run: 'echo {item} > {out}/x'}\n").unwrap();
//! let registry = Registry::with_builtins();
//! let pipeline = Pipeline::load(&file, &[], &registry).unwrap();
//! let graph = TaskGraph::build(&pipeline, &registry).unwrap();
//! assert_eq!(graph.len(), 2);
//! ```

mod builtin;
mod error;
mod execute;
mod graph;
mod invocation;
mod params;
mod plan;
mod registry;
mod signals;
mod slurm;
mod spec;
mod stage;

pub use builtin::{CountSource, ExecParams, ExecStage, GlobSource, GlobSpec, ListSource};
pub use error::{Location, SpecError, locate};
pub use execute::{
    Outcome, RunError, RunOptions, RunReport, Selection, TaskFailure, TaskReport, Upstream,
    reexecute, run_local, run_task,
};
pub use graph::{TaskGraph, TaskNode};
pub use invocation::StageInvocation;
pub use params::{DynDataset, DynStage, ParamDoc, ParamError, param_docs, params_markdown};
/// A task in the [`TaskGraph`].
pub use petgraph::graph::NodeIndex;
pub use plan::{InputRef, KeyMaterial, PlannedTask, TaskState, Workflow};
pub use registry::Registry;
pub use signals::{GRACE, stop_signal};
pub use slurm::{SlurmError, SlurmOptions, SubmittedJob, run_slurm};
pub use spec::{DatasetDecl, Pipeline, Resources, StageDecl};
pub use stage::{
    CancelToken, DatasetSource, Device, Input, Item, ProgressBoard, Stage, StageError, TaskContext,
    TaskLog, valid_item_id,
};
