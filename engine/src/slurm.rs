//! The SLURM executor: each task that is not cached becomes a SLURM job running
//! `covflow stage run`, one job array per fan-out stage, `afterok` edges between stages.
//!
//! Correctness does not depend on SLURM: every job computes its key from the artifacts its inputs
//! left in the shared cache and takes the key's lock, exactly as a local run does. SLURM only
//! orders and places the work. No accounting database is needed: the executor polls `squeue`,
//! and after the jobs are gone it reads the outcome from the cache itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::NodeIndex;

use crate::execute::{Outcome, RunError, RunReport, Selection, TaskReport};
use crate::invocation::{StageInvocation, shell_quote};
use crate::plan::{TaskState, Workflow};

/// How to submit.
#[derive(Clone, Debug)]
pub struct SlurmOptions {
    /// The `covflow` binary the jobs run (must be reachable from every node).
    pub covflow: PathBuf,
    /// The run's `--set` overrides, passed to every job so that it sees the same pipeline.
    pub overrides: Vec<String>,
    /// Which tasks (`--until`, `--only`), as in a local run.
    pub selection: Selection,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Extra `sbatch` arguments, passed as given.
    pub sbatch_args: Vec<String>,
    /// Stages to re-run even if cached.
    pub force: BTreeSet<String>,
    /// Wait for the jobs (else submit and return).
    pub wait: bool,
    /// Time between `squeue` polls.
    pub poll: Duration,
}

