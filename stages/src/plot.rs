//! The `plot` stage kind: the figures of a run as PNG and SVG, with `figures.json` saying what
//! each shows and which stages it was drawn from (`covflow report` embeds them with that
//! provenance).
//!
//! ```yaml
//! figures:
//!   uses: plot
//!   needs: [evaluation, gan, seg, prediction, pseudo, naive, crops]
//! ```
//!
//! Each `needs` stage is recognised by what it wrote: an evaluate stage (summary.json, exactly
//! one), trainings (history.csv: loss and learning-rate curves), scoring stages (scores.json:
//! columns of the overlay figure) and the crops (the CT and expert mask under the overlays).
//! Colours are the Okabe–Ito palette, which stays distinct under the common colour-vision
//! deficiencies.

use std::path::Path;
use std::sync::Once;

use covflow_engine::{Input, ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::Volume;
use plotters::coord::Shift;
use plotters::element::BitMapElement;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::evaluate::{SLICES, SliceRecord, Summary};
use crate::masks::{Crop, ScoreSet, quantile, read_crop, read_upstream, to_zyx, write};

/// The `plot` stage kind.
pub struct PlotStage;

/// One slice of the overlay figure.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverlaySlice {
    /// The item.
    pub item: String,
    /// z index on the crop's grid.
    pub slice: usize,
}

/// The `with:` of a `plot` stage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlotParams {
    /// Slices of the overlay figure; when empty, each evaluated item's slice with the most
    /// lesion, for up to `overlay_count` items.
    #[serde(default)]
    pub overlays: Vec<OverlaySlice>,
    /// Items in the automatic overlay figure.
    #[serde(default = "overlay_count")]
    pub overlay_count: usize,
}

fn overlay_count() -> usize {
    4
}

/// A figure as `figures.json` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FigureRecord {
    /// File stem.
    pub name: String,
    /// Title.
    pub title: String,
    /// What it shows and how to read it.
    pub caption: String,
    /// The PNG, relative to the artifact.
    pub png: String,
    /// The SVG, relative to the artifact.
    pub svg: String,
    /// The stages it was drawn from.
    pub sources: Vec<String>,
}

/// The file name of the figure list.
pub const FIGURES: &str = "figures.json";

/// Okabe–Ito: blue, orange, bluish green, reddish purple, sky blue, vermillion, yellow.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
];
/// Overlay colours: found lesion, false alarm, missed lesion, expert mask.
const FOUND: RGBColor = PALETTE[0];
const FALSE_ALARM: RGBColor = PALETTE[1];
const MISSED: RGBColor = PALETTE[3];
const EXPERT: RGBColor = PALETTE[2];

const FONT: &str = "sans-serif";

/// The bundled font, registered once per process (plotters keeps a global font table).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../fonts/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            panic!("the bundled DejaVu Sans is not a valid font");
        }
    });
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The series legend of `chart` at `position`, on a translucent white box.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(err)
}

