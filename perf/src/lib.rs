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
//! - [`measure`]: adding up a measured window over viewers.
//! - [`fanout`]: the one-publisher, N-viewer scenario.
//! - [`floor`]: the same fan-out over plain UDP ([`reflector`], [`udp_peers`]): the machine's floor.
//! - [`gro`]: viewer sockets that take the server's GSO messages whole (`--receiver-gro`).
//! - [`rooms`]: R rooms × (P publishers, V viewers); [`churn`]: viewers joining and leaving, leak check.
//! - [`janus`], [`janus_fanout`]: `fanout --target-kind janus`, the same fan-out through Janus.
//! - [`cascade`]: publisher on one `sfumato media` node, viewers on it and on nodes cascading from it.
//! - [`bench_report`]: the benchmark's results file, Markdown table and comparison.
//! - [`affinity`]: CPU pinning and thread CPU clocks; [`units`]: command-line units.

pub mod affinity;
pub mod bench_report;
pub mod cascade;
pub mod churn;
pub mod client;
pub mod fanout;
pub mod floor;
pub mod gro;
pub mod harness;
pub mod http_client;
pub mod janus;
pub mod janus_fanout;
pub mod measure;
pub mod plot;
pub mod probe;
pub mod raw_rtp;
pub mod reflector;
pub mod rooms;
pub mod rtmp;
pub mod server_probe;
pub mod stats;
pub mod sweep;
pub mod udp_peers;
pub mod units;

pub use client::{PublisherConfig, Role};
pub use harness::{Harness, HarnessError, MeasureWindow, Session};
pub use probe::Kind;
