//! Running tasks: one task under its key's lock (the contract `covflow stage run` and SLURM jobs
//! use), and the local executor that runs a whole plan on tokio.

use std::collections::{BTreeSet, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use covflow_cache::{CacheKey, Lookup, Store};
use petgraph::graph::NodeIndex;
use serde_json::json;

use crate::plan::{KeyMaterial, Workflow, broken_reason};
use crate::stage::{CancelToken, Input, TaskContext, TaskLog};

/// What happened to a task in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran and its artifact was stored.
    Executed,
    /// Its artifact was already in the cache (or another process made it meanwhile).
    Cached,
    /// It failed.
    Failed,
    /// It did not run: an input failed, or the run stopped first.
    Skipped,
}

/// One task's line in a run report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskReport {
    /// Stage name.
    pub stage: String,
    /// Item id, for fan-out tasks.
    pub item: Option<String>,
    /// What happened.
    pub state: Outcome,
    /// Its cache key, when known.
    pub key: Option<CacheKey>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The end of its log, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// The result of a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunReport {
    /// Every selected task, in dependency order.
    pub tasks: Vec<TaskReport>,
    /// Whether the run was cancelled (by a signal).
    pub cancelled: bool,
    /// The signal that stopped it (`SIGTERM`, …).
    pub stopped_by: Option<String>,
}

impl RunReport {
    /// Number of tasks with this outcome.
    pub fn count(&self, o: Outcome) -> usize {
        self.tasks.iter().filter(|t| t.state == o).count()
    }

    /// The documented `run --json` object.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "executed": self.count(Outcome::Executed),
            "cached": self.count(Outcome::Cached),
            "failed": self.count(Outcome::Failed),
            "skipped": self.count(Outcome::Skipped),
            "cancelled": self.cancelled,
            "signal": self.stopped_by,
            "tasks": self.tasks.iter().map(|t| {
                let mut task = json!({
                    "stage": t.stage,
                    "item": t.item,
                    "state": t.state,
                    "key": t.key.map(|k| k.to_hex()),
                });
                if t.state == Outcome::Failed {
                    task["error"] = json!(t.error);
                    task["log_tail"] = json!(t.log_tail);
                }
                task
            }).collect::<Vec<_>>(),
        })
    }
}

/// A failed task: why, and the end of its log.
#[derive(Clone, Debug)]
pub struct TaskFailure {
    /// The error.
    pub message: String,
    /// The last lines of the task's log.
    pub log_tail: String,
}

/// A finished upstream artifact a task reads.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Its content digest.
    pub digest: String,
    /// Its key.
    pub key: CacheKey,
    /// Its data directory.
    pub dir: PathBuf,
}

