//! A core's long-lived timer as a `timerfd` read through the reactor, instead of a glommio `Timer`.
//!
//! Why it exists: glommio 0.9 arms its next user timer as an io_uring timeout every time the reactor goes
//! to sleep, and cancels it when it wakes up — two `io_uring_enter` calls per park, whether or not the
//! deadline changed. A media core parks ~100 times a second while its one periodic timer is 20–50 ms
//! away, so that timer cost more in arming than in firing. A `timerfd` is armed with one syscall when its
//! deadline moves, and waited on with one read that stays queued in the ring across parks.
//!
//! Used by `control/src/core_shell.rs` for its tick, so a standalone core has no glommio `Timer` pending
//! while media flows (HTTP idle watches and the cluster pump still use glommio timers while they run).

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;

/// One `CLOCK_MONOTONIC` timerfd, owned by the executor it was made on.
pub struct WakeTimer {
    file: BufferedFile,
    deadline: Cell<Option<Instant>>,
}

impl WakeTimer {
    /// A disarmed timer. Panics outside a glommio executor (the fd is read through its reactor, as glommio's
    /// own files are).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is checked and then owned by `file` (closed with it).
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { BufferedFile::from_raw_fd(fd) };
        Ok(Self { file, deadline: Cell::new(None) })
    }

    /// (Re)arms the timer to expire once, `after` from now (at least 1 µs: zero would disarm it; at most a
    /// day). An expiry not yet read is forgotten.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.clamp(Duration::from_micros(1), Duration::from_secs(86_400));
        // Taken before the kernel's clock read, so the kernel's expiry is never earlier than `deadline`.
        let now = Instant::now();
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: after.as_secs() as libc::time_t, tv_nsec: after.subsec_nanos() as libc::c_long },
        };
        // SAFETY: the fd is our timerfd; `spec` is a valid itimerspec; the old value is not wanted.
        if unsafe { libc::timerfd_settime(self.file.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.deadline.set(Some(now + after));
        Ok(())
    }

    /// The deadline of the last [`WakeTimer::arm`] until [`WakeTimer::expired`] returns for it (`None`
    /// then, and before the first `arm`). It may lie in the past while the expiry waits to be read.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// Resolves when the timer expires at the deadline of the latest `arm`, however often it moved. An
    /// expiry read after a later `arm` (the kernel completed the read before the re-arm, the task ran after)
    /// is skipped: the timer is then waited on again.
    pub async fn expired(&self) -> io::Result<()> {
        loop {
            let read = match self.file.read_at(0, 8).await.map_err(io::Error::from) {
                Ok(read) => read,
                // A retry racing a re-arm can find the expiry count reset: wait again.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                Err(e) => return Err(e),
            };
            if read.len() != 8 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("timerfd read {} bytes", read.len())));
            }
            if self.deadline.get().is_some_and(|d| d > Instant::now()) {
                continue; // re-armed since this expiry
            }
            self.deadline.set(None);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    /// Runs `f` on a fresh glommio executor; the test fails if the executor can't start or `f` returns an error.
    fn on_executor<F: std::future::Future<Output = io::Result<()>> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        let ran = LocalExecutorBuilder::default()
            // The test runner's memlock limit may be small: keep glommio's registered buffers small too.
            .io_memory(64 << 10)
            .spawn(f)
            .map_err(|e| e.to_string())
            .and_then(|handle| handle.join().map_err(|e| e.to_string()));
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("timer error: {e}"),
            Err(e) => panic!("executor: {e}"),
        }
    }

    #[test]
    fn expires_at_the_latest_deadline() {
        on_executor(|| async {
            let t = WakeTimer::new()?;
            assert_eq!(t.deadline(), None);
            let start = Instant::now();
            t.arm(Duration::from_millis(20))?;
            t.expired().await?;
            let first = start.elapsed();
            assert!(first >= Duration::from_millis(20), "{first:?}");
            assert_eq!(t.deadline(), None, "read");

            // Pushed back while a read is queued: the read waits for the new deadline.
            let start = Instant::now();
            t.arm(Duration::from_millis(10))?;
            let wait = t.expired();
            let push = async {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                t.arm(Duration::from_millis(40))
            };
            let (r, pushed) = futures_lite::future::zip(wait, push).await;
            pushed?;
            r?;
            assert!(start.elapsed() >= Duration::from_millis(45), "{:?}", start.elapsed());
            Ok(())
        });
    }

    #[test]
    fn an_expiry_read_after_a_re_arm_is_skipped() {
        on_executor(|| async {
            let t = WakeTimer::new()?;
            let start = Instant::now();
            t.arm(Duration::from_millis(2))?;
            // The read is queued by this first poll and completed by the kernel at 2 ms, but nobody polls the
            // future again until after the re-arm: it then holds an expiry of the old deadline.
            let mut wait = Box::pin(t.expired());
            assert!(futures_lite::future::poll_once(&mut wait).await.is_none());
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let rearmed = start.elapsed();
            t.arm(Duration::from_millis(30))?;
            wait.await?;
            let waited = start.elapsed() - rearmed;
            assert!(waited >= Duration::from_millis(30), "returned for the stale expiry after {waited:?}");
            assert_eq!(t.deadline(), None);
            Ok(())
        });
    }
}
