//! The pipeline file: parsing, `--set` overrides, `${params.*}` references and validation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::{Location, SpecError, at};
use crate::registry::Registry;

/// Resources a task declares; the executors schedule within them.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs (a GPU slot each; two GPU tasks never share one card).
    #[serde(default)]
    pub gpu: u32,
    /// CPU cores.
    #[serde(default = "one")]
    pub cpus: u32,
    /// Memory in GB (passed to SLURM; informational locally).
    #[serde(default)]
    pub mem_gb: Option<f64>,
    /// Wall-clock limit in minutes (passed to SLURM).
    #[serde(default)]
    pub time_min: Option<u32>,
}

fn one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            gpu: 0,
            cpus: 1,
            mem_gb: None,
            time_min: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    datasets: BTreeMap<String, serde_yaml::Mapping>,
    stages: BTreeMap<String, RawStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    uses: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    with: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    foreach: Option<String>,
    #[serde(default)]
    resources: Resources,
}

/// A dataset declaration: a named source of items.
#[derive(Clone, Debug)]
pub struct DatasetDecl {
    /// Its name.
    pub name: String,
    /// The source kind (`list`, `glob`, `count`, `phantom`, `mosmed`, `nifti`, ...).
    pub kind: String,
    /// The whole declaration, as JSON (the source kind's own key included).
    pub spec: Json,
}

/// A stage declaration, with `${params.*}` already substituted.
#[derive(Clone, Debug)]
pub struct StageDecl {
    /// Its name.
    pub name: String,
    /// The stage kind.
    pub uses: String,
    /// Its parameters as written (after `${params.*}` substitution).
    pub with: serde_json::Map<String, Json>,
    /// Its parameters as the stage kind reads them: every default filled in. What the cache key
    /// and the manifests hold.
    pub params: Json,
    /// Upstream stages, in the order the file gives (inputs are passed in this order).
    pub needs: Vec<String>,
    /// The dataset or upstream stage to fan out over.
    pub foreach: Option<String>,
    /// Declared resources.
    pub resources: Resources,
}

