//! The report as a hand-written SVG timeline: answers per second stacked by serving model,
//! failures on top, the incident windows shaded and labelled, one band of breaker states per
//! model, and the requests that reached the dead model, on one time axis.
//!
//! Plain SVG 1.1 with no script, no external font and no CSS file, so it renders the same in a
//! browser, an image viewer or a GitHub README.

use std::fmt::Write as _;
use std::time::Duration;

use seawall_actors::StateKind;

use super::{fmt_duration, state_name, DemoReport, IncidentKind, FALLBACK, PRIMARY};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 40.0;
const CHART_HEIGHT: f64 = 250.0;
const LABEL_ROW: f64 = 18.0;
const BAND_HEIGHT: f64 = 18.0;
const BAND_GAP: f64 = 8.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";
const INK: &str = "#222222";
const MUTED: &str = "#666666";
const GRID: &str = "#E6E6E6";
const FAILED: &str = "#D62728";

fn model_colour(model: &str) -> &'static str {
    match model {
        PRIMARY => "#3B6FB6",
        FALLBACK => "#2A9D8F",
        _ => "#9467BD",
    }
}

fn state_colour(state: StateKind) -> &'static str {
    match state {
        StateKind::Closed => "#59A14F",
        StateKind::HalfOpen => "#EDC948",
        StateKind::Open => "#E15759",
    }
}

fn incident_colour(kind: IncidentKind) -> (&'static str, &'static str) {
    // (shade, ink): the shade is drawn translucent, the ink is dark enough for text on white.
    match kind {
        IncidentKind::Outage => ("#E15759", "#A4262C"),
        IncidentKind::SlowFirstByte => ("#F28E2B", "#9A5400"),
        IncidentKind::LongContext => ("#8E6BBF", "#5B3E8A"),
        IncidentKind::Resets => ("#7F7F7F", "#4D4D4D"),
        IncidentKind::Hangs => ("#4E79A7", "#2B4A6F"),
    }
}

