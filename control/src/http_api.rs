//! The HTTP API every core serves (hyper 1, HTTP/1.1): WHIP, WHEP, resource DELETE/PATCH, health, metrics,
//! the demo page (`GET /`) and the OpenAPI description (`GET /openapi.json`, docs/openapi.json).
//!
//! A request is parsed and checked on the core that accepted the TCP connection, then the session is
//! created on the core that will own it (room's home core for publishers, least-loaded core for viewers)
//! through [`CoreShell::offer`]. In a cluster (`sfumato media`) the owning *node* is chosen first and the
//! request may be proxied to it (`gateway.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use sfumato_media::webrtc::Role;
use sfumato_net::http_io::HyperStream;

use crate::core_shell::CoreShell;

#[path = "gateway.rs"]
mod gateway;
pub use gateway::serve_signal;
use crate::auth::{fingerprint, unix_now, AuthError, TokenKind, MAX_TTL_SECS};
use crate::config::IceServer;
use crate::messages::{OfferError, OfferRequest, ResourceId, ResourceOp, ResourceOutcome};
use crate::stats::{AuthFailure, HttpMetrics, Route};

/// Largest accepted request body (SDP offers are a few KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// The demo page served at `GET /` (WHIP publish + WHEP watch in a browser; inline JS/CSS, no dependencies).
const DEMO_PAGE: &str = include_str!("../assets/index.html");
/// The OpenAPI 3.0 description served at `GET /openapi.json` (tests/e2e/test_openapi.py keeps it in sync).
const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");
/// Connections with no byte moving for this long are closed (slowloris).
const IDLE_LIMIT: Duration = Duration::from_secs(30);

type Resp = Response<Full<Bytes>>;

/// What every core's HTTP API shares: the ICE servers it announces and the request counters.
pub struct HttpShared {
    /// `Link: <url>; rel="ice-server"…` values (RFC 9725 §4.6), one per configured ICE server.
    ice_links: Vec<HeaderValue>,
    pub metrics: HttpMetrics,
}

impl HttpShared {
    /// `ice_servers` come validated from the configuration (header-safe); a value that still is not a valid
    /// header is skipped with a warning.
    pub fn new(ice_servers: &[IceServer], cores: usize) -> Self {
        let ice_links = ice_servers
            .iter()
            .filter_map(|s| match HeaderValue::from_str(&s.link_value()) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(url = %s.url, "ICE server not announced: not a valid Link header value");
                    None
                }
            })
            .collect();
        Self { ice_links, metrics: HttpMetrics::new(cores) }
    }

    fn add_ice_links(&self, h: &mut hyper::HeaderMap) {
        for v in &self.ice_links {
            h.append(hyper::header::LINK, v.clone());
        }
    }
}

/// Accepts connections on `addr` (SO_REUSEPORT: every core binds the same port) until the task is dropped.
pub async fn serve(shell: Rc<CoreShell>, shared: Arc<HttpShared>, listener: glommio::net::TcpListener) {
    // One `Api` per core: requests clone the `Rc`, never the cross-core `Arc`.
    let api = Rc::new(Api { shell, shared });
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let api = api.clone();
                glommio::spawn_local(async move {
                    let (io, idle) = HyperStream::new(stream);
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(handle(&api, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, svc);
                    let watchdog = async {
                        idle.idle_for(IDLE_LIMIT).await;
                        Ok(())
                    };
                    if let Err(e) = futures_lite::future::or(conn, watchdog).await {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

pub fn bind(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    Ok(glommio::net::TcpListener::bind(addr)?)
}

/// What a core's HTTP handlers work with.
struct Api {
    shell: Rc<CoreShell>,
    shared: Arc<HttpShared>,
}

impl Api {
    /// Counts an authentication failure and answers it.
    fn refuse(&self, reason: AuthFailure, resp: Resp) -> Resp {
        self.shared.metrics.auth_failure(self.shell.core(), reason);
        resp
    }

    fn auth_error(&self, e: &AuthError) -> Resp {
        self.refuse(AuthFailure::of(e), auth_error(e))
    }
}

async fn handle(api: &Api, req: Request<Incoming>) -> Resp {
    let shell = &*api.shell;
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let route = Route::of(segments.first().copied().unwrap_or_default());
    let mut resp = match (req.method(), segments.as_slice()) {
        (&Method::OPTIONS, _) => options(&api.shared, route),
        (&Method::GET, ["healthz"]) => healthz(shell).await,
        (&Method::GET, ["metrics"]) => metrics(api).await,
        (&Method::GET, [""]) => asset("text/html; charset=utf-8", DEMO_PAGE),
        (&Method::GET, ["openapi.json"]) => asset("application/json", OPENAPI_JSON),
        (&Method::POST, ["token", kind]) => {
            let kind = kind.to_string();
            issue_token(api, &kind, req).await
        }
        (&Method::POST, [kind @ ("whip" | "whep"), room]) => {
            let role = if *kind == "whip" { Role::Publisher } else { Role::Viewer };
            // `/whip/endpoint`: the room comes from the token (WHIP's standard single endpoint).
            let room = if *room == "endpoint" { None } else { Some(room.to_string()) };
            create(api, role, kind, room, req).await
        }
        (method @ (&Method::DELETE | &Method::PATCH), ["whip" | "whep", "conn", id]) => {
            let delete = method == Method::DELETE;
            let id = id.to_string();
            resource(api, delete, &id, req).await
        }
        // A session on another cluster node, created through this gateway (`gateway.rs`).
        (method @ (&Method::DELETE | &Method::PATCH), ["whip" | "whep", "conn", node, id]) => {
            let delete = method == Method::DELETE;
            let (node, id) = (node.to_string(), id.to_string());
            gateway::node_resource(api, delete, &node, &id, req).await
        }
        (_, ["whip" | "whep" | "token", ..]) | (_, ["healthz" | "metrics" | "openapi.json" | ""]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "method not allowed on this path")
        }
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route"),
    };
    cors(resp.headers_mut());
    api.shared.metrics.request(shell.core(), route, resp.status().as_u16());
    tracing::debug!(%path, status = resp.status().as_u16(), "http");
    resp
}

fn cors(h: &mut hyper::HeaderMap) {
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location, ETag, Link, X-Sfumato-Node"));
}

/// CORS preflight on every path; on /whip and /whep routes also the ICE servers (RFC 9725 §4.6).
fn options(shared: &HttpShared, route: Route) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type, Authorization, If-Match, X-Sfumato-Zone"));
    if matches!(route, Route::Whip | Route::Whep) {
        shared.add_ice_links(h);
    }
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({ "status": false, "error": code, "message": message });
    json(status, body)
}

fn json(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 128
        && room.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn content_type_is(req: &Request<Incoming>, wanted: &str) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(wanted))
        .unwrap_or(false)
}

/// Reads the body up to [`MAX_BODY`]; `Err` is the response to send.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE", "request body over 64 KiB"));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE", "request body over 64 KiB"))
        }
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "BAD_BODY", "could not read request body")),
    }
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string()).filter(|t| !t.is_empty())
}

