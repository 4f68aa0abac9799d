//! Server-side cost of a run, read from outside the server.
//!
//! Why it exists: "packets per second" alone hides how much CPU the SFU burns per forwarded packet. With
//! `--server-pid` the harness samples the process's CPU time (its CPU-time clock, `clock_getcpuclockid`, in
//! nanoseconds; utime + stime from `/proc/PID/stat`, in clock ticks, where that clock can't be read) and
//! `/proc/PID/status` (VmRSS) at the start and end of the measured window, and `/healthz` counters
//! (`stats.rtp_packets_forwarded`, drops) at the same moments, so
//! `server_cpu_ns_per_packet = Δcpu_ns / Δrtp_packets_forwarded`.

use std::time::Instant;

use crate::http_client::{HttpClient, HttpError};

/// One sample of the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    /// Sum over the process's threads of time spent runnable but waiting for a CPU (schedstat), if known.
    pub run_delay_ns: Option<u64>,
}

/// Reads the CPU time and VmRSS of `pid`. `None` if the process is gone or /proc is unreadable.
pub fn sample_proc(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_ns: cpu_clock_ns(pid as libc::pid_t).or_else(|| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some(parse_stat_cpu_ticks(&stat)? * ns_per_tick())
        })?,
        rss_bytes: parse_status_rss(&status)?,
        run_delay_ns: run_delay_ns(pid),
    })
}

/// The CPU time of process `pid` (0: this one) in ns, from its CPU-time clock: exact, running threads
/// included. Clock ticks would quantise it: a 10 s window of a server using 3 % of a core is 30 ticks, so
/// ~3 % of a run's ns/packet. Without IRQ time accounting (`CONFIG_IRQ_TIME_ACCOUNTING`, off in Debian's
/// kernels) both count the same work, including the softirq a thread runs on its way out of a syscall.
fn cpu_clock_ns(pid: libc::pid_t) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain libc calls writing into the locals passed.
    let ok = unsafe { libc::clock_getcpuclockid(pid, &mut clock) } == 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    if !ok || unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Σ threads' run-queue wait (2nd field of /proc/PID/task/TID/schedstat), in ns.
fn run_delay_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
        total += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// CPU time of this process (the harness itself), in ns.
pub fn self_cpu_ns() -> Option<u64> {
    cpu_clock_ns(0).or_else(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(parse_stat_cpu_ticks(&stat)? * ns_per_tick())
    })
}

fn ns_per_tick() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        10_000_000
    } else {
        1_000_000_000 / hz as u64
    }
}

/// Busy CPU time of the whole machine (all CPUs: total minus idle and iowait), in ns, from /proc/stat.
pub fn machine_busy_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_proc_stat_busy(&stat)? * ns_per_tick())
}

/// The `cpu` line of /proc/stat → busy ticks.
pub fn parse_proc_stat_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

