//! Typed stage parameters through the binary: every stage kind's mistyped, out-of-range and
//! unknown parameters are refused with file:line:col, the field and the accepted fields (exit 2),
//! and a default written out or left out is the same cache key.

mod common;

use common::{Scratch, stderr};

/// A pipeline whose stage `s` (of `kind`, reading the upstream it needs) has `with: WITH`, the
/// `with:` mapping on line 14.
fn pipeline(kind: &str, with: &str) -> String {
    let (foreach, upstream) = match kind {
        "phantom" | "resample" => ("studies", ""),
        _ => ("up", "  up: {uses: phantom, foreach: studies}\n"),
    };
    let scans = if kind == "resample" {
        "  scans: {uses: phantom, foreach: studies}\n"
    } else {
        ""
    };
    let foreach = if kind == "resample" { "scans" } else { foreach };
    let text = format!(
        "name: p\ndatasets:\n  studies: {{phantom: {{count: 1}}}}\nstages:\n{upstream}{scans}  s:\n    uses: {kind}\n    foreach: {foreach}\n    with:\n{with}"
    );
    text
}

/// `covflow plan` of `text`: exit 2, and the error.
fn refused(text: &str) -> String {
    let s = Scratch::new();
    s.write("p.yaml", text);
    let out = s.run(&["plan", "p.yaml"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2 for\n{text}\ngot: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The last line of `text` holding `needle`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .rposition(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn bad_parameters_of_every_kind_name_file_line_field_and_the_accepted_fields() {
    // (kind, a `with:` body, the field named, what the message says, the accepted fields)
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        (
            "exec",
            "      run: echo\n      shell: [bash]\n",
            "shell",
            "invalid type",
            &["run", "shell", "env"],
        ),
        (
            "exec",
            "      run: echo\n      enviroment: {A: 1}\n",
            "enviroment",
            "unknown field",
            &["run", "shell", "env"],
        ),
        (
            "exec",
            "      run: echo\n      env: {A: [1]}\n",
            "env",
            "must be a string, number or boolean",
            &["run", "shell", "env"],
        ),
        (
            "phantom",
            "      count: 3\n",
            "count",
            "unknown field",
            &["phantom takes no parameters"],
        ),
        (
            "resample",
            "      shape: [128, 128, x]\n",
            "shape",
            "invalid type",
            &["shape", "spacing", "window", "anti_aliasing"],
        ),
        (
            "resample",
            "      shape: [100000, 100000, 100000]\n",
            "shape",
            "more than",
            &["shape", "spacing"],
        ),
        (
            "resample",
            "      shape: [8, 8, 8]\n      window: [400, -1000]\n",
            "window",
            "low < high",
            &["window"],
        ),
        (
            "resample",
            "      shape: [8, 8, 8]\n      anti_alias: false\n",
            "anti_alias",
            "unknown field",
            &["anti_aliasing"],
        ),
        (
            "lung_mask",
            "      threshold: low\n",
            "threshold",
            "invalid type",
            &["threshold", "closing_mm", "min_lung_ratio"],
        ),
        (
            "lung_mask",
            "      closing_mm: 1000\n",
            "closing_mm",
            "between 0 and 50",
            &["closing_mm"],
        ),
        (
            "lung_mask",
            "      min_lung_ratio: 2\n",
            "min_lung_ratio",
            "between 0 and 1",
            &["min_lung_ratio"],
        ),
        (
            "lung_mask",
            "      treshold: -300\n",
            "treshold",
            "unknown field",
            &["threshold"],
        ),
        (
            "crop",
            "      shape: [128, 128, 0]\n",
            "shape",
            "at least one voxel",
            &["shape", "margin"],
        ),
        (
            "crop",
            "      shape: [128, 128, 32]\n      margin: -1\n",
            "margin",
            "invalid value",
            &["shape", "margin"],
        ),
        (
            "crop",
            "      shape: [128, 128, 32]\n      size: 3\n",
            "size",
            "unknown field",
            &["shape", "margin"],
        ),
    ];
    for (kind, with, field, says, accepted) in cases {
        let text = pipeline(kind, with);
        let err = refused(&text);
        let line = line_of(&text, &format!("{field}:"));
        assert!(
            err.contains(&format!("p.yaml:{line}:7: stage `s`: ")),
            "{kind}: the error points at line {line}, column 7:\n{err}"
        );
        assert!(
            err.contains(&format!("`{field}")),
            "{kind}: names `{field}`:\n{err}"
        );
        assert!(err.contains(says), "{kind}: says `{says}`:\n{err}");
        let help = err
            .lines()
            .find(|l| l.contains("help:"))
            .unwrap_or_default();
        for a in *accepted {
            assert!(help.contains(a), "{kind}: help lists `{a}`:\n{err}");
        }
    }
}

#[test]
fn a_missing_required_parameter_points_at_the_stage() {
    let text = pipeline("crop", "      margin: 2\n");
    let err = refused(&text);
    assert!(err.contains("missing field `shape`"), "{err}");
    assert!(
        err.contains(&format!("p.yaml:{}:5", line_of(&text, "with:"))),
        "{err}"
    );
    assert!(err.contains("shape ([integer ≥ 0; 3], required)"), "{err}");
}

/// `(task, state, key)` of every task in a `run` or `plan` report.
fn tasks(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!("{}[{}]", t["stage"].as_str().unwrap(), t["item"]),
                t["state"].as_str().unwrap().to_string(),
                t["key"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

#[test]
fn defaults_written_out_or_left_out_give_the_same_key() {
    let head = "name: d\ndatasets:\n  studies: {phantom: {count: 2}}\nstages:\n  scans: {uses: phantom, foreach: studies}\n";
    let terse = format!(
        "{head}  grid: {{uses: resample, foreach: scans, with: {{shape: [48, 48, 8]}}}}\n  lungs: {{uses: lung_mask, foreach: grid}}\n  crops: {{uses: crop, foreach: lungs, with: {{shape: [16, 16, 8]}}}}\n  all: {{uses: exec, needs: [crops], with: {{run: 'ls {{in.crops}}'}}}}\n"
    );
    let explicit = format!(
        "{head}  grid: {{uses: resample, foreach: scans, with: {{shape: [48, 48, 8], spacing: null, window: [-1000, 400.0], anti_aliasing: true, orientation: las}}}}\n  lungs: {{uses: lung_mask, foreach: grid, with: {{threshold: -320, closing_mm: 5, min_lung_ratio: 0.1}}}}\n  crops: {{uses: crop, foreach: lungs, with: {{shape: [16, 16, 8], margin: 0}}}}\n  all: {{uses: exec, needs: [crops], with: {{run: 'ls {{in.crops}}', shell: bash, env: {{}}}}}}\n"
    );
    let s = Scratch::new();
    s.write("p.yaml", &terse);
    let ran = tasks(&s.json(&["run", "p.yaml"]));
    assert_eq!(ran.len(), 2 * 4 + 1);
    assert!(
        ran.iter().all(|(_, state, _)| state == "executed"),
        "{ran:?}"
    );
    // Every default written out: the same keys, so nothing would run.
    s.write("p.yaml", &explicit);
    let planned = tasks(&s.json(&["plan", "p.yaml"]));
    for ((task, _, key), (_, state, planned_key)) in ran.iter().zip(&planned) {
        assert_eq!((state.as_str(), planned_key), ("cached", key), "{task}");
    }
    // A value other than the default changes the key of its stage and everything after it.
    s.write(
        "p.yaml",
        &explicit.replace("closing_mm: 5", "closing_mm: 6"),
    );
    for (task, state, _) in tasks(&s.json(&["plan", "p.yaml"])) {
        let downstream = !task.starts_with("scans") && !task.starts_with("grid");
        assert_eq!(state == "run", downstream, "{task}");
    }
}

#[test]
fn stage_help_documents_every_kind_and_the_readme_shows_it() {
    let s = Scratch::new();
    let out = s.run(&["stage", "kinds", "--markdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tables = String::from_utf8(out.stdout).unwrap();
    for kind in ["crop", "exec", "lung_mask", "phantom", "resample"] {
        assert!(tables.contains(&format!("#### `{kind}`")), "{kind}");
    }
    assert!(
        tables.contains("| `closing_mm` | number | `5.0` |"),
        "{tables}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&tables),
        "README.md's stage kinds section is not `covflow stage kinds --markdown`: regenerate it"
    );
}
