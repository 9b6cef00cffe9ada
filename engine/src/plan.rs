//! Cache keys of tasks, and the plan: which tasks are cached and why the others must run.

use std::collections::BTreeSet;

use std::collections::HashMap;

use covflow_cache::{
    CacheError, CacheKey, Integrity, KeyBuilder, Lookup, Problem, Store, canonical_json,
};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::execute::Upstream;
use crate::graph::TaskGraph;
use crate::registry::Registry;
use crate::spec::Pipeline;
use crate::stage::Device;

/// One input of a task as it enters the key: which upstream task, and the content digest of
/// the artifact it produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Upstream stage.
    pub stage: String,
    /// Upstream item.
    pub item: Option<String>,
    /// Content digest of its artifact ([`covflow_cache::content_digest`]).
    pub digest: String,
}

/// Everything a task's cache key is made of; stored in each manifest so that `audit` can
/// recompute the key, and kept per task so that `plan` can say what changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// Stage kind.
    pub kind: String,
    /// Stage kind's implementation version.
    pub version: u32,
    /// Parameters: the stage kind's typed `with:`, serialized with every default filled in.
    pub params: Json,
    /// Item id, for fan-out tasks.
    pub item: Option<String>,
    /// Item content digest, for fan-out tasks.
    pub item_digest: Option<String>,
    /// Device, for stages whose results depend on it.
    pub device: Option<String>,
    /// Inputs in order.
    pub inputs: Vec<InputRef>,
}

impl KeyMaterial {
    /// The cache key (the README's definition):
    /// blake3 of the fields `scheme, kind, version, params, item, item_digest, device`, then one
    /// `input` field per input (`stage \0 item \0 digest`), each field length-prefixed
    /// ([`KeyBuilder`]); `params` is canonical JSON (sorted keys, no spaces), absent values are
    /// empty strings.
    pub fn key(&self) -> CacheKey {
        let mut b = KeyBuilder::new();
        b.field("kind", self.kind.as_bytes())
            .field("version", self.version.to_string().as_bytes())
            .field("params", canonical_json(&self.params).as_bytes())
            .field("item", self.item.as_deref().unwrap_or("").as_bytes())
            .field(
                "item_digest",
                self.item_digest.as_deref().unwrap_or("").as_bytes(),
            )
            .field("device", self.device.as_deref().unwrap_or("").as_bytes());
        for i in &self.inputs {
            let v = format!(
                "{}\0{}\0{}",
                i.stage,
                i.item.as_deref().unwrap_or(""),
                i.digest
            );
            b.field("input", v.as_bytes());
        }
        b.finish()
    }

    /// Says what differs from an earlier material of the same task, most telling first.
    pub fn explain_change(&self, before: &KeyMaterial) -> String {
        if self.kind != before.kind {
            return format!("stage kind changed (`{}` → `{}`)", before.kind, self.kind);
        }
        if self.version != before.version {
            return format!(
                "stage version changed ({} → {})",
                before.version, self.version
            );
        }
        if self.params != before.params {
            let (a, b) = (
                before.params.as_object().cloned().unwrap_or_default(),
                self.params.as_object().cloned().unwrap_or_default(),
            );
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let changes: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => format!("parameter `{k}` changed ({x} → {y})"),
                    (None, Some(y)) => format!("parameter `{k}` added ({y})"),
                    (Some(x), None) => format!("parameter `{k}` removed (was {x})"),
                    (None, None) => unreachable!(),
                })
                .collect();
            return changes.join("; ");
        }
        if self.item_digest != before.item_digest {
            return "item content changed".into();
        }
        if self.device != before.device {
            return format!(
                "device changed ({} → {})",
                before.device.as_deref().unwrap_or("-"),
                self.device.as_deref().unwrap_or("-")
            );
        }
        if self.inputs != before.inputs {
            for i in &self.inputs {
                let old = before
                    .inputs
                    .iter()
                    .find(|b| b.stage == i.stage && b.item == i.item);
                let label = match &i.item {
                    Some(it) => format!("{}[{it}]", i.stage),
                    None => i.stage.clone(),
                };
                match old {
                    Some(o) if o.digest != i.digest => return format!("input `{label}` changed"),
                    None => return format!("input `{label}` added"),
                    _ => {}
                }
            }
            return "inputs changed".into();
        }
        "artifact missing from the cache (removed by gc?)".into()
    }
}

/// Whether a task can be served from the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Its artifact is in the cache.
    Cached,
    /// It must run; the reason says why.
    Run(String),
}