/// A parsed, validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// `name:` in the file.
    pub name: String,
    /// The pipeline file.
    pub path: PathBuf,
    /// The directory relative paths are resolved against (the file's directory).
    pub dir: PathBuf,
    /// The file's text (for error locations).
    pub source: String,
    /// Pipeline-level parameters after overrides.
    pub params: BTreeMap<String, Json>,
    /// Datasets, in file order.
    pub datasets: Vec<DatasetDecl>,
    /// Stages, in file order.
    pub stages: Vec<StageDecl>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Pipeline {
    /// Reads, overrides (`--set KEY=VALUE`, YAML-typed) and validates a pipeline file.
    pub fn load(path: &Path, overrides: &[String], registry: &Registry) -> Result<Self, SpecError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            SpecError::new(loc0(path), format!("cannot read the pipeline file: {e}"))
                .help("check the path; `covflow run FILE` takes a YAML pipeline")
        })?;
        Self::from_source(path, source, overrides, registry)
    }

    /// As [`Pipeline::load`], from text already read.
    pub fn from_source(
        path: &Path,
        source: String,
        overrides: &[String],
        registry: &Registry,
    ) -> Result<Self, SpecError> {
        // Typed parse of the text itself first: serde_yaml then reports line and column for
        // syntax errors, unknown keys and wrong types.
        let _: RawPipeline = serde_yaml::from_str(&source).map_err(|e| yaml_error(path, &e))?;
        let mut tree: serde_yaml::Value =
            serde_yaml::from_str(&source).map_err(|e| yaml_error(path, &e))?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        let raw: RawPipeline = serde_yaml::from_value(tree.clone()).map_err(|e| {
            SpecError::new(loc0(path), format!("after applying --set overrides: {e}"))
                .help("check the type of each --set value")
        })?;
        let order = |section: &str| -> Vec<String> {
            tree.get(section)
                .and_then(|v| v.as_mapping())
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);

        let mut params = BTreeMap::new();
        for (k, v) in raw.params {
            params.insert(k.clone(), to_json(path, &source, &["params", &k], &v)?);
        }

        let load = Loader {
            path,
            source: &source,
            registry,
            params: &params,
        };
        let mut datasets = Vec::new();
        let mut raw_datasets = raw.datasets;
        for name in order("datasets") {
            if let Some(map) = raw_datasets.remove(&name) {
                datasets.push(load.dataset(name, map)?);
            }
        }
        let dataset_names: BTreeSet<&str> = datasets.iter().map(|d| d.name.as_str()).collect();
        let stage_names: BTreeSet<String> = raw.stages.keys().cloned().collect();
        let mut stages = Vec::new();
        let mut raw_stages = raw.stages;
        for name in order("stages") {
            if let Some(rs) = raw_stages.remove(&name) {
                stages.push(load.stage(name, rs, &dataset_names, &stage_names)?);
            }
        }

        if !valid_name(&raw.name) {
            return Err(bad_name(
                at(path, &source, &["name"]),
                "pipeline",
                &raw.name,
            ));
        }
        let pipeline = Pipeline {
            name: raw.name,
            path: path.to_path_buf(),
            dir,
            source,
            params,
            datasets,
            stages,
        };
        pipeline.check_cycles()?;
        Ok(pipeline)
    }

    /// The stage declared under `name`.
    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The dataset declared under `name`.
    pub fn dataset(&self, name: &str) -> Option<&DatasetDecl> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// A location in this pipeline's file.
    pub fn location(&self, path: &[&str]) -> Location {
        at(&self.path, &self.source, path)
    }

    fn check_cycles(&self) -> Result<(), SpecError> {
        use petgraph::graph::DiGraph;
        let mut g = DiGraph::<&str, ()>::new();
        let idx: BTreeMap<&str, _> = self
            .stages
            .iter()
            .map(|s| (s.name.as_str(), g.add_node(s.name.as_str())))
            .collect();
        for s in &self.stages {
            for n in &s.needs {
                g.add_edge(idx[n.as_str()], idx[s.name.as_str()], ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            let is_cycle = scc.len() > 1 || g.contains_edge(scc[0], scc[0]);
            if !is_cycle {
                continue;
            }
            // Walk the cycle inside the component to print it in order.
            let members: BTreeSet<_> = scc.iter().copied().collect();
            let start = *scc.iter().min_by_key(|n| g[**n]).expect("non-empty");
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = g
                    .neighbors(cur)
                    .filter(|n| members.contains(n))
                    .min_by_key(|n| (path.contains(n) && *n != start, g[*n]))
                    .expect("a cycle member has a successor in the cycle");
                if next == start || path.contains(&next) {
                    path.push(next);
                    break;
                }
                path.push(next);
                cur = next;
            }
            let names: Vec<&str> = path.iter().map(|n| g[*n]).collect();
            return Err(SpecError::new(
                self.location(&["stages", names[0], "needs"]),
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .help("a stage cannot need (directly or through others) its own output; remove one of these `needs`"));
        }
        Ok(())
    }
}

/// What loading a dataset or a stage declaration needs: the file, its text, the kinds and the
/// pipeline's parameters.
struct Loader<'a> {
    path: &'a Path,
    source: &'a str,
    registry: &'a Registry,
    params: &'a BTreeMap<String, Json>,
}