fn auth_error(e: &AuthError) -> Resp {
    let status = if e.is_forbidden() { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
    error(status, e.code(), &e.to_string())
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    room: String,
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// `POST /token/{whip,whep,rtmp,webrtc}` with `Authorization: Bearer <cluster secret>`.
async fn issue_token(api: &Api, kind: &str, req: Request<Incoming>) -> Resp {
    let shell = &*api.shell;
    let Some(kind) = TokenKind::parse(kind) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "token kinds are whip, whep, rtmp, webrtc");
    };
    if !bearer(&req).is_some_and(|s| shell.auth.is_secret(&s)) {
        let resp = error(StatusCode::UNAUTHORIZED, "APP_TOKEN_INVALID", "Authorization: Bearer <cluster secret> required");
        return api.refuse(AuthFailure::BadSecret, resp);
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(tr) = serde_json::from_slice::<TokenRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, "BAD_JSON", "expected JSON {room, peer?, ttl?}");
    };
    if !valid_room(&tr.room) {
        return error(StatusCode::BAD_REQUEST, "BAD_ROOM", "room names are 1-128 characters of A-Z a-z 0-9 - _ .");
    }
    let ttl = tr.ttl.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return error(StatusCode::BAD_REQUEST, "BAD_TTL", "ttl must be 1..=604800 seconds");
    }
    match shell.auth.issue(kind, &tr.room, tr.peer.as_deref(), ttl, unix_now()) {
        Some(token) => json(StatusCode::OK, serde_json::json!({ "status": true, "data": { "token": token } })),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "SIGN_FAILED", "could not sign token"),
    }
}

async fn create(api: &Api, role: Role, kind: &str, room: Option<String>, req: Request<Incoming>) -> Resp {
    let shell = &*api.shell;
    let token_kind = if role == Role::Publisher { TokenKind::Whip } else { TokenKind::Whep };
    let token = bearer(&req);
    // Tokens are checked before anything else is read; in dev mode they are optional on /{room} routes.
    let (room, peer) = match (room, shell.auth.is_insecure()) {
        (Some(room), true) => (room, None),
        (room, _) => match shell.auth.verify(token.as_deref(), token_kind, room.as_deref(), unix_now()) {
            Ok(claims) => (claims.room, claims.peer),
            Err(e) => return api.auth_error(&e),
        },
    };
    let owner = if shell.auth.is_insecure() { None } else { token.as_deref().map(fingerprint) };
    let room = room.as_str();
    if !valid_room(room) {
        return error(StatusCode::BAD_REQUEST, "BAD_ROOM", "room names are 1-128 characters of A-Z a-z 0-9 - _ .");
    }
    if !content_type_is(&req, "application/sdp") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "expected Content-Type: application/sdp");
    }
    let headers = req.headers().clone();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "BAD_SDP", "SDP offer is not UTF-8");
    };
    if !sdp.trim_start().starts_with("v=0") {
        return error(StatusCode::BAD_REQUEST, "BAD_SDP", "body is not an SDP offer (must start with v=0)");
    }
    let offer = gateway::Offer { role, kind, room, peer: peer.clone(), token: token.clone(), sdp };
    if let Some(resp) = gateway::place(api, &headers, offer).await {
        return resp;
    }
    let offer = OfferRequest { role, room: room.to_string(), sdp: sdp.to_string(), owner, peer };
    match shell.place_offer(offer).await {
        Ok(created) => {
            let location = format!("/{kind}/conn/{}", created.resource.to_path_segment());
            let mut r = Response::new(Full::new(Bytes::from(created.answer)));
            *r.status_mut() = StatusCode::CREATED;
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", created.resource.to_path_segment())) {
                h.insert(hyper::header::ETAG, v);
            }
            api.shared.add_ice_links(h);
            r
        }
        Err(OfferError::BadOffer(reason)) => error(StatusCode::BAD_REQUEST, "BAD_SDP", &reason),
        Err(OfferError::RoomBusy) => error(StatusCode::CONFLICT, "ROOM_HAS_PUBLISHER", "this room already has a publisher"),
        Err(OfferError::Unavailable(reason)) => {
            tracing::warn!(%reason, "offer failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &reason)
        }
    }
}