/// utime (field 14) + stime (field 15). The command name (field 2) may contain spaces and parentheses,
/// so fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field n is f[n - 3].
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:   1234 kB` → bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The server's own forwarding latency (`/healthz` `forward_latency_us`: publisher datagram received → viewer
/// datagram sent), cumulative since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerLatency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Selected `/healthz` counters (node totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    pub rtp_packets_in: u64,
    pub rtp_packets_forwarded: u64,
    pub ring_full_drops: u64,
    pub udp_send_errors: u64,
    pub udp_unroutable: u64,
    pub sessions: u64,
    pub forward_latency_us: Option<ServerLatency>,
    /// The same for RTMP publishers' packets: FLV message read → viewer datagram sent.
    pub rtmp_forward_latency_us: Option<ServerLatency>,
}

impl ServerLatency {
    fn from_healthz(v: &serde_json::Value) -> Option<Self> {
        let l = v.as_object()?;
        let f = |k: &str| l.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        Some(Self { count: f("count"), p50: f("p50"), p99: f("p99"), max: f("max") })
    }
}

impl ServerCounters {
    pub fn from_healthz(v: &serde_json::Value) -> Self {
        let s = &v["stats"];
        let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
        Self {
            rtp_packets_in: n(&s["rtp_packets_in"]),
            rtp_packets_forwarded: n(&s["rtp_packets_forwarded"]),
            ring_full_drops: n(&s["ring_full_drops"]),
            udp_send_errors: n(&s["udp_send_errors"]),
            udp_unroutable: n(&s["udp_unroutable"]),
            sessions: n(&v["sessions"]),
            forward_latency_us: ServerLatency::from_healthz(&v["forward_latency_us"]),
            rtmp_forward_latency_us: ServerLatency::from_healthz(&v["rtmp_forward_latency_us"]),
        }
    }
    pub fn fetch(http: &HttpClient) -> Result<Self, HttpError> {
        Ok(Self::from_healthz(&http.get_json("/healthz")?))
    }
}

/// A sample at one instant: process (if a pid was given), counters (if /healthz answered), harness CPU.
#[derive(Debug, Clone, Copy)]
pub struct WindowSample {
    pub at: Instant,
    pub proc_: Option<ProcSample>,
    pub counters: Option<ServerCounters>,
    pub self_cpu_ns: Option<u64>,
    pub machine_busy_ns: Option<u64>,
    /// How long GET /healthz took.
    pub healthz_ms: f64,
}

impl WindowSample {
    /// The /proc values are read together with `at`; `/healthz` afterwards (an overloaded server may take
    /// long to answer: that delay is reported in `healthz_ms`, not smeared into the CPU figures).
    pub fn take(http: &HttpClient, pid: Option<u32>) -> Self {
        let at = Instant::now();
        let proc_ = pid.and_then(sample_proc);
        let self_cpu_ns = self_cpu_ns();
        let machine_busy_ns = machine_busy_ns();
        let counters = ServerCounters::fetch(http).ok();
        Self { at, proc_, counters, self_cpu_ns, machine_busy_ns, healthz_ms: at.elapsed().as_secs_f64() * 1e3 }
    }
}

/// What changed between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowDelta {
    pub cpu_ns_per_packet: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub forwarded: Option<u64>,
    pub ring_full_drops: Option<u64>,
    pub udp_send_errors: Option<u64>,
    pub harness_cpu_percent: Option<f64>,
    /// CPU used by everything else on the machine (% of one core): high values mean noisy numbers.
    pub other_cpu_percent: Option<f64>,
    /// Server threads' run-queue wait (% of wall): CPU contention on the server's cores.
    pub server_run_delay_percent: Option<f64>,
    /// Slowest GET /healthz of the two samples.
    pub healthz_max_ms: f64,
    /// The server's forwarding latency at the window's end (cumulative since it started).
    pub forward_latency_us: Option<ServerLatency>,
}

impl WindowDelta {
    /// Copies the server/harness figures into a result.
    pub fn fill(&self, r: &mut crate::stats::RunResult) {
        r.server_cpu_ns_per_packet = self.cpu_ns_per_packet;
        r.server_cpu_percent = self.server_cpu_percent;
        r.server_rss_bytes = self.rss_bytes;
        r.server_packets_forwarded = self.forwarded;
        r.server_ring_full_drops = self.ring_full_drops;
        r.server_udp_send_errors = self.udp_send_errors;
        r.harness_cpu_percent = self.harness_cpu_percent;
        r.other_cpu_percent = self.other_cpu_percent;
        r.server_run_delay_percent = self.server_run_delay_percent;
        r.healthz_max_ms = self.healthz_max_ms;
        r.server_forward_latency_us = self.forward_latency_us;
    }
}

pub fn delta(a: &WindowSample, b: &WindowSample) -> WindowDelta {
    let wall_ns = b.at.saturating_duration_since(a.at).as_nanos() as f64;
    let counters = a.counters.zip(b.counters);
    let forwarded = counters.map(|(x, y)| y.rtp_packets_forwarded.saturating_sub(x.rtp_packets_forwarded));
    let cpu = a.proc_.zip(b.proc_).map(|(x, y)| y.cpu_ns.saturating_sub(x.cpu_ns));
    let harness = a.self_cpu_ns.zip(b.self_cpu_ns).map(|(x, y)| y.saturating_sub(x));
    let machine = a.machine_busy_ns.zip(b.machine_busy_ns).map(|(x, y)| y.saturating_sub(x));
    WindowDelta {
        cpu_ns_per_packet: cpu.zip(forwarded).and_then(|(c, f)| (f > 0).then(|| c as f64 / f as f64)),
        server_cpu_percent: cpu.filter(|_| wall_ns > 0.0).map(|c| 100.0 * c as f64 / wall_ns),
        rss_bytes: b.proc_.map(|p| p.rss_bytes),
        forwarded,
        ring_full_drops: counters.map(|(x, y)| y.ring_full_drops.saturating_sub(x.ring_full_drops)),
        udp_send_errors: counters.map(|(x, y)| y.udp_send_errors.saturating_sub(x.udp_send_errors)),
        harness_cpu_percent: harness.filter(|_| wall_ns > 0.0).map(|h| 100.0 * h as f64 / wall_ns),
        other_cpu_percent: machine.zip(harness).filter(|_| wall_ns > 0.0).map(|(m, h)| {
            let other = m.saturating_sub(h).saturating_sub(cpu.unwrap_or(0));
            100.0 * other as f64 / wall_ns
        }),
        server_run_delay_percent: a
            .proc_
            .and_then(|p| p.run_delay_ns)
            .zip(b.proc_.and_then(|p| p.run_delay_ns))
            .filter(|_| wall_ns > 0.0)
            .map(|(x, y)| 100.0 * y.saturating_sub(x) as f64 / wall_ns),
        healthz_max_ms: a.healthz_ms.max(b.healthz_ms),
        forward_latency_us: b.counters.and_then(|c| c.forward_latency_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (sfu (core) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(320));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_status_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048 * 1024));
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
        assert_eq!(parse_proc_stat_busy("cpu  10 5 20 1000 7 1 2 3 0 0\ncpu0 1 2 3 4\n"), Some(41));
        assert_eq!(parse_proc_stat_busy("intr 1\n"), None);
        let me = sample_proc(std::process::id()).expect("our own /proc entry");
        assert!(me.rss_bytes > 0);
    }

    #[test]
    fn cpu_time_is_read_in_nanoseconds() {
        let before = self_cpu_ns().expect("own CPU time");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(3) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = self_cpu_ns().expect("own CPU time");
        // 3 ms of spinning is under one 10 ms clock tick: only schedstat's nanoseconds see it for sure.
        assert!(after - before >= 2_000_000, "{before} -> {after}");
        assert!(sample_proc(std::process::id()).is_some_and(|p| p.cpu_ns >= after && p.run_delay_ns.is_some()));
    }

    #[test]
    fn healthz_counters() {
        let v = serde_json::json!({"sessions": 3, "stats": {"rtp_packets_forwarded": 10, "ring_full_drops": 1}});
        let c = ServerCounters::from_healthz(&v);
        assert_eq!((c.sessions, c.rtp_packets_forwarded, c.ring_full_drops, c.rtp_packets_in), (3, 10, 1, 0));
        assert_eq!(c.forward_latency_us, None);
        let v = serde_json::json!({"forward_latency_us": {"count": 9, "p50": 300, "p90": 600, "p99": 900, "max": 1200}});
        let l = ServerCounters::from_healthz(&v).forward_latency_us;
        assert_eq!(l, Some(ServerLatency { count: 9, p50: 300, p99: 900, max: 1200 }));
    }
}
