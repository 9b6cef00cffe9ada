//! The `exec` stage kind: run a shell command, like DVC's `cmd` or a Snakemake `shell`.
//!
//! `with: {run: "...", shell: bash, env: {K: V}}`. Placeholders in `run`: `{out}` (the output
//! directory), `{work}` (a work directory that survives a killed run), `{item}` (the item id),
//! `{item.ATTR}` (an item attribute, such as `{item.path}`), `{in.STAGE}` (the artifact directory
//! of an upstream stage; several, space-separated, when it is a fan-out gathered here, and a path
//! written right after it applies to each: `{in.s}/v.txt` → `A/v.txt B/v.txt`); `{{` and
//! `}}` are literal braces; `{inlist.STAGE}` is a file listing those directories one a line, for
//! fan-ins too large for a command line. The command runs in the pipeline file's directory.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;

use crate::invocation::shell_quote;
use crate::params::ParamError;
use crate::spec::StageDecl;
use crate::stage::{Stage, StageError, TaskContext};

/// The `exec` stage kind.
pub struct ExecStage;

/// The `with:` of an `exec` stage.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// The command. Placeholders: `{out}` (write results there), `{work}` (survives a killed
    /// task), `{item}`, `{item.ATTR}`, `{in.STAGE}` (an upstream artifact folder; all of them
    /// for a gathered fan-out), `{inlist.STAGE}` (a file listing them); `{{`/`}}` are braces.
    pub run: String,
    /// The shell that runs the command as `SHELL -c COMMAND`, in the pipeline file's folder.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Environment variables for the command: names to strings, numbers or booleans.
    #[serde(default)]
    pub env: BTreeMap<String, serde_json::Value>,
}

fn default_shell() -> String {
    "bash".into()
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Out,
    Work,
    Item,
    ItemAttr(String),
    In(String),
    InList(String),
}

/// Splits a `run` template into text and placeholders. `{name}` is a placeholder when `name` is
/// a single word (letters, digits, `_`, `.`, `-`); braces around anything else, such as awk's
/// `{ print $1 }` or a shell group `{ a; b; }`, are left as they are.
fn parse(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("{{") {
            text.push('{');
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("}}") {
            text.push('}');
            rest = r;
            continue;
        }
        if c == '{'
            && let Some(end) = rest.find('}')
        {
            let name = &rest[1..end];
            let word = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if word {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(match name {
                    "out" => Piece::Out,
                    "work" => Piece::Work,
                    "item" => Piece::Item,
                    n if n.starts_with("item.") => Piece::ItemAttr(n[5..].to_string()),
                    n if n.starts_with("inlist.") => Piece::InList(n[7..].to_string()),
                    n if n.starts_with("in.") => Piece::In(n[3..].to_string()),
                    n => {
                        return Err(format!(
                            "unknown placeholder `{{{n}}}` in `run` (use {{out}}, {{work}}, {{item}}, {{item.ATTR}}, {{in.STAGE}}, {{inlist.STAGE}}; write {{{{ for a literal brace)"
                        ));
                    }
                });
                rest = &rest[end + 1..];
                continue;
            }
        }
        text.push(c);
        rest = &rest[c.len_utf8()..];
    }
    pieces.push(Piece::Text(text));
    Ok(pieces)
}

/// Length of the path written right after `{in.STAGE}` (`/row.csv` in `{in.s}/row.csv;`): it
/// ends at the first character that cannot be part of a plain path.
fn path_suffix_len(t: &str) -> usize {
    t.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '*' | '?')))
        .unwrap_or(t.len())
}

impl Stage for ExecStage {
    type Params = ExecParams;

