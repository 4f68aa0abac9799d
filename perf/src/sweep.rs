//! `sweep`: the largest viewer count a server carries with loss ≤ 1 %.
//!
//! Why it exists: "max viewers per core" is the headline comparison with Janus, and a single fan-out run
//! can't give it. The sweep runs one fan-out per viewer count (start, start + step, … up to max; then
//! optionally bisects between the last good and the first bad count), each a short window against the
//! same server, and stops at the first count that loses more than the limit. The harness runs on its
//! own CPU(s) and can saturate before the server does: a step whose harness CPU is at the limit is
//! marked, the sweep stops there, and the verdict says the harness — not the server — was the bottleneck
//! (the server's limit is then *above* the figure). The step runner is a closure, so the logic is
//! unit-tested with canned results.

use serde::Serialize;

use crate::stats::RunResult;

#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub start: usize,
    pub step: usize,
    pub max: usize,
    /// Bisect between the last good and the first bad count until they are this close (None = no bisect).
    pub resolution: Option<usize>,
    /// Highest acceptable window loss (0.01 = 1 %).
    pub loss_limit: f64,
    /// The harness is saturated at this % of its CPU capacity.
    pub harness_limit_percent: f64,
    /// The harness's CPU capacity in % of one core: min(driver threads, CPUs it may run on) × 100.
    pub harness_capacity_percent: f64,
    /// The server is CPU-bound at this % of one core × its cores.
    pub server_limit_percent: f64,
}

/// One step of the sweep.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub viewers: usize,
    pub viewers_connected: usize,
    pub loss_ratio: f64,
    /// All viewers connected and loss within the limit.
    pub pass: bool,
    pub harness_saturated: bool,
    pub server_saturated: bool,
    pub harness_cpu_percent: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub server_cpu_ns_per_packet: Option<f64>,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub join_p99_ms: Option<f64>,
    pub other_cpu_percent: Option<f64>,
    /// Server threads' run-queue wait (% of wall): the server was short of CPU (a busy machine).
    pub server_run_delay_percent: Option<f64>,
    pub error: Option<String>,
}

impl Step {
    pub fn judge(viewers: usize, r: Result<&RunResult, String>, plan: &SweepPlan) -> Self {
        match r {
            Ok(r) => {
                let pass = r.viewers_connected == viewers && r.loss_ratio <= plan.loss_limit;
                let harness_saturated =
                    r.harness_cpu_percent.is_some_and(|c| c >= plan.harness_limit_percent / 100.0 * plan.harness_capacity_percent);
                Step {
                    viewers,
                    viewers_connected: r.viewers_connected,
                    loss_ratio: r.loss_ratio,
                    pass,
                    harness_saturated,
                    server_saturated: r.server_cpu_percent.is_some_and(|c| c >= plan.server_limit_percent),
                    harness_cpu_percent: r.harness_cpu_percent,
                    server_cpu_percent: r.server_cpu_percent,
                    server_cpu_ns_per_packet: r.server_cpu_ns_per_packet,
                    latency_p50_us: r.latency_us.p50,
                    latency_p99_us: r.latency_us.p99,
                    join_p99_ms: r.join_ms.map(|j| j.p99),
                    other_cpu_percent: r.other_cpu_percent,
                    server_run_delay_percent: r.server_run_delay_percent,
                    error: None,
                }
            }
            Err(e) => Step {
                viewers,
                viewers_connected: 0,
                loss_ratio: 1.0,
                pass: false,
                harness_saturated: false,
                server_saturated: false,
                harness_cpu_percent: None,
                server_cpu_percent: None,
                server_cpu_ns_per_packet: None,
                latency_p50_us: 0,
                latency_p99_us: 0,
                join_p99_ms: None,
                other_cpu_percent: None,
                server_run_delay_percent: None,
                error: Some(e),
            },
        }
    }

    /// A count the server carried, judged cleanly (harness not saturated).
    fn clean_pass(&self) -> bool {
        self.pass && !self.harness_saturated
    }
}

