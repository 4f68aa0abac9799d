//! Process-wide shutdown flag set by SIGINT/SIGTERM and polled by every core.
//!
//! Polling an atomic every few tens of milliseconds keeps signal handling out of the executors (a signal
//! handler can't touch executor state) and costs nothing measurable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A cloneable handle to the shutdown flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag when the process receives SIGINT or SIGTERM.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, self.flag.clone())?;
        }
        Ok(())
    }

    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once shutdown was requested. Must run inside a glommio executor.
    pub async fn wait(&self) {
        while !self.is_triggered() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
}
