//! The `rtmp` scenario: an RTMP publisher (ffmpeg, H.264 + AAC) → N WHEP viewers.
//!
//! Why it exists: RTMP ingest is a separate path in the server (FLV demux, H.264 packetisation, AAC →
//! Opus transcoding) and the way OBS users publish. The publisher is a real encoder, so its payloads
//! carry no probe: viewers judge the stream by RTP sequence numbers (loss), arrival times (packet rate,
//! gaps, stalls) and the RTP timestamp against the arrival clock (RFC 3550 jitter, frame delay
//! variation) — see [`crate::raw_rtp`]. Join time is WHEP POST → first video RTP packet; RTMP can't be
//! asked for a keyframe, so it is bounded by the encoder's GOP (`--gop`, 1 s by default).
//!
//! ffmpeg runs as a child of the harness (so on the harness's CPU when pinned) and its CPU is reported.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Harness, HarnessError, Session};
use crate::probe::Kind;
use crate::raw_rtp::{add_delay_variation, delay_histogram};
use crate::server_probe::{delta, parse_stat_cpu_ticks, WindowSample};
use crate::stats::{JoinSummary, LatencySummary, RunResult};

#[derive(Debug, Clone)]
pub struct RtmpConfig {
    /// The server's HTTP base URL (WHEP, /healthz).
    pub target: String,
    /// RTMP application URL; the room is appended: `rtmp://127.0.0.1:1935/live` → `.../live/<room>`.
    pub rtmp_url: String,
    pub room: String,
    pub viewers: usize,
    /// The ffmpeg binary.
    pub ffmpeg: String,
    /// testsrc2 frame size, e.g. 640x360.
    pub size: String,
    pub fps: u32,
    /// Keyframe interval in frames.
    pub gop: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub connect_timeout: Duration,
    pub threads: usize,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("starting {0}: {1} (the rtmp scenario needs ffmpeg with libx264: apt-get install ffmpeg)")]
    Spawn(String, std::io::Error),
    #[error("ffmpeg exited ({0}) before the run ended; its last output:\n{1}")]
    FfmpegDied(String, String),
    #[error("no RTMP publisher showed up in /healthz within {0:?} (is the server's --rtmp-port right?); ffmpeg said:\n{1}")]
    NoPublisher(Duration, String),
    #[error("no viewer got video within {0:?}")]
    NoVideo(Duration),
    #[error(transparent)]
    Harness(#[from] HarnessError),
}

/// The ffmpeg child: killed and reaped on drop.
struct Ffmpeg {
    child: Child,
    log: PathBuf,
}

