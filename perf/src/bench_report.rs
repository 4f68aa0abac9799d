//! The benchmark's results file, its Markdown table, and the comparison with an earlier file.
//!
//! Why it exists: `scripts/bench.sh` runs several scenarios, each writing its own `--json`; this module
//! gathers them into one `perf/results/<date>-bench.json` (`{"date", "meta", "runs": [{"name",
//! "result"}]}`), renders the table the README quotes, and prints new/old ratios of the key figures
//! against a previous results file. Pure JSON in, text out: unit-tested.

use serde_json::{json, Value};

/// Figures compared between two results files: (label, JSON pointer into a run's result).
/// For all of them lower is better, so a ratio above 1 is a regression.
pub const COMPARED: &[(&str, &str)] = &[
    ("server ns/pkt", "/server_cpu_ns_per_packet"),
    ("server CPU %", "/server_cpu_percent"),
    ("latency p50 µs", "/latency_us/p50"),
    ("latency p99 µs", "/latency_us/p99"),
    ("latency max µs", "/latency_us/max"),
    ("server-added p50 µs", "/server_forward_latency_us/p50"),
    ("server-added p99 µs", "/server_forward_latency_us/p99"),
    ("loss", "/loss_ratio"),
    ("join p99 ms", "/join_ms/p99"),
    ("RSS/viewer B", "/server_rss_bytes_per_viewer"),
    ("failures", "/no_video_failures"),
    ("sessions leaked", "/sessions_leaked"),
    ("hop added p50 µs", "/hop_added_latency_us/p50"),
    ("hop added p99 µs", "/hop_added_latency_us/p99"),
];

/// Figures for which higher is better (marked ↑ in the tables): a ratio below 1 is a regression.
pub const COMPARED_HIGHER: &[(&str, &str)] = &[("max viewers ↑", "/max_viewers")];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} is not JSON: {1}")]
    Json(String, serde_json::Error),
    #[error("{0}: expected NAME=FILE")]
    BadRun(String),
    #[error("{0} has no \"runs\" array: not a bench results file")]
    NotBench(String),
}

pub fn read_json(path: &str) -> Result<Value, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::Read(path.to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| ReportError::Json(path.to_string(), e))
}

/// Builds the results document from `NAME=FILE` arguments and `key=value` metadata.
pub fn gather(date: &str, meta: &[(String, String)], runs: &[String]) -> Result<Value, ReportError> {
    let mut out = Vec::new();
    for r in runs {
        let (name, path) = r.split_once('=').ok_or_else(|| ReportError::BadRun(r.clone()))?;
        let mut v = read_json(path)?;
        // Per-viewer detail stays in the scenario's own file.
        if let Some(o) = v.as_object_mut() {
            o.remove("viewers");
        }
        out.push(json!({ "name": name, "result": v }));
    }
    let meta: serde_json::Map<String, Value> = meta.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    Ok(json!({ "date": date, "meta": meta, "runs": out }))
}

fn num(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into())
}

