//! `covflow run`, `plan`, `stage run` and `graph`.

use std::collections::BTreeSet;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use covflow_engine::{
    CancelToken, Outcome, RunError, RunOptions, RunReport, Selection, SlurmError, SlurmOptions,
    StageInvocation, TaskState, run_local, run_slurm, run_task,
};
use serde_json::json;

use crate::{Failure, PipelineArgs, workflow};

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Executor {
    /// Run tasks on this machine.
    Local,
    /// Submit each task as a SLURM job (`covflow stage run`), `afterok` edges between stages.
    Slurm,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Run this stage and everything upstream of it, nothing downstream.
    #[arg(long, value_name = "STAGE", conflicts_with = "only")]
    until: Option<String>,
    /// Run only this stage; its inputs must be in the cache.
    #[arg(long, value_name = "STAGE")]
    only: Option<String>,
    /// Re-run this stage even if cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Tasks at once [default: number of CPUs].
    #[arg(short, long)]
    jobs: Option<usize>,
    /// GPU slots for tasks that declare `resources: {gpu: N}`.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// After a failure, keep running the tasks that do not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Extra attempts for a failed task.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Where tasks run.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    executor: Executor,
    /// SLURM partition (with --executor slurm).
    #[arg(long)]
    partition: Option<String>,
    /// SLURM account (with --executor slurm).
    #[arg(long)]
    account: Option<String>,
    /// Extra sbatch argument, e.g. --slurm-arg=--qos=long (repeatable).
    #[arg(long = "slurm-arg", allow_hyphen_values = true, value_name = "ARG")]
    slurm_args: Vec<String>,
    /// With --executor slurm: submit and exit; a later `plan` or `run` shows the state.
    #[arg(long)]
    no_wait: bool,
    /// Print one JSON object at the end (see README).
    #[arg(long)]
    json: bool,
    /// Re-hash every cached artifact before using it (by default each file's presence, size and
    /// modification time are checked, and a file changed after sealing is re-hashed).
    #[arg(long)]
    verify: bool,
    /// Fail on a broken cached artifact instead of running its task again.
    #[arg(long)]
    frozen: bool,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Plan as if this stage were forced (repeatable).
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Print JSON (see README).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
}

