//! Helpers for the end-to-end tests: a scratch directory with a pipeline, and the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn covflow(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_covflow"));
        c.current_dir(self.dir.path());
        c.env_remove("COVFLOW_CACHE");
        c
    }

    /// Runs covflow with `args` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.covflow().args(args).output().expect("spawn covflow")
    }

    /// Runs covflow with `--json` appended and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a: Vec<&str> = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        assert!(
            out.status.success(),
            "covflow {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// `(stage, item) → state` of a run or plan report.
pub fn states(report: &serde_json::Value) -> Vec<(String, Option<String>, String)> {
    report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["stage"].as_str().unwrap().to_string(),
                t["item"].as_str().map(str::to_string),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first file named `name` below `dir`, depth first.
pub fn find_file(dir: PathBuf, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

impl Scratch {
    /// Runs `covflow run FILE --until STAGE` and SIGKILLs it (no chance to clean up) as soon as
    /// `checkpoint(cache)` reports `at_least`; returns what it reports then. Fails when the run
    /// ends first or nothing appears within ten minutes.
    pub fn kill_when(
        &self,
        file: &str,
        stage: &str,
        checkpoint: impl Fn(&Path) -> Option<u64>,
        at_least: u64,
    ) -> u64 {
        let cache = self.path().join(".covflow");
        let mut child = self
            .covflow()
            .args(["run", file, "--until", stage])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while checkpoint(&cache).is_none_or(|i| i < at_least) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the training finished before it could be killed"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(600),
                "no checkpoint appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        checkpoint(&cache).unwrap()
    }
}

/// Every finished task's log under the cache `cache` (a finished task's log lives in its
/// artifact's manifest).
pub fn cached_logs(cache: &Path) -> String {
    let mut logs = String::new();
    for shard in std::fs::read_dir(cache.join("objects")).unwrap() {
        for object in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let manifest = object.unwrap().path().join("manifest.json");
            if let Ok(text) = std::fs::read(&manifest) {
                let m: serde_json::Value = serde_json::from_slice(&text).unwrap();
                logs += m["log"].as_str().unwrap_or_default();
            }
        }
    }
    logs
}
