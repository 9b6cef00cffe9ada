//! SIGTERM (a SLURM time limit, `scancel`, `kill`), SIGINT and SIGHUP stop a run the same way:
//! shell tasks' process groups are killed, built-in stages are abandoned after a grace period,
//! the run exits within seconds saying why, and the next run resumes to the same results.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Scratch, stderr};

const PIPELINE: &str = r#"
name: signals
datasets:
  studies: {phantom: {count: 1, size: mosmed}}
  naps: {list: [a, b]}
stages:
  scans: {uses: phantom, foreach: studies}
  grid: {uses: resample, foreach: scans, with: {shape: [64, 64, 16]}}
  nap:
    uses: exec
    foreach: naps
    with: {run: "echo $$ >> pids.txt; sleep $(cat nap.txt); echo {item} > {out}/done.txt"}
"#;

fn send(signal: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Whether any process of process group `pgid` is alive (zombies, dead but not yet reaped by
/// an init that may not reap, do not count).
fn group_alive(pgid: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after its ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 1..]
            .split_whitespace()
            .collect();
        fields.len() > 2 && fields[2] == pgid && fields[0] != "Z"
    })
}

/// Starts `covflow run`, waits until both shell tasks run, sends `signal`; returns how long the
/// run took to exit after it, its exit code and stderr.
fn stop_with(s: &Scratch, signal: &str) -> (Duration, Option<i32>, String) {
    let _ = std::fs::remove_file(s.path().join("pids.txt"));
    let mut child = s
        .covflow()
        .args(["run", "p.yaml", "--jobs", "4"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(s.path().join("pids.txt"))
        .map(|t| t.lines().count() < 2)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the shell tasks never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    send(signal, child.id());
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "covflow did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (took, status.code(), err)
}

#[test]
fn sigterm_stops_shell_and_built_in_tasks_and_the_rerun_resumes() {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    s.write("nap.txt", "60");
    let (took, code, err) = stop_with(&s, "TERM");
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stopped by SIGTERM"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    let pids = std::fs::read_to_string(s.path().join("pids.txt")).unwrap();
    for pgid in pids.lines() {
        assert!(
            !group_alive(pgid),
            "process group {pgid} of a shell task is alive"
        );
    }

    // The rerun finishes, with what an uninterrupted run gives.
    s.write("nap.txt", "0");
    let again = s.json(&["run", "p.yaml"]);
    assert_eq!(again["failed"], 0, "{again}");
    let fresh = Scratch::new();
    fresh.write("p.yaml", PIPELINE);
    fresh.write("nap.txt", "0");
    fresh.json(&["run", "p.yaml"]);
    let keys = |s: &Scratch| s.json(&["plan", "p.yaml"])["tasks"].to_string();
    assert_eq!(keys(&s), keys(&fresh));
}

#[test]
fn sigint_and_sighup_stop_it_the_same_way() {
    let s = Scratch::new();
    s.write("p.yaml", &PIPELINE.replace("size: mosmed", "size: small"));
    s.write("nap.txt", "60");
    for (signal, name) in [("INT", "SIGINT"), ("HUP", "SIGHUP")] {
        let (took, code, err) = stop_with(&s, signal);
        assert!(
            took < Duration::from_secs(5),
            "{name}: exited after {took:?}"
        );
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(&format!("stopped by {name}")), "{name}: {err}");
        let pids = std::fs::read_to_string(s.path().join("pids.txt")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        for pgid in pids.lines() {
            assert!(!group_alive(pgid), "{name}: process group {pgid} is alive");
        }
    }
    let out = s.run(&["cache", "verify", "--cache", ".covflow"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
