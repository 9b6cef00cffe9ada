//! A stage that panics fails its own task, with the panic's message in the task's log and in the
//! run's report, and nothing else: the run finishes, the independent tasks too with
//! `--keep-going`, and the cache holds their artifacts.

use std::sync::Arc;

use covflow_cache::Store;
use covflow_engine::{
    CancelToken, Outcome, Pipeline, Registry, RunOptions, Stage, StageError, TaskContext,
    TaskGraph, Workflow, run_local,
};

/// `with: {}`.
#[derive(Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Panics on the item named `bad`, writes a file for the others.
struct Fragile;

impl Stage for Fragile {
    type Params = NoParams;
    fn kind(&self) -> &'static str {
        "fragile"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Panics on item `bad`."
    }
    fn run(&self, _: &NoParams, ctx: &TaskContext) -> Result<(), StageError> {
        let item = ctx.item.expect("fans out");
        ctx.log.line(format!("working on {}", item.id));
        if item.id == "bad" {
            let v: Vec<u32> = Vec::new();
            let _ = v[item.id.len()]; // index out of bounds: a bug
        }
        std::fs::write(ctx.out_dir.join("ok.txt"), &item.id)?;
        Ok(())
    }
}

fn workflow(dir: &std::path::Path) -> Workflow {
    let file = dir.join("p.yaml");
    std::fs::write(
        &file,
        "name: panics\ndatasets:\n  xs: {list: [a, bad, c]}\nstages:\n  work: {uses: fragile, foreach: xs}\n  after: {uses: exec, foreach: work, with: {run: 'cat {in.work}/ok.txt > {out}/x'}}\n  side: {uses: exec, with: {run: 'echo independent > {out}/y'}}\n",
    )
    .unwrap();
    let mut registry = Registry::with_builtins();
    registry.add_stage(Fragile);
    let pipeline = Pipeline::load(&file, &[], &registry).unwrap();
    let graph = TaskGraph::build(&pipeline, &registry).unwrap();
    let store = Store::open(dir.join("cache")).unwrap();
    Workflow::new(pipeline, graph, registry, store, Default::default())
}

fn run(wf: Arc<Workflow>, keep_going: bool) -> covflow_engine::RunReport {
    let opts = RunOptions {
        keep_going,
        jobs: 1,
        progress: false,
        ..RunOptions::default()
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_local(wf, opts, CancelToken::default()))
        .unwrap()
}

#[test]
fn a_panicking_task_fails_alone_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let wf = Arc::new(workflow(dir.path()));
    let report = run(wf.clone(), true);
    let state = |stage: &str, item: Option<&str>| {
        report
            .tasks
            .iter()
            .find(|t| t.stage == stage && t.item.as_deref() == item)
            .unwrap_or_else(|| panic!("{stage} {item:?}"))
    };
    let bad = state("work", Some("bad"));
    assert_eq!(bad.state, Outcome::Failed);
    let error = bad.error.as_deref().unwrap();
    assert!(
        error.contains("the stage panicked: index out of bounds"),
        "{error}"
    );
    let log = bad.log_tail.as_deref().unwrap();
    assert!(
        log.contains("working on bad") && log.contains("panicked"),
        "{log}"
    );
    // Everything that does not depend on it ran; what does was skipped.
    for (stage, item, want) in [
        ("work", Some("a"), Outcome::Executed),
        ("work", Some("c"), Outcome::Executed),
        ("after", Some("a"), Outcome::Executed),
        ("after", Some("c"), Outcome::Executed),
        ("after", Some("bad"), Outcome::Skipped),
        ("side", None, Outcome::Executed),
    ] {
        assert_eq!(state(stage, item).state, want, "{stage} {item:?}");
    }
    // `run --json` carries the error and the log's end.
    let json = report.to_json();
    assert_eq!(json["failed"], 1);
    let failed = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "failed")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("index out of bounds")
    );
    assert!(
        failed["log_tail"]
            .as_str()
            .unwrap()
            .contains("working on bad")
    );

    // The failure's record: the whole log and the error, beside the task's checkpoints.
    let record = log
        .lines()
        .find_map(|l| l.strip_prefix("# covflow: the whole log and the error are in "))
        .expect("the log says where the record is");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    assert_eq!(record["stage"], "work");
    assert_eq!(record["item"], "bad");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("index out of bounds")
    );
    assert!(record["log"].as_str().unwrap().contains("working on bad"));

    // A second run keeps what succeeded and fails the same task again.
    let again = run(wf, true);
    assert_eq!(again.count(Outcome::Executed), 0);
    assert_eq!(again.count(Outcome::Failed), 1);
    assert_eq!(again.count(Outcome::Cached), 5);
}

#[test]
fn without_keep_going_a_panic_stops_the_run_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(Arc::new(workflow(dir.path())), false);
    assert_eq!(report.count(Outcome::Failed), 1);
    assert!(!report.cancelled);
}
