//! CPU pinning and per-thread CPU time.
//!
//! Why it exists: the floor scenario runs its reflector as a thread of the harness process, yet it must
//! sit on the server's CPU (0) while the publisher and viewers sit on the harness's CPU (1), exactly like
//! `taskset -c 0 sfumato` + `taskset -c 1 sfumato-perf`. Its cost is read from the thread's own CPU clock.

/// Pins the calling thread to `cpu`. A thread may leave the mask it inherited from `taskset` unless a
/// cpuset cgroup forbids it; the error says so.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("CPU {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (cpu < CPU_SETSIZE checked above);
    // sched_setaffinity(0, ..) applies to the calling thread and only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("pinning a thread to CPU {cpu}: {e}")));
        }
    }
    Ok(())
}

/// CPU time (user + system) the calling thread has used, in ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_advances_with_work() {
        let a = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() > a);
        assert!(pin_current_thread(1 << 20).is_err());
    }
}