/// Escape text and attribute values for XML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A rough width of `text` at `size` px in a sans-serif font, to keep labels from colliding.
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.56
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn fmt_tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The timeline as an SVG document.
pub fn render_svg(report: &DemoReport) -> String {
    let plan = &report.plan;
    let summary = report.summary();
    let models = plan.models();

    // Time axis: the run. Calls are binned by the time they were issued, so every call lands
    // inside the run and a bar says what became of the calls of that moment.
    let end = plan.duration.as_secs_f64();
    let bins = 30usize;
    let bin = end / bins as f64;
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + plot_width * (t / end).clamp(0.0, 1.0);

    // Calls per bin, by serving model, and failures.
    let mut stacks = vec![vec![0usize; models.len() + 1]; bins];
    for c in &report.calls {
        let b = ((c.issued.as_secs_f64() / bin) as usize).min(bins - 1);
        let slot = match c.served_by() {
            Some(m) => models.iter().position(|x| *x == m).unwrap_or(models.len()),
            None => models.len(),
        };
        stacks[b][slot] += 1;
    }
    let peak = stacks
        .iter()
        .map(|s| s.iter().sum::<usize>() as f64 / bin)
        .fold(0.0, f64::max);
    let y_step = nice_step(peak.max(1.0) / 5.0);
    let y_max = ((peak / y_step).ceil().max(1.0)) * y_step;

    // Incident labels go in rows above the chart, centred on their window (kept inside the
    // picture), each in the first row where it does not touch another.
    let mut rows: Vec<f64> = Vec::new();
    let mut placed = Vec::new();
    for inc in &plan.incidents {
        let (x0, x1) = (x(inc.from.as_secs_f64()), x(inc.until.as_secs_f64()));
        let width = text_width(&inc.label, 12.0) * 1.08;
        let centre = ((x0 + x1) / 2.0).clamp(LEFT + width / 2.0, WIDTH - 8.0 - width / 2.0);
        let start = x0.min(centre - width / 2.0);
        let stop = x1.max(centre + width / 2.0) + 10.0;
        let row = match rows.iter().position(|r| *r < start) {
            Some(r) => r,
            None => {
                rows.push(0.0);
                rows.len() - 1
            }
        };
        rows[row] = stop;
        placed.push((inc, row, centre));
    }
    let labels_top = 102.0;
    let chart_top = labels_top + rows.len() as f64 * LABEL_ROW + 10.0;
    let chart_bottom = chart_top + CHART_HEIGHT;
    let y = |rate: f64| chart_bottom - CHART_HEIGHT * (rate / y_max);
    let bands_top = chart_bottom + 58.0;
    let hits_top = bands_top + models.len() as f64 * (BAND_HEIGHT + BAND_GAP);
    let shade_bottom = hits_top + BAND_HEIGHT;
    let legend_top = shade_bottom + 34.0;
    let height = legend_top + 66.0;

    let mut o = String::new();
    // Writing to a String cannot fail; `let _` keeps the drawing code readable.
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="{}" font-size="12" fill="{INK}">"#,
        esc(FONT)
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height:.0}" fill="white"/>"#
    );

    // Title and the one-line story.
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="34" font-size="20" font-weight="600">{}</text>"#,
        esc(&format!(
            "seawall demo: {} s of incident, replayed against a simulated API",
            fmt_tick(end)
        ))
    );
    let p99 = summary
        .latency
        .map(|p| format!(" · p99 latency {}", fmt_duration(p.p99)))
        .unwrap_or_default();
    let lines = [
        format!(
            "{} agents · {} calls · {} answered · {} failed{p99}",
            plan.agents, summary.issued, summary.answered, summary.failed,
        ),
        format!(
            "requests that reached the dead model: {} (a naive client, estimated: about {}) \
             · upstream 429s: {}",
            summary.dead_model_calls, summary.naive_dead_model_calls, summary.upstream_429
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(
            o,
            r#"<text x="{LEFT}" y="{}" font-size="13" fill="{MUTED}">{}</text>"#,
            58 + 18 * i,
            esc(line)
        );
    }

    // Incident windows: shaded across the chart and the bands, labelled above.
    for (inc, row, centre) in &placed {
        let (shade, ink) = incident_colour(inc.kind);
        let (x0, x1) = (x(inc.from.as_secs_f64()), x(inc.until.as_secs_f64()));
        let _ = writeln!(
            o,
            r#"<rect class="incident" x="{x0:.1}" y="{chart_top:.1}" width="{:.1}" height="{:.1}" fill="{shade}" fill-opacity="0.10"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            shade_bottom - chart_top,
            esc(&format!(
                "{}: {:.1}-{:.1} s",
                inc.label,
                inc.from.as_secs_f64(),
                inc.until.as_secs_f64()
            ))
        );
        let row_y = labels_top + *row as f64 * LABEL_ROW;
        let _ = writeln!(
            o,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="3" fill="{shade}"/>"#,
            row_y + 4.0,
            (x1 - x0).max(1.0)
        );
        let _ = writeln!(
            o,
            r#"<text x="{centre:.1}" y="{row_y:.1}" fill="{ink}" font-weight="600" text-anchor="middle">{}</text>"#,
            esc(&inc.label)
        );
    }

    // Grid and y axis.
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let gy = y(v);
        let _ = writeln!(
            o,
            r#"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="{GRID}"/>"#,
            LEFT + plot_width
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{MUTED}">{}</text>"#,
            LEFT - 8.0,
            gy + 4.0,
            fmt_tick(v)
        );
        v += y_step;
    }
    let mid = (chart_top + chart_bottom) / 2.0;
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{mid:.1}" text-anchor="middle" fill="{MUTED}" transform="rotate(-90 {:.1} {mid:.1})">calls per second, by issue time</text>"#,
        LEFT - 44.0,
        LEFT - 44.0
    );

    // Stacked bars: chain order from the bottom, failures on top.
    let bar_width = (plot_width / bins as f64 - 1.0).max(1.0);
    for (b, stack) in stacks.iter().enumerate() {
        let mut base = 0.0;
        let bx = x(b as f64 * bin) + 0.5;
        for (slot, n) in stack.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let (name, colour) = match models.get(slot) {
                Some(m) => (*m, model_colour(m)),
                None => ("failed", FAILED),
            };
            let rate = *n as f64 / bin;
            let (top, bottom) = (y(base + rate), y(base));
            let _ = writeln!(
                o,
                r#"<rect class="bar" data-series="{}" x="{bx:.1}" y="{top:.1}" width="{bar_width:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect>"#,
                esc(name),
                bottom - top,
                esc(&format!(
                    "{:.1}-{:.1} s: {n} {}",
                    b as f64 * bin,
                    (b + 1) as f64 * bin,
                    if slot < models.len() {
                        format!("answered by {name}")
                    } else {
                        "failed".to_owned()
                    }
                ))
            );
            base += rate;
        }
    }

    // X axis.
    let _ = writeln!(
        o,
        r#"<line x1="{LEFT}" y1="{chart_bottom:.1}" x2="{:.1}" y2="{chart_bottom:.1}" stroke="{INK}"/>"#,
        LEFT + plot_width
    );
    let x_step = nice_step(end / 10.0);
    let mut t = 0.0;
    while t <= end + 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            o,
            r#"<line x1="{tx:.1}" y1="{chart_bottom:.1}" x2="{tx:.1}" y2="{:.1}" stroke="{INK}"/>"#,
            chart_bottom + 5.0
        );
        let _ = writeln!(
            o,
            r#"<text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="{MUTED}">{}</text>"#,
            chart_bottom + 19.0,
            fmt_tick(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{MUTED}">seconds since start</text>"#,
        LEFT + plot_width / 2.0,
        chart_bottom + 38.0
    );

    // Breaker bands, one row per model.
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="600">circuit breakers</text>"#,
        LEFT - 10.0,
        bands_top - 8.0
    );
    for (row, model) in models.iter().enumerate() {
        let by = bands_top + row as f64 * (BAND_HEIGHT + BAND_GAP);
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 10.0,
            by + BAND_HEIGHT - 5.0,
            esc(model)
        );
        for (from, until, state) in segments(report, model, end) {
            let (x0, x1) = (x(from), x(until));
            let _ = writeln!(
                o,
                r#"<rect class="band" data-model="{}" data-state="{}" x="{x0:.1}" y="{by:.1}" width="{:.1}" height="{BAND_HEIGHT}" fill="{}"><title>{}</title></rect>"#,
                esc(model),
                state_name(state),
                (x1 - x0).max(1.5),
                state_colour(state),
                esc(&format!(
                    "{model}: {} {from:.2}-{until:.2} s",
                    state_name(state)
                ))
            );
        }
    }

    // Requests that reached the dead model: one tick each.
    let hits: Vec<f64> = report
        .upstream
        .iter()
        .filter(|u| u.model.as_deref() == Some(PRIMARY) && u.status == Some(529))
        .map(|u| u.at.as_secs_f64())
        .collect();
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        LEFT - 10.0,
        hits_top + BAND_HEIGHT - 5.0,
        esc(&format!("hits on the dead model ({})", hits.len()))
    );
    let _ = writeln!(
        o,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{GRID}"/>"#,
        hits_top + BAND_HEIGHT,
        LEFT + plot_width,
        hits_top + BAND_HEIGHT
    );
    for h in hits {
        let hx = x(h);
        let _ = writeln!(
            o,
            r#"<line class="hit" x1="{hx:.1}" y1="{:.1}" x2="{hx:.1}" y2="{:.1}" stroke="{}" stroke-width="1.5"/>"#,
            hits_top + 2.0,
            hits_top + BAND_HEIGHT,
            state_colour(StateKind::Open)
        );
    }

    // Legend: what the bars are, what the bands are, and the rest.
    let mut items: Vec<(String, &str, bool)> = models
        .iter()
        .map(|m| (format!("answered by {m}"), model_colour(m), false))
        .collect();
    items.push(("failed".to_owned(), FAILED, false));
    legend(&mut o, legend_top, &items);
    let items: Vec<(String, &str, bool)> =
        [StateKind::Closed, StateKind::HalfOpen, StateKind::Open]
            .iter()
            .map(|s| {
                (
                    format!("breaker {}", state_name(*s)),
                    state_colour(*s),
                    false,
                )
            })
            .collect();
    legend(&mut o, legend_top + 22.0, &items);
    let items = [
        (
            format!("a request that reached {PRIMARY} while it was down (529)"),
            state_colour(StateKind::Open),
            true,
        ),
        (
            "shaded: incident window (simulator clock)".to_owned(),
            "#BBBBBB",
            false,
        ),
    ];
    legend(&mut o, legend_top + 44.0, &items);

    o.push_str("</svg>\n");
    o
}

