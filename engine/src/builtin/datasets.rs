//! Built-in dataset sources: `list`, `glob`, `count`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::stage::{DatasetSource, Item, valid_item_id};

fn check_ids(items: &[Item]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for it in items {
        if !valid_item_id(&it.id) {
            return Err(format!(
                "item id `{}` is not allowed: use letters, digits, `.`, `_`, `-`, not starting with `.` or `-`",
                it.id
            ));
        }
        if !seen.insert(it.id.as_str()) {
            return Err(format!("duplicate item id `{}`", it.id));
        }
    }
    Ok(())
}

/// `list: [a, b, c]`: the items are the listed ids.
pub struct ListSource;

/// A `list` dataset's declaration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// The ids, strings or numbers.
    list: Vec<Json>,
}

impl DatasetSource for ListSource {
    type Spec = ListSpec;

    fn kind(&self) -> &'static str {
        "list"
    }

    fn check(&self, spec: &ListSpec) -> Result<(), String> {
        check_ids(&self.items(spec, Path::new("."))?)
    }

    fn items(&self, spec: &ListSpec, _: &Path) -> Result<Vec<Item>, String> {
        spec.list
            .iter()
            .map(|v| match v {
                Json::String(s) => Ok(Item::named(s)),
                Json::Number(n) => Ok(Item::named(&n.to_string())),
                other => Err(format!(
                    "list entries must be strings or numbers, not {other}"
                )),
            })
            .collect()
    }
}

/// `glob: "data/*.txt"`: one item per matching file; the id is the file name without its
/// extensions (`study_0001.nii.gz` → `study_0001`), the digest is the file's blake3.
pub struct GlobSource;

/// A `glob` dataset's declaration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobSpec {
    /// The pattern, relative to the pipeline file.
    pub glob: String,
}

impl DatasetSource for GlobSource {
    type Spec = GlobSpec;

    fn kind(&self) -> &'static str {
        "glob"
    }

    fn check(&self, spec: &GlobSpec) -> Result<(), String> {
        glob::Pattern::new(&spec.glob)
            .map(|_| ())
            .map_err(|e| format!("bad glob pattern `{}`: {e}", spec.glob))
    }

    fn items(&self, spec: &GlobSpec, dir: &Path) -> Result<Vec<Item>, String> {
        let pattern = &spec.glob;
        let full = dir.join(pattern);
        let mut paths: Vec<_> = glob::glob(&full.to_string_lossy())
            .map_err(|e| format!("bad glob pattern `{pattern}`: {e}"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let digests =
            covflow_cache::hash_files(&paths.iter().map(|p| p.as_path()).collect::<Vec<_>>());
        let mut items = Vec::new();
        for (p, d) in paths.iter().zip(digests) {
            let (digest, _) = d.map_err(|e| format!("{}: {e}", p.display()))?;
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let id = name.split('.').next().unwrap_or(&name).to_string();
            let mut attrs = BTreeMap::new();
            attrs.insert("path".to_string(), p.to_string_lossy().into_owned());
            items.push(Item { id, digest, attrs });
        }
        if items.is_empty() {
            return Err(format!(
                "no file matches `{}`\n  help: the pattern is relative to the pipeline file's folder",
                full.display()
            ));
        }
        check_ids(&items)?;
        Ok(items)
    }
}

/// `count: N` (optional `prefix: item_`): N items `item_0000` …, for fan-out tests and
/// benchmarks.
pub struct CountSource;

impl CountSource {
    /// The most items of a `count` dataset: a plan of a million tasks is a test of the engine;
    /// beyond it a typo would exhaust memory instead of failing.
    pub const MAX: u64 = 1_000_000;
}

/// A `count` dataset's declaration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountSpec {
    /// How many items.
    count: u64,
    /// What their ids start with.
    #[serde(default = "default_prefix")]
    prefix: String,
}

fn default_prefix() -> String {
    "item_".into()
}

impl DatasetSource for CountSource {
    type Spec = CountSpec;

    fn kind(&self) -> &'static str {
        "count"
    }

    fn check(&self, spec: &CountSpec) -> Result<(), String> {
        if spec.count > Self::MAX {
            return Err(format!(
                "`count: {}` is more than the {} items a count dataset makes",
                spec.count,
                Self::MAX
            ));
        }
        check_ids(&self.items(spec, Path::new("."))?)
    }

    fn items(&self, spec: &CountSpec, _: &Path) -> Result<Vec<Item>, String> {
        let (n, prefix) = (spec.count, &spec.prefix);
        let width = n.saturating_sub(1).to_string().len();
        Ok((0..n)
            .map(|i| Item::named(&format!("{prefix}{i:0width$}")))
            .collect())
    }
}
