//! The `floor` scenario: the fan-out of `fanout` done with plain UDP and no crypto, to show the
//! syscall/kernel floor of this machine.
//!
//! Why it exists: "25 µs of server CPU per forwarded packet" means little without knowing what the same
//! fan-out costs when a program does nothing but `recvmmsg` + `sendmmsg`. The reflector
//! ([`crate::reflector`]) runs as a thread pinned where the server would run (`--reflector-cpu`, CPU 0
//! by default); the publisher and viewers ([`crate::udp_peers`]) send and measure exactly like the
//! WebRTC peers. `server_*` fields of the result describe the reflector.

use std::time::{Duration, Instant};

use crate::client::PublisherConfig;
use crate::measure::{dup_reorder, Tally};
use crate::probe::Kind;
use crate::reflector::{Reflector, ReflectorSnapshot, SendMode};
use crate::server_probe::{machine_busy_ns, self_cpu_ns};
use crate::stats::{RunResult, Window};
use crate::udp_peers::{UdpPublisher, UdpViewers};

#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub viewers: usize,
    pub publisher: PublisherConfig,
    pub duration: Duration,
    pub warmup: Duration,
    pub mode: SendMode,
    /// CPU for the reflector thread (the server's CPU).
    pub reflector_cpu: Option<usize>,
    /// CPU for the publisher and viewer threads (the harness's CPU).
    pub harness_cpu: Option<usize>,
    pub progress: bool,
    /// Viewer sockets take GSO messages whole (`UDP_GRO`, [`crate::gro`]).
    pub receiver_gro: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("floor: starting the viewers: {0}")]
    Viewers(std::io::Error),
    #[error("floor: starting the reflector: {0}")]
    Reflector(std::io::Error),
    #[error("floor: starting the publisher: {0}")]
    Publisher(std::io::Error),
    #[error("floor: no viewer received a keyframe within {0:?}")]
    NoVideo(Duration),
}

/// CPU clocks at one instant.
struct Clocks {
    at: Instant,
    reflector: ReflectorSnapshot,
    process_ns: Option<u64>,
    machine_ns: Option<u64>,
}

impl Clocks {
    fn take(r: &Reflector) -> Self {
        Self { at: Instant::now(), reflector: r.snapshot(), process_ns: self_cpu_ns(), machine_ns: machine_busy_ns() }
    }
}

