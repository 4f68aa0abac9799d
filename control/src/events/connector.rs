//! The events connector: one plain std thread that drains the cores' [`EventBus`] queue and ships every
//! event as JSON to NATS (`--nats-url`, subject `sfumato.events.<kind>`) and/or an HTTP hook (`--hook-url`,
//! one POST per event).
//!
//! Each sink keeps its own bounded [`Outbox`] of events not yet acknowledged. While a sink is down the outbox
//! fills; when it is full the *oldest* event is dropped and counted, so what is delivered after a reconnect
//! is the most recent history, continuous with the live stream. A sink reconnects with exponential backoff
//! (100 ms doubling to 5 s) and then delivers everything it held, in order.
//!
//! Delivery is at-least-once: an event leaves the outbox only once the far end confirmed it (NATS: the
//! `PONG` answering the `PING` written after it; HTTP: a 2xx response). Anything written to a connection
//! that then died is written again after the reconnect, so a consumer may see duplicates but not gaps
//! (other than counted drops).
//!
//! Nothing here ever blocks a core: cores only `try_send` into the bounded bus queue. All sockets are
//! non-blocking except the TCP connect itself (bounded by [`CONNECT_TIMEOUT`]).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::hook::HookSink;
use super::nats::NatsSink;
use super::{BusCounters, EventBus, EventRecord};

/// Default size of each sink's outbox (events held while the sink is unreachable).
pub const DEFAULT_BUFFER: usize = 10_000;
/// Events the cores may queue for the connector thread before `emit` starts dropping.
pub const BUS_CAPACITY: usize = 8192;
/// First reconnect delay; doubles on every failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bound on the (blocking) TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// When the bus closes, how long the thread keeps trying to deliver what it still holds.
pub const FINAL_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// `nats://[user:pass@]host[:port]` (several, comma-separated, are tried in turn).
    pub nats_url: Option<String>,
    /// `http://host[:port]/path`: every event is POSTed there as `application/json`.
    pub hook_url: Option<String>,
    /// Outbox size per sink.
    pub buffer: usize,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self { nats_url: None, hook_url: None, buffer: DEFAULT_BUFFER }
    }
}

/// Counters of one sink, updated by the connector thread, readable from anywhere.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// The sink is configured.
    pub enabled: AtomicBool,
    /// Events the far end acknowledged.
    pub published: AtomicU64,
    /// Events lost: outbox overflow, oversized, or permanently rejected (HTTP 4xx).
    pub dropped: AtomicU64,
    /// Events held, not yet acknowledged.
    pub buffered: AtomicU64,
    pub connected: AtomicBool,
    /// Successful connects after the first one.
    pub reconnects: AtomicU64,
}

impl SinkStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "published": self.published.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "buffered": self.buffered.load(Ordering::Relaxed),
            "connected": self.connected.load(Ordering::Relaxed),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
        })
    }
}

/// Connector-wide counters. The top-level fields sum over the configured sinks (an event delivered to
/// both NATS and the hook counts twice in `published`); `connected` means every configured sink is up.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    /// Events taken off the bus.
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub buffered: AtomicU64,
    pub connected: AtomicBool,
    pub nats: SinkStats,
    pub hook: SinkStats,
    /// The bus's own counters (events queued by the cores, dropped at a full queue), set at start.
    bus: OnceLock<BusCounters>,
}

impl ConnectorStats {
    /// Events the cores queued that the connector thread has not taken yet.
    pub fn queue_depth(&self) -> u64 {
        let accepted = self.bus.get().map_or(0, |b| b.accepted.load(Ordering::Relaxed));
        accepted.saturating_sub(self.received.load(Ordering::Relaxed))
    }

    /// Events dropped because the queue from the cores was full.
    pub fn queue_dropped(&self) -> u64 {
        self.bus.get().map_or(0, |b| b.dropped.load(Ordering::Relaxed))
    }