/// DELETE (`delete`) or PATCH on a session resource, on whichever core owns it.
async fn resource(api: &Api, delete: bool, id: &str, req: Request<Incoming>) -> Resp {
    let shell = &*api.shell;
    let Some(id) = ResourceId::parse(id) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource");
    };
    let presented = bearer(&req).as_deref().map(fingerprint);
    let op = if delete {
        ResourceOp::Delete
    } else {
        if !content_type_is(&req, "application/trickle-ice-sdpfrag") {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "expected Content-Type: application/trickle-ice-sdpfrag",
            );
        }
        let if_match = req.headers().get(hyper::header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let Ok(fragment) = String::from_utf8(body.to_vec()) else {
            return error(StatusCode::BAD_REQUEST, "BAD_SDP_FRAGMENT", "trickle ICE fragment is not UTF-8");
        };
        ResourceOp::Patch { fragment, if_match }
    };
    match shell.resource(id, op, presented).await {
        ResourceOutcome::NotFound => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource"),
        ResourceOutcome::Forbidden if presented.is_none() => api.auth_error(&AuthError::Missing),
        ResourceOutcome::Forbidden => api.refuse(
            AuthFailure::NotOwner,
            error(StatusCode::FORBIDDEN, "TOKEN_NOT_OWNER", "only the token that created this session may change it"),
        ),
        ResourceOutcome::Done => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = if delete { StatusCode::OK } else { StatusCode::NO_CONTENT };
            r
        }
        ResourceOutcome::IceRestarted { fragment, etag } => {
            let mut r = Response::new(Full::new(Bytes::from(fragment)));
            *r.status_mut() = StatusCode::OK;
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/trickle-ice-sdpfrag"));
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                h.insert(hyper::header::ETAG, v);
            }
            api.shared.add_ice_links(h);
            r
        }
        ResourceOutcome::PreconditionFailed => error(
            StatusCode::PRECONDITION_FAILED,
            "ETAG_MISMATCH",
            "If-Match does not name this session's current ETag (an ICE restart changed it)",
        ),
        ResourceOutcome::BadFragment(reason) => error(StatusCode::BAD_REQUEST, "BAD_SDP_FRAGMENT", &reason),
    }
}

async fn healthz(shell: &CoreShell) -> Resp {
    let (total, per_core) = shell.node_stats().await;
    let cluster = gateway::cluster_port(shell).map(|p| p.shared.health_json());
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "cores": shell.cores(),
            "sessions": total.sessions,
            "publishers": total.publishers,
            "viewers": total.viewers,
            "rooms": total.rooms,
            "stats": total,
            "forward_latency_us": total.forward_latency_us.as_ref().map(crate::stats::LatencySummary::of),
            // RTMP publishers' packets: FLV message read → viewer datagram sent (null until one was sent).
            "rtmp_forward_latency_us": total.rtmp_forward_latency_us.as_ref().map(crate::stats::LatencySummary::of),
            "per_core": per_core,
            // Events connector counters (null without --nats-url/--hook-url).
            "events": crate::events::connector::active_stats().map(|s| s.snapshot()),
            // `sfumato media`: links, members, cascading counters (null for standalone).
            "cluster": cluster,
        }),
    )
}

async fn metrics(api: &Api) -> Resp {
    let (_, per_core) = api.shell.node_stats().await;
    let mut out = String::new();
    crate::stats::render_core_stats(&per_core, &mut out);
    crate::stats::render_latency(&per_core, &mut out);
    api.shared.metrics.render(&mut out);
    if let Some(events) = crate::events::connector::active_stats() {
        events.render_metrics(&mut out);
    }
    if let Some(port) = gateway::cluster_port(&api.shell) {
        port.shared.render_metrics(&mut out);
    }
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_names() {
        assert!(super::valid_room("demo-1_a.b"));
        assert!(!super::valid_room(""));
        assert!(!super::valid_room("a/b"));
        assert!(!super::valid_room(&"x".repeat(129)));
    }
}
