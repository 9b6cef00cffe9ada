//! Typed stage parameters: one struct per stage kind is the definition of its `with:` mapping —
//! what it accepts, its defaults, its documentation and what enters the cache key.
//!
//! The engine keeps stage kinds behind [`DynStage`], implemented for every [`Stage`]: it
//! deserializes `with:` into the kind's `Params` (an error names the field, and the spec turns it
//! into file:line:col), runs the kind's own range checks, and serializes the value back with its
//! defaults filled in. That normalized JSON is what the cache key and the manifests hold, so
//! writing a default out or leaving it out is the same task.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value as Json;

use crate::spec::StageDecl;
use crate::stage::{DatasetSource, Item, Stage, StageError, TaskContext};

/// A rejected stage declaration: where in the stage (`["with", "closing_mm"]`, `["needs"]`) and
/// why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// Key path inside the stage's declaration.
    pub path: Vec<String>,
    /// What is wrong, with the value or range expected.
    pub message: String,
}

impl ParamError {
    /// A parameter (a key of `with:`) that is wrong.
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        Self {
            path: vec!["with".into(), name.into()],
            message: format!("parameter `{name}`: {}", message.into()),
        }
    }

    /// Another key of the stage (`needs`, `foreach`) that does not fit the kind.
    pub fn decl(key: &str, message: impl Into<String>) -> Self {
        Self {
            path: vec![key.into()],
            message: message.into(),
        }
    }

    /// A deserialization failure, placed at the field it names.
    fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let inner = e.inner().to_string();
        let field = e.path().iter().find_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        });
        match field {
            Some(name) => {
                let path = e.path().to_string();
                let mut err = Self::field(&name, inner);
                err.message = err
                    .message
                    .replacen(&format!("`{name}`"), &format!("`{path}`"), 1);
                err
            }
            // A missing field has no path of its own: point at `with:`.
            None => Self {
                path: vec!["with".into()],
                message: inner,
            },
        }
    }
}

/// One parameter as `covflow stage kinds` and the README show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParamDoc {
    /// The key in `with:`.
    pub name: String,
    /// Its type, in words (`number`, `[integer ≥ 0; 3] or null`, `small | mosmed`).
    pub ty: String,
    /// The default as YAML-ish JSON, or `required`.
    pub default: String,
    /// The field's doc comment.
    pub doc: String,
}

