//! The `churn` scenario: viewers join and leave continuously; join time, failures, and a leak check.
//!
//! Why it exists: a live event's audience is never static. Every `1/rate` seconds a viewer POSTs to
//! `/whep/{room}`, stays `lifetime`, and is DELETEd — whether or not it got video (then it counts as a
//! failure). After the last one left and the publisher was deleted, `/healthz` `sessions` must return to
//! what it was before the run (`sessions_leaked` = 0), and the server's RSS is compared before/after.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::PublisherConfig;
use crate::harness::{Harness, HarnessError, Session};
use crate::server_probe::{delta, sample_proc, ServerCounters, WindowSample};
use crate::stats::JoinSummary;

#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub target: String,
    pub room: String,
    /// Joins per second.
    pub rate_per_s: f64,
    /// How long viewers keep joining.
    pub duration: Duration,
    /// How long each viewer stays.
    pub lifetime: Duration,
    pub publisher: PublisherConfig,
    pub threads: usize,
    pub connect_timeout: Duration,
    /// How long to wait for `/healthz` sessions to return to the baseline.
    pub settle_timeout: Duration,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

/// The result of a churn run, as written by `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnResult {
    pub scenario: String,
    pub target: String,
    pub room: String,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub lifetime_s: f64,
    pub viewers_attempted: u64,
    /// Got video within their lifetime.
    pub viewers_joined: u64,
    /// WHEP POST failed (status or transport).
    pub post_failures: u64,
    /// POST succeeded but no video arrived before the viewer's lifetime ended.
    pub no_video_failures: u64,
    pub delete_failures: u64,
    /// Up to 5 error messages, for diagnosis.
    pub errors: Vec<String>,
    pub join_ms: Option<JoinSummary>,
    pub post_ms: Option<JoinSummary>,
    pub connect_ms: Option<JoinSummary>,
    /// `/healthz` sessions before the publisher connected, the highest seen, and after everything left.
    pub sessions_before: Option<u64>,
    pub sessions_peak: Option<u64>,
    pub sessions_after: Option<u64>,
    /// `sessions_after − sessions_before` (should be 0).
    pub sessions_leaked: Option<i64>,
    /// Time from the publisher's DELETE until sessions were back to the baseline.
    pub settle_ms: Option<f64>,
    pub server_rss_bytes_before: Option<u64>,
    pub server_rss_bytes_after: Option<u64>,
    /// Always null here: RSS per viewer is meaningless with viewers coming and going (kept for a uniform shape).
    pub server_rss_bytes_per_viewer: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub harness_cpu_percent: Option<f64>,
    pub other_cpu_percent: Option<f64>,
}

/// A viewer between join and leave.
struct Live {
    session: Session,
    leave_at: Instant,
}

/// Counts and samples collected while churning.
#[derive(Default)]
struct Book {
    attempted: u64,
    joined: u64,
    post_failures: u64,
    no_video: u64,
    delete_failures: u64,
    errors: Vec<String>,
    join_ms: Vec<f64>,
    post_ms: Vec<f64>,
    connect_ms: Vec<f64>,
    sessions_peak: Option<u64>,
}

impl Book {
    fn error(&mut self, e: String) {
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }

    /// A viewer's lifetime is over: account it and DELETE it.
    fn leave(&mut self, h: &Harness, l: Live) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match l.session.join_time() {
            Some(j) => {
                self.joined += 1;
                self.join_ms.push(ms(j));
            }
            None => {
                self.no_video += 1;
                self.error(format!("{}: no video within its lifetime{}", l.session.location, l.session.peer.error().map(|e| format!(" ({e})")).unwrap_or_default()));
            }
        }
        if let Some(c) = l.session.connect_time() {
            self.connect_ms.push(ms(c));
        }
        if let Err(e) = h.delete(&l.session) {
            self.delete_failures += 1;
            self.error(format!("DELETE {}: {e}", l.session.location));
        }
    }
}

