//! Bounded lock-free rings between every pair of cores.
//!
//! Built on glommio's shared channels (an SPSC ring plus an eventfd wake-up that is only written when the
//! receiving core sleeps). `Mesh::new(n, cap)` is created on the main thread; each core takes its
//! [`MeshEndpoints`] and connects them inside its executor to get [`CoreLinks`]. Sending never blocks: a full
//! ring returns [`SendError::Full`] and the caller counts the drop.

use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};
use glommio::GlommioError;

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("ring to core {0} is full")]
    Full(usize),
    #[error("core {0} is gone")]
    Closed(usize),
    #[error("no ring from a core to itself (core {0})")]
    SelfSend(usize),
}

/// All rings of an `n`-core engine, before they are handed to the cores.
pub struct Mesh<M: Send + 'static> {
    endpoints: Vec<Option<MeshEndpoints<M>>>,
}

/// One core's unconnected ends: a sender to every other core and a receiver from every other core.
pub struct MeshEndpoints<M: Send + 'static> {
    core: usize,
    senders: Vec<Option<SharedSender<M>>>,
    receivers: Vec<(usize, SharedReceiver<M>)>,
}

impl<M: Send + 'static> Mesh<M> {
    /// Creates `cores × (cores − 1)` rings of `capacity` messages each.
    pub fn new(cores: usize, capacity: usize) -> Self {
        let mut senders: Vec<Vec<Option<SharedSender<M>>>> =
            (0..cores).map(|_| (0..cores).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<(usize, SharedReceiver<M>)>> = (0..cores).map(|_| Vec::new()).collect();
        for from in 0..cores {
            for to in 0..cores {
                if from != to {
                    let (tx, rx) = shared_channel::new_bounded(capacity);
                    senders[from][to] = Some(tx);
                    receivers[to].push((from, rx));
                }
            }
        }
        let endpoints = senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(core, (senders, receivers))| Some(MeshEndpoints { core, senders, receivers }))
            .collect();
        Self { endpoints }
    }

    /// Takes core `core`'s ends (once).
    pub fn take(&mut self, core: usize) -> Option<MeshEndpoints<M>> {
        self.endpoints.get_mut(core).and_then(Option::take)
    }
}

impl<M: Send + 'static> MeshEndpoints<M> {
    /// Connects the ends inside the owning executor. Every core must connect for the others to proceed; all
    /// ends connect concurrently, since each one waits for its peer on the other core.
    pub async fn connect(self) -> CoreLinks<M> {
        // glommio parks an executor whose only pending work is a channel connection, and the peer's connect
        // doesn't always wake it; a 1 ms timer keeps this executor polling until every end is connected.
        let keep_awake = async {
            loop {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        futures_lite::future::or(self.connect_all(), keep_awake).await
    }

    async fn connect_all(self) -> CoreLinks<M> {
        let sender_tasks: Vec<_> = self
            .senders
            .into_iter()
            .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
            .collect();
        let receiver_tasks: Vec<_> =
            self.receivers.into_iter().map(|(from, r)| (from, glommio::spawn_local(r.connect()))).collect();
        let mut senders = Vec::with_capacity(sender_tasks.len());
        for t in sender_tasks {
            senders.push(match t {
                Some(t) => Some(t.await),
                None => None,
            });
        }
        let mut receivers = Vec::with_capacity(receiver_tasks.len());
        for (from, t) in receiver_tasks {
            receivers.push((from, t.await));
        }
        CoreLinks { core: self.core, senders, receivers }
    }
}

/// One core's connected rings.
pub struct CoreLinks<M: Send + 'static> {
    core: usize,
    senders: Vec<Option<ConnectedSender<M>>>,
    receivers: Vec<(usize, ConnectedReceiver<M>)>,
}

impl<M: Send + 'static> CoreLinks<M> {
    pub fn core(&self) -> usize {
        self.core
    }

    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// Queues `msg` for core `to` without blocking.
    pub fn try_send(&self, to: usize, msg: M) -> Result<(), (SendError, M)> {
        match self.senders.get(to) {
            Some(Some(tx)) => tx.try_send(msg).map_err(|e| match e {
                GlommioError::WouldBlock(glommio::ResourceType::Channel(m)) => (SendError::Full(to), m),
                GlommioError::Closed(glommio::ResourceType::Channel(m)) => (SendError::Closed(to), m),
                // shared_channel only returns the two variants above for try_send.
                other => unreachable_channel_error(other, to),
            }),
            _ => Err((SendError::SelfSend(to), msg)),
        }
    }

    /// Queues `msg` for core `to`, waiting for room if the ring is full (control traffic only: never media).
    pub async fn send(&self, to: usize, msg: M) -> Result<(), SendError> {
        match self.senders.get(to) {
            Some(Some(tx)) => tx.send(msg).await.map_err(|_| SendError::Closed(to)),
            _ => Err(SendError::SelfSend(to)),
        }
    }

    /// Hands out the receivers (once), each tagged with the sending core.
    pub fn take_receivers(&mut self) -> Vec<(usize, ConnectedReceiver<M>)> {
        std::mem::take(&mut self.receivers)
    }
}

#[cold]
fn unreachable_channel_error<M>(err: GlommioError<M>, to: usize) -> (SendError, M) {
    // GlommioError<M> only carries the message back in the Channel variants; anything else is a glommio bug.
    panic!("unexpected glommio channel error sending to core {to}: {err:?}")
}
