//! The run's report: the summary as text, and a self-contained HTML page (inline SVG figures, no
//! external file or script) with the main figure also written as PNG. Every number and every
//! point comes from the [`Summary`] read back from the stores; the scenario only adds the marks
//! of what it did (the outage, the `config set`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::scenario::{Mark, Outcome};
use crate::stores::Summary;

/// The main figure's size, pixels.
const SIZE: (u32, u32) = (1200, 1000);

fn minutes(at_ms: u64, start_ms: u64) -> f64 {
    (at_ms as f64 - start_ms as f64) / 60_000.0
}

fn whole(v: &f64) -> String {
    format!("{v:.0}")
}

/// The audit transitions of every rollout worth a mark: pauses, rollbacks, completions.
fn rollout_marks(outcome: &Outcome) -> Vec<Mark> {
    let mut marks = Vec::new();
    for run in &outcome.rollouts {
        for t in &run.report.audit {
            let what = match (&t.command, t.to_status) {
                (_, shoal_core::rollout::state::RolloutStatus::Paused) => "paused",
                (_, shoal_core::rollout::state::RolloutStatus::RolledBack) => "rolled back",
                (_, shoal_core::rollout::state::RolloutStatus::Completed) => "completed",
                _ => continue,
            };
            marks.push(Mark {
                at_ms: t.at_ms,
                what: format!("{} {what}", run.report.rollout.version),
            });
        }
    }
    marks
}

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A panel's chart: its caption, axes ranges and axis descriptions, the mesh drawn.
fn chart<'a, 'b>(
    area: &'a Panel<'b>,
    caption: impl AsRef<str>,
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
    (x_desc, y_desc): (&str, &str),
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption.as_ref(), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&whole)
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the figure: {e:?}")
}

/// Readings stored per minute, one line per device model, with the run's marks.
fn readings_panel(area: &Panel<'_>, outcome: &Outcome, summary: &Summary) -> Result<()> {
    let start = outcome.started_ms;
    let end = minutes(outcome.ended_ms, start).max(1.0);
    let from = summary
        .per_minute
        .values()
        .filter_map(|m| m.keys().next())
        .map(|first| minutes(*first, start))
        .fold(0.0, f64::min);
    let top = summary
        .per_minute
        .values()
        .flat_map(|m| m.values())
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let mut chart = chart(
        area,
        "Readings stored in Timestream per minute (15 s windows), by device model",
        (from..end, 0f64..top),
        ("minutes since the run started", "readings / minute"),
    )?;
    let shown = ["network outage", "network back", "config set"];
    for (k, mark) in outcome
        .marks
        .iter()
        .filter(|m| shown.contains(&m.what.as_str()))
        .enumerate()
    {
        let x = minutes(mark.at_ms, start);
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, top)],
                ShapeStyle::from(&RGBColor(160, 160, 160)).stroke_width(1),
            ))
            .map_err(draw_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                mark.what.clone(),
                (x, top * (0.97 - 0.08 * k as f64)),
                ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
            )))
            .map_err(draw_err)?;
    }
    for (i, (model, counts)) in summary.per_minute.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // Each rate at the middle of its window; the last window is partial (why the end dips).
        let half = crate::stores::RATE_WINDOW_MS as f64 / 120_000.0;
        let points: Vec<(f64, f64)> = counts
            .iter()
            .map(|(window, n)| (minutes(*window, start) + half, *n as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.clone(),
                ShapeStyle::from(&color).stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(model.clone())
            .legend(move |(x, y)| {
                PathElement::new(
                    [(x, y), (x + 18, y)],
                    ShapeStyle::from(&color).stroke_width(2),
                )
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Devices of the configured building reporting the new configuration, over the seconds since
/// `config set`.
fn convergence_panel(area: &Panel<'_>, outcome: &Outcome, summary: &Summary) -> Result<()> {
    let set_at_s = outcome
        .marks
        .iter()
        .find(|m| m.what == "config set")
        .map_or(outcome.started_ms / 1000, |m| m.at_ms / 1000);
    let mut times: Vec<f64> = summary
        .converged
        .iter()
        .map(|(_, at)| at.saturating_sub(set_at_s) as f64)
        .collect();
    times.sort_by(f64::total_cmp);
    let end = times.last().copied().unwrap_or(1.0).max(1.0) * 1.1 + 1.0;
    let total = summary.building_members.max(1) as f64;
    let mut chart = chart(
        area,
        format!(
            "Shadow convergence of {} after `shoal config set` ({}/{} devices report it)",
            outcome.configured_group,
            summary.converged.len(),
            summary.building_members
        ),
        (0f64..end, 0f64..total * 1.1),
        (
            "seconds after the desired state was written (shadow metadata timestamps)",
            "devices reporting it",
        ),
    )?;
    let mut steps = vec![(0.0, 0.0)];
    for (i, t) in times.iter().enumerate() {
        steps.push((*t, i as f64));
        steps.push((*t, (i + 1) as f64));
    }
    steps.push((end, times.len() as f64));
    chart
        .draw_series(AreaSeries::new(steps, 0.0, BLUE.mix(0.2)).border_style(BLUE))
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, total), (end, total)],
            ShapeStyle::from(&RGBColor(160, 160, 160)).stroke_width(1),
        ))
        .map_err(draw_err)?;
    Ok(())
}

