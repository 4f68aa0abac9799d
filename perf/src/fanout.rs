//! The `fanout` scenario: one publisher, N viewers, measure delivery and latency for a fixed window.
//!
//! Why it exists: it is the benchmark the project quotes (viewers per core, server CPU per forwarded
//! packet, added latency), so its phases are fixed: publish → join all viewers (join time = WHEP POST to
//! first video packet) → warm-up → measured window → teardown (DELETE everything).

use std::time::{Duration, Instant};

use crate::client::PublisherConfig;
use crate::harness::{Harness, HarnessError, MeasureWindow, Session};
use crate::probe::Kind;
use crate::measure::{dup_reorder, rss_per_viewer, Tally};
use crate::server_probe::{delta, sample_proc, WindowSample};
use crate::stats::{JoinSummary, RunResult};

/// Stop joining after this many failed WHEP POSTs in a row (an overloaded server would make each
/// remaining viewer wait for the full HTTP timeout).
const MAX_CONSECUTIVE_JOIN_ERRORS: usize = 3;

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub target: String,
    pub room: String,
    pub viewers: usize,
    pub publisher: PublisherConfig,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: usize,
    /// Viewers per second; `None` = all at once.
    pub ramp_per_s: Option<f64>,
    pub connect_timeout: Duration,
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Viewer sockets take the server's GSO messages whole (`UDP_GRO`, [`crate::gro`]).
    pub receiver_gro: bool,
}

/// A viewer's window result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewerOutcome {
    pub location: String,
    pub joined: bool,
    pub join_ms: Option<f64>,
    pub video_received: u64,
    pub audio_received: u64,
    pub loss_ratio: f64,
}

#[derive(Debug)]
pub struct FanoutOutcome {
    pub result: RunResult,
    pub viewers: Vec<ViewerOutcome>,
}

fn progress_line(t0: Instant, phase: &str, publisher: &Session, viewers: &[Session], last: &mut (Instant, u64, u64)) {
    let now = Instant::now();
    let rx: u64 = viewers.iter().map(|v| v.peer.stats().kinds.iter().map(|k| k.packets).sum::<u64>()).sum();
    let tx = publisher.peer.sent(Kind::Video) + publisher.peer.sent(Kind::Audio);
    let dt = now.saturating_duration_since(last.0).as_secs_f64().max(1e-3);
    let joined = viewers.iter().filter(|v| v.peer.first_video().is_some()).count();
    let dead = viewers.iter().filter(|v| v.peer.dead()).count();
    eprintln!(
        "[{:6.1}s] {phase:<8} viewers {joined}/{} joined ({dead} dead)  tx {:.0} pkt/s  rx {:.0} pkt/s",
        t0.elapsed().as_secs_f64(),
        viewers.len(),
        (tx - last.1) as f64 / dt,
        (rx.saturating_sub(last.2)) as f64 / dt,
    );
    *last = (now, tx, rx);
}

/// Sleeps `d`, printing progress every second if asked.
fn sleep_with_progress(cfg: &FanoutConfig, d: Duration, t0: Instant, phase: &str, p: &Session, v: &[Session], last: &mut (Instant, u64, u64)) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let step = end.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        std::thread::sleep(step);
        if cfg.progress && step >= Duration::from_millis(900) {
            progress_line(t0, phase, p, v, last);
        }
    }
}

pub fn run(cfg: &FanoutConfig) -> Result<FanoutOutcome, HarnessError> {
    let t0 = Instant::now();
    let h = Harness::new(&cfg.target, cfg.threads)?.with_gro_viewers(cfg.receiver_gro);
    let publisher = h.publish(&cfg.room, cfg.publisher)?;
    let res = run_with(cfg, &h, &publisher, t0);
    let _ = h.delete(&publisher);
    res
}