impl Ffmpeg {
    fn args(cfg: &RtmpConfig) -> Vec<String> {
        let url = format!("{}/{}", cfg.rtmp_url.trim_end_matches('/'), cfg.room);
        let src = format!("testsrc2=size={}:rate={}", cfg.size, cfg.fps);
        [
            "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-f", "lavfi", "-i", &src, "-f", "lavfi", "-i", "sine",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-bf", "0", "-g",
            &cfg.gop.to_string(), "-c:a", "aac", "-f", "flv", &url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn spawn(cfg: &RtmpConfig) -> Result<Self, RtmpError> {
        let log = std::env::temp_dir().join(format!("sfumato-perf-ffmpeg-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).map_err(|e| RtmpError::Spawn(log.display().to_string(), e))?;
        let child = Command::new(&cfg.ffmpeg)
            .args(Self::args(cfg))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| RtmpError::Spawn(cfg.ffmpeg.clone(), e))?;
        Ok(Self { child, log })
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// `Err` if ffmpeg has exited.
    fn check(&mut self) -> Result<(), RtmpError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(RtmpError::FfmpegDied(status.to_string(), self.tail())),
            _ => Ok(()),
        }
    }

    fn cpu_ns(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(parse_stat_cpu_ticks(&stat)? * (1_000_000_000 / hz))
    }
}

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn publishers(h: &Harness) -> Option<u64> {
    h.http().get_json("/healthz").ok()?["publishers"].as_u64()
}

pub fn run(cfg: &RtmpConfig) -> Result<RunResult, RtmpError> {
    let h = Harness::new(&cfg.target, cfg.threads)?.with_h264_viewers();
    let before = publishers(&h);
    let mut ff = Ffmpeg::spawn(cfg)?;
    // The publisher exists once the server counts it (ffmpeg needs ~1 s to start encoding).
    let deadline = Instant::now() + cfg.connect_timeout;
    if let Some(b) = before {
        while publishers(&h).unwrap_or(0) <= b {
            ff.check()?;
            if Instant::now() >= deadline {
                return Err(RtmpError::NoPublisher(cfg.connect_timeout, ff.tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if cfg.progress {
        eprintln!("rtmp: ffmpeg is publishing to {}/{}; joining {} viewers", cfg.rtmp_url, cfg.room, cfg.viewers);
    }
    let mut viewers = Vec::with_capacity(cfg.viewers);
    for i in 0..cfg.viewers {
        match h.view(&cfg.room) {
            Ok(s) => viewers.push(s),
            Err(e) => eprintln!("rtmp viewer {i}: {e}"),
        }
    }
    let res = measure(cfg, &h, &mut ff, &viewers);
    for v in &viewers {
        if let Err(e) = h.delete(v) {
            eprintln!("DELETE {}: {e}", v.location);
        }
    }
    res
}

fn measure(cfg: &RtmpConfig, h: &Harness, ff: &mut Ffmpeg, viewers: &[Session]) -> Result<RunResult, RtmpError> {
    let deadline = Instant::now() + cfg.connect_timeout;
    while Instant::now() < deadline && !viewers.iter().all(|v| v.peer.first_video().is_some() || v.peer.dead()) {
        ff.check()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let join_ms: Vec<f64> = viewers.iter().filter_map(|v| v.join_time()).map(ms).collect();
    if join_ms.is_empty() {
        return Err(RtmpError::NoVideo(cfg.connect_timeout));
    }
    let post_ms: Vec<f64> = viewers.iter().map(|v| ms(v.post_duration)).collect();
    let connect_ms: Vec<f64> = viewers.iter().filter_map(|v| v.connect_time()).map(ms).collect();
    if cfg.progress {
        eprintln!("rtmp: {}/{} viewers got video; warm-up", join_ms.len(), viewers.len());
    }
    std::thread::sleep(cfg.warmup);

    for v in viewers {
        v.peer.stats().raw.open_window();
    }
    let s0 = WindowSample::take(h.http(), cfg.server_pid);
    let ff0 = ff.cpu_ns();
    std::thread::sleep(cfg.duration);
    for v in viewers {
        v.peer.stats().raw.close_window();
    }
    let s1 = WindowSample::take(h.http(), cfg.server_pid);
    let ff1 = ff.cpu_ns();
    ff.check()?;
    let wall = s1.at.saturating_duration_since(s0.at).as_secs_f64().max(1e-3);

    let mut r = RunResult {
        scenario: "rtmp".into(),
        target: cfg.target.clone(),
        room: cfg.room.clone(),
        viewers_requested: cfg.viewers,
        threads: h.threads(),
        fps: cfg.fps,
        join_ms: JoinSummary::of(&join_ms),
        post_ms: JoinSummary::of(&post_ms),
        connect_ms: JoinSummary::of(&connect_ms),
        duration_s: wall,
        ..RunResult::default()
    };
    delta(&s0, &s1).fill(&mut r);
    // RTMP packets have their own server latency (FLV message read → viewer datagram sent).
    r.server_forward_latency_us = s1.counters.and_then(|c| c.rtmp_forward_latency_us);
    let a = aggregate(viewers, wall);
    r.viewers_connected = a.connected;
    r.packets_received = a.unique;
    r.packets_expected = a.expected;
    r.loss_ratio = RunResult::compute_loss(a.unique, a.expected);
    r.duplicates = a.duplicates;
    r.reordered = a.reordered;
    r.viewers_over_1pct_loss = a.over_1pct;
    let x = &mut r.extra;
    x.insert("source".into(), format!("{} {}", cfg.ffmpeg, Ffmpeg::args(cfg).join(" ")).into());
    x.insert("video_pps_per_viewer".into(), a.pps[0].into());
    x.insert("audio_pps_per_viewer".into(), a.pps[1].into());
    x.insert("video_loss_ratio".into(), a.loss[0].into());
    x.insert("audio_loss_ratio".into(), a.loss[1].into());
    x.insert("video_jitter_ms".into(), serde_json::json!({"mean": a.jitter_ms[0].0, "max": a.jitter_ms[0].1}));
    x.insert("audio_jitter_ms".into(), serde_json::json!({"mean": a.jitter_ms[1].0, "max": a.jitter_ms[1].1}));
    x.insert("video_frame_delay_variation_us".into(), serde_json::to_value(a.frame_dv).unwrap_or_default());
    x.insert("max_gap_ms".into(), serde_json::json!({"video": a.max_gap_ms[0], "audio": a.max_gap_ms[1]}));
    x.insert("stalls_over_100ms".into(), serde_json::json!({"video": a.stalls[0], "audio": a.stalls[1]}));
    x.insert(
        "ffmpeg_cpu_percent".into(),
        ff0.zip(ff1).map(|(a, b)| 100.0 * b.saturating_sub(a) as f64 / (wall * 1e9)).into(),
    );
    Ok(r)
}

/// Window figures summed/averaged over the viewers that got video; index 0 video, 1 audio.
#[derive(Debug, Default)]
struct Aggregate {
    connected: usize,
    unique: u64,
    expected: u64,
    duplicates: u64,
    reordered: u64,
    over_1pct: usize,
    pps: [f64; 2],
    loss: [f64; 2],
    /// (mean over viewers, max) of the RFC 3550 jitter, ms.
    jitter_ms: [(f64, f64); 2],
    max_gap_ms: [f64; 2],
    stalls: [u64; 2],
    frame_dv: LatencySummary,
}

fn aggregate(viewers: &[Session], wall_s: f64) -> Aggregate {
    let mut a = Aggregate::default();
    let mut dv = delay_histogram();
    let mut per_kind = [(0u64, 0u64, 0u64); 2]; // (packets, unique, expected)
    for v in viewers.iter().filter(|v| v.peer.first_video().is_some()) {
        let st = v.peer.stats();
        a.connected += 1;
        let (mut vu, mut ve) = (0, 0);
        for kind in [Kind::Video, Kind::Audio] {
            let i = kind.index();
            let w = &st.raw.kinds[i].window;
            let (u, e) = (w.seq.unique, w.seq.expected());
            per_kind[i].0 += w.packets;
            per_kind[i].1 += u;
            per_kind[i].2 += e;
            vu += u;
            ve += e;
            a.duplicates += w.seq.duplicates;
            a.reordered += w.seq.reordered;
            a.jitter_ms[i].0 += w.jitter_us / 1e3;
            a.jitter_ms[i].1 = a.jitter_ms[i].1.max(w.jitter_us / 1e3);
            a.max_gap_ms[i] = a.max_gap_ms[i].max(w.max_gap_ns as f64 / 1e6);
            a.stalls[i] += w.stalls;
            if kind == Kind::Video {
                add_delay_variation(&mut dv, w);
            }
        }
        if RunResult::compute_loss(vu, ve) > 0.01 {
            a.over_1pct += 1;
        }
    }
    let n = a.connected.max(1) as f64;
    for (i, (packets, unique, expected)) in per_kind.iter().enumerate() {
        a.unique += unique;
        a.expected += expected;
        a.pps[i] = *packets as f64 / n / wall_s;
        a.loss[i] = RunResult::compute_loss(*unique, *expected);
        a.jitter_ms[i].0 /= n;
    }
    a.frame_dv = LatencySummary::of(&dv);
    a
}

/// The human summary printed to stdout.
pub fn summary(r: &RunResult) -> String {
    let x = &r.extra;
    let f = |k: &str| x.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let p = |k: &str, q: &str| x.get(k).and_then(|v| v.get(q)).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut s = format!("rtmp {} room {}: {}/{} viewers got video\n", r.target, r.room, r.viewers_connected, r.viewers_requested);
    if let Some(j) = r.join_ms {
        s.push_str(&format!("  join (POST → first video): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n", j.p50, j.p99, j.max));
    }
    s.push_str(&format!(
        "  per viewer: video {:.1} pkt/s (loss {:.3}%), audio {:.1} pkt/s (loss {:.3}%); window loss {:.4}%, viewers >1% loss {}\n",
        f("video_pps_per_viewer"),
        f("video_loss_ratio") * 100.0,
        f("audio_pps_per_viewer"),
        f("audio_loss_ratio") * 100.0,
        r.loss_ratio * 100.0,
        r.viewers_over_1pct_loss
    ));
    s.push_str(&format!(
        "  jitter (RFC 3550) video mean {:.2} ms max {:.2} ms, audio mean {:.2} ms; frame delay variation p50 {:.0} p99 {:.0} max {:.0} µs\n",
        p("video_jitter_ms", "mean"),
        p("video_jitter_ms", "max"),
        p("audio_jitter_ms", "mean"),
        p("video_frame_delay_variation_us", "p50"),
        p("video_frame_delay_variation_us", "p99"),
        p("video_frame_delay_variation_us", "max"),
    ));
    s.push_str(&format!(
        "  largest gap video {:.0} ms audio {:.0} ms; stalls ≥100 ms video {} audio {}\n",
        p("max_gap_ms", "video"),
        p("max_gap_ms", "audio"),
        x.get("stalls_over_100ms").and_then(|v| v.get("video")).cloned().unwrap_or_default(),
        x.get("stalls_over_100ms").and_then(|v| v.get("audio")).cloned().unwrap_or_default(),
    ));
    let pct = |v: Option<f64>| v.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "n/a".into());
    s.push_str(&format!(
        "  server CPU {} ({} per forwarded packet), ffmpeg CPU {}, harness CPU {}, other processes {}\n",
        pct(r.server_cpu_percent),
        r.server_cpu_ns_per_packet.map(|v| format!("{v:.0} ns")).unwrap_or_else(|| "n/a".into()),
        pct(x.get("ffmpeg_cpu_percent").and_then(|v| v.as_f64())),
        pct(r.harness_cpu_percent),
        pct(r.other_cpu_percent),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffmpeg_command_line() {
        let cfg = RtmpConfig {
            target: "http://127.0.0.1:3000".into(),
            rtmp_url: "rtmp://127.0.0.1:1935/live/".into(),
            room: "r1".into(),
            viewers: 1,
            ffmpeg: "ffmpeg".into(),
            size: "640x360".into(),
            fps: 30,
            gop: 30,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            connect_timeout: Duration::from_secs(1),
            threads: 1,
            server_pid: None,
            progress: false,
        };
        let a = Ffmpeg::args(&cfg).join(" ");
        assert!(a.contains("-re -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine"), "{a}");
        assert!(a.contains("-bf 0 -g 30 -c:a aac -f flv rtmp://127.0.0.1:1935/live/r1"), "{a}");
        let missing = RtmpConfig { ffmpeg: "/nonexistent/ffmpeg".into(), ..cfg };
        let e = Ffmpeg::spawn(&missing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("apt-get install ffmpeg"), "{e}");
    }
}