/// A figure drawn the same way onto the PNG and the SVG backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Writes `name.png` and `name.svg` of `figure` into `out`.
fn save(out: &Path, name: &str, figure: &impl Figure) -> Result<(), StageError> {
    register_font();
    let png = out.join(format!("{name}.png"));
    {
        let root = BitMapBackend::new(&png, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        figure.draw(&root)?;
        root.present()
            .map_err(|e| format!("{}: {e}", png.display()))?;
    }
    let svg = out.join(format!("{name}.svg"));
    let root = SVGBackend::new(&svg, figure.size()).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    figure.draw(&root)?;
    root.present()
        .map_err(|e| format!("{}: {e}", svg.display()))?;
    Ok(())
}

/// A training's `history.csv`: the first column on x, every numeric column a series: the
/// learning rate (`lr`) and accuracies (`accuracy_*`, in [0, 1]) in a panel of their own.
struct Curves {
    stage: String,
    x_name: String,
    x: Vec<f64>,
    losses: Vec<(String, Vec<Option<f64>>)>,
    lr: Option<Vec<Option<f64>>>,
    accuracies: Vec<(String, Vec<Option<f64>>)>,
}

impl Curves {
    fn read(input: &Input) -> Result<Self, StageError> {
        let path = input.dir.join("history.csv");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        let column = |k: usize| -> Vec<Option<f64>> {
            rows.iter()
                .map(|r| {
                    r.get(k)
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|v| v.is_finite())
                })
                .collect()
        };
        let x = column(0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.unwrap_or(i as f64 + 1.0))
            .collect();
        let mut curves = Curves {
            stage: input.stage.clone(),
            x_name: header.first().copied().unwrap_or("step").to_string(),
            x,
            losses: Vec::new(),
            lr: None,
            accuracies: Vec::new(),
        };
        for (k, name) in header.iter().enumerate().skip(1) {
            let values = column(k);
            // Text columns (a phase name) and the schedule's change markers are not curves.
            if values.iter().all(Option::is_none) || *name == "lr_changed_to" {
                continue;
            }
            if *name == "lr" {
                curves.lr = Some(values);
            } else if let Some(what) = name.strip_prefix("accuracy_") {
                curves.accuracies.push((what.to_string(), values));
            } else {
                curves.losses.push((name.to_string(), values));
            }
        }
        Ok(curves)
    }
}

/// Log-scale bounds of the positive values, padded a little.
fn log_bounds<'a>(values: impl Iterator<Item = &'a Option<f64>>) -> (f64, f64) {
    let (lo, hi) = values
        .flatten()
        .filter(|v| **v > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (1e-3, 1.0)
    }
}

