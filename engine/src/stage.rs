//! The contract between the engine and a stage kind, and between the engine and a dataset source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::params::ParamError;
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
        // Never read as an option by a command it is passed to.
        && !id.starts_with('-')
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The compute device of a run, chosen once (`--device`) and recorded in every manifest; the
/// part of the cache key of stage kinds whose results depend on it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU: kernels' plain references and burn's NdArray backend.
    #[default]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12; Mesa's lavapipe on a CPU).
    Wgpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl Device {
    /// Every device, in the order the command line lists them.
    pub const ALL: [Device; 3] = [Device::Cpu, Device::Wgpu, Device::Cuda];

    /// The lowercase name used on the command line, in keys and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// ```
    /// use covflow_engine::Device;
    /// assert_eq!("wgpu".parse::<Device>(), Ok(Device::Wgpu));
    /// assert!("tpu".parse::<Device>().unwrap_err().contains("cpu, wgpu, cuda"));
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        Device::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown device `{s}`: expected one of cpu, wgpu, cuda"))
    }
}

/// One upstream artifact a task reads.
#[derive(Clone, Debug)]
pub struct Input {
    /// The upstream stage.
    pub stage: String,
    /// The upstream item, for fan-out stages.
    pub item: Option<String>,
    /// The upstream item's attributes (a dataset item's `category`, …), empty otherwise.
    pub attrs: BTreeMap<String, String>,
    /// The artifact's data directory (read-only).
    pub dir: PathBuf,
}

/// A task's log: written to a file as it comes (when it has one), with its last
/// [`TaskLog::TAIL_BYTES`] kept in memory for the manifest and for the report when it fails, so
/// that a task printing gigabytes costs disk, not memory.
#[derive(Clone, Debug, Default)]
pub struct TaskLog(Arc<Mutex<LogState>>);

#[derive(Debug, Default)]
struct LogState {
    /// The end of the log.
    tail: String,
    /// Bytes dropped from the front of `tail`.
    dropped: u64,
    /// The whole log, when there is a file.
    file: Option<(PathBuf, std::fs::File)>,
    /// Where progress lines are shown while the task runs, and under which name.
    board: Option<(ProgressBoard, String)>,
}

/// The latest progress line of each running task (a training's iteration, losses and ETA), which
/// `covflow run` shows on its progress bar.
///
/// ```
/// let board = covflow_engine::ProgressBoard::default();
/// let log = covflow_engine::TaskLog::default();
/// log.report_to(board.clone(), "gan".into());
/// log.progress("iteration 3/60");
/// assert_eq!(board.summary().as_deref(), Some("gan: iteration 3/60"));
/// board.clear("gan");
/// assert_eq!(board.summary(), None);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ProgressBoard(Arc<Mutex<std::collections::BTreeMap<String, String>>>);

impl ProgressBoard {
    fn entries(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `task`'s latest progress.
    pub fn set(&self, task: &str, line: &str) {
        self.entries().insert(task.to_string(), line.to_string());
    }

    /// Forgets `task` (it finished).
    pub fn clear(&self, task: &str) {
        self.entries().remove(task);
    }

    /// Every running task's latest progress on one line, or `None` when none reported any.
    pub fn summary(&self) -> Option<String> {
        let e = self.entries();
        (!e.is_empty()).then(|| {
            e.iter()
                .map(|(task, line)| format!("{task}: {line}"))
                .collect::<Vec<_>>()
                .join(" | ")
        })
    }
}

impl TaskLog {
    /// How much of the log is kept in memory: the end of it.
    pub const TAIL_BYTES: usize = 1 << 20;

