//! `sfumato-perf`: load tests against a running sfumato server. See perf/README.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sfumato_perf::bench_report;
use sfumato_perf::cascade::{self, CascadeConfig};
use sfumato_perf::churn::{self, ChurnConfig};
use sfumato_perf::client::{next_stream_id, PublisherConfig};
use sfumato_perf::fanout::{self, FanoutConfig};
use sfumato_perf::floor::{self, FloorConfig};
use sfumato_perf::janus_fanout::{self, JanusFanoutConfig};
use sfumato_perf::reflector::SendMode;
use sfumato_perf::plot;
use sfumato_perf::rooms::{self, RoomsConfig};
use sfumato_perf::rtmp::{self, RtmpConfig};
use sfumato_perf::sweep::{self, SweepPlan, SweepResult};
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
    /// Max viewers with loss ≤ 1 %: one short fan-out per viewer count (sfumato, Janus or the floor).
    Sweep(SweepArgs),
    /// An RTMP publisher (ffmpeg, H.264 + AAC) → N WHEP viewers: join time, packet rate, loss, jitter.
    Rtmp(RtmpArgs),
    /// Cluster cascading: publisher on node A, viewers on A (0 hops) and on B, C (1 hop): added latency per hop, link throughput.
    Cascade(CascadeArgs),
    /// Gathers scenario JSON files into one bench results file and prints its Markdown table.
    Report(ReportArgs),
    /// Renders PNG charts of a bench results file (latency CDF, CPU per packet vs viewers).
    Plot {
        /// The bench results file (perf/results/<date>-bench.json).
        results: String,
        /// Output file prefix: writes PREFIXlatency-cdf.png and PREFIXcpu-per-packet.png.
        #[arg(long)]
        out_prefix: String,
        /// A TTF font for the labels (default: DejaVu Sans or Liberation Sans from /usr/share/fonts).
        #[arg(long)]
        font: Option<String>,
    },
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
    /// Viewer sockets take the server's GSO messages whole (UDP_GRO): over loopback less of the viewers'
    /// kernel receive work is done on (and charged to) the server's CPU. Off by default.
    #[arg(long)]
    receiver_gro: bool,
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
    /// Viewer sockets take a GSO message whole (UDP_GRO): less of the receivers' kernel work lands on the
    /// reflector's CPU over loopback. Off by default (one datagram per receive).
    #[arg(long)]
    receiver_gro: bool,
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SweepKind {
    Sfumato,
    Janus,
    Floor,
}