/// What can stop a SLURM run.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// `sbatch`/`squeue` missing or failing.
    #[error("{0}")]
    Command(String),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] covflow_cache::CacheError),
    /// The selection names no stage, or `--only`'s inputs are not cached.
    #[error(transparent)]
    Selection(#[from] RunError),
    /// Writing job scripts failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One submitted job (an array for fan-out stages).
#[derive(Clone, Debug)]
pub struct SubmittedJob {
    /// SLURM job id.
    pub id: String,
    /// Stage.
    pub stage: String,
    /// Tasks in array-index order.
    pub tasks: Vec<NodeIndex>,
    /// Log file pattern (`%a` is the array index).
    pub log: PathBuf,
}

async fn command(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            SlurmError::Command(format!(
                "cannot run `{program}`: {e}\n  help: the SLURM executor needs the SLURM client commands (sbatch, squeue, scancel) on PATH"
            ))
        })?;
    if !out.status.success() {
        return Err(SlurmError::Command(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A job's files: its script, and its log pattern (`%a` is the array index).
fn job_files(dir: &Path, stage: &str, fan_out: bool) -> (PathBuf, PathBuf) {
    let log = if fan_out {
        format!("{stage}-%a.log")
    } else {
        format!("{stage}.log")
    };
    (dir.join(format!("{stage}.sh")), dir.join(log))
}

fn write(path: &Path, text: &str) -> Result<(), SlurmError> {
    std::fs::write(path, text).map_err(|source| SlurmError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the job script of `tasks` (all of stage `s`): one `covflow stage run`, reading its
/// item from the item list by array index when the stage fans out.
fn write_script(
    wf: &Workflow,
    opts: &SlurmOptions,
    dir: &Path,
    s: usize,
    tasks: &[NodeIndex],
) -> Result<PathBuf, SlurmError> {
    let g = &wf.graph;
    let decl = &wf.pipeline.stages[s];
    let fan_out = g.graph[tasks[0]].item.is_some();
    let invocation = StageInvocation {
        pipeline: std::fs::canonicalize(&wf.pipeline.path).unwrap_or(wf.pipeline.path.clone()),
        stage: decl.name.clone(),
        item: None,
        cache: wf.store.root().to_path_buf(),
        device: wf.device,
        overrides: opts.overrides.clone(),
        // A forced stage was planned to run; its job must not find it cached.
        force: opts.force.contains(&decl.name),
    };
    let mut script = String::from("#!/bin/bash\nset -euo pipefail\n");
    if fan_out {
        let items: Vec<&str> = tasks.iter().filter_map(|&n| g.item_id(n)).collect();
        let list = dir.join(format!("{}.items", decl.name));
        write(&list, &(items.join("\n") + "\n"))?;
        script.push_str(&format!(
            "item=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {})\n",
            shell_quote(&list.to_string_lossy())
        ));
    }
    let program = opts.covflow.to_string_lossy();
    let line = invocation.shell_line(&program, fan_out.then_some("item"));
    script.push_str(&format!("exec {line}\n"));
    let (path, _) = job_files(dir, &decl.name, fan_out);
    write(&path, &script)?;
    Ok(path)
}

/// `sbatch`'s arguments for stage `s`'s job: resources, array, dependencies, the user's own.
fn sbatch_args(
    wf: &Workflow,
    opts: &SlurmOptions,
    s: usize,
    tasks: usize,
    fan_out: bool,
    (script, log): (&Path, &Path),
    depends_on: &[String],
) -> Vec<String> {
    let decl = &wf.pipeline.stages[s];
    let res = &decl.resources;
    let mut sb = vec![
        "--parsable".to_string(),
        format!("--job-name=covflow/{}/{}", wf.pipeline.name, decl.name),
        format!("--output={}", log.display()),
        format!("--cpus-per-task={}", res.cpus.max(1)),
    ];
    if fan_out {
        sb.push(format!("--array=0-{}", tasks - 1));
    }
    if let Some(m) = res.mem_gb {
        sb.push(format!("--mem={}M", (m * 1024.0).ceil() as u64));
    }
    if let Some(t) = res.time_min {
        sb.push(format!("--time={t}"));
    }
    if res.gpu > 0 {
        sb.push(format!("--gres=gpu:{}", res.gpu));
    }
    if let Some(p) = &opts.partition {
        sb.push(format!("--partition={p}"));
    }
    if let Some(a) = &opts.account {
        sb.push(format!("--account={a}"));
    }
    if !depends_on.is_empty() {
        sb.push(format!("--dependency=afterok:{}", depends_on.join(":")));
        // A failed upstream cancels its dependents instead of leaving them pending forever.
        sb.push("--kill-on-invalid-dep=yes".into());
    }
    sb.extend(opts.sbatch_args.iter().cloned());
    sb.push(script.to_string_lossy().into_owned());
    sb
}

async fn cancel_all(jobs: &[SubmittedJob]) {
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    if !ids.is_empty() {
        let _ = command("scancel", &ids).await;
    }
}

/// Submits one job per stage of `to_run`, in dependency order; a stage's job depends on the jobs
/// of the stages it needs. A failed submission cancels what was submitted before it.
async fn submit(
    wf: &Workflow,
    opts: &SlurmOptions,
    dir: &Path,
    to_run: &BTreeSet<NodeIndex>,
) -> Result<Vec<SubmittedJob>, SlurmError> {
    let g = &wf.graph;
    let mut by_stage: BTreeMap<usize, Vec<NodeIndex>> = BTreeMap::new();
    let mut stage_order = Vec::new();
    for &n in g.order.iter().filter(|n| to_run.contains(n)) {
        let s = g.graph[n].stage;
        if !by_stage.contains_key(&s) {
            stage_order.push(s);
        }
        by_stage.entry(s).or_default().push(n);
    }
    let mut jobs: Vec<SubmittedJob> = Vec::new();
    let mut job_of_stage: BTreeMap<&str, String> = BTreeMap::new();
    for s in stage_order {
        let decl = &wf.pipeline.stages[s];
        let tasks = by_stage.remove(&s).expect("listed above");
        let fan_out = g.graph[tasks[0]].item.is_some();
        let submitted = async {
            let script = write_script(wf, opts, dir, s, &tasks)?;
            let (_, log) = job_files(dir, &decl.name, fan_out);
            let deps: Vec<String> = decl
                .needs
                .iter()
                .filter_map(|n| job_of_stage.get(n.as_str()).cloned())
                .collect();
            let args = sbatch_args(wf, opts, s, tasks.len(), fan_out, (&script, &log), &deps);
            let out = command("sbatch", &args).await?;
            Ok::<_, SlurmError>((out.trim().split(';').next().unwrap_or("").to_string(), log))
        };
        let (id, log) = match submitted.await {
            Ok(v) => v,
            Err(e) => {
                cancel_all(&jobs).await;
                return Err(e);
            }
        };
        tracing::info!(stage = %decl.name, job = %id, tasks = tasks.len(), "submitted");
        job_of_stage.insert(&decl.name, id.clone());
        jobs.push(SubmittedJob {
            id,
            stage: decl.name.clone(),
            tasks,
            log,
        });
    }
    Ok(jobs)
}

/// Polls `squeue` until every job has left it; SIGINT, SIGTERM or SIGHUP cancels them. Returns
/// the signal that did.
async fn wait_for(jobs: &[SubmittedJob], poll: Duration) -> Option<&'static str> {
    let mut cancelled = None;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let mut stop = Box::pin(crate::signals::stop_signal());
    loop {
        let out = command(
            "squeue",
            &[
                "-h".into(),
                "-o".into(),
                "%i %T".into(),
                "-j".into(),
                ids.join(","),
            ],
        )
        .await;
        // squeue errors once every job has left its memory ("Invalid job id").
        let active = match out {
            Ok(s) => s
                .lines()
                .filter(|l| {
                    let st = l.split_whitespace().nth(1).unwrap_or("");
                    matches!(
                        st,
                        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED"
                    )
                })
                .count(),
            Err(_) => 0,
        };
        if active == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            signal = &mut stop => {
                tracing::warn!("{signal}: cancelling the submitted jobs");
                cancel_all(jobs).await;
                cancelled = Some(signal);
                break;
            }
        }
    }
    cancelled
}

/// Submits every selected task that is not cached and (with `wait`) waits for them. Ctrl-C
/// cancels the submitted jobs.
pub async fn run_slurm(
    wf: Arc<Workflow>,
    opts: SlurmOptions,
) -> Result<(RunReport, Vec<SubmittedJob>), SlurmError> {
    let selected = wf.select(&opts.selection)?;
    // `--only`: its inputs must be cached; the jobs find them there.
    wf.inputs_from_cache(&opts.selection, &selected)?;
    let plan: Vec<_> = wf
        .plan(&opts.force)?
        .into_iter()
        .filter(|p| selected[p.node.index()])
        .collect();
    let to_run: BTreeSet<NodeIndex> = plan
        .iter()
        .filter(|p| matches!(p.state, TaskState::Run(_)))
        .map(|p| p.node)
        .collect();

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = wf
        .store
        .root()
        .join("slurm")
        .join(format!("{}-{stamp}", wf.pipeline.name));
    std::fs::create_dir_all(&dir).map_err(|source| SlurmError::Io {
        path: dir.clone(),
        source,
    })?;
    let jobs = submit(&wf, &opts, &dir, &to_run).await?;
    let g = &wf.graph;

    let stopped_by = match opts.wait && !jobs.is_empty() {
        true => wait_for(&jobs, opts.poll).await,
        false => None,
    };

    // The outcome, read from the cache: a submitted task succeeded iff its artifact is there now.
    let after: Option<Vec<_>> = if opts.wait {
        Some(
            wf.plan(&BTreeSet::new())?
                .into_iter()
                .filter(|p| selected[p.node.index()])
                .collect(),
        )
    } else {
        None
    };
    let mut report = RunReport {
        tasks: Vec::new(),
        cancelled: stopped_by.is_some(),
        stopped_by: stopped_by.map(str::to_string),
    };
    let log_of = |n: NodeIndex| -> Option<PathBuf> {
        let job = jobs.iter().find(|j| j.tasks.contains(&n))?;
        let idx = job.tasks.iter().position(|t| *t == n)?;
        Some(PathBuf::from(
            job.log.to_string_lossy().replace("%a", &idx.to_string()),
        ))
    };
    for (i, p) in plan.iter().enumerate() {
        let n = p.node;
        let submitted = to_run.contains(&n);
        let (state, key) = match (&after, submitted) {
            (_, false) => (Outcome::Cached, p.key),
            (None, true) => (Outcome::Skipped, p.key),
            (Some(a), true) => match a[i].state {
                TaskState::Cached => (Outcome::Executed, a[i].key),
                TaskState::Run(_) => {
                    let ran = log_of(n).is_some_and(|l| l.exists());
                    (
                        if ran {
                            Outcome::Failed
                        } else {
                            Outcome::Skipped
                        },
                        a[i].key,
                    )
                }
            },
        };
        let log_tail = if state == Outcome::Failed {
            log_of(n)
                .and_then(|l| std::fs::read_to_string(&l).ok())
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(20)..].join("\n")
                })
        } else {
            None
        };
        report.tasks.push(TaskReport {
            stage: g.stage_name(n).to_string(),
            item: g.item_id(n).map(str::to_string),
            state,
            key,
            error: (state == Outcome::Failed).then(|| {
                format!(
                    "SLURM job failed (log: {})",
                    log_of(n)
                        .map(|l| l.display().to_string())
                        .unwrap_or_default()
                )
            }),
            log_tail,
        });
    }
    Ok((report, jobs))
}
