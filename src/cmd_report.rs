//! `covflow report`: one self-contained HTML page of a pipeline's cached results (metric tables,
//! every figure, and beside each its provenance), and `covflow metrics diff`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::{Args, Subcommand};
use covflow_engine::{NodeIndex, TaskState, Upstream, Workflow};
use covflow_imaging::metrics::MeanStd;
use covflow_stages::evaluate::{Group, Summary};
use covflow_stages::plot::{FIGURES, FigureRecord};
use serde_json::Value;

use crate::{Failure, PipelineArgs, workflow};

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Where to write the page [default: NAME.report.html beside the pipeline file].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum MetricsCommand {
    /// Compare the summary metrics of this pipeline's evaluate stages with another parameter set
    /// (`--against-set`) or another cache (`--against-cache`), both from the cache: nothing runs.
    Diff(DiffArgs),
    /// Print the summary metrics of this pipeline's evaluate stages.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// An override for the other side (`params.NAME=VALUE`, repeatable), on top of `--set`.
    #[arg(long = "against-set", value_name = "KEY=VALUE")]
    pub against_set: Vec<String>,
    /// The other side's cache directory.
    #[arg(long = "against-cache", value_name = "DIR")]
    pub against_cache: Option<PathBuf>,
}

/// One cached task of the pipeline and its manifest's provenance.
struct Done {
    stage: String,
    up: Upstream,
    provenance: Value,
}

