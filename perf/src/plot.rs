//! `sfumato-perf plot`: PNG charts of a bench results file.
//!
//! Why it exists: the issue asks for pictures a reader takes in at a glance — the latency CDF of every
//! scenario, and server CPU per forwarded packet against the viewer count for sfumato, Janus and the
//! floor. Extraction from the results JSON is pure (unit-tested); drawing uses plotters' bitmap backend
//! and ab_glyph with a TTF file read at run time (no fontconfig/freetype).
//!
//! - `<prefix>latency-cdf.png`: x = latency (ms, log), y = fraction of packets at or below it on a
//!   "nines" axis (50 %, 90 %, 99 %, 99.9 %, 99.99 %) so the tail is visible. From each run's
//!   `latency_cdf_us` (or its p50/p90/p99/p99.9/max for older files).
//! - `<prefix>cpu-per-packet.png`: x = viewers, y = server µs per forwarded packet; fan-out runs and
//!   sweep steps of sfumato and Janus, floor runs (sendmmsg, GSO) and floor sweep steps.

use plotters::prelude::*;
use serde_json::Value;

/// Fonts tried when `--font` is not given (Debian's fonts-dejavu-core first).
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// The highest quantile drawn (the "nines" axis ends at 99.99 %).
const TOP_NINES: f64 = 4.0;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no TTF font found (tried {0}); install fonts-dejavu-core or pass --font FILE.ttf")]
    NoFont(String),
    #[error("{0} is not a usable TTF font")]
    BadFont(String),
    #[error("drawing {0}: {1}")]
    Draw(String, String),
    #[error("{0}: nothing to plot")]
    Empty(String),
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Quantile → "nines" (0.9 → 1, 0.99 → 2, ...), capped at [`TOP_NINES`].
pub fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        return TOP_NINES;
    }
    (-(1.0 - q).log10()).clamp(0.0, TOP_NINES)
}

/// Nines → the percentile label (1 → "90%").
pub fn nines_label(y: f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-y));
    let digits = if y <= 1.0 { 0 } else { (y.ceil() as usize).saturating_sub(2) };
    format!("{pct:.digits$}%")
}

fn runs(doc: &Value) -> &[Value] {
    doc["runs"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// One latency CDF per run that measured latency (not churn, rtmp or sweeps, nor `--receiver-gro` runs,
/// whose viewers stamp a GSO message's datagrams at once): (ms, nines) points.
pub fn latency_cdf_series(doc: &Value) -> Vec<Series> {
    let mut out = Vec::new();
    for run in runs(doc) {
        let r = &run["result"];
        if !matches!(r["scenario"].as_str(), Some("fanout" | "floor" | "rooms")) || r["receiver_gro"] == true {
            continue;
        }
        let mut pts: Vec<(f64, f64)> = match r["latency_cdf_us"].as_array() {
            Some(cdf) => cdf
                .iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                .map(|(q, us)| (us / 1e3, nines(q)))
                .collect(),
            None => [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999"), (1.0, "max")]
                .iter()
                .filter_map(|(q, k)| Some((r["latency_us"][k].as_f64()? / 1e3, nines(*q))))
                .collect(),
        };
        // The max and p99.99 share the top of the axis: keep the larger latency there.
        pts.retain(|p| p.0 > 0.0);
        pts.dedup_by(|b, a| a.1 == b.1 && {
            a.0 = a.0.max(b.0);
            true
        });
        if pts.len() >= 2 {
            out.push(Series { name: run["name"].as_str().unwrap_or("?").to_string(), points: pts });
        }
    }
    out
}

/// Which CPU-per-packet line a run or sweep belongs to.
fn cpu_series_of(r: &Value) -> Option<&'static str> {
    let janus = r["target_kind"] == "janus";
    if r["receiver_gro"] == true {
        // Viewers that took GSO messages whole: a different measurement, not a point on these lines.
        return None;
    }
    if r["scenario"] == "fanout" && r["viewers_connected"].as_u64().is_some_and(|v| v < 2) {
        // One viewer (the cost model's fixed point, ~15x the others' CPU per packet): it would flatten the lines.
        return None;
    }
    if r["network"] == "veth" {
        // Server behind a veth pair: less of the viewers' work on its CPU than over loopback, its own points.
        return match (r["scenario"].as_str()?, janus, r["udp_segmentation_offload"].as_bool()) {
            ("fanout", true, _) => Some("Janus (veth)"),
            ("fanout", false, Some(false)) => Some("sfumato (veth, no USO)"),
            ("fanout", false, _) => Some("sfumato (veth)"),
            _ => None,
        };
    }
    match r["scenario"].as_str()? {
        "fanout" if janus => Some("Janus"),
        "fanout" => Some("sfumato"),
        "floor" if r["send_mode"] == "gso" => Some("floor (GSO)"),
        "floor" => Some("floor (sendmmsg)"),
        "sweep" => match r["target_kind"].as_str()? {
            "janus" => Some("Janus"),
            "floor" => Some("floor (sendmmsg)"),
            _ => Some("sfumato"),
        },
        _ => None,
    }
}

/// Server µs per forwarded packet against viewers: sfumato, Janus, floor (sendmmsg), floor (GSO), and the runs
/// with the server behind a veth pair.
pub fn cpu_per_packet_series(doc: &Value) -> Vec<Series> {
    let order = ["sfumato", "Janus", "floor (sendmmsg)", "floor (GSO)", "sfumato (veth)", "sfumato (veth, no USO)", "Janus (veth)"];
    let mut acc: Vec<Vec<(f64, f64)>> = vec![Vec::new(); order.len()];
    for run in runs(doc) {
        let r = &run["result"];
        let Some(name) = cpu_series_of(r) else { continue };
        let Some(i) = order.iter().position(|o| *o == name) else { continue };
        if r["scenario"] == "sweep" {
            for s in r["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if let (Some(v), Some(ns), true) = (s["viewers"].as_f64(), s["server_cpu_ns_per_packet"].as_f64(), s["pass"] == true) {
                    acc[i].push((v, ns / 1e3));
                }
            }
        } else if let (Some(v), Some(ns)) = (r["viewers_connected"].as_f64(), r["server_cpu_ns_per_packet"].as_f64()) {
            acc[i].push((v, ns / 1e3));
        }
    }
    order
        .iter()
        .zip(acc)
        .filter(|(_, p)| !p.is_empty())
        .map(|(n, mut p)| {
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: n.to_string(), points: p }
        })
        .collect()
}

