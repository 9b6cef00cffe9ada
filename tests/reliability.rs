//! Values that used to crash, hang or mean something else are refused with the file, the field
//! and the reason; names and values put into shell commands stay what they are.

mod common;

use common::{Scratch, stderr};

fn refused(text: &str, says: &str) {
    let s = Scratch::new();
    s.write("p.yaml", text);
    let out = s.run(&["plan", "p.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(says), "expected `{says}` for\n{text}\n{err}");
}

#[test]
fn names_that_could_escape_or_become_options_are_refused() {
    refused(
        "name: ../../x\nstages:\n  a: {uses: exec, with: {run: 'true'}}\n",
        "p.yaml:1:1: invalid pipeline name `../../x`",
    );
    refused(
        "name: i\ndatasets:\n  xs: {list: [-rf]}\nstages:\n  a: {uses: exec, foreach: xs, with: {run: 'true'}}\n",
        "item id `-rf` is not allowed",
    );
}

#[test]
fn non_finite_numbers_and_empty_globs_are_refused() {
    refused(
        "name: n\ndatasets:\n  s: {phantom: {count: 1}}\nstages:\n  p: {uses: phantom, foreach: s}\n  g:\n    uses: resample\n    foreach: p\n    with:\n      spacing: [.nan, 1, 1]\n",
        "p.yaml:10:7: `.nan` and `.inf` are not values covflow can use",
    );
    refused(
        "name: g\ndatasets:\n  xs: {glob: 'nothing/*.txt'}\nstages:\n  a: {uses: exec, foreach: xs, with: {run: 'true'}}\n",
        "no file matches",
    );
}

#[test]
fn values_put_into_commands_are_one_shell_word_each() {
    let s = Scratch::new();
    let dir = s.path().join("Bob's data $HOME");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "x").unwrap();
    std::fs::write(dir.join("b.txt"), "y").unwrap();
    s.write(
        "p.yaml",
        "name: q\ndatasets:\n  xs: {glob: \"Bob's data $HOME/*.txt\"}\nstages:\n  a: {uses: exec, foreach: xs, with: {run: 'cat {item.path} > {out}/copy.txt'}}\n",
    );
    let out = s.run(&["run", "p.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    s.run(&["export", "p.yaml", "a", "out"]);
    assert_eq!(
        std::fs::read_to_string(s.path().join("out/a/copy.txt")).unwrap(),
        "x"
    );
}

/// A small valid uncompressed NIfTI file, and its bytes.
fn nifti(s: &Scratch) -> (std::path::PathBuf, Vec<u8>) {
    let path = s.path().join("v.nii");
    covflow_imaging::Volume::new(ndarray::Array3::zeros((4, 5, 6)), [0.7, 0.7, 8.0])
        .write_f32(&path)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn damaged_nifti_headers_name_the_field() {
    let s = Scratch::new();
    let (path, good) = nifti(&s);
    let ok = s.run(&["inspect", "v.nii"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // (field, byte offset in the header, the bytes written there)
    let cases: [(&str, usize, Vec<u8>); 6] = [
        ("sizeof_hdr", 0, 12345i32.to_le_bytes().to_vec()),
        ("pixdim[1]", 80, 0f32.to_le_bytes().to_vec()),
        ("pixdim[2]", 84, f32::NAN.to_le_bytes().to_vec()),
        ("pixdim[3]", 88, 1e30f32.to_le_bytes().to_vec()),
        ("vox_offset", 108, 1e12f32.to_le_bytes().to_vec()),
        ("dim[1]", 42, 0i16.to_le_bytes().to_vec()),
    ];
    for (field, at, value) in cases {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(&value);
        std::fs::write(&path, &bytes).unwrap();
        let out = s.run(&["inspect", "v.nii"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{field}: {err}");
        assert!(
            err.contains(&format!("v.nii: header field `{field}`")),
            "{field}: {err}"
        );
        // And a `nifti` dataset refuses it when the pipeline is planned.
        s.write(
            "p.yaml",
            "name: h\ndatasets:\n  scans: {nifti: 'v.nii'}\nstages:\n  g: {uses: resample, foreach: scans, with: {shape: [8, 8, 8]}}\n",
        );
        let plan = s.run(&["plan", "p.yaml"]);
        assert_eq!(plan.status.code(), Some(2), "{field}: {}", stderr(&plan));
        assert!(
            stderr(&plan).contains(&format!("`{field}`")),
            "{field}: {}",
            stderr(&plan)
        );
    }
}

#[test]
fn a_spacing_that_would_exhaust_memory_fails_the_task_not_the_machine() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: m\ndatasets:\n  s: {phantom: {count: 1}}\nstages:\n  p: {uses: phantom, foreach: s}\n  g: {uses: resample, foreach: p, with: {spacing: [0.001, 0.001, 0.001]}}\n",
    );
    let out = s.run(&["run", "p.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("more than 268435456"), "{err}");
    assert!(err.contains("help: choose a coarser `spacing`"), "{err}");
}

#[test]
fn a_task_log_goes_to_a_file_and_memory_keeps_its_end() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: l\nstages:\n  loud: {uses: exec, with: {run: \"head -c 5000000 /dev/zero | tr '\\\\0' x >&2; echo >&2; echo last words >&2; exit 3\"}}\n",
    );
    let out = s.run(&["run", "p.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("last words"), "{err}");
    let record = err
        .lines()
        .find_map(|l| l.strip_prefix("# covflow: the whole log and the error are in "))
        .expect("the failure record is named");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    let kept = record["log"].as_str().unwrap();
    assert!(kept.len() <= 2 << 20, "{} bytes kept in memory", kept.len());
    let whole = kept
        .lines()
        .next()
        .and_then(|l| l.split("the whole log is in ").nth(1))
        .expect("the kept log says where the whole one is");
    let size = std::fs::metadata(whole).unwrap().len();
    assert!(size > 5_000_000, "the whole log: {size} bytes");
}