impl Figure for Curves {
    fn size(&self) -> (u32, u32) {
        (1200, 450)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let x_max = self.x.iter().copied().fold(1.0, f64::max);
        let (left, right) = if self.lr.is_some() || !self.accuracies.is_empty() {
            root.split_horizontally(800)
        } else {
            (root.clone(), root.margin(0, 0, 0, 0).shrink((0, 0), (0, 0)))
        };
        let (lo, hi) = log_bounds(self.losses.iter().flat_map(|(_, v)| v.iter()));
        let mut chart = ChartBuilder::on(&left)
            .caption(format!("{}: losses", self.stage), (FONT, 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_name)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("loss (log scale)")
            .label_style((FONT, 14))
            .draw()
            .map_err(err)?;
        for (k, (name, values)) in self.losses.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let points: Vec<(f64, f64)> = self
                .x
                .iter()
                .zip(values)
                .filter_map(|(x, v)| v.filter(|v| *v > 0.0).map(|v| (*x, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
        if let Some(lr) = &self.lr {
            let (lo, hi) = log_bounds(lr.iter());
            let mut chart = ChartBuilder::on(&right)
                .caption("learning rate", (FONT, 22))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_name)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .label_style((FONT, 14))
                .draw()
                .map_err(err)?;
            let points: Vec<(f64, f64)> = self
                .x
                .iter()
                .zip(lr)
                .filter_map(|(x, v)| v.map(|v| (*x, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, BLACK.stroke_width(2)))
                .map_err(err)?;
        } else if !self.accuracies.is_empty() {
            self.draw_accuracies(&right, x_max)?;
        }
        Ok(())
    }
}

/// `(x, mean of the last `window` values)` wherever a value is present.
fn running_mean(x: &[f64], values: &[Option<f64>], window: usize) -> Vec<(f64, f64)> {
    let present: Vec<(f64, f64)> = x
        .iter()
        .zip(values)
        .filter_map(|(x, v)| v.map(|v| (*x, v)))
        .collect();
    (0..present.len())
        .map(|i| {
            let span = &present[i + 1 - window.min(i + 1)..=i];
            let mean = span.iter().map(|(_, v)| v).sum::<f64>() / span.len() as f64;
            (present[i].0, mean)
        })
        .collect()
}

impl Curves {
    /// The accuracy columns on a linear [0, 1] axis, each the mean over a window of a fiftieth
    /// of the run (a batch's accuracy takes a few values only), chance (0.5) dashed.
    fn draw_accuracies<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        x_max: f64,
    ) -> Result<(), String> {
        let mut chart = ChartBuilder::on(area)
            .caption("discriminator accuracy", (FONT, 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, 0f64..1.05)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_name)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.5), (x_max, 0.5)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
        for (k, (name, values)) in self.accuracies.iter().enumerate() {
            let colour = PALETTE[(k + self.losses.len()) % PALETTE.len()];
            let points = running_mean(&self.x, values, (self.x.len() / 50).max(1));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

/// The three slice metrics, by name.
const METRICS: [&str; 3] = ["Dice", "sensitivity", "specificity"];

fn metric(s: &SliceRecord, k: usize) -> f64 {
    [s.dice, s.sensitivity, s.specificity][k]
}

/// The evaluation's slice metrics, three panels (Dice, sensitivity, specificity), one colour per
/// method.
struct SliceMetrics<'a> {
    summary: &'a Summary,
    slices: &'a [SliceRecord],
    by: By,
}

/// What the slice-metric panels are drawn against.
#[derive(Clone, Copy)]
enum By {
    /// Every scored slice against its infection %, with the binned means.
    Infection,
    /// Box plots by CT category.
    Category,
}

impl Figure for SliceMetrics<'_> {
    fn size(&self) -> (u32, u32) {
        (1500, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        match self.by {
            By::Infection => self.against_infection(root),
            By::Category => self.by_category(root),
        }
    }
}

impl SliceMetrics<'_> {
    fn against_infection<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), String> {
        let x_max = self
            .slices
            .iter()
            .filter(|s| s.scored)
            .map(|s| s.infection_percent)
            .fold(10.0, f64::max)
            .min(100.0)
            * 1.05;
        let bins = &self.summary.infection_bins;
        for (k, panel) in root.split_evenly((1, 3)).iter().enumerate() {
            let mut chart = ChartBuilder::on(panel)
                .caption(METRICS[k], (FONT, 22))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..x_max, 0f64..1.02)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("infection % of the lung in the slice")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .label_style((FONT, 14))
                .draw()
                .map_err(err)?;
            for (m, method) in self.summary.methods.iter().enumerate() {
                let colour = PALETTE[m % PALETTE.len()];
                let mine: Vec<&SliceRecord> = self
                    .slices
                    .iter()
                    .filter(|s| s.scored && s.stage == method.stage)
                    .collect();
                chart
                    .draw_series(mine.iter().map(|s| {
                        Circle::new(
                            (s.infection_percent, metric(s, k)),
                            3,
                            colour.mix(0.35).filled(),
                        )
                    }))
                    .map_err(err)?;
                let means: Vec<(f64, f64)> = bins
                    .windows(2)
                    .filter_map(|w| {
                        let bin: Vec<&&SliceRecord> = mine
                            .iter()
                            .filter(|s| s.infection_percent > w[0] && s.infection_percent <= w[1])
                            .collect();
                        // At the bin's mean infection, not its centre: a wide last bin would
                        // put the point where no slice is.
                        let n = bin.len() as f64;
                        (!bin.is_empty()).then(|| {
                            (
                                bin.iter().map(|s| s.infection_percent).sum::<f64>() / n,
                                bin.iter().map(|s| metric(s, k)).sum::<f64>() / n,
                            )
                        })
                    })
                    .collect();
                let series = chart
                    .draw_series(LineSeries::new(means.clone(), colour.stroke_width(3)))
                    .map_err(err)?;
                if k == 0 {
                    series.label(method.method.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                    });
                }
                chart
                    .draw_series(means.iter().map(|p| Circle::new(*p, 5, colour.filled())))
                    .map_err(err)?;
            }
            if k == 0 {
                legend(&mut chart, SeriesLabelPosition::LowerRight)?;
            }
        }
        Ok(())
    }
}

