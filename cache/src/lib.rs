//! covflow's content-addressed artifact store.
//!
//! One job: keep task outputs under keys, safely. A key ([`CacheKey`]) is built by the caller with
//! [`KeyBuilder`]; an output is staged in a private directory, then [`Store::commit`] hashes it,
//! seals it and renames it into place in one atomic step. A per-key [`KeyLock`] makes concurrent
//! writers (two `covflow run`s, many SLURM jobs) compute each key once. The store knows nothing
//! about stages or pipelines: provenance is an opaque JSON object kept in the [`Manifest`].

mod hash;
mod key;
mod manifest;
mod store;

pub use hash::{hash_file, hash_files};
pub use key::{CacheKey, KEY_SCHEME, KeyBuilder, ParseKeyError, canonical_json};
pub use manifest::{FileEntry, MANIFEST_FORMAT, Manifest, content_digest};
pub use store::{
    Artifact, CacheError, GcReport, Integrity, KeyLock, Lookup, Problem, Staging, Store, scan_dir,
};
