//! Errors that point at the pipeline file.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a pipeline file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// An invalid pipeline: where, what, and what to do about it. Rendered like a compiler error:
///
/// ```text
/// error: pipelines/demo.yaml:12:5: stage `crop`: unknown stage kind `cropp`
///   help: known kinds: crop, exec, lung_mask, resample
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// Where the problem is.
    pub location: Location,
    /// The stage (or dataset) concerned, when there is one.
    pub context: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: Option<String>,
}

impl SpecError {
    /// An error at a location.
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Self {
            location,
            context: None,
            message: message.into(),
            help: None,
        }
    }

    /// Names the stage or dataset concerned.
    pub fn context(mut self, c: impl Into<String>) -> Self {
        self.context = Some(c.into());
        self
    }

    /// Adds advice.
    pub fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Finds where a key path (`["stages", "crop", "with", "size"]`) is written in block-style YAML,
/// by indentation. Returns the deepest prefix of the path that it finds, or (0, 0).
///
/// serde_yaml reports positions for syntax and type errors but not for the meaning of values,
/// so semantic errors (unknown kind, bad reference, cycle) are placed with this.
///
/// ```
/// let src = "stages:\n  a:\n    uses: exec\n  b:\n    uses: nope\n";
/// assert_eq!(covflow_engine::locate(src, &["stages", "b", "uses"]), (5, 5));
/// assert_eq!(covflow_engine::locate(src, &["stages", "b", "missing"]), (4, 3));
/// ```
pub fn locate(source: &str, path: &[&str]) -> (usize, usize) {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut best = (0usize, (0usize, 0usize));
    for (lineno, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - trimmed.len();
        let mut rest = trimmed;
        if let Some(r) = rest.strip_prefix("- ") {
            indent += 2;
            rest = r.trim_start();
        }
        let Some(colon) = find_key_colon(rest) else {
            continue;
        };
        let key = rest[..colon].trim().trim_matches(|c| c == '"' || c == '\'');
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        let depth = stack
            .iter()
            .zip(path)
            .take_while(|((_, k), p)| k == *p)
            .count();
        if depth == stack.len() && depth > best.0 {
            best = (depth, (lineno + 1, indent + 1));
            if depth == path.len() {
                break;
            }
        }
    }
    best.1
}

/// The position of the `:` that ends a mapping key on this line, if the line starts with one.
fn find_key_colon(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"') | (None, b'\'') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b':') if i + 1 == bytes.len() || bytes[i + 1] == b' ' => return Some(i),
            (None, b'{') | (None, b'[') if i == 0 => return None,
            _ => {}
        }
    }
    None
}

/// A location in `file` for a key path of the pipeline's source.
pub(crate) fn at(file: &Path, source: &str, path: &[&str]) -> Location {
    let (line, column) = locate(source, path);
    Location {
        file: file.to_path_buf(),
        line,
        column,
    }
}