impl SliceMetrics<'_> {
    fn by_category<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let mut categories: Vec<String> = self
            .slices
            .iter()
            .filter(|s| s.scored)
            .map(|s| s.category.clone().unwrap_or_else(|| "none".into()))
            .collect();
        categories.sort();
        categories.dedup();
        let n_methods = self.summary.methods.len();
        let slot = 1.0 / (n_methods + 1) as f64;
        for (k, panel) in root.split_evenly((1, 3)).iter().enumerate() {
            let mut chart = ChartBuilder::on(panel)
                .caption(METRICS[k], (FONT, 22))
                .margin(10)
                .x_label_area_size(10)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..categories.len().max(1) as f64, -0.1f64..1.02)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .label_style((FONT, 14))
                .draw()
                .map_err(err)?;
            for (c, category) in categories.iter().enumerate() {
                chart
                    .draw_series(std::iter::once(Text::new(
                        category.clone(),
                        (c as f64 + 0.42, -0.04),
                        (FONT, 15),
                    )))
                    .map_err(err)?;
                for (m, method) in self.summary.methods.iter().enumerate() {
                    let mut v: Vec<f64> = self
                        .slices
                        .iter()
                        .filter(|s| {
                            s.scored
                                && s.stage == method.stage
                                && s.category.as_deref().unwrap_or("none") == category
                        })
                        .map(|s| metric(s, k))
                        .collect();
                    if v.is_empty() {
                        continue;
                    }
                    v.sort_by(f64::total_cmp);
                    let colour = PALETTE[m % PALETTE.len()];
                    let centre = c as f64 + slot * (m as f64 + 1.0);
                    let half = slot * 0.35;
                    let [q0, q1, q2, q3, q4] = [0.0, 0.25, 0.5, 0.75, 1.0].map(|q| quantile(&v, q));
                    let style = colour.stroke_width(2);
                    chart
                        .draw_series([
                            Rectangle::new(
                                [(centre - half, q1), (centre + half, q3)],
                                colour.mix(0.3).filled(),
                            ),
                            Rectangle::new([(centre - half, q1), (centre + half, q3)], style),
                        ])
                        .map_err(err)?;
                    chart
                        .draw_series([
                            PathElement::new(
                                vec![(centre - half, q2), (centre + half, q2)],
                                BLACK.stroke_width(2),
                            ),
                            PathElement::new(vec![(centre, q3), (centre, q4)], style),
                            PathElement::new(vec![(centre, q0), (centre, q1)], style),
                        ])
                        .map_err(err)?;
                    if k == 0 && c == 0 {
                        // The legend entry, once per method.
                        chart
                            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                            .map_err(err)?
                            .label(method.method.as_str())
                            .legend(move |(x, y)| {
                                Rectangle::new(
                                    [(x, y - 6), (x + 14, y + 6)],
                                    colour.mix(0.6).filled(),
                                )
                            });
                    }
                }
            }
            if k == 0 {
                legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
            }
        }
        Ok(())
    }
}

/// One row of the overlay figure: a slice's CT, the expert mask, and each method's prediction.
struct OverlayRow {
    title: String,
    /// `[h, w]`.
    size: [usize; 2],
    ct: Vec<f32>,
    lesion: Vec<bool>,
    /// Per method: its name and its prediction on the slice.
    predictions: Vec<(String, Vec<bool>)>,
}

struct Overlays {
    rows: Vec<OverlayRow>,
    scale: usize,
}

impl Overlays {
    fn columns(&self) -> usize {
        2 + self.rows.first().map_or(0, |r| r.predictions.len())
    }

    /// The RGB pixels of one panel, scaled up `scale` times (nearest neighbour).
    fn panel(&self, row: &OverlayRow, column: usize) -> Vec<u8> {
        let [h, w] = row.size;
        let (lo, hi) = row
            .ct
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let s = self.scale;
        let mut rgb = vec![0u8; h * s * w * s * 3];
        for y in 0..h * s {
            for x in 0..w * s {
                let i = (y / s) * w + x / s;
                let grey = ((row.ct[i] - lo) / span * 255.0) as f64;
                let tint = match column {
                    0 => None,
                    1 => row.lesion[i].then_some(EXPERT),
                    c => match (row.predictions[c - 2].1[i], row.lesion[i]) {
                        (true, true) => Some(FOUND),
                        (true, false) => Some(FALSE_ALARM),
                        (false, true) => Some(MISSED),
                        (false, false) => None,
                    },
                };
                let px = match tint {
                    None => [grey; 3],
                    Some(RGBColor(r, g, b)) => [r, g, b].map(|c| 0.35 * grey + 0.65 * c as f64),
                };
                let o = (y * w * s + x) * 3;
                for (k, v) in px.iter().enumerate() {
                    rgb[o + k] = v.clamp(0.0, 255.0) as u8;
                }
            }
        }
        rgb
    }
}