impl Upstream {
    /// A whole artifact as a task input: the one place a cached artifact becomes one.
    pub fn of(artifact: &covflow_cache::Artifact) -> Self {
        Upstream {
            digest: artifact.manifest.digest.clone(),
            key: artifact.key,
            dir: artifact.data_dir(),
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The inputs of task `n` as its stage sees them, from the finished upstream artifacts.
fn stage_inputs(wf: &Workflow, n: NodeIndex, inputs: &[Upstream]) -> Vec<Input> {
    wf.graph.graph[n]
        .inputs
        .iter()
        .zip(inputs)
        .map(|(&i, u)| Input {
            stage: wf.graph.stage_name(i).to_string(),
            item: wf.graph.item_id(i).map(str::to_string),
            attrs: wf.graph.graph[i]
                .item
                .as_ref()
                .map(|it| it.attrs.clone())
                .unwrap_or_default(),
            dir: u.dir.clone(),
        })
        .collect()
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs task `n`'s stage once into `out_dir`: the one place a [`TaskContext`] is made, for real
/// runs and for `audit --reexecute` alike. A stage that panics fails its task, with the panic's
/// message in the task's log, and nothing else: a panic is a bug in one stage kind, not a reason
/// to lose the run's other tasks and its report.
fn run_stage(
    wf: &Workflow,
    n: NodeIndex,
    inputs: &[Input],
    out_dir: &std::path::Path,
    work_dir: &std::path::Path,
    log: &TaskLog,
    cancel: &CancelToken,
) -> Result<(), crate::stage::StageError> {
    let t = &wf.graph.graph[n];
    let decl = &wf.pipeline.stages[t.stage];
    let stage = wf.registry.stage(&decl.uses).expect("checked at load");
    let run = std::panic::AssertUnwindSafe(|| {
        stage.run(
            &decl.params,
            &TaskContext {
                pipeline_dir: &wf.pipeline.dir,
                stage: &decl.name,
                item: t.item.as_ref(),
                inputs,
                out_dir,
                work_dir,
                device: wf.device,
                log,
                cancel,
            },
        )
    });
    std::panic::catch_unwind(run).unwrap_or_else(|payload| {
        let message = format!("the stage panicked: {}", panic_message(payload.as_ref()));
        log.line(format!("# covflow: {message}"));
        Err(message.into())
    })
}

/// Keeps a failed task's whole log and error as `failure.json` in its work directory (which a
/// later success clears): a failure's record, as a manifest is a success's. The log says where.
fn record_failure(
    work: &std::path::Path,
    wf: &Workflow,
    n: NodeIndex,
    key: &CacheKey,
    error: &str,
    attempts: u32,
    log: &TaskLog,
) {
    let path = work.join("failure.json");
    let record = json!({
        "pipeline": wf.pipeline.name,
        "stage": wf.graph.stage_name(n),
        "item": wf.graph.item_id(n),
        "key": key,
        "error": error,
        "attempts": attempts,
        "device": wf.device,
        "covflow_version": env!("CARGO_PKG_VERSION"),
        "finished_unix": unix_now(),
        "log": log.contents(),
    });
    let text = serde_json::to_string_pretty(&record).expect("plain JSON");
    if std::fs::write(&path, text).is_ok() {
        log.line(format!(
            "# covflow: the whole log and the error are in {}",
            path.display()
        ));
    }
}

/// Runs one task whose inputs are finished, under the lock of its key: if another process made
/// the artifact meanwhile it is `Cached`, else the stage runs into a staging directory that is
/// published atomically. Blocking.
pub fn run_task(
    wf: &Workflow,
    n: NodeIndex,
    inputs: &[Upstream],
    force: bool,
    retries: u32,
    cancel: &CancelToken,
) -> Result<(Outcome, KeyMaterial, Upstream), TaskFailure> {
    let fail = |message: String, log: &TaskLog| TaskFailure {
        message,
        log_tail: log.tail(20),
    };
    let digests: Vec<String> = inputs.iter().map(|u| u.digest.clone()).collect();
    let material = wf.material(n, &digests);
    let key = material.key();
    let log = TaskLog::default();
    let store: &Store = &wf.store;
    let _lock = store.lock(&key).map_err(|e| fail(e.to_string(), &log))?;
    if !force {
        match store
            .lookup(&key, wf.integrity)
            .map_err(|e| fail(e.to_string(), &log))?
        {
            Lookup::Whole(a) => return Ok((Outcome::Cached, material, Upstream::of(&a))),
            Lookup::Broken { problems, .. } => {
                let why = broken_reason(&problems);
                if wf.frozen {
                    return Err(fail(
                        format!(
                            "{why}\n  help: without --frozen the task runs again; `covflow cache verify --repair` removes broken artifacts"
                        ),
                        &log,
                    ));
                }
                tracing::warn!(task = %wf.graph.label(n), "{why}: running it again");
                log.line(format!("# covflow: {why}: running the task again"));
                store.evict(&key).map_err(|e| fail(e.to_string(), &log))?;
            }
            Lookup::Absent => {}
        }
    }
    let t = &wf.graph.graph[n];
    let decl = &wf.pipeline.stages[t.stage];
    let stage = wf.registry.stage(&decl.uses).expect("checked at load");
    // The inputs stay in the cache while the task reads them (`cache gc` leaves artifacts whose
    // lock is held), and must still be there now: a gc may have run since they were planned.
    let mut _reading = Vec::with_capacity(inputs.len());
    for (&i, up) in t.inputs.iter().zip(inputs) {
        _reading.push(
            store
                .lock_shared(&up.key)
                .map_err(|e| fail(e.to_string(), &log))?,
        );
        if !up.dir.is_dir() {
            return Err(fail(
                format!(
                    "its input {} left the cache during the run (`covflow cache gc`?)\n  help: run again: the input is recomputed",
                    wf.graph.label(i)
                ),
                &log,
            ));
        }
    }
    let task_inputs = stage_inputs(wf, n, inputs);
    let work = store
        .work_dir(&key)
        .map_err(|e| fail(e.to_string(), &log))?;
    // From here on the log goes to a file as it comes; memory keeps its end.
    let log = match TaskLog::to_file(&work.join("task.log")) {
        Ok(file_log) => {
            file_log.append(&log.contents());
            file_log
        }
        Err(_) => log,
    };
    log.report_to(wf.progress.clone(), wf.graph.label(n));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let staging = store.stage(&key).map_err(|e| fail(e.to_string(), &log))?;
        let out_dir = staging.data_dir();
        let started = unix_now();
        let clock = Instant::now();
        log.line(format!(
            "# covflow: {} attempt {attempt}, key {}",
            wf.graph.label(n),
            key.short()
        ));
        match run_stage(wf, n, &task_inputs, &out_dir, &work, &log, cancel) {
            Ok(()) => {
                let provenance = json!({
                    "pipeline": wf.pipeline.name,
                    "pipeline_file": wf.pipeline.path,
                    "stage": decl.name,
                    "kind": decl.uses,
                    "version": stage.version(),
                    "item": t.item.as_ref().map(|i| &i.id),
                    "params": decl.params,
                    "inputs": task_inputs.iter().zip(inputs).map(|(i, u)| json!({
                        "stage": i.stage, "item": i.item, "key": u.key, "digest": u.digest,
                    })).collect::<Vec<_>>(),
                    "device": wf.device,
                    "resources": decl.resources,
                    "covflow_version": env!("CARGO_PKG_VERSION"),
                    "started_unix": started,
                    "finished_unix": unix_now(),
                    "duration_s": clock.elapsed().as_secs_f64(),
                    "attempts": attempt,
                    "key_material": material,
                });
                let artifact = store
                    .commit_with(staging, provenance, &log.contents(), force)
                    .map_err(|e| fail(e.to_string(), &log))?;
                store.clear_work_dir(&key);
                wf.remember(n, &material);
                let dir = artifact.data_dir();
                return Ok((
                    Outcome::Executed,
                    material,
                    Upstream {
                        digest: artifact.manifest.digest,
                        key,
                        dir,
                    },
                ));
            }
            Err(e) => {
                store.discard(staging);
                log.line(format!("# covflow: attempt {attempt} failed: {e}"));
                if cancel.is_cancelled() || attempt > retries {
                    record_failure(&work, wf, n, &key, &e.to_string(), attempt, &log);
                    return Err(fail(e.to_string(), &log));
                }
            }
        }
    }
}

/// Which tasks a run considers.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every task.
    #[default]
    All,
    /// The tasks of a stage and everything upstream of them (`--until`).
    Until(String),
    /// Only the tasks of a stage; their inputs must be cached (`--only`).
    Only(String),
}

impl Selection {
    /// The stage it names, if any.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Selection::All => None,
            Selection::Until(s) | Selection::Only(s) => Some(s),
        }
    }
}

