//! Invalid pipelines: a clear error naming file, line and what to do; exit code 2; no panic.

mod common;

use common::{Scratch, stderr};

fn error_of(pipeline: &str) -> String {
    let s = Scratch::new();
    s.write("p.yaml", pipeline);
    let out = s.run(&["plan", "p.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("p.yaml"), "error names the file: {err}");
    err
}

#[test]
fn cycle_is_printed() {
    let err = error_of(
        "name: c\nstages:\n  a: {uses: exec, needs: [c], with: {run: x}}\n  b: {uses: exec, needs: [a], with: {run: x}}\n  c: {uses: exec, needs: [b], with: {run: x}}\n",
    );
    assert!(err.contains("dependency cycle: a -> b -> c -> a"), "{err}");
    assert!(err.contains("p.yaml:3:"), "{err}");
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let err = error_of("name: k\nstages:\n  a:\n    uses: exce\n    with: {run: x}\n");
    assert!(err.contains("p.yaml:4:5"), "{err}");
    assert!(
        err.contains("stage `a`: unknown stage kind `exce`"),
        "{err}"
    );
    assert!(
        err.contains("known kinds:") && err.contains("exec"),
        "{err}"
    );
}

#[test]
fn bad_reference_names_the_parameter() {
    let err = error_of(
        "name: r\nparams:\n  n: 1\nstages:\n  a:\n    uses: exec\n    with:\n      run: \"echo ${params.m}\"\n",
    );
    assert!(err.contains("p.yaml:8:7"), "{err}");
    assert!(err.contains("no parameter `m`"), "{err}");
    assert!(err.contains("NAME one of: n"), "{err}");
}

#[test]
fn malformed_yaml_points_at_the_line() {
    let err = error_of("name: m\nstages:\n  a:\n    uses: exec\n   with: {run: x}\n");
    assert!(err.contains("p.yaml:5:"), "{err}");
    assert!(err.contains("help:"), "{err}");
}

#[test]
fn unknown_field_is_an_error() {
    let err = error_of("name: u\nstages:\n  a:\n    uses: exec\n    wiht: {run: x}\n");
    assert!(err.contains("unknown field `wiht`"), "{err}");
    assert!(err.contains("p.yaml:5:5"), "{err}");
}

#[test]
fn unknown_need_and_wrong_types() {
    let err = error_of("name: n\nstages:\n  a: {uses: exec, needs: [zz], with: {run: x}}\n");
    assert!(err.contains("needs `zz`, which is not a stage"), "{err}");
    let err = error_of("name: t\nstages:\n  a: {uses: exec, with: {run: 3}}\n");
    assert!(
        err.contains("parameter `run`: invalid type: integer `3`, expected a string"),
        "{err}"
    );
    let err =
        error_of("name: t\nstages:\n  a: {uses: exec, resources: {gpu: many}, with: {run: x}}\n");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn unsafe_item_ids_are_refused() {
    let err = error_of(
        "name: i\ndatasets:\n  xs: {list: [\"../../etc\"]}\nstages:\n  a: {uses: exec, foreach: xs, with: {run: x}}\n",
    );
    assert!(err.contains("item id `../../etc` is not allowed"), "{err}");
}

#[test]
fn missing_file_and_bad_set() {
    let s = Scratch::new();
    let out = s.run(&["plan", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.yaml"));
    s.write(
        "p.yaml",
        "name: x\nstages:\n  a: {uses: exec, with: {run: x}}\n",
    );
    let out = s.run(&["plan", "p.yaml", "--set", "stages.b.with.run=y"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no stage named `b`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dataset_fields_are_typed_and_located() {
    let err = error_of(
        "name: d\ndatasets:\n  studies:\n    phantom:\n      count: 2\n      sise: mosmed\nstages:\n  s: {uses: phantom, foreach: studies}\n",
    );
    assert!(err.contains("p.yaml:6:7: dataset `studies`"), "{err}");
    assert!(
        err.contains("unknown field `sise`, expected one of `count`, `seed`, `size`"),
        "{err}"
    );
    let err = error_of(
        "name: d\ndatasets:\n  studies:\n    phantom: {count: 2, size: huge}\nstages:\n  s: {uses: phantom, foreach: studies}\n",
    );
    assert!(
        err.contains("unknown variant `huge`, expected `small` or `mosmed`"),
        "{err}"
    );
    let err = error_of(
        "name: c\ndatasets:\n  xs:\n    count: 100000000000\nstages:\n  s: {uses: exec, foreach: xs, with: {run: x}}\n",
    );
    assert!(err.contains("more than the 1000000 items"), "{err}");
}
