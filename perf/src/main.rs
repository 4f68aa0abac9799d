//! `sfumato-perf`: load tests against a running sfumato server. See perf/README.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sfumato_perf::bench_report;
use sfumato_perf::churn::{self, ChurnConfig};
use sfumato_perf::client::{next_stream_id, PublisherConfig};
use sfumato_perf::fanout::{self, FanoutConfig};
use sfumato_perf::floor::{self, FloorConfig};
use sfumato_perf::janus_fanout::{self, JanusFanoutConfig};
use sfumato_perf::reflector::SendMode;
use sfumato_perf::rooms::{self, RoomsConfig};
use sfumato_perf::units::{parse_bitrate, parse_duration, parse_ramp};

#[derive(Parser, Debug)]
#[command(
    name = "sfumato-perf",
    version,
    about = "Load tests for the sfumato WebRTC SFU with real str0m peers over UDP",
    long_about = "Load tests for the sfumato WebRTC SFU. Peers are real WebRTC endpoints (ICE, DTLS, SRTP, \
                  RTCP, NACK; str0m in RTP mode) running many per thread. Payloads carry a probe (stream id, \
                  counter, send time) so loss and latency are measured end to end even though the SFU \
                  rewrites RTP sequence numbers."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One publisher, N viewers in one room: join time, delivery, latency, server CPU per packet.
    Fanout(FanoutArgs),
    /// The same fan-out over plain UDP with a built-in recvmmsg/sendmmsg reflector: the machine's floor.
    Floor(FloorArgs),
    /// R rooms × (P publishers, V viewers), meeting-style.
    Rooms(RoomsArgs),
    /// Viewers join and leave continuously: join time, failures, session/memory leak check.
    Churn(ChurnArgs),
    /// Gathers scenario JSON files into one bench results file and prints its Markdown table.
    Report(ReportArgs),
    /// Prints new/old ratios of the key figures of two bench results files.
    Compare {
        /// The earlier results file.
        old: String,
        /// The later results file.
        new: String,
    },
}

/// The synthetic publisher's traffic.
#[derive(clap::Args, Debug)]
struct PublisherArgs {
    /// Video bitrate of the publisher, e.g. 1000k, 2.5M, 800000.
    #[arg(long, default_value = "1000k", value_parser = parse_bitrate)]
    bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Packets per video frame (default: enough ~1100-byte packets for the bitrate).
    #[arg(long)]
    packets_per_frame: Option<u32>,
    /// Keyframe interval in frames (the publisher also sends one whenever the server asks).
    #[arg(long, default_value_t = 60)]
    gop: u32,
    /// Don't send audio.
    #[arg(long)]
    no_audio: bool,
}

impl PublisherArgs {
    fn config(&self) -> PublisherConfig {
        PublisherConfig {
            bitrate_bps: self.bitrate,
            fps: self.fps.max(1),
            packets_per_frame: self.packets_per_frame,
            gop: self.gop.max(1),
            audio: !self.no_audio,
            stream_id: next_stream_id(),
            ..PublisherConfig::default()
        }
    }
}

/// Output options shared by every scenario.
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Write the JSON result to this file ("-" = stdout).
    #[arg(long)]
    json: Option<String>,
    /// No per-second progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct FanoutArgs {
    /// Server base URL (HTTP API; for Janus its REST endpoint, e.g. http://127.0.0.1:8088/janus).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// What the target is: sfumato (WHIP/WHEP) or janus (streaming plugin, REST API).
    #[arg(long, value_enum, default_value_t = TargetKind::Sfumato)]
    target_kind: TargetKind,
    /// Janus: the streaming mountpoint id.
    #[arg(long, default_value_t = 1)]
    janus_mountpoint: u64,
    /// Janus: the mountpoint's video RTP port (the publisher sends plain RTP there).
    #[arg(long, default_value = "127.0.0.1:5004")]
    janus_video_rtp: std::net::SocketAddr,
    /// Janus: the mountpoint's audio RTP port.
    #[arg(long, default_value = "127.0.0.1:5002")]
    janus_audio_rtp: std::net::SocketAddr,
    /// Room name.
    #[arg(long, default_value = "perf")]
    room: String,
    /// Number of viewers.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    #[command(flatten)]
    publisher: PublisherArgs,
    /// Measured window, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between all viewers joining and the measured window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long to wait for the publisher to connect and viewers to get video.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Harness threads running peers. With ≥ 2, thread 0 runs only the publisher.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Join rate, e.g. 50/s (default: all at once).
    #[arg(long, value_parser = parse_ramp)]
    ramp: Option<f64>,
    /// Server process id: adds server CPU ns per forwarded packet and RSS (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    Sfumato,
    Janus,
}