impl Figure for Overlays {
    fn size(&self) -> (u32, u32) {
        let [h, w] = self.rows.first().map_or([64, 64], |r| r.size);
        let cell = (w * self.scale + 20, h * self.scale + 60);
        (
            (cell.0 * self.columns()) as u32,
            (cell.1 * self.rows.len() + 40) as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (body, legend) = root.split_vertically(self.size().1 - 40);
        let rows = body.split_evenly((self.rows.len(), self.columns()));
        for (r, row) in self.rows.iter().enumerate() {
            let [h, w] = row.size;
            for c in 0..self.columns() {
                let cell = &rows[r * self.columns() + c];
                let name = match c {
                    0 => row.title.clone(),
                    1 => "expert mask".into(),
                    c => row.predictions[c - 2].0.clone(),
                };
                let cell = cell.titled(&name, (FONT, 15)).map_err(err)?;
                let image = BitMapElement::with_owned_buffer(
                    (10, 5),
                    ((w * self.scale) as u32, (h * self.scale) as u32),
                    self.panel(row, c),
                )
                .ok_or("an overlay panel's buffer does not match its size")?;
                cell.draw(&image).map_err(err)?;
            }
        }
        let mut x = 10;
        for (text, colour) in [
            ("found lesion", FOUND),
            ("false alarm", FALSE_ALARM),
            ("missed lesion", MISSED),
            ("expert mask", EXPERT),
        ] {
            legend
                .draw(&Rectangle::new([(x, 12), (x + 16, 28)], colour.filled()))
                .map_err(err)?;
            legend
                .draw(&Text::new(text, (x + 22, 12), (FONT, 15)))
                .map_err(err)?;
            x += 170;
        }
        Ok(())
    }
}

/// What each `needs` input is.
enum Source<'a> {
    Evaluation(&'a Input),
    Training(&'a Input),
    Scores(&'a Input, ScoreSet),
    Crop(&'a Input),
}

fn classify(input: &Input) -> Result<Source<'_>, StageError> {
    if input.item.is_some() {
        return Ok(Source::Crop(input));
    }
    if input.dir.join(crate::evaluate::SUMMARY).exists() {
        return Ok(Source::Evaluation(input));
    }
    if input.dir.join("history.csv").exists() {
        return Ok(Source::Training(input));
    }
    if input.dir.join(crate::masks::SCORES).exists() {
        return Ok(Source::Scores(input, ScoreSet::read(&input.dir)?));
    }
    Err(format!("`{}` wrote nothing plot draws\n  help: `needs` takes an evaluate stage, trainings (gan_train, transunet_train), scoring stages (predict, pseudo_mask, naive_mask) and the crops", input.stage).into())
}

impl Stage for PlotStage {
    type Params = PlotParams;

    fn kind(&self) -> &'static str {
        "plot"
    }

    fn version(&self) -> u32 {
        // 2: one legend style in every figure. 3: accuracy columns of a history in a panel of
        // their own.
        3
    }

    fn about(&self) -> &'static str {
        "Draws a run's figures as PNG and SVG, and figures.json (title, caption, sources of \
         each): loss and learning-rate curves of every training in `needs` (its history.csv); \
         Dice, sensitivity and specificity against infection % (slices and binned means) and \
         box plots by CT category, for every method of the evaluate stage in `needs`; overlay \
         panels (CT, expert mask, each scoring stage's prediction at the evaluation's \
         threshold: found, false alarm, missed) for `overlays`, or each evaluated item's slice \
         with the most lesion. Okabe–Ito colours."
    }

    fn check(&self, p: &PlotParams, decl: &StageDecl) -> Result<(), ParamError> {
        crate::check_range("overlay_count", p.overlay_count, 0..=16, "")?;
        if decl.needs.is_empty() {
            return Err(ParamError::decl(
                "needs",
                "plot draws an evaluate stage's results (and trainings, scores, crops)",
            ));
        }
        Ok(())
    }

    fn run(&self, p: &PlotParams, ctx: &TaskContext) -> Result<(), StageError> {
        let sources: Vec<Source> = ctx.inputs.iter().map(classify).collect::<Result<_, _>>()?;
        let evaluations: Vec<&Input> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Evaluation(i) => Some(*i),
                _ => None,
            })
            .collect();
        let [evaluation] = evaluations[..] else {
            return Err(format!("plot needs exactly one evaluate stage, got {}\n  help: list one evaluate stage in `needs`", evaluations.len()).into());
        };
        let summary = Summary::read(&evaluation.dir)?;
        let slices: Vec<SliceRecord> = read_upstream(&evaluation.dir.join(SLICES), "evaluate")?;
        let mut figures = Vec::new();
        let methods = summary
            .methods
            .iter()
            .map(|m| m.stage.clone())
            .collect::<Vec<_>>();
        let mut record = |name: &str, title: &str, caption: String, sources: Vec<String>| {
            figures.push(FigureRecord {
                name: name.into(),
                title: title.into(),
                caption,
                png: format!("{name}.png"),
                svg: format!("{name}.svg"),
                sources,
            });
        };
        for s in &sources {
            if let Source::Training(input) = s {
                let curves = Curves::read(input)?;
                let name = format!("training_{}", input.stage);
                save(ctx.out_dir, &name, &curves)?;
                record(
                    &name,
                    &format!("Training of `{}`", input.stage),
                    format!(
                        "Every loss in {}'s history.csv per {} (log scale){}.",
                        input.stage,
                        curves.x_name,
                        if curves.lr.is_some() {
                            ", and the learning rate the schedule set"
                        } else if !curves.accuracies.is_empty() {
                            "; right: the discriminator's accuracy on real and generated volumes \
                             (running mean over a fiftieth of the run; 0.5 is chance)"
                        } else {
                            ""
                        }
                    ),
                    vec![input.stage.clone()],
                );
            }
        }
        let mut evaluated = vec![evaluation.stage.clone()];
        save(
            ctx.out_dir,
            "metrics_vs_infection",
            &SliceMetrics {
                summary: &summary,
                slices: &slices,
                by: By::Infection,
            },
        )?;
        evaluated.extend(methods.iter().cloned());
        record(
            "metrics_vs_infection",
            "Slice metrics against infection %",
            format!(
                "Each point is one held-out slice whose lesion covers more than 1 % of it; lines join the means per infection-% bin (edges {:?}). Prediction = score > {} × the slice's maximum.",
                summary.infection_bins, summary.threshold
            ),
            evaluated.clone(),
        );
        save(
            ctx.out_dir,
            "metrics_by_category",
            &SliceMetrics {
                summary: &summary,
                slices: &slices,
                by: By::Category,
            },
        )?;
        record(
            "metrics_by_category",
            "Slice metrics by CT category",
            "Boxes span the quartiles of the scored slices, the black line is the median, whiskers reach the minimum and maximum.".into(),
            evaluated,
        );
        let crops: Vec<&Input> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Crop(i) => Some(*i),
                _ => None,
            })
            .collect();
        let scorers: Vec<(&Input, &ScoreSet)> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Scores(i, set) => Some((*i, set)),
                _ => None,
            })
            .collect();
        if !crops.is_empty() && !scorers.is_empty() {
            let overlays = overlays(p, &summary, &crops, &scorers)?;
            if !overlays.rows.is_empty() {
                save(ctx.out_dir, "overlays", &overlays)?;
                let mut sources: Vec<String> =
                    scorers.iter().map(|(i, _)| i.stage.clone()).collect();
                sources.push(crops[0].stage.clone());
                record(
                    "overlays",
                    "Overlays on held-out slices",
                    format!(
                        "Each row is one slice: the CT, the expert mask, and each method's prediction at {} × the slice's maximum, coloured by agreement with the expert mask.",
                        summary.threshold
                    ),
                    sources,
                );
            }
        }
        write(
            &ctx.out_dir.join(FIGURES),
            &serde_json::to_vec_pretty(&figures)?,
        )?;
        ctx.log.line(format!("{} figures", figures.len()));
        Ok(())
    }
}

