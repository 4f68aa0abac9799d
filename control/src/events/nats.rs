//! A minimal NATS *publisher* over a plain non-blocking `TcpStream` (no TLS, no subscriptions).
//!
//! Protocol (text, `\r\n`-terminated control lines): the server greets with `INFO {json}`; we answer
//! `CONNECT {json}` then `PING` and are connected at the `PONG`. Events go out as `PUB <subject> <len>` plus
//! payload. After each batch of `PUB`s we write a `PING`; its `PONG` proves the server processed the batch
//! (it handles a connection's input in order), and only then do the events leave the outbox. Server `PING`s
//! are answered with `PONG`; `-ERR` is logged and, except for permission violations, ends the connection
//! (the server closes it anyway).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connector::{
    Backoff, ConnectorStats, OutageLog, Outbox, Payload, Sink, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT,
};

pub const DEFAULT_PORT: u16 = 4222;
/// `INFO` → `CONNECT` → `PONG` must complete within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A `PING` not answered within this means the connection is dead (half-open).
const PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// While idle, a `PING` this often notices a silently dead connection.
const IDLE_PING: Duration = Duration::from_secs(30);
/// Events per `PING` (acknowledgement batch).
const BATCH: usize = 256;
/// Stop writing more events while this many bytes are waiting for the socket.
const OUT_HIGH_WATER: usize = 256 * 1024;
/// Longest control line accepted from the server (INFO can be long in clusters).
const MAX_LINE: usize = 1 << 20;
/// How often to poll the socket while a handshake or acknowledgement is pending.
const BUSY_POLL: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_millis(100);

/// One server from `--nats-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
}

impl fmt::Display for NatsServer {
    /// The URL without credentials, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "nats://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "nats://{}:{}", self.host, self.port)
        }
    }
}

/// Parses `nats://[user:pass@|token@]host[:port]`, several separated by commas.
pub fn parse_urls(s: &str) -> Result<Vec<NatsServer>, String> {
    let servers = s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(parse_url).collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("no NATS server URL given".into());
    }
    Ok(servers)
}

pub fn parse_url(url: &str) -> Result<NatsServer, String> {
    let bad = |why: &str| format!("invalid NATS URL {:?}: {why} (expected nats://[user:pass@]host[:port])", redact(url));
    let Some((scheme, rest)) = url.split_once("://") else { return Err(bad("missing nats:// scheme")) };
    match scheme.to_ascii_lowercase().as_str() {
        "nats" | "tcp" => {}
        "tls" | "wss" | "ws" => return Err(bad("TLS and websocket connections are not supported")),
        _ => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(bad("unexpected path or query"));
    }
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = split_host_port(hostport, DEFAULT_PORT).map_err(|e| bad(&e))?;
    let (mut user, mut pass, mut token) = (None, None, None);
    if let Some(ui) = userinfo {
        match ui.split_once(':') {
            Some((u, p)) => {
                user = Some(percent_decode(u).map_err(|e| bad(&e))?);
                pass = Some(percent_decode(p).map_err(|e| bad(&e))?);
            }
            None if !ui.is_empty() => token = Some(percent_decode(ui).map_err(|e| bad(&e))?),
            None => {}
        }
    }
    Ok(NatsServer { host, port, user, pass, token })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets, port).
pub(crate) fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else { return Err("unclosed [".into()) };
        match after {
            "" => (h, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("unexpected {after:?} after ]")),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err("IPv6 addresses must be in brackets".into()),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("bad character in host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("bad port {p:?}")),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else { return Err("bad %-escape in credentials".into()) };
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".into())
}

/// The URL with any credentials replaced, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://***@{}", &url[..s], &url[a + 1..]),
        _ => url.to_string(),
    }
}

