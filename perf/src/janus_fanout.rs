//! `fanout --target-kind janus`: the same 1→N fan-out through Janus's streaming plugin.
//!
//! Why it exists: a ratio against a real, widely deployed SFU on the same machine, same pinning, same
//! traffic. The publisher is the floor's plain-RTP publisher ([`crate::udp_peers::UdpPublisher`]) aimed
//! at the mountpoint's video and audio ports (Janus's streaming plugin ingests plain RTP, so Janus does
//! no SRTP decryption on the way in — sfumato does); the viewers are the same str0m peers as for
//! sfumato, signalled by [`crate::janus`]. Janus has no forwarded-packet counter, so
//! `server_cpu_ns_per_packet` divides Janus's CPU by the packets the viewers *received* in the window
//! (equal to forwarded when there is no loss).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::client::{Peer, PublisherConfig, Role};
use crate::harness::{Harness, HarnessError, MeasureWindow, Session};
use crate::janus::{first_ipv4_candidate, JanusClient, JanusError, JanusHandle};
use crate::measure::{dup_reorder, rss_per_viewer, Tally};
use crate::probe::Kind;
use crate::server_probe::{delta, sample_proc, WindowSample};
use crate::stats::{JoinSummary, RunResult};
use crate::udp_peers::UdpPublisher;

#[derive(Debug, Clone)]
pub struct JanusFanoutConfig {
    /// Janus's REST endpoint, e.g. `http://127.0.0.1:8088/janus`.
    pub target: String,
    pub mountpoint: u64,
    /// The mountpoint's RTP ports.
    pub video_rtp: SocketAddr,
    pub audio_rtp: SocketAddr,
    pub viewers: usize,
    pub publisher: PublisherConfig,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub connect_timeout: Duration,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JanusFanoutError {
    #[error(transparent)]
    Janus(#[from] JanusError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("starting the RTP publisher: {0}")]
    Publisher(std::io::Error),
    #[error("Janus's offer has no IPv4 host candidate")]
    NoCandidate,
}

/// The local address the OS would use to reach `to` (our host candidate).
fn local_ip_for(to: SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    Ok(s.local_addr()?.ip())
}

/// One viewer: open a Janus session, watch, answer with a str0m peer, start.
fn join(janus: &JanusClient, h: &Harness, mountpoint: u64, timeout: Duration) -> Result<(Session, JanusHandle), JanusFanoutError> {
    let started = Instant::now();
    let jh = janus.open()?;
    let res = (|| {
        let offer = janus.watch(jh, mountpoint, timeout)?;
        let cand = first_ipv4_candidate(&offer).ok_or(JanusFanoutError::NoCandidate)?;
        let ip = local_ip_for(cand).map_err(|e| HarnessError::Peer(e.into()))?;
        let (peer, answer) = Peer::answer(ip, &offer).map_err(HarnessError::from)?;
        janus.start(jh, &answer)?;
        let took = started.elapsed();
        Ok(h.add_peer(peer, Role::Viewer, &format!("janus-{mountpoint}"), jh.location(), started, took)?)
    })();
    match res {
        Ok(s) => Ok((s, jh)),
        Err(e) => {
            let _ = janus.destroy(jh);
            Err(e)
        }
    }
}

pub fn run(cfg: &JanusFanoutConfig) -> Result<RunResult, JanusFanoutError> {
    let janus = JanusClient::new(&cfg.target)?;
    let h = Harness::new(&cfg.target, cfg.threads)?;
    let publisher = UdpPublisher::spawn(cfg.video_rtp, cfg.audio_rtp, cfg.publisher, None).map_err(JanusFanoutError::Publisher)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = cfg.server_pid.and_then(sample_proc).map(|p| p.rss_bytes);

    let mut viewers = Vec::with_capacity(cfg.viewers);
    let mut handles = Vec::with_capacity(cfg.viewers);
    let mut errors = 0usize;
    for i in 0..cfg.viewers {
        match join(&janus, &h, cfg.mountpoint, cfg.connect_timeout) {
            Ok((s, jh)) => {
                viewers.push(s);
                handles.push(jh);
            }
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("janus viewer {i}: {e}");
                }
                if errors >= 3 && viewers.is_empty() {
                    return Err(e);
                }
            }
        }
    }
    let res = measure(cfg, &h, &publisher, &viewers, rss_before);
    for (s, jh) in viewers.iter().zip(&handles) {
        if let Err(e) = janus.destroy(*jh) {
            eprintln!("janus destroy {}: {e}", jh.location());
        }
        h.drop_peer(s);
    }
    res
}

fn measure(cfg: &JanusFanoutConfig, h: &Harness, publisher: &UdpPublisher, viewers: &[Session], rss_before: Option<u64>) -> Result<RunResult, JanusFanoutError> {
    let deadline = Instant::now() + cfg.connect_timeout;
    while Instant::now() < deadline && !viewers.iter().all(|v| v.peer.first_video().is_some() || v.peer.dead()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let join_ms: Vec<f64> = viewers.iter().filter_map(|v| v.join_time()).map(ms).collect();
    let post_ms: Vec<f64> = viewers.iter().map(|v| ms(v.post_duration)).collect();
    let connect_ms: Vec<f64> = viewers.iter().filter_map(|v| v.connect_time()).map(ms).collect();
    if cfg.progress {
        eprintln!("janus: {}/{} viewers got video; warm-up", join_ms.len(), viewers.len());
    }
    std::thread::sleep(cfg.warmup);

    let counters = || [publisher.sent(Kind::Video), publisher.sent(Kind::Audio)];
    let before: Vec<(u64, u64)> = viewers.iter().map(|v| dup_reorder(&v.peer.stats())).collect();
    let s0 = WindowSample::take(h.http(), cfg.server_pid);
    let mut window = MeasureWindow::open_at(cfg.publisher.stream_id, counters(), viewers);
    std::thread::sleep(cfg.duration);
    window.close_at(counters(), viewers);
    let s1 = WindowSample::take(h.http(), cfg.server_pid);
    std::thread::sleep(Duration::from_millis(300));

    let sent = window.sent(Kind::Video) + window.sent(Kind::Audio);
    let mut tally = Tally::default();
    for (v, b) in viewers.iter().zip(&before) {
        tally.viewer(v.peer.first_video().is_some(), &v.peer.stats(), sent, *b);
    }
    let d = delta(&s0, &s1);
    let (ppf, bytes) = cfg.publisher.frame_shape();
    let mut out = RunResult {
        scenario: "fanout".into(),
        target: cfg.target.clone(),
        room: format!("mountpoint {}", cfg.mountpoint),
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
        duration_s: s1.at.saturating_duration_since(s0.at).as_secs_f64(),
        ..RunResult::default()
    };
    tally.fill(&mut out);
    d.fill(&mut out);
    // No /healthz: packets forwarded = packets the viewers received in the window.
    let cpu_ns = s0.proc_.zip(s1.proc_).map(|(a, b)| b.cpu_ns.saturating_sub(a.cpu_ns));
    out.server_packets_forwarded = Some(tally.received);
    out.server_ring_full_drops = None;
    out.server_udp_send_errors = None;
    out.server_cpu_ns_per_packet = cpu_ns.filter(|_| tally.received > 0).map(|c| c as f64 / tally.received as f64);
    out.server_rss_bytes_per_viewer = rss_per_viewer(rss_before, d.rss_bytes, out.viewers_connected);
    out.extra.insert("target_kind".into(), "janus".into());
    out.extra.insert("server_packets_forwarded_source".into(), "viewers' window receipts".into());
    Ok(out)
}
