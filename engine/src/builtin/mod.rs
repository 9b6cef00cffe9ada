//! Stage kinds and dataset sources the engine ships with, so it can be used and tested alone.

mod datasets;
mod exec;

pub use datasets::{CountSource, GlobSource, GlobSpec, ListSource};
pub use exec::{ExecParams, ExecStage};