/// One task of a plan.
#[derive(Clone, Debug)]
pub struct PlannedTask {
    /// The task.
    pub node: NodeIndex,
    /// Its key material, when all its inputs are known (else an input must run first).
    pub material: Option<KeyMaterial>,
    /// Its key, when known.
    pub key: Option<CacheKey>,
    /// Cached, or why it must run.
    pub state: TaskState,
    /// Content digest of its artifact, when cached.
    pub digest: Option<String>,
}

/// A loaded pipeline with its task graph, the stage kinds and the cache it runs against.
pub struct Workflow {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Its tasks.
    pub graph: TaskGraph,
    /// Stage kinds and dataset sources.
    pub registry: Registry,
    /// The cache.
    pub store: Store,
    /// The device of the run.
    pub device: Device,
    /// How hard a cache hit is checked before it is used (`--verify`: every file re-hashed).
    pub integrity: Integrity,
    /// The running tasks' latest progress lines, for the progress bar.
    pub progress: crate::ProgressBoard,
    /// Refuse to run a task whose cached artifact is broken instead of running it again
    /// (`--frozen`).
    pub frozen: bool,
}

/// Says what is wrong with a broken artifact in one line: the first problem, and how many more.
pub(crate) fn broken_reason(problems: &[Problem]) -> String {
    let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
    match problems.len() {
        0 | 1 => format!("cached artifact broken: {first}"),
        n => format!("cached artifact broken: {first} (and {} more)", n - 1),
    }
}

/// The note that remembers the key material a task last ran with.
pub(crate) fn last_run_note(pipeline: &str, stage: &str, item: Option<&str>) -> String {
    format!("last-run\0{pipeline}\0{stage}\0{}", item.unwrap_or(""))
}

impl Workflow {
    /// A workflow over a loaded pipeline, with the default checks of cache hits.
    pub fn new(
        pipeline: Pipeline,
        graph: TaskGraph,
        registry: Registry,
        store: Store,
        device: Device,
    ) -> Self {
        Self {
            pipeline,
            graph,
            registry,
            store,
            device,
            integrity: Integrity::default(),
            progress: crate::ProgressBoard::default(),
            frozen: false,
        }
    }

    /// The key material of a task given its inputs' digests (in input order).
    pub fn material(&self, node: NodeIndex, input_digests: &[String]) -> KeyMaterial {
        let t = &self.graph.graph[node];
        let decl = &self.pipeline.stages[t.stage];
        let stage = self
            .registry
            .stage(&decl.uses)
            .expect("kinds are checked at load");
        KeyMaterial {
            kind: decl.uses.clone(),
            version: stage.version(),
            params: decl.params.clone(),
            item: t.item.as_ref().map(|i| i.id.clone()),
            item_digest: t.item.as_ref().map(|i| i.digest.clone()),
            device: stage
                .device_dependent()
                .then(|| self.device.name().to_string()),
            inputs: t
                .inputs
                .iter()
                .zip(input_digests)
                .map(|(&n, d)| InputRef {
                    stage: self.graph.stage_name(n).to_string(),
                    item: self.graph.item_id(n).map(str::to_string),
                    digest: d.clone(),
                })
                .collect(),
        }
    }

    /// The artifact of `key` as a task input, when the cache holds it whole (checked as
    /// [`Workflow::integrity`] says). A broken artifact is never used: it is as if absent, and
    /// the task runs again.
    pub fn cached(&self, key: CacheKey) -> Result<Option<Upstream>, CacheError> {
        Ok(match self.store.lookup(&key, self.integrity)? {
            Lookup::Whole(a) => Some(Upstream::of(&a)),
            Lookup::Broken { .. } | Lookup::Absent => None,
        })
    }

    /// Every task of `plan` that is cached, as an input, by node.
    pub fn cached_inputs(
        &self,
        plan: &[PlannedTask],
    ) -> Result<HashMap<NodeIndex, Upstream>, CacheError> {
        let mut done = HashMap::new();
        for p in plan {
            if let (TaskState::Cached, Some(key)) = (&p.state, p.key)
                && let Some(up) = self.cached(key)?
            {
                done.insert(p.node, up);
            }
        }
        Ok(done)
    }

    /// The state of every task, in dependency order. `force` names stages to re-run.
    /// Reads the cache; changes nothing.
    pub fn plan(
        &self,
        force: &BTreeSet<String>,
    ) -> Result<Vec<PlannedTask>, covflow_cache::CacheError> {
        self.plan_selected(force, None)
    }