/// The overlay rows of the chosen slices.
fn overlays(
    p: &PlotParams,
    summary: &Summary,
    crops: &[&Input],
    scorers: &[(&Input, &ScoreSet)],
) -> Result<Overlays, StageError> {
    let crop_of = |id: &str| -> Result<Crop, StageError> {
        let input = crops
            .iter()
            .find(|i| i.item.as_deref() == Some(id))
            .ok_or_else(|| format!("overlay item {id}: not among the crops\n  help: use ids of the crops in `needs`"))?;
        read_crop(input, "plot")
    };
    let mut chosen: Vec<(Crop, usize)> = Vec::new();
    if p.overlays.is_empty() {
        for id in summary.items.iter().take(p.overlay_count) {
            let crop = crop_of(id)?;
            let Some(lesion) = &crop.lesion else { continue };
            let plane = crop.shape[1] * crop.shape[2];
            let best = (0..crop.shape[0])
                .max_by_key(|&z| {
                    lesion[z * plane..(z + 1) * plane]
                        .iter()
                        .filter(|v| **v > 0.5)
                        .count()
                })
                .unwrap_or(0);
            chosen.push((crop, best));
        }
    } else {
        for o in &p.overlays {
            let crop = crop_of(&o.item)?;
            if o.slice >= crop.shape[0] {
                return Err(format!("overlay {}: slice {} is beyond its {} slices\n  help: slices count from 0 along the crop's third axis", o.item, o.slice, crop.shape[0]).into());
            }
            chosen.push((crop, o.slice));
        }
    }
    let mut rows = Vec::new();
    for (crop, z) in chosen {
        let [_, h, w] = crop.shape;
        let plane = h * w;
        let range = z * plane..(z + 1) * plane;
        let lesion = crop
            .lesion
            .as_ref()
            .ok_or_else(|| format!("{}: no lesion mask to overlay", crop.id))?;
        let mut predictions = Vec::new();
        for (input, set) in scorers {
            let path = input.dir.join("items").join(&crop.id).join(&set.file);
            if !path.exists() {
                continue;
            }
            let score = to_zyx(&Volume::read(&path)?.data);
            let slice = score
                .get(range.clone())
                .ok_or_else(|| format!("{}: its grid differs from the crop's", path.display()))?;
            // The evaluation's rule, so the picture shows what was counted.
            let lung = &crop.lung[range.clone()];
            let counted = |k: usize| !summary.within_lung || lung[k] > 0.5;
            let max = (0..slice.len())
                .filter(|&k| counted(k))
                .map(|k| slice[k])
                .fold(f32::NEG_INFINITY, f32::max);
            let cut = summary.threshold as f32 * max;
            predictions.push((
                set.method.clone(),
                (0..slice.len())
                    .map(|k| counted(k) && slice[k] > cut)
                    .collect(),
            ));
        }
        rows.push(OverlayRow {
            title: format!("{} slice {z}", crop.id),
            size: [h, w],
            ct: crop.ct[range.clone()].to_vec(),
            lesion: lesion[range].iter().map(|v| *v > 0.5).collect(),
            predictions,
        });
    }
    // Every row has the same columns, or the grid would not line up.
    let n = rows.first().map_or(0, |r| r.predictions.len());
    if rows.iter().any(|r| r.predictions.len() != n) {
        return Err("not every scoring stage scored every overlay item\n  help: choose `overlays` items every method scored".into());
    }
    let side = rows.first().map_or(64, |r| r.size[0].max(r.size[1]));
    Ok(Overlays {
        rows,
        scale: (192 / side).max(1),
    })
}