/// What the table shows for one run's viewers, and its notes column.
fn viewers_and_notes(r: &Value) -> (String, String) {
    let s = |p: &str| r.pointer(p).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
    match r["scenario"].as_str() {
        Some("churn") => (
            format!("{}/{}", s("/viewers_joined"), s("/viewers_attempted")),
            format!(
                "{} joins/s; failures POST {} video {}; sessions leaked {}; RSS {} → {} MiB",
                s("/rate_per_s"),
                s("/post_failures"),
                s("/no_video_failures"),
                s("/sessions_leaked"),
                fmt(num(r, "/server_rss_bytes_before").map(|b| b / 1048576.0), 1),
                fmt(num(r, "/server_rss_bytes_after").map(|b| b / 1048576.0), 1),
            ),
        ),
        Some("rooms") => (
            format!("{}/{}", s("/viewers_connected"), s("/viewers_requested")),
            format!(
                "{} rooms × ({} pub, {} viewers); publishers accepted {}/{}, refused {}",
                s("/rooms"),
                s("/publishers_per_room"),
                s("/viewers_per_room"),
                s("/publishers_accepted"),
                s("/publishers_requested"),
                s("/publishers_refused")
            ),
        ),
        Some("sweep") => (
            format!("max {}", s("/max_viewers")),
            format!(
                "sweep of {} ({} steps, limited by {}): {}",
                s("/target_kind"),
                r["steps"].as_array().map(Vec::len).unwrap_or(0),
                s("/limited_by"),
                s("/verdict")
            ),
        ),
        Some("rtmp") => (
            format!("{}/{}", s("/viewers_connected"), s("/viewers_requested")),
            format!(
                "ffmpeg H.264+AAC → WHEP; per viewer video {} pkt/s, audio {} pkt/s; jitter video {} ms; frame delay variation p99 {} µs; largest gap {} ms; ffmpeg CPU {} %",
                fmt(num(r, "/video_pps_per_viewer"), 1),
                fmt(num(r, "/audio_pps_per_viewer"), 1),
                fmt(num(r, "/video_jitter_ms/mean"), 2),
                fmt(num(r, "/video_frame_delay_variation_us/p99"), 0),
                fmt(num(r, "/max_gap_ms/video"), 0),
                fmt(num(r, "/ffmpeg_cpu_percent"), 1),
            ),
        ),
        Some("cascade") => {
            let groups = r["groups"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let per_group: Vec<String> = groups.iter().map(|g| g["viewers_connected"].to_string()).collect();
            let lat = |g: Option<&Value>| {
                g.map(|g| format!("{} / {}", fmt(num(g, "/latency_us/p50"), 0), fmt(num(g, "/latency_us/p99"), 0))).unwrap_or_else(|| "–".into())
            };
            let cpus: Vec<String> = r["nodes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|n| format!("{} {}", n["node_id"].as_str().unwrap_or("?"), fmt(num(n, "/cpu_percent"), 1)))
                .collect();
            let signed = |p: &str| num(r, p).map(|x| format!("{x:+.0}")).unwrap_or_else(|| "–".into());
            let deeper: String = groups.iter().skip(2).map(|g| format!(", {} hops {}", g["hops"], lat(Some(g)))).collect();
            (
                format!("{}/{} ({})", s("/viewers_connected"), s("/viewers_requested"), per_group.join("+")),
                format!(
                    "cascade, {} nodes; p50 / p99 µs: 0 hops {}, 1 hop {}{}, added per hop {} / {}; link {} pkt/s ({} copies/pkt, ~{} kbit/s est.), dropped {}; node CPU % {}",
                    cpus.len(),
                    lat(groups.first()),
                    lat(groups.get(1)),
                    deeper,
                    signed("/hop_added_latency_us/p50"),
                    signed("/hop_added_latency_us/p99"),
                    fmt(num(r, "/link/packets_per_s"), 0),
                    fmt(num(r, "/link/copies_per_packet"), 2),
                    fmt(num(r, "/link/est_kbit_per_s"), 0),
                    s("/link/dropped"),
                    cpus.join(", ")
                ),
            )
        }
        Some("floor") => (
            format!("{}/{}", s("/viewers_connected"), s("/viewers_requested")),
            format!(
                "plain UDP, {}; {:.2} datagrams/message{}",
                s("/send_mode"),
                num(r, "/reflector_datagrams_per_message").unwrap_or(0.0),
                gro_note(r).map(|n| format!("; {n}")).unwrap_or_default()
            ),
        ),
        _ => {
            // `scripts/bench.sh` repeats the fan-out runs and keeps the median one (by server ns/pkt).
            let note = r["repeats"]["server_cpu_ns_per_packet"]
                .as_array()
                .filter(|all| all.len() > 1)
                .map(|all| {
                    let all: Vec<String> = all.iter().map(|v| v.to_string()).collect();
                    format!("median of {} runs by server ns/pkt ({})", all.len(), all.join(", "))
                })
                .unwrap_or_default();
            let veth = network_note(r);
            let extra = [gro_note(r), veth.as_deref()];
            let note = std::iter::once(note.as_str()).chain(extra.into_iter().flatten()).filter(|n| !n.is_empty()).collect::<Vec<_>>().join("; ");
            (format!("{}/{}", s("/viewers_connected"), s("/viewers_requested")), note)
        }
    }
}

/// Notes a run whose viewers took GSO messages whole (`--receiver-gro`): less of their kernel work on the
/// server's CPU over loopback, so not comparable with the other rows' ns/pkt.
fn gro_note(r: &Value) -> Option<&'static str> {
    (r["receiver_gro"] == true).then_some("viewers receive with UDP_GRO")
}

/// Notes a run whose server sat behind a veth pair (`"network": "veth"`, set by `scripts/bench.sh`): the viewers'
/// kernel receive path ran on the pair's NAPI thread, not on the server's CPU as over loopback.
fn network_note(r: &Value) -> Option<String> {
    (r["network"] == "veth").then(|| {
        let uso = match r["udp_segmentation_offload"].as_bool() {
            Some(true) => ", UDP segmentation offload on",
            Some(false) => ", UDP segmentation offload off",
            None => "",
        };
        let qdisc = r["qdisc"].as_str().map(|q| format!(", qdisc {q}")).unwrap_or_default();
        format!("server behind a veth pair (viewers' receive path off its CPU{qdisc}){uso}")
    })
}

/// The Markdown table of a results document.
pub fn markdown(doc: &Value) -> String {
    let mut s = String::from(
        "| run | viewers | loss % | latency p50 / p99 / max µs | server-added p50 / p99 µs | join p50 / p99 ms | server ns/pkt | server CPU % | RSS/viewer KiB | other CPU % | notes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in doc["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let r = &run["result"];
        let (viewers, notes) = viewers_and_notes(r);
        let lat = if matches!(r["scenario"].as_str(), Some("churn" | "rtmp" | "sweep")) {
            "–".to_string()
        } else {
            format!("{} / {} / {}", fmt(num(r, "/latency_us/p50"), 0), fmt(num(r, "/latency_us/p99"), 0), fmt(num(r, "/latency_us/max"), 0))
        };
        let added = match (num(r, "/server_forward_latency_us/p50"), num(r, "/server_forward_latency_us/p99")) {
            (Some(p50), Some(p99)) => format!("{p50:.0} / {p99:.0}"),
            _ => "–".to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |\n",
            run["name"].as_str().unwrap_or("?"),
            viewers,
            fmt(num(r, "/loss_ratio").map(|x| x * 100.0), 3),
            lat,
            added,
            fmt(num(r, "/join_ms/p50"), 0),
            fmt(num(r, "/join_ms/p99"), 0),
            fmt(num(r, "/server_cpu_ns_per_packet"), 0),
            fmt(num(r, "/server_cpu_percent"), 1),
            fmt(num(r, "/server_rss_bytes_per_viewer").map(|b| b / 1024.0), 1),
            fmt(num(r, "/other_cpu_percent"), 1),
            notes
        ));
    }
    s
}

