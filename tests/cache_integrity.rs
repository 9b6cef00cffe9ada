//! A cached artifact is used only when it is whole: a changed, resized or deleted file, or an
//! unreadable manifest, makes its task run again (or fail with --frozen), never a silent hit;
//! `export` copies only whole artifacts, outside the cache, with ordinary file modes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Scratch, find_file, states, stderr};

const PIPELINE: &str = r#"
name: integrity
datasets:
  cases: {list: [c1, c2]}
stages:
  make:
    uses: exec
    foreach: cases
    with: {run: "echo {item} > {out}/value.txt"}
  gather:
    uses: exec
    needs: [make]
    with: {run: "cat {in.make}/value.txt > {out}/all.txt"}
"#;

fn writable(path: &Path) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(path, perms).unwrap();
}

/// A fresh run of the pipeline, and the artifact file `all.txt` of `gather`.
fn ran() -> (Scratch, PathBuf) {
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let first = s.json(&["run", "p.yaml"]);
    assert!(states(&first).iter().all(|t| t.2 == "executed"), "{first}");
    let all = find_file(s.path().join(".covflow/objects"), "all.txt").unwrap();
    (s, all)
}

fn gather_state(report: &serde_json::Value) -> String {
    states(report)
        .into_iter()
        .find(|t| t.0 == "gather")
        .unwrap()
        .2
}

#[test]
fn a_changed_byte_or_a_deleted_file_reruns_the_task_with_the_same_result() {
    for damage in ["flip", "delete", "truncate"] {
        let (s, all) = ran();
        let before = std::fs::read(&all).unwrap();
        match damage {
            "flip" => {
                writable(&all);
                let mut bytes = before.clone();
                bytes[0] ^= 1;
                std::fs::write(&all, bytes).unwrap();
            }
            "delete" => std::fs::remove_file(&all).unwrap(),
            _ => {
                writable(&all);
                std::fs::write(&all, &before[..2]).unwrap();
            }
        }
        let plan = s.json(&["plan", "p.yaml"]);
        let reason = plan["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["stage"] == "gather")
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            reason.starts_with("cached artifact broken: "),
            "{damage}: {reason}"
        );
        assert!(reason.contains("all.txt"), "{damage}: {reason}");
        // --frozen refuses to use or replace it, naming the file.
        let frozen = s.run(&["run", "p.yaml", "--frozen"]);
        assert_eq!(frozen.status.code(), Some(1), "{damage}");
        assert!(
            stderr(&frozen).contains("all.txt"),
            "{damage}: {}",
            stderr(&frozen)
        );
        // A plain run replaces it; nothing else runs.
        let again = s.json(&["run", "p.yaml"]);
        assert_eq!(gather_state(&again), "executed", "{damage}: {again}");
        assert_eq!(again["executed"], 1, "{damage}: {again}");
        assert_eq!(std::fs::read(&all).unwrap(), before, "{damage}");
        let v = s.run(&["cache", "verify", "--cache", ".covflow"]);
        assert!(
            v.status.success(),
            "{damage}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
}

#[test]
fn verify_rehashes_every_hit() {
    let (s, all) = ran();
    // The same size, and the file's time put back: only a full re-hash sees it.
    let meta = std::fs::metadata(&all).unwrap();
    let mtime = meta.modified().unwrap();
    writable(&all);
    let mut bytes = std::fs::read(&all).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&all, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&all)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(gather_state(&s.json(&["run", "p.yaml"])), "cached");
    assert_eq!(
        gather_state(&s.json(&["run", "p.yaml", "--verify"])),
        "executed"
    );
}

#[test]
fn an_unreadable_manifest_is_repaired_not_fatal() {
    let (s, all) = ran();
    let manifest = all
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("manifest.json");
    writable(&manifest);
    std::fs::write(&manifest, "{ not json").unwrap();
    let verify = s.run(&["cache", "verify", "--cache", ".covflow"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("manifest.json"));
    let again = s.json(&["run", "p.yaml"]);
    assert_eq!(gather_state(&again), "executed", "{again}");
    // The task's key is the same: its new artifact sits where the broken one was. And `cache
    // verify --repair` removes what is broken.
    writable(&manifest);
    std::fs::write(&manifest, "").unwrap();
    let repair = s.run(&["cache", "verify", "--cache", ".covflow", "--repair"]);
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stdout)
    );
    assert!(!manifest.exists());
    let v = s.run(&["cache", "verify", "--cache", ".covflow"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn export_copies_whole_artifacts_outside_the_cache_with_ordinary_modes() {
    let (s, all) = ran();
    let inside = s.run(&["export", "p.yaml", "make", ".covflow/objects/x"]);
    assert_eq!(inside.status.code(), Some(2), "{}", stderr(&inside));
    assert!(
        stderr(&inside).contains("inside the cache"),
        "{}",
        stderr(&inside)
    );
    let ok = s.run(&["export", "p.yaml", "make", "out"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let mode = std::fs::metadata(s.path().join("out/c1/value.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o002, 0, "not world-writable: {mode:o}");
    assert_ne!(mode & 0o200, 0, "the user can edit the copy: {mode:o}");
    // A broken artifact is not exported.
    writable(&all);
    std::fs::write(&all, "x").unwrap();
    let bad = s.run(&["export", "p.yaml", "gather", "out2"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("all.txt"), "{}", stderr(&bad));
}

#[test]
fn cache_gc_leaves_what_a_running_task_reads() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: reader\nstages:\n  make: {uses: exec, with: {run: 'echo data > {out}/v.txt'}}\n  read: {uses: exec, needs: [make], with: {run: 'touch reading; sleep 2; cat {in.make}/v.txt > {out}/copy.txt'}}\n",
    );
    s.write(
        "other.yaml",
        "name: other\nstages:\n  x: {uses: exec, with: {run: 'true'}}\n",
    );
    s.json(&["run", "p.yaml", "--until", "make"]);
    let run = s
        .covflow()
        .args(["run", "p.yaml", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !s.path().join("reading").exists() {
        assert!(started.elapsed().as_secs() < 30, "the reader never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A gc for another pipeline would remove `make`'s artifact: not while `read` reads it.
    let gc = s.run(&["cache", "gc", "other.yaml", "--cache", ".covflow"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["executed"], 1, "{report}");
}
