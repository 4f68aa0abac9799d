//! Process-wide shutdown, requested by SIGINT/SIGTERM or by any core ([`Shutdown::trigger`]), awaited by
//! every core.
//!
//! Each waiting core owns one end of a socket pair; a signal (through `signal-hook`'s self-pipe, which only
//! `write(2)`s, as a signal handler may) or a trigger writes a byte to the other end. The core's reactor
//! then wakes for it like for any socket. Polling a flag on a timer would do too, but every timer wake-up
//! is a reactor park/unpark of an otherwise idle core (20 a second per core at a 50 ms period).

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::AsyncReadExt;

/// A cloneable handle to the shutdown request.
#[derive(Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    /// Control path only (startup and shutdown).
    waiters: Arc<Mutex<Waiters>>,
}

/// The signals that request shutdown.
const SIGNALS: [libc::c_int; 2] = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];

#[derive(Default)]
struct Waiters {
    /// [`Shutdown::install_signal_handlers`] ran: a new waiter registers its pipe for [`SIGNALS`] too.
    signals: bool,
    /// The writing ends of the waiting cores' socket pairs.
    pipes: Vec<StdUnixStream>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests shutdown when the process receives SIGINT or SIGTERM (the flag now; waiting cores through
    /// their pipes, registered as they start waiting).
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for sig in SIGNALS {
            signal_hook::flag::register(sig, self.flag.clone())?;
            // Cores already waiting: their pipes too.
            for w in waiters.pipes.iter() {
                signal_hook::low_level::pipe::register(sig, w.try_clone()?)?;
            }
        }
        waiters.signals = true;
        Ok(())
    }

    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        for w in self.waiters.lock().unwrap_or_else(|e| e.into_inner()).pipes.iter_mut() {
            // Non-blocking: a full pipe already holds a wake-up.
            let _ = w.write(&[1]);
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once shutdown was requested. Must run inside a glommio executor.
    pub async fn wait(&self) {
        match self.wake_pipe() {
            Ok(mut rx) => {
                let mut buf = [0u8; 16];
                while !self.is_triggered() {
                    match rx.read(&mut buf).await {
                        Ok(n) if n > 0 => {}
                        // Closed or failing: fall back to polling the flag.
                        _ => return self.poll_flag().await,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no shutdown pipe; polling the shutdown flag instead");
                self.poll_flag().await
            }
        }
    }

    /// The reading end of a new socket pair whose writing end signals and [`Shutdown::trigger`] write to.
    fn wake_pipe(&self) -> std::io::Result<glommio::net::UnixStream> {
        let (rx, tx) = StdUnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters.signals {
            for sig in SIGNALS {
                signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
            }
        }
        waiters.pipes.push(tx);
        // SAFETY: `rx` is a connected, non-blocking Unix stream socket whose fd we hand over (into_raw_fd).
        Ok(unsafe { glommio::net::UnixStream::from_raw_fd(rx.into_raw_fd()) })
    }

    #[cfg(test)]
    fn pipes(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).pipes.len()
    }

    async fn poll_flag(&self) {
        while !self.is_triggered() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::sync::mpsc;

    /// Runs `shutdown.wait()` on a new executor; the receiver gets a message when it returns.
    fn waiting_core(shutdown: &Shutdown) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let s = shutdown.clone();
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                s.wait().await;
                let _ = tx.send(());
            })
            .expect("executor");
        rx
    }

    /// A trigger from another thread wakes a waiting core.
    #[test]
    fn trigger_wakes_a_waiting_core() {
        let shutdown = Shutdown::new();
        let woke = waiting_core(&shutdown);
        std::thread::sleep(Duration::from_millis(100));
        assert!(woke.try_recv().is_err(), "woke before the trigger");
        assert_eq!(shutdown.pipes(), 1, "the core waits on its pipe, not on a timer");
        shutdown.trigger();
        woke.recv_timeout(Duration::from_secs(5)).expect("the waiting core did not wake");
    }

    /// SIGTERM reaches a waiting core through its pipe, also when the handlers came after it started waiting.
    #[test]
    fn signal_wakes_a_waiting_core() {
        let shutdown = Shutdown::new();
        let woke = waiting_core(&shutdown);
        std::thread::sleep(Duration::from_millis(100));
        shutdown.install_signal_handlers().expect("handlers");
        assert!(woke.try_recv().is_err(), "woke before the signal");
        assert_eq!(shutdown.pipes(), 1, "the core waits on its pipe, not on a timer");
        // SAFETY: raise(3) delivers SIGTERM to this process; the handlers above take it (no default action).
        unsafe { libc::raise(libc::SIGTERM) };
        woke.recv_timeout(Duration::from_secs(5)).expect("the waiting core did not wake");
        assert!(shutdown.is_triggered());
    }
}