pub fn run(cfg: &FloorConfig) -> Result<RunResult, FloorError> {
    let ip: std::net::IpAddr = "127.0.0.1".parse().expect("constant address");
    let viewers = UdpViewers::spawn(cfg.viewers, ip, cfg.harness_cpu, cfg.receiver_gro).map_err(FloorError::Viewers)?;
    let reflector = Reflector::spawn((ip, 0).into(), viewers.addrs().to_vec(), cfg.mode, cfg.reflector_cpu)
        .map_err(FloorError::Reflector)?;
    let publisher = UdpPublisher::spawn(reflector.addr(), reflector.addr(), cfg.publisher, cfg.harness_cpu).map_err(FloorError::Publisher)?;
    let first_video_wait = Duration::from_secs(5);
    let deadline = Instant::now() + first_video_wait;
    while (0..viewers.len()).any(|i| !viewers.stats(i).got_keyframe) {
        if Instant::now() >= deadline {
            if (0..viewers.len()).all(|i| !viewers.stats(i).got_keyframe) {
                return Err(FloorError::NoVideo(first_video_wait));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(cfg.warmup);

    // Measured window, keyed on the publisher's probe counters like MeasureWindow.
    let stream_id = cfg.publisher.stream_id;
    let start = [publisher.sent(Kind::Video), publisher.sent(Kind::Audio)];
    let mut before = Vec::with_capacity(viewers.len());
    for i in 0..viewers.len() {
        let mut st = viewers.stats(i);
        for k in [Kind::Video, Kind::Audio] {
            st.open_window(k, Window { stream_id, start: start[k.index()], end: u64::MAX });
        }
        st.latency_us.reset();
        before.push(dup_reorder(&st));
    }
    let c0 = Clocks::take(&reflector);
    let end_at = c0.at + cfg.duration;
    while Instant::now() < end_at {
        std::thread::sleep(end_at.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        if cfg.progress {
            let s = reflector.snapshot().since(&c0.reflector);
            eprintln!(
                "[floor {:?}] {:.1}s  in {} pkt  forwarded {}  cpu {:.1} ms",
                cfg.mode,
                c0.at.elapsed().as_secs_f64(),
                s.packets_in,
                s.forwarded,
                s.cpu_ns as f64 / 1e6
            );
        }
    }
    let end = [publisher.sent(Kind::Video), publisher.sent(Kind::Audio)];
    let c1 = Clocks::take(&reflector);
    for i in 0..viewers.len() {
        let mut st = viewers.stats(i);
        for k in [Kind::Video, Kind::Audio] {
            st.close_window(k, end[k.index()]);
        }
    }
    // Let in-flight packets of the window arrive.
    std::thread::sleep(Duration::from_millis(300));
    drop(publisher);

    let sent = (end[0] - start[0]) + (end[1] - start[1]);
    let mut tally = Tally::default();
    for (i, b) in before.iter().enumerate() {
        let st = viewers.stats(i);
        tally.viewer(st.got_keyframe, &st, sent, *b);
    }
    Ok(result(cfg, &tally, sent, &c0, &c1))
}

fn result(cfg: &FloorConfig, tally: &Tally, sent: u64, c0: &Clocks, c1: &Clocks) -> RunResult {
    let wall_ns = c1.at.saturating_duration_since(c0.at).as_nanos() as f64;
    let r = c1.reflector.since(&c0.reflector);
    let pct = |ns: u64| (wall_ns > 0.0).then(|| 100.0 * ns as f64 / wall_ns);
    let process = c0.process_ns.zip(c1.process_ns).map(|(a, b)| b.saturating_sub(a));
    let machine = c0.machine_ns.zip(c1.machine_ns).map(|(a, b)| b.saturating_sub(a));
    let (ppf, bytes) = cfg.publisher.frame_shape();
    let mut out = RunResult {
        scenario: "floor".into(),
        target: "builtin-reflector".into(),
        viewers_requested: cfg.viewers,
        threads: 1,
        bitrate_bps: cfg.publisher.bitrate_bps,
        fps: cfg.publisher.fps,
        packets_per_frame: ppf,
        video_payload_bytes: bytes,
        packets_sent: sent,
        duration_s: wall_ns / 1e9,
        server_cpu_ns_per_packet: (r.forwarded > 0).then(|| r.cpu_ns as f64 / r.forwarded as f64),
        server_cpu_percent: pct(r.cpu_ns),
        server_packets_forwarded: Some(r.forwarded),
        server_udp_send_errors: Some(r.send_errors),
        harness_cpu_percent: process.and_then(|p| pct(p.saturating_sub(r.cpu_ns))),
        other_cpu_percent: machine.zip(process).and_then(|(m, p)| pct(m.saturating_sub(p))),
        ..RunResult::default()
    };
    tally.fill(&mut out);
    let per = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let x = &mut out.extra;
    x.insert("send_mode".into(), serde_json::json!(cfg.mode));
    x.insert("receiver_gro".into(), cfg.receiver_gro.into());
    x.insert("reflector_cpu".into(), serde_json::json!(cfg.reflector_cpu));
    x.insert("reflector_packets_in".into(), r.packets_in.into());
    x.insert("reflector_recv_batch_avg".into(), per(r.packets_in, r.recv_calls).into());
    x.insert("reflector_send_calls".into(), r.send_calls.into());
    x.insert("reflector_messages".into(), r.messages.into());
    x.insert("reflector_datagrams_per_message".into(), per(r.forwarded, r.messages).into());
    x.insert("reflector_would_block".into(), r.would_block.into());
    out
}

/// The human summary.
pub fn summary(r: &RunResult) -> String {
    let g = |k: &str| r.extra.get(k).cloned().unwrap_or_default();
    let l = r.latency_us;
    let mut s = format!(
        "floor ({}{}): 1 → {} viewers ({} with video), plain UDP, reflector on CPU {}\n",
        g("send_mode").as_str().unwrap_or("?"),
        if g("receiver_gro") == serde_json::Value::Bool(true) { ", receivers GRO" } else { "" },
        r.viewers_requested,
        r.viewers_connected,
        g("reflector_cpu"),
    );
    s.push_str(&format!(
        "  reflector: {} per forwarded packet, CPU {}, forwarded {}, {:.1} datagrams per recvmmsg, {:.2} datagrams per message, EAGAIN waits {}\n",
        r.server_cpu_ns_per_packet.map(|v| format!("{v:.0} ns")).unwrap_or_else(|| "n/a".into()),
        r.server_cpu_percent.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "n/a".into()),
        r.server_packets_forwarded.unwrap_or(0),
        g("reflector_recv_batch_avg").as_f64().unwrap_or(0.0),
        g("reflector_datagrams_per_message").as_f64().unwrap_or(0.0),
        g("reflector_would_block"),
    ));
    s.push_str(&format!(
        "  latency: p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs ({} samples)\n",
        l.p50, l.p90, l.p99, l.p999, l.max, l.count
    ));
    s.push_str(&format!(
        "  window {:.1} s: sent {}, received {} of {} expected, loss {:.4}%, send errors {}\n",
        r.duration_s,
        r.packets_sent,
        r.packets_received,
        r.packets_expected,
        r.loss_ratio * 100.0,
        r.server_udp_send_errors.unwrap_or(0)
    ));
    if let (Some(h), Some(o)) = (r.harness_cpu_percent, r.other_cpu_percent) {
        s.push_str(&format!(
            "  harness CPU {h:.1}%, other processes {o:.1}%{}\n",
            if o > 10.0 { "  (machine busy: numbers are noisy)" } else { "" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole scenario in-process, no server: a few viewers for a second, both send modes.
    #[test]
    fn floor_smoke() {
        for (mode, receiver_gro) in [(SendMode::Sendmmsg, false), (SendMode::Gso, false), (SendMode::Gso, true)] {
            let cfg = FloorConfig {
                viewers: 5,
                publisher: PublisherConfig { bitrate_bps: 1_000_000, ..PublisherConfig::default() },
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(200),
                mode,
                reflector_cpu: None,
                harness_cpu: None,
                progress: false,
                receiver_gro,
            };
            let r = run(&cfg).unwrap();
            assert_eq!(r.scenario, "floor");
            assert_eq!(r.viewers_connected, 5);
            assert!(r.packets_sent >= 100, "{mode:?}: ~170 packets/s");
            assert_eq!(r.packets_expected, r.packets_sent * 5);
            assert!(r.loss_ratio < 0.01, "{mode:?}: loss {}", r.loss_ratio);
            assert!(r.latency_us.count > 0 && r.latency_us.p50 < 50_000);
            let fwd = r.server_packets_forwarded.unwrap();
            assert!(fwd >= r.packets_sent * 5 - 50, "{mode:?}: forwarded {fwd}");
            assert!(r.server_cpu_ns_per_packet.is_some_and(|v| v > 0.0));
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["send_mode"], serde_json::json!(if mode == SendMode::Gso { "gso" } else { "sendmmsg" }));
            assert_eq!(v["receiver_gro"], serde_json::json!(receiver_gro));
            assert!(summary(&r).contains("floor"));
        }
    }
}
