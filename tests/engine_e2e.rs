//! End-to-end tests of the engine through the `covflow` binary, on pipelines of `exec` stages.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Scratch, find_file, states, stderr};

/// A fan-out stage, a per-item stage after it, a gather, and an independent stage.
const PIPELINE: &str = r#"
name: fanout
params:
  offset: 10
  greeting: hello
datasets:
  cases:
    list: [c1, c2, c3, c4]
stages:
  make:
    uses: exec
    foreach: cases
    with:
      run: "echo {item} > {out}/value.txt"
  shift:
    uses: exec
    foreach: make
    with:
      run: "echo $(cat {in.make}/value.txt)+${params.offset} > {out}/value.txt"
  gather:
    uses: exec
    needs: [shift]
    with:
      run: "cat {in.shift}/value.txt > {out}/all.txt"
  aside:
    uses: exec
    with:
      run: "echo ${params.greeting} > {out}/greeting.txt"
"#;

#[test]
fn second_run_executes_nothing() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let first = s.json(&["run", "p.yaml"]);
    assert_eq!(first["executed"], 10, "{first}");
    assert_eq!(first["cached"], 0);
    let second = s.json(&["run", "p.yaml"]);
    assert_eq!(second["executed"], 0, "{second}");
    assert_eq!(second["cached"], 10);
    // Same keys both times.
    let keys = |r: &serde_json::Value| -> Vec<String> {
        r["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&first), keys(&second));
    let all = std::fs::read_to_string(
        find_file(s.path().join(".covflow"), "all.txt").expect("gather output"),
    )
    .unwrap();
    assert_eq!(all, "c1+10\nc2+10\nc3+10\nc4+10\n");
}

#[test]
fn set_reruns_exactly_the_stage_and_its_dependents_and_plan_says_why() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    s.json(&["run", "p.yaml"]);
    let plan = s.json(&["plan", "p.yaml", "--set", "params.offset=11"]);
    for t in plan["tasks"].as_array().unwrap() {
        let stage = t["stage"].as_str().unwrap();
        let reason = t["reason"].as_str().unwrap_or("");
        match stage {
            "make" | "aside" => assert_eq!(t["state"], "cached", "{t}"),
            "shift" => {
                assert_eq!(t["state"], "run", "{t}");
                assert!(reason.contains("parameter `run` changed"), "{reason}");
                assert!(reason.contains("+11"), "{reason}");
            }
            "gather" => {
                assert_eq!(t["state"], "run");
                assert!(
                    reason.contains("input `shift[c1]` must run first"),
                    "{reason}"
                );
            }
            other => panic!("unexpected stage {other}"),
        }
    }
    let run = s.json(&["run", "p.yaml", "--set", "params.offset=11"]);
    for (stage, _, state) in states(&run) {
        let want = if stage == "shift" || stage == "gather" {
            "executed"
        } else {
            "cached"
        };
        assert_eq!(state, want, "{stage}");
    }
    // Back to the old value: everything is cached again.
    let back = s.json(&["run", "p.yaml"]);
    assert_eq!(back["executed"], 0);
    // A changed input with the same output does not cascade (early cut-off): `aside` changes,
    // nothing depends on it.
    let aside = s.json(&["run", "p.yaml", "--set", "params.greeting=hi"]);
    assert_eq!(aside["executed"], 1, "{aside}");
}

#[test]
fn plan_explains_a_changed_input_file() {
    let s = Scratch::new();
    std::fs::create_dir(s.path().join("data")).unwrap();
    s.write("data/a.txt", "1");
    s.write("data/b.txt", "2");
    s.write(
        "p.yaml",
        r#"
name: files
datasets:
  inputs: {glob: "data/*.txt"}
stages:
  copy:
    uses: exec
    foreach: inputs
    with: {run: "cp {item.path} {out}/x"}
"#,
    );
    s.json(&["run", "p.yaml"]);
    s.write("data/b.txt", "3");
    let plan = s.json(&["plan", "p.yaml"]);
    let tasks = plan["tasks"].as_array().unwrap();
    assert_eq!(tasks[0]["state"], "cached");
    assert_eq!(tasks[1]["state"], "run");
    assert_eq!(tasks[1]["reason"], "item content changed");
}