fn run_with(cfg: &FanoutConfig, h: &Harness, publisher: &Session, t0: Instant) -> Result<FanoutOutcome, HarnessError> {
    Harness::wait_for(cfg.connect_timeout, "the publisher to connect", || publisher.peer.connected())?;
    let rss_before = cfg.server_pid.and_then(sample_proc).map(|p| p.rss_bytes);
    let mut last = (Instant::now(), 0u64, 0u64);

    // Join viewers.
    let mut viewers: Vec<Session> = Vec::with_capacity(cfg.viewers);
    let mut join_errors = 0usize;
    let mut consecutive_errors = 0usize;
    let join_started = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    for i in 0..cfg.viewers {
        if let Some(r) = cfg.ramp_per_s.filter(|r| *r > 0.0) {
            let due = join_started + Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match h.view(&cfg.room) {
            Ok(s) => {
                consecutive_errors = 0;
                viewers.push(s);
            }
            Err(e) => {
                join_errors += 1;
                consecutive_errors += 1;
                if join_errors <= 5 {
                    eprintln!("viewer {i}: {e}");
                }
                if consecutive_errors >= MAX_CONSECUTIVE_JOIN_ERRORS {
                    eprintln!(
                        "sfumato-perf: {consecutive_errors} WHEP POSTs in a row failed; not starting the remaining {} viewers",
                        cfg.viewers - i - 1
                    );
                    break;
                }
            }
        }
        if cfg.progress && Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            progress_line(t0, "joining", publisher, &viewers, &mut last);
        }
    }
    let deadline = Instant::now() + cfg.connect_timeout;
    while Instant::now() < deadline && !viewers.iter().all(|v| v.peer.first_video().is_some() || v.peer.dead()) {
        std::thread::sleep(Duration::from_millis(50));
        if cfg.progress && Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            progress_line(t0, "waiting", publisher, &viewers, &mut last);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let join_ms: Vec<f64> = viewers.iter().filter_map(|v| v.join_time()).map(ms).collect();
    let post_ms: Vec<f64> = viewers.iter().map(|v| ms(v.post_duration)).collect();
    let connect_ms: Vec<f64> = viewers.iter().filter_map(|v| v.connect_time()).map(ms).collect();

    sleep_with_progress(cfg, cfg.warmup, t0, "warmup", publisher, &viewers, &mut last);

    // Measured window.
    let before: Vec<(u64, u64)> = viewers.iter().map(|v| dup_reorder(&v.peer.stats())).collect();
    let s0 = WindowSample::take(h.http(), cfg.server_pid);
    let mut window = MeasureWindow::open(publisher, &viewers);
    sleep_with_progress(cfg, cfg.duration, t0, "measure", publisher, &viewers, &mut last);
    window.close(publisher, &viewers);
    let s1 = WindowSample::take(h.http(), cfg.server_pid);
    let measured = s1.at.saturating_duration_since(s0.at);
    // Let in-flight packets of the window arrive.
    std::thread::sleep(Duration::from_millis(300));

    let d = delta(&s0, &s1);
    let sent = window.sent(Kind::Video) + window.sent(Kind::Audio);
    let mut tally = Tally::default();
    let mut outcomes = Vec::with_capacity(viewers.len());
    for (v, b) in viewers.iter().zip(&before) {
        let joined = v.peer.first_video().is_some();
        let w = tally.viewer(joined, &v.peer.stats(), sent, *b);
        outcomes.push(ViewerOutcome {
            location: v.location.clone(),
            joined,
            join_ms: v.join_time().map(|d| d.as_secs_f64() * 1e3),
            video_received: w.video_received,
            audio_received: w.audio_received,
            loss_ratio: w.loss_ratio,
        });
    }
    let (ppf, bytes) = cfg.publisher.frame_shape();
    let mut result = RunResult {
        scenario: "fanout".into(),
        target: cfg.target.clone(),
        room: cfg.room.clone(),
        viewers_requested: cfg.viewers,
        threads: h.threads(),
        bitrate_bps: cfg.publisher.bitrate_bps,
        fps: cfg.publisher.fps,
        packets_per_frame: ppf,
        video_payload_bytes: bytes,
        join_ms: JoinSummary::of(&join_ms),
        post_ms: JoinSummary::of(&post_ms),
        connect_ms: JoinSummary::of(&connect_ms),
        packets_sent: sent,
        duration_s: measured.as_secs_f64(),
        ..RunResult::default()
    };
    tally.fill(&mut result);
    d.fill(&mut result);
    result.server_rss_bytes_per_viewer = rss_per_viewer(rss_before, d.rss_bytes, result.viewers_connected);
    result.extra.insert("receiver_gro".into(), cfg.receiver_gro.into());

    // Teardown.
    for v in &viewers {
        if let Err(e) = h.delete(v) {
            eprintln!("DELETE {}: {e}", v.location);
        }
    }
    Ok(FanoutOutcome { result, viewers: outcomes })
}

/// The human summary printed to stdout.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let opt = |x: Option<f64>, unit: &str| x.map(|v| format!("{v:.0} {unit}")).unwrap_or_else(|| "n/a".into());
    s.push_str(&format!(
        "{} {} room {}: {}/{} viewers connected, {} driver thread(s){}\n",
        r.scenario,
        r.target,
        r.room,
        r.viewers_connected,
        r.viewers_requested,
        r.threads,
        if r.extra.get("receiver_gro") == Some(&serde_json::Value::Bool(true)) { ", viewers receive GSO messages whole (UDP_GRO)" } else { "" }
    ));
    s.push_str(&format!(
        "  publisher: {} kbit/s video, {} fps × {} packets of {} B, + 20 ms audio\n",
        r.bitrate_bps / 1000,
        r.fps,
        r.packets_per_frame,
        r.video_payload_bytes
    ));
    for (name, j) in [("join (POST → first video)", r.join_ms), ("  of which POST", r.post_ms), ("  POST → connected", r.connect_ms)] {
        if let Some(j) = j {
            s.push_str(&format!("  {name}: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n", j.p50, j.p99, j.max));
        }
    }
    let l = r.latency_us;
    s.push_str(&format!(
        "  latency (send → viewer receive): p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  ({} samples)\n",
        l.p50, l.p90, l.p99, l.p999, l.max, l.count
    ));
    s.push_str(&format!(
        "  window {:.1} s: sent {} packets, received {} of {} expected  loss {:.4}%  dup {}  reordered {}  viewers >1% loss {}\n",
        r.duration_s,
        r.packets_sent,
        r.packets_received,
        r.packets_expected,
        r.loss_ratio * 100.0,
        r.duplicates,
        r.reordered,
        r.viewers_over_1pct_loss
    ));
    s.push_str(&format!(
        "  server: {} per forwarded packet, CPU {}, RSS {}, forwarded {}, ring-full drops {}\n",
        opt(r.server_cpu_ns_per_packet, "ns"),
        r.server_cpu_percent.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "n/a".into()),
        r.server_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "n/a".into())
            + &r.server_rss_bytes_per_viewer.map(|b| format!(" (+{:.0} KiB per viewer)", b / 1024.0)).unwrap_or_default(),
        r.server_packets_forwarded.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into()),
        r.server_ring_full_drops.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into()),
    ));
    if let Some(l) = r.server_forward_latency_us {
        s.push_str(&format!(
            "  server-added latency (UDP in → UDP out, since the server started): p50 {} µs  p99 {} µs  max {} µs\n",
            l.p50, l.p99, l.max
        ));
    }
    s.push_str(&format!(
        "  server waited for a CPU {} of the window; slowest /healthz {:.0} ms\n",
        r.server_run_delay_percent.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "n/a".into()),
        r.healthz_max_ms
    ));
    if let Some(c) = r.harness_cpu_percent {
        s.push_str(&format!("  harness CPU {c:.1}% (of one core)"));
        if let Some(o) = r.other_cpu_percent {
            s.push_str(&format!(", other processes {o:.1}%{}", if o > 10.0 { "  (machine busy: numbers are noisy)" } else { "" }));
        }
        s.push('\n');
    }
    s
}
