//! The stage kinds and dataset sources a run knows, registered by the binary.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::builtin;
use crate::params::{DynDataset, DynStage};
use crate::stage::{DatasetSource, Stage};

/// Known stage kinds and dataset sources.
///
/// ```
/// let registry = covflow_engine::Registry::with_builtins();
/// assert!(registry.stage("exec").is_some());
/// assert_eq!(registry.dataset_kinds(), vec!["count", "glob", "list"]);
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    stages: BTreeMap<&'static str, Arc<dyn DynStage>>,
    datasets: BTreeMap<&'static str, Arc<dyn DynDataset>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the engine's own kinds: the `exec` stage and the `list`, `glob` and
    /// `count` dataset sources.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.add_stage(builtin::ExecStage);
        r.add_dataset(builtin::ListSource);
        r.add_dataset(builtin::GlobSource);
        r.add_dataset(builtin::CountSource);
        r
    }

    /// Registers a stage kind.
    pub fn add_stage(&mut self, stage: impl Stage) -> &mut Self {
        self.stages.insert(Stage::kind(&stage), Arc::new(stage));
        self
    }

    /// Registers a dataset source.
    pub fn add_dataset(&mut self, source: impl DatasetSource) -> &mut Self {
        self.datasets
            .insert(DatasetSource::kind(&source), Arc::new(source));
        self
    }

    /// The stage kind named `kind`.
    pub fn stage(&self, kind: &str) -> Option<&Arc<dyn DynStage>> {
        self.stages.get(kind)
    }

    /// The dataset source named `kind`.
    pub fn dataset(&self, kind: &str) -> Option<&Arc<dyn DynDataset>> {
        self.datasets.get(kind)
    }

    /// Names of the stage kinds, sorted.
    pub fn stage_kinds(&self) -> Vec<&'static str> {
        self.stages.keys().copied().collect()
    }

    /// Names of the dataset sources, sorted.
    pub fn dataset_kinds(&self) -> Vec<&'static str> {
        self.datasets.keys().copied().collect()
    }
}