/// When viewer `i` is due to join (evenly spaced at `rate` per second).
pub fn join_due(start: Instant, i: u64, rate_per_s: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate_per_s.max(1e-3))
}

/// `after − before` as a signed leak count.
pub fn leaked(before: Option<u64>, after: Option<u64>) -> Option<i64> {
    before.zip(after).map(|(b, a)| a as i64 - b as i64)
}

pub fn run(cfg: &ChurnConfig) -> Result<ChurnResult, HarnessError> {
    let h = Harness::new(&cfg.target, cfg.threads)?;
    let sessions_before = ServerCounters::fetch(h.http()).ok().map(|c| c.sessions);
    let rss_before = cfg.server_pid.and_then(sample_proc).map(|p| p.rss_bytes);
    let publisher = h.publish(&cfg.room, cfg.publisher)?;
    if let Err(e) = Harness::wait_for(cfg.connect_timeout, "the publisher to connect", || publisher.peer.connected()) {
        let _ = h.delete(&publisher);
        return Err(e);
    }
    let s0 = WindowSample::take(h.http(), cfg.server_pid);
    let book = churn(cfg, &h);
    let s1 = WindowSample::take(h.http(), cfg.server_pid);
    let mut book = book;

    // Leak check: everything gone → sessions back to the baseline.
    let deleted_at = Instant::now();
    if let Err(e) = h.delete(&publisher) {
        book.delete_failures += 1;
        book.error(format!("DELETE publisher: {e}"));
    }
    let mut sessions_after = None;
    let mut settle_ms = None;
    while deleted_at.elapsed() < cfg.settle_timeout {
        sessions_after = ServerCounters::fetch(h.http()).ok().map(|c| c.sessions);
        if sessions_after.is_some() && sessions_after == sessions_before {
            settle_ms = Some(deleted_at.elapsed().as_secs_f64() * 1e3);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_after = cfg.server_pid.and_then(sample_proc).map(|p| p.rss_bytes);
    let d = delta(&s0, &s1);
    Ok(ChurnResult {
        scenario: "churn".into(),
        target: cfg.target.clone(),
        room: cfg.room.clone(),
        rate_per_s: cfg.rate_per_s,
        duration_s: s1.at.saturating_duration_since(s0.at).as_secs_f64(),
        lifetime_s: cfg.lifetime.as_secs_f64(),
        viewers_attempted: book.attempted,
        viewers_joined: book.joined,
        post_failures: book.post_failures,
        no_video_failures: book.no_video,
        delete_failures: book.delete_failures,
        errors: book.errors,
        join_ms: JoinSummary::of(&book.join_ms),
        post_ms: JoinSummary::of(&book.post_ms),
        connect_ms: JoinSummary::of(&book.connect_ms),
        sessions_before,
        sessions_peak: book.sessions_peak,
        sessions_after,
        sessions_leaked: leaked(sessions_before, sessions_after),
        settle_ms,
        server_rss_bytes_before: rss_before,
        server_rss_bytes_after: rss_after,
        server_rss_bytes_per_viewer: None,
        server_cpu_percent: d.server_cpu_percent,
        harness_cpu_percent: d.harness_cpu_percent,
        other_cpu_percent: d.other_cpu_percent,
    })
}

/// Joins at `rate` for `duration`, each viewer leaving after `lifetime`; returns when the last left.
fn churn(cfg: &ChurnConfig, h: &Harness) -> Book {
    let mut book = Book::default();
    let mut live: VecDeque<Live> = VecDeque::new();
    let start = Instant::now();
    let stop_joining = start + cfg.duration;
    let mut next_sample = start;
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        let due = join_due(start, i, cfg.rate_per_s);
        if due < stop_joining && now >= due {
            i += 1;
            book.attempted += 1;
            match h.view(&cfg.room) {
                Ok(s) => {
                    book.post_ms.push(s.post_duration.as_secs_f64() * 1e3);
                    let leave_at = s.post_started + cfg.lifetime;
                    live.push_back(Live { session: s, leave_at });
                }
                Err(e) => {
                    book.post_failures += 1;
                    book.error(format!("WHEP POST: {e}"));
                }
            }
            continue;
        }
        // Lifetimes are equal, so the queue is in leave order.
        while live.front().is_some_and(|l| l.leave_at <= now) {
            if let Some(l) = live.pop_front() {
                book.leave(h, l);
            }
        }
        if now >= next_sample {
            next_sample += Duration::from_secs(1);
            if let Ok(c) = ServerCounters::fetch(h.http()) {
                book.sessions_peak = Some(book.sessions_peak.unwrap_or(0).max(c.sessions));
                if cfg.progress {
                    eprintln!(
                        "[{:5.1}s] churn: joined {} / attempted {}, live {}, failures {}, server sessions {}",
                        start.elapsed().as_secs_f64(),
                        book.joined,
                        book.attempted,
                        live.len(),
                        book.post_failures + book.no_video,
                        c.sessions
                    );
                }
            }
        }
        if now >= stop_joining && live.is_empty() {
            return book;
        }
        let mut wake = next_sample;
        if due < stop_joining {
            wake = wake.min(due);
        }
        if let Some(l) = live.front() {
            wake = wake.min(l.leave_at);
        }
        std::thread::sleep(wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(20)));
    }
}

