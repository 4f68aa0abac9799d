//! Socket glue between the engine's executors and the outside world.
//!
//! - [`http_io`]: hyper 1 over a glommio `TcpStream`, with an idle watchdog against slow clients.
//! - [`udp`]: per-core UDP sockets with large kernel buffers.
//! - [`local_addrs`]: the machine's interface addresses, used as ICE host candidates.

pub mod http_io;
pub mod local_addrs;
pub mod udp;
