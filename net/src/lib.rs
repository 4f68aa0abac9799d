//! Socket glue between the engine's executors and the outside world.
//!
//! - [`http_io`]: hyper 1 over a glommio `TcpStream`, with an idle watchdog against slow clients.
//! - [`udp`]: per-core UDP sockets with large kernel buffers; batched sends (GSO) and receives.
//! - [`rtcp_lane`]: a media port as two sockets, RTCP steered by the kernel to one the core never waits on.
//! - [`local_addrs`]: the machine's interface addresses, used as ICE host candidates.

pub mod http_io;
pub mod local_addrs;
pub mod rtcp_lane;
pub mod udp;