    /// A log written to `path` as it comes (created or truncated).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Self(Arc::new(Mutex::new(LogState {
            file: Some((path.to_path_buf(), file)),
            ..LogState::default()
        }))))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one line.
    pub fn line(&self, s: impl AsRef<str>) {
        self.append(&format!("{}\n", s.as_ref()));
    }

    /// Shows this log's progress lines on `board` under `task`'s name.
    pub fn report_to(&self, board: ProgressBoard, task: String) {
        self.state().board = Some((board, task));
    }

    /// Appends a progress line (an iteration, its losses, the ETA): to the log, and to the run's
    /// progress bar while the task runs.
    pub fn progress(&self, s: impl AsRef<str>) {
        self.line(s.as_ref());
        if let Some((board, task)) = &self.state().board {
            board.set(task, s.as_ref());
        }
    }

    /// Appends raw text.
    pub fn append(&self, s: &str) {
        use std::io::Write;
        let mut st = self.state();
        if let Some((_, f)) = &mut st.file {
            // A full disk loses the file's copy, not the task: the tail is still kept.
            let _ = f.write_all(s.as_bytes());
        }
        st.tail.push_str(s);
        if st.tail.len() > 2 * Self::TAIL_BYTES {
            let mut cut = st.tail.len() - Self::TAIL_BYTES;
            while !st.tail.is_char_boundary(cut) {
                cut += 1;
            }
            st.tail.drain(..cut);
            st.dropped += cut as u64;
        }
    }

    /// The log as kept in memory: all of it, or its end after a line saying how much came
    /// before and where the whole log is.
    ///
    /// ```
    /// let log = covflow_engine::TaskLog::default();
    /// log.line("hello");
    /// assert_eq!(log.contents(), "hello\n");
    /// ```
    pub fn contents(&self) -> String {
        let st = self.state();
        if st.dropped == 0 {
            return st.tail.clone();
        }
        let whole = st
            .file
            .as_ref()
            .map(|(p, _)| format!("; the whole log is in {}", p.display()))
            .unwrap_or_default();
        format!(
            "# covflow: {} earlier bytes not kept here{whole}\n{}",
            st.dropped, st.tail
        )
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
    /// Upstream artifacts, in `needs` order, then item order.
    pub inputs: &'a [Input],
    /// Where to write the output (empty at start; published atomically when the task succeeds).
    pub out_dir: &'a Path,
    /// A work directory that survives a killed task (checkpoints), keyed by the task's key.
    pub work_dir: &'a Path,
    /// The device of the run.
    pub device: Device,
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
///
/// `Params` is the whole vocabulary of the kind's `with:` mapping: a struct deriving
/// `Deserialize` (with `deny_unknown_fields`, and `default` where every field has one),
/// `Serialize` and `schemars::JsonSchema`, a doc comment on each field. The engine deserializes
/// it (errors point at the field's line), calls [`Stage::check`], and keys the cache on the value
/// serialized back with its defaults filled in; `covflow stage kinds` shows its documentation.
///
/// ```
/// use covflow_engine::{ParamError, Registry, Stage, StageDecl, StageError, TaskContext};
///
/// /// The `with:` of `greet`.
/// #[derive(Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
/// #[serde(default, deny_unknown_fields)]
/// struct GreetParams {
///     /// Times to write the greeting (1 to 10).
///     times: u32,
/// }
///
/// struct Greet;
///
/// impl Stage for Greet {
///     type Params = GreetParams;
///     fn kind(&self) -> &'static str { "greet" }
///     fn version(&self) -> u32 { 1 }
///     fn about(&self) -> &'static str { "Writes hello.txt." }
///     fn check(&self, p: &GreetParams, _: &StageDecl) -> Result<(), ParamError> {
///         if !(1..=10).contains(&p.times) {
///             return Err(ParamError::field("times", format!("must be 1 to 10, not {}", p.times)));
///         }
///         Ok(())
///     }
///     fn run(&self, p: &GreetParams, ctx: &TaskContext) -> Result<(), StageError> {
///         std::fs::write(ctx.out_dir.join("hello.txt"), "hello\n".repeat(p.times as usize))?;
///         Ok(())
///     }
/// }
///
/// let mut registry = Registry::with_builtins();
/// registry.add_stage(Greet);
/// assert!(registry.stage("greet").unwrap().params_help().contains("times (integer ≥ 0, default 0)"));
/// ```
pub trait Stage: Send + Sync + 'static {
    /// The kind's parameters (the `with:` mapping), one typed value.
    type Params: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema;
    /// The name used in `uses:`.
    fn kind(&self) -> &'static str;
    /// Bumped whenever the outputs for the same inputs would change: part of every cache key.
    fn version(&self) -> u32;
    /// What the kind does, what it reads and writes (shown by `covflow stage kinds`).
    fn about(&self) -> &'static str;
    /// Range and cross-field rules, and what the kind needs of `needs`/`foreach`; at load time,
    /// before anything runs.
    fn check(&self, params: &Self::Params, decl: &StageDecl) -> Result<(), ParamError> {
        let _ = (params, decl);
        Ok(())
    }
    /// Whether results depend on the device (then the device is part of the cache key).
    fn device_dependent(&self) -> bool {
        false
    }
    /// Runs one task.
    fn run(&self, params: &Self::Params, ctx: &TaskContext) -> Result<(), StageError>;
}

/// A dataset source kind (the key under a dataset's name: `list`, `glob`, `phantom`, ...).
///
/// `Spec` is the whole mapping under the dataset's name, the kind's own key included
/// (`{count: 5, prefix: case_}`), deserialized with `deny_unknown_fields` so that an error names
/// the field and its line.
pub trait DatasetSource: Send + Sync + 'static {
    /// The declaration, typed.
    type Spec: serde::de::DeserializeOwned;
    /// The key that selects this source.
    fn kind(&self) -> &'static str;
    /// Rules beyond the types, checked when the pipeline is loaded.
    fn check(&self, spec: &Self::Spec) -> Result<(), String> {
        let _ = spec;
        Ok(())
    }
    /// The items, in a stable order. Relative paths resolve against `pipeline_dir`.
    fn items(&self, spec: &Self::Spec, pipeline_dir: &Path) -> Result<Vec<Item>, String>;
}