impl Loader<'_> {
    /// One dataset: its source kind found, `${params.*}` substituted, its declaration checked.
    fn dataset(&self, name: String, map: serde_yaml::Mapping) -> Result<DatasetDecl, SpecError> {
        let (path, source, registry, params) = (self.path, self.source, self.registry, self.params);
        let here = at(path, source, &["datasets", &name]);
        if !valid_name(&name) {
            return Err(bad_name(here, "dataset", &name));
        }
        let spec = to_json(
            path,
            source,
            &["datasets", &name],
            &serde_yaml::Value::Mapping(map),
        )?;
        let spec = substitute(&spec, params)
            .map_err(|m| SpecError::new(here.clone(), m).context(format!("dataset `{name}`")))?;
        let kinds: Vec<&String> = spec
            .as_object()
            .map(|o| o.keys().filter(|k| registry.dataset(k).is_some()).collect())
            .unwrap_or_default();
        let kind = match kinds.as_slice() {
            [k] => (*k).clone(),
            [] => {
                return Err(SpecError::new(here, "no dataset source given")
                    .context(format!("dataset `{name}`"))
                    .help(format!(
                        "give exactly one of: {}",
                        registry.dataset_kinds().join(", ")
                    )));
            }
            many => {
                return Err(SpecError::new(
                    here,
                    format!(
                        "several dataset sources given: {}",
                        many.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .context(format!("dataset `{name}`"))
                .help("give exactly one source per dataset"));
            }
        };
        registry
            .dataset(&kind)
            .expect("kind found above")
            .check(&spec)
            .map_err(|e| {
                let mut key: Vec<&str> = vec!["datasets", &name];
                key.extend(e.path.iter().map(String::as_str));
                SpecError::new(at(path, source, &key), e.message)
                    .context(format!("dataset `{name}`"))
            })?;
        Ok(DatasetDecl { name, kind, spec })
    }

    /// One stage: its kind, `needs` and `foreach` checked, its parameters typed by its kind.
    fn stage(
        &self,
        name: String,
        rs: RawStage,
        dataset_names: &BTreeSet<&str>,
        stage_names: &BTreeSet<String>,
    ) -> Result<StageDecl, SpecError> {
        let (path, source, registry, params) = (self.path, self.source, self.registry, self.params);
        let here = |field: &str| at(path, source, &["stages", &name, field]);
        let ctx = format!("stage `{name}`");
        if !valid_name(&name) {
            return Err(bad_name(here(""), "stage", &name));
        }
        if dataset_names.contains(name.as_str()) {
            return Err(SpecError::new(
                here(""),
                format!("`{name}` is both a dataset and a stage"),
            )
            .help("rename one of them: `foreach` and `needs` refer to both by name"));
        }
        let Some(stage) = registry.stage(&rs.uses) else {
            return Err(
                SpecError::new(here("uses"), format!("unknown stage kind `{}`", rs.uses))
                    .context(ctx)
                    .help(format!(
                        "known kinds: {}",
                        registry.stage_kinds().join(", ")
                    )),
            );
        };
        for need in &rs.needs {
            if !stage_names.contains(need) {
                let hint = if dataset_names.contains(need.as_str()) {
                    format!("`{need}` is a dataset: use `foreach: {need}` to fan out over it")
                } else {
                    format!(
                        "stages in this pipeline: {}",
                        stage_names.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(SpecError::new(
                    here("needs"),
                    format!("needs `{need}`, which is not a stage"),
                )
                .context(ctx)
                .help(hint));
            }
        }
        if let Some(f) = &rs.foreach
            && !dataset_names.contains(f.as_str())
            && !stage_names.contains(f)
        {
            return Err(SpecError::new(
                here("foreach"),
                format!("foreach `{f}`, which is neither a dataset nor a stage"),
            )
            .context(ctx)
            .help("name a dataset under `datasets:` or an upstream stage that fans out"));
        }
        let mut with = serde_json::Map::new();
        for (k, v) in &rs.with {
            let v = to_json(path, source, &["stages", &name, "with", k], v)?;
            let v = substitute(&v, params).map_err(|m| {
                SpecError::new(at(path, source, &["stages", &name, "with", k]), m)
                    .context(ctx.clone())
                    .help(format!(
                        "write ${{params.NAME}} with NAME one of: {}",
                        if params.is_empty() {
                            "(no params declared)".to_string()
                        } else {
                            params.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ))
            })?;
            with.insert(k.clone(), v);
        }
        let mut needs = rs.needs.clone();
        if let Some(f) = &rs.foreach
            && stage_names.contains(f)
            && !needs.contains(f)
        {
            needs.push(f.clone());
        }
        let mut decl = StageDecl {
            name: name.clone(),
            uses: rs.uses.clone(),
            with,
            params: Json::Null,
            needs,
            foreach: rs.foreach.clone(),
            resources: rs.resources.clone(),
        };
        decl.params = stage.load(&decl).map_err(|e| {
            let mut key: Vec<&str> = vec!["stages", &name];
            key.extend(e.path.iter().map(String::as_str));
            SpecError::new(at(path, source, &key), e.message)
                .context(ctx.clone())
                .help(stage.params_help())
        })?;
        Ok(decl)
    }
}

fn loc0(path: &Path) -> Location {
    Location {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
    }
}

fn bad_name(location: Location, what: &str, name: &str) -> SpecError {
    SpecError::new(location, format!("invalid {what} name `{name}`"))
        .help("names may use letters, digits, `_` and `-` only")
}

fn yaml_error(path: &Path, e: &serde_yaml::Error) -> SpecError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let msg = e.to_string();
    // serde_yaml appends " at line L column C"; the location is printed in front instead.
    let msg = msg
        .split(" at line ")
        .next()
        .unwrap_or(&msg)
        .trim()
        .to_string();
    let help = if msg.contains("unknown field") {
        "remove or rename the field; the README lists the pipeline vocabulary"
    } else if msg.contains("missing field") {
        "add the field; every pipeline needs `name` and `stages`, every stage `uses`"
    } else if msg.contains("invalid type") {
        "check the value's type against the README's pipeline vocabulary"
    } else {
        "fix the YAML syntax (indentation, `key: value`, quotes)"
    };
    SpecError::new(
        Location {
            file: path.to_path_buf(),
            line,
            column,
        },
        msg,
    )
    .help(help)
}

/// Whether a YAML value holds `.nan` or `.inf` anywhere (JSON has neither: they would silently
/// become null).
fn non_finite(v: &serde_yaml::Value) -> bool {
    match v {
        serde_yaml::Value::Number(n) => n.as_f64().is_some_and(|f| !f.is_finite()),
        serde_yaml::Value::Sequence(s) => s.iter().any(non_finite),
        serde_yaml::Value::Mapping(m) => m.values().any(non_finite),
        serde_yaml::Value::Tagged(t) => non_finite(&t.value),
        _ => false,
    }
}

fn to_json(
    path: &Path,
    source: &str,
    key: &[&str],
    v: &serde_yaml::Value,
) -> Result<Json, SpecError> {
    if non_finite(v) {
        return Err(SpecError::new(
            at(path, source, key),
            "`.nan` and `.inf` are not values covflow can use",
        )
        .help("write a finite number, or null where a parameter allows it"));
    }
    serde_json::to_value(v).map_err(|e| {
        SpecError::new(at(path, source, key), format!("unsupported value: {e}"))
            .help("mapping keys must be strings; YAML tags are not supported")
    })
}

/// Applies `a.b.c=VALUE` to the YAML tree; VALUE is parsed as YAML (`3` is a number, `"3"` a
/// string, `[1, 2]` a list).
fn apply_override(tree: &mut serde_yaml::Value, spec: &str) -> Result<(), SpecError> {
    let cli = |m: String| {
        SpecError::new(
            Location {
                file: PathBuf::from("--set"),
                line: 0,
                column: 0,
            },
            m,
        )
    };
    let Some((key, value)) = spec.split_once('=') else {
        return Err(cli(format!("`{spec}` is not KEY=VALUE"))
            .help("e.g. --set params.threshold=0.7 or --set stages.crop.with.size=[32,128,128]"));
    };
    let value: serde_yaml::Value = serde_yaml::from_str(value)
        .map_err(|e| cli(format!("`{spec}`: the value is not YAML: {e}")))?;
    let parts: Vec<&str> = key.split('.').collect();
    let allowed = match parts.as_slice() {
        ["params", _] => true,
        ["stages", _, "with" | "resources", ..] if parts.len() >= 4 => true,
        ["stages", _, "uses" | "foreach" | "needs"] => true,
        ["datasets", _, ..] if parts.len() >= 3 => true,
        _ => false,
    };
    if !allowed {
        return Err(cli(format!("cannot set `{key}`")).help(
            "set params.NAME, stages.NAME.with.KEY, stages.NAME.resources.KEY or datasets.NAME.KEY",
        ));
    }
    if parts[0] != "params" {
        let exists = tree.get(parts[0]).and_then(|s| s.get(parts[1])).is_some();
        if !exists {
            return Err(cli(format!(
                "`{key}`: there is no {} named `{}`",
                &parts[0][..parts[0].len() - 1],
                parts[1]
            )));
        }
    }
    let mut node = tree;
    for (i, p) in parts.iter().enumerate() {
        let map = match node {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => {
                *node = serde_yaml::Value::Mapping(Default::default());
                node.as_mapping_mut().expect("just made")
            }
            _ => {
                return Err(cli(format!(
                    "`{key}`: `{}` is not a mapping",
                    parts[..i].join(".")
                )));
            }
        };
        let k = serde_yaml::Value::String((*p).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert(serde_yaml::Value::Mapping(Default::default()));
    }
    Ok(())
}

/// Replaces `${params.NAME}` inside a value. A string that is exactly one reference takes the
/// parameter's value with its type; a reference inside a longer string is formatted into it.
fn substitute(v: &Json, params: &BTreeMap<String, Json>) -> Result<Json, String> {
    Ok(match v {
        Json::String(s) => {
            if let Some(name) = whole_reference(s) {
                lookup(name, params)?.clone()
            } else {
                Json::String(interpolate(s, params)?)
            }
        }
        Json::Array(a) => Json::Array(
            a.iter()
                .map(|x| substitute(x, params))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(o) => Json::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, params)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn whole_reference(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains('}')).then_some(inner)
}

fn lookup<'a>(reference: &str, params: &'a BTreeMap<String, Json>) -> Result<&'a Json, String> {
    let Some(name) = reference.strip_prefix("params.") else {
        return Err(format!(
            "bad reference `${{{reference}}}`: only ${{params.NAME}} can be referenced here"
        ));
    };
    params
        .get(name)
        .ok_or_else(|| format!("bad reference `${{{reference}}}`: no parameter `{name}`"))
}

fn interpolate(s: &str, params: &BTreeMap<String, Json>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated reference in `{s}`"));
        };
        let v = lookup(&after[..end], params)?;
        match v {
            Json::String(x) => out.push_str(x),
            Json::Number(_) | Json::Bool(_) => out.push_str(&v.to_string()),
            _ => {
                return Err(format!(
                    "`${{{}}}` is a list or mapping and cannot be formatted into a string",
                    &after[..end]
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BTreeMap<String, Json> {
        [
            ("n".to_string(), serde_json::json!(3)),
            ("s".to_string(), serde_json::json!("x")),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn whole_references_keep_their_type() {
        let v = substitute(&serde_json::json!("${params.n}"), &params()).unwrap();
        assert_eq!(v, serde_json::json!(3));
        let v = substitute(&serde_json::json!("a-${params.n}-${params.s}"), &params()).unwrap();
        assert_eq!(v, serde_json::json!("a-3-x"));
    }

    #[test]
    fn bad_references_are_named() {
        let e = substitute(&serde_json::json!("${params.nope}"), &params()).unwrap_err();
        assert!(e.contains("no parameter `nope`"), "{e}");
        let e = substitute(&serde_json::json!("${env.HOME}"), &params()).unwrap_err();
        assert!(e.contains("bad reference"), "{e}");
    }

    #[test]
    fn overrides_are_yaml_typed() {
        let mut t: serde_yaml::Value =
            serde_yaml::from_str("params: {a: 1}\nstages: {s: {uses: exec}}").unwrap();
        apply_override(&mut t, "params.a=2.5").unwrap();
        apply_override(&mut t, "stages.s.with.run=echo hi").unwrap();
        assert_eq!(t["params"]["a"].as_f64(), Some(2.5));
        assert_eq!(t["stages"]["s"]["with"]["run"].as_str(), Some("echo hi"));
        assert!(apply_override(&mut t, "stages.zz.with.x=1").is_err());
        assert!(apply_override(&mut t, "name=x").is_err());
    }
}