/// Registers `path` (or the first of [`FONT_CANDIDATES`] that exists) as plotters' "sans-serif".
pub fn load_font(path: Option<&str>) -> Result<(), PlotError> {
    let candidates: Vec<&str> = path.map(|p| vec![p]).unwrap_or_else(|| FONT_CANDIDATES.to_vec());
    let Some((file, bytes)) = candidates.iter().find_map(|p| std::fs::read(p).ok().map(|b| (*p, b))) else {
        return Err(PlotError::NoFont(candidates.join(", ")));
    };
    // plotters keeps fonts for the process's lifetime.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    for style in [FontStyle::Normal, FontStyle::Bold] {
        plotters::style::register_font("sans-serif", style, bytes).map_err(|_| PlotError::BadFont(file.to_string()))?;
    }
    Ok(())
}

fn color(i: usize) -> RGBColor {
    const C: &[RGBColor] = &[
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn draw_err(path: &str) -> impl Fn(String) -> PlotError + '_ {
    move |e| PlotError::Draw(path.to_string(), e)
}

/// Draws the latency CDFs into `path` (PNG, 1000 × 620).
pub fn draw_latency_cdf(path: &str, title: &str, series: &[Series]) -> Result<(), PlotError> {
    if series.is_empty() {
        return Err(PlotError::Empty(path.to_string()));
    }
    let e = draw_err(path);
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(((lo * 0.8).max(0.001)..hi * 1.25).log_scale(), 0f64..TOP_NINES)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency, publisher write → viewer receive (ms, log scale)")
        .y_desc("packets at or below")
        .y_labels(5)
        .y_label_formatter(&|y| nines_label(*y))
        .x_label_formatter(&|x| if *x >= 1.0 { format!("{x:.0}") } else { format!("{x:.2}") })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Draws server µs per forwarded packet against viewers into `path` (PNG, 1000 × 620).
pub fn draw_cpu_per_packet(path: &str, title: &str, series: &[Series]) -> Result<(), PlotError> {
    if series.is_empty() {
        return Err(PlotError::Empty(path.to_string()));
    }
    let e = draw_err(path);
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let xmax = pts().map(|p| p.0).fold(0f64, f64::max);
    let ymax = pts().map(|p| p.1).fold(0f64, f64::max);
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(xmax * 1.08).max(10.0), 0f64..(ymax * 1.15).max(1.0))
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("viewers (1 publisher, 1 Mbit/s + audio)")
        .y_desc("server CPU per forwarded packet (µs)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|x| e(x.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Both charts of a results document; returns the files written.
pub fn plot_all(doc: &Value, prefix: &str) -> Result<Vec<String>, PlotError> {
    let date = doc["date"].as_str().unwrap_or("");
    let mut written = Vec::new();
    let cdf = format!("{prefix}latency-cdf.png");
    draw_latency_cdf(&cdf, &format!("sfumato-perf {date}: end-to-end latency CDF per run"), &latency_cdf_series(doc))?;
    written.push(cdf);
    let cpu = format!("{prefix}cpu-per-packet.png");
    draw_cpu_per_packet(&cpu, &format!("sfumato-perf {date}: server CPU per forwarded packet"), &cpu_per_packet_series(doc))?;
    written.push(cpu);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"date": "2026-01-01", "runs": [
            {"name": "floor-50", "result": {"scenario": "floor", "send_mode": "sendmmsg", "viewers_connected": 50,
              "server_cpu_ns_per_packet": 2000.0, "latency_us": {"p50": 400, "p90": 800, "p99": 1200, "p999": 2000, "max": 2600}}},
            {"name": "fanout-50", "result": {"scenario": "fanout", "viewers_connected": 50, "server_cpu_ns_per_packet": 7000.0,
              "latency_cdf_us": [[0.0, 100.0], [0.5, 600.0], [0.99, 1800.0], [0.9999, 3000.0], [1.0, 3400.0]]}},
            {"name": "fanout-1", "result": {"scenario": "fanout", "viewers_connected": 1, "server_cpu_ns_per_packet": 50000.0}},
            {"name": "fanout-50-gro", "result": {"scenario": "fanout", "receiver_gro": true, "viewers_connected": 50,
              "server_cpu_ns_per_packet": 6000.0, "latency_us": {"p50": 400, "p90": 800, "p99": 1200, "p999": 2000, "max": 2600}}},
            {"name": "janus-fanout-50", "result": {"scenario": "fanout", "target_kind": "janus", "viewers_connected": 50,
              "server_cpu_ns_per_packet": 10000.0}},
            {"name": "sweep-sfumato", "result": {"scenario": "sweep", "target_kind": "sfumato", "steps": [
              {"viewers": 100, "pass": true, "server_cpu_ns_per_packet": 8000.0},
              {"viewers": 400, "pass": false, "server_cpu_ns_per_packet": 9000.0}]}},
            {"name": "fanout-50-veth", "result": {"scenario": "fanout", "network": "veth", "udp_segmentation_offload": true,
              "viewers_connected": 50, "server_cpu_ns_per_packet": 2500.0}},
            {"name": "churn", "result": {"scenario": "churn"}}
        ]})
    }

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0), TOP_NINES);
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(0.0), "0%");
    }

    #[test]
    fn extracts_series() {
        let d = doc();
        let cdf = latency_cdf_series(&d);
        assert_eq!(cdf.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["floor-50", "fanout-50"]);
        assert_eq!(cdf[0].points.len(), 5, "from percentiles");
        let top = cdf[1].points.last().copied().unwrap_or_default();
        assert_eq!(top, (3.4, TOP_NINES), "p99.99 and max share the top; the larger stays");
        let cpu = cpu_per_packet_series(&d);
        let names: Vec<&str> = cpu.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["sfumato", "Janus", "floor (sendmmsg)", "sfumato (veth)"]);
        assert_eq!(cpu[3].points, vec![(50.0, 2.5)]);
        assert_eq!(cpu[0].points, vec![(50.0, 7.0), (100.0, 8.0)], "failed sweep steps, one-viewer and UDP_GRO runs are left out");
    }

    #[test]
    fn draws_pngs() {
        if load_font(None).is_err() {
            eprintln!("no system TTF font: skipping the drawing test");
            return;
        }
        let dir = std::env::temp_dir().join(format!("sfumato-perf-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = format!("{}/t-", dir.display());
        let files = plot_all(&doc(), &prefix).unwrap();
        for f in &files {
            let b = std::fs::read(f).unwrap();
            assert!(b.len() > 5000 && b.starts_with(b"\x89PNG"), "{f}");
        }
        assert!(matches!(load_font(Some("/nonexistent.ttf")), Err(PlotError::NoFont(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
