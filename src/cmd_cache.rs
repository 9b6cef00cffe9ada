//! `covflow audit`, `cache ls|verify|gc` and `export`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use covflow_cache::Store;
use covflow_cache::{Integrity, Lookup};
use covflow_engine::NodeIndex;
use covflow_engine::{CancelToken, KeyMaterial, TaskState, Upstream, Workflow, reexecute};

use crate::{Failure, PipelineArgs, workflow};

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Also run this stage again in a scratch place and compare digests (repeatable).
    #[arg(long, value_name = "STAGE")]
    reexecute: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The stage whose artifacts to copy.
    stage: String,
    /// Destination folder (created; must be empty if it exists).
    dest: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the artifacts in the cache.
    Ls {
        /// Cache directory.
        #[arg(long, env = "COVFLOW_CACHE", default_value = ".covflow")]
        cache: PathBuf,
    },
    /// Re-hash every artifact in the cache; exit 1 if any is damaged.
    Verify {
        /// Cache directory.
        #[arg(long, env = "COVFLOW_CACHE", default_value = ".covflow")]
        cache: PathBuf,
        /// Remove every broken artifact (its task runs again next time).
        #[arg(long)]
        repair: bool,
    },
    /// Remove every artifact that the given pipelines do not refer to now.
    Gc {
        /// Pipelines whose artifacts to keep.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Cache directory [default: .covflow/ beside the first pipeline].
        #[arg(long, env = "COVFLOW_CACHE")]
        cache: Option<PathBuf>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The plan, and every cached task of it as an input.
fn cached_artifacts(
    wf: &Workflow,
) -> Result<
    (
        Vec<covflow_engine::PlannedTask>,
        HashMap<NodeIndex, Upstream>,
    ),
    Failure,
> {
    let plan = wf.plan(&BTreeSet::new())?;
    let done = wf.cached_inputs(&plan)?;
    Ok((plan, done))
}

pub fn audit(a: AuditArgs) -> Result<(), Failure> {
    let wf = workflow::load(&a.pipeline)?;
    for s in &a.reexecute {
        if wf.pipeline.stage(s).is_none() {
            return Err(Failure::Invalid(format!("--reexecute {s}: no such stage")));
        }
    }
    let (plan, done) = cached_artifacts(&wf)?;
    let mut problems = Vec::new();
    let mut checked = 0;
    let cancel = CancelToken::default();
    for p in &plan {
        let label = wf.graph.label(p.node);
        let Some(up) = done.get(&p.node) else {
            // A broken artifact is never used, but audit names what is wrong with it.
            if let Some(key) = p.key
                && let Lookup::Broken {
                    problems: found, ..
                } = wf.store.lookup(&key, Integrity::Full)?
            {
                for problem in found {
                    problems.push(format!("TAMPERED  {label}: {problem}"));
                }
                continue;
            }
            let why = match &p.state {
                TaskState::Run(r) => r.clone(),
                TaskState::Cached => "unreadable".into(),
            };
            problems.push(format!("MISSING   {label}: not in the cache ({why})"));
            continue;
        };
        let artifact = wf
            .store
            .get(&up.key)?
            .ok_or_else(|| Failure::Failed(format!("{label}: artifact vanished")))?;
        checked += 1;
        for problem in wf.store.verify(&artifact)? {
            problems.push(format!("TAMPERED  {label}: {problem}"));
        }
        // The manifest must say how the key was made, and that must reproduce the key.
        let material: Option<KeyMaterial> =
            serde_json::from_value(artifact.manifest.provenance["key_material"].clone()).ok();
        match material {
            Some(m) if m.key() == up.key => {}
            Some(_) => problems.push(format!(
                "KEY       {label}: the manifest's key material does not reproduce key {}",
                up.key.short()
            )),
            None => problems.push(format!(
                "KEY       {label}: the manifest has no key material"
            )),
        }
        if a.reexecute.iter().any(|s| s == wf.graph.stage_name(p.node)) {
            let inputs: Option<Vec<Upstream>> = wf.graph.graph[p.node]
                .inputs
                .iter()
                .map(|i| done.get(i).cloned())
                .collect();
            let inputs = inputs.expect("a cached task has cached inputs");
            match reexecute(&wf, p.node, &inputs, &cancel) {
                Ok(d) if d == up.digest => println!("REPRODUCED {label}: digest {}", &d[..12]),
                Ok(d) => problems.push(format!(
                    "DIFFERS   {label}: re-execution gave digest {} but the cache holds {}",
                    &d[..12],
                    &up.digest[..12]
                )),
                Err(f) => problems.push(format!(
                    "FAILED    {label}: re-execution failed: {}\n{}",
                    f.message, f.log_tail
                )),
            }
        }
    }
    for p in &problems {
        println!("{p}");
    }
    println!(
        "audit: {checked} artifacts checked, {} tasks in the pipeline, {} problems",
        plan.len(),
        problems.len()
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "audit found {} problems in {}",
            problems.len(),
            wf.store.root().display()
        )))
    }
}

fn open(cache: &Path) -> Result<Store, Failure> {
    if !cache.join("objects").is_dir() {
        return Err(Failure::Invalid(format!(
            "{} is not a covflow cache\n  help: pass --cache DIR (the default is .covflow/ beside the pipeline file)",
            cache.display()
        )));
    }
    Store::open(cache).map_err(Failure::from)
}

