//! The manifest: what an artifact holds and how it was made.

use serde::{Deserialize, Serialize};

use crate::CacheKey;

/// The manifest format written by this version.
pub const MANIFEST_FORMAT: u32 = 1;

/// One file of an artifact, by its path relative to the artifact's data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path with `/` separators.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content, hex.
    pub blake3: String,
}

/// `manifest.json` beside an artifact's `data/` directory.
///
/// The cache does not know what a stage is: how the artifact was made (stage, parameters,
/// inputs, device, timings) is the caller's `provenance` object, stored as given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] at write time.
    pub format: u32,
    /// The key the artifact is stored under.
    pub key: CacheKey,
    /// The content digest: blake3 over the sorted file list (see [`content_digest`]).
    pub digest: String,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
    /// The host that wrote the artifact.
    pub host: String,
    /// The covflow-cache version that wrote it.
    pub cache_version: String,
    /// How the artifact was made, as the caller described it.
    pub provenance: serde_json::Value,
    /// The task's log (its last 1 MiB if longer).
    pub log: String,
}

/// The digest of an artifact's content: blake3 over `path \0 size \0 blake3 \n` for each file in
/// path order. Two artifacts with the same files have the same digest whatever their keys, which
/// is what lets a downstream key depend on what an upstream task produced rather than on how.
///
/// ```
/// use covflow_cache::{content_digest, FileEntry};
/// let f = |p: &str| FileEntry { path: p.into(), size: 1, blake3: "00".into() };
/// assert_eq!(content_digest(&[f("a"), f("b")]), content_digest(&[f("b"), f("a")]));
/// ```
pub fn content_digest(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = blake3::Hasher::new();
    for f in sorted {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.size.to_string().as_bytes());
        h.update(b"\0");
        h.update(f.blake3.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}