/// Side by side: `a / b` of every [`COMPARED`] figure both runs of `doc` have (e.g. sfumato/Janus).
pub fn pair(doc: &Value, a: &str, b: &str) -> Vec<Ratio> {
    let find = |n: &str| doc["runs"].as_array().and_then(|r| r.iter().find(|x| x["name"] == n)).map(|x| x["result"].clone());
    let (Some(ra), Some(rb)) = (find(a), find(b)) else { return Vec::new() };
    COMPARED
        .iter()
        .chain(COMPARED_HIGHER)
        .filter_map(|&(figure, ptr)| {
            let (x, y) = (num(&ra, ptr)?, num(&rb, ptr)?);
            Some(Ratio { run: format!("{a} / {b}"), figure, old: y, new: x, ratio: (y != 0.0).then(|| x / y) })
        })
        .collect()
}

/// A side-by-side table: `a`, `b` and `a/b` per figure (below 1 = `a` is better).
pub fn pair_markdown(a: &str, b: &str, ratios: &[Ratio]) -> String {
    if ratios.is_empty() {
        return format!("\n{a} vs {b}: not both present\n");
    }
    let mut s = format!("\n{a} vs {b} (ratio {a}/{b}; below 1 = {a} is better, except ↑ figures):\n\n| figure | {a} | {b} | ratio |\n|---|---|---|---|\n");
    for r in ratios {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.figure,
            trim(r.new),
            trim(r.old),
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into())
        ));
    }
    s
}

