//! A core's long-lived timer as a `timerfd` read through the reactor, instead of a glommio `Timer`.
//!
//! Why it exists: glommio 0.9 arms its next user timer as an io_uring timeout every time the reactor goes
//! to sleep, and cancels it when it wakes up — two `io_uring_enter` calls per park, whether or not the
//! deadline changed. A media core parks ~100 times a second while its one periodic timer is 20–50 ms
//! away, so that timer cost more in arming than in firing. A `timerfd` is armed with one syscall when its
//! deadline moves, and waited on with one read that stays queued in the ring across parks.
//!
//! Used by `control/src/core_shell.rs` for its tick; nothing on the packet path sleeps on a glommio
//! `Timer` while media flows.

use std::cell::Cell;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;

/// One `CLOCK_MONOTONIC` timerfd, owned by the executor it was made on.
pub struct WakeTimer {
    file: BufferedFile,
    fd: RawFd,
    deadline: Cell<Option<Instant>>,
}

impl WakeTimer {
    /// A disarmed timer. Must be called inside a glommio executor (the fd is read through its reactor).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is checked and then owned by `file` (closed with it).
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { BufferedFile::from_raw_fd(fd) };
        Ok(Self { file, fd, deadline: Cell::new(None) })
    }

    /// (Re)arms the timer to expire once, `after` from now (at least 1 µs: zero would disarm it). An
    /// expiry not yet read is forgotten.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: after.as_secs() as libc::time_t, tv_nsec: after.subsec_nanos() as libc::c_long },
        };
        // SAFETY: `fd` is our timerfd; `spec` is a valid itimerspec; the old value is not wanted.
        if unsafe { libc::timerfd_settime(self.fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.deadline.set(Some(Instant::now() + after));
        Ok(())
    }

    /// When the timer will expire, if armed (as set by the last [`WakeTimer::arm`]).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// Resolves when the timer expires (at the deadline of the latest `arm`, however often it moved).
    pub async fn expired(&self) -> io::Result<()> {
        let read = self.file.read_at(0, 8).await.map_err(io::Error::from)?;
        if read.len() == 8 {
            self.deadline.set(None);
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("timerfd read {} bytes", read.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    fn on_executor<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        LocalExecutorBuilder::default()
            // The test runner's memlock limit may be small: keep glommio's registered buffers small too.
            .io_memory(64 << 10)
            .spawn(move || f())
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn expires_at_the_latest_deadline() {
        on_executor(|| async {
            let t = WakeTimer::new().expect("timerfd");
            assert_eq!(t.deadline(), None);
            let start = Instant::now();
            t.arm(Duration::from_millis(20)).unwrap();
            t.expired().await.unwrap();
            let first = start.elapsed();
            assert!(first >= Duration::from_millis(20), "{first:?}");
            assert_eq!(t.deadline(), None, "read");

            // Pushed back while a read is queued: the read waits for the new deadline.
            let start = Instant::now();
            t.arm(Duration::from_millis(10)).unwrap();
            let wait = t.expired();
            let push = async {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                t.arm(Duration::from_millis(40)).unwrap();
            };
            let (r, ()) = futures_lite::future::zip(wait, push).await;
            r.unwrap();
            assert!(start.elapsed() >= Duration::from_millis(45), "{:?}", start.elapsed());
        });
    }
}
