//! Streaming, parallel file hashing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use rayon::prelude::*;

/// Files at least this big are memory-mapped and hashed on all cores (blake3's tree mode);
/// smaller ones are read in one pass, and many of them are hashed in parallel instead.
const MMAP_THRESHOLD: u64 = 16 << 20;

/// The blake3 digest (hex) and size of one file.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("x");
/// std::fs::write(&p, b"abc").unwrap();
/// let (hex, size) = covflow_cache::hash_file(&p).unwrap();
/// assert_eq!(size, 3);
/// assert_eq!(hex, blake3::hash(b"abc").to_hex().to_string());
/// ```
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let size = std::fs::metadata(path)?.len();
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut file = File::open(path)?;
        let mut buf = Vec::with_capacity(size as usize);
        file.read_to_end(&mut buf)?;
        hasher.update(&buf);
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Hashes many files in parallel, keeping their order.
pub fn hash_files(paths: &[&Path]) -> Vec<io::Result<(String, u64)>> {
    paths.par_iter().map(|p| hash_file(p)).collect()
}
