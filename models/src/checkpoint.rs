//! Training checkpoints: a folder of records (weights, optimiser states) and a JSON state,
//! replaced atomically so that a kill at any moment leaves the last complete checkpoint.
//!
//! A checkpoint is written into `DIR.new`, then `DIR` is renamed to `DIR.old`, `DIR.new` to `DIR`,
//! and `DIR.old` removed. A reader takes `DIR`, or `DIR.old` when a kill fell between the two
//! renames.

use std::path::{Path, PathBuf};

use burn::record::{BinFileRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::Backend;
use serde::{Serialize, de::DeserializeOwned};

/// A checkpoint that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// burn's recorder or the state's JSON failed.
    #[error(
        "{0}: {1}\n  help: the checkpoint is damaged or from another model shape; delete it to start over"
    )]
    Record(PathBuf, String),
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The file name of the state every checkpoint has.
const STATE: &str = "state.json";

pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// A checkpoint being written; nothing replaces the previous one until [`Self::commit`].
pub(crate) struct CheckpointWriter {
    dir: PathBuf,
    fresh: PathBuf,
}

impl CheckpointWriter {
    /// Starts a checkpoint that will replace `dir`.
    pub(crate) fn begin(dir: &Path) -> Result<Self, CheckpointError> {
        let fresh = sibling(dir, "new");
        let _ = std::fs::remove_dir_all(&fresh);
        std::fs::create_dir_all(&fresh).map_err(|e| CheckpointError::io(&fresh, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            fresh,
        })
    }

    /// Writes one record (a module's or an optimiser's) as `name`.
    pub(crate) fn record<B: Backend, R: Record<B>>(
        &self,
        name: &str,
        record: R,
    ) -> Result<(), CheckpointError> {
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(record, self.fresh.join(name))
            .map_err(|e| CheckpointError::Record(self.fresh.join(name), e.to_string()))
    }

    /// Writes the state and puts the checkpoint in place.
    pub(crate) fn commit<T: Serialize>(self, state: &T) -> Result<(), CheckpointError> {
        let path = self.fresh.join(STATE);
        let json = serde_json::to_vec(state).expect("checkpoint states are plain data");
        std::fs::write(&path, json).map_err(|e| CheckpointError::io(&path, e))?;
        let old = sibling(&self.dir, "old");
        let _ = std::fs::remove_dir_all(&old);
        if self.dir.exists() {
            std::fs::rename(&self.dir, &old).map_err(|e| CheckpointError::io(&self.dir, e))?;
        }
        std::fs::rename(&self.fresh, &self.dir).map_err(|e| CheckpointError::io(&self.dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

/// The last complete checkpoint at `dir`, if any.
pub(crate) struct CheckpointReader {
    dir: PathBuf,
}

impl CheckpointReader {
    /// `dir`, or `dir.old` when a kill interrupted the swap; `None` when neither is complete.
    pub(crate) fn latest(dir: &Path) -> Option<Self> {
        [dir.to_path_buf(), sibling(dir, "old")]
            .into_iter()
            .find(|d| d.join(STATE).is_file())
            .map(|dir| Self { dir })
    }

    /// One record, its file named in the error.
    pub(crate) fn record<B: Backend, R: Record<B>>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<R, CheckpointError> {
        load_record(&self.dir, name, device)
    }

    /// The state written by [`CheckpointWriter::commit`].
    pub(crate) fn state<T: DeserializeOwned>(&self) -> Result<T, CheckpointError> {
        let path = self.dir.join(STATE);
        let text = std::fs::read(&path).map_err(|e| CheckpointError::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| CheckpointError::Record(path, e.to_string()))
    }
}

/// One record file `dir/name`, named in the error.
pub(crate) fn load_record<B: Backend, R: Record<B>>(
    dir: &Path,
    name: &str,
    device: &B::Device,
) -> Result<R, CheckpointError> {
    BinFileRecorder::<FullPrecisionSettings>::new()
        .load(dir.join(name), device)
        .map_err(|e| CheckpointError::Record(dir.join(name), e.to_string()))
}