/// For a pair of sweeps: how far each side's `max_viewers` is a bound rather than a measurement.
pub fn sweep_pair_note(doc: &Value, a: &str, b: &str) -> Option<String> {
    let find = |n: &str| doc["runs"].as_array().and_then(|r| r.iter().find(|x| x["name"] == n)).map(|x| x["result"].clone());
    let (ra, rb) = (find(a)?, find(b)?);
    if ra["scenario"] != "sweep" || rb["scenario"] != "sweep" {
        return None;
    }
    let bound = |r: &Value| match r["limited_by"].as_str() {
        Some("harness") => "a lower bound: the harness saturated first",
        Some("max") => "a lower bound: the sweep's --max",
        _ => "the server's limit",
    };
    Some(format!(
        "\nmax viewers with loss ≤ 1 %: {a} {} ({}), {b} {} ({}).\n- {}\n- {}\n",
        ra["max_viewers"],
        bound(&ra),
        rb["max_viewers"],
        bound(&rb),
        ra["verdict"].as_str().unwrap_or(""),
        rb["verdict"].as_str().unwrap_or("")
    ))
}

/// A two-point model of the server's CPU from fan-out runs of the same publisher with few viewers (`one`,
/// e.g. fanout-1) and with many (`many`): CPU a second = `fixed` + `marginal` × packets forwarded a second.
/// `fixed` is what the publisher costs whatever the audience (its receive path, the reactor's wake-ups, the
/// first viewer's send per burst); `marginal` is each further viewer's packet. What a capacity plan needs,
/// and what shows how much of `many`'s CPU per packet is the fixed part spread over its viewers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CostModel {
    pub one: String,
    pub many: String,
    /// CPU milliseconds a second that do not grow with the audience.
    pub fixed_ms_per_s: f64,
    /// CPU nanoseconds per further forwarded packet.
    pub marginal_ns: f64,
    /// `many`'s viewers and CPU per forwarded packet, and the fixed part's share of that figure.
    pub many_viewers: f64,
    pub many_ns: f64,
    pub many_fixed_share_ns: f64,
}

