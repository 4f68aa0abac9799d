//! Starting one pinned glommio executor per core and waiting for them all.

use std::future::Future;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::cpus::allowed_cpus;
use crate::shutdown::Shutdown;

/// How the engine lays executors out.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of executors; `None` = one per allowed CPU.
    pub cores: Option<usize>,
    /// Pin executor i to the i-th allowed CPU.
    pub pin: bool,
    /// Memory glommio registers with io_uring per executor (counts against `ulimit -l`, ×3 rings).
    pub io_memory: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { cores: None, pin: true, io_memory: 1 << 20 }
    }
}

/// What a core's root future is given.
#[derive(Clone)]
pub struct CoreContext {
    pub core: usize,
    pub cores: usize,
    pub shutdown: Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("--cores must be at least 1")]
    NoCores,
    #[error(
        "core {core}: io_uring could not lock its memory ({source}). Raise the memlock limit \
         (`ulimit -l` / systemd `LimitMEMLOCK=` / Kubernetes securityContext) or lower --io-memory"
    )]
    MemLock { core: usize, source: std::io::Error },
    #[error("core {core}: executor failed to start: {source}")]
    Spawn { core: usize, source: std::io::Error },
    #[error("core {core} panicked")]
    Panicked { core: usize },
}

/// The set of executors.
pub struct Engine {
    config: EngineConfig,
    cores: usize,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let cores = config.cores.unwrap_or_else(|| allowed_cpus().len());
        if cores == 0 {
            return Err(EngineError::NoCores);
        }
        Ok(Self { config, cores })
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Runs `make_root(ctx)` on every core and returns when all root futures have finished.
    ///
    /// `make_root` is called on the executor's own thread, so the future it returns may hold `Rc`s.
    pub fn run<F, Fut>(&self, shutdown: Shutdown, make_root: F) -> Result<(), EngineError>
    where
        F: Fn(CoreContext) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let cpus = allowed_cpus();
        let mut handles = Vec::with_capacity(self.cores);
        for core in 0..self.cores {
            let placement = if self.config.pin {
                Placement::Fixed(cpus[core % cpus.len()])
            } else {
                Placement::Unbound
            };
            let ctx = CoreContext { core, cores: self.cores, shutdown: shutdown.clone() };
            let make_root = make_root.clone();
            let builder = LocalExecutorBuilder::new(placement)
                .name(&format!("sfumato-core{core}"))
                .io_memory(self.config.io_memory)
                // Hand the CPU to other tasks often enough that a busy fan-out can't starve signalling.
                .preempt_timer(Duration::from_millis(10));
            let handle = builder.spawn(move || make_root(ctx)).map_err(|e| classify(core, e))?;
            handles.push(handle);
        }
        let mut result = Ok(());
        for (core, handle) in handles.into_iter().enumerate() {
            if let Err(e) = handle.join() {
                tracing::error!(core, error = %e, "core stopped with an error");
                if result.is_ok() {
                    result = Err(classify(core, e));
                }
            }
        }
        result
    }
}

fn classify<T>(core: usize, err: glommio::GlommioError<T>) -> EngineError {
    let text = err.to_string();
    let io: std::io::Error = std::io::Error::other(text.clone());
    if text.contains("MemLock") || text.contains("Cannot allocate memory") {
        EngineError::MemLock { core, source: io }
    } else if text.contains("panic") {
        EngineError::Panicked { core }
    } else {
        EngineError::Spawn { core, source: io }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Two cores exchange messages over the mesh; a full ring reports `Full` instead of blocking.
    #[test]
    fn cores_exchange_messages_and_full_ring_is_reported() {
        let engine = Engine::new(EngineConfig { cores: Some(2), pin: false, io_memory: 1 << 20 }).unwrap();
        let mesh = Arc::new(Mutex::new(Mesh::<u64>::new(2, 4)));
        let received = Arc::new(AtomicUsize::new(0));
        let fulls = Arc::new(AtomicUsize::new(0));
        let (r, f) = (received.clone(), fulls.clone());
        engine
            .run(Shutdown::new(), move |ctx| {
                let ends = mesh.lock().unwrap().take(ctx.core).unwrap();
                let (r, f) = (r.clone(), f.clone());
                async move {
                    let mut links = ends.connect().await;
                    if ctx.core == 0 {
                        // Fill the ring: capacity 4 so the 5th..10th sends must fail as Full.
                        for i in 0..10u64 {
                            if let Err((e, _)) = links.try_send(1, i) {
                                assert_eq!(e, crate::SendError::Full(1));
                                f.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        assert!(matches!(links.try_send(0, 1), Err((crate::SendError::SelfSend(0), 1))));
                    } else {
                        let mut rx = links.take_receivers();
                        let (from, rx) = rx.pop().unwrap();
                        assert_eq!(from, 0);
                        for expect in 0..4u64 {
                            assert_eq!(rx.recv().await, Some(expect));
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
            .unwrap();
        assert_eq!(received.load(Ordering::SeqCst), 4);
        assert_eq!(fulls.load(Ordering::SeqCst), 6);
    }
}