#[derive(clap::Args, Debug)]
struct SweepArgs {
    /// Server base URL (for Janus its REST endpoint, e.g. http://127.0.0.1:8088/janus; unused for floor).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// sfumato (WHIP/WHEP), janus (streaming plugin) or floor (the built-in plain-UDP reflector).
    #[arg(long, value_enum, default_value_t = SweepKind::Sfumato)]
    target_kind: SweepKind,
    #[arg(long, default_value_t = 1)]
    janus_mountpoint: u64,
    #[arg(long, default_value = "127.0.0.1:5004")]
    janus_video_rtp: std::net::SocketAddr,
    #[arg(long, default_value = "127.0.0.1:5002")]
    janus_audio_rtp: std::net::SocketAddr,
    /// Rooms are named PREFIX-<viewers>.
    #[arg(long, default_value = "sweep")]
    room_prefix: String,
    /// First viewer count.
    #[arg(long, default_value_t = 50)]
    start: usize,
    /// Increment between counts.
    #[arg(long, default_value_t = 50)]
    step: usize,
    /// Last count tried.
    #[arg(long, default_value_t = 1000)]
    max: usize,
    /// After the first failing count, bisect between it and the last good one down to this many viewers.
    #[arg(long)]
    bisect: Option<usize>,
    /// Highest acceptable loss, in percent.
    #[arg(long, default_value_t = 1.0)]
    max_loss_percent: f64,
    /// The harness counts as saturated at this % of its CPU capacity (min(--threads, CPUs allowed) × 100 %).
    #[arg(long, default_value_t = 90.0)]
    harness_limit: f64,
    /// The server counts as CPU-bound at this % of one core.
    #[arg(long, default_value_t = 95.0)]
    server_limit: f64,
    #[command(flatten)]
    publisher: PublisherArgs,
    /// Measured window per count.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Pause between counts (the server tears the previous sessions down).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Harness threads running peers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Floor: the reflector's CPU.
    #[arg(long, default_value_t = 0)]
    reflector_cpu: usize,
    /// Server process id (CPU, RSS; needed to tell a CPU-bound server).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct RtmpArgs {
    /// Server base URL (HTTP API: WHEP, /healthz).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// RTMP application URL; the room is appended.
    #[arg(long, default_value = "rtmp://127.0.0.1:1935/live")]
    rtmp_url: String,
    #[arg(long, default_value = "perf-rtmp")]
    room: String,
    #[arg(long, default_value_t = 10)]
    viewers: usize,
    /// The ffmpeg binary (needs libx264).
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: String,
    /// Test picture size.
    #[arg(long, default_value = "640x360")]
    size: String,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Keyframe interval in frames (viewers wait for a keyframe: RTMP can't be asked for one).
    #[arg(long, default_value_t = 30)]
    gop: u32,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    connect_timeout: Duration,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct CascadeArgs {
    /// HTTP API of node A (`sfumato media`): the publisher and the 0-hop viewers.
    #[arg(long)]
    target_a: String,
    /// HTTP API of node B: viewers that cascade the room from A (1 hop).
    #[arg(long)]
    target_b: String,
    /// HTTP API of an optional node C: more 1-hop viewers (nodes subscribe to the hosting node directly).
    #[arg(long)]
    target_c: Option<String>,
    #[arg(long, default_value = "perf-cascade")]
    room: String,
    /// Viewers on each of B (and C).
    #[arg(long, default_value_t = 20)]
    viewers: usize,
    /// Viewers on A (default: --viewers).
    #[arg(long)]
    viewers_a: Option<usize>,
    #[command(flatten)]
    publisher: PublisherArgs,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Harness threads running peers (all nodes' viewers share them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The nodes' process ids, in the order A,B[,C]: per-node CPU and RSS from /proc.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
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
    /// Fixed and per-packet server CPU from two fan-out runs, FEW:MANY (repeatable), e.g. fanout-1:fanout-50.
    #[arg(long = "cost-model")]
    cost_models: Vec<String>,
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
        receiver_gro: a.receiver_gro,
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
        receiver_gro: a.receiver_gro,
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

fn sweep_cmd(a: SweepArgs) -> Result<bool, String> {
    let cpus = sweep::allowed_cpus();
    let threads = a.threads.max(1);
    let plan = SweepPlan {
        start: a.start,
        step: a.step,
        max: a.max,
        resolution: a.bisect,
        loss_limit: a.max_loss_percent / 100.0,
        harness_limit_percent: a.harness_limit,
        harness_capacity_percent: 100.0 * threads.min(cpus) as f64,
        server_limit_percent: a.server_limit,
    };
    let label = match a.target_kind {
        SweepKind::Sfumato => "sfumato",
        SweepKind::Janus => "Janus",
        SweepKind::Floor => "floor",
    };
    let mut first = true;
    let run = |n: usize| -> Result<sfumato_perf::stats::RunResult, String> {
        if !std::mem::take(&mut first) {
            std::thread::sleep(a.settle);
        }
        let publisher = a.publisher.config();
        match a.target_kind {
            SweepKind::Sfumato => fanout::run(&FanoutConfig {
                target: a.target.clone(),
                room: format!("{}-{n}", a.room_prefix),
                viewers: n,
                publisher,
                duration: a.duration,
                warmup: a.warmup,
                threads,
                ramp_per_s: None,
                connect_timeout: a.connect_timeout,
                server_pid: a.server_pid,
                progress: false,
                receiver_gro: false,
            })
            .map(|o| o.result)
            .map_err(|e| e.to_string()),
            SweepKind::Janus => janus_fanout::run(&JanusFanoutConfig {
                target: a.target.clone(),
                mountpoint: a.janus_mountpoint,
                video_rtp: a.janus_video_rtp,
                audio_rtp: a.janus_audio_rtp,
                viewers: n,
                publisher,
                duration: a.duration,
                warmup: a.warmup,
                threads,
                connect_timeout: a.connect_timeout,
                server_pid: a.server_pid,
                progress: false,
            })
            .map_err(|e| e.to_string()),
            SweepKind::Floor => floor::run(&FloorConfig {
                viewers: n,
                publisher,
                duration: a.duration,
                warmup: a.warmup,
                mode: SendMode::Sendmmsg,
                reflector_cpu: Some(a.reflector_cpu),
                harness_cpu: None,
                progress: false,
                receiver_gro: false,
            })
            .map_err(|e| e.to_string()),
        }
    };
    let (steps, limit, stopped_at) = sweep::sweep(&plan, label, run);
    let max_viewers = steps.iter().filter(|s| s.pass && !s.harness_saturated && stopped_at.is_none_or(|b| s.viewers < b)).map(|s| s.viewers).max();
    let verdict = sweep::verdict(label, max_viewers, limit, stopped_at, &steps, plan.loss_limit);
    let r = SweepResult {
        scenario: "sweep",
        target: if a.target_kind == SweepKind::Floor { "builtin-reflector".into() } else { a.target.clone() },
        target_kind: label.to_lowercase(),
        max_viewers,
        limited_by: limit,
        stopped_at,
        verdict: verdict.clone(),
        loss_limit: plan.loss_limit,
        harness_capacity_percent: plan.harness_capacity_percent,
        other_cpu_percent: steps.iter().filter_map(|s| s.other_cpu_percent).reduce(f64::max),
        steps,
    };
    println!("{verdict}");
    println!("| viewers | pass | loss % | server CPU % | server ns/pkt | harness CPU % | latency p50 / p99 µs | other CPU % |");
    println!("|---|---|---|---|---|---|---|---|");
    let f = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "–".into());
    for s in &r.steps {
        println!(
            "| {} | {}{} | {:.3} | {} | {} | {} | {} / {} | {} |",
            s.viewers,
            if s.pass { "yes" } else { "no" },
            if s.harness_saturated { " (harness saturated)" } else { "" },
            s.loss_ratio * 100.0,
            f(s.server_cpu_percent, 1),
            f(s.server_cpu_ns_per_packet, 0),
            f(s.harness_cpu_percent, 1),
            s.latency_p50_us,
            s.latency_p99_us,
            f(s.other_cpu_percent, 1)
        );
    }
    if let Some(o) = r.other_cpu_percent.filter(|o| *o > 10.0) {
        println!("other processes used up to {o:.0}% of a core during the sweep: the limits are noisy");
    }
    emit(&a.out, &r, None)?;
    Ok(max_viewers.is_some())
}

fn rtmp_cmd(a: RtmpArgs) -> Result<bool, String> {
    let cfg = RtmpConfig {
        target: a.target,
        rtmp_url: a.rtmp_url,
        room: a.room,
        viewers: a.viewers,
        ffmpeg: a.ffmpeg,
        size: a.size,
        fps: a.fps.max(1),
        gop: a.gop.max(1),
        duration: a.duration,
        warmup: a.warmup,
        connect_timeout: a.connect_timeout,
        threads: a.threads.max(1),
        server_pid: a.server_pid,
        progress: !a.out.quiet,
    };
    let r = rtmp::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", rtmp::summary(&r));
    emit(&a.out, &r, None)?;
    Ok(r.viewers_connected == r.viewers_requested)
}

fn cascade_cmd(a: CascadeArgs) -> Result<bool, String> {
    let targets: Vec<String> = [Some(a.target_a), Some(a.target_b), a.target_c].into_iter().flatten().collect();
    if !a.server_pids.is_empty() && a.server_pids.len() != targets.len() {
        return Err(format!("--server-pids: {} pids for {} nodes", a.server_pids.len(), targets.len()));
    }
    let cfg = CascadeConfig {
        targets,
        server_pids: a.server_pids,
        room: a.room,
        viewers: a.viewers,
        viewers_a: a.viewers_a.unwrap_or(a.viewers),
        publisher: a.publisher.config(),
        duration: a.duration,
        warmup: a.warmup,
        connect_timeout: a.connect_timeout,
        threads: a.threads.max(1),
        progress: !a.out.quiet,
    };
    let r = cascade::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", cascade::summary(&r));
    emit(&a.out, &r, None)?;
    Ok(r.viewers_connected == r.viewers_requested)
}

fn plot_cmd(results: &str, prefix: &str, font: Option<&str>) -> Result<bool, String> {
    let doc = bench_report::read_json(results).map_err(|e| e.to_string())?;
    plot::load_font(font).map_err(|e| e.to_string())?;
    for f in plot::plot_all(&doc, prefix).map_err(|e| e.to_string())? {
        eprintln!("sfumato-perf: wrote {f}");
    }
    Ok(true)
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
        if let Some(note) = bench_report::sweep_pair_note(&doc, x, y) {
            md.push_str(&note);
        }
        let by_figure: serde_json::Map<String, serde_json::Value> =
            ratios.iter().map(|r| (r.figure.to_string(), serde_json::json!(r.ratio))).collect();
        pairs.push(serde_json::json!({"a": x, "b": y, "ratio_a_over_b": by_figure}));
    }
    doc["pairs"] = serde_json::Value::Array(pairs);
    let mut models = Vec::new();
    for p in &a.cost_models {
        let (x, y) = p.split_once(':').ok_or(format!("--cost-model {p:?}: expected FEW:MANY"))?;
        match bench_report::cost_model(&doc, x, y) {
            Ok(m) => {
                md.push_str(&bench_report::cost_model_markdown(&m));
                models.push(serde_json::to_value(&m).map_err(|e| e.to_string())?);
            }
            Err(why) => md.push_str(&format!("\ncost model {x} → {y}: none ({why})\n")),
        }
    }
    doc["cost_models"] = serde_json::Value::Array(models);
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
        Cmd::Sweep(a) => sweep_cmd(a),
        Cmd::Rtmp(a) => rtmp_cmd(a),
        Cmd::Cascade(a) => cascade_cmd(a),
        Cmd::Plot { results, out_prefix, font } => plot_cmd(&results, &out_prefix, font.as_deref()),
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
