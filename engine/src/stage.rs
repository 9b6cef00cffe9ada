//! The contract between the engine and a stage kind, and between the engine and a dataset source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use crate::spec::StageDecl;

/// The error a stage returns; its log carries the details.
pub type StageError = Box<dyn std::error::Error + Send + Sync>;

/// One item of a dataset: a stable id (`study_0255`), a digest of its content (part of every
/// cache key computed for it), and attributes a stage can read (`path`, `category`, `mask`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Stable id, also the folder name in exports: letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// blake3 (hex) of what identifies the item's content.
    pub digest: String,
    /// Free-form attributes.
    pub attrs: BTreeMap<String, String>,
}

impl Item {
    /// An item whose identity is its id alone (list and count sources).
    ///
    /// ```
    /// let item = covflow_engine::Item::named("case_1");
    /// assert_eq!(item.id, "case_1");
    /// assert_eq!(item.digest, blake3::hash(b"case_1").to_hex().to_string());
    /// ```
    pub fn named(id: &str) -> Self {
        Self {
            id: id.to_string(),
            digest: blake3::hash(id.as_bytes()).to_hex().to_string(),
            attrs: BTreeMap::new(),
        }
    }
}

/// Whether an item id is safe as a single path component everywhere covflow uses it.
pub fn valid_item_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One upstream artifact a task reads.
#[derive(Clone, Debug)]
pub struct Input {
    /// The upstream stage.
    pub stage: String,
    /// The upstream item, for fan-out stages.
    pub item: Option<String>,
    /// The artifact's data directory (read-only).
    pub dir: PathBuf,
}

/// A task's log: kept in its manifest and shown when it fails.
#[derive(Clone, Debug, Default)]
pub struct TaskLog(Arc<Mutex<String>>);

impl TaskLog {
    /// Appends one line.
    pub fn line(&self, s: impl AsRef<str>) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.push_str(s.as_ref());
        log.push('\n');
    }

    /// Appends raw text.
    pub fn append(&self, s: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_str(s);
    }

    /// The whole log so far.
    pub fn contents(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last `n` lines, each cut to 500 characters (a command line can be huge).
    pub fn tail(&self, n: usize) -> String {
        let all = self.contents();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| match l.char_indices().nth(500) {
                Some((cut, _)) => format!("{} … ({} more bytes)", &l[..cut], l.len() - cut),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Set when the run is cancelled (Ctrl-C); long stages poll it.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks every task to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a task is given: its item, parameters, read-only inputs and an empty output directory.
pub struct TaskContext<'a> {
    /// The pipeline file's directory (the working directory of `exec` commands).
    pub pipeline_dir: &'a Path,
    /// The stage name.
    pub stage: &'a str,
    /// The item, for fan-out tasks.
    pub item: Option<&'a Item>,
    /// The stage's parameters.
    pub params: &'a serde_json::Map<String, Json>,
    /// Upstream artifacts, in `needs` order, then item order.
    pub inputs: &'a [Input],
    /// Where to write the output (empty at start; published atomically when the task succeeds).
    pub out_dir: &'a Path,
    /// A work directory that survives a killed task (checkpoints), keyed by the task's key.
    pub work_dir: &'a Path,
    /// The device of the run (`cpu`, `wgpu`, `cuda`).
    pub device: &'a str,
    /// The task's log.
    pub log: &'a TaskLog,
    /// Cancellation.
    pub cancel: &'a CancelToken,
}

impl TaskContext<'_> {
    /// The inputs that came from one upstream stage.
    pub fn inputs_of<'s>(&'s self, stage: &'s str) -> impl Iterator<Item = &'s Input> + 's {
        self.inputs.iter().filter(move |i| i.stage == stage)
    }
}

/// A stage kind. Implementations live in the `covflow-stages` crate (one module each); the
/// binary registers them, so the engine never depends on them.
pub trait Stage: Send + Sync {
    /// The name used in `uses:`.
    fn kind(&self) -> &'static str;
    /// Bumped whenever the outputs for the same inputs would change: part of every cache key.
    fn version(&self) -> u32;
    /// One line on what `with:` takes, shown with errors.
    fn help(&self) -> String;
    /// Validates the declaration at load time, before anything runs.
    fn check(&self, decl: &StageDecl) -> Result<(), String>;
    /// Whether results depend on the device (then the device is part of the cache key).
    fn device_dependent(&self) -> bool {
        false
    }
    /// Runs one task.
    fn run(&self, ctx: &TaskContext) -> Result<(), StageError>;
}

/// A dataset source kind (the key under a dataset's name: `list`, `glob`, `phantom`, ...).
pub trait DatasetSource: Send + Sync {
    /// The key that selects this source.
    fn kind(&self) -> &'static str;
    /// Validates the declaration (the whole mapping under the dataset's name).
    fn check(&self, spec: &Json) -> Result<(), String>;
    /// The items, in a stable order. Relative paths resolve against `pipeline_dir`.
    fn items(&self, spec: &Json, pipeline_dir: &Path) -> Result<Vec<Item>, String>;
}
