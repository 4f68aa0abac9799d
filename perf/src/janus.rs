//! Janus signalling (its REST API) for the streaming plugin: the `--target-kind janus` adapter.
//!
//! Why it exists: the benchmark compares sfumato with a real SFU under the same 1→N fan-out. Janus's
//! streaming plugin takes plain RTP on UDP ports (a "mountpoint") and serves WebRTC viewers; a viewer
//! creates a session, attaches `janus.plugin.streaming`, asks to `watch` the mountpoint, receives
//! Janus's SDP offer as an asynchronous event (long poll `GET /janus/{session}`), answers with `start`,
//! and leaves with `destroy`. Every viewer gets its own Janus session, as separate browsers would.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http_client::{HttpClient, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("Janus refused {what}: {reason}")]
    Refused { what: &'static str, reason: String },
    #[error("Janus answered {what} without {field}: {body}")]
    Missing { what: &'static str, field: &'static str, body: String },
    #[error("no SDP offer from Janus within {0:?} after watch")]
    NoOffer(Duration),
}

/// A client of one Janus HTTP endpoint, e.g. `http://127.0.0.1:8088/janus`.
#[derive(Debug, Clone)]
pub struct JanusClient {
    http: HttpClient,
}

/// A viewer's Janus session and plugin handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JanusHandle {
    pub session: u64,
    pub handle: u64,
}

impl JanusHandle {
    /// Stands in for a WHEP `Location`.
    pub fn location(&self) -> String {
        format!("janus:{}/{}", self.session, self.handle)
    }
}

fn transaction() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("perf{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// `janus: "error"` → its reason; anything else passes.
pub fn check(what: &'static str, v: Value) -> Result<Value, JanusError> {
    if v["janus"] == "error" {
        let reason = v["error"]["reason"].as_str().unwrap_or("unknown error").to_string();
        return Err(JanusError::Refused { what, reason });
    }
    // Plugin-level errors arrive as events with `plugindata.data.error`.
    if let Some(e) = v.pointer("/plugindata/data/error").and_then(Value::as_str) {
        return Err(JanusError::Refused { what, reason: e.to_string() });
    }
    Ok(v)
}

/// `data.id` of a create/attach reply.
pub fn data_id(what: &'static str, v: &Value) -> Result<u64, JanusError> {
    v.pointer("/data/id").and_then(Value::as_u64).ok_or_else(|| JanusError::Missing { what, field: "data.id", body: v.to_string() })
}

/// The SDP offer in an event, if it carries one.
pub fn offer_of(v: &Value) -> Option<&str> {
    (v.pointer("/jsep/type").and_then(Value::as_str) == Some("offer")).then(|| v.pointer("/jsep/sdp").and_then(Value::as_str)).flatten()
}

impl JanusClient {
    pub fn new(base: &str) -> Result<Self, JanusError> {
        Ok(Self { http: HttpClient::new(base, Duration::from_secs(35))? })
    }

    fn post(&self, what: &'static str, path: &str, body: Value) -> Result<Value, JanusError> {
        let text = body.to_string();
        let r = self.http.request("POST", path, Some(("application/json", text.as_bytes())))?;
        let v: Value = serde_json::from_slice(&r.body).map_err(HttpError::from)?;
        check(what, v)
    }

    /// create + attach `janus.plugin.streaming`.
    pub fn open(&self) -> Result<JanusHandle, JanusError> {
        let v = self.post("create", "", json!({"janus": "create", "transaction": transaction()}))?;
        let session = data_id("create", &v)?;
        let v = self.post(
            "attach",
            &format!("/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.streaming", "transaction": transaction()}),
        )?;
        Ok(JanusHandle { session, handle: data_id("attach", &v)? })
    }

    /// Asks to watch `mountpoint` and waits (long poll) for Janus's SDP offer.
    pub fn watch(&self, h: JanusHandle, mountpoint: u64, timeout: Duration) -> Result<String, JanusError> {
        let body = json!({"janus": "message", "transaction": transaction(), "body": {"request": "watch", "id": mountpoint}});
        let v = self.post("watch", &format!("/{}/{}", h.session, h.handle), body)?;
        if let Some(sdp) = offer_of(&v) {
            return Ok(sdp.to_string());
        }
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let r = self.http.request("GET", &format!("/{}?maxev=1", h.session), None)?;
            let v: Value = serde_json::from_slice(&r.body).map_err(HttpError::from)?;
            let v = check("watch", v)?;
            if let Some(sdp) = offer_of(&v) {
                return Ok(sdp.to_string());
            }
        }
        Err(JanusError::NoOffer(timeout))
    }

    /// Sends the answer (`start`).
    pub fn start(&self, h: JanusHandle, answer_sdp: &str) -> Result<(), JanusError> {
        let body = json!({
            "janus": "message", "transaction": transaction(),
            "body": {"request": "start"},
            "jsep": {"type": "answer", "sdp": answer_sdp},
        });
        self.post("start", &format!("/{}/{}", h.session, h.handle), body).map(|_| ())
    }

    /// Ends the viewer's session (and its PeerConnection).
    pub fn destroy(&self, h: JanusHandle) -> Result<(), JanusError> {
        self.post("destroy", &format!("/{}", h.session), json!({"janus": "destroy", "transaction": transaction()})).map(|_| ())
    }
}

/// The first IPv4 host candidate's address in an SDP (Janus puts its candidates in the offer).
pub fn first_ipv4_candidate(sdp: &str) -> Option<std::net::SocketAddr> {
    sdp.lines().filter_map(|l| l.trim().strip_prefix("a=candidate:")).find_map(|c| {
        let f: Vec<&str> = c.split_whitespace().collect();
        let ip: std::net::Ipv4Addr = f.get(4)?.parse().ok()?;
        let port: u16 = f.get(5)?.parse().ok()?;
        (f.get(2)?.eq_ignore_ascii_case("udp")).then_some((ip, port).into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_offers() {
        assert_eq!(data_id("create", &json!({"janus": "success", "data": {"id": 42}})).unwrap(), 42);
        assert!(data_id("create", &json!({"janus": "success"})).is_err());
        let e = check("attach", json!({"janus": "error", "error": {"code": 460, "reason": "No such session"}})).unwrap_err();
        assert_eq!(e.to_string(), "Janus refused attach: No such session");
        let e = check("watch", json!({"janus": "event", "plugindata": {"data": {"error": "No such mountpoint/stream 9"}}}));
        assert!(e.is_err());
        let ev = json!({"janus": "event", "jsep": {"type": "offer", "sdp": "v=0"}});
        assert_eq!(offer_of(&ev), Some("v=0"));
        assert_eq!(offer_of(&json!({"janus": "ack"})), None);
        let sdp = "v=0\r\na=candidate:1 1 udp 2015363583 fd00::2 41288 typ host\r\na=candidate:2 1 udp 2015363327 192.0.2.2 42061 typ host\r\n";
        assert_eq!(first_ipv4_candidate(sdp), Some("192.0.2.2:42061".parse().unwrap()));
        assert_eq!(first_ipv4_candidate("v=0\r\n"), None);
    }
}
