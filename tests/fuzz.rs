//! Random-mutation fuzzing of the two parsers that read what users hand covflow: the pipeline
//! file (YAML → `Pipeline` → task graph) and the NIfTI reader. Inputs are valid seeds mutated by
//! byte flips, insertions of YAML/NIfTI-significant tokens, deletions and duplications; every
//! outcome must be `Ok` or an error, never a panic. (Not coverage-guided: `cargo fuzz` needs a
//! nightly toolchain; this runs on stable and in CI.)
//!
//! CI runs each target for 2 s; for a long run:
//! `COVFLOW_FUZZ_SECS=600 cargo test --test fuzz -- --nocapture`. An input that panics is
//! written to `target/fuzz-crashes/` and fails the test.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn budget() -> Duration {
    let secs = std::env::var("COVFLOW_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn rng() -> ChaCha8Rng {
    let seed = std::env::var("COVFLOW_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    ChaCha8Rng::seed_from_u64(seed)
}

/// One random mutation of `input`, with tokens that matter to the format.
fn mutate(rng: &mut ChaCha8Rng, input: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let t = tokens[rng.random_range(0..tokens.len())];
                out.splice(at..at, t.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 if !out.is_empty() => {
                let start = rng.random_range(0..out.len());
                let end = (start + rng.random_range(1..64)).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(at..at, piece);
            }
            4 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.random();
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// Runs `target` on mutations of `seeds` for the budget; returns the executions.
fn fuzz(name: &str, seeds: &[Vec<u8>], tokens: &[&[u8]], target: impl Fn(&[u8])) -> u64 {
    let mut rng = rng();
    let start = Instant::now();
    let mut runs = 0u64;
    // Inputs that were accepted or deeply processed are worth mutating further.
    let mut corpus: Vec<Vec<u8>> = seeds.to_vec();
    while start.elapsed() < budget() {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, tokens);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{runs}"));
            std::fs::write(&file, &input).unwrap();
            panic!(
                "{name}: a panic on the input saved as {}: {panic:?}",
                file.display()
            );
        }
        runs += 1;
        if corpus.len() < 256 && rng.random_range(0..64) == 0 {
            corpus.push(input);
        }
    }
    eprintln!(
        "fuzz {name}: {runs} executions in {:.1} s, 0 panics",
        start.elapsed().as_secs_f64()
    );
    runs
}

#[test]
fn pipeline_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = [
        "pipelines/demo.yaml",
        "pipelines/exec-example.yaml",
        "pipelines/mosmed.yaml",
    ]
    .iter()
    .map(|p| std::fs::read(root.join(p)).unwrap())
    .collect();
    seeds.push(b"name: t\nparams: {n: 2}\ndatasets:\n  xs: {count: 3}\nstages:\n  a: {uses: exec, foreach: xs, with: {run: 'echo {item} > {out}/x', env: {A: 1}}}\n  b: {uses: exec, needs: [a], with: {run: 'cat {in.a}/x'}, resources: {cpus: 2, gpu: 0}}\n".to_vec());
    let tokens: &[&[u8]] = &[
        b":",
        b": ",
        b"- ",
        b"\n",
        b"  ",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b"'",
        b"\"",
        b"#",
        b"&a ",
        b"*a",
        b"!!binary ",
        b"? ",
        b"|",
        b">",
        b"${params.n}",
        b"${",
        b".nan",
        b".inf",
        b"-1",
        b"1e309",
        b"99999999999999999999",
        b"null",
        b"~",
        b"{item}",
        b"{in.a}",
        b"foreach: ",
        b"needs: [",
        b"uses: ",
        b"with: ",
        b"\t",
        b"\xff\xfe",
        b"<<: *a",
    ];
    let registry = {
        let mut r = covflow_engine::Registry::with_builtins();
        covflow_stages::register(&mut r);
        r
    };
    let path = dir.path().join("p.yaml");
    fuzz("pipeline", &seeds, tokens, |input| {
        let text = String::from_utf8_lossy(input).into_owned();
        if let Ok(p) = covflow_engine::Pipeline::from_source(&path, text, &[], &registry) {
            // Datasets over the real tree are skipped: they read the disk, not the input.
            if p.datasets
                .iter()
                .all(|d| !matches!(d.kind.as_str(), "mosmed" | "nifti" | "glob"))
            {
                let _ = covflow_engine::TaskGraph::build(&p, &registry);
            }
        }
    });
}

#[test]
fn nifti_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = ["v.nii", "v.nii.gz"]
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            let data =
                ndarray::Array3::from_shape_fn((6, 5, 4), |(i, j, k)| (i * 20 + j * 4 + k) as f32);
            covflow_imaging::Volume::new(data, [0.7, 0.7, 8.0])
                .write_i16(&path)
                .unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    let tokens: &[&[u8]] = &[
        &[0; 4],
        &[0xff; 4],
        &348i32.to_le_bytes(),
        &f32::NAN.to_le_bytes(),
        &1e30f32.to_le_bytes(),
        &(-1i16).to_le_bytes(),
        &i16::MAX.to_le_bytes(),
        &[0x1f, 0x8b],
        b"n+1\0",
    ];
    let (plain, gz) = (dir.path().join("f.nii"), dir.path().join("f.nii.gz"));
    fuzz("nifti", &seeds, tokens, |input| {
        // The seed decides the reader: gzip magic or not.
        let path = if input.starts_with(&[0x1f, 0x8b]) {
            &gz
        } else {
            &plain
        };
        std::fs::write(path, input).unwrap();
        if let Ok(v) = covflow_imaging::Volume::read(path) {
            assert!(
                v.spacing.iter().all(|s| s.is_finite() && *s > 0.0),
                "{:?}",
                v.spacing
            );
        }
    });
}

/// Inputs that once panicked, kept as they were found.
#[test]
fn fuzz_regressions_are_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        let result = catch_unwind(|| covflow_imaging::Volume::read(&path).map(|_| ()));
        let Ok(result) = result else {
            panic!("{}: panics", path.display());
        };
        let err = result.expect_err("a damaged file is an error");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