/// The [`CostModel`] of runs `one` and `many` of `doc`, or why there is none: both must be fan-outs of the same
/// kind (target, `--receiver-gro`, network set-up, publisher bitrate and frame rate) with CPU, packet and duration figures, and
/// `many` must forward clearly more packets a second than `one` (at least twice as many).
pub fn cost_model(doc: &Value, one: &str, many: &str) -> Result<CostModel, String> {
    let find = |n: &str| {
        doc["runs"].as_array().and_then(|r| r.iter().find(|x| x["name"] == n)).map(|x| x["result"].clone()).ok_or(format!("no run {n}"))
    };
    // (CPU ns a second, packets forwarded a second, viewers, ns per packet)
    let rates = |n: &str, r: &Value| -> Result<(f64, f64, f64, f64), String> {
        if r["scenario"] != "fanout" {
            return Err(format!("{n} is not a fan-out"));
        }
        let (Some(ns), Some(pkts), Some(secs)) =
            (num(r, "/server_cpu_ns_per_packet"), num(r, "/server_packets_forwarded"), num(r, "/duration_s"))
        else {
            return Err(format!("{n} has no server CPU, packet or duration figure"));
        };
        if secs <= 0.0 || pkts <= 0.0 {
            return Err(format!("{n} forwarded nothing"));
        }
        Ok((ns * pkts / secs, pkts / secs, num(r, "/viewers_connected").unwrap_or(0.0), ns))
    };
    let (r1, rn) = (find(one)?, find(many)?);
    for key in ["target_kind", "receiver_gro", "network", "qdisc", "udp_segmentation_offload", "bitrate_bps", "fps"] {
        if r1[key] != rn[key] {
            return Err(format!("{one} and {many} differ in {key} ({} vs {})", r1[key], rn[key]));
        }
    }
    let (cpu1, rate1, _, _) = rates(one, &r1)?;
    let (cpu_n, rate_n, viewers, ns_n) = rates(many, &rn)?;
    if rate_n < 2.0 * rate1 {
        return Err(format!("{many} forwards {rate_n:.0} packets/s, not clearly more than {one}'s {rate1:.0}"));
    }
    let marginal = (cpu_n - cpu1) / (rate_n - rate1);
    let fixed = cpu1 - marginal * rate1;
    Ok(CostModel {
        one: one.to_string(),
        many: many.to_string(),
        fixed_ms_per_s: fixed / 1e6,
        marginal_ns: marginal,
        many_viewers: viewers,
        many_ns: ns_n,
        many_fixed_share_ns: fixed / rate_n,
    })
}

/// The Markdown line for a [`CostModel`].
pub fn cost_model_markdown(m: &CostModel) -> String {
    // Both runs' noise lands in the two figures; a negative one says the runs disagree, not that CPU is free.
    let caveat = if m.fixed_ms_per_s < 0.0 || m.marginal_ns < 0.0 {
        " (a negative figure: the two runs disagree beyond the model; measure again)"
    } else {
        ""
    };
    format!(
        "\ncost model ({one} → {many}): server CPU = **{fixed:.1} ms a second** fixed (the publisher: its receive \
         path and the reactor's wake-ups, whatever the audience) + **{marginal:.0} ns per forwarded packet**; at \
         {v:.0} viewers the fixed part is {share:.0} of the {ns:.0} ns per packet{caveat}.\n",
        one = m.one,
        many = m.many,
        fixed = m.fixed_ms_per_s,
        marginal = m.marginal_ns,
        v = m.many_viewers,
        share = m.many_fixed_share_ns,
        ns = m.many_ns,
    )
}

/// One compared figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    pub run: String,
    pub figure: &'static str,
    pub old: f64,
    pub new: f64,
    /// `new / old`; `None` when old is 0.
    pub ratio: Option<f64>,
}

/// new/old of every [`COMPARED`] figure present in both documents, for runs of the same name.
pub fn compare(old: &Value, new: &Value) -> Result<Vec<Ratio>, ReportError> {
    let runs = |d: &Value, which: &str| d["runs"].as_array().cloned().ok_or_else(|| ReportError::NotBench(which.to_string()));
    let old_runs = runs(old, "the old file")?;
    let mut out = Vec::new();
    for n in runs(new, "the new file")? {
        let name = n["name"].as_str().unwrap_or("?");
        let Some(o) = old_runs.iter().find(|o| o["name"] == n["name"]) else { continue };
        for &(figure, ptr) in COMPARED.iter().chain(COMPARED_HIGHER) {
            if let (Some(a), Some(b)) = (num(&o["result"], ptr), num(&n["result"], ptr)) {
                out.push(Ratio { run: name.to_string(), figure, old: a, new: b, ratio: (a != 0.0).then(|| b / a) });
            }
        }
    }
    Ok(out)
}

/// The comparison as a Markdown table.
pub fn compare_markdown(old_name: &str, ratios: &[Ratio]) -> String {
    let mut s = format!("Compared with {old_name} (new/old; below 1 is better, except for figures marked ↑):\n\n| run | figure | old | new | new/old |\n|---|---|---|---|---|\n");
    for r in ratios {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.run,
            r.figure,
            trim(r.old),
            trim(r.new),
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into())
        ));
    }
    s
}