/// Every task of `wf` that the cache holds whole, in plan order; errors name what is missing
/// among `required` stages.
fn cached(wf: &Workflow, required: &[String]) -> Result<Vec<Done>, Failure> {
    let plan = wf.plan(&BTreeSet::new())?;
    let mut done: HashMap<NodeIndex, Upstream> = wf.cached_inputs(&plan)?;
    let mut missing = Vec::new();
    let mut out = Vec::new();
    for p in &plan {
        let stage = wf.graph.stage_name(p.node).to_string();
        match done.remove(&p.node) {
            Some(up) => {
                let manifest = wf
                    .store
                    .get(&up.key)
                    .map_err(|e| Failure::Failed(e.to_string()))?
                    .ok_or_else(|| {
                        Failure::Failed(format!(
                            "{}: vanished from the cache",
                            wf.graph.label(p.node)
                        ))
                    })?
                    .manifest;
                out.push(Done {
                    stage,
                    up,
                    provenance: manifest.provenance,
                });
            }
            None if required.contains(&stage) => missing.push(match &p.state {
                TaskState::Run(why) => format!("{} ({why})", wf.graph.label(p.node)),
                TaskState::Cached => wf.graph.label(p.node),
            }),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(Failure::Failed(format!(
            "not in the cache: {}\n  help: run the pipeline first (`covflow run {}`)",
            missing.join(", "),
            wf.pipeline.path.display()
        )));
    }
    Ok(out)
}

/// The stages of `wf` of kind `kind`.
fn stages_of(wf: &Workflow, kind: &str) -> Vec<String> {
    wf.pipeline
        .stages
        .iter()
        .filter(|s| s.uses == kind)
        .map(|s| s.name.clone())
        .collect()
}

/// The default report path of a pipeline file.
pub fn default_output(pipeline: &Path) -> PathBuf {
    let stem = pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    pipeline
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{stem}.report.html"))
}

/// After a successful run: when the pipeline has evaluate or plot stages and the cache holds
/// them, the report at its default path, and where it is (on stderr, so `--json` output stays
/// one document).
pub fn after_run(wf: &Workflow, pipeline: &Path, quiet: bool) -> Result<(), Failure> {
    let stages: Vec<String> = stages_of(wf, "evaluate")
        .into_iter()
        .chain(stages_of(wf, "plot"))
        .collect();
    if stages.is_empty() || cached(wf, &stages).is_err() {
        return Ok(());
    }
    let out = default_output(pipeline);
    write_report(wf, &out)?;
    if !quiet {
        eprintln!("covflow: report written to {}", out.display());
    }
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<(), Failure> {
    let wf = workflow::load(&a.pipeline)?;
    let out = a.output.unwrap_or_else(|| default_output(&a.pipeline.file));
    write_report(&wf, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// Writes the report of `wf` to `out` (atomically: a reader never sees half a page).
pub fn write_report(wf: &Workflow, out: &Path) -> Result<(), Failure> {
    let evaluations = stages_of(wf, "evaluate");
    let plots = stages_of(wf, "plot");
    if evaluations.is_empty() && plots.is_empty() {
        return Err(Failure::Invalid(format!(
            "{} has no evaluate or plot stage: nothing to report\n  help: see pipelines/demo.yaml for the stages a report reads",
            wf.pipeline.path.display()
        )));
    }
    let required: Vec<String> = evaluations.iter().chain(&plots).cloned().collect();
    let done = cached(wf, &required)?;
    let html = render(wf, &done, &evaluations, &plots)?;
    let tmp = out.with_extension("html.partial");
    std::fs::write(&tmp, html)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| Failure::Failed(format!("{}: {e}", out.display())))?;
    Ok(())
}

/// HTML-escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pm(m: &MeanStd) -> String {
    if m.n == 0 {
        "–".into()
    } else {
        format!("{:.3} ± {:.3}", m.mean, m.std)
    }
}

/// A provenance block: what made an artifact.
fn provenance(d: &Done) -> String {
    let p = &d.provenance;
    let field = |k: &str| {
        p.get(k)
            .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
            .unwrap_or_default()
    };
    let mut items: Vec<String> = p
        .get("inputs")
        .and_then(Value::as_array)
        .map(|inputs| {
            inputs
                .iter()
                .filter_map(|i| i.get("item").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    items.sort();
    items.dedup();
    let inputs: Vec<String> = p
        .get("inputs")
        .and_then(Value::as_array)
        .map(|inputs| {
            let mut seen = BTreeMap::<String, usize>::new();
            for i in inputs {
                *seen
                    .entry(
                        i.get("stage")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                    )
                    .or_default() += 1;
            }
            seen.into_iter()
                .map(|(s, n)| if n > 1 { format!("{s} ({n} items)") } else { s })
                .collect()
        })
        .unwrap_or_default();
    let params = p
        .get("params")
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
        .unwrap_or_default();
    format!(
        "<details class=\"prov\"><summary>provenance of <code>{}</code></summary><dl>\
         <dt>stage</dt><dd><code>{}</code> ({} v{})</dd>\
         <dt>cache key</dt><dd><code>{}</code></dd>\
         <dt>content digest</dt><dd><code>{}</code></dd>\
         <dt>inputs</dt><dd>{}</dd>\
         <dt>items</dt><dd>{}</dd>\
         <dt>covflow</dt><dd>{}</dd><dt>device</dt><dd>{}</dd>\
         <dt>ran</dt><dd>{:.1} s, finished {}</dd>\
         <dt>parameters</dt><dd><pre>{}</pre></dd></dl></details>",
        esc(&d.stage),
        esc(&d.stage),
        esc(&field("kind")),
        esc(&field("version")),
        d.up.key.to_hex(),
        esc(&d.up.digest),
        esc(&inputs.join(", ")),
        esc(&if items.is_empty() {
            "–".into()
        } else {
            items.join(", ")
        }),
        esc(&field("covflow_version")),
        esc(&field("device")),
        p.get("duration_s")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN),
        esc(&unix_date(
            p.get("finished_unix").and_then(Value::as_u64).unwrap_or(0)
        )),
        esc(&params),
    )
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (civil-from-days, Howard Hinnant's algorithm).
fn unix_date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let (h, m) = ((t % 86_400) / 3600, (t % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

fn group_table(title: &str, rows: &[(String, &Group)]) -> String {
    let mut h = format!(
        "<table><caption>{}</caption><thead><tr><th>method</th><th>group</th><th>slices</th><th>Dice</th><th>sensitivity</th><th>specificity</th></tr></thead><tbody>",
        esc(title)
    );
    for (method, g) in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(method),
            esc(&g.label),
            g.dice.n,
            pm(&g.dice),
            pm(&g.sensitivity),
            pm(&g.specificity)
        );
    }
    h + "</tbody></table>"
}

fn render(
    wf: &Workflow,
    done: &[Done],
    evaluations: &[String],
    plots: &[String],
) -> Result<String, Failure> {
    let one = |stage: &str| done.iter().find(|d| d.stage == stage);
    let mut body = String::new();
    for stage in evaluations {
        let Some(d) = one(stage) else { continue };
        let summary = Summary::read(&d.up.dir).map_err(|e| Failure::Failed(e.to_string()))?;
        let _ = write!(
            body,
            "<section><h2>Evaluation <code>{}</code></h2><p>Held-out items: {}. Per slice, prediction = score &gt; {} × the slice's maximum; Dice, sensitivity and specificity over slices whose lesion covers more than 1 % of the slice (mean ± std); volume Dice is the 3-D Dice of each item.</p>",
            esc(stage),
            esc(&summary.items.join(", ")),
            summary.threshold
        );
        body += "<table><caption>Summary</caption><thead><tr><th>method</th><th>stage</th><th>slices</th><th>Dice</th><th>sensitivity</th><th>specificity</th><th>volume Dice</th></tr></thead><tbody>";
        for m in &summary.methods {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.method),
                esc(&m.stage),
                m.slices.dice.n,
                pm(&m.slices.dice),
                pm(&m.slices.sensitivity),
                pm(&m.slices.specificity),
                pm(&m.volume_dice)
            );
        }
        body += "</tbody></table>";
        let rows: Vec<(String, &Group)> = summary
            .methods
            .iter()
            .flat_map(|m| {
                m.by_infection
                    .iter()
                    .filter(|g| g.dice.n > 0)
                    .map(|g| (m.method.clone(), g))
            })
            .collect();
        body += &group_table("By infection % of the lung in the slice", &rows);
        let rows: Vec<(String, &Group)> = summary
            .methods
            .iter()
            .flat_map(|m| m.by_category.iter().map(|g| (m.method.clone(), g)))
            .collect();
        body += &group_table("By CT category", &rows);
        body += &provenance(d);
        for m in &summary.methods {
            if let Some(src) = one(&m.stage) {
                body += &provenance(src);
            }
        }
        body += "</section>";
    }
    for stage in plots {
        let Some(d) = one(stage) else { continue };
        let path = d.up.dir.join(FIGURES);
        let figures: Vec<FigureRecord> = serde_json::from_slice(
            &std::fs::read(&path)
                .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?,
        )
        .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
        let _ = write!(
            body,
            "<section><h2>Figures <code>{}</code></h2>",
            esc(stage)
        );
        for f in &figures {
            let png = d.up.dir.join(&f.png);
            let bytes = std::fs::read(&png)
                .map_err(|e| Failure::Failed(format!("{}: {e}", png.display())))?;
            let _ = write!(
                body,
                "<figure id=\"{}\"><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption><strong>{}.</strong> {}",
                esc(&f.name),
                esc(&f.title),
                base64::engine::general_purpose::STANDARD.encode(&bytes),
                esc(&f.title),
                esc(&f.caption)
            );
            let sources: Vec<String> = f
                .sources
                .iter()
                .map(|s| format!("<code>{}</code>", esc(s)))
                .collect();
            let _ = write!(body, " Drawn from {}.</figcaption>", sources.join(", "));
            body += &provenance(d);
            for s in &f.sources {
                if let Some(src) = one(s) {
                    body += &provenance(src);
                }
            }
            body += "</figure>";
        }
        body += "</section>";
    }
    // Run times per stage, from every cached task's manifest.
    let mut times: Vec<(String, String, usize, f64, String)> = Vec::new();
    for d in done {
        let kind = d
            .provenance
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let s = d
            .provenance
            .get("duration_s")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let device = d
            .provenance
            .get("device")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match times.iter_mut().find(|t| t.0 == d.stage) {
            Some(t) => {
                t.2 += 1;
                t.3 += s;
            }
            None => times.push((d.stage.clone(), kind, 1, s, device)),
        }
    }
    body += "<section><h2>Run times</h2><table><caption>Per stage: tasks and their summed run time as recorded in the manifests</caption><thead><tr><th>stage</th><th>kind</th><th>tasks</th><th>seconds</th><th>device</th></tr></thead><tbody>";
    for (stage, kind, n, s, device) in &times {
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td>{n}</td><td>{s:.1}</td><td>{}</td></tr>",
            esc(stage),
            esc(kind),
            esc(device)
        );
    }
    let total: f64 = times.iter().map(|t| t.3).sum();
    let _ = write!(
        body,
        "<tr><th colspan=\"3\">all</th><th>{total:.1}</th><th></th></tr></tbody></table></section>"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>covflow report: {name}</title>\
         <style>{STYLE}</style></head><body><header><h1>covflow report: {name}</h1>\
         <p>Pipeline <code>{file}</code>, cache <code>{cache}</code>, covflow {version}; written {now}. \
         Every number and figure below comes from the cached artifacts named beside it.</p></header>{body}</body></html>\n",
        name = esc(&wf.pipeline.name),
        file = esc(&wf.pipeline.path.display().to_string()),
        cache = esc(&wf.store.root().display().to_string()),
        version = env!("CARGO_PKG_VERSION"),
        now = unix_date(now),
    ))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1600px;margin:0 auto;padding:1em 2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}caption{text-align:left;font-weight:bold;padding:.3em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}\
thead{background:#f0f0f0}figure{margin:2em 0}img{max-width:100%;border:1px solid #ddd}\
figcaption{margin:.5em 0}details.prov{font-size:.85em;margin:.3em 0;color:#444}\
details.prov dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}\
details.prov dd{margin:0}pre{margin:0;font-size:.9em}code{font-size:.95em}";

/// The summary metrics of every evaluate stage as flat `stage.method.metric` → value.
fn flat_metrics(wf: &Workflow) -> Result<BTreeMap<String, f64>, Failure> {
    let evaluations = stages_of(wf, "evaluate");
    if evaluations.is_empty() {
        return Err(Failure::Invalid(format!(
            "{} has no evaluate stage: no metrics",
            wf.pipeline.path.display()
        )));
    }
    let done = cached(wf, &evaluations)?;
    let mut out = BTreeMap::new();
    for d in done.iter().filter(|d| evaluations.contains(&d.stage)) {
        let summary = Summary::read(&d.up.dir).map_err(|e| Failure::Failed(e.to_string()))?;
        for m in &summary.methods {
            let key = |what: &str| format!("{}.{}.{what}", d.stage, m.stage);
            out.insert(key("dice"), m.slices.dice.mean);
            out.insert(key("sensitivity"), m.slices.sensitivity.mean);
            out.insert(key("specificity"), m.slices.specificity.mean);
            out.insert(key("volume_dice"), m.volume_dice.mean);
            out.insert(key("slices"), m.slices.dice.n as f64);
        }
    }
    Ok(out)
}

fn cell(v: Option<&f64>) -> String {
    match v {
        Some(v) if v.is_nan() => "n/a".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e9 => format!("{v}"),
        Some(v) => format!("{v:.4}"),
        None => "–".into(),
    }
}

pub fn metrics(c: MetricsCommand) -> Result<(), Failure> {
    match c {
        MetricsCommand::Show(a) => {
            let wf = workflow::load(&a.pipeline)?;
            let m = flat_metrics(&wf)?;
            let width = m.keys().map(String::len).max().unwrap_or(6);
            println!("{:width$}  value", "metric");
            for (k, v) in &m {
                println!("{k:width$}  {}", cell(Some(v)));
            }
            Ok(())
        }
        MetricsCommand::Diff(a) => {
            if a.against_set.is_empty() && a.against_cache.is_none() {
                return Err(Failure::Invalid(
                    "nothing to compare against\n  help: pass --against-set params.NAME=VALUE or --against-cache DIR".into(),
                ));
            }
            let wf = workflow::load(&a.pipeline)?;
            let mut other = a.pipeline.clone();
            other.set.extend(a.against_set.iter().cloned());
            if let Some(c) = &a.against_cache {
                other.cache = Some(c.clone());
            }
            let theirs = flat_metrics(&workflow::load(&other)?)?;
            let ours = flat_metrics(&wf)?;
            let mut keys: Vec<&String> = ours.keys().chain(theirs.keys()).collect();
            keys.sort();
            keys.dedup();
            let width = keys.iter().map(|k| k.len()).max().unwrap_or(6);
            println!(
                "{:width$}  {:>10}  {:>10}  {:>10}",
                "metric", "current", "other", "change"
            );
            for k in keys {
                let (a, b) = (ours.get(k), theirs.get(k));
                let change = match (a, b) {
                    (Some(a), Some(b)) if !a.is_nan() && !b.is_nan() => format!("{:+.4}", a - b),
                    _ => "–".into(),
                };
                println!("{k:width$}  {:>10}  {:>10}  {change:>10}", cell(a), cell(b));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_unix_times_across_leap_days_and_centuries() {
        for (t, want) in [
            (0, "1970-01-01 00:00 UTC"),
            (951_782_400, "2000-02-29 00:00 UTC"),
            (1_795_000_000, "2026-11-18 11:06 UTC"),
            (4_107_542_400, "2100-03-01 00:00 UTC"),
        ] {
            assert_eq!(unix_date(t), want);
        }
    }

    #[test]
    fn html_is_escaped_and_the_default_page_sits_beside_the_pipeline() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(
            default_output(Path::new("pipelines/demo.yaml")),
            Path::new("pipelines/demo.report.html")
        );
    }
}
