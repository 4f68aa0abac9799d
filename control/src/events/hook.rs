//! The HTTP hook sink: every event is POSTed, as its JSON, to `--hook-url` over a minimal HTTP/1.1 client
//! (plain `http://` only, keep-alive, one request in flight).
//!
//! A 2xx response acknowledges the event. Connection failures, timeouts, 408, 425, 429 and 5xx are
//! retried (same event, in order) with exponential backoff; any other status (3xx, 4xx) is a permanent
//! rejection: the event is dropped and counted, so one bad event cannot block the ones behind it.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connector::{
    Backoff, ConnectorStats, OutageLog, Outbox, Payload, Sink, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT,
};
use super::nats::{find, flush_out, percent_decode, read_available, redact, split_host_port};

/// A request without a complete response within this is abandoned and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const BUSY_POLL: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Host` header value.
    pub authority: String,
    /// `Basic …` when the URL carried `user:pass@`.
    pub authorization: Option<String>,
}

impl std::fmt::Display for HookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Parses `http://[user:pass@]host[:port][/path][?query]`.
pub fn parse_url(url: &str) -> Result<HookTarget, String> {
    let bad = |why: &str| format!("invalid hook URL {:?}: {why} (expected http://host[:port]/path)", redact(url));
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else { return Err(bad("missing http:// scheme")) };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => return Err(bad("https is not supported (no TLS); use http:// or a local TLS proxy")),
        _ => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
    }
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth_host, path) = rest.split_at(split);
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace in path"));
    }
    let (userinfo, hostport) = match auth_host.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, auth_host),
    };
    let (host, port) = split_host_port(hostport, 80).map_err(|e| bad(&e))?;
    let authorization = match userinfo {
        Some(ui) => {
            let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
            let cred = format!("{}:{}", percent_decode(u).map_err(|e| bad(&e))?, percent_decode(p).map_err(|e| bad(&e))?);
            Some(format!("Basic {}", base64(cred.as_bytes())))
        }
        None => None,
    };
    let h = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let authority = if port == 80 { h } else { format!("{h}:{port}") };
    Ok(HookTarget { host, port, path, authority, authorization })
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Appends the POST request for one event.
pub fn encode_request(t: &HookTarget, p: &Payload, out: &mut Vec<u8>) {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sfumato/{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Sfumato-Event: {}\r\nConnection: keep-alive\r\n",
        t.path,
        t.authority,
        env!("CARGO_PKG_VERSION"),
        p.json.len(),
        p.kind
    );
    if let Some(a) = &t.authorization {
        head.push_str("Authorization: ");
        head.push_str(a);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&p.json);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Incomplete,
    /// A final response: its status, the bytes it took (interim 1xx responses included), and whether the
    /// server will close the connection after it.
    Complete { status: u16, consumed: usize, close: bool },
}

/// Parses the response at the front of `buf`; `eof` says the server closed the connection (which ends a
/// response without length).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Response, String> {
    let mut start = 0;
    loop {
        let Some(hend) = find(&buf[start..], b"\r\n\r\n") else {
            if buf.len() - start > MAX_HEAD {
                return Err("response head too long".into());
            }
            return Ok(Response::Incomplete);
        };
        let head = std::str::from_utf8(&buf[start..start + hend]).map_err(|_| "response head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP/1.x response: {:?}", &status_line[..status_line.len().min(80)]));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s| (100..1000).contains(s))
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked, mut close, mut keep_alive) = (None, false, false, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { return Err(format!("bad header line {line:?}")) };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?)
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    close |= v.contains("close");
                    keep_alive |= v.contains("keep-alive");
                }
                _ => {}
            }
        }
        let body = start + hend + 4;
        if (100..200).contains(&status) {
            start = body; // interim response (100 Continue): the final one follows
            continue;
        }
        let close = close || (version == "HTTP/1.0" && !keep_alive);
        let consumed = if status == 204 || status == 304 {
            Some(body)
        } else if chunked {
            chunked_len(&buf[body..])?.map(|n| body + n)
        } else if let Some(n) = length {
            (buf.len() >= body + n).then_some(body + n)
        } else if eof {
            return Ok(Response::Complete { status, consumed: buf.len(), close: true });
        } else {
            None
        };
        return Ok(match consumed {
            Some(consumed) => Response::Complete { status, consumed, close },
            None => Response::Incomplete,
        });
    }
}