/// The parameters of `P`, in declaration order, from its JSON Schema.
pub fn param_docs<P: JsonSchema>() -> Vec<ParamDoc> {
    let schema = schemars::generate::SchemaSettings::default()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<P>();
    let schema = schema.as_value();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| ParamDoc {
            name: name.clone(),
            ty: type_words(p),
            default: if required.contains(&name.as_str()) {
                "required".into()
            } else {
                p.get("default")
                    .map(|d| d.to_string().replace(',', ", "))
                    .unwrap_or_else(|| "null".into())
            },
            doc: p["description"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect()
}

/// A schema's type in words.
fn type_words(s: &Json) -> String {
    if let Some(alts) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Json::as_array)
    {
        let words: Vec<String> = alts
            .iter()
            .map(|a| match a.get("const") {
                Some(Json::String(c)) => c.clone(),
                _ => type_words(a),
            })
            .collect();
        return words.join(" | ");
    }
    if let Some(e) = s.get("enum").and_then(Json::as_array) {
        return e
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    let types: Vec<&str> = match &s["type"] {
        Json::String(t) => vec![t.as_str()],
        Json::Array(ts) => ts.iter().filter_map(Json::as_str).collect(),
        _ => vec![],
    };
    let nullable = types.contains(&"null");
    let base = types
        .iter()
        .find(|t| **t != "null")
        .copied()
        .unwrap_or("any");
    let mut words = match base {
        "array" => {
            let item = type_words(&s["items"]);
            match (s["minItems"].as_u64(), s["maxItems"].as_u64()) {
                (Some(a), Some(b)) if a == b => format!("[{item}; {a}]"),
                _ => format!("list of {item}"),
            }
        }
        "object" => match s.get("additionalProperties") {
            Some(Json::Object(v)) => {
                format!("map of name → {}", type_words(&Json::Object(v.clone())))
            }
            _ => "map".into(),
        },
        "integer" if s["minimum"].as_f64() == Some(0.0) => "integer ≥ 0".into(),
        other => other.to_string(),
    };
    if nullable {
        words.push_str(" or null");
    }
    words
}

/// A stage kind as the engine stores it: [`Stage`] with its `Params` type erased. Implemented for
/// every [`Stage`]; not meant to be implemented by hand.
pub trait DynStage: Send + Sync {
    /// The name used in `uses:`.
    fn kind(&self) -> &'static str;
    /// The implementation version (part of every cache key).
    fn version(&self) -> u32;
    /// What the kind does, in a paragraph.
    fn about(&self) -> &'static str;
    /// Whether results depend on the device.
    fn device_dependent(&self) -> bool;
    /// Its parameters, documented.
    fn params(&self) -> Vec<ParamDoc>;
    /// Checks a declaration and returns its parameters with every default filled in (what the
    /// cache key holds).
    fn load(&self, decl: &StageDecl) -> Result<Json, ParamError>;
    /// Runs one task with parameters returned by [`DynStage::load`].
    fn run(&self, params: &Json, ctx: &TaskContext) -> Result<(), StageError>;

    /// One line listing the accepted parameters, shown under every parameter error.
    fn params_help(&self) -> String {
        let params = self.params();
        if params.is_empty() {
            return format!("{} takes no parameters", self.kind());
        }
        let list: Vec<String> = params
            .iter()
            .map(|p| format!("{} ({}, {})", p.name, p.ty, default_words(&p.default)))
            .collect();
        format!(
            "{} accepts: {}; `covflow stage kinds {}` explains each",
            self.kind(),
            list.join(", "),
            self.kind()
        )
    }
}

fn default_words(d: &str) -> String {
    if d == "required" {
        d.into()
    } else {
        format!("default {d}")
    }
}

impl<S: Stage> DynStage for S {
    fn kind(&self) -> &'static str {
        Stage::kind(self)
    }

    fn version(&self) -> u32 {
        Stage::version(self)
    }

    fn about(&self) -> &'static str {
        Stage::about(self)
    }

    fn device_dependent(&self) -> bool {
        Stage::device_dependent(self)
    }

    fn params(&self) -> Vec<ParamDoc> {
        param_docs::<S::Params>()
    }

    fn load(&self, decl: &StageDecl) -> Result<Json, ParamError> {
        let params: S::Params = serde_path_to_error::deserialize(Json::Object(decl.with.clone()))
            .map_err(ParamError::from_serde)?;
        Stage::check(self, &params, decl)?;
        Ok(serde_json::to_value(&params).expect("parameters serialize"))
    }

    fn run(&self, params: &Json, ctx: &TaskContext) -> Result<(), StageError> {
        let params: S::Params = serde_json::from_value(params.clone())
            .map_err(|e| format!("parameters of {}: {e}", ctx.stage))?;
        Stage::run(self, &params, ctx)
    }
}

/// The markdown table of a kind's parameters (the README's tables are this output).
pub fn params_markdown(stage: &dyn DynStage) -> String {
    let params = stage.params();
    if params.is_empty() {
        return "No parameters.\n".into();
    }
    let mut out = String::from("| parameter | type | default | meaning |\n|---|---|---|---|\n");
    for p in params {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            p.name,
            p.ty.replace('|', "\\|"),
            if p.default == "required" {
                "required".to_string()
            } else {
                format!("`{}`", p.default)
            },
            p.doc.replace('|', "\\|")
        ));
    }
    out
}

/// A dataset source as the engine stores it: [`DatasetSource`] with its `Spec` type erased.
/// Implemented for every [`DatasetSource`].
pub trait DynDataset: Send + Sync {
    /// The key that selects the source.
    fn kind(&self) -> &'static str;
    /// Checks a declaration (the whole mapping under the dataset's name). The error's path is
    /// inside that mapping (`["count"]`, `["phantom", "size"]`).
    fn check(&self, spec: &Json) -> Result<(), ParamError>;
    /// The items of a declaration that [`DynDataset::check`] accepted.
    fn items(&self, spec: &Json, pipeline_dir: &std::path::Path) -> Result<Vec<Item>, String>;
}

fn dataset_spec<D: DatasetSource>(spec: &Json) -> Result<D::Spec, ParamError> {
    serde_path_to_error::deserialize(spec.clone()).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let message = match path.is_empty() {
            true => e.inner().to_string(),
            false => format!("`{}`: {}", e.path(), e.inner()),
        };
        ParamError { path, message }
    })
}

impl<D: DatasetSource> DynDataset for D {
    fn kind(&self) -> &'static str {
        DatasetSource::kind(self)
    }

    fn check(&self, spec: &Json) -> Result<(), ParamError> {
        let typed = dataset_spec::<D>(spec)?;
        DatasetSource::check(self, &typed).map_err(|message| ParamError {
            path: vec![DatasetSource::kind(self).to_string()],
            message,
        })
    }

    fn items(&self, spec: &Json, pipeline_dir: &std::path::Path) -> Result<Vec<Item>, String> {
        let typed = dataset_spec::<D>(spec).map_err(|e| e.message)?;
        DatasetSource::items(self, &typed, pipeline_dir)
    }
}