/// What stopped the sweep.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// Loss above the limit with the harness below saturation and the server CPU-bound.
    ServerCpu,
    /// Loss above the limit (or failed joins) with neither side CPU-bound: socket buffers, pacing, ...
    Server,
    /// The harness's CPU saturated first: the server's limit is higher than `max_viewers`.
    Harness,
    /// `--max` reached without loss.
    Max,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub scenario: &'static str,
    pub target: String,
    pub target_kind: String,
    /// Largest count with loss ≤ limit, all viewers connected and the harness not saturated.
    pub max_viewers: Option<usize>,
    pub limited_by: Limit,
    /// The count where the sweep stopped (first loss, or first harness saturation), if any.
    pub stopped_at: Option<usize>,
    pub verdict: String,
    pub loss_limit: f64,
    pub harness_capacity_percent: f64,
    /// The busiest the rest of the machine was during any step (% of one core).
    pub other_cpu_percent: Option<f64>,
    pub steps: Vec<Step>,
}

/// Runs the plan: `run(n)` runs one fan-out with `n` viewers. `label` names the server in the verdict.
pub fn sweep(plan: &SweepPlan, label: &str, mut run: impl FnMut(usize) -> Result<RunResult, String>) -> (Vec<Step>, Limit, Option<usize>) {
    let mut steps = Vec::new();
    let mut one = |n: usize, steps: &mut Vec<Step>| -> Step {
        let r = run(n);
        let s = Step::judge(n, r.as_ref().map_err(Clone::clone), plan);
        eprintln!(
            "sweep {label} {n:>5} viewers: {} loss {:.3}%  server CPU {}  harness CPU {}{}",
            if s.pass { "ok  " } else { "FAIL" },
            s.loss_ratio * 100.0,
            s.server_cpu_percent.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "n/a".into()),
            s.harness_cpu_percent.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "n/a".into()),
            if s.harness_saturated { " (harness saturated)" } else { "" },
        );
        if let Some(e) = &s.error {
            eprintln!("sweep {label} {n}: {e}");
        }
        steps.push(s.clone());
        s
    };
    let (mut good, mut bad): (Option<usize>, Option<(usize, Step)>) = (None, None);
    let mut n = plan.start.max(1);
    while n <= plan.max {
        let s = one(n, &mut steps);
        if !s.clean_pass() {
            bad = Some((n, s));
            break;
        }
        good = Some(n);
        n += plan.step.max(1);
    }
    if let (Some(res), Some((hi0, _))) = (plan.resolution, &bad) {
        let (mut lo, mut hi) = (good.unwrap_or(0), *hi0);
        while hi - lo > res.max(1) {
            let mid = lo + (hi - lo) / 2;
            let s = one(mid, &mut steps);
            if s.clean_pass() {
                lo = mid;
            } else {
                hi = mid;
                bad = Some((mid, s));
            }
        }
    }
    let limit = match &bad {
        None => Limit::Max,
        Some((_, s)) if s.harness_saturated => Limit::Harness,
        Some((_, s)) if s.server_saturated => Limit::ServerCpu,
        Some(_) => Limit::Server,
    };
    (steps, limit, bad.map(|(n, _)| n))
}

/// The human verdict for a finished sweep.
pub fn verdict(label: &str, max: Option<usize>, limit: Limit, stopped_at: Option<usize>, steps: &[Step], loss_limit: f64) -> String {
    let v = verdict_core(label, max, limit, stopped_at, steps, loss_limit);
    let busy = steps.iter().filter_map(|s| s.other_cpu_percent).fold(0f64, f64::max);
    let waited = steps.iter().filter_map(|s| s.server_run_delay_percent).fold(0f64, f64::max);
    if busy > 10.0 || waited > 10.0 {
        format!("{v} [machine busy: other processes up to {busy:.0} % of a core, server waited for a CPU up to {waited:.0} % of the time]")
    } else {
        v
    }
}

