//! Built-in dataset sources: `list`, `glob`, `count`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::stage::{DatasetSource, Item, valid_item_id};

fn only_keys(spec: &Json, allowed: &[&str]) -> Result<(), String> {
    if let Some(o) = spec.as_object() {
        for k in o.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(format!(
                    "unknown field `{k}` (expected one of: {})",
                    allowed.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn check_ids(items: &[Item]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for it in items {
        if !valid_item_id(&it.id) {
            return Err(format!(
                "item id `{}` is not allowed: use letters, digits, `.`, `_`, `-`, not starting with `.`",
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

impl DatasetSource for ListSource {
    fn kind(&self) -> &'static str {
        "list"
    }

    fn check(&self, spec: &Json) -> Result<(), String> {
        only_keys(spec, &["list"])?;
        let items = self.items(spec, Path::new("."))?;
        check_ids(&items)
    }

    fn items(&self, spec: &Json, _: &Path) -> Result<Vec<Item>, String> {
        let list = spec["list"]
            .as_array()
            .ok_or("`list` must be a list of ids, e.g. `list: [a, b]`")?;
        list.iter()
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

impl DatasetSource for GlobSource {
    fn kind(&self) -> &'static str {
        "glob"
    }

    fn check(&self, spec: &Json) -> Result<(), String> {
        only_keys(spec, &["glob"])?;
        let pattern = spec["glob"]
            .as_str()
            .ok_or("`glob` must be a pattern string, e.g. `glob: \"data/*.nii.gz\"`")?;
        glob::Pattern::new(pattern).map_err(|e| format!("bad glob pattern `{pattern}`: {e}"))?;
        Ok(())
    }

    fn items(&self, spec: &Json, dir: &Path) -> Result<Vec<Item>, String> {
        let pattern = spec["glob"].as_str().ok_or("`glob` must be a string")?;
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
        check_ids(&items)?;
        Ok(items)
    }
}

/// `count: N` (optional `prefix: item_`): N items `item_0000` …, for fan-out tests and
/// benchmarks.
pub struct CountSource;

impl DatasetSource for CountSource {
    fn kind(&self) -> &'static str {
        "count"
    }

    fn check(&self, spec: &Json) -> Result<(), String> {
        only_keys(spec, &["count", "prefix"])?;
        let items = self.items(spec, Path::new("."))?;
        check_ids(&items)
    }

    fn items(&self, spec: &Json, _: &Path) -> Result<Vec<Item>, String> {
        let n = spec["count"]
            .as_u64()
            .ok_or("`count` must be a non-negative integer")?;
        let prefix = spec
            .get("prefix")
            .map(|p| p.as_str().ok_or("`prefix` must be a string"))
            .transpose()?
            .unwrap_or("item_");
        let width = n.saturating_sub(1).to_string().len();
        Ok((0..n)
            .map(|i| Item::named(&format!("{prefix}{i:0width$}")))
            .collect())
    }
}
