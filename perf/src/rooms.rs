//! The `rooms` scenario: R rooms × (P publishers, V viewers), meeting-style, all measured in one window.
//!
//! Why it exists: a fan-out to one big room exercises one home core and one publisher; many small rooms
//! exercise room bookkeeping, many publishers' inbound SRTP and many small fan-outs at once. The server
//! accepts one publisher per room today: with P > 1 the extra WHIP POSTs are refused (409) and the
//! result says how many (`publishers_refused`); viewers are measured against the room's first publisher.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::client::{next_stream_id, PublisherConfig};
use crate::harness::{Harness, HarnessError, MeasureWindow, Session};
use crate::http_client::HttpError;
use crate::measure::{dup_reorder, rss_per_viewer, Tally};
use crate::probe::Kind;
use crate::server_probe::{delta, sample_proc, WindowSample};
use crate::stats::{JoinSummary, RunResult};

#[derive(Debug, Clone)]
pub struct RoomsConfig {
    pub target: String,
    /// Rooms are `{prefix}-{i}`.
    pub room_prefix: String,
    pub rooms: usize,
    pub publishers_per_room: usize,
    pub viewers_per_room: usize,
    /// Traffic of every publisher (each gets its own stream id).
    pub publisher: PublisherConfig,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub connect_timeout: Duration,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

/// One room's sessions.
struct Room {
    name: String,
    /// Publishers the server accepted (the first one is measured).
    publishers: Vec<Session>,
    viewers: Vec<Session>,
}

/// Refused or failed sessions, by reason.
#[derive(Debug, Default)]
struct Refusals {
    by_status: BTreeMap<String, u64>,
    first_message: Option<String>,
}

impl Refusals {
    fn add(&mut self, e: &HarnessError) {
        let key = match e {
            HarnessError::Http(HttpError::Status { status, .. }) => status.to_string(),
            _ => "error".to_string(),
        };
        *self.by_status.entry(key).or_default() += 1;
        self.first_message.get_or_insert_with(|| e.to_string());
    }
    fn total(&self) -> u64 {
        self.by_status.values().sum()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!(self.by_status)
    }
}

pub fn run(cfg: &RoomsConfig) -> Result<RunResult, HarnessError> {
    let h = Harness::new(&cfg.target, cfg.threads)?;
    let mut rooms: Vec<Room> = Vec::with_capacity(cfg.rooms);
    let res = run_with(cfg, &h, &mut rooms);
    for room in &rooms {
        for s in room.viewers.iter().chain(&room.publishers) {
            if let Err(e) = h.delete(s) {
                eprintln!("DELETE {}: {e}", s.location);
            }
        }
    }
    res
}

fn run_with(cfg: &RoomsConfig, h: &Harness, rooms: &mut Vec<Room>) -> Result<RunResult, HarnessError> {
    let t0 = Instant::now();
    let mut pub_refused = Refusals::default();
    let mut view_refused = Refusals::default();
    for r in 0..cfg.rooms {
        let name = format!("{}-{r}", cfg.room_prefix);
        let mut publishers = Vec::new();
        for _ in 0..cfg.publishers_per_room {
            let pc = PublisherConfig { stream_id: next_stream_id(), ..cfg.publisher };
            match h.publish(&name, pc) {
                Ok(s) => publishers.push(s),
                Err(e) => pub_refused.add(&e),
            }
        }
        rooms.push(Room { name, publishers, viewers: Vec::new() });
    }
    if let Some(msg) = &pub_refused.first_message {
        eprintln!("rooms: {} WHIP POST(s) refused, e.g. {msg}", pub_refused.total());
    }
    let measured: Vec<&Session> = rooms.iter().filter_map(|r| r.publishers.first()).collect();
    Harness::wait_for(cfg.connect_timeout, "the publishers to connect", || measured.iter().all(|p| p.peer.connected()))?;
    let rss_before = cfg.server_pid.and_then(sample_proc).map(|p| p.rss_bytes);

    for room in rooms.iter_mut() {
        if room.publishers.is_empty() {
            continue; // nothing to watch
        }
        for _ in 0..cfg.viewers_per_room {
            match h.view(&room.name) {
                Ok(s) => room.viewers.push(s),
                Err(e) => view_refused.add(&e),
            }
        }
    }
    if let Some(msg) = &view_refused.first_message {
        eprintln!("rooms: {} WHEP POST(s) failed, e.g. {msg}", view_refused.total());
    }
    let all_viewers = || rooms.iter().flat_map(|r| r.viewers.iter());
    let deadline = Instant::now() + cfg.connect_timeout;
    while Instant::now() < deadline && !all_viewers().all(|v| v.peer.first_video().is_some() || v.peer.dead()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let join_ms: Vec<f64> = all_viewers().filter_map(|v| v.join_time()).map(ms).collect();
    let post_ms: Vec<f64> = all_viewers().map(|v| ms(v.post_duration)).collect();
    let connect_ms: Vec<f64> = all_viewers().filter_map(|v| v.connect_time()).map(ms).collect();
    if cfg.progress {
        eprintln!("[{:6.1}s] rooms: {} viewers with video; warm-up", t0.elapsed().as_secs_f64(), join_ms.len());
    }
    std::thread::sleep(cfg.warmup);

    // One window per room, opened and closed together.
    let live: Vec<&Room> = rooms.iter().filter(|r| !r.publishers.is_empty()).collect();
    let before: Vec<Vec<(u64, u64)>> =
        live.iter().map(|r| r.viewers.iter().map(|v| dup_reorder(&v.peer.stats())).collect()).collect();
    let s0 = WindowSample::take(h.http(), cfg.server_pid);
    let mut windows: Vec<MeasureWindow> = live.iter().map(|r| MeasureWindow::open(&r.publishers[0], &r.viewers)).collect();
    let end_at = Instant::now() + cfg.duration;
    while Instant::now() < end_at {
        std::thread::sleep(end_at.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        if cfg.progress {
            let rx: u64 = all_viewers().map(|v| v.peer.stats().kinds.iter().map(|k| k.packets).sum::<u64>()).sum();
            eprintln!("[{:6.1}s] measure: viewers received {rx} packets so far", t0.elapsed().as_secs_f64());
        }
    }
    for (w, r) in windows.iter_mut().zip(&live) {
        w.close(&r.publishers[0], &r.viewers);
    }
    let s1 = WindowSample::take(h.http(), cfg.server_pid);
    std::thread::sleep(Duration::from_millis(300));

    let mut tally = Tally::default();
    let mut sent_total = 0;
    for ((room, w), b) in live.iter().zip(&windows).zip(&before) {
        let sent = w.sent(Kind::Video) + w.sent(Kind::Audio);
        sent_total += sent;
        for (v, b) in room.viewers.iter().zip(b) {
            tally.viewer(v.peer.first_video().is_some(), &v.peer.stats(), sent, *b);
        }
    }
    let d = delta(&s0, &s1);
    let (ppf, bytes) = cfg.publisher.frame_shape();
    let accepted: usize = rooms.iter().map(|r| r.publishers.len()).sum();
    let mut out = RunResult {
        scenario: "rooms".into(),
        target: cfg.target.clone(),
        room: format!("{}-*", cfg.room_prefix),
        viewers_requested: cfg.rooms * cfg.viewers_per_room,
        threads: h.threads(),
        bitrate_bps: cfg.publisher.bitrate_bps,
        fps: cfg.publisher.fps,
        packets_per_frame: ppf,
        video_payload_bytes: bytes,
        join_ms: JoinSummary::of(&join_ms),
        post_ms: JoinSummary::of(&post_ms),
        connect_ms: JoinSummary::of(&connect_ms),
        packets_sent: sent_total,
        duration_s: s1.at.saturating_duration_since(s0.at).as_secs_f64(),
        ..RunResult::default()
    };
    tally.fill(&mut out);
    d.fill(&mut out);
    out.server_rss_bytes_per_viewer = rss_per_viewer(rss_before, d.rss_bytes, out.viewers_connected);
    let x = &mut out.extra;
    x.insert("rooms".into(), cfg.rooms.into());
    x.insert("publishers_per_room".into(), cfg.publishers_per_room.into());
    x.insert("viewers_per_room".into(), cfg.viewers_per_room.into());
    x.insert("publishers_requested".into(), (cfg.rooms * cfg.publishers_per_room).into());
    x.insert("publishers_accepted".into(), accepted.into());
    x.insert("publishers_measured".into(), live.len().into());
    x.insert("publishers_refused".into(), pub_refused.json());
    x.insert("publisher_refusal".into(), pub_refused.first_message.clone().into());
    x.insert("viewers_refused".into(), view_refused.json());
    Ok(out)
}

/// The human summary: the fan-out summary plus what happened to extra publishers.
pub fn summary(r: &RunResult) -> String {
    let g = |k: &str| r.extra.get(k).cloned().unwrap_or_default();
    let mut s = format!(
        "rooms: {} rooms × ({} publishers, {} viewers): publishers accepted {}/{}, refused {}\n",
        g("rooms"),
        g("publishers_per_room"),
        g("viewers_per_room"),
        g("publishers_accepted"),
        g("publishers_requested"),
        g("publishers_refused"),
    );
    if let Some(m) = g("publisher_refusal").as_str() {
        s.push_str(&format!("  first refusal: {m}\n"));
    }
    s.push_str(&crate::fanout::summary(r));
    s
}