fn verdict_core(label: &str, max: Option<usize>, limit: Limit, stopped_at: Option<usize>, steps: &[Step], loss_limit: f64) -> String {
    let at = stopped_at.and_then(|n| steps.iter().rev().find(|s| s.viewers == n));
    let pct = |v: Option<f64>| v.map(|c| format!("{c:.0} %")).unwrap_or_else(|| "n/a".into());
    let m = max.map(|m| m.to_string()).unwrap_or_else(|| "none".into());
    let lim = loss_limit * 100.0;
    match (limit, at) {
        (Limit::Max, _) => format!("{label}: {m} viewers with loss ≤ {lim} % — the sweep's --max; the limit is higher"),
        (Limit::Harness, Some(s)) => format!(
            "{label}: ≥ {m} viewers with loss ≤ {lim} %; at {} the HARNESS was the bottleneck (harness CPU {}, server CPU {}, loss {:.2} %): \
             the server's limit is higher — give the harness more CPUs (--threads N, a wider taskset)",
            s.viewers,
            pct(s.harness_cpu_percent),
            pct(s.server_cpu_percent),
            s.loss_ratio * 100.0
        ),
        (Limit::ServerCpu, Some(s)) => format!(
            "{label}: {m} viewers with loss ≤ {lim} %; at {} the server was CPU-bound (server CPU {}, harness CPU {}, loss {:.2} %)",
            s.viewers,
            pct(s.server_cpu_percent),
            pct(s.harness_cpu_percent),
            s.loss_ratio * 100.0
        ),
        (_, Some(s)) => format!(
            "{label}: {m} viewers with loss ≤ {lim} %; at {} loss was {:.2} % ({}/{} viewers connected{}) with server CPU {} and harness CPU {}",
            s.viewers,
            s.loss_ratio * 100.0,
            s.viewers_connected,
            s.viewers,
            s.error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default(),
            pct(s.server_cpu_percent),
            pct(s.harness_cpu_percent)
        ),
        (_, None) => format!("{label}: {m} viewers"),
    }
}

/// CPUs this process may run on (its affinity mask), at least 1.
pub fn allowed_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes at most sizeof(cpu_set_t) bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        (libc::CPU_COUNT(&set) as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(resolution: Option<usize>) -> SweepPlan {
        SweepPlan {
            start: 100,
            step: 100,
            max: 1000,
            resolution,
            loss_limit: 0.01,
            harness_limit_percent: 90.0,
            harness_capacity_percent: 100.0,
            server_limit_percent: 95.0,
        }
    }

    /// A fake server that loses packets above `cap` viewers; the harness costs `harness_per_viewer` %.
    fn fake(cap: usize, harness_per_viewer: f64) -> impl FnMut(usize) -> Result<RunResult, String> {
        move |n| {
            Ok(RunResult {
                viewers_connected: n,
                loss_ratio: if n > cap { 0.05 } else { 0.001 },
                harness_cpu_percent: Some(n as f64 * harness_per_viewer),
                server_cpu_percent: Some((n as f64 / cap as f64 * 95.0).min(100.0)),
                ..RunResult::default()
            })
        }
    }

    #[test]
    fn stops_at_server_loss_and_bisects() {
        let p = plan(Some(25));
        let (steps, limit, at) = sweep(&p, "t", fake(430, 0.1));
        let ns: Vec<usize> = steps.iter().map(|s| s.viewers).collect();
        assert_eq!(ns, vec![100, 200, 300, 400, 500, 450, 425]);
        assert_eq!(limit, Limit::ServerCpu);
        assert_eq!(at, Some(450));
        let max = steps.iter().filter(|s| s.clean_pass()).map(|s| s.viewers).max();
        assert_eq!(max, Some(425));
        let v = verdict("sfumato", max, limit, at, &steps, 0.01);
        assert!(v.contains("425 viewers") && v.contains("CPU-bound"), "{v}");
    }

    #[test]
    fn harness_saturation_is_not_blamed_on_the_server() {
        let (steps, limit, at) = sweep(&plan(None), "t", fake(10_000, 0.3));
        assert_eq!(steps.len(), 3, "300 viewers × 0.3 % = 90 %: saturated, stop");
        assert!(steps[2].harness_saturated && steps[2].pass);
        assert_eq!((limit, at), (Limit::Harness, Some(300)));
        let v = verdict("sfumato", Some(200), limit, at, &steps, 0.01);
        assert!(v.contains("HARNESS was the bottleneck") && v.contains("≥ 200"), "{v}");
    }

    #[test]
    fn reaching_max_and_errors() {
        let p = SweepPlan { max: 300, ..plan(Some(10)) };
        let (steps, limit, at) = sweep(&p, "t", fake(10_000, 0.01));
        assert_eq!((steps.len(), limit, at), (3, Limit::Max, None));
        let (steps, limit, at) = sweep(&plan(None), "t", |n| if n < 200 { fake(1000, 0.0)(n) } else { Err("join failed".into()) });
        assert_eq!((steps.len(), limit, at), (2, Limit::Server, Some(200)));
        assert!(verdict("janus", Some(100), limit, at, &steps, 0.01).contains("join failed"));
        assert!(allowed_cpus() >= 1);
    }
}