pub fn cache(c: CacheCommand) -> Result<(), Failure> {
    match c {
        CacheCommand::Ls { cache } => {
            let store = open(&cache)?;
            for key in store.keys()? {
                let Some(a) = store.get(&key)? else { continue };
                let p = &a.manifest.provenance;
                let size: u64 = a.manifest.files.iter().map(|f| f.size).sum();
                let label = match p["item"].as_str() {
                    Some(i) => format!("{}[{i}]", p["stage"].as_str().unwrap_or("?")),
                    None => p["stage"].as_str().unwrap_or("?").to_string(),
                };
                println!(
                    "{}  {:>12} B  {:>4} files  {}  {}",
                    key.short(),
                    size,
                    a.manifest.files.len(),
                    p["pipeline"].as_str().unwrap_or("?"),
                    label
                );
            }
            Ok(())
        }
        CacheCommand::Verify { cache, repair } => {
            let store = open(&cache)?;
            let keys = store.keys()?;
            let (mut bad, mut removed) = (0, 0);
            for key in &keys {
                let Lookup::Broken { problems, .. } = store.lookup(key, Integrity::Full)? else {
                    continue;
                };
                for problem in &problems {
                    println!("{}  {problem}", key.short());
                }
                bad += problems.len();
                // A task writing this key right now is left alone.
                if repair && let Some(_lock) = store.try_lock(key)? {
                    store.evict(key)?;
                    removed += 1;
                    println!("{}  removed", key.short());
                }
            }
            println!("verify: {} artifacts, {bad} problems", keys.len());
            if repair {
                println!("repair: {removed} broken artifacts removed; their tasks run again");
                return Ok(());
            }
            if bad == 0 {
                Ok(())
            } else {
                Err(Failure::Failed(format!(
                    "{bad} problems in the cache\n  help: `covflow cache verify --repair` removes the broken artifacts"
                )))
            }
        }
        CacheCommand::Gc {
            files,
            cache,
            dry_run,
        } => {
            let mut keep = HashSet::new();
            let mut store_dir = cache.clone();
            for f in &files {
                let args = PipelineArgs {
                    file: f.clone(),
                    set: Vec::new(),
                    cache: cache.clone(),
                    device: covflow_engine::Device::Cpu,
                };
                if store_dir.is_none() {
                    store_dir = Some(workflow::cache_dir(&args));
                }
                let wf = workflow::load(&args)?;
                for p in wf.plan(&BTreeSet::new())? {
                    if let Some(k) = p.key {
                        keep.insert(k);
                    }
                }
            }
            let store = open(&store_dir.expect("at least one file"))?;
            let report = store.gc(&keep, dry_run)?;
            println!(
                "gc: {} {} artifacts ({} bytes), {} abandoned temporary directories",
                if dry_run { "would remove" } else { "removed" },
                report.removed.len(),
                report.bytes,
                report.stale_tmp
            );
            Ok(())
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            // A new file, not `fs::copy`: it takes the user's umask instead of the artifact's
            // read-only mode.
            let mut out = std::fs::File::create(&target)?;
            std::io::copy(&mut std::fs::File::open(e.path())?, &mut out)?;
        }
    }
    Ok(())
}

/// Whether `path` (which may not exist yet) lies inside `dir`.
fn is_inside(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // The nearest existing ancestor, resolved (symbolic links included).
    let mut probe = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(probe) {
            return real.starts_with(&dir);
        }
        match probe.parent() {
            Some(parent) => probe = parent,
            None => return false,
        }
    }
}

pub fn export(a: ExportArgs) -> Result<(), Failure> {
    let mut wf = workflow::load(&a.pipeline)?;
    // What leaves the cache is checked to the last byte.
    wf.integrity = covflow_cache::Integrity::Full;
    if wf.pipeline.stage(&a.stage).is_none() {
        return Err(Failure::Invalid(format!("no stage `{}`", a.stage)));
    }
    if is_inside(&a.dest, wf.store.root()) {
        return Err(Failure::Invalid(format!(
            "{} is inside the cache {}\n  help: export to a folder outside the cache",
            a.dest.display(),
            wf.store.root().display()
        )));
    }
    if a.dest.exists()
        && a.dest
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::Invalid(format!(
            "{} exists and is not empty\n  help: choose a new destination folder",
            a.dest.display()
        )));
    }
    let (plan, done) = cached_artifacts(&wf)?;
    let tasks: Vec<_> = plan
        .iter()
        .filter(|p| wf.graph.stage_name(p.node) == a.stage)
        .collect();
    let missing: Vec<String> = tasks
        .iter()
        .filter(|p| !done.contains_key(&p.node))
        .map(|p| match &p.state {
            TaskState::Run(why) => format!("{} ({why})", wf.graph.label(p.node)),
            TaskState::Cached => wf.graph.label(p.node),
        })
        .collect();
    if !missing.is_empty() {
        return Err(Failure::Failed(format!(
            "not in the cache whole: {}\n  help: run the pipeline first (`covflow run FILE --until {}`)",
            missing.join(", "),
            a.stage
        )));
    }
    for p in &tasks {
        let up = &done[&p.node];
        let target = match wf.graph.item_id(p.node) {
            Some(item) => a.dest.join(item),
            None => a.dest.clone(),
        };
        copy_tree(&up.dir, &target)
            .map_err(|e| Failure::Failed(format!("{}: {e}", target.display())))?;
    }
    println!(
        "exported {} artifacts of `{}` to {}",
        tasks.len(),
        a.stage,
        a.dest.display()
    );
    Ok(())
}