impl Workflow {
    /// Which tasks a selection covers, by node index; the same for every executor.
    pub fn select(&self, selection: &Selection) -> Result<Vec<bool>, RunError> {
        let g = &self.graph;
        let count = g.graph.node_count();
        let Some(stage) = selection.stage() else {
            return Ok(vec![true; count]);
        };
        let tasks = g.tasks_of(stage);
        if tasks.is_empty() {
            return Err(RunError::NoSuchTask(format!(
                "no stage `{stage}` in {}",
                self.pipeline.path.display()
            )));
        }
        if matches!(selection, Selection::Until(_)) {
            return Ok(g.ancestors(&tasks));
        }
        let mut v = vec![false; count];
        for t in tasks {
            v[t.index()] = true;
        }
        Ok(v)
    }

    /// With `--only`, the inputs of the selected tasks that lie outside the selection, which must
    /// all come from the cache (else [`RunError::MissingInputs`] names them). Empty otherwise.
    pub fn inputs_from_cache(
        &self,
        selection: &Selection,
        selected: &[bool],
    ) -> Result<Vec<(NodeIndex, Upstream)>, RunError> {
        let Selection::Only(stage) = selection else {
            return Ok(Vec::new());
        };
        let g = &self.graph;
        let outside: Vec<NodeIndex> = g
            .order
            .iter()
            .filter(|n| selected[n.index()])
            .flat_map(|&n| g.graph[n].inputs.iter().copied())
            .filter(|i| !selected[i.index()])
            .collect();
        let upstream = g.ancestors(&outside);
        let plan = self.plan_selected(&BTreeSet::new(), Some(&upstream))?;
        let cached = self.cached_inputs(&plan)?;
        let missing: BTreeSet<String> = outside
            .iter()
            .filter(|i| !cached.contains_key(i))
            .map(|&i| g.label(i))
            .collect();
        if !missing.is_empty() {
            return Err(RunError::MissingInputs {
                task: format!("stage `{stage}`"),
                missing: missing.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        Ok(cached
            .into_iter()
            .filter(|(n, _)| outside.contains(n))
            .collect())
    }
}

/// Options of a local run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Tasks running at once.
    pub jobs: usize,
    /// Keep running independent tasks after a failure.
    pub keep_going: bool,
    /// Extra attempts of a failed task.
    pub retries: u32,
    /// Stages to re-run even if cached.
    pub force: BTreeSet<String>,
    /// Which tasks.
    pub selection: Selection,
    /// GPU slots (tasks with `resources.gpu` share them).
    pub gpus: u32,
    /// CPU cores tasks may declare in total.
    pub cpus: u32,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            jobs: cpus,
            keep_going: false,
            retries: 0,
            force: BTreeSet::new(),
            selection: Selection::All,
            gpus: 1,
            cpus: cpus as u32,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--until`/`--only`/`stage run` named a stage or item that does not exist.
    #[error("{0}")]
    NoSuchTask(String),
    /// `--only` or `stage run` on a task whose inputs are not in the cache.
    #[error(
        "the inputs of {task} are not in the cache: {missing}\n  help: run the upstream stages first (`covflow run FILE --until STAGE`)"
    )]
    MissingInputs {
        /// The task.
        task: String,
        /// The upstream tasks that must run first.
        missing: String,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] covflow_cache::CacheError),
}

#[derive(Clone, Debug)]
enum Status {
    Waiting(usize),
    Running,
    Done(Upstream),
    Failed,
    Skipped,
}

/// Inputs of task `n` from finished upstream tasks, when all are finished.
fn upstream(wf: &Workflow, n: NodeIndex, status: &[Status]) -> Option<Vec<Upstream>> {
    wf.graph.graph[n]
        .inputs
        .iter()
        .map(|i| match &status[i.index()] {
            Status::Done(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

/// Runs the selected tasks on this machine: independent tasks run concurrently within `jobs`,
/// the GPU slots and the CPU cores; a failure skips the tasks that depend on it and (unless
/// `keep_going`) stops the run; Ctrl-C cancels it cleanly.
pub async fn run_local(
    wf: Arc<Workflow>,
    opts: RunOptions,
    cancel: CancelToken,
) -> Result<RunReport, RunError> {
    let g = &wf.graph;
    let count = g.graph.node_count();
    let selected = wf.select(&opts.selection)?;
    let mut status: Vec<Status> = vec![Status::Skipped; count];
    for (n, up) in wf.inputs_from_cache(&opts.selection, &selected)? {
        status[n.index()] = Status::Done(up);
    }

    let mut ready: VecDeque<NodeIndex> = VecDeque::new();
    for &n in &g.order {
        if !selected[n.index()] {
            continue;
        }
        let waiting = g.graph[n]
            .inputs
            .iter()
            .filter(|i| selected[i.index()])
            .count();
        status[n.index()] = Status::Waiting(waiting);
        if waiting == 0 {
            ready.push_back(n);
        }
    }
    let total = selected.iter().filter(|s| **s).count();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut outcomes: Vec<Option<TaskReport>> = vec![None; count];
    let mut join = tokio::task::JoinSet::new();
    let mut in_flight = std::collections::HashMap::new();
    let (mut running, mut gpu_used, mut cpu_used) = (0usize, 0u32, 0u32);
    let mut stopping = false;
    let mut stop = Box::pin(crate::signals::stop_signal());
    let mut stopped_by = None;
    // Once cancelled: when the tasks still running are abandoned.
    let mut give_up: Option<tokio::time::Instant> = None;
    // How often the bar shows the running tasks' progress lines.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));

    let release = |n: NodeIndex, status: &mut Vec<Status>, ready: &mut VecDeque<NodeIndex>| {
        for d in g.graph.neighbors_directed(n, petgraph::Direction::Outgoing) {
            if !selected[d.index()] {
                continue;
            }
            if let Status::Waiting(k) = &mut status[d.index()] {
                // An input listed twice (a gather of the same task) still counts once per edge.
                let edges = g.graph.edges_connecting(n, d).count();
                *k = k.saturating_sub(edges);
                if *k == 0 {
                    ready.push_back(d);
                }
            }
        }
    };

    loop {
        // Start what fits; serve cached tasks at once.
        let mut i = 0;
        while !stopping && !cancel.is_cancelled() && i < ready.len() {
            let n = ready[i];
            let inputs = upstream(&wf, n, &status).expect("ready tasks have finished inputs");
            let stage_name = g.stage_name(n).to_string();
            let force = opts.force.contains(&stage_name);
            if !force {
                let digests: Vec<String> = inputs.iter().map(|u| u.digest.clone()).collect();
                let key = wf.material(n, &digests).key();
                if let Some(up) = wf.cached(key)? {
                    ready.remove(i);
                    status[n.index()] = Status::Done(up);
                    outcomes[n.index()] = Some(TaskReport {
                        stage: stage_name,
                        item: g.item_id(n).map(str::to_string),
                        state: Outcome::Cached,
                        key: Some(key),
                        error: None,
                        log_tail: None,
                    });
                    bar.inc(1);
                    release(n, &mut status, &mut ready);
                    continue;
                }
            }
            let res = &wf.pipeline.stages[g.graph[n].stage].resources;
            let need_cpu = res.cpus.max(1);
            let need_gpu = res.gpu;
            let fits = running < opts.jobs.max(1)
                && cpu_used + need_cpu <= opts.cpus.max(1)
                && gpu_used + need_gpu <= opts.gpus;
            // A task bigger than the machine still runs, alone, rather than never.
            if !fits && running > 0 {
                i += 1;
                continue;
            }
            ready.remove(i);
            running += 1;
            cpu_used += need_cpu;
            gpu_used += need_gpu;
            status[n.index()] = Status::Running;
            bar.set_message(g.label(n));
            tracing::info!(task = %g.label(n), "running");
            let wf2 = wf.clone();
            let cancel2 = cancel.clone();
            let retries = opts.retries;
            let handle =
                join.spawn_blocking(move || run_task(&wf2, n, &inputs, force, retries, &cancel2));
            in_flight.insert(handle.id(), (n, need_cpu, need_gpu));
        }
        if running == 0 {
            break;
        }
        tokio::select! {
            done = join.join_next_with_id() => {
                let Some(done) = done else { break };
                let (id, result) = match done {
                    Ok((id, r)) => (id, r),
                    // Stages' panics are caught in `run_stage`; this is one in covflow itself
                    // while it ran a task. It fails that task, not the run.
                    Err(e) => (e.id(), Err(TaskFailure {
                        message: format!("covflow failed while running the task: {e}"),
                        log_tail: String::new(),
                    })),
                };
                let (n, c, gp) = in_flight.remove(&id).expect("every spawned task is in flight");
                wf.progress.clear(&g.label(n));
                running -= 1;
                cpu_used -= c;
                gpu_used -= gp;
                bar.inc(1);
                let stage = g.stage_name(n).to_string();
                let item = g.item_id(n).map(str::to_string);
                match result {
                    Ok((outcome, material, up)) => {
                        tracing::info!(task = %g.label(n), state = ?outcome, key = %up.key.short(), "finished");
                        outcomes[n.index()] = Some(TaskReport {
                            stage, item, state: outcome, key: Some(material.key()), error: None, log_tail: None,
                        });
                        status[n.index()] = Status::Done(up);
                        release(n, &mut status, &mut ready);
                    }
                    Err(f) => {
                        tracing::info!(task = %g.label(n), error = %f.message, "failed");
                        let digests: Option<Vec<String>> = upstream(&wf, n, &status)
                            .map(|u| u.into_iter().map(|x| x.digest).collect());
                        outcomes[n.index()] = Some(TaskReport {
                            stage, item, state: Outcome::Failed,
                            key: digests.map(|d| wf.material(n, &d).key()),
                            error: Some(f.message), log_tail: Some(f.log_tail),
                        });
                        status[n.index()] = Status::Failed;
                        if !opts.keep_going {
                            stopping = true;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(line) = wf.progress.summary() {
                    bar.set_message(line);
                }
            }
            signal = &mut stop, if stopped_by.is_none() => {
                tracing::warn!("{signal}: cancelling {running} running task(s)");
                stopped_by = Some(signal.to_string());
                cancel.cancel();
                stopping = true;
                give_up = Some(tokio::time::Instant::now() + crate::signals::GRACE);
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                // Tasks that do not stop in time are left to die with the process; they leave
                // nothing in the cache but a staging folder the next run removes.
                for (n, _, _) in in_flight.values() {
                    outcomes[n.index()] = Some(TaskReport {
                        stage: g.stage_name(*n).to_string(),
                        item: g.item_id(*n).map(str::to_string),
                        state: Outcome::Failed,
                        key: None,
                        error: Some(format!("cancelled ({}), still running after {} s: abandoned", stopped_by.as_deref().unwrap_or("signal"), crate::signals::GRACE.as_secs())),
                        log_tail: None,
                    });
                }
                break;
            }
        }
    }
    bar.finish_and_clear();

    let mut report = RunReport {
        tasks: Vec::new(),
        cancelled: cancel.is_cancelled(),
        stopped_by,
    };
    for &n in &g.order {
        if !selected[n.index()] {
            continue;
        }
        report
            .tasks
            .push(outcomes[n.index()].take().unwrap_or_else(|| TaskReport {
                stage: g.stage_name(n).to_string(),
                item: g.item_id(n).map(str::to_string),
                state: Outcome::Skipped,
                key: None,
                error: None,
                log_tail: None,
            }));
    }
    Ok(report)
}

/// Runs a task again in a scratch directory and returns the content digest of what it wrote,
/// without storing anything (`covflow audit --reexecute`).
pub fn reexecute(
    wf: &Workflow,
    n: NodeIndex,
    inputs: &[Upstream],
    cancel: &CancelToken,
) -> Result<String, TaskFailure> {
    let log = TaskLog::default();
    let fail = |message: String, log: &TaskLog| TaskFailure {
        message,
        log_tail: log.tail(20),
    };
    let scratch = wf
        .store
        .scratch_dir()
        .map_err(|e| fail(e.to_string(), &log))?;
    let out_dir = scratch.join("data");
    let work_dir = scratch.join("work");
    for d in [&out_dir, &work_dir] {
        std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display()), &log))?;
    }
    let task_inputs = stage_inputs(wf, n, inputs);
    let result = run_stage(wf, n, &task_inputs, &out_dir, &work_dir, &log, cancel)
        .map_err(|e| fail(e.to_string(), &log))
        .and_then(|()| {
            covflow_cache::scan_dir(&out_dir)
                .map(|files| covflow_cache::content_digest(&files))
                .map_err(|e| fail(e.to_string(), &log))
        });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
