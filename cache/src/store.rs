//! The content-addressed store on disk.
//!
//! ```text
//! ROOT/
//!   objects/ab/abcd…/manifest.json   one finished artifact per key; visible only when complete
//!   objects/ab/abcd…/data/…          the files the task wrote (read-only)
//!   tmp/abcd….<pid>.<nanos>/          a task being written; renamed into objects/ when done
//!   locks/ab/abcd….lock               one lock file per key (flock)
//!   notes/<blake3(name)>.json         small records the engine keeps (last key of each task)
//! ```
//! Every path is derived from a hex digest, so nothing a pipeline says (item ids, parameters)
//! can reach outside `ROOT`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::manifest::{FileEntry, MANIFEST_FORMAT, Manifest, content_digest};
use crate::{CacheKey, hash_file};

/// What can go wrong in the store. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An I/O failure on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The cache root cannot be created or written.
    #[error(
        "cache directory {path} is not writable: {source}\n  help: pass --cache DIR (or set COVFLOW_CACHE) to a writable directory; on a cluster it must be on a filesystem every node sees"
    )]
    NotWritable {
        /// The cache root.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A manifest that cannot be read back.
    #[error(
        "{path}: corrupt manifest: {reason}\n  help: `covflow cache verify --repair` removes it; its task runs again"
    )]
    CorruptManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Tasks must write regular files and directories only.
    #[error(
        "{path}: is a symbolic link or special file; artifacts may hold regular files and directories only\n  help: copy the file into the output directory instead of linking it"
    )]
    NotRegular {
        /// The offending path.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, CacheError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A content-addressed artifact store rooted at one directory.
///
/// ```
/// use covflow_cache::{KeyBuilder, Store};
/// let root = tempfile::tempdir().unwrap();
/// let store = Store::open(root.path()).unwrap();
/// let key = KeyBuilder::new().field("task", b"hello").finish();
/// let _lock = store.lock(&key).unwrap();
/// let staging = store.stage(&key).unwrap();
/// std::fs::write(staging.data_dir().join("greeting.txt"), "hi").unwrap();
/// let artifact = store.commit(staging, serde_json::json!({"stage": "hello"}), "").unwrap();
/// assert_eq!(artifact.manifest.files[0].path, "greeting.txt");
/// assert!(store.get(&key).unwrap().is_some());
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A finished artifact.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// Its key.
    pub key: CacheKey,
    /// The artifact directory (holds `manifest.json` and `data/`).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Artifact {
    /// The directory holding the files the task wrote.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// An exclusive lock on one key, held by this process until dropped. The operating system
/// releases it when the process dies, so a killed run never leaves a lock behind.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

/// A task's output being written: an empty `data/` directory inside `ROOT/tmp`.
#[derive(Debug)]
pub struct Staging {
    key: CacheKey,
    dir: PathBuf,
}

impl Staging {
    /// Where the task writes its files.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The key this output will be stored under.
    pub fn key(&self) -> CacheKey {
        self.key
    }
}

/// One problem that [`Store::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A file the manifest lists is gone.
    Missing(PathBuf),
    /// A file's content no longer matches its digest.
    Changed(PathBuf),
    /// A file the manifest does not list.
    Unexpected(PathBuf),
    /// The manifest's key or digest do not match, or it cannot be read.
    BadManifest(PathBuf, String),
    /// A file's size is not the one recorded.
    Resized {
        /// The file.
        path: PathBuf,
        /// Bytes when the artifact was sealed.
        recorded: u64,
        /// Bytes now.
        found: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing(p) => write!(f, "{}: missing", p.display()),
            Problem::Changed(p) => write!(f, "{}: content changed (digest mismatch)", p.display()),
            Problem::Unexpected(p) => write!(f, "{}: not in the manifest", p.display()),
            Problem::BadManifest(p, why) => write!(f, "{}: {why}", p.display()),
            Problem::Resized {
                path,
                recorded,
                found,
            } => write!(
                f,
                "{}: {found} bytes, {recorded} when the artifact was sealed",
                path.display()
            ),
        }
    }
}

/// How hard [`Store::lookup`] checks an artifact before it is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Integrity {
    /// A `stat` per file: present, the recorded size, not modified after sealing (else
    /// re-hashed).
    #[default]
    Quick,
    /// Every file re-hashed (`--verify`).
    Full,
}

