//! `--plot FILE.svg`: throughput against the swept parameter (clients by default) on the
//! left, latency percentiles per run on the right (log scale), as SVG.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunReport;

fn x_value(report: &RunReport, x_name: &str, index: usize) -> f64 {
    match x_name {
        "clients" => report.clients as f64,
        "pipeline" => report.pipeline as f64,
        "value_size" => report.value_size as f64,
        _ => (index + 1) as f64,
    }
}

type Percentile = fn(&RunReport) -> f64;

/// Draws `reports` into an SVG file at `path`; `x_name` labels the x axis.
pub fn write_svg(path: &Path, reports: &[RunReport], x_name: &str) -> Result<(), String> {
    if reports.is_empty() {
        return Err("no runs to plot".into());
    }
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let points: Vec<(f64, &RunReport)> = reports
        .iter()
        .enumerate()
        .map(|(index, report)| (x_value(report, x_name, index), report))
        .collect();
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_low, x_high) = if x_max > x_min {
        (x_min, x_max)
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    let ops_max = points.iter().map(|p| p.1.ops_per_sec).fold(1.0, f64::max);
    let latency_max = points.iter().map(|p| p.1.max_us).fold(10.0, f64::max);
    let latency_min = points
        .iter()
        .map(|p| p.1.p50_us)
        .filter(|v| *v > 0.0)
        .fold(latency_max, f64::min)
        .max(0.1);

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let title = format!("tally-bench -> {}", reports[0].target);
    let root = root
        .titled(&title, ("sans-serif", 20))
        .map_err(|e| error(&e))?;
    let (left, right) = root.split_horizontally(600);

    let mut throughput = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .caption("throughput", ("sans-serif", 16))
        .build_cartesian_2d(x_low..x_high, 0.0..ops_max * 1.1)
        .map_err(|e| error(&e))?;
    throughput
        .configure_mesh()
        .x_desc(x_name)
        .y_desc("ops/s")
        .draw()
        .map_err(|e| error(&e))?;
    let line: Vec<(f64, f64)> = points.iter().map(|(x, r)| (*x, r.ops_per_sec)).collect();
    throughput
        .draw_series(LineSeries::new(line.clone(), &BLUE))
        .map_err(|e| error(&e))?;
    throughput
        .draw_series(
            line.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, BLUE.filled())),
        )
        .map_err(|e| error(&e))?;

    let mut latency = ChartBuilder::on(&right)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .caption("latency percentiles", ("sans-serif", 16))
        .build_cartesian_2d(
            x_low..x_high,
            (latency_min * 0.8..latency_max * 1.25).log_scale(),
        )
        .map_err(|e| error(&e))?;
    latency
        .configure_mesh()
        .x_desc(x_name)
        .y_desc("µs (log)")
        .draw()
        .map_err(|e| error(&e))?;
    let series: [(&str, Percentile, RGBColor); 4] = [
        ("p50", |r| r.p50_us, GREEN),
        ("p99", |r| r.p99_us, BLUE),
        ("p99.9", |r| r.p999_us, MAGENTA),
        ("max", |r| r.max_us, RED),
    ];
    for (label, value, color) in series {
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|(x, r)| (*x, value(r).max(latency_min * 0.8)))
            .collect();
        latency
            .draw_series(LineSeries::new(line.clone(), &color))
            .map_err(|e| error(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        latency
            .draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )
            .map_err(|e| error(&e))?;
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}