/// Length of a complete chunked body at the front of `b`, or `None` if more is needed.
fn chunked_len(b: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(le) = find(&b[pos..], b"\r\n") else { return Ok(None) };
        let line = std::str::from_utf8(&b[pos..pos + le]).map_err(|_| "bad chunk size")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        pos += le + 2;
        if size == 0 {
            // trailers, then an empty line
            loop {
                let Some(le) = find(&b[pos..], b"\r\n") else { return Ok(None) };
                pos += le + 2;
                if le == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

struct HookConn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// When the request in flight was written.
    in_flight: Option<Instant>,
    /// Responses received on this connection.
    served: u64,
}

pub struct HookSink {
    target: HookTarget,
    outbox: Outbox,
    stats: Arc<ConnectorStats>,
    conn: Option<HookConn>,
    backoff: Backoff,
    outage: OutageLog,
    ever_connected: bool,
}

enum Step {
    Ok,
    /// The connection ended normally (server closed an idle keep-alive connection, or said `close`).
    Closed,
}

impl HookSink {
    pub fn new(target: HookTarget, buffer: usize, stats: Arc<ConnectorStats>) -> Self {
        Self {
            target,
            outbox: Outbox::new(buffer),
            stats,
            conn: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            outage: OutageLog::default(),
            ever_connected: false,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{}: no address", self.target.host));
        for addr in (self.target.host.as_str(), self.target.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_nonblocking(true)?;
                    self.conn = Some(HookConn { stream, rbuf: Vec::new(), out: Vec::new(), out_pos: 0, in_flight: None, served: 0 });
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn step(&mut self, now: Instant) -> Result<Step, String> {
        let Some(c) = self.conn.as_mut() else { return Ok(Step::Ok) };
        let eof = read_available(&mut c.stream, &mut c.rbuf).map_err(|e| format!("read: {e}"))?;
        if let Some(sent) = c.in_flight {
            match parse_response(&c.rbuf, eof)? {
                Response::Complete { status, consumed, close } => {
                    c.rbuf.drain(..consumed);
                    c.in_flight = None;
                    c.served += 1;
                    self.on_status(status, now);
                    if close || eof {
                        return Ok(Step::Closed);
                    }
                }
                Response::Incomplete if eof => {
                    if c.served > 0 && c.rbuf.is_empty() {
                        // The keep-alive race: the server closed the idle connection as we reused it.
                        self.outbox.rewind();
                        return Ok(Step::Closed);
                    }
                    return Err("connection closed before a complete response".into());
                }
                Response::Incomplete => {
                    if now.saturating_duration_since(sent) > REQUEST_TIMEOUT {
                        return Err(format!("no response within {REQUEST_TIMEOUT:?}"));
                    }
                }
            }
        } else if eof {
            return Ok(Step::Closed);
        } else if !c.rbuf.is_empty() {
            return Err("unsolicited data from the server".into());
        }
        let Some(c) = self.conn.as_mut() else { return Ok(Step::Ok) };
        if c.in_flight.is_none() && self.backoff.ready(now) {
            if let Some(p) = self.outbox.next_unwritten() {
                encode_request(&self.target, p, &mut c.out);
                self.outbox.mark_written();
                self.outbox.end_batch();
                c.in_flight = Some(now);
            }
        }
        flush_out(&mut c.stream, &mut c.out, &mut c.out_pos).map_err(|e| format!("write: {e}"))?;
        Ok(Step::Ok)
    }

    fn on_status(&mut self, status: u16, now: Instant) {
        match status {
            200..=299 => {
                self.outbox.ack();
                self.stats.hook.published.fetch_add(1, Ordering::Relaxed);
                self.up(now);
            }
            408 | 425 | 429 | 500..=599 => {
                self.outbox.rewind();
                self.stats.hook.connected.store(false, Ordering::Relaxed);
                let retry_in = self.backoff.failed(now);
                if self.outage.failure(now) {
                    tracing::warn!(url = %self.target, status, retry_in_ms = retry_in.as_millis() as u64, buffered = self.outbox.len(), "hook failed; retrying");
                }
            }
            _ => {
                let p = self.outbox.next_unwritten().cloned();
                self.outbox.ack();
                self.stats.hook.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.target, status, kind = p.map(|p| p.kind), "hook rejected an event; dropped");
                self.up(now);
            }
        }
    }

    fn up(&mut self, now: Instant) {
        self.backoff.succeeded();
        if !self.stats.hook.connected.swap(true, Ordering::Relaxed) {
            if self.ever_connected {
                self.stats.hook.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.ever_connected = true;
            let down = self.outage.recovered(now);
            tracing::info!(url = %self.target, buffered = self.outbox.len(), down_for_ms = down.map(|d| d.as_millis() as u64), "hook delivering");
        }
    }

    fn fail(&mut self, now: Instant, error: &str) {
        self.conn = None;
        self.outbox.rewind();
        self.stats.hook.connected.store(false, Ordering::Relaxed);
        let retry_in = self.backoff.failed(now);
        if self.outage.failure(now) {
            tracing::warn!(url = %self.target, %error, retry_in_ms = retry_in.as_millis() as u64, buffered = self.outbox.len(), "hook unavailable; buffering events");
        } else {
            tracing::debug!(url = %self.target, %error, retry_in_ms = retry_in.as_millis() as u64, "hook attempt failed");
        }
    }
}

impl Sink for HookSink {
    fn name(&self) -> &'static str {
        "hook"
    }

    fn enqueue(&mut self, p: Arc<Payload>) {
        let dropped = self.outbox.push(p);
        if dropped > 0 {
            let total = self.stats.hook.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            if total == 1 || total.is_power_of_two() {
                tracing::warn!(dropped_total = total, "hook outbox full; dropping the oldest events");
            }
        }
    }

    fn pump(&mut self, now: Instant) -> Instant {
        // Connect lazily: only with something to send and the backoff elapsed.
        if self.conn.is_none() && !self.outbox.is_empty() && self.backoff.ready(now) {
            if let Err(e) = self.connect() {
                self.fail(now, &format!("connect: {e}"));
            }
        }
        // A response may complete and free the connection for the next request: loop a little.
        for _ in 0..64 {
            if self.conn.is_none() {
                break;
            }
            let before = self.outbox.len();
            match self.step(now) {
                Ok(Step::Ok) => {}
                Ok(Step::Closed) => {
                    self.conn = None;
                    if !self.outbox.is_empty() && self.backoff.ready(now) {
                        if let Err(e) = self.connect() {
                            self.fail(now, &format!("connect: {e}"));
                        }
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    self.fail(now, &e);
                    break;
                }
            }
            if self.outbox.len() == before {
                break;
            }
        }
        self.stats.hook.buffered.store(self.outbox.len() as u64, Ordering::Relaxed);
        match &self.conn {
            Some(c) if c.in_flight.is_some() || c.out_pos < c.out.len() => now + BUSY_POLL,
            _ if !self.outbox.is_empty() => self.backoff.retry_at().unwrap_or(now + BUSY_POLL).max(now),
            _ => now + IDLE_POLL,
        }
    }

    fn pending(&self) -> usize {
        self.outbox.len()
    }

    fn close(&mut self) {
        if !self.outbox.is_empty() {
            tracing::warn!(undelivered = self.outbox.len(), "hook: events still buffered at shutdown are lost");
        }
        if let Some(c) = self.conn.take() {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.stats.hook.connected.store(false, Ordering::Relaxed);
        self.stats.hook.buffered.store(self.outbox.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::connector::{start, ConnectorConfig};
    use crate::events::EventRecord;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/hooks/sfu?x=1#frag").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str(), t.authority.as_str()), ("127.0.0.1", 8080, "/hooks/sfu?x=1", "127.0.0.1:8080"));
        assert_eq!(t.authorization, None);
        let t = parse_url("HTTP://example.com").unwrap();
        assert_eq!((t.port, t.path.as_str(), t.authority.as_str()), (80, "/", "example.com"));
        let t = parse_url("http://example.com?a=b").unwrap();
        assert_eq!(t.path, "/?a=b");
        let t = parse_url("http://[::1]:9/x").unwrap();
        assert_eq!((t.host.as_str(), t.authority.as_str()), ("::1", "[::1]:9"));
        let t = parse_url("http://Aladdin:open%20sesame@h/").unwrap();
        assert_eq!(t.authorization.as_deref(), Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        for bad in ["", "h:80/x", "https://h/", "ftp://h/", "http://", "http://:80/", "http://h:0/", "http://h:x/", "http://h/a b"] {
            assert!(parse_url(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn request_encoding() {
        let t = parse_url("http://u:p@h:81/e").unwrap();
        let p = Payload { kind: "room.created", subject: "sfumato.events.room.created".into(), json: b"{\"k\":1}".to_vec() };
        let mut out = Vec::new();
        encode_request(&t, &p, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("POST /e HTTP/1.1\r\nHost: h:81\r\n"), "{s}");
        assert!(s.contains("\r\nContent-Type: application/json\r\n"));
        assert!(s.contains("\r\nContent-Length: 7\r\n"));
        assert!(s.contains("\r\nX-Sfumato-Event: room.created\r\n"));
        assert!(s.contains("\r\nAuthorization: Basic dTpw\r\n"));
        assert!(s.ends_with("\r\n\r\n{\"k\":1}"));
    }

    #[test]
    fn responses() {
        use Response::*;
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(ok, false).unwrap(), Complete { status: 200, consumed: ok.len(), close: false });
        assert_eq!(parse_response(&ok[..ok.len() - 1], false).unwrap(), Incomplete);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap(), Incomplete);
        let pipelined = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200";
        assert_eq!(parse_response(pipelined, false).unwrap(), Complete { status: 204, consumed: 27, close: false });
        let chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;x=y\r\nbusy\r\n0\r\nT: 1\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap(), Complete { status: 503, consumed: chunked.len(), close: true });
        assert_eq!(parse_response(&chunked[..chunked.len() - 2], false).unwrap(), Incomplete);
        let cont = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(cont, false).unwrap(), Complete { status: 201, consumed: cont.len(), close: true });
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nsome body";
        assert_eq!(parse_response(until_close, false).unwrap(), Incomplete);
        assert_eq!(parse_response(until_close, true).unwrap(), Complete { status: 200, consumed: until_close.len(), close: true });
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false).is_err());
    }

    type Headers = Vec<(String, String)>;

    /// Reads one request; returns (request line, headers lowercased, body).
    fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Headers, Vec<u8>)> {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            let (n, v) = h.trim_end().split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers.iter().find(|(n, _)| n == "content-length").unwrap().1.parse().unwrap();
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        Some((line.trim_end().to_string(), headers, body))
    }

    #[test]
    fn fake_hook_retries_and_drops_rejected() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel::<(usize, String, Headers, serde_json::Value)>();
        let server = std::thread::spawn(move || {
            // responses in order of requests, with which connection they arrived on
            let replies: [&[u8]; 5] = [
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ];
            let mut i = 0;
            let mut conn_no = 0;
            while i < replies.len() {
                let (s, _) = l.accept().unwrap();
                conn_no += 1;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while i < replies.len() {
                    let Some((line, headers, body)) = read_request(&mut r) else { break };
                    tx.send((conn_no, line, headers, serde_json::from_slice(&body).unwrap())).unwrap();
                    w.write_all(replies[i]).unwrap();
                    i += 1;
                    if i == 3 {
                        break; // "Connection: close"
                    }
                }
            }
        });
        let cfg = ConnectorConfig { nats_url: None, hook_url: Some(format!("http://127.0.0.1:{port}/ev")), buffer: 10 };
        let (bus, conn) = start("node-h", cfg).unwrap();
        let conn = conn.unwrap();
        let t0 = Instant::now();
        for (i, kind) in ["room.created", "peer.joined", "peer.left", "room.destroyed"].into_iter().enumerate() {
            bus.emit(EventRecord {
                kind,
                node: "node-h".into(),
                room: format!("r{i}"),
                peer: None,
                session: None,
                ts_ms: i as u64,
                data: serde_json::Value::Null,
            });
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(rx.recv_timeout(Duration::from_secs(10)).expect("hook request"));
        }
        let rooms: Vec<(usize, &str)> = got.iter().map(|(c, _, _, v)| (*c, v["room"].as_str().unwrap())).collect();
        // r0 rejected with 503 then retried; r1 answered with close; r2 (400) on a new connection; r3.
        assert_eq!(rooms, [(1, "r0"), (1, "r0"), (1, "r1"), (2, "r2"), (2, "r3")]);
        assert!(t0.elapsed() >= BACKOFF_MIN, "retry came before the backoff");
        let (_, line, headers, v) = &got[0];
        assert_eq!(line, "POST /ev HTTP/1.1");
        let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(h("content-type"), Some("application/json"));
        assert_eq!(h("host"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(h("x-sfumato-event"), Some("room.created"));
        assert_eq!(v["kind"], "room.created");
        assert_eq!(v["node"], "node-h");
        let t0 = Instant::now();
        while conn.stats.buffered.load(Ordering::Relaxed) > 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "{}", conn.stats.snapshot());
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = conn.stats.snapshot();
        assert_eq!((s["published"].as_u64(), s["dropped"].as_u64()), (Some(3), Some(1)), "{s}");
        assert_eq!(s["hook"]["connected"], true, "{s}");
        drop(bus);
        assert!(conn.finish(Duration::from_secs(5)));
        server.join().unwrap();
    }
}