#[derive(Subcommand, Debug)]
pub enum StageCommand {
    /// Run exactly one task. Its inputs must be in the cache; it is cached itself if another
    /// process made it. This is what SLURM jobs call.
    Run {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The stage.
        stage: String,
        /// The item, for fan-out stages.
        #[arg(long, allow_hyphen_values = true)]
        item: Option<String>,
        /// Re-run even if cached.
        #[arg(long)]
        force: bool,
        /// Print the task's report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What each stage kind does and the parameters its `with:` takes, with types, defaults and
    /// meanings.
    Kinds {
        /// One kind (default: all).
        kind: Option<String>,
        /// As the README's markdown tables.
        #[arg(long)]
        markdown: bool,
    },
}

fn check_stages(wf: &covflow_engine::Workflow, names: &[String]) -> Result<(), Failure> {
    for n in names {
        if wf.pipeline.stage(n).is_none() {
            return Err(Failure::Invalid(format!(
                "no stage `{n}` in {}\n  help: stages: {}",
                wf.pipeline.path.display(),
                wf.pipeline
                    .stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Runs `f` to completion on a fresh runtime, then leaves without waiting for blocking threads:
/// a task abandoned after a signal must not keep the process alive.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}

pub fn run(a: RunArgs) -> Result<(), Failure> {
    let mut wf = workflow::load(&a.pipeline)?;
    if a.verify {
        wf.integrity = covflow_cache::Integrity::Full;
    }
    wf.frozen = a.frozen;
    let named: Vec<String> = a
        .force
        .iter()
        .chain(a.until.iter())
        .chain(a.only.iter())
        .cloned()
        .collect();
    check_stages(&wf, &named)?;
    let mut opts = RunOptions {
        keep_going: a.keep_going,
        retries: a.retries,
        force: a.force.iter().cloned().collect(),
        gpus: a.gpus,
        ..RunOptions::default()
    };
    if let Some(j) = a.jobs {
        opts.jobs = j.max(1);
    }
    if a.json {
        opts.progress = false;
    }
    opts.selection = match (&a.until, &a.only) {
        (Some(s), _) => Selection::Until(s.clone()),
        (_, Some(s)) => Selection::Only(s.clone()),
        _ => Selection::All,
    };
    let wf = Arc::new(wf);
    if a.executor == Executor::Slurm {
        let opts = SlurmOptions {
            covflow: std::env::current_exe()
                .map_err(|e| Failure::Failed(format!("cannot find the covflow binary: {e}")))?,
            overrides: a.pipeline.set.clone(),
            selection: opts.selection,
            partition: a.partition.clone(),
            account: a.account.clone(),
            sbatch_args: a.slurm_args.clone(),
            force: a.force.iter().cloned().collect(),
            wait: !a.no_wait,
            poll: std::time::Duration::from_millis(500),
        };
        let (report, jobs) = block_on(run_slurm(wf.clone(), opts)).map_err(|e| match e {
            SlurmError::Selection(e) => run_error(e),
            other => Failure::Failed(other.to_string()),
        })?;
        for j in &jobs {
            eprintln!(
                "covflow: submitted {} task(s) of `{}` as SLURM job {} (logs: {})",
                j.tasks.len(),
                j.stage,
                j.id,
                j.log.display()
            );
        }
        if a.no_wait {
            if a.json {
                println!(
                    "{}",
                    json!({"submitted": jobs.iter().map(|j| json!({"stage": j.stage, "job": j.id, "tasks": j.tasks.len()})).collect::<Vec<_>>()})
                );
            }
            return Ok(());
        }
        finish(&report, a.json)?;
        return crate::cmd_report::after_run(&wf, &a.pipeline.file, a.json);
    }
    let report =
        block_on(run_local(wf.clone(), opts, CancelToken::default())).map_err(run_error)?;
    finish(&report, a.json)?;
    crate::cmd_report::after_run(&wf, &a.pipeline.file, a.json)
}

fn run_error(e: RunError) -> Failure {
    match e {
        RunError::NoSuchTask(m) => Failure::Invalid(m),
        other => Failure::Failed(other.to_string()),
    }
}

fn finish(report: &RunReport, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", report.to_json());
    } else {
        eprintln!(
            "covflow: {} executed, {} cached, {} failed, {} skipped",
            report.count(Outcome::Executed),
            report.count(Outcome::Cached),
            report.count(Outcome::Failed),
            report.count(Outcome::Skipped)
        );
    }
    let failed: Vec<_> = report
        .tasks
        .iter()
        .filter(|t| t.state == Outcome::Failed)
        .collect();
    if report.cancelled {
        let signal = report.stopped_by.as_deref().unwrap_or("a signal");
        return Err(Failure::Failed(format!(
            "stopped by {signal}: {} running task(s) cancelled, {} not started; what finished is cached: run again to resume",
            report.count(Outcome::Failed),
            report.count(Outcome::Skipped)
        )));
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for t in &failed {
        let label = match &t.item {
            Some(i) => format!("{}[{i}]", t.stage),
            None => t.stage.clone(),
        };
        msg.push_str(&format!(
            "task {label} failed: {}\n--- last lines of its log ---\n{}\n---\n",
            t.error.as_deref().unwrap_or("?"),
            t.log_tail.as_deref().unwrap_or("")
        ));
    }
    Err(Failure::Failed(msg.trim_end().to_string()))
}

pub fn plan(a: PlanArgs) -> Result<(), Failure> {
    let wf = workflow::load(&a.pipeline)?;
    check_stages(&wf, &a.force)?;
    let force: BTreeSet<String> = a.force.iter().cloned().collect();
    let plan = wf.plan(&force)?;
    if a.json {
        let tasks: Vec<_> = plan
            .iter()
            .map(|p| {
                let (state, reason) = match &p.state {
                    TaskState::Cached => ("cached", None),
                    TaskState::Run(r) => ("run", Some(r.clone())),
                };
                json!({
                    "stage": wf.graph.stage_name(p.node),
                    "item": wf.graph.item_id(p.node),
                    "state": state,
                    "reason": reason,
                    "key": p.key.map(|k| k.to_hex()),
                })
            })
            .collect();
        println!("{}", json!({ "tasks": tasks }));
    } else {
        let mut to_run = 0;
        for p in &plan {
            match &p.state {
                TaskState::Cached => println!("cached  {}", wf.graph.label(p.node)),
                TaskState::Run(r) => {
                    to_run += 1;
                    println!("run     {}  ({r})", wf.graph.label(p.node));
                }
            }
        }
        println!(
            "{} tasks: {} cached, {to_run} to run",
            plan.len(),
            plan.len() - to_run
        );
    }
    Ok(())
}

pub fn graph(a: GraphArgs) -> Result<(), Failure> {
    let wf = workflow::load(&a.pipeline)?;
    print!("{}", wf.graph.to_dot(&wf.pipeline.name));
    Ok(())
}

/// What `stage run`'s arguments say, as the engine's shared type (the SLURM executor writes
/// job scripts from the same type).
fn invocation(
    pipeline: &PipelineArgs,
    stage: &str,
    item: Option<&str>,
    force: bool,
) -> StageInvocation {
    StageInvocation {
        pipeline: pipeline.file.clone(),
        stage: stage.to_string(),
        item: item.map(str::to_string),
        cache: workflow::cache_dir(pipeline),
        device: pipeline.device,
        overrides: pipeline.set.clone(),
        force,
    }
}

pub fn stage(c: StageCommand) -> Result<(), Failure> {
    match c {
        StageCommand::Run {
            pipeline,
            stage,
            item,
            force,
            json,
        } => {
            let inv = invocation(&pipeline, &stage, item.as_deref(), force);
            stage_run(&pipeline, &inv, json)
        }
        StageCommand::Kinds { kind, markdown } => stage_kinds(kind.as_deref(), markdown),
    }
}

/// `covflow stage kinds [KIND] [--markdown]`: every kind's purpose and parameters, from their
/// definitions (the README's tables are the `--markdown` output).
fn stage_kinds(kind: Option<&str>, markdown: bool) -> Result<(), Failure> {
    let registry = workflow::registry();
    let kinds: Vec<&str> = match kind {
        Some(k) if registry.stage(k).is_some() => vec![k],
        Some(k) => {
            return Err(Failure::Invalid(format!(
                "unknown stage kind `{k}`\n  help: known kinds: {}",
                registry.stage_kinds().join(", ")
            )));
        }
        None => registry.stage_kinds(),
    };
    for k in kinds {
        let stage = registry.stage(k).expect("listed above");
        if markdown {
            println!("#### `{k}`\n\n{}\n", stage.about());
            print!("{}", covflow_engine::params_markdown(stage.as_ref()));
            println!();
            continue;
        }
        println!("{k} (version {})\n  {}", stage.version(), stage.about());
        let params = stage.params();
        if params.is_empty() {
            println!("  no parameters");
        }
        for p in params {
            println!(
                "  {}: {}, {}",
                p.name,
                p.ty,
                if p.default == "required" {
                    p.default.clone()
                } else {
                    format!("default {}", p.default)
                }
            );
            if !p.doc.is_empty() {
                println!("      {}", p.doc);
            }
        }
        println!();
    }
    Ok(())
}

fn stage_run(args: &PipelineArgs, inv: &StageInvocation, json: bool) -> Result<(), Failure> {
    let wf = workflow::load(args)?;
    let (stage, item) = (&inv.stage, &inv.item);
    check_stages(&wf, std::slice::from_ref(stage))?;
    let Some(node) = wf.graph.find(stage, item.as_deref()) else {
        let items: Vec<String> = wf
            .graph
            .tasks_of(stage)
            .into_iter()
            .filter_map(|n| wf.graph.item_id(n).map(str::to_string))
            .collect();
        return Err(Failure::Invalid(match (item, items.is_empty()) {
            (None, false) => format!(
                "stage `{stage}` fans out over {} items: pass --item ID (e.g. --item {})",
                items.len(),
                items[0]
            ),
            (Some(i), false) => format!("stage `{stage}` has no item `{i}`"),
            (Some(_), true) => format!("stage `{stage}` does not fan out: drop --item"),
            (None, true) => format!("stage `{stage}` has no task"),
        }));
    };
    let upstream = wf.graph.ancestors(&[node]);
    let plan = wf.plan_selected(&BTreeSet::new(), Some(&upstream))?;
    let mut cached = wf.cached_inputs(&plan)?;
    let mut inputs = Vec::new();
    let mut missing = Vec::new();
    for &i in &wf.graph.graph[node].inputs {
        match cached.remove(&i) {
            Some(up) => inputs.push(up),
            None => missing.push(wf.graph.label(i)),
        }
    }
    if !missing.is_empty() {
        return Err(Failure::Failed(
            RunError::MissingInputs {
                task: wf.graph.label(node),
                missing: missing.join(", "),
            }
            .to_string(),
        ));
    }
    // A SLURM job gets SIGTERM at its time limit or on `scancel`: cancel the task as a run
    // would, and leave within the grace period.
    let cancel = CancelToken::default();
    let wf = std::sync::Arc::new(wf);
    let (wf2, cancel2, force) = (wf.clone(), cancel.clone(), inv.force);
    let result = block_on(async move {
        let mut task =
            tokio::task::spawn_blocking(move || run_task(&wf2, node, &inputs, force, 0, &cancel2));
        let stopped = tokio::select! {
            done = &mut task => return done.map_err(|e| e.to_string()),
            signal = covflow_engine::stop_signal() => signal,
        };
        cancel.cancel();
        match tokio::time::timeout(covflow_engine::GRACE, task).await {
            Ok(done) => done.map_err(|e| e.to_string()),
            Err(_) => Err(format!("stopped by {stopped}")),
        }
    })
    .map_err(|e| Failure::Failed(format!("task {}: {e}", wf.graph.label(node))))?;
    match result {
        Ok((outcome, material, up)) => {
            if json {
                println!(
                    "{}",
                    json!({"stage": stage, "item": item, "state": outcome, "key": material.key().to_hex(), "digest": up.digest})
                );
            } else {
                eprintln!(
                    "covflow: {} {:?} (key {})",
                    wf.graph.label(node),
                    outcome,
                    up.key.short()
                );
            }
            Ok(())
        }
        Err(f) => Err(Failure::Failed(format!(
            "task {} failed: {}\n--- last lines of its log ---\n{}",
            wf.graph.label(node),
            f.message,
            f.log_tail
        ))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_slurm_command_line_parses_back_to_the_same_invocation() {
        for item in [None, Some("study_0001"), Some("-rf")] {
            let want = StageInvocation {
                pipeline: "/p/demo pipeline.yaml".into(),
                stage: "crops".into(),
                item: item.map(str::to_string),
                cache: "/scratch/cache".into(),
                device: covflow_engine::Device::Wgpu,
                overrides: vec![
                    "params.count=2".into(),
                    "stages.grid.with.shape=[1, 2, 3]".into(),
                ],
                force: item.is_some(),
            };
            let argv = std::iter::once("covflow".to_string()).chain(want.args());
            let crate::Command::Stage(StageCommand::Run {
                pipeline,
                stage,
                item,
                force,
                ..
            }) = crate::Cli::try_parse_from(argv).expect("parses").command
            else {
                panic!("not `stage run`");
            };
            assert_eq!(invocation(&pipeline, &stage, item.as_deref(), force), want);
        }
    }
}
