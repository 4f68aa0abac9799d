//! `sfumato-perf`: load tests against a running sfumato server. See perf/README.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sfumato_perf::client::{next_stream_id, PublisherConfig};
use sfumato_perf::fanout::{self, FanoutConfig};

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
}

#[derive(clap::Args, Debug)]
struct FanoutArgs {
    /// Server base URL (HTTP API).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// Room name.
    #[arg(long, default_value = "perf")]
    room: String,
    /// Number of viewers.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
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
    /// Write the JSON result to this file ("-" = stdout).
    #[arg(long)]
    json: Option<String>,
    /// No per-second progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim().trim_end_matches("bps").trim_end_matches("bit/s");
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad bitrate {s:?} (try 1000k, 2.5M)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err("bitrate must be positive".into());
    }
    Ok((v * mul) as u64)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    if v.is_nan() || v < 0.0 {
        return Err("duration must not be negative".into());
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn parse_ramp(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    let v: f64 = n.parse().map_err(|_| format!("bad ramp {s:?} (try 50/s)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err("ramp must be positive".into());
    }
    Ok(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fanout(a) => {
            let cfg = FanoutConfig {
                target: a.target,
                room: a.room,
                viewers: a.viewers,
                publisher: PublisherConfig {
                    bitrate_bps: a.bitrate,
                    fps: a.fps.max(1),
                    packets_per_frame: a.packets_per_frame,
                    gop: a.gop.max(1),
                    audio: !a.no_audio,
                    stream_id: next_stream_id(),
                    ..PublisherConfig::default()
                },
                duration: a.duration,
                warmup: a.warmup,
                threads: a.threads.max(1),
                ramp_per_s: a.ramp,
                connect_timeout: a.connect_timeout,
                server_pid: a.server_pid,
                progress: !a.quiet,
            };
            let out = match fanout::run(&cfg) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("sfumato-perf: {e}");
                    return ExitCode::from(2);
                }
            };
            print!("{}", fanout::summary(&out.result));
            if let Some(path) = a.json {
                let mut v = serde_json::to_value(&out.result).expect("result serialises");
                v["viewers"] = serde_json::to_value(&out.viewers).expect("viewers serialise");
                let text = serde_json::to_string_pretty(&v).expect("json");
                if path == "-" {
                    println!("{text}");
                } else if let Err(e) = std::fs::write(&path, text + "\n") {
                    eprintln!("sfumato-perf: writing {path}: {e}");
                    return ExitCode::from(2);
                }
            }
            if out.result.viewers_connected < out.result.viewers_requested {
                eprintln!(
                    "sfumato-perf: only {}/{} viewers connected",
                    out.result.viewers_connected, out.result.viewers_requested
                );
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_bitrate("1000k"), Ok(1_000_000));
        assert_eq!(parse_bitrate("2.5M"), Ok(2_500_000));
        assert_eq!(parse_bitrate("800000"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_ramp("50/s"), Ok(50.0));
        assert!(parse_ramp("0/s").is_err());
    }
}
