//! From stages and datasets to tasks: one task per stage, or per item for fan-out stages.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::SpecError;
use crate::registry::Registry;
use crate::spec::Pipeline;
use crate::stage::Item;

/// One task: a stage, and an item when the stage fans out.
#[derive(Clone, Debug)]
pub struct TaskNode {
    /// Index into [`Pipeline::stages`].
    pub stage: usize,
    /// The item, for fan-out tasks.
    pub item: Option<Item>,
    /// Upstream tasks in input order (`needs` order, then item order).
    pub inputs: Vec<NodeIndex>,
}

/// The task DAG. Edges run from an input to the task that reads it.
#[derive(Clone, Debug)]
pub struct TaskGraph {
    /// The graph.
    pub graph: DiGraph<TaskNode, ()>,
    /// All tasks in a dependency order (inputs first).
    pub order: Vec<NodeIndex>,
    /// Stage names, by stage index (so that tasks can be named without the pipeline).
    stage_names: Vec<String>,
    index: HashMap<(String, Option<String>), NodeIndex>,
}

impl TaskGraph {
    /// Expands the pipeline's stages over its datasets' items.
    pub fn build(p: &Pipeline, registry: &Registry) -> Result<Self, SpecError> {
        // Items of every dataset, once.
        let mut items: HashMap<&str, Vec<Item>> = HashMap::new();
        for d in &p.datasets {
            let source = registry
                .dataset(&d.kind)
                .expect("dataset kinds are checked at load");
            let list = source.items(&d.spec, &p.dir).map_err(|m| {
                SpecError::new(p.location(&["datasets", &d.name, &d.kind]), m)
                    .context(format!("dataset `{}`", d.name))
            })?;
            items.insert(d.name.as_str(), list);
        }
        // The dataset each stage fans out over, following `foreach: STAGE` chains.
        let stage_idx: HashMap<&str, usize> = p
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut origin: Vec<Option<&str>> = vec![None; p.stages.len()];
        for (i, s) in p.stages.iter().enumerate() {
            let mut cur = s.foreach.as_deref();
            let mut hops = 0;
            while let Some(name) = cur {
                if items.contains_key(name) {
                    break;
                }
                let up = &p.stages[stage_idx[name]];
                if up.foreach.is_none() {
                    return Err(SpecError::new(
                        p.location(&["stages", &s.name, "foreach"]),
                        format!(
                            "foreach `{name}`: that stage does not fan out, so it has no items"
                        ),
                    )
                    .context(format!("stage `{}`", s.name))
                    .help("fan out over a dataset, or over a stage that has `foreach`"));
                }
                cur = up.foreach.as_deref();
                hops += 1;
                if hops > p.stages.len() {
                    break;
                }
            }
            origin[i] = cur;
        }

        // Stages in dependency order (the spec is known to be acyclic).
        let mut sg = DiGraph::<usize, ()>::new();
        let snodes: Vec<_> = (0..p.stages.len()).map(|i| sg.add_node(i)).collect();
        for (i, s) in p.stages.iter().enumerate() {
            for n in &s.needs {
                sg.add_edge(snodes[stage_idx[n.as_str()]], snodes[i], ());
            }
        }
        let stage_order: Vec<usize> = petgraph::algo::toposort(&sg, None)
            .expect("cycles are rejected at load")
            .into_iter()
            .map(|n| sg[n])
            .collect();

        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        let mut per_stage: Vec<Vec<NodeIndex>> = vec![Vec::new(); p.stages.len()];
        for &si in &stage_order {
            let s = &p.stages[si];
            let my_items: Vec<Option<Item>> = match origin[si] {
                Some(d) => items[d].iter().cloned().map(Some).collect(),
                None => vec![None],
            };
            for item in my_items {
                let mut inputs = Vec::new();
                for need in &s.needs {
                    let ui = stage_idx[need.as_str()];
                    let paired = origin[ui].is_some() && origin[ui] == origin[si];
                    if paired {
                        let id = item.as_ref().map(|i| i.id.clone());
                        inputs.push(index[&(need.clone(), id)]);
                    } else {
                        inputs.extend(per_stage[ui].iter().copied());
                    }
                }
                let key = (s.name.clone(), item.as_ref().map(|i| i.id.clone()));
                let node = graph.add_node(TaskNode {
                    stage: si,
                    item,
                    inputs: inputs.clone(),
                });
                for i in inputs {
                    graph.add_edge(i, node, ());
                }
                index.insert(key, node);
                per_stage[si].push(node);
            }
        }
        let order = stage_order
            .iter()
            .flat_map(|&si| per_stage[si].iter().copied())
            .collect();
        Ok(Self {
            graph,
            order,
            stage_names: p.stages.iter().map(|s| s.name.clone()).collect(),
            index,
        })
    }

    /// The task of `stage` (and `item`, for fan-out stages).
    pub fn find(&self, stage: &str, item: Option<&str>) -> Option<NodeIndex> {
        self.index
            .get(&(stage.to_string(), item.map(str::to_string)))
            .copied()
    }

    /// Every task of a stage, in item order.
    pub fn tasks_of(&self, stage: &str) -> Vec<NodeIndex> {
        self.order
            .iter()
            .copied()
            .filter(|n| self.stage_name(*n) == stage)
            .collect()
    }

    /// The stage name of a task.
    pub fn stage_name(&self, n: NodeIndex) -> &str {
        &self.stage_names[self.graph[n].stage]
    }

    /// The item id of a task, if it fans out.
    pub fn item_id(&self, n: NodeIndex) -> Option<&str> {
        self.graph[n].item.as_ref().map(|i| i.id.as_str())
    }

    /// `stage` or `stage[item]`, for messages.
    pub fn label(&self, n: NodeIndex) -> String {
        match self.item_id(n) {
            Some(i) => format!("{}[{i}]", self.stage_name(n)),
            None => self.stage_name(n).to_string(),
        }
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no tasks.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The tasks `targets` depend on, transitively, and the targets themselves.
    pub fn ancestors(&self, targets: &[NodeIndex]) -> Vec<bool> {
        let mut keep = vec![false; self.graph.node_count()];
        let mut stack: Vec<NodeIndex> = targets.to_vec();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut keep[n.index()], true) {
                continue;
            }
            stack.extend(self.graph[n].inputs.iter().copied());
        }
        keep
    }

    /// Graphviz DOT of the task graph (one node per task).
    pub fn to_dot(&self, name: &str) -> String {
        let mut s = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
            name
        );
        for &n in &self.order {
            s.push_str(&format!(
                "  n{} [label=\"{}\"];\n",
                n.index(),
                self.label(n)
            ));
        }
        for e in self.graph.raw_edges() {
            s.push_str(&format!(
                "  n{} -> n{};\n",
                e.source().index(),
                e.target().index()
            ));
        }
        s.push_str("}\n");
        s
    }
}
