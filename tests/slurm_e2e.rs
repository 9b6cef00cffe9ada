//! The SLURM executor against a real SLURM (`.ci/run` starts a one-node cluster with
//! `scripts/slurm-local.sh` and sets `COVFLOW_TEST_SLURM=1`). Without that variable and without
//! `sbatch` on PATH these tests say so and return; with the variable set, a missing SLURM fails.

mod common;

use common::{Scratch, states, stderr};

fn slurm_available() -> bool {
    let present = std::process::Command::new("sinfo")
        .arg("-h")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if std::env::var_os("COVFLOW_TEST_SLURM").is_some() {
        assert!(
            present,
            "COVFLOW_TEST_SLURM is set but SLURM does not answer (sinfo)"
        );
    }
    if !present {
        eprintln!("SLURM not available: skipped (set COVFLOW_TEST_SLURM=1 to require it)");
    }
    present
}

const PIPELINE: &str = r#"
name: slurm-demo
params:
  offset: 7
datasets:
  cases: {count: 5, prefix: case_}
stages:
  make:
    uses: exec
    foreach: cases
    with: {run: "echo {item} > {out}/v.txt"}
    resources: {cpus: 1, mem_gb: 0.1}
  shift:
    uses: exec
    foreach: make
    with: {run: "echo $(cat {in.make}/v.txt)+${params.offset} > {out}/v.txt"}
  gather:
    uses: exec
    needs: [shift]
    with: {run: "cat {in.shift}/v.txt > {out}/all.txt"}
"#;

fn keys(report: &serde_json::Value) -> Vec<String> {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn slurm_run_gives_the_digests_of_a_local_run() {
    if !slurm_available() {
        return;
    }
    let local = Scratch::new();
    local.write("p.yaml", PIPELINE);
    local.json(&["run", "p.yaml"]);
    let want = keys(&local.json(&["plan", "p.yaml"]));

    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let run = s.json(&["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(run["executed"], 11, "{run}");
    assert_eq!(run["failed"], 0, "{run}");
    let plan = s.json(&["plan", "p.yaml"]);
    assert!(states(&plan).iter().all(|t| t.2 == "cached"), "{plan}");
    assert_eq!(
        keys(&plan),
        want,
        "same keys (and so same content digests) as a local run"
    );
    let audit = s.run(&["audit", "p.yaml"]);
    assert!(audit.status.success(), "{}", stderr(&audit));

    // A changed parameter: only `shift` and `gather` are submitted again.
    let again = s.json(&[
        "run",
        "p.yaml",
        "--executor",
        "slurm",
        "--set",
        "params.offset=8",
    ]);
    assert_eq!(again["executed"], 6, "{again}");
    assert_eq!(again["cached"], 5, "{again}");
}

#[test]
fn a_failed_job_shows_its_log_and_dependents_do_not_hang() {
    if !slurm_available() {
        return;
    }
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: slurm-fail
datasets:
  xs: {list: [ok, bad]}
stages:
  step:
    uses: exec
    foreach: xs
    with: {run: "test {item} != bad || {{ echo 'bad input here' >&2; exit 4; }}; echo ok > {out}/r"}
  after:
    uses: exec
    needs: [step]
    with: {run: "cat {in.step}/r > {out}/all"}
"#,
    );
    let started = std::time::Instant::now();
    let out = s.run(&["run", "p.yaml", "--executor", "slurm", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed().as_secs() < 120,
        "dependents must not stay pending"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = states(&report);
    assert!(
        st.contains(&("step".into(), Some("ok".into()), "executed".into())),
        "{report}"
    );
    assert!(
        st.contains(&("step".into(), Some("bad".into()), "failed".into())),
        "{report}"
    );
    assert!(
        st.contains(&("after".into(), None, "skipped".into())),
        "{report}"
    );
    assert!(stderr(&out).contains("bad input here"), "{}", stderr(&out));
}

#[test]
fn until_and_only_select_jobs_as_a_local_run_does() {
    if !slurm_available() {
        return;
    }
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    // `--only` before its inputs exist: refused, naming them, before anything is submitted.
    let out = s.run(&["run", "p.yaml", "--executor", "slurm", "--only", "shift"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("make[case_0]"), "{}", stderr(&out));

    // `--until make`: the preprocessing alone, one array of 5 jobs.
    let run = s.json(&["run", "p.yaml", "--executor", "slurm", "--until", "make"]);
    assert_eq!(run["executed"], 5, "{run}");
    assert!(states(&run).iter().all(|t| t.0 == "make"), "{run}");
    // `--only shift` now finds its inputs cached and submits only its own tasks.
    let run = s.json(&["run", "p.yaml", "--executor", "slurm", "--only", "shift"]);
    assert_eq!(run["executed"], 5, "{run}");
    assert!(states(&run).iter().all(|t| t.0 == "shift"), "{run}");
    let plan = s.json(&["plan", "p.yaml"]);
    assert_eq!(
        states(&plan)
            .iter()
            .filter(|t| t.2 == "run")
            .map(|t| t.0.as_str())
            .collect::<Vec<_>>(),
        ["gather"],
        "{plan}"
    );
}