/// The `CONNECT` line for `srv` (credentials included when the URL had them).
pub fn connect_line(srv: &NatsServer) -> Vec<u8> {
    let mut o = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": "sfumato",
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": false,
        "headers": false,
    });
    if let Some(u) = &srv.user {
        o["user"] = u.as_str().into();
    }
    if let Some(p) = &srv.pass {
        o["pass"] = p.as_str().into();
    }
    if let Some(t) = &srv.token {
        o["auth_token"] = t.as_str().into();
    }
    let mut line = b"CONNECT ".to_vec();
    line.extend_from_slice(o.to_string().as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

/// Appends `PUB <subject> <len>\r\n<payload>\r\n`.
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// A protocol message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOp {
    Info(serde_json::Value),
    Ping,
    Pong,
    Ok,
    Err(String),
    /// A delivered message (we never subscribe; skipped) or an unknown op.
    Other(String),
}

/// Parses the complete messages at the front of `buf`; returns them and how many bytes they took.
pub fn parse_ops(buf: &[u8]) -> Result<(Vec<ServerOp>, usize), String> {
    let mut ops = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(end) = find(rest, b"\r\n") else {
            if rest.len() > MAX_LINE {
                return Err("server control line too long".into());
            }
            return Ok((ops, pos));
        };
        let line = String::from_utf8_lossy(&rest[..end]);
        let (op, args) = match line.split_once([' ', '\t']) {
            Some((o, a)) => (o.to_ascii_uppercase(), a.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        let mut used = end + 2;
        let parsed = match op.as_str() {
            "INFO" => ServerOp::Info(serde_json::from_str(args).map_err(|e| format!("bad INFO from server: {e}"))?),
            "PING" => ServerOp::Ping,
            "PONG" => ServerOp::Pong,
            "+OK" => ServerOp::Ok,
            "-ERR" => ServerOp::Err(args.trim_matches('\'').to_string()),
            "MSG" | "HMSG" => {
                // MSG <subject> <sid> [reply] <#bytes>; HMSG ... <#hdr> <#total>: skip the payload.
                let n: usize = args.split_whitespace().last().and_then(|n| n.parse().ok()).ok_or("bad MSG line")?;
                if rest.len() < used + n + 2 {
                    return Ok((ops, pos));
                }
                used += n + 2;
                ServerOp::Other(op)
            }
            _ => ServerOp::Other(line.to_string()),
        };
        ops.push(parsed);
        pos += used;
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitInfo,
    AwaitPong,
    Ready,
}

struct Conn {
    stream: TcpStream,
    server: usize,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    phase: Phase,
    handshake_deadline: Instant,
    /// When each outstanding `PING` (one per outbox batch) was written.
    pings: VecDeque<Instant>,
    last_ping: Instant,
}

pub struct NatsSink {
    servers: Vec<NatsServer>,
    next_server: usize,
    outbox: Outbox,
    stats: Arc<ConnectorStats>,
    conn: Option<Conn>,
    backoff: Backoff,
    outage: OutageLog,
    ever_connected: bool,
    max_payload: usize,
}

impl NatsSink {
    pub fn new(servers: Vec<NatsServer>, buffer: usize, stats: Arc<ConnectorStats>) -> Self {
        Self {
            servers,
            next_server: 0,
            outbox: Outbox::new(buffer),
            stats,
            conn: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            outage: OutageLog::default(),
            ever_connected: false,
            max_payload: 1 << 20,
        }
    }

    fn connect(&mut self, now: Instant) -> io::Result<()> {
        let idx = self.next_server % self.servers.len();
        let srv = &self.servers[idx];
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{}: no address", srv.host));
        for addr in (srv.host.as_str(), srv.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_nonblocking(true)?;
                    self.conn = Some(Conn {
                        stream,
                        server: idx,
                        rbuf: Vec::with_capacity(4096),
                        out: Vec::with_capacity(64 * 1024),
                        out_pos: 0,
                        phase: Phase::AwaitInfo,
                        handshake_deadline: now + HANDSHAKE_TIMEOUT,
                        pings: VecDeque::new(),
                        last_ping: now,
                    });
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reads, reacts, writes. An error means the connection is unusable.
    fn step(&mut self, now: Instant) -> Result<(), String> {
        let Some(c) = self.conn.as_mut() else { return Ok(()) };
        let eof = read_available(&mut c.stream, &mut c.rbuf).map_err(|e| format!("read: {e}"))?;
        let (ops, used) = parse_ops(&c.rbuf)?;
        c.rbuf.drain(..used);
        for op in ops {
            self.on_op(op, now)?;
        }
        let Some(c) = self.conn.as_mut() else { return Ok(()) };
        if eof {
            return Err("connection closed by the server".into());
        }
        if c.phase == Phase::Ready {
            self.fill(now);
        }
        let Some(c) = self.conn.as_mut() else { return Ok(()) };
        flush_out(&mut c.stream, &mut c.out, &mut c.out_pos).map_err(|e| format!("write: {e}"))?;
        if c.phase != Phase::Ready && now > c.handshake_deadline {
            return Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"));
        }
        if c.pings.front().is_some_and(|t| now.saturating_duration_since(*t) > PONG_TIMEOUT) {
            return Err(format!("no PONG within {PONG_TIMEOUT:?}"));
        }
        Ok(())
    }

    fn on_op(&mut self, op: ServerOp, now: Instant) -> Result<(), String> {
        let Some(c) = self.conn.as_mut() else { return Ok(()) };
        match op {
            ServerOp::Info(info) => {
                if c.phase == Phase::AwaitInfo {
                    if info.get("tls_required").and_then(|v| v.as_bool()) == Some(true) {
                        return Err("server requires TLS, which this client does not support".into());
                    }
                    if let Some(m) = info.get("max_payload").and_then(|v| v.as_u64()) {
                        self.max_payload = m as usize;
                    }
                    c.out.extend_from_slice(&connect_line(&self.servers[c.server]));
                    c.out.extend_from_slice(b"PING\r\n");
                    c.phase = Phase::AwaitPong;
                }
            }
            ServerOp::Ping => c.out.extend_from_slice(b"PONG\r\n"),
            ServerOp::Pong => match c.phase {
                Phase::AwaitPong => {
                    c.phase = Phase::Ready;
                    self.on_ready(now);
                }
                Phase::Ready => {
                    c.pings.pop_front();
                    let n = self.outbox.ack();
                    self.stats.nats.published.fetch_add(n as u64, Ordering::Relaxed);
                }
                Phase::AwaitInfo => return Err("PONG before INFO".into()),
            },
            ServerOp::Ok => {}
            ServerOp::Err(msg) => {
                if c.phase == Phase::Ready && msg.to_ascii_lowercase().contains("permissions violation") {
                    tracing::warn!(server = %self.servers[c.server], error = %msg, "nats refused a publish");
                } else {
                    return Err(format!("server error: {msg}"));
                }
            }
            ServerOp::Other(_) => {}
        }
        Ok(())
    }

    fn on_ready(&mut self, now: Instant) {
        self.backoff.succeeded();
        if self.ever_connected {
            self.stats.nats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.stats.nats.connected.store(true, Ordering::Relaxed);
        let server = self.conn.as_ref().map(|c| self.servers[c.server].to_string()).unwrap_or_default();
        let down_for = self.outage.recovered(now);
        tracing::info!(
            %server,
            buffered = self.outbox.len(),
            dropped = self.stats.nats.dropped.load(Ordering::Relaxed),
            down_for_ms = down_for.map(|d| d.as_millis() as u64),
            "nats connected"
        );
    }

    /// Writes unwritten events (then a `PING` per batch) into the output buffer.
    fn fill(&mut self, now: Instant) {
        let Some(c) = self.conn.as_mut() else { return };
        while c.out.len() - c.out_pos < OUT_HIGH_WATER {
            let Some(p) = self.outbox.next_unwritten() else { break };
            if p.json.len() > self.max_payload {
                let p = self.outbox.discard_next_unwritten();
                self.stats.nats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = p.map(|p| p.kind), max_payload = self.max_payload, "event larger than the NATS max_payload dropped");
                continue;
            }
            encode_pub(&mut c.out, &p.subject, &p.json);
            self.outbox.mark_written();
            if self.outbox.open_batch() >= BATCH {
                c.out.extend_from_slice(b"PING\r\n");
                self.outbox.end_batch();
                c.pings.push_back(now);
                c.last_ping = now;
            }
        }
        let idle_ping = c.pings.is_empty() && now.saturating_duration_since(c.last_ping) >= IDLE_PING;
        if self.outbox.open_batch() > 0 || idle_ping {
            c.out.extend_from_slice(b"PING\r\n");
            self.outbox.end_batch();
            c.pings.push_back(now);
            c.last_ping = now;
        }
    }

    fn fail(&mut self, now: Instant, error: &str) {
        let was = self.conn.take();
        let was_ready = was.as_ref().is_some_and(|c| c.phase == Phase::Ready);
        let server = self.servers[was.as_ref().map(|c| c.server).unwrap_or(self.next_server % self.servers.len())].to_string();
        self.outbox.rewind();
        self.stats.nats.connected.store(false, Ordering::Relaxed);
        self.next_server = self.next_server.wrapping_add(1);
        let retry_in = self.backoff.failed(now);
        if was_ready {
            self.outage.failure(now);
            tracing::warn!(%server, %error, buffered = self.outbox.len(), "nats connection lost; buffering events and reconnecting");
        } else if self.outage.failure(now) {
            tracing::warn!(
                %server,
                %error,
                attempts = self.outage.failures(),
                retry_in_ms = retry_in.as_millis() as u64,
                buffered = self.outbox.len(),
                dropped = self.stats.nats.dropped.load(Ordering::Relaxed),
                "nats unavailable; buffering events"
            );
        } else {
            tracing::debug!(%server, %error, retry_in_ms = retry_in.as_millis() as u64, "nats connect failed");
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        match &self.conn {
            None => self.backoff.retry_at().unwrap_or(now),
            Some(c) => {
                if c.phase != Phase::Ready || !c.pings.is_empty() || c.out_pos < c.out.len() || self.outbox.unwritten() > 0 {
                    now + BUSY_POLL
                } else {
                    (now + IDLE_POLL).min(c.last_ping + IDLE_PING)
                }
            }
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn enqueue(&mut self, p: Arc<Payload>) {
        let dropped = self.outbox.push(p);
        if dropped > 0 {
            let total = self.stats.nats.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            if total == 1 || total.is_power_of_two() {
                tracing::warn!(dropped_total = total, buffer = self.outbox.len(), "nats outbox full; dropping the oldest events");
            }
        }
    }

    fn pump(&mut self, now: Instant) -> Instant {
        if self.conn.is_none() && self.backoff.ready(now) {
            if let Err(e) = self.connect(now) {
                self.fail(now, &format!("connect: {e}"));
            }
        }
        if self.conn.is_some() {
            if let Err(e) = self.step(now) {
                self.fail(now, &e);
            }
        }
        self.stats.nats.buffered.store(self.outbox.len() as u64, Ordering::Relaxed);
        self.next_wake(now)
    }

    fn pending(&self) -> usize {
        self.outbox.len()
    }

    fn close(&mut self) {
        if !self.outbox.is_empty() {
            tracing::warn!(undelivered = self.outbox.len(), "nats: events still buffered at shutdown are lost");
        }
        if let Some(c) = self.conn.take() {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.stats.nats.connected.store(false, Ordering::Relaxed);
        self.stats.nats.buffered.store(self.outbox.len() as u64, Ordering::Relaxed);
    }
}

/// Reads whatever the socket has; returns whether the peer closed it.
pub(crate) fn read_available(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    for _ in 0..64 {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes as much of `out[pos..]` as the socket takes.
pub(crate) fn flush_out(stream: &mut TcpStream, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    while *pos < out.len() {
        match stream.write(&out[*pos..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket took no data")),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *pos == out.len() {
        out.clear();
        *pos = 0;
    } else if *pos > 64 * 1024 {
        out.drain(..*pos);
        *pos = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::connector::{start, ConnectorConfig};
    use crate::events::EventRecord;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn urls() {
        let s = parse_url("nats://127.0.0.1:4333").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.user.clone(), s.token.clone()), ("127.0.0.1", 4333, None, None));
        let s = parse_url("nats://alice:s%40cret%3A@nats.example:5000/").unwrap();
        assert_eq!((s.user.as_deref(), s.pass.as_deref(), s.port), (Some("alice"), Some("s@cret:"), 5000));
        assert_eq!(s.to_string(), "nats://nats.example:5000");
        let s = parse_url("NATS://tok3n@localhost").unwrap();
        assert_eq!((s.token.as_deref(), s.port, s.user.as_deref()), (Some("tok3n"), DEFAULT_PORT, None));
        let s = parse_url("nats://[::1]:4222").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 4222));
        assert_eq!(s.to_string(), "nats://[::1]:4222");
        assert_eq!(parse_url("tcp://h").unwrap().port, 4222);
        let all = parse_urls("nats://a:1, nats://b:2").unwrap();
        assert_eq!(all.iter().map(|s| s.host.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        for bad in [
            "",
            "127.0.0.1:4222",
            "http://h:4222",
            "tls://h:4222",
            "nats://",
            "nats://:4222",
            "nats://h:0",
            "nats://h:99999",
            "nats://h:port",
            "nats://h:4222/sub",
            "nats://::1:4222",
            "nats://[::1",
            "nats://u:%zz@h",
            " , ",
        ] {
            assert!(parse_urls(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = parse_url("ftp://bob:hunter2@h").unwrap_err();
        assert!(!e.contains("hunter2"), "credentials leaked into the error: {e}");
    }

    #[test]
    fn connect_and_pub_encoding() {
        let srv = parse_url("nats://al\"ice:p%20w@h").unwrap();
        let line = connect_line(&srv);
        assert!(line.starts_with(b"CONNECT {") && line.ends_with(b"}\r\n"));
        let v: serde_json::Value = serde_json::from_slice(&line[8..line.len() - 2]).unwrap();
        assert_eq!(v["verbose"], false);
        assert_eq!(v["pedantic"], false);
        assert_eq!(v["name"], "sfumato");
        assert_eq!(v["lang"], "rust");
        assert_eq!(v["protocol"], 1);
        assert_eq!(v["user"], "al\"ice");
        assert_eq!(v["pass"], "p w");
        assert!(v.get("auth_token").is_none());
        let anon = connect_line(&parse_url("nats://h").unwrap());
        assert!(!String::from_utf8(anon).unwrap().contains("\"user\""));
        let mut out = Vec::new();
        encode_pub(&mut out, "sfumato.events.peer.joined", br#"{"a":1}"#);
        encode_pub(&mut out, "x", b"");
        assert_eq!(out, b"PUB sfumato.events.peer.joined 7\r\n{\"a\":1}\r\nPUB x 0\r\n\r\n");
    }

    #[test]
    fn server_ops() {
        let buf = b"INFO {\"server_id\":\"X\",\"max_payload\":1024}\r\nPING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\nMSG a 1 3\r\nabc\r\nPI";
        let (ops, used) = parse_ops(buf).unwrap();
        assert_eq!(
            ops,
            [
                ServerOp::Info(serde_json::json!({"server_id": "X", "max_payload": 1024})),
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Authorization Violation".into()),
                ServerOp::Other("MSG".into()),
            ]
        );
        assert_eq!(&buf[used..], b"PI");
        // an incomplete MSG payload waits for more bytes
        let (ops, used) = parse_ops(b"PONG\r\nMSG a 1 5\r\nab").unwrap();
        assert_eq!((ops, used), (vec![ServerOp::Pong], 6));
        assert!(parse_ops(b"INFO {nope\r\n").is_err());
        assert_eq!(parse_ops(b"").unwrap(), (vec![], 0));
    }

    fn ev(i: usize) -> EventRecord {
        EventRecord {
            kind: if i.is_multiple_of(2) { "peer.joined" } else { "peer.left" },
            node: "node-a".into(),
            room: format!("room{i}"),
            peer: None,
            session: Some(format!("{i:016x}")),
            ts_ms: 1000 + i as u64,
            data: serde_json::json!({ "i": i }),
        }
    }

    /// A fake NATS server connection: reads CONNECT, answers the handshake PING, then collects PUBs.
    struct FakeConn {
        r: BufReader<TcpStream>,
        w: TcpStream,
    }

    impl FakeConn {
        fn accept(l: &TcpListener) -> (Self, serde_json::Value) {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"INFO {\"server_id\":\"fake\",\"max_payload\":1048576,\"proto\":1}\r\n").unwrap();
            let mut c = Self { r: BufReader::new(s), w };
            let line = c.line();
            let connect = serde_json::from_str(line.strip_prefix("CONNECT ").expect("CONNECT first")).unwrap();
            assert_eq!(c.line(), "PING");
            c.w.write_all(b"PONG\r\n").unwrap();
            (c, connect)
        }

        fn line(&mut self) -> String {
            let mut s = String::new();
            self.r.read_line(&mut s).unwrap();
            assert!(s.ends_with("\r\n"), "line not CRLF-terminated: {s:?}");
            s.truncate(s.len() - 2);
            s
        }

        /// Next PUB (subject, payload), answering PINGs with PONG if `pong`.
        fn next_pub(&mut self, pong: bool) -> (String, serde_json::Value) {
            loop {
                let line = self.line();
                if line == "PING" {
                    if pong {
                        self.w.write_all(b"PONG\r\n").unwrap();
                    }
                    continue;
                }
                let mut parts = line.split(' ');
                assert_eq!(parts.next(), Some("PUB"), "{line:?}");
                let subject = parts.next().unwrap().to_string();
                let n: usize = parts.next().unwrap().parse().unwrap();
                assert!(parts.next().is_none(), "{line:?}");
                let mut body = vec![0u8; n + 2];
                self.r.read_exact(&mut body).unwrap();
                assert_eq!(&body[n..], b"\r\n");
                return (subject, serde_json::from_slice(&body[..n]).unwrap());
            }
        }
    }

    #[test]
    fn fake_server_framing_and_resend_after_reconnect() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (seen_tx, seen_rx) = mpsc::channel::<(u32, String, serde_json::Value)>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            // Connection 1: take three events, never acknowledge them, then die.
            let (mut c, connect) = FakeConn::accept(&l);
            assert_eq!(connect["user"], "bob");
            assert_eq!(connect["pass"], "p@ss");
            assert_eq!(connect["verbose"], false);
            assert_eq!(connect["name"], "sfumato");
            for _ in 0..3 {
                let (s, v) = c.next_pub(false);
                seen_tx.send((1, s, v)).unwrap();
            }
            drop(c);
            // Connection 2: acknowledge everything.
            let (mut c, _) = FakeConn::accept(&l);
            for _ in 0..5 {
                let (s, v) = c.next_pub(true);
                seen_tx.send((2, s, v)).unwrap();
            }
            // keep answering PINGs until the test is done
            c.r.get_ref().set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            while stop_rx.try_recv().is_err() {
                let mut s = String::new();
                match c.r.read_line(&mut s) {
                    Ok(0) => break,
                    Ok(_) if s == "PING\r\n" => c.w.write_all(b"PONG\r\n").unwrap(),
                    _ => {}
                }
            }
        });

        let cfg = ConnectorConfig { nats_url: Some(format!("nats://bob:p%40ss@127.0.0.1:{port}")), hook_url: None, buffer: 100 };
        let (bus, conn) = start("node-a", cfg).unwrap();
        let conn = conn.unwrap();
        for i in 0..3 {
            bus.emit(ev(i));
        }
        let recv = || seen_rx.recv_timeout(Duration::from_secs(10)).expect("fake server got nothing");
        for i in 0..3 {
            let (c, subject, v) = recv();
            assert_eq!(c, 1);
            assert_eq!(subject, format!("sfumato.events.{}", v["kind"].as_str().unwrap()));
            assert_eq!(v["room"], format!("room{i}"));
            assert_eq!(v["node"], "node-a");
            assert_eq!(v["data"]["i"], i);
        }
        for i in 3..5 {
            bus.emit(ev(i));
        }
        // After the reconnect the three unacknowledged events come again, first and in order.
        for i in 0..5 {
            let (c, _, v) = recv();
            assert_eq!((c, v["room"].as_str().unwrap()), (2, format!("room{i}").as_str()));
        }
        let t0 = Instant::now();
        while conn.stats.published.load(Ordering::Relaxed) < 5 {
            assert!(t0.elapsed() < Duration::from_secs(5), "never acknowledged: {}", conn.stats.snapshot());
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = conn.stats.snapshot();
        assert_eq!(s["published"], 5, "{s}");
        assert_eq!(s["dropped"], 0, "{s}");
        assert_eq!(s["buffered"], 0, "{s}");
        assert_eq!(s["received"], 5, "{s}");
        assert_eq!(s["connected"], true, "{s}");
        assert_eq!(s["nats"]["reconnects"], 1, "{s}");
        drop(bus);
        assert!(conn.finish(Duration::from_secs(5)));
        let _ = stop_tx.send(()); // the server thread may already have seen the close
        server.join().unwrap();
    }

    /// Throughput against a real server: `SFUMATO_NATS_BENCH=nats://127.0.0.1:4222 cargo test --release -p
    /// sfumato nats_bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn nats_bench() {
        let Ok(url) = std::env::var("SFUMATO_NATS_BENCH") else { return };
        let n: usize = std::env::var("SFUMATO_NATS_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
        let cfg = ConnectorConfig { nats_url: Some(url), hook_url: None, buffer: n };
        let (bus, conn) = start("bench", cfg).unwrap();
        let conn = conn.unwrap();
        let t0 = Instant::now();
        while !conn.stats.connected.load(Ordering::Relaxed) {
            assert!(t0.elapsed() < Duration::from_secs(5), "not connected");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < n {
            let before = bus.dropped();
            bus.emit(ev(sent));
            if bus.dropped() == before {
                sent += 1;
            } else {
                std::thread::yield_now(); // the bus queue is full: the connector is the bottleneck
            }
        }
        let emitted = t0.elapsed().as_secs_f64();
        while conn.stats.published.load(Ordering::Relaxed) + conn.stats.dropped.load(Ordering::Relaxed) < n as u64 {
            assert!(t0.elapsed() < Duration::from_secs(120), "{}", conn.stats.snapshot());
            std::thread::sleep(Duration::from_millis(1));
        }
        let secs = t0.elapsed().as_secs_f64();
        let bytes = serde_json::to_vec(&ev(1)).unwrap().len();
        println!(
            "{n} events (~{bytes} B JSON) emitted in {emitted:.2}s, acknowledged in {secs:.2}s: {:.0} events/s; {}",
            n as f64 / secs,
            conn.stats.snapshot()
        );
        drop(bus);
        assert!(conn.finish(Duration::from_secs(5)));
    }

    #[test]
    fn buffers_while_down_then_delivers_and_counts_overflow() {
        // Nothing listens yet: events pile up in a 4-slot outbox; the oldest two are dropped.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = ConnectorConfig { nats_url: Some(format!("nats://127.0.0.1:{port}")), hook_url: None, buffer: 4 };
        let (bus, conn) = start("n", cfg).unwrap();
        let conn = conn.unwrap();
        for i in 0..6 {
            bus.emit(ev(i));
        }
        let t0 = Instant::now();
        while conn.stats.dropped.load(Ordering::Relaxed) < 2 {
            assert!(t0.elapsed() < Duration::from_secs(5), "{}", conn.stats.snapshot());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(conn.stats.buffered.load(Ordering::Relaxed), 4);
        assert!(!conn.stats.connected.load(Ordering::Relaxed));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (mut c, _) = FakeConn::accept(&l);
        let rooms: Vec<String> = (0..4).map(|_| c.next_pub(true).1["room"].as_str().unwrap().to_string()).collect();
        assert_eq!(rooms, ["room2", "room3", "room4", "room5"]);
        // answer the batch's PING
        c.r.get_ref().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let t0 = Instant::now();
        while conn.stats.published.load(Ordering::Relaxed) < 4 {
            assert!(t0.elapsed() < Duration::from_secs(5), "{}", conn.stats.snapshot());
            let mut s = String::new();
            if c.r.read_line(&mut s).is_ok() && s == "PING\r\n" {
                c.w.write_all(b"PONG\r\n").unwrap();
            }
        }
        assert_eq!(conn.stats.dropped.load(Ordering::Relaxed), 2);
        drop(bus);
        assert!(conn.finish(Duration::from_secs(5)));
    }
}
