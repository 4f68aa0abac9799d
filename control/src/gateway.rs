//! Gateway placement and signalling proxy (`sfumato media`): any node accepts a WHIP/WHEP request, decides
//! which node owns the new session (`placement.rs`, from the gossiped view) and, when that is another node,
//! forwards the request over the QUIC link as a `SignalRequest` and answers with its `SignalReply`.
//!
//! A proxied session's `Location` is `/{whip,whep}/conn/{node}/{id}`: PATCH and DELETE sent to the gateway
//! are forwarded to `node` the same way. The owner checks the bearer token again ([`serve_signal`]): the
//! secret is cluster-wide, so a token issued by any node works on every node.
//!
//! A child module of `http_api` (it shares its helpers); the single-node request path does not change.

use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::{Request, Response, StatusCode};
use sfumato_cluster::{NodeId, SignalKind, SignalReply, SignalRequest};
use sfumato_media::webrtc::Role;

use super::{bearer, content_type_is, error, read_body, valid_room, Api, Resp};
use crate::auth::{fingerprint, unix_now, AuthError, TokenKind};
use crate::cluster_shell::ClusterPort;
use crate::core_shell::CoreShell;
use crate::messages::{OfferError, OfferRequest, ResourceId, ResourceOp, ResourceOutcome};
use crate::placement::PlaceRole;
use crate::stats::AuthFailure;

/// This core's cluster port, when the node runs `sfumato media`.
pub(super) fn cluster_port(shell: &CoreShell) -> Option<Rc<ClusterPort>> {
    shell.cluster.get().and_then(std::rc::Weak::upgrade)
}

/// A checked WHIP/WHEP offer, before it is placed.
pub(super) struct Offer<'a> {
    pub role: Role,
    pub kind: &'a str,
    pub room: &'a str,
    pub peer: Option<String>,
    pub token: Option<String>,
    pub sdp: &'a str,
}

/// Places a new session. `None`: it belongs here (create it locally); `Some(resp)`: it was answered
/// (proxied to another node, or refused).
pub(super) async fn place(api: &Api, headers: &hyper::HeaderMap, offer: Offer<'_>) -> Option<Resp> {
    let port = cluster_port(&api.shell)?;
    let zone = match zone_hint(headers) {
        Ok(z) => z,
        Err(r) => return Some(r),
    };
    let role = if offer.role == Role::Publisher { PlaceRole::Publisher } else { PlaceRole::Viewer };
    let Some(target) = port.shared.place(role, offer.room, zone.as_deref()) else {
        return Some(error(StatusCode::SERVICE_UNAVAILABLE, "NO_CAPACITY", "every node is over its load threshold"));
    };
    if target == port.shared.me {
        return None;
    }
    let request = SignalRequest {
        id: 0,
        kind: if offer.role == Role::Publisher { SignalKind::WhipOffer } else { SignalKind::WhepOffer },
        room: offer.room.to_string(),
        peer: offer.peer,
        token: offer.token,
        content_type: "application/sdp".into(),
        body: offer.sdp.to_string(),
    };
    tracing::info!(room = offer.room, node = %target, kind = offer.kind, "placing session on another node");
    Some(proxied(api, &port, &target, offer.kind, request).await)
}

/// The client's zone from `X-Sfumato-Zone` (absent: the gateway's zone).
fn zone_hint(headers: &hyper::HeaderMap) -> Result<Option<String>, Resp> {
    let Some(v) = headers.get("x-sfumato-zone") else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|z| crate::config::parse_zone(z.trim()).ok())
        .map(Some)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "BAD_ZONE", "X-Sfumato-Zone: 1-64 characters of A-Z a-z 0-9 - _ ."))
}

/// Sends an offer to `target` and answers with its reply; the `Location` names that node.
async fn proxied(api: &Api, port: &ClusterPort, target: &NodeId, kind: &str, request: SignalRequest) -> Resp {
    match port.signal(target, request).await {
        Ok(mut reply) => {
            if reply.status == 201 {
                let id = reply.location.as_deref().and_then(|l| l.rsplit('/').next()).unwrap_or_default().to_string();
                reply.location = Some(format!("/{kind}/conn/{target}/{id}"));
            }
            let mut r = reply_response(&reply);
            if reply.status == 201 {
                api.shared.add_ice_links(r.headers_mut());
            }
            if let Ok(v) = HeaderValue::from_str(target.as_str()) {
                r.headers_mut().insert("x-sfumato-node", v);
            }
            r
        }
        Err(reason) => {
            tracing::warn!(node = %target, %reason, "proxied offer failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "NODE_UNAVAILABLE", &reason)
        }
    }
}

/// DELETE (`delete`) or PATCH of `/{kind}/conn/{node}/{id}`: local if `node` is this one, else proxied.
pub(super) async fn node_resource(api: &Api, delete: bool, node: &str, id: &str, req: Request<Incoming>) -> Resp {
    let Some(port) = cluster_port(&api.shell) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource");
    };
    if node == port.shared.me.as_str() {
        return super::resource(api, delete, id, req).await;
    }
    let (Ok(node), Some(_)) = (NodeId::new(node), ResourceId::parse(id)) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource");
    };
    let token = bearer(&req);
    let mut body = String::new();
    if !delete {
        if !content_type_is(&req, "application/trickle-ice-sdpfrag") {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "expected Content-Type: application/trickle-ice-sdpfrag",
            );
        }
        match read_body(req).await {
            Ok(b) => body = String::from_utf8_lossy(&b).into_owned(),
            Err(r) => return r,
        }
    }
    let resource = id.to_string();
    let request = SignalRequest {
        id: 0,
        kind: if delete { SignalKind::Delete { resource } } else { SignalKind::Patch { resource } },
        // Unused for PATCH/DELETE (the resource id names the session); the wire format wants a room.
        room: "-".into(),
        peer: None,
        token,
        content_type: "application/trickle-ice-sdpfrag".into(),
        body,
    };
    match port.signal(&node, request).await {
        Ok(reply) => {
            if reply.status == 401 || reply.status == 403 {
                api.shared.metrics.auth_failure(api.shell.core(), AuthFailure::NotOwner);
            }
            reply_response(&reply)
        }
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, "NODE_UNAVAILABLE", &reason),
    }
}