    /// As [`Workflow::plan`], for the tasks marked in `selected` only (which must include their
    /// ancestors, as [`TaskGraph::ancestors`] gives): `covflow stage run` plans one task's
    /// upstream, not the whole pipeline, so that a fan-out of N jobs costs O(N), not O(N²).
    pub fn plan_selected(
        &self,
        force: &BTreeSet<String>,
        selected: Option<&[bool]>,
    ) -> Result<Vec<PlannedTask>, covflow_cache::CacheError> {
        let mut out: Vec<Option<PlannedTask>> = vec![None; self.graph.graph.node_count()];
        for &n in &self.graph.order {
            if selected.is_some_and(|s| !s[n.index()]) {
                continue;
            }
            let t = &self.graph.graph[n];
            let mut digests = Vec::with_capacity(t.inputs.len());
            let mut waiting_on = None;
            for &i in &t.inputs {
                match out[i.index()].as_ref().and_then(|p| p.digest.clone()) {
                    Some(d) => digests.push(d),
                    None => {
                        waiting_on = Some(i);
                        break;
                    }
                }
            }
            let planned = if let Some(i) = waiting_on {
                PlannedTask {
                    node: n,
                    material: None,
                    key: None,
                    state: TaskState::Run(format!(
                        "input `{}` must run first",
                        self.graph.label(i)
                    )),
                    digest: None,
                }
            } else {
                let material = self.material(n, &digests);
                let key = material.key();
                let stage_name = self.graph.stage_name(n);
                let artifact = self.store.lookup(&key, self.integrity)?;
                let (state, digest) = match artifact {
                    _ if force.contains(stage_name) => (
                        TaskState::Run(format!("forced (--force {stage_name})")),
                        None,
                    ),
                    Lookup::Whole(a) => (TaskState::Cached, Some(a.manifest.digest)),
                    Lookup::Broken { problems, .. } => {
                        (TaskState::Run(broken_reason(&problems)), None)
                    }
                    Lookup::Absent => (TaskState::Run(self.why_not_cached(n, &material)), None),
                };
                PlannedTask {
                    node: n,
                    material: Some(material),
                    key: Some(key),
                    state,
                    digest,
                }
            };
            out[n.index()] = Some(planned);
        }
        Ok(self
            .graph
            .order
            .iter()
            .filter_map(|n| out[n.index()].take())
            .collect())
    }

    fn why_not_cached(&self, n: NodeIndex, material: &KeyMaterial) -> String {
        let note = last_run_note(
            &self.pipeline.name,
            self.graph.stage_name(n),
            self.graph.item_id(n),
        );
        match self
            .store
            .read_note(&note)
            .and_then(|b| serde_json::from_slice::<KeyMaterial>(&b).ok())
        {
            Some(before) => material.explain_change(&before),
            None => "no artifact (never run)".into(),
        }
    }

    /// Records the material a task ran with, for later explanations.
    pub(crate) fn remember(&self, n: NodeIndex, material: &KeyMaterial) {
        let note = last_run_note(
            &self.pipeline.name,
            self.graph.stage_name(n),
            self.graph.item_id(n),
        );
        if let Ok(bytes) = serde_json::to_vec(material) {
            let _ = self.store.write_note(&note, &bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> KeyMaterial {
        KeyMaterial {
            kind: "exec".into(),
            version: 1,
            params: serde_json::json!({"run": "x", "n": 1}),
            item: Some("a".into()),
            item_digest: Some("d".into()),
            device: None,
            inputs: vec![InputRef {
                stage: "up".into(),
                item: Some("a".into()),
                digest: "1".into(),
            }],
        }
    }

    #[test]
    fn key_ignores_param_order_but_not_values() {
        let a = m();
        let mut b = m();
        b.params = serde_json::json!({"n": 1, "run": "x"});
        assert_eq!(a.key(), b.key());
        b.params = serde_json::json!({"n": 2, "run": "x"});
        assert_ne!(a.key(), b.key());
        assert_eq!(b.explain_change(&a), "parameter `n` changed (1 → 2)");
    }

    #[test]
    fn explains_input_and_version_changes() {
        let a = m();
        let mut b = m();
        b.inputs[0].digest = "2".into();
        assert_ne!(a.key(), b.key());
        assert_eq!(b.explain_change(&a), "input `up[a]` changed");
        b.version = 2;
        assert_eq!(b.explain_change(&a), "stage version changed (1 → 2)");
    }
}