/// What [`Store::lookup`] found under a key.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// A whole artifact.
    Whole(Box<Artifact>),
    /// An artifact that must not be used, and why.
    Broken {
        /// Its key.
        key: CacheKey,
        /// What is wrong.
        problems: Vec<Problem>,
    },
    /// Nothing.
    Absent,
}

/// The manifest's key and digest checked against the artifact's place and file list.
fn manifest_problems(artifact: &Artifact, mpath: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    if artifact.manifest.key != artifact.key {
        problems.push(Problem::BadManifest(
            mpath.to_path_buf(),
            format!(
                "stored under {} but its manifest says {}",
                artifact.key.short(),
                artifact.manifest.key.short()
            ),
        ));
    }
    if content_digest(&artifact.manifest.files) != artifact.manifest.digest {
        problems.push(Problem::BadManifest(
            mpath.to_path_buf(),
            "content digest does not match its file list".into(),
        ));
    }
    problems
}

/// What [`Store::gc`] removed.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Artifacts removed (or that would be, in a dry run).
    pub removed: Vec<CacheKey>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Abandoned temporary directories removed.
    pub stale_tmp: usize,
}

impl Store {
    /// Opens (creating if needed) a store and checks that it is writable.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for sub in ["objects", "tmp", "locks", "notes", "work"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|source| CacheError::NotWritable {
                path: root.clone(),
                source,
            })?;
        }
        // Absolute, so that paths handed to tasks stay valid whatever their working directory.
        let root = fs::canonicalize(&root).map_err(|source| CacheError::NotWritable {
            path: root.clone(),
            source,
        })?;
        let probe = root
            .join("tmp")
            .join(format!(".probe.{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|source| CacheError::NotWritable {
                path: root.clone(),
                source,
            })?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn object_dir(&self, key: &CacheKey) -> PathBuf {
        let hex = key.to_hex();
        self.root.join("objects").join(&hex[..2]).join(hex)
    }

    /// The finished artifact under `key`, if there is one.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Artifact>> {
        let dir = self.object_dir(key);
        let path = dir.join("manifest.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| CacheError::CorruptManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Some(Artifact {
            key: *key,
            dir,
            manifest,
        }))
    }

    /// What is under `key`, checked before anyone uses it: a whole artifact, a broken one (with
    /// what is wrong: files missing, resized or changed, an unreadable manifest), or nothing.
    ///
    /// [`Integrity::Quick`] costs a `stat` per file: every file present with its recorded size,
    /// and re-hashed only if it was modified after the manifest was written (artifacts are
    /// sealed read-only, so that is a file someone changed). [`Integrity::Full`] re-hashes every
    /// file.
    ///
    /// ```
    /// use covflow_cache::{Integrity, KeyBuilder, Lookup, Store};
    /// let root = tempfile::tempdir().unwrap();
    /// let store = Store::open(root.path()).unwrap();
    /// let key = KeyBuilder::new().field("task", b"t").finish();
    /// let staging = store.stage(&key).unwrap();
    /// std::fs::write(staging.data_dir().join("x.txt"), "hello").unwrap();
    /// let a = store.commit(staging, serde_json::json!({}), "").unwrap();
    /// assert!(matches!(store.lookup(&key, Integrity::Quick).unwrap(), Lookup::Whole(_)));
    /// std::fs::remove_file(a.data_dir().join("x.txt")).unwrap();
    /// assert!(matches!(store.lookup(&key, Integrity::Quick).unwrap(), Lookup::Broken { .. }));
    /// ```
    pub fn lookup(&self, key: &CacheKey, integrity: Integrity) -> Result<Lookup> {
        let artifact = match self.get(key) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(Lookup::Absent),
            Err(CacheError::CorruptManifest { path, reason }) => {
                return Ok(Lookup::Broken {
                    key: *key,
                    problems: vec![Problem::BadManifest(path, reason)],
                });
            }
            Err(e) => return Err(e),
        };
        let problems = match integrity {
            Integrity::Quick => self.check_quick(&artifact),
            Integrity::Full => self.verify(&artifact)?,
        };
        Ok(if problems.is_empty() {
            Lookup::Whole(Box::new(artifact))
        } else {
            Lookup::Broken {
                key: *key,
                problems,
            }
        })
    }

    /// The manifest's own consistency, then a `stat` of every file (see [`Store::lookup`]).
    fn check_quick(&self, artifact: &Artifact) -> Vec<Problem> {
        let mpath = artifact.dir.join("manifest.json");
        let mut problems = manifest_problems(artifact, &mpath);
        let sealed = fs::metadata(&mpath).and_then(|m| m.modified()).ok();
        let data = artifact.data_dir();
        for f in &artifact.manifest.files {
            let path = data.join(&f.path);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                problems.push(Problem::Missing(path));
                continue;
            };
            if !meta.is_file() {
                problems.push(Problem::Changed(path));
            } else if meta.len() != f.size {
                problems.push(Problem::Resized {
                    path,
                    recorded: f.size,
                    found: meta.len(),
                });
            } else if sealed.is_none_or(|s| meta.modified().is_ok_and(|m| m > s))
                && !hash_file(&path).is_ok_and(|(hex, _)| hex == f.blake3)
            {
                problems.push(Problem::Changed(path));
            }
        }
        problems
    }

    /// Moves the artifact under `key` out of the store and deletes it (a broken one, so that the
    /// task runs again). Call it holding the key's lock.
    pub fn evict(&self, key: &CacheKey) -> Result<()> {
        let dir = self.object_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        // Renamed first, so that a half-deleted artifact is never visible under its key.
        let trash =
            self.root
                .join("tmp")
                .join(format!("trash.{}.{}", key.to_hex(), std::process::id()));
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }

    /// Blocks until this process holds the lock on `key`.
    pub fn lock(&self, key: &CacheKey) -> Result<KeyLock> {
        let file = self.lock_file(key)?;
        file.lock().map_err(io_err(&self.lock_path(key)))?;
        Ok(KeyLock { _file: file })
    }

    /// Blocks until this process shares the lock on `key` with other readers: a task reading an
    /// artifact holds it, so that [`Store::gc`] (which needs the lock alone) leaves the artifact
    /// in place meanwhile.
    pub fn lock_shared(&self, key: &CacheKey) -> Result<KeyLock> {
        let file = self.lock_file(key)?;
        file.lock_shared().map_err(io_err(&self.lock_path(key)))?;
        Ok(KeyLock { _file: file })
    }

    /// Takes the lock on `key` if nobody holds it.
    pub fn try_lock(&self, key: &CacheKey) -> Result<Option<KeyLock>> {
        let file = self.lock_file(key)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(CacheError::Io {
                path: self.lock_path(key),
                source: e,
            }),
        }
    }

    fn lock_path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.to_hex();
        self.root
            .join("locks")
            .join(&hex[..2])
            .join(format!("{hex}.lock"))
    }

    fn lock_file(&self, key: &CacheKey) -> Result<File> {
        let path = self.lock_path(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Makes an empty staging directory for `key`. Call it while holding the key's lock: it
    /// removes what an earlier, killed writer of the same key left behind.
    pub fn stage(&self, key: &CacheKey) -> Result<Staging> {
        let hex = key.to_hex();
        let tmp = self.root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&hex) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = tmp.join(format!("{hex}.{}.{nanos}", std::process::id()));
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(io_err(&data))?;
        Ok(Staging { key: *key, dir })
    }

    /// A work directory for `key` that outlives a killed task (checkpoints of long stages).
    /// It is not part of any artifact; [`Store::clear_work_dir`] removes it once the task is done.
    pub fn work_dir(&self, key: &CacheKey) -> Result<PathBuf> {
        let dir = self.root.join("work").join(key.to_hex());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Removes the work directory of a finished task.
    pub fn clear_work_dir(&self, key: &CacheKey) {
        let _ = fs::remove_dir_all(self.root.join("work").join(key.to_hex()));
    }

    /// A fresh directory under `ROOT/tmp` for work that is compared, never stored
    /// (`audit --reexecute`). The caller removes it.
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = self
            .root
            .join("tmp")
            .join(format!("scratch.{}.{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Abandons a staging directory.
    pub fn discard(&self, staging: Staging) {
        let _ = fs::remove_dir_all(&staging.dir);
    }

    /// Hashes, seals and publishes a staged output: files are fsynced and made read-only, the
    /// manifest is written, and the directory is renamed into `objects/` in one step, so a crash
    /// at any moment leaves either no artifact or a complete one.
    pub fn commit(
        &self,
        staging: Staging,
        provenance: serde_json::Value,
        log: &str,
    ) -> Result<Artifact> {
        self.commit_with(staging, provenance, log, false)
    }

    /// As [`Store::commit`]; with `replace`, an existing artifact under the same key is swapped
    /// out for the new one (a forced re-run) instead of kept.
    pub fn commit_with(
        &self,
        staging: Staging,
        provenance: serde_json::Value,
        log: &str,
        replace: bool,
    ) -> Result<Artifact> {
        let data = staging.data_dir();
        let entries = scan_dir(&data)?;
        entries
            .par_iter()
            .map(|f| {
                let path = data.join(&f.path);
                let file = File::open(&path).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                let mut perms = file.metadata().map_err(io_err(&path))?.permissions();
                perms.set_readonly(true);
                fs::set_permissions(&path, perms).map_err(io_err(&path))
            })
            .collect::<Result<()>>()?;
        let mut dirs = vec![data.clone()];
        walk(&data, &data, &mut Vec::new(), &mut dirs)?;

        let log_tail = tail(log, 1 << 20);
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            key: staging.key,
            digest: content_digest(&entries),
            files: entries,
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cache_version: env!("CARGO_PKG_VERSION").to_string(),
            provenance,
            log: log_tail.to_string(),
        };
        let mpath = staging.dir.join("manifest.json");
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_synced(&mpath, &json)?;
        for d in dirs.iter().chain(std::iter::once(&staging.dir)) {
            sync_dir(d)?;
        }

        let target = self.object_dir(&staging.key);
        let parent = target.parent().expect("object dir has a parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if target.exists() && replace {
            let trash = self.root.join("tmp").join(format!(
                "trash.{}.{}",
                staging.key.to_hex(),
                std::process::id()
            ));
            fs::rename(&target, &trash).map_err(io_err(&target))?;
            fs::rename(&staging.dir, &target).map_err(io_err(&target))?;
            sync_dir(parent)?;
            let _ = fs::remove_dir_all(&trash);
        } else if target.exists() {
            // Another process finished the same key first; its result is equivalent.
            self.discard(staging);
        } else {
            fs::rename(&staging.dir, &target).map_err(io_err(&target))?;
            sync_dir(parent)?;
        }
        self.get(&manifest.key)?.ok_or_else(|| CacheError::Io {
            path: target,
            source: io::Error::other("artifact vanished right after commit"),
        })
    }

    /// Re-hashes every file of an artifact and compares it with its manifest.
    pub fn verify(&self, artifact: &Artifact) -> Result<Vec<Problem>> {
        let mpath = artifact.dir.join("manifest.json");
        let mut problems = manifest_problems(artifact, &mpath);
        let data = artifact.data_dir();
        let checks: Vec<Option<Problem>> = artifact
            .manifest
            .files
            .par_iter()
            .map(|f| {
                let path = data.join(&f.path);
                match hash_file(&path) {
                    Ok((hex, size)) if hex == f.blake3 && size == f.size => None,
                    Ok(_) => Some(Problem::Changed(path)),
                    Err(_) => Some(Problem::Missing(path)),
                }
            })
            .collect();
        problems.extend(checks.into_iter().flatten());
        let mut present = Vec::new();
        if data.is_dir() {
            walk(&data, &data, &mut present, &mut Vec::new()).ok();
        }
        let listed: HashSet<&str> = artifact
            .manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        for p in present {
            if !listed.contains(p.as_str()) {
                problems.push(Problem::Unexpected(data.join(p)));
            }
        }
        Ok(problems)
    }

    /// Every key in the store.
    pub fn keys(&self) -> Result<Vec<CacheKey>> {
        let objects = self.root.join("objects");
        let mut keys = Vec::new();
        for shard in fs::read_dir(&objects).map_err(io_err(&objects))?.flatten() {
            for e in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                if let Ok(k) = e.file_name().to_string_lossy().parse::<CacheKey>() {
                    keys.push(k);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes every artifact whose key is not in `keep`, and temporary directories nobody is
    /// writing. Artifacts whose lock is held are left alone.
    pub fn gc(&self, keep: &HashSet<CacheKey>, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        for key in self.keys()? {
            if keep.contains(&key) {
                continue;
            }
            let Some(_lock) = self.try_lock(&key)? else {
                continue;
            };
            let dir = self.object_dir(&key);
            report.bytes += dir_size(&dir);
            report.removed.push(key);
            if !dry_run {
                // Rename first so a half-deleted artifact is never visible under its key.
                let trash = self.root.join("tmp").join(format!(
                    "trash.{}.{}",
                    key.to_hex(),
                    std::process::id()
                ));
                fs::rename(&dir, &trash).map_err(io_err(&dir))?;
                fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("trash.") || name.starts_with("scratch.") {
                report.stale_tmp += 1;
                if !dry_run {
                    let _ = fs::remove_dir_all(e.path());
                }
                continue;
            }
            let Some(key) = name.get(..64).and_then(|h| h.parse::<CacheKey>().ok()) else {
                continue;
            };
            if let Some(_lock) = self.try_lock(&key)? {
                report.stale_tmp += 1;
                if !dry_run {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(report)
    }

    fn note_path(&self, name: &str) -> PathBuf {
        let h = blake3::hash(name.as_bytes()).to_hex();
        self.root.join("notes").join(format!("{h}.json"))
    }

    /// Atomically records a small note under a free-form name (write to a temporary file, rename).
    pub fn write_note(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.note_path(name);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The note recorded under `name`, if any.
    pub fn read_note(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.note_path(name)).ok()
    }
}

/// Every regular file under `dir` with its size and blake3, sorted by path (hashed in parallel).
/// Symbolic links and special files are refused.
pub fn scan_dir(dir: &Path) -> Result<Vec<FileEntry>> {
    let mut rel_paths = Vec::new();
    walk(dir, dir, &mut rel_paths, &mut Vec::new())?;
    rel_paths.sort();
    rel_paths
        .par_iter()
        .map(|rel| {
            let path = dir.join(rel);
            let (blake3, size) = hash_file(&path).map_err(io_err(&path))?;
            Ok(FileEntry {
                path: rel.clone(),
                size,
                blake3,
            })
        })
        .collect()
}

fn walk(base: &Path, dir: &Path, files: &mut Vec<String>, dirs: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(io_err(&path))?;
        if ty.is_dir() {
            dirs.push(path.clone());
            walk(base, &path, files, dirs)?;
        } else if ty.is_file() {
            let rel = path.strip_prefix(base).expect("walked under base");
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push(rel.join("/"));
        } else {
            return Err(CacheError::NotRegular { path });
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(path).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_size(&e.path()),
            Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => {}
        }
    }
    total
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyBuilder;

    fn put(store: &Store, name: &str, files: &[(&str, &[u8])]) -> Artifact {
        let key = KeyBuilder::new().field("t", name.as_bytes()).finish();
        let _l = store.lock(&key).unwrap();
        let st = store.stage(&key).unwrap();
        for (p, b) in files {
            let path = st.data_dir().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b).unwrap();
        }
        store.commit(st, serde_json::json!({}), "log").unwrap()
    }

    #[test]
    fn commit_then_verify_then_tamper() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let a = put(&store, "a", &[("x.txt", b"1"), ("sub/y.bin", b"22")]);
        assert_eq!(a.manifest.files.len(), 2);
        assert!(store.verify(&a).unwrap().is_empty());
        let y = a.data_dir().join("sub/y.bin");
        let mut perms = fs::metadata(&y).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&y, perms).unwrap();
        fs::write(&y, b"23").unwrap();
        let problems = store.verify(&a).unwrap();
        assert_eq!(problems, vec![Problem::Changed(y)]);
    }

    #[test]
    fn stale_staging_is_never_visible_and_gc_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let key = KeyBuilder::new().field("t", b"crashed").finish();
        {
            let _l = store.lock(&key).unwrap();
            let st = store.stage(&key).unwrap();
            fs::write(st.data_dir().join("half"), b"...").unwrap();
            // Dropped without commit: as if killed.
        }
        assert!(store.get(&key).unwrap().is_none());
        let report = store.gc(&HashSet::new(), false).unwrap();
        assert_eq!(report.stale_tmp, 1);
    }

    #[test]
    fn gc_keeps_what_is_asked() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let a = put(&store, "a", &[("f", b"1")]);
        let b = put(&store, "b", &[("f", b"2")]);
        let keep: HashSet<_> = [a.key].into_iter().collect();
        let report = store.gc(&keep, false).unwrap();
        assert_eq!(report.removed, vec![b.key]);
        assert!(store.get(&a.key).unwrap().is_some());
        assert!(store.get(&b.key).unwrap().is_none());
    }

    #[test]
    fn symlinks_are_refused_with_their_path() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let key = KeyBuilder::new().field("t", b"link").finish();
        let st = store.stage(&key).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", st.data_dir().join("evil")).unwrap();
        let err = store.commit(st, serde_json::json!({}), "").unwrap_err();
        assert!(err.to_string().contains("evil"), "{err}");
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let key = KeyBuilder::new().field("t", b"l").finish();
        let held = store.lock(&key).unwrap();
        assert!(store.try_lock(&key).unwrap().is_none());
        drop(held);
        assert!(store.try_lock(&key).unwrap().is_some());
    }
}
