//! Results as a markdown table, a sweep summary and an SVG plot of p99 against CCU.

use crate::load::Outcome;
use crate::target::Mode;
use plotters::prelude::*;
use std::path::Path;

/// One run: a mode at a CCU.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// What ran.
    pub mode: Mode,
    /// Players connected.
    pub ccu: usize,
    /// What it measured, or why it could not run.
    pub outcome: Result<Outcome, String>,
    /// The server's peak resident memory, bytes.
    pub peak_rss: u64,
    /// On a RabbitMQ cluster: where the inboxes' leaders and the players' connections
    /// were, and the traffic between the nodes.
    pub placement: Option<String>,
}

impl Row {
    /// Whether the run held the target: p99 at most `max_p99_ms`, nothing lost or doubled.
    pub(crate) fn held(&self, max_p99_ms: f64) -> bool {
        self.outcome
            .as_ref()
            .is_ok_and(|o| o.clean() && o.percentile_ms(0.99) <= max_p99_ms)
    }

    /// Server CPU per measured input, microseconds.
    pub(crate) fn cpu_per_input_us(&self) -> Option<f64> {
        let o = self.outcome.as_ref().ok()?;
        (o.measured > 0).then(|| o.server_cpu.as_secs_f64() * 1e6 / o.measured as f64)
    }
}

/// The header of [`line`]'s table.
pub(crate) const HEADER: &str = "| mode | CCU | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | inputs/s | deliveries/s | lost | doubled | out of order | server CPU µs/input | server peak RSS MB | generator CPU % | held |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// One table line.
pub(crate) fn line(row: &Row, max_p99_ms: f64) -> String {
    let o = match &row.outcome {
        Ok(o) => o,
        Err(e) => {
            let e = e.lines().next().unwrap_or_default();
            return format!("| {} | {} | {e} |||||||||||||", row.mode.name(), row.ccu);
        }
    };
    let secs = o.window.as_secs_f64().max(1e-9);
    let mut line = format!(
        "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
        row.mode.name(),
        row.ccu,
        o.percentile_ms(0.50),
        o.percentile_ms(0.90),
        o.percentile_ms(0.99),
        o.percentile_ms(0.999),
        o.percentile_ms(1.0),
        o.latencies_us.len() as f64 / secs,
        o.deliveries as f64 / secs,
        o.lost,
        o.doubled,
        o.out_of_order,
        row.cpu_per_input_us().unwrap_or(f64::NAN),
        row.peak_rss as f64 / 1e6,
        o.generator_cpu.as_secs_f64() * 100.0 / secs,
        if row.held(max_p99_ms) { "yes" } else { "**no**" },
    );
    if !o.failures.is_empty() {
        line.push_str(&format!(
            "\n\n{} players failed, e.g. {}\n",
            o.failures.len(),
            o.failures[0]
        ));
    }
    line
}

/// The sweep's summary: the largest CCU each mode held, with its ratio to the floor's,
/// and CPU per input against the floor's at the same CCU.
pub(crate) fn summary(rows: &[Row], modes: &[Mode], max_p99_ms: f64) -> String {
    let held = |m: Mode| {
        rows.iter()
            .filter(|r| r.mode == m && r.held(max_p99_ms))
            .map(|r| r.ccu)
            .max()
    };
    let floor = held(Mode::Floor);
    let mut out = format!("Largest CCU held (p99 ≤ {max_p99_ms} ms, nothing lost or doubled):\n\n");
    for &m in modes {
        let ratio = match (held(m), floor) {
            (Some(h), Some(f)) if m != Mode::Floor => {
                format!(" ({:.2}× the floor's)", h as f64 / f as f64)
            }
            _ => String::new(),
        };
        let h = held(m).map_or("none".to_owned(), |h| h.to_string());
        out.push_str(&format!("- {}: {h}{ratio}\n", m.name()));
    }
    let mut cpu = String::new();
    for r in rows.iter().filter(|r| r.mode != Mode::Floor) {
        let floor = rows
            .iter()
            .find(|f| f.mode == Mode::Floor && f.ccu == r.ccu)
            .and_then(Row::cpu_per_input_us);
        if let (Some(c), Some(f)) = (r.cpu_per_input_us(), floor) {
            cpu.push_str(&format!(
                "- {} at {} CCU: {c:.0} µs, {:.2}× the floor's {f:.0} µs\n",
                r.mode.name(),
                r.ccu,
                c / f
            ));
        }
    }
    if !cpu.is_empty() {
        out.push_str("\nServer CPU per input:\n\n");
        out.push_str(&cpu);
    }
    out
}

/// Writes an SVG plot of p99 latency against CCU, a line per mode.
pub(crate) fn plot(rows: &[Row], modes: &[Mode], path: &Path) -> Result<(), String> {
    let points = |m: Mode| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.mode == m)
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .ok()
                    .map(|o| (r.ccu as f64, o.percentile_ms(0.99)))
            })
            .filter(|(_, y)| y.is_finite())
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let max_x = rows.iter().map(|r| r.ccu).max().unwrap_or(100) as f64 * 1.05;
    let max_y = modes
        .iter()
        .flat_map(|&m| points(m))
        .map(|p| p.1)
        .fold(60.0f64, f64::max)
        .min(200.0); // past that a run has failed; points above are drawn at the top
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p99 latency of an input's answer against CCU",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("CCU (players connected, each sending 10 inputs/s)")
        .y_desc("p99 ms")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 50.0), (max_x, 50.0)],
            BLACK.mix(0.3),
        ))
        .map_err(|x| e(&x))?
        .label("50 ms");
    for (i, &m) in modes.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = points(m)
            .into_iter()
            .map(|(x, y)| (x, y.min(max_y)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(m.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