    /// For `/healthz`-style JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "queued": self.queue_depth(),
            "queue_dropped": self.queue_dropped(),
            "received": self.received.load(Ordering::Relaxed),
            "published": self.published.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "buffered": self.buffered.load(Ordering::Relaxed),
            "connected": self.connected.load(Ordering::Relaxed),
        });
        for (name, s) in [("nats", &self.nats), ("hook", &self.hook)] {
            if s.enabled.load(Ordering::Relaxed) {
                v[name] = s.snapshot();
            }
        }
        v
    }

    /// Prometheus text: the queue from the cores, then per sink (`sink="nats"|"hook"`, configured ones only).
    pub fn render_metrics(&self, out: &mut String) {
        use crate::stats::header;
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            header(out, name, help, "gauge");
            out.push_str(&format!("{name} {v}\n"));
        };
        gauge(out, "sfumato_events_queue_depth", "Events queued by the cores, not yet taken by the events connector", self.queue_depth());
        header(out, "sfumato_events_received_total", "Events the events connector took from the queue", "counter");
        out.push_str(&format!("sfumato_events_received_total {}\n", self.received.load(Ordering::Relaxed)));
        let sinks: Vec<(&str, &SinkStats)> =
            [("nats", &self.nats), ("hook", &self.hook)].into_iter().filter(|(_, s)| s.enabled.load(Ordering::Relaxed)).collect();
        type Get = fn(&SinkStats) -> u64;
        let per_sink: [(&str, &str, &str, Get); 5] = [
            ("sfumato_events_buffered", "gauge", "Events a sink holds, not yet acknowledged by the far end", |s| {
                s.buffered.load(Ordering::Relaxed)
            }),
            ("sfumato_events_connected", "gauge", "Whether a sink is connected (1) or reconnecting (0)", |s| {
                s.connected.load(Ordering::Relaxed) as u64
            }),
            ("sfumato_events_published_total", "counter", "Events a sink delivered (acknowledged by the far end)", |s| {
                s.published.load(Ordering::Relaxed)
            }),
            ("sfumato_events_dropped_total", "counter", "Events a sink lost: outbox overflow, oversized, or rejected", |s| {
                s.dropped.load(Ordering::Relaxed)
            }),
            ("sfumato_events_reconnects_total", "counter", "Successful reconnects of a sink after its first connect", |s| {
                s.reconnects.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, help, get) in per_sink {
            header(out, name, help, kind);
            for (sink, s) in &sinks {
                out.push_str(&format!("{name}{{sink=\"{sink}\"}} {}\n", get(s)));
            }
        }
    }

    fn refresh_totals(&self) {
        let sinks = [&self.nats, &self.hook];
        let on = || sinks.iter().filter(|s| s.enabled.load(Ordering::Relaxed));
        let sum = |f: fn(&SinkStats) -> u64| on().map(|s| f(s)).sum::<u64>();
        self.published.store(sum(|s| s.published.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.dropped.store(sum(|s| s.dropped.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.buffered.store(sum(|s| s.buffered.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.connected.store(on().all(|s| s.connected.load(Ordering::Relaxed)), Ordering::Relaxed);
    }
}

/// The running connector thread.
pub struct Connector {
    pub stats: Arc<ConnectorStats>,
    handle: JoinHandle<()>,
    closing: Arc<AtomicBool>,
}

impl Connector {
    /// Call once the cores have stopped (every [`EventBus`] clone dropped, or about to be): the thread
    /// takes what is still queued, tries for up to [`FINAL_FLUSH`] to deliver it, and exits. Waits at most
    /// `timeout` for that; returns whether the thread finished (if not it is left running, detached).
    pub fn finish(self, timeout: Duration) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        self.handle.thread().unpark();
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    undelivered = self.stats.buffered.load(Ordering::Relaxed),
                    "events connector did not finish within {timeout:?}; leaving it"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.handle.join();
        true
    }

    #[cfg(test)]
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

static ACTIVE: OnceLock<Arc<ConnectorStats>> = OnceLock::new();

/// The counters of the connector this process started (the first one), for `/healthz`.
pub fn active_stats() -> Option<&'static Arc<ConnectorStats>> {
    ACTIVE.get()
}

/// Starts the connector thread if any sink is configured and returns the bus the cores emit into (a
/// disabled bus and `None` when nothing is configured). Invalid URLs are `InvalidInput` errors.
pub fn start(node: &str, cfg: ConnectorConfig) -> io::Result<(EventBus, Option<Connector>)> {
    let nats_url = cfg.nats_url.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let hook_url = cfg.hook_url.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let stats = Arc::new(ConnectorStats::default());
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(url) = nats_url {
        let servers = super::nats::parse_urls(url).map_err(invalid("--nats-url"))?;
        stats.nats.enabled.store(true, Ordering::Relaxed);
        sinks.push(Box::new(NatsSink::new(servers, cfg.buffer, stats.clone())));
    }
    if let Some(url) = hook_url {
        let target = super::hook::parse_url(url).map_err(invalid("--hook-url"))?;
        stats.hook.enabled.store(true, Ordering::Relaxed);
        sinks.push(Box::new(HookSink::new(target, cfg.buffer, stats.clone())));
    }
    if sinks.is_empty() {
        return Ok((EventBus::disabled(node), None));
    }
    let _ = ACTIVE.set(stats.clone());
    let (bus, rx) = EventBus::bounded(node, BUS_CAPACITY);
    let _ = stats.bus.set(bus.counters());
    let closing = Arc::new(AtomicBool::new(false));
    let (st, cl) = (stats.clone(), closing.clone());
    let handle = std::thread::Builder::new()
        .name("sfumato-events".into())
        .spawn(move || run(rx, sinks, st, cl, FINAL_FLUSH))?;
    Ok((bus, Some(Connector { stats, handle, closing })))
}

fn invalid(flag: &'static str) -> impl Fn(String) -> io::Error {
    move |e| io::Error::new(io::ErrorKind::InvalidInput, format!("{flag}: {e}"))
}

/// For clap's `value_parser`: accepts a valid `--nats-url` unchanged.
pub fn validate_nats_url(s: &str) -> Result<String, String> {
    super::nats::parse_urls(s).map(|_| s.to_string())
}

/// For clap's `value_parser`: accepts a valid `--hook-url` unchanged.
pub fn validate_hook_url(s: &str) -> Result<String, String> {
    super::hook::parse_url(s).map(|_| s.to_string())
}

/// This machine's host name (the default node id), or `standalone`.
pub fn default_node_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_string()
    } else {
        String::new()
    };
    if name.is_empty() {
        "standalone".into()
    } else {
        name
    }
}

// ---- the thread ------------------------------------------------------------------------------------------

/// One event, serialized once and shared by every sink's outbox.
#[derive(Debug)]
pub struct Payload {
    pub kind: &'static str,
    pub subject: String,
    pub json: Vec<u8>,
}

impl Payload {
    pub fn of(ev: &EventRecord) -> Self {
        // EventRecord is plain strings, numbers and a serde_json::Value: serializing cannot fail.
        let json = serde_json::to_vec(ev).unwrap_or_else(|_| b"{}".to_vec());
        Self { kind: ev.kind, subject: ev.subject(), json }
    }
}

/// A destination for events. Everything is non-blocking apart from the TCP connect.
pub(crate) trait Sink: Send {
    fn name(&self) -> &'static str;
    fn enqueue(&mut self, p: Arc<Payload>);
    /// Performs whatever I/O is possible now; returns when it next wants to run.
    fn pump(&mut self, now: Instant) -> Instant;
    /// Events held and not yet acknowledged.
    fn pending(&self) -> usize;
    /// Shutting down: log what is lost, close the connection.
    fn close(&mut self);
}

/// Most events taken off the bus before the sinks get to write them (so writes batch up).
const DRAIN_BATCH: usize = 4096;
const MAX_WAIT: Duration = Duration::from_millis(200);

fn run(
    rx: Receiver<EventRecord>,
    mut sinks: Vec<Box<dyn Sink>>,
    stats: Arc<ConnectorStats>,
    closing: Arc<AtomicBool>,
    final_flush: Duration,
) {
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    tracing::info!(sinks = ?names, "events connector started");
    let mut next_wake = Instant::now();
    loop {
        let now = Instant::now();
        let wait = next_wake.saturating_duration_since(now).clamp(Duration::from_millis(1), MAX_WAIT);
        let mut open = true;
        match rx.recv_timeout(wait) {
            Ok(ev) => {
                dispatch(&ev, &mut sinks, &stats);
                for _ in 0..DRAIN_BATCH {
                    match rx.try_recv() {
                        Ok(ev) => dispatch(&ev, &mut sinks, &stats),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if closing.load(Ordering::SeqCst) {
            // Cores are gone (or going): take whatever they managed to queue, then stop.
            while let Ok(ev) = rx.try_recv() {
                dispatch(&ev, &mut sinks, &stats);
            }
            open = false;
        }
        next_wake = pump_all(&mut sinks, &stats);
        if !open {
            break;
        }
    }
    // Final flush: keep pumping until everything is acknowledged or the deadline passes.
    let deadline = Instant::now() + final_flush;
    while sinks.iter().any(|s| s.pending() > 0) && Instant::now() < deadline {
        let wake = pump_all(&mut sinks, &stats);
        let nap = wake.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), Duration::from_millis(20));
        std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
    }
    for s in &mut sinks {
        s.close();
    }
    stats.refresh_totals();
    tracing::info!(stats = %stats.snapshot(), "events connector stopped");
}

fn dispatch(ev: &EventRecord, sinks: &mut [Box<dyn Sink>], stats: &ConnectorStats) {
    stats.received.fetch_add(1, Ordering::Relaxed);
    let p = Arc::new(Payload::of(ev));
    for s in sinks.iter_mut() {
        s.enqueue(p.clone());
    }
}

fn pump_all(sinks: &mut [Box<dyn Sink>], stats: &ConnectorStats) -> Instant {
    let now = Instant::now();
    let mut wake = now + MAX_WAIT;
    for s in sinks.iter_mut() {
        wake = wake.min(s.pump(now));
    }
    stats.refresh_totals();
    wake
}

// ---- shared pieces: outbox, backoff, rate-limited logging -------------------------------------------------

/// The bounded, ordered buffer of one sink: events not yet acknowledged by the far end.
///
/// The front `written` events have been written to the current connection; they are grouped into
/// `batches`, each closed by an acknowledgement request (NATS `PING`, one HTTP request), and leave the
/// outbox when that batch is acknowledged. Losing the connection rewinds: everything is unwritten again.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Arc<Payload>>,
    cap: usize,
    written: usize,
    batches: VecDeque<usize>,
    open: usize,
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Self { queue: VecDeque::with_capacity(cap.min(1024)), cap, written: 0, batches: VecDeque::new(), open: 0 }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Adds an event at the back. When the outbox is full the oldest event is dropped; returns how many
    /// were dropped (0 or 1; with capacity 0 the new event itself).
    pub fn push(&mut self, p: Arc<Payload>) -> u64 {
        if self.cap == 0 {
            return 1;
        }
        let mut dropped = 0;
        while self.queue.len() >= self.cap {
            self.drop_front();
            dropped += 1;
        }
        self.queue.push_back(p);
        dropped
    }

    fn drop_front(&mut self) {
        if self.queue.pop_front().is_none() {
            return;
        }
        if self.written > 0 {
            self.written -= 1;
            // The oldest written event belongs to the first non-empty batch, else to the open one.
            match self.batches.iter_mut().find(|b| **b > 0) {
                Some(b) => *b -= 1,
                None => self.open = self.open.saturating_sub(1),
            }
        }
    }

    /// The next event to write to the current connection.
    pub fn next_unwritten(&self) -> Option<&Arc<Payload>> {
        self.queue.get(self.written)
    }

    /// Events not yet written to the current connection.
    pub fn unwritten(&self) -> usize {
        self.queue.len() - self.written
    }

    /// Removes the next unwritten event without writing it (it can never be delivered).
    pub fn discard_next_unwritten(&mut self) -> Option<Arc<Payload>> {
        self.queue.remove(self.written)
    }

    /// The event returned by [`Self::next_unwritten`] has been written.
    pub fn mark_written(&mut self) {
        debug_assert!(self.written < self.queue.len());
        if self.written < self.queue.len() {
            self.written += 1;
            self.open += 1;
        }
    }

    /// Events written since the last [`Self::end_batch`].
    pub fn open_batch(&self) -> usize {
        self.open
    }

    /// An acknowledgement request was written after the open batch (possibly empty); returns its size.
    pub fn end_batch(&mut self) -> usize {
        let n = self.open;
        self.batches.push_back(n);
        self.open = 0;
        n
    }

    /// Batches waiting for their acknowledgement.
    #[cfg(test)]
    pub fn batches_outstanding(&self) -> usize {
        self.batches.len()
    }

    /// The oldest outstanding batch was acknowledged: its events leave the outbox. Returns how many.
    pub fn ack(&mut self) -> usize {
        let Some(n) = self.batches.pop_front() else { return 0 };
        let n = n.min(self.written);
        self.queue.drain(..n);
        self.written -= n;
        n
    }

    /// The connection is gone: nothing is written any more, everything will be written again.
    pub fn rewind(&mut self) {
        self.written = 0;
        self.batches.clear();
        self.open = 0;
    }
}

/// Exponential reconnect backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next_delay: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next_delay: min, retry_at: None }
    }

    /// An attempt failed at `now`: the next one waits the current delay, which then doubles (capped).
    pub fn failed(&mut self, now: Instant) -> Duration {
        let d = self.next_delay;
        self.retry_at = Some(now + d);
        self.next_delay = (d * 2).min(self.max);
        d
    }

    pub fn succeeded(&mut self) {
        self.next_delay = self.min;
        self.retry_at = None;
    }

    pub fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// When the next attempt may happen (`None`: now).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

/// Tracks a sink's outages so logs say "down" once, then at most every [`OutageLog::EVERY`].
#[derive(Debug, Default)]
pub struct OutageLog {
    down_since: Option<Instant>,
    last_warn: Option<Instant>,
    failures: u64,
}

impl OutageLog {
    const EVERY: Duration = Duration::from_secs(30);

    /// Records a failure; returns whether it deserves a warning (the first of an outage, then periodic).
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures += 1;
        self.down_since.get_or_insert(now);
        let warn = self.last_warn.is_none_or(|t| now.saturating_duration_since(t) >= Self::EVERY);
        if warn {
            self.last_warn = Some(now);
        }
        warn
    }

    /// The sink is up again; returns how long it was down, if it was.
    pub fn recovered(&mut self, now: Instant) -> Option<Duration> {
        self.last_warn = None;
        self.failures = 0;
        self.down_since.take().map(|t| now.saturating_duration_since(t))
    }

    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: usize) -> Arc<Payload> {
        Arc::new(Payload { kind: "peer.joined", subject: "sfumato.events.peer.joined".into(), json: format!("{i}").into_bytes() })
    }

    fn ids(o: &Outbox) -> Vec<String> {
        o.queue.iter().map(|p| String::from_utf8(p.json.clone()).unwrap()).collect()
    }

    #[test]
    fn outbox_batches_ack_in_order() {
        let mut o = Outbox::new(10);
        for i in 0..5 {
            assert_eq!(o.push(p(i)), 0);
        }
        for _ in 0..3 {
            o.mark_written();
        }
        assert_eq!(o.end_batch(), 3);
        o.mark_written();
        assert_eq!(o.end_batch(), 1);
        assert_eq!(o.unwritten(), 1);
        assert_eq!(o.ack(), 3);
        assert_eq!(ids(&o), ["3", "4"]);
        assert_eq!(o.next_unwritten().unwrap().json, b"4");
        assert_eq!(o.ack(), 1);
        assert_eq!(o.ack(), 0, "no batch outstanding");
        assert_eq!(ids(&o), ["4"]);
    }

    #[test]
    fn outbox_rewind_rewrites_unacknowledged() {
        let mut o = Outbox::new(10);
        for i in 0..4 {
            o.push(p(i));
        }
        o.mark_written();
        o.mark_written();
        o.end_batch();
        o.mark_written();
        o.rewind();
        assert_eq!(o.batches_outstanding(), 0);
        assert_eq!(o.open_batch(), 0);
        assert_eq!(o.unwritten(), 4);
        assert_eq!(o.next_unwritten().unwrap().json, b"0");
        assert_eq!(o.ack(), 0);
        assert_eq!(o.len(), 4);
    }

    #[test]
    fn outbox_overflow_drops_oldest_and_keeps_batches_consistent() {
        let mut o = Outbox::new(3);
        for i in 0..3 {
            o.push(p(i));
        }
        o.mark_written(); // 0
        o.end_batch(); // batch [0]
        o.end_batch(); // empty batch (idle ping)
        o.mark_written(); // 1, open
        assert_eq!(o.push(p(3)), 1); // drops 0 (written, in batch 1)
        assert_eq!(ids(&o), ["1", "2", "3"]);
        assert_eq!(o.push(p(4)), 1); // drops 1 (written, open batch)
        assert_eq!(ids(&o), ["2", "3", "4"]);
        assert_eq!(o.open_batch(), 0);
        assert_eq!(o.unwritten(), 3);
        assert_eq!(o.ack(), 0);
        assert_eq!(o.ack(), 0);
        assert_eq!(o.len(), 3, "acks of emptied batches remove nothing");
        assert_eq!(o.push(p(5)), 1);
        assert_eq!(ids(&o), ["3", "4", "5"]);
        let mut z = Outbox::new(0);
        assert_eq!(z.push(p(0)), 1);
        assert!(z.is_empty());
    }

    #[test]
    fn outbox_discard_skips_one() {
        let mut o = Outbox::new(5);
        for i in 0..3 {
            o.push(p(i));
        }
        o.mark_written();
        assert_eq!(o.discard_next_unwritten().unwrap().json, b"1");
        assert_eq!(ids(&o), ["0", "2"]);
        assert_eq!(o.next_unwritten().unwrap().json, b"2");
    }

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let t = Instant::now();
        assert!(b.ready(t));
        let seq: Vec<u128> = (0..9).map(|_| b.failed(t).as_millis()).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(!b.ready(t));
        assert!(b.ready(t + Duration::from_secs(5)));
        b.succeeded();
        assert!(b.ready(t));
        assert_eq!(b.failed(t).as_millis(), 100);
    }

    #[test]
    fn outage_log_warns_first_then_periodically() {
        let mut l = OutageLog::default();
        let t = Instant::now();
        assert!(l.failure(t));
        assert!(!l.failure(t + Duration::from_secs(1)));
        assert!(l.failure(t + Duration::from_secs(31)));
        assert_eq!(l.recovered(t + Duration::from_secs(40)), Some(Duration::from_secs(40)));
        assert_eq!(l.recovered(t), None);
        assert!(l.failure(t + Duration::from_secs(41)));
    }

    #[test]
    fn start_without_sinks_is_disabled_and_bad_urls_are_errors() {
        let (bus, c) = start("n", ConnectorConfig::default()).unwrap();
        assert!(!bus.is_enabled());
        assert!(c.is_none());
        let cfg = ConnectorConfig { nats_url: Some("http://x".into()), ..Default::default() };
        let e = start("n", cfg).err().expect("error");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("--nats-url"), "{e}");
        let cfg = ConnectorConfig { hook_url: Some("https://x/".into()), ..Default::default() };
        assert!(start("n", cfg).is_err());
        assert!(validate_nats_url("nats://u:p@h:4222").is_ok());
        assert!(validate_hook_url("http://h:80/p").is_ok());
        assert!(validate_hook_url("ftp://h").is_err());
        assert!(!default_node_id().is_empty());
    }

    #[test]
    fn thread_exits_when_bus_dropped() {
        // A sink that can never connect: the thread must still exit after the final-flush deadline.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = ConnectorConfig { nats_url: Some(format!("nats://127.0.0.1:{port}")), ..Default::default() };
        let (bus, c) = start("n", cfg).unwrap();
        let c = c.unwrap();
        bus.emit(EventRecord {
            kind: "room.created",
            node: "n".into(),
            room: "r".into(),
            peer: None,
            session: None,
            ts_ms: 1,
            data: serde_json::Value::Null,
        });
        drop(bus);
        let t0 = Instant::now();
        while !c.is_finished() {
            assert!(t0.elapsed() < FINAL_FLUSH + Duration::from_secs(3), "connector thread did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t0.elapsed() >= FINAL_FLUSH - Duration::from_millis(300), "gave up before the flush deadline");
        assert_eq!(c.stats.received.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.queue_depth(), 0, "the event was taken off the queue");
        assert_eq!(c.stats.buffered.load(Ordering::Relaxed), 1);
        let mut m = String::new();
        c.stats.render_metrics(&mut m);
        assert!(m.contains("# TYPE sfumato_events_queue_depth gauge\nsfumato_events_queue_depth 0\n"), "{m}");
        assert!(m.contains("sfumato_events_buffered{sink=\"nats\"} 1\n"), "{m}");
        assert!(m.contains("sfumato_events_connected{sink=\"nats\"} 0\n"), "{m}");
        assert!(m.contains("# TYPE sfumato_events_dropped_total counter\nsfumato_events_dropped_total{sink=\"nats\"} 0\n"), "{m}");
        assert!(!m.contains("sink=\"hook\""), "the hook is not configured: {m}");
        assert_eq!(c.stats.published.load(Ordering::Relaxed), 0);
        assert!(c.finish(Duration::from_secs(1)));
    }
}
