//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Why it exists: the load tester must talk WHIP/WHEP (POST an SDP offer, DELETE the resource) and read
//! `/healthz`, and the project avoids pulling tokio/reqwest into the harness. Every request uses its own
//! connection with `Connection: close`; the body is read by `Content-Length`, `Transfer-Encoding: chunked`
//! or to EOF.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}: only http://host[:port][/path] is supported")]
    BadUrl(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("i/o with {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("no response from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("response over {0} bytes")]
    TooLarge(usize),
    #[error("HTTP {status} from {method} {path}: {body}")]
    Status { method: &'static str, path: String, status: u16, body: String },
    #[error("response body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Largest response accepted (SDP answers and /healthz are a few KiB).
const MAX_RESPONSE: usize = 4 << 20;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A server base URL (`http://host:port`), resolved once.
#[derive(Debug, Clone)]
pub struct HttpClient {
    addr: SocketAddr,
    host_header: String,
    base_path: String,
    timeout: Duration,
}

impl HttpClient {
    /// `base` is `http://host[:port][/prefix]`; default port 80.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, HttpError> {
        let rest = base.strip_prefix("http://").ok_or_else(|| HttpError::BadUrl(base.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(HttpError::BadUrl(base.to_string()));
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|_| HttpError::Resolve(with_port.clone()))?
            .next()
            .ok_or_else(|| HttpError::Resolve(with_port.clone()))?;
        Ok(Self { addr, host_header: authority.to_string(), base_path: path.to_string(), timeout })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `POST path` with an SDP body; expects 201 and returns the response.
    pub fn post_sdp(&self, path: &str, sdp: &str) -> Result<Response, HttpError> {
        let r = self.request("POST", path, Some(("application/sdp", sdp.as_bytes())))?;
        expect(r, "POST", path, &[201])
    }

    /// `DELETE path`; expects 200 (or 204).
    pub fn delete(&self, path: &str) -> Result<Response, HttpError> {
        let r = self.request("DELETE", path, None)?;
        expect(r, "DELETE", path, &[200, 204])
    }

    /// `GET path`; expects 200.
    pub fn get(&self, path: &str) -> Result<Response, HttpError> {
        let r = self.request("GET", path, None)?;
        expect(r, "GET", path, &[200])
    }

    /// `GET path` and parse the body as JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, HttpError> {
        Ok(serde_json::from_slice(&self.get(path)?.body)?)
    }

    /// Sends one request on a fresh connection and reads the whole response, whatever its status.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Response, HttpError> {
        let addr = self.addr;
        let timeout = self.timeout;
        let io = |source: std::io::Error| match source.kind() {
            // A read/write timeout on a blocking socket surfaces as WouldBlock (EAGAIN) or TimedOut.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::Timeout { addr, timeout },
            _ => HttpError::Io { addr, source },
        };
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| HttpError::Connect { addr, source })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let _ = s.set_nodelay(true);
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: sfumato-perf\r\n",
            self.base_path, self.host_header
        );
        match body {
            Some((ct, b)) => req.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n", b.len())),
            None if method == "POST" || method == "PUT" => req.push_str("Content-Length: 0\r\n\r\n"),
            None => req.push_str("\r\n"),
        }
        let mut out = req.into_bytes();
        if let Some((_, b)) = body {
            out.extend_from_slice(b);
        }
        s.write_all(&out).map_err(io)?;
        let mut raw = Vec::with_capacity(4096);
        let mut buf = [0u8; 8192];
        // Read until the header end, then as much body as framing says (or EOF).
        loop {
            let n = s.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() > MAX_RESPONSE {
                return Err(HttpError::TooLarge(MAX_RESPONSE));
            }
            if let Some(done) = complete(&raw)? {
                if done {
                    break;
                }
            }
        }
        parse_response(&raw)
    }
}

fn expect(r: Response, method: &'static str, path: &str, ok: &[u16]) -> Result<Response, HttpError> {
    if ok.contains(&r.status) {
        Ok(r)
    } else {
        let mut body = r.text();
        body.truncate(300);
        Err(HttpError::Status { method, path: path.to_string(), status: r.status, body })
    }
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `Some(true)` when `raw` holds a complete response by its framing, `None`/`Some(false)` to keep reading.
fn complete(raw: &[u8]) -> Result<Option<bool>, HttpError> {
    let Some(end) = header_end(raw) else { return Ok(None) };
    let (_, headers) = parse_head(&raw[..end])?;
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Ok(Some(dechunk(&raw[end..])?.is_some()));
    }
    if let Some(cl) = get("content-length") {
        let n: usize = cl.trim().parse().map_err(|_| HttpError::Malformed(format!("content-length {cl:?}")))?;
        return Ok(Some(raw.len() - end >= n));
    }
    Ok(Some(false))
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("header is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (k, v) = l.split_once(':').ok_or_else(|| HttpError::Malformed(format!("header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// Decodes a chunked body; `None` if it is not complete yet.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_txt = std::str::from_utf8(&b[..eol]).map_err(|_| HttpError::Malformed("chunk size".into()))?;
        let size_txt = size_txt.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_txt, 16).map_err(|_| HttpError::Malformed(format!("chunk size {size_txt:?}")))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let end = header_end(raw).ok_or_else(|| HttpError::Malformed("connection closed before the header ended".into()))?;
    let (status, headers) = parse_head(&raw[..end])?;
    let rest = &raw[end..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        dechunk(rest)?.ok_or_else(|| HttpError::Malformed("truncated chunked body".into()))?
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.trim().parse().map_err(|_| HttpError::Malformed(format!("content-length {cl:?}")))?;
        if rest.len() < n {
            return Err(HttpError::Malformed(format!("body has {} of {n} bytes", rest.len())));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_chunked() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nLocation: /whip/conn/ab\r\nContent-Length: 3\r\n\r\nv=0").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/whip/conn/ab"));
        assert_eq!(r.body, b"v=0");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(complete(raw).unwrap(), Some(true));
        assert_eq!(parse_response(raw).unwrap().body, b"abcde");
        assert_eq!(complete(&raw[..raw.len() - 8]).unwrap(), Some(false));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn urls() {
        let c = HttpClient::new("http://127.0.0.1:3000", Duration::from_secs(1)).unwrap();
        assert_eq!(c.addr().port(), 3000);
        let c = HttpClient::new("http://127.0.0.1/api/", Duration::from_secs(1)).unwrap();
        assert_eq!(c.addr().port(), 80);
        assert_eq!(c.base_path, "/api");
        assert!(HttpClient::new("https://x", Duration::from_secs(1)).is_err());
        assert!(HttpClient::new("http://", Duration::from_secs(1)).is_err());
    }
}
