//! The thread-per-core runtime every sfumato node runs on.
//!
//! One glommio executor per core, pinned, each owning its own sockets and state (shared-nothing, like
//! Seastar). Cores never share mutable state: they talk only through the bounded lock-free rings built by
//! [`mesh`]. A full ring is a counted drop, never a block, so one slow core can't stall the others.
//!
//! The engine knows nothing about media: the caller passes a closure that builds each core's root future.

pub mod cpus;
pub mod mesh;
pub mod runtime;
pub mod shutdown;
pub mod wake_timer;

pub use mesh::{CoreLinks, Mesh, MeshEndpoints, SendError};
pub use runtime::{CoreContext, Engine, EngineConfig, EngineError};
pub use shutdown::Shutdown;
pub use wake_timer::WakeTimer;