/// One row of legend entries: a swatch (or a tick, for the dead-model hits) and a label.
fn legend(o: &mut String, top: f64, items: &[(String, &str, bool)]) {
    let mut lx = LEFT;
    for (label, colour, tick) in items {
        if *tick {
            let _ = writeln!(
                o,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1.5"/>"#,
                lx + 6.0,
                top - 11.0,
                lx + 6.0,
                top + 2.0
            );
        } else {
            let _ = writeln!(
                o,
                r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" rx="2" fill="{colour}"/>"#,
                top - 10.0
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{top:.1}">{}</text>"#,
            lx + 17.0,
            esc(label)
        );
        lx += 17.0 + text_width(label, 12.0) + 22.0;
    }
}

/// The breaker states of `model` as (from, until, state) in seconds: closed from the start,
/// then one segment per published transition.
fn segments(report: &DemoReport, model: &str, end: f64) -> Vec<(f64, f64, StateKind)> {
    let mut out = Vec::new();
    let mut state = StateKind::Closed;
    let mut since = Duration::ZERO;
    for t in report.transitions.iter().filter(|t| t.model == model) {
        out.push((since.as_secs_f64(), t.at.as_secs_f64(), state));
        state = t.to;
        since = t.at;
    }
    out.push((since.as_secs_f64(), end.max(since.as_secs_f64()), state));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"a<b & "c">'d'"#),
            "a&lt;b &amp; &quot;c&quot;&gt;&apos;d&apos;"
        );
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(2.6), 5.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
    }
}