#[derive(clap::Args, Debug)]
struct FloorArgs {
    /// Number of viewer sockets.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    #[command(flatten)]
    publisher: PublisherArgs,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between the first packets and the measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Send a run of same-size datagrams to each viewer as one UDP_SEGMENT (GSO) message.
    #[arg(long)]
    gso: bool,
    /// CPU the reflector thread is pinned to (where the server would run).
    #[arg(long, default_value_t = 0)]
    reflector_cpu: usize,
    /// CPU for the publisher and viewer threads (default: the process's own mask, e.g. from taskset).
    #[arg(long)]
    harness_cpu: Option<usize>,
    /// Don't pin the reflector.
    #[arg(long)]
    no_pin: bool,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct RoomsArgs {
    /// Server base URL (HTTP API).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// Rooms are named PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "perf-room")]
    room_prefix: String,
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Publishers per room (the server accepts one today; the others are refused and reported).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Viewers per room.
    #[arg(long, default_value_t = 4)]
    viewers: usize,
    #[command(flatten)]
    publisher: PublisherArgs,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Harness threads running peers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process id: adds server CPU ns per forwarded packet and RSS (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct ChurnArgs {
    /// Server base URL (HTTP API).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// Room name.
    #[arg(long, default_value = "perf-churn")]
    room: String,
    /// Viewer joins per second, e.g. 10/s.
    #[arg(long, default_value = "10/s", value_parser = parse_ramp)]
    rate: f64,
    /// How long viewers keep joining.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// How long each viewer stays before its DELETE (longer than a keyframe wait).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    lifetime: Duration,
    #[command(flatten)]
    publisher: PublisherArgs,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long to wait for /healthz sessions to return to the baseline at the end.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    settle_timeout: Duration,
    /// Harness threads running peers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process id: adds RSS before/after and server CPU (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Date written into the file (e.g. `date +%F`).
    #[arg(long)]
    date: String,
    /// Metadata, KEY=VALUE (repeatable), e.g. machine="2 vCPU VM".
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Write the gathered results here.
    #[arg(long)]
    out: String,
    /// Also write the Markdown table here.
    #[arg(long)]
    md: Option<String>,
    /// A side-by-side ratio table of two runs, A:B (repeatable), e.g. fanout-50:janus-fanout-50.
    #[arg(long = "pair")]
    pairs: Vec<String>,
    /// Scenario results, NAME=FILE.json, in table order.
    runs: Vec<String>,
}

fn write_json(path: &str, v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| format!("serialising the result: {e}"))?;
    if path == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {path}: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("serialising the result: {e}"))
}

/// Writes `--json` if asked; `Err` = exit code 2.
fn emit<T: serde::Serialize>(out: &OutputArgs, result: &T, viewers: Option<serde_json::Value>) -> Result<(), String> {
    let Some(path) = &out.json else { return Ok(()) };
    let mut v = to_json(result)?;
    if let Some(list) = viewers {
        v["viewers"] = list;
    }
    write_json(path, &v)
}

fn janus_fanout_cmd(a: FanoutArgs) -> Result<bool, String> {
    let cfg = JanusFanoutConfig {
        target: a.target,
        mountpoint: a.janus_mountpoint,
        video_rtp: a.janus_video_rtp,
        audio_rtp: a.janus_audio_rtp,
        viewers: a.viewers,
        publisher: a.publisher.config(),
        duration: a.duration,
        warmup: a.warmup,
        threads: a.threads.max(1),
        connect_timeout: a.connect_timeout,
        server_pid: a.server_pid,
        progress: !a.out.quiet,
    };
    let r = janus_fanout::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", fanout::summary(&r));
    emit(&a.out, &r, None)?;
    Ok(r.viewers_connected == r.viewers_requested)
}

fn fanout_cmd(a: FanoutArgs) -> Result<bool, String> {
    if a.target_kind == TargetKind::Janus {
        return janus_fanout_cmd(a);
    }
    let cfg = FanoutConfig {
        target: a.target,
        room: a.room,
        viewers: a.viewers,
        publisher: a.publisher.config(),
        duration: a.duration,
        warmup: a.warmup,
        threads: a.threads.max(1),
        ramp_per_s: a.ramp,
        connect_timeout: a.connect_timeout,
        server_pid: a.server_pid,
        progress: !a.out.quiet,
    };
    let out = fanout::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", fanout::summary(&out.result));
    emit(&a.out, &out.result, Some(to_json(&out.viewers)?))?;
    let r = &out.result;
    if r.viewers_connected < r.viewers_requested {
        eprintln!("sfumato-perf: only {}/{} viewers connected", r.viewers_connected, r.viewers_requested);
        return Ok(false);
    }
    Ok(true)
}

fn floor_cmd(a: FloorArgs) -> Result<bool, String> {
    let cfg = FloorConfig {
        viewers: a.viewers,
        publisher: a.publisher.config(),
        duration: a.duration,
        warmup: a.warmup,
        mode: if a.gso { SendMode::Gso } else { SendMode::Sendmmsg },
        reflector_cpu: (!a.no_pin).then_some(a.reflector_cpu),
        harness_cpu: a.harness_cpu,
        progress: !a.out.quiet,
    };
    let r = floor::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", floor::summary(&r));
    emit(&a.out, &r, None)?;
    Ok(r.viewers_connected == r.viewers_requested)
}

fn rooms_cmd(a: RoomsArgs) -> Result<bool, String> {
    let cfg = RoomsConfig {
        target: a.target,
        room_prefix: a.room_prefix,
        rooms: a.rooms,
        publishers_per_room: a.publishers.max(1),
        viewers_per_room: a.viewers,
        publisher: a.publisher.config(),
        duration: a.duration,
        warmup: a.warmup,
        threads: a.threads.max(1),
        connect_timeout: a.connect_timeout,
        server_pid: a.server_pid,
        progress: !a.out.quiet,
    };
    let r = rooms::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", rooms::summary(&r));
    emit(&a.out, &r, None)?;
    Ok(r.viewers_connected == r.viewers_requested)
}

fn churn_cmd(a: ChurnArgs) -> Result<bool, String> {
    let cfg = ChurnConfig {
        target: a.target,
        room: a.room,
        rate_per_s: a.rate,
        duration: a.duration,
        lifetime: a.lifetime,
        publisher: a.publisher.config(),
        threads: a.threads.max(1),
        connect_timeout: a.connect_timeout,
        settle_timeout: a.settle_timeout,
        server_pid: a.server_pid,
        progress: !a.out.quiet,
    };
    let r = churn::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", churn::summary(&r));
    emit(&a.out, &r, None)?;
    Ok(r.post_failures + r.no_video_failures == 0 && r.sessions_leaked.unwrap_or(0) == 0)
}

fn report_cmd(a: ReportArgs) -> Result<bool, String> {
    let meta = a
        .meta
        .iter()
        .map(|m| m.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or(format!("--meta {m:?}: expected KEY=VALUE")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut doc = bench_report::gather(&a.date, &meta, &a.runs).map_err(|e| e.to_string())?;
    let mut md = bench_report::markdown(&doc);
    let mut pairs = Vec::new();
    for p in &a.pairs {
        let (x, y) = p.split_once(':').ok_or(format!("--pair {p:?}: expected A:B"))?;
        let ratios = bench_report::pair(&doc, x, y);
        md.push_str(&bench_report::pair_markdown(x, y, &ratios));
        let by_figure: serde_json::Map<String, serde_json::Value> =
            ratios.iter().map(|r| (r.figure.to_string(), serde_json::json!(r.ratio))).collect();
        pairs.push(serde_json::json!({"a": x, "b": y, "ratio_a_over_b": by_figure}));
    }
    doc["pairs"] = serde_json::Value::Array(pairs);
    write_json(&a.out, &doc)?;
    print!("{md}");
    if let Some(p) = a.md {
        std::fs::write(&p, &md).map_err(|e| format!("writing {p}: {e}"))?;
    }
    Ok(true)
}

fn compare_cmd(old: &str, new: &str) -> Result<bool, String> {
    let o = bench_report::read_json(old).map_err(|e| e.to_string())?;
    let n = bench_report::read_json(new).map_err(|e| e.to_string())?;
    let ratios = bench_report::compare(&o, &n).map_err(|e| e.to_string())?;
    print!("{}", bench_report::compare_markdown(old, &ratios));
    Ok(true)
}

fn main() -> ExitCode {
    let res = match Cli::parse().cmd {
        Cmd::Fanout(a) => fanout_cmd(a),
        Cmd::Floor(a) => floor_cmd(a),
        Cmd::Rooms(a) => rooms_cmd(a),
        Cmd::Churn(a) => churn_cmd(a),
        Cmd::Report(a) => report_cmd(a),
        Cmd::Compare { old, new } => compare_cmd(&old, &new),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sfumato-perf: {e}");
            ExitCode::from(2)
        }
    }
}
