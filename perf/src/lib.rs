//! `sfumato-perf`: a load-test client library for sfumato and the `sfumato-perf` binary's engine.
//!
//! Peers are real WebRTC endpoints (str0m in RTP mode: ICE, DTLS, SRTP, RTCP, NACK) over real UDP
//! sockets, many per plain std thread. Publishers send VP8/Opus-looking payloads that carry a probe
//! (stream id, counter, send time); viewers measure loss, duplicates, reordering and latency from it.
//!
//! - [`http_client`]: blocking HTTP/1.1 for WHIP/WHEP/healthz.
//! - [`probe`]: the payload format.
//! - [`client`]: peers and the driver threads that run them.
//! - [`harness`]: connect/publish/view/delete and measurement windows.
//! - [`stats`]: accounting and the JSON result.
//! - [`server_probe`]: the server's CPU and memory from /proc and /healthz.
//! - [`fanout`]: the one-publisher, N-viewer scenario.

pub mod client;
pub mod fanout;
pub mod harness;
pub mod http_client;
pub mod probe;
pub mod server_probe;
pub mod stats;

pub use client::{PublisherConfig, Role};
pub use harness::{Harness, HarnessError, MeasureWindow, Session};
pub use probe::Kind;