fn final_digest(s: &Scratch) -> String {
    let out = s.run(&["audit", "p.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = s.json(&["plan", "p.yaml"]);
    plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn kill_9_mid_run_then_rerun_gives_the_same_digests() {
    let slow = PIPELINE.replace(
        "echo {item} > {out}/value.txt",
        "echo {item} > {out}/part; sleep 0.4; mv {out}/part {out}/value.txt",
    );
    // Uninterrupted reference.
    let reference = Scratch::new();
    reference.write("p.yaml", &slow);
    reference.json(&["run", "p.yaml", "--jobs", "1"]);
    let want = final_digest(&reference);

    let s = Scratch::new();
    s.write("p.yaml", &slow);
    let mut child = s
        .covflow()
        .args(["run", "p.yaml", "--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    // SIGKILL: no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = s.json(&["plan", "p.yaml"]);
    let cached = states(&partial).iter().filter(|t| t.2 == "cached").count();
    assert!(
        cached < 10,
        "the run should have been interrupted: {partial}"
    );
    // Nothing half-written is visible: every artifact there verifies.
    let v = s.run(&["cache", "verify", "--cache", ".covflow"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let resumed = s.json(&["run", "p.yaml"]);
    assert_eq!(
        resumed["cached"], cached as u64,
        "resumes from finished tasks"
    );
    assert_eq!(final_digest(&s), want);
    let v = s.run(&["cache", "verify", "--cache", ".covflow"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_flipped_byte_makes_audit_fail_naming_the_file() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    s.json(&["run", "p.yaml"]);
    let ok = s.run(&["audit", "p.yaml"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let target = find_file(s.path().join(".covflow/objects"), "all.txt").unwrap();
    let mut perms = std::fs::metadata(&target).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&target, perms).unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&target, bytes).unwrap();
    let bad = s.run(&["audit", "p.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    let report = String::from_utf8_lossy(&bad.stdout);
    assert!(report.contains("TAMPERED  gather"), "{report}");
    assert!(report.contains("all.txt"), "{report}");
    let verify = s.run(&["cache", "verify", "--cache", ".covflow"]);
    assert_eq!(verify.status.code(), Some(1));
}

#[test]
fn audit_reexecute_reproduces_digests() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    s.json(&["run", "p.yaml"]);
    let out = s.run(&["audit", "p.yaml", "--reexecute", "shift"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("REPRODUCED shift").count(), 4, "{text}");
}

#[test]
fn two_concurrent_runs_execute_each_task_once() {
    let s = Scratch::new();
    let counter = s.path().join("executions.log");
    s.write(
        "p.yaml",
        &format!(
            r#"
name: concurrent
datasets:
  xs: {{count: 8}}
stages:
  work:
    uses: exec
    foreach: xs
    with:
      run: "echo {{item}} >> {}; sleep 0.2; echo done > {{out}}/r"
"#,
            counter.display()
        ),
    );
    let spawn = || {
        s.covflow()
            .args(["run", "p.yaml", "--jobs", "2", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let lines = std::fs::read_to_string(&counter).unwrap();
    let mut ids: Vec<&str> = lines.lines().collect();
    ids.sort();
    assert_eq!(ids.len(), 8, "each task exactly once: {ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 8);
    let ra: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let rb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(
        ra["executed"].as_u64().unwrap() + rb["executed"].as_u64().unwrap(),
        8
    );
}

#[test]
fn a_failure_names_the_task_shows_its_log_and_skips_dependents() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: failing
datasets:
  xs: {list: [good, bad]}
stages:
  step:
    uses: exec
    foreach: xs
    with:
      run: "echo working on {item}; test {item} != bad || {{ echo 'boom: bad input' >&2; exit 3; }}; echo ok > {out}/r"
  after:
    uses: exec
    foreach: step
    with: {run: "cp {in.step}/r {out}/r"}
"#,
    );
    let out = s.run(&["run", "p.yaml", "--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("task step[bad] failed"), "{err}");
    assert!(err.contains("boom: bad input"), "{err}");
    assert!(err.contains("exited with exit status: 3"), "{err}");
    let report = s.json(&["plan", "p.yaml"]);
    let st = states(&report);
    assert!(st.contains(&("after".into(), Some("good".into()), "cached".into())));
    assert!(st.contains(&("step".into(), Some("bad".into()), "run".into())));
}

#[test]
fn stage_run_runs_one_task_and_refuses_missing_inputs() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let missing = s.run(&["stage", "run", "p.yaml", "shift", "--item", "c2"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("make[c2]"),
        "{}",
        stderr(&missing)
    );
    let ok = s.run(&["stage", "run", "p.yaml", "make", "--item", "c2"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = s.run(&["stage", "run", "p.yaml", "shift", "--item", "c2", "--json"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let r: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(r["state"], "executed");
    let again = s.run(&["stage", "run", "p.yaml", "shift", "--item", "c2", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(r["state"], "cached");
    let no_item = s.run(&["stage", "run", "p.yaml", "shift"]);
    assert_eq!(no_item.status.code(), Some(2));
    assert!(stderr(&no_item).contains("--item"), "{}", stderr(&no_item));
}

#[test]
fn until_and_only_select_tasks() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let until = s.json(&["run", "p.yaml", "--until", "shift"]);
    assert_eq!(until["executed"], 8, "{until}");
    let only = s.json(&["run", "p.yaml", "--only", "gather"]);
    assert_eq!(only["executed"], 1, "{only}");
    let fresh = Scratch::new();
    fresh.write("p.yaml", PIPELINE);
    let out = fresh.run(&["run", "p.yaml", "--only", "gather"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not in the cache"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn export_copies_one_folder_per_item() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    s.json(&["run", "p.yaml"]);
    let out = s.run(&["export", "p.yaml", "shift", "exported"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = std::fs::read_to_string(s.path().join("exported/c3/value.txt")).unwrap();
    assert_eq!(v, "c3+10\n");
}

#[test]
fn forced_stage_reruns_and_gc_keeps_current_artifacts() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    s.json(&["run", "p.yaml"]);
    let forced = s.json(&["run", "p.yaml", "--force", "gather"]);
    assert_eq!(forced["executed"], 1);
    s.json(&["run", "p.yaml", "--set", "params.offset=5"]);
    let gc = s.run(&["cache", "gc", "p.yaml"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert!(String::from_utf8_lossy(&gc.stdout).contains("removed 5 artifacts"));
    let again = s.json(&["run", "p.yaml"]);
    assert_eq!(again["executed"], 0);
}

#[test]
fn the_dag_is_planned_quickly_enough_to_use_at_scale() {
    // Not a timing assertion (see BENCHMARKS.md): checks that a 3 000-task plan completes and
    // reports every task.
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: wide
datasets:
  xs: {count: 1000}
stages:
  a: {uses: exec, foreach: xs, with: {run: "true"}}
  b: {uses: exec, foreach: a, with: {run: "true"}}
  c: {uses: exec, foreach: b, with: {run: "true"}}
"#,
    );
    let t = Instant::now();
    let plan = s.json(&["plan", "p.yaml"]);
    assert_eq!(plan["tasks"].as_array().unwrap().len(), 3000);
    eprintln!("planned 3000 tasks in {:?}", t.elapsed());
}

#[test]
fn inlist_passes_a_large_fan_in_as_a_file() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: fanin
datasets:
  xs: {count: 300, prefix: a_very_long_item_name_so_that_the_command_line_grows_}
stages:
  leaf: {uses: exec, foreach: xs, with: {run: "echo {item} > {out}/v"}}
  all:
    uses: exec
    needs: [leaf]
    with: {run: "while read d; do cat $d/v; done < {inlist.leaf} | wc -l > {out}/n"}
"#,
    );
    let r = s.json(&["run", "p.yaml"]);
    assert_eq!(r["failed"], 0, "{r}");
    let out = s.run(&["export", "p.yaml", "all", "x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let n = std::fs::read_to_string(s.path().join("x/n")).unwrap();
    assert_eq!(n.trim(), "300");
}