/// Devices each rollout targeted over time, with the pause, rollback and completion marks.
fn rollout_panel(area: &Panel<'_>, outcome: &Outcome, summary: &Summary) -> Result<()> {
    let start = outcome.started_ms;
    let first = outcome
        .rollouts
        .iter()
        .map(|r| r.report.rollout.created_ms)
        .min()
        .unwrap_or(start);
    let from = minutes(first, start).floor();
    let end = minutes(outcome.ended_ms, start).max(from + 0.5);
    let top = summary
        .targeted_at
        .values()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.2;
    let mut chart = chart(
        area,
        "Rollouts: devices targeted (canary 10%, then 50%, then 100%), pauses and rollbacks",
        (from..end, 0f64..top),
        ("minutes since the run started", "devices targeted"),
    )?;
    for (i, run) in outcome.rollouts.iter().enumerate() {
        let color = Palette99::pick(i + 3).to_rgba();
        let times = summary
            .targeted_at
            .get(&run.id)
            .cloned()
            .unwrap_or_default();
        let mut points = vec![(minutes(run.report.rollout.created_ms, start), 0.0)];
        for (n, at) in times.iter().enumerate() {
            points.push((minutes(*at, start), n as f64));
            points.push((minutes(*at, start), (n + 1) as f64));
        }
        let last = run
            .report
            .audit
            .iter()
            .map(|t| t.at_ms)
            .max()
            .unwrap_or(outcome.ended_ms)
            .max(times.last().copied().unwrap_or(0));
        points.push((minutes(last, start), times.len() as f64));
        let r = &run.report;
        let label = format!(
            "{} {} {}: {} ok, {} failed, {} rolled back",
            r.rollout.model,
            r.rollout.hardware,
            r.rollout.version,
            r.counts.succeeded,
            r.counts.failed,
            r.counts.rolled_back
        );
        chart
            .draw_series(LineSeries::new(
                points,
                ShapeStyle::from(&color).stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(
                    [(x, y), (x + 18, y)],
                    ShapeStyle::from(&color).stroke_width(2),
                )
            });
    }
    for (k, mark) in rollout_marks(outcome).iter().enumerate() {
        let x = minutes(mark.at_ms, start);
        let red = mark.what.contains("paused") || mark.what.contains("rolled back");
        let color = if red { RED } else { RGBColor(0, 130, 0) };
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, top)],
                ShapeStyle::from(&color).stroke_width(1),
            ))
            .map_err(draw_err)?;
        if red {
            chart
                .draw_series(std::iter::once(Text::new(
                    mark.what.clone(),
                    (x, top * (0.9 - 0.07 * (k % 3) as f64)),
                    ("sans-serif", 13).into_font().color(&color),
                )))
                .map_err(draw_err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// The main figure (readings, convergence, rollouts) as SVG.
///
/// # Errors
/// plotters could not lay the figure out.
pub fn main_figure(outcome: &Outcome, summary: &Summary) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let panels = root.split_evenly((3, 1));
        readings_panel(&panels[0], outcome, summary)?;
        convergence_panel(&panels[1], outcome, summary)?;
        rollout_panel(&panels[2], outcome, summary)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// `svg` rasterised to PNG, text set in the font epaint ships (so no system font is needed).
///
/// # Errors
/// The SVG does not parse, or the PNG cannot be encoded.
pub fn png(svg: &str) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut fonts = usvg::fontdb::Database::new();
    fonts.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
    let family = fonts
        .faces()
        .next()
        .and_then(|f| f.families.first().map(|(name, _)| name.clone()))
        .context("the bundled font did not load")?;
    fonts.set_sans_serif_family(family.clone());
    fonts.set_serif_family(family.clone());
    fonts.set_monospace_family(family);
    let options = usvg::Options {
        fontdb: std::sync::Arc::new(fonts),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).context("the figure's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .context("a pixmap of the figure's size")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding the PNG")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn iso(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The summary as the demo prints it at the end.
pub fn summary_text(outcome: &Outcome, summary: &Summary) -> String {
    let mut out = String::new();
    let r = &summary.registry;
    let _ = writeln!(
        out,
        "Summary of run {} ({:.0} s), read back from the stores",
        outcome.layout.tag,
        (outcome.ended_ms - outcome.started_ms) as f64 / 1000.0
    );
    let policies: Vec<String> = r
        .policies
        .iter()
        .map(|(p, n)| format!("{p} ×{n}"))
        .collect();
    let _ = writeln!(
        out,
        "  registry     {} things of {} manifest devices · {} with their manifest attributes · {} with an ACTIVE certificate · policies {}",
        r.things.len(),
        summary.devices,
        summary.attributes_match,
        summary.active,
        policies.join(", ")
    );
    let _ = writeln!(
        out,
        "  rogue        {} serials refused · {} things made for them",
        outcome.fleet.refused.len(),
        r.rogue_things.len()
    );
    let reasons: Vec<String> = summary
        .quarantine
        .reasons
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "  telemetry    {} readings in Timestream + {} quarantined ({}) = {} · devices had {} acknowledged ({} in flight at stop) · {} in the Parquet archive{}",
        summary.timestream,
        summary.quarantine.readings,
        if reasons.is_empty() {
            "none".to_owned()
        } else {
            reasons.join(", ")
        },
        summary.timestream + summary.quarantine.readings,
        summary.acknowledged,
        summary.unacknowledged,
        summary.archived,
        if summary.balanced() {
            " · balanced"
        } else {
            " · NOT BALANCED"
        }
    );
    let slowest = summary
        .converged
        .iter()
        .map(|(_, at)| *at)
        .max()
        .zip(outcome.marks.iter().find(|m| m.what == "config set"))
        .map(|(at, set)| at.saturating_sub(set.at_ms / 1000));
    let _ = writeln!(
        out,
        "  shadows      {}/{} devices of {} report the configuration{}",
        summary.converged.len(),
        summary.building_members,
        outcome.configured_group,
        slowest.map_or_else(String::new, |s| format!(" (the last within {s} s)"))
    );
    for run in &outcome.rollouts {
        // A paused rollout's phases as they were judged; what its rollback did after.
        let r = run.at_pause.as_ref().unwrap_or(&run.report);
        let phases: Vec<String> = r
            .by_phase
            .iter()
            .map(|(i, c)| {
                let name = r
                    .rollout
                    .plan
                    .phases
                    .get(*i)
                    .map_or_else(|| format!("phase {i}"), |p| p.name.clone());
                format!(
                    "{name}: {} targeted, {} ok, {} failed, {} rolled back",
                    c.targeted, c.succeeded, c.failed, c.rolled_back
                )
            })
            .collect();
        let end = &run.report.rollout;
        let rollback = if run.at_pause.is_some() {
            let b = &run.report.rollback;
            format!(
                " · rollback: {} restored, {} awaiting, {} never started",
                b.restored, b.awaiting, b.cancelled
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  rollout      {} {} {} -> {:?}{} · {}{rollback}",
            end.model,
            end.hardware,
            end.version,
            end.status,
            r.rollout
                .reason
                .as_ref()
                .map_or_else(String::new, |why| format!(" ({why})")),
            phases.join(" · ")
        );
    }
    let running: Vec<String> = summary
        .running
        .iter()
        .map(|(v, n)| format!("{v} on {n}"))
        .collect();
    let _ = writeln!(out, "  firmware     {}", running.join(", "));
    let _ = writeln!(
        out,
        "  alerts       {} received on {}/#{}",
        outcome.alerts.len(),
        crate::scenario::names::ALERTS_TOPIC,
        outcome
            .alerts
            .first()
            .map_or_else(String::new, |(topic, _)| format!(" (first on {topic})"))
    );
    out
}

/// Writes `<dir>/<tag>-report.html` (self-contained) and `<dir>/<tag>-report.png` (its main
/// figure); returns both paths.
///
/// # Errors
/// The figure could not be drawn or a file written.
pub fn write(dir: &Path, outcome: &Outcome, summary: &Summary) -> Result<(PathBuf, PathBuf)> {
    let svg = main_figure(outcome, summary)?;
    let png_path = dir.join(format!("{}-report.png", outcome.layout.tag));
    std::fs::write(&png_path, png(&svg)?)
        .with_context(|| format!("writing {}", png_path.display()))?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Shoal demo {tag}</title><style>\
         body{{font-family:sans-serif;max-width:1240px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         th{{background:#f3f3f3}}pre{{background:#f8f8f8;padding:1em;white-space:pre-wrap}}\
         </style></head><body>\n<h1>Shoal demo — run {tag}</h1>\n\
         <p>{devices} simulated devices through the local stack, {start} to {end}. Every number and \
         figure below was read back from the stores (IoT registry, Timestream, the Parquet archive, \
         the quarantine, the shadows, the device and rollout tables).</p>\n<pre>{summary}</pre>\n{svg}\n",
        tag = html_escape(&outcome.layout.tag),
        devices = summary.devices,
        start = iso(outcome.started_ms),
        end = iso(outcome.ended_ms),
        summary = html_escape(&summary_text(outcome, summary)),
    );
    html.push_str(
        "<h2>Rollouts by phase</h2>\n<table><tr><th>rollout</th><th>model</th><th>hardware</th>\
         <th>version</th><th>status</th><th>phase</th><th>targeted</th><th>succeeded</th>\
         <th>failed</th><th>rolled back</th></tr>\n",
    );
    for run in &outcome.rollouts {
        let r = run.at_pause.as_ref().unwrap_or(&run.report);
        for (i, c) in &r.by_phase {
            let name = r
                .rollout
                .plan
                .phases
                .get(*i)
                .map_or("", |p| p.name.as_str());
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&run.id),
                r.rollout.model,
                r.rollout.hardware,
                r.rollout.version,
                run.report.rollout.status,
                html_escape(name),
                c.targeted,
                c.succeeded,
                c.failed,
                c.rolled_back
            );
        }
    }
    html.push_str("</table>\n<h2>Rollout audit</h2>\n<table><tr><th>time</th><th>rollout</th><th>actor</th><th>command</th><th>status</th></tr>\n");
    for run in &outcome.rollouts {
        for t in &run.report.audit {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?} → {:?}</td></tr>",
                iso(t.at_ms),
                html_escape(&run.id),
                html_escape(&t.actor),
                html_escape(&format!("{:?}", t.command)),
                t.from_status,
                t.to_status
            );
        }
    }
    html.push_str(
        "</table>\n<h2>Alerts received</h2>\n<table><tr><th>topic</th><th>payload</th></tr>\n",
    );
    for (topic, payload) in &outcome.alerts {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            html_escape(topic),
            html_escape(&payload.to_string())
        );
    }
    let _ = write!(
        html,
        "</table>\n<p>Event log of the simulated devices: <code>{}</code>; <code>config set</code> report: <code>{}</code>.</p>\n</body></html>\n",
        html_escape(&outcome.events_log.display().to_string()),
        html_escape(&outcome.config_report.display().to_string())
    );
    let html_path = dir.join(format!("{}-report.html", outcome.layout.tag));
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    Ok((html_path, png_path))
}