fn trim(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(ns: f64, p99: u64) -> Value {
        json!({"date": "d", "runs": [
            {"name": "fanout-50", "result": {"scenario": "fanout", "viewers_connected": 50, "viewers_requested": 50,
              "loss_ratio": 0.0, "latency_us": {"p50": 100, "p99": p99, "max": 900}, "join_ms": {"p50": 40.0, "p99": 90.0},
              "server_cpu_ns_per_packet": ns, "server_rss_bytes_per_viewer": 2048.0, "other_cpu_percent": 1.0,
              "server_forward_latency_us": {"count": 10, "p50": 80, "p99": p99 / 2, "max": 700}}},
            {"name": "churn", "result": {"scenario": "churn", "viewers_joined": 9, "viewers_attempted": 10,
              "sessions_leaked": 0, "no_video_failures": 1, "rate_per_s": 5.0}}
        ]})
    }

    #[test]
    fn table_and_ratios() {
        let md = markdown(&doc(20000.0, 3000));
        assert!(md.contains("| fanout-50 | 50/50 | 0.000 | 100 / 3000 / 900 | 80 / 1500 | 40 / 90 | 20000 |"), "{md}");
        assert!(md.contains("| churn | 9/10 |"), "{md}");
        let mut repeated = doc(20000.0, 3000);
        repeated["runs"][0]["result"]["repeats"] = json!({"runs": 3, "server_cpu_ns_per_packet": [19000, 20000, 26000]});
        let md = markdown(&repeated);
        assert!(md.contains("| 1.0 | median of 3 runs by server ns/pkt (19000, 20000, 26000) |"), "{md}");
        assert!(md.contains("sessions leaked 0"));
        let r = compare(&doc(20000.0, 3000), &doc(10000.0, 3000)).unwrap();
        let ns = r.iter().find(|x| x.figure == "server ns/pkt").unwrap();
        assert_eq!(ns.ratio, Some(0.5));
        let leak = r.iter().find(|x| x.figure == "sessions leaked").unwrap();
        assert_eq!(leak.ratio, None, "0 → 0 has no ratio");
        assert!(compare_markdown("old.json", &r).contains("| fanout-50 | server ns/pkt | 20000 | 10000 | 0.50 |"));
        assert!(compare(&json!({}), &doc(1.0, 1)).is_err());
        let mut two = doc(10000.0, 2000);
        let other = doc(40000.0, 8000)["runs"][0]["result"].clone();
        two["runs"].as_array_mut().unwrap().push(json!({"name": "janus-50", "result": other}));
        let p = pair(&two, "fanout-50", "janus-50");
        assert_eq!(p.iter().find(|x| x.figure == "server ns/pkt").unwrap().ratio, Some(0.25));
        assert!(pair_markdown("fanout-50", "janus-50", &p).contains("| latency p99 µs | 2000 | 8000 | 0.25 |"));
        let added = p.iter().find(|x| x.figure == "server-added p99 µs").unwrap();
        assert_eq!((added.new, added.old), (1000.0, 4000.0));
        assert!(pair(&two, "fanout-50", "nope").is_empty());
        let sw = |n: u64, lim: &str| json!({"scenario": "sweep", "target_kind": "x", "max_viewers": n, "limited_by": lim,
            "verdict": format!("v{n}"), "steps": [{}, {}]});
        let mut three = doc(1.0, 1);
        let runs = three["runs"].as_array_mut().unwrap();
        runs.push(json!({"name": "sweep-a", "result": sw(600, "harness")}));
        runs.push(json!({"name": "sweep-b", "result": sw(300, "server-cpu")}));
        let p = pair(&three, "sweep-a", "sweep-b");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].figure, p[0].ratio), ("max viewers ↑", Some(2.0)));
        let note = sweep_pair_note(&three, "sweep-a", "sweep-b").unwrap();
        assert!(note.contains("sweep-a 600 (a lower bound: the harness saturated first)"), "{note}");
        assert!(markdown(&three).contains("| sweep-a | max 600 | – | – | – |"), "{}", markdown(&three));
        assert!(sweep_pair_note(&three, "fanout-50", "sweep-b").is_none());
    }

    #[test]
    fn cascade_row() {
        let g = |hops: u64, n: u64, p50: u64, p99: u64| json!({"hops": hops, "viewers_connected": n, "latency_us": {"p50": p50, "p99": p99}});
        let r = json!({"scenario": "cascade", "viewers_connected": 40, "viewers_requested": 40, "loss_ratio": 0.0,
            "latency_us": {"p50": 950, "p99": 3100, "max": 5000}, "server_cpu_percent": 9.5, "other_cpu_percent": 2.0,
            "groups": [g(0, 20, 430, 1000), g(1, 20, 950, 3100)], "hop_added_latency_us": {"p50": 520, "p90": 600, "p99": 2100},
            "link": {"packets_per_s": 340.0, "copies_per_packet": 2.0, "est_kbit_per_s": 2176.0, "dropped": 0},
            "nodes": [{"node_id": "a", "cpu_percent": 4.0}, {"node_id": "b", "cpu_percent": 3.0}, {"node_id": "c", "cpu_percent": 2.5}]});
        let d = json!({"runs": [{"name": "cascade-3x20", "result": r}]});
        let md = markdown(&d);
        assert!(md.contains("| cascade-3x20 | 40/40 (20+20) | 0.000 | 950 / 3100 / 5000 | – |"), "{md}");
        assert!(md.contains("0 hops 430 / 1000, 1 hop 950 / 3100, added per hop +520 / +2100; link 340 pkt/s (2.00 copies/pkt, ~2176 kbit/s est.), dropped 0; node CPU % a 4.0, b 3.0, c 2.5"), "{md}");
        let mut later = d.clone();
        later["runs"][0]["result"]["hop_added_latency_us"]["p50"] = json!(260);
        let c = compare(&d, &later).unwrap();
        assert_eq!(c.iter().find(|x| x.figure == "hop added p50 µs").unwrap().ratio, Some(0.5));
    }

    #[test]
    fn receiver_gro_runs_say_so() {
        let fan = |gro: bool| json!({"scenario": "fanout", "viewers_connected": 50, "viewers_requested": 50, "receiver_gro": gro,
            "repeats": {"server_cpu_ns_per_packet": [2900, 3000, 3100]}});
        let floor = json!({"scenario": "floor", "viewers_connected": 50, "viewers_requested": 50, "send_mode": "gso",
            "reflector_datagrams_per_message": 2.5, "receiver_gro": true});
        let d = json!({"runs": [{"name": "fanout-50", "result": fan(false)}, {"name": "fanout-50-gro", "result": fan(true)},
            {"name": "floor-50-gso-gro", "result": floor}]});
        let md = markdown(&d);
        let row = |name: &str| md.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap().to_string();
        assert!(row("fanout-50").ends_with("median of 3 runs by server ns/pkt (2900, 3000, 3100) |"), "{md}");
        assert!(row("fanout-50-gro").ends_with("median of 3 runs by server ns/pkt (2900, 3000, 3100); viewers receive with UDP_GRO |"), "{md}");
        assert!(row("floor-50-gso-gro").ends_with("plain UDP, gso; 2.50 datagrams/message; viewers receive with UDP_GRO |"), "{md}");
    }

    #[test]
    fn veth_runs_say_so() {
        let veth = json!({"scenario": "fanout", "viewers_connected": 50, "viewers_requested": 50, "network": "veth",
            "qdisc": "pfifo_fast", "udp_segmentation_offload": false, "repeats": {"server_cpu_ns_per_packet": [2500, 2600, 2700]}});
        let janus = json!({"scenario": "fanout", "target_kind": "janus", "viewers_connected": 50, "viewers_requested": 50,
            "network": "veth"});
        let d = json!({"runs": [{"name": "fanout-50-veth-nouso", "result": veth}, {"name": "janus-veth", "result": janus}]});
        let md = markdown(&d);
        let ends = |name: &str, tail: &str| md.lines().any(|l| l.starts_with(&format!("| {name} |")) && l.ends_with(tail));
        let note = "server behind a veth pair (viewers' receive path off its CPU";
        assert!(ends("fanout-50-veth-nouso", &format!("(2500, 2600, 2700); {note}, qdisc pfifo_fast), UDP segmentation offload off |")), "{md}");
        assert!(ends("janus-veth", &format!("| {note}) |")), "{md}");
    }

    #[test]
    fn gather_reads_runs() {
        let dir = std::env::temp_dir().join(format!("sfumato-perf-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.json");
        std::fs::write(&f, r#"{"scenario": "fanout", "viewers": [1, 2], "loss_ratio": 0}"#).unwrap();
        let d = gather("2026-01-01", &[("machine".into(), "test".into())], &[format!("a={}", f.display())]).unwrap();
        assert_eq!(d["runs"][0]["name"], "a");
        assert!(d["runs"][0]["result"].get("viewers").is_none(), "per-viewer detail dropped");
        assert_eq!(d["meta"]["machine"], "test");
        assert!(gather("d", &[], &["nofile".into()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cost_model_splits_fixed_and_marginal_cpu() {
        // 1 viewer: 170 packets/s at 50 µs = 8.5 ms/s; 50 viewers: 8500 packets/s at 3.6 µs = 30.6 ms/s.
        let run = |name: &str, v: u64, ns: f64| json!({"name": name, "result": {"scenario": "fanout", "viewers_connected": v,
            "server_cpu_ns_per_packet": ns, "server_packets_forwarded": 170 * v * 10, "duration_s": 10.0}});
        let d = json!({"runs": [run("fanout-1", 1, 50_000.0), run("fanout-50", 50, 3600.0)]});
        let m = cost_model(&d, "fanout-1", "fanout-50").expect("a model");
        let marginal = (30.6e6 - 8.5e6) / (8500.0 - 170.0);
        assert!((m.marginal_ns - marginal).abs() < 1e-6, "{m:?}");
        assert!((m.fixed_ms_per_s - (8.5 - marginal * 170.0 / 1e6)).abs() < 1e-9, "{m:?}");
        // fixed + marginal × rate gives back both runs' CPU.
        assert!((m.fixed_ms_per_s * 1e6 + m.marginal_ns * 8500.0 - 30.6e6).abs() < 1.0);
        assert!((m.many_fixed_share_ns + m.marginal_ns - 3600.0).abs() < 1e-6);
        assert!(cost_model_markdown(&m).contains("ns per forwarded packet"));
        assert!(!cost_model_markdown(&m).contains("negative"));
        // Missing run, no more packets with more viewers, or runs of different kinds: no model, and why.
        assert_eq!(cost_model(&d, "fanout-1", "fanout-200"), Err("no run fanout-200".to_string()));
        assert!(cost_model(&d, "fanout-50", "fanout-1").unwrap_err().contains("not clearly more"));
        let mut gro = d.clone();
        gro["runs"][1]["result"]["receiver_gro"] = json!(true);
        assert!(cost_model(&gro, "fanout-1", "fanout-50").unwrap_err().contains("receiver_gro"));
        let mut veth = d.clone();
        veth["runs"][1]["result"]["network"] = json!("veth");
        assert!(cost_model(&veth, "fanout-1", "fanout-50").is_err_and(|e| e.contains("network")));
        // Runs that disagree (more CPU per packet with more viewers than the model allows): flagged.
        let odd = json!({"runs": [run("fanout-1", 1, 1000.0), run("fanout-50", 50, 3600.0)]});
        assert!(cost_model_markdown(&cost_model(&odd, "fanout-1", "fanout-50").expect("a model")).contains("negative"));
    }

}