/// The human summary.
pub fn summary(r: &ChurnResult) -> String {
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into());
    let mib = |v: Option<u64>| v.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "n/a".into());
    let mut s = format!(
        "churn {} room {}: {:.1} joins/s for {:.0} s, each viewer stays {:.1} s\n",
        r.target, r.room, r.rate_per_s, r.duration_s, r.lifetime_s
    );
    s.push_str(&format!(
        "  viewers: {} attempted, {} got video; failures: POST {}, no video {}, DELETE {}\n",
        r.viewers_attempted, r.viewers_joined, r.post_failures, r.no_video_failures, r.delete_failures
    ));
    for (name, j) in [("join (POST → first video)", r.join_ms), ("  of which POST", r.post_ms), ("  POST → connected", r.connect_ms)] {
        if let Some(j) = j {
            s.push_str(&format!("  {name}: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n", j.p50, j.p99, j.max));
        }
    }
    s.push_str(&format!(
        "  server sessions: before {}, peak {}, after {} → leaked {}{}\n",
        opt(r.sessions_before),
        opt(r.sessions_peak),
        opt(r.sessions_after),
        r.sessions_leaked.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into()),
        r.settle_ms.map(|v| format!(" (back to baseline {v:.0} ms after the last DELETE)")).unwrap_or_default()
    ));
    s.push_str(&format!("  server RSS: before {}, after {}\n", mib(r.server_rss_bytes_before), mib(r.server_rss_bytes_after)));
    for e in &r.errors {
        s.push_str(&format!("  error: {e}\n"));
    }
    if let (Some(h), Some(o)) = (r.harness_cpu_percent, r.other_cpu_percent) {
        s.push_str(&format!(
            "  server CPU {}, harness CPU {h:.1}%, other processes {o:.1}%{}\n",
            r.server_cpu_percent.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "n/a".into()),
            if o > 10.0 { "  (machine busy: numbers are noisy)" } else { "" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_leak() {
        let t = Instant::now();
        assert_eq!(join_due(t, 0, 10.0), t);
        assert_eq!(join_due(t, 25, 10.0), t + Duration::from_millis(2500));
        assert_eq!(leaked(Some(0), Some(2)), Some(2));
        assert_eq!(leaked(Some(3), Some(3)), Some(0));
        assert_eq!(leaked(None, Some(3)), None);
        let r = ChurnResult { scenario: "churn".into(), sessions_leaked: Some(0), ..Default::default() };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["scenario"], "churn");
        assert!(v.get("target").is_some() && v.get("server_rss_bytes_per_viewer").is_some());
    }
}