/// The HTTP response for a proxied outcome.
fn reply_response(reply: &SignalReply) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(reply.body.clone())));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    for (name, value) in [(CONTENT_TYPE, &reply.content_type), (LOCATION, &reply.location), (hyper::header::ETAG, &reply.etag)] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    r
}

// ---- the owner's side ---------------------------------------------------------------------------------

/// Serves a request another node's gateway proxied here: the same checks and outcome as if the client had
/// sent it to this node.
pub async fn serve_signal(shell: &CoreShell, request: SignalRequest) -> SignalReply {
    let id = request.id;
    let mut reply = match request.kind.clone() {
        SignalKind::WhipOffer | SignalKind::WhepOffer => serve_offer(shell, request).await,
        SignalKind::Delete { resource } => serve_resource(shell, &resource, None, request.token.as_deref()).await,
        SignalKind::Patch { resource } => {
            serve_resource(shell, &resource, Some(request.body), request.token.as_deref()).await
        }
    };
    reply.id = id;
    reply
}

async fn serve_offer(shell: &CoreShell, request: SignalRequest) -> SignalReply {
    let (role, kind, token_kind) = match request.kind {
        SignalKind::WhipOffer => (Role::Publisher, "whip", TokenKind::Whip),
        _ => (Role::Viewer, "whep", TokenKind::Whep),
    };
    let token = request.token.as_deref();
    let (room, peer) = if shell.auth.is_insecure() {
        (request.room.clone(), request.peer.clone())
    } else {
        match shell.auth.verify(token, token_kind, Some(&request.room), unix_now()) {
            Ok(claims) => (claims.room, claims.peer),
            Err(e) => return auth_reply(&e),
        }
    };
    // The gateway checked both already; the same codes as a direct request if a node disagrees.
    if !valid_room(&room) {
        return error_reply(StatusCode::BAD_REQUEST, "BAD_ROOM", "room names are 1-128 characters of A-Z a-z 0-9 - _ .");
    }
    if !request.body.trim_start().starts_with("v=0") {
        return error_reply(StatusCode::BAD_REQUEST, "BAD_SDP", "body is not an SDP offer (must start with v=0)");
    }
    let owner = if shell.auth.is_insecure() { None } else { token.map(fingerprint) };
    let offer = OfferRequest { role, room, sdp: request.body, owner, peer };
    match shell.place_offer(offer).await {
        Ok(created) => SignalReply {
            id: 0,
            status: 201,
            location: Some(format!("/{kind}/conn/{}", created.resource.to_path_segment())),
            etag: Some(format!("\"{}\"", created.resource.to_path_segment())),
            content_type: Some("application/sdp".into()),
            body: created.answer,
        },
        Err(OfferError::BadOffer(reason)) => error_reply(StatusCode::BAD_REQUEST, "BAD_SDP", &reason),
        Err(OfferError::RoomBusy) => error_reply(StatusCode::CONFLICT, "ROOM_HAS_PUBLISHER", "this room already has a publisher"),
        Err(OfferError::Unavailable(reason)) => error_reply(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &reason),
    }
}

/// PATCH (`fragment`) or DELETE. If-Match is not forwarded by gateways (a PATCH through one is unconditional).
async fn serve_resource(shell: &CoreShell, resource: &str, fragment: Option<String>, token: Option<&str>) -> SignalReply {
    let Some(id) = ResourceId::parse(resource) else {
        return error_reply(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource");
    };
    let delete = fragment.is_none();
    let op = match fragment {
        None => ResourceOp::Delete,
        Some(fragment) => ResourceOp::Patch { fragment, if_match: None },
    };
    let presented = token.map(fingerprint);
    let empty = |status: u16| SignalReply { id: 0, status, location: None, etag: None, content_type: None, body: String::new() };
    match shell.resource(id, op, presented).await {
        ResourceOutcome::NotFound => error_reply(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource"),
        ResourceOutcome::Forbidden if presented.is_none() => auth_reply(&AuthError::Missing),
        ResourceOutcome::Forbidden => {
            error_reply(StatusCode::FORBIDDEN, "TOKEN_NOT_OWNER", "only the token that created this session may change it")
        }
        ResourceOutcome::Done => empty(if delete { 200 } else { 204 }),
        ResourceOutcome::IceRestarted { fragment, etag } => SignalReply {
            id: 0,
            status: 200,
            location: None,
            etag: Some(format!("\"{etag}\"")),
            content_type: Some("application/trickle-ice-sdpfrag".into()),
            body: fragment,
        },
        ResourceOutcome::PreconditionFailed => error_reply(StatusCode::PRECONDITION_FAILED, "ETAG_MISMATCH", "If-Match mismatch"),
        ResourceOutcome::BadFragment(reason) => error_reply(StatusCode::BAD_REQUEST, "BAD_SDP_FRAGMENT", &reason),
    }
}

fn auth_reply(e: &AuthError) -> SignalReply {
    let status = if e.is_forbidden() { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
    error_reply(status, e.code(), &e.to_string())
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> SignalReply {
    SignalReply {
        id: 0,
        status: status.as_u16(),
        location: None,
        etag: None,
        content_type: Some("application/json".into()),
        body: serde_json::json!({ "status": false, "error": code, "message": message }).to_string(),
    }
}