    fn kind(&self) -> &'static str {
        "exec"
    }

    fn version(&self) -> u32 {
        // 2: keyed on the typed parameters (shell and env defaults filled in).
        2
    }

    fn about(&self) -> &'static str {
        "Runs a shell command, like DVC's `cmd` or a Snakemake `shell`; what it writes into \
         `{out}` is the artifact."
    }

    fn check(&self, params: &ExecParams, decl: &StageDecl) -> Result<(), ParamError> {
        if params.shell.is_empty() {
            return Err(ParamError::field("shell", "must name a shell, e.g. `bash`"));
        }
        for (name, v) in &params.env {
            if !(v.is_string() || v.is_number() || v.is_boolean()) {
                return Err(ParamError::field(
                    "env",
                    format!("`{name}` must be a string, number or boolean, not {v}"),
                ));
            }
        }
        for p in parse(&params.run).map_err(|m| ParamError::field("run", m))? {
            match p {
                Piece::In(s) | Piece::InList(s) if !decl.needs.contains(&s) => {
                    return Err(ParamError::field(
                        "run",
                        format!(
                            "`{{in.{s}}}`/`{{inlist.{s}}}` refers to `{s}`, which this stage does not need (add it to `needs`)"
                        ),
                    ));
                }
                Piece::Item | Piece::ItemAttr(_) if decl.foreach.is_none() => {
                    return Err(ParamError::field(
                        "run",
                        "`{item}` is only defined for stages with `foreach`",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn run(&self, params: &ExecParams, ctx: &TaskContext) -> Result<(), StageError> {
        let mut cmd = String::new();
        let pieces = parse(&params.run)?;
        let mut carry: Option<String> = None;
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Text(t) => match carry.take() {
                    // A path suffix right after `{in.STAGE}` was already applied to every dir.
                    Some(_) => cmd.push_str(&t[path_suffix_len(t)..]),
                    None => cmd.push_str(t),
                },
                // Every value put into the command is one shell word, whatever it holds.
                Piece::Out => cmd.push_str(&shell_quote(&ctx.out_dir.to_string_lossy())),
                Piece::Work => cmd.push_str(&shell_quote(&ctx.work_dir.to_string_lossy())),
                Piece::Item => cmd.push_str(&shell_quote(ctx.item.map_or("", |i| i.id.as_str()))),
                Piece::ItemAttr(a) => {
                    let item = ctx.item.ok_or("no item")?;
                    let v = item
                        .attrs
                        .get(a)
                        .ok_or_else(|| format!("item `{}` has no attribute `{a}`", item.id))?;
                    cmd.push_str(&shell_quote(v));
                }
                Piece::In(s) => {
                    // `{in.s}/file.txt` over a gathered fan-out means every item's file.
                    let suffix = match pieces.get(i + 1) {
                        Some(Piece::Text(t)) => &t[..path_suffix_len(t)],
                        _ => "",
                    };
                    let dirs: Vec<String> = ctx
                        .inputs_of(s)
                        .map(|i| shell_quote(&format!("{}{suffix}", i.dir.to_string_lossy())))
                        .collect();
                    cmd.push_str(&dirs.join(" "));
                    carry = Some(suffix.to_string());
                }
                Piece::InList(s) => {
                    // For fan-ins too large for a command line: a file, one directory a line.
                    let list = ctx.work_dir.join(format!("inputs.{s}.txt"));
                    let dirs: Vec<String> = ctx
                        .inputs_of(s)
                        .map(|i| i.dir.to_string_lossy().into_owned())
                        .collect();
                    std::fs::write(&list, dirs.join("\n") + "\n")
                        .map_err(|e| format!("{}: {e}", list.display()))?;
                    cmd.push_str(&shell_quote(&list.to_string_lossy()));
                }
            }
        }
        let shell = &params.shell;
        ctx.log.line(format!("$ {cmd}"));
        let mut command = Command::new(shell);
        command
            .arg("-c")
            .arg(&cmd)
            .current_dir(ctx.pipeline_dir)
            .env("COVFLOW_OUT", ctx.out_dir)
            .env("COVFLOW_STAGE", ctx.stage)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(item) = ctx.item {
            command.env("COVFLOW_ITEM", &item.id);
        }
        for (k, v) in &params.env {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            command.env(k, v);
        }
        // Its own process group, so cancelling kills the whole command, not just the shell.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::E2BIG) {
                    "; the command line is too long: pass a large fan-in with {inlist.STAGE} (a file listing the directories) instead of {in.STAGE}"
                } else {
                    ""
                };
                format!("cannot start `{shell}`: {e}{hint}")
            })?;
        let pump = |r: Option<Box<dyn Read + Send>>| {
            let log = ctx.log.clone();
            std::thread::spawn(move || {
                if let Some(mut r) = r {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        log.append(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            })
        };
        let out = pump(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let err = pump(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if ctx.cancel.is_cancelled() {
                // SAFETY: killpg on the child's own process group, which we created above.
                unsafe {
                    libc::killpg(child.id() as i32, libc::SIGTERM);
                }
                std::thread::sleep(Duration::from_millis(200));
                unsafe {
                    libc::killpg(child.id() as i32, libc::SIGKILL);
                }
                let _ = child.wait();
                return Err("cancelled".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = out.join();
        let _ = err.join();
        if status.success() {
            Ok(())
        } else {
            Err(format!("command exited with {status}").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &str) -> Vec<String> {
        parse(t)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => format!("T:{t}"),
                Piece::Out => "out".into(),
                Piece::Work => "work".into(),
                Piece::Item => "item".into(),
                Piece::ItemAttr(a) => format!("item.{a}"),
                Piece::In(s) => format!("in.{s}"),
                Piece::InList(s) => format!("inlist.{s}"),
            })
            .filter(|s| s != "T:")
            .collect()
    }

    #[test]
    fn placeholders_and_literal_braces() {
        assert_eq!(
            names("awk '{ print $1 }' {in.a}/x > {out}/y"),
            ["T:awk '{ print $1 }' ", "in.a", "T:/x > ", "out", "T:/y"]
        );
        assert_eq!(names("echo {{item}}"), ["T:echo {item}"]);
        assert!(
            parse("echo {otu}")
                .unwrap_err()
                .contains("unknown placeholder `{otu}`")
        );
    }
}
