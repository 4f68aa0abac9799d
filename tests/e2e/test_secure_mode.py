"""Secure mode (`--secret`/SFUMATO_SECRET): the token API and every token check, over HTTP and with aiortc.

The server is conftest's `server` fixture with `--secret` added through its `server_args` marker (and once
with SFUMATO_SECRET in the environment instead), so startup, log capture and shutdown checks are conftest's.  Tokens are HS256 JWTs,
claims {iss: kind, room, peer?, exp}; this file signs its own (forged/tampered/alg=none) with hmac.

Expected answers (control/src/http_api.rs, control/src/auth.rs):
  missing / forged / garbage / expired token       -> 401 TOKEN_MISSING | TOKEN_INVALID | TOKEN_EXPIRED
  token of another kind / for another room         -> 403 TOKEN_WRONG_KIND | TOKEN_WRONG_ROOM
  DELETE/PATCH of a session without / with another token -> 401 / 403 TOKEN_NOT_OWNER
  POST /token/{kind} without the app secret         -> 401 APP_TOKEN_INVALID
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Callable, Optional
from urllib.parse import urljoin

import httpx
import pytest
from aiortc import RTCSessionDescription

from webrtc_clients import (
    HTTP_TIMEOUT,
    SDP_CT,
    TRICKLE_CT,
    PlayStats,
    Session,
    SineAudioTrack,
    SyntheticVideoTrack,
    WhipError,
    _consume,
    codec_preferences,
    new_pc,
    offer_sdp,
    play,
    publish,
    wait_sessions,
)

SECRET = "e2e-secret-" + secrets.token_hex(8)
ROOM = "secure-room"
OTHER_ROOM = "other-room"


# ---------------------------------------------------------------- fixtures ---


@pytest.fixture
def secure_server(monkeypatch, request):
    """conftest's server started with `--secret SECRET` (its server_args marker, added here)."""
    monkeypatch.delenv("SFUMATO_SECRET", raising=False)
    request.node.add_marker(pytest.mark.server_args("--secret", SECRET))
    srv = request.getfixturevalue("server")  # started now, with the marker above
    assert_secure(srv)
    yield srv
    logged = "\n".join(l for l in srv.log_text().splitlines() if not l.startswith("$ "))  # "$ cmd" is ours
    assert SECRET not in logged, "the app secret appears in the server's log"


@pytest.fixture
def dev_server(monkeypatch, request):
    """conftest's server with the default secret (`insecure`, dev mode)."""
    monkeypatch.delenv("SFUMATO_SECRET", raising=False)
    return request.getfixturevalue("server")


def assert_secure(srv) -> None:
    r = httpx.post(f"{srv.base_url}/whip/{ROOM}", content=b"v=0\r\n", headers={"Content-Type": SDP_CT}, timeout=10)
    assert r.status_code == 401, f"server is not in secure mode: POST /whip without a token -> {r.status_code} {r.text}"
    assert "DEV MODE" not in srv.log_text()


# ------------------------------------------------------------------ tokens ---


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign_jwt(claims: dict, secret: str, header: Optional[dict] = None) -> str:
    """An HS256 JWT signed with `secret` (what the server does, without pyjwt)."""
    header = header or {"typ": "JWT", "alg": "HS256"}
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def jwt_claims(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[1]))


def token_request(srv, kind: str, body, secret: Optional[str] = SECRET) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(f"{srv.base_url}/token/{kind}", content=body, headers=headers, timeout=10)
    return httpx.post(f"{srv.base_url}/token/{kind}", json=body, headers=headers, timeout=10)


def issue(srv, kind: str, room: str, *, ttl: Optional[int] = None, peer: Optional[str] = None, secret: str = SECRET) -> str:
    body: dict = {"room": room}
    if ttl is not None:
        body["ttl"] = ttl
    if peer is not None:
        body["peer"] = peer
    r = token_request(srv, kind, body, secret)
    assert r.status_code == 200, f"POST /token/{kind} {body} -> {r.status_code} {r.text}"
    doc = r.json()
    assert doc["status"] is True and isinstance(doc["data"]["token"], str), doc
    return doc["data"]["token"]


def assert_json_error(r: httpx.Response, status: int, code: Optional[str] = None) -> dict:
    where = f"{r.request.method} {r.request.url.path}"
    assert r.status_code == status, f"{where}: want {status} {code}, got {r.status_code} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), (where, r.headers)
    assert r.headers.get("access-control-allow-origin") == "*", (where, r.headers)
    doc = r.json()
    assert doc.get("status") is False, (where, doc)
    assert isinstance(doc.get("error"), str) and isinstance(doc.get("message"), str), (where, doc)
    if code is not None:
        assert doc["error"] == code, f"{where}: want error {code}, got {doc}"
    return doc


# ------------------------------------------------------- aiortc with tokens ---


def bearer(token: Optional[str]) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _post_offer(base_url: str, path: str, pc, token: Optional[str]) -> tuple[str, str, str]:
    """webrtc_clients._post_offer plus an Authorization header."""
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers ICE here
    sdp = pc.localDescription.sdp
    url = urljoin(base_url.rstrip("/") + "/", path.lstrip("/"))
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.post(url, content=sdp.encode(), headers={"Content-Type": SDP_CT, **bearer(token)})
    if r.status_code != 201:
        raise WhipError(r.status_code, r.text, url)
    loc = r.headers.get("location")
    if not loc:
        raise WhipError(r.status_code, "201 without Location header", url)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
    return urljoin(url, loc), r.text, sdp


async def publish_t(base_url: str, path: str, token: Optional[str], codec: str = "VP8") -> Session:
    """WHIP-publish synthetic VP8 + Opus to `path` (/whip/{room} or /whip/endpoint) with a token."""
    pc = new_pc()
    vt, at = SyntheticVideoTrack(320, 180, 30), SineAudioTrack()
    pc.addTransceiver(vt, direction="sendonly").setCodecPreferences(codec_preferences("video", codec))
    pc.addTransceiver(at, direction="sendonly").setCodecPreferences(codec_preferences("audio", "opus", rtx=False))
    try:
        location, answer, offer = await _post_offer(base_url, path, pc, token)
    except BaseException:
        await pc.close()
        raise
    return Session(pc=pc, location=location, answer=answer, offer=offer, tracks=[vt, at])


async def play_t(base_url: str, path: str, token: Optional[str]) -> Session:
    """WHEP-play `path` (/whep/{room} or /whep/endpoint) with a token; decoded frames in `.stats`."""
    pc = new_pc()
    stats, tasks = PlayStats(), []

    @pc.on("track")
    def on_track(track):
        stats.track_kinds.append(track.kind)
        tasks.append(asyncio.ensure_future(_consume(track, stats)))

    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly").setCodecPreferences(codec_preferences("audio", "opus", rtx=False))
    try:
        location, answer, offer = await _post_offer(base_url, path, pc, token)
    except BaseException:
        await pc.close()
        raise
    return Session(pc=pc, location=location, answer=answer, offer=offer, stats=stats, tasks=tasks)


async def a_delete(location: str, token: Optional[str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as c:
        return await c.delete(location, headers=bearer(token))


async def a_patch(location: str, token: Optional[str]) -> httpx.Response:
    # No ICE credentials: a plain trickle (new credentials would be an ICE restart, answered 200).
    frag = "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n"
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as c:
        return await c.patch(location, content=frag, headers={"Content-Type": TRICKLE_CT, **bearer(token)})



# ------------------------------------------------------------ token matrix ---

# Each recipe builds the Authorization header value for (server, kind the route wants, room of the route).
Recipe = Callable[[object, str, str], Optional[str]]


def valid(srv, kind, room):
    return "Bearer " + issue(srv, kind, room, peer="alice")


def as_kind(token_kind: str) -> Recipe:
    return lambda srv, kind, room: "Bearer " + issue(srv, token_kind, room)


def for_room(other: str) -> Recipe:
    return lambda srv, kind, room: "Bearer " + issue(srv, kind, other)


def self_signed_real_secret(srv, kind, room):
    # proves sign_jwt makes tokens the server accepts, so the forged case below fails only on the key
    return "Bearer " + sign_jwt({"iss": kind, "room": room, "exp": int(time.time()) + 600}, SECRET)


def forged(srv, kind, room):
    return "Bearer " + sign_jwt({"iss": kind, "room": room, "exp": int(time.time()) + 600}, "not-" + SECRET)


def alg_none(srv, kind, room):
    h = b64url(json.dumps({"typ": "JWT", "alg": "none"}).encode())
    p = b64url(json.dumps({"iss": kind, "room": room, "exp": int(time.time()) + 600}).encode())
    return f"Bearer {h}.{p}."


def tampered(srv, kind, room):
    # a genuine token for another room with its payload swapped for this room, signature kept
    good = issue(srv, kind, OTHER_ROOM)
    h, _, s = good.split(".")
    p = b64url(json.dumps({"iss": kind, "room": room, "exp": int(time.time()) + 600}, separators=(",", ":")).encode())
    return f"Bearer {h}.{p}.{s}"


def expired(srv, kind, room):
    tok = issue(srv, kind, room, ttl=1)
    time.sleep(2.0)
    return "Bearer " + tok


CASES = [
    # (id, route kind, room segment ("{room}" = ROOM), recipe, want status, want error code)
    ("whip-valid", "whip", "{room}", valid, 201, None),
    ("whip-webrtc-token", "whip", "{room}", as_kind("webrtc"), 201, None),
    ("whip-self-signed-with-secret", "whip", "{room}", self_signed_real_secret, 201, None),
    ("whip-missing", "whip", "{room}", lambda *a: None, 401, "TOKEN_MISSING"),
    ("whip-bearer-without-token", "whip", "{room}", lambda *a: "Bearer", 401, "TOKEN_MISSING"),
    ("whip-basic-auth", "whip", "{room}", lambda *a: "Basic " + b64url(b"user:" + SECRET.encode()), 401, "TOKEN_MISSING"),
    ("whip-garbage", "whip", "{room}", lambda *a: "Bearer not.a.jwt", 401, "TOKEN_INVALID"),
    ("whip-app-secret-as-token", "whip", "{room}", lambda *a: "Bearer " + SECRET, 401, "TOKEN_INVALID"),
    ("whip-forged", "whip", "{room}", forged, 401, "TOKEN_INVALID"),
    ("whip-alg-none", "whip", "{room}", alg_none, 401, "TOKEN_INVALID"),
    ("whip-tampered", "whip", "{room}", tampered, 401, "TOKEN_INVALID"),
    ("whip-expired", "whip", "{room}", expired, 401, "TOKEN_EXPIRED"),
    ("whip-whep-token", "whip", "{room}", as_kind("whep"), 403, "TOKEN_WRONG_KIND"),
    ("whip-rtmp-token", "whip", "{room}", as_kind("rtmp"), 403, "TOKEN_WRONG_KIND"),
    ("whip-wrong-room", "whip", "{room}", for_room(OTHER_ROOM), 403, "TOKEN_WRONG_ROOM"),
    ("whep-valid", "whep", "{room}", valid, 201, None),
    ("whep-webrtc-token", "whep", "{room}", as_kind("webrtc"), 201, None),
    ("whep-missing", "whep", "{room}", lambda *a: None, 401, "TOKEN_MISSING"),
    ("whep-forged", "whep", "{room}", forged, 401, "TOKEN_INVALID"),
    ("whep-tampered", "whep", "{room}", tampered, 401, "TOKEN_INVALID"),
    ("whep-expired", "whep", "{room}", expired, 401, "TOKEN_EXPIRED"),
    ("whep-whip-token", "whep", "{room}", as_kind("whip"), 403, "TOKEN_WRONG_KIND"),
    ("whep-rtmp-token", "whep", "{room}", as_kind("rtmp"), 403, "TOKEN_WRONG_KIND"),
    ("whep-wrong-room", "whep", "{room}", for_room(OTHER_ROOM), 403, "TOKEN_WRONG_ROOM"),
    ("whip-endpoint-valid", "whip", "endpoint", valid, 201, None),
    ("whip-endpoint-missing", "whip", "endpoint", lambda *a: None, 401, "TOKEN_MISSING"),
    ("whip-endpoint-forged", "whip", "endpoint", forged, 401, "TOKEN_INVALID"),
    ("whip-endpoint-expired", "whip", "endpoint", expired, 401, "TOKEN_EXPIRED"),
    ("whip-endpoint-whep-token", "whip", "endpoint", as_kind("whep"), 403, "TOKEN_WRONG_KIND"),
    ("whep-endpoint-valid", "whep", "endpoint", valid, 201, None),
    ("whep-endpoint-missing", "whep", "endpoint", lambda *a: None, 401, "TOKEN_MISSING"),
    ("whep-endpoint-whip-token", "whep", "endpoint", as_kind("whip"), 403, "TOKEN_WRONG_KIND"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind,segment,recipe,status,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_token_matrix(secure_server, kind, segment, recipe, status, code):
    srv = secure_server
    room_segment = ROOM if segment == "{room}" else segment
    auth = recipe(srv, kind, ROOM)
    sdp = asyncio.run(offer_sdp(kind))
    headers = {"Content-Type": SDP_CT}
    if auth is not None:
        headers["Authorization"] = auth
    r = httpx.post(f"{srv.base_url}/{kind}/{room_segment}", content=sdp, headers=headers, timeout=10)
    if status != 201:
        assert_json_error(r, status, code)
        assert srv.health()["sessions"] == 0
        return
    assert r.status_code == 201, f"want 201, got {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith(SDP_CT)
    loc = urljoin(srv.base_url + "/", r.headers["location"])
    assert loc.startswith(f"{srv.base_url}/{kind}/conn/"), loc
    h = srv.health()
    assert h["sessions"] == 1 and h["rooms"] == 1, h
    token = auth.split(" ", 1)[1]
    assert httpx.delete(loc, timeout=10).status_code == 401  # the creator's token is needed
    r = httpx.delete(loc, headers=bearer(token), timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    asyncio.run(wait_sessions(srv.base_url, 0, timeout=10))


# -------------------------------------------------------------- token API ---


@pytest.mark.parametrize("kind", ["whip", "whep", "rtmp", "webrtc"])
def test_token_api_issues_each_kind(secure_server, kind):
    t0 = int(time.time())
    tok = issue(secure_server, kind, ROOM, ttl=120, peer="bob")
    header = json.loads(b64url_decode(tok.split(".")[0]))
    assert header.get("alg") == "HS256", header
    claims = jwt_claims(tok)
    assert claims["iss"] == kind and claims["room"] == ROOM and claims["peer"] == "bob", claims
    assert t0 + 120 - 2 <= claims["exp"] <= int(time.time()) + 120 + 2, claims
    # the token really is HS256 over the app secret
    h, p, s = tok.split(".")
    assert hmac.compare_digest(b64url(hmac.new(SECRET.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()), s)


def test_token_api_default_ttl_is_an_hour(secure_server):
    claims = jwt_claims(issue(secure_server, "whip", ROOM))
    assert abs(claims["exp"] - (time.time() + 3600)) < 5, claims
    assert "peer" not in claims, claims


@pytest.mark.parametrize(
    "case,kind,body,secret,status,code",
    [
        ("wrong-secret", "whip", {"room": ROOM}, "not-the-secret", 401, "APP_TOKEN_INVALID"),
        ("secret-prefix", "whip", {"room": ROOM}, SECRET[:-1], 401, "APP_TOKEN_INVALID"),
        ("no-authorization", "whip", {"room": ROOM}, None, 401, "APP_TOKEN_INVALID"),
        ("insecure-default-secret", "whip", {"room": ROOM}, "insecure", 401, "APP_TOKEN_INVALID"),
        ("unknown-kind", "sip", {"room": ROOM}, SECRET, 404, "NOT_FOUND"),
        ("bad-json", "whip", b"{room:", SECRET, 400, "BAD_JSON"),
        ("no-room", "whip", {"ttl": 5}, SECRET, 400, "BAD_JSON"),
        ("bad-room", "whip", {"room": "a/b"}, SECRET, 400, "BAD_ROOM"),
        ("ttl-zero", "whep", {"room": ROOM, "ttl": 0}, SECRET, 400, "BAD_TTL"),
        ("ttl-over-a-week", "whep", {"room": ROOM, "ttl": 7 * 24 * 3600 + 1}, SECRET, 400, "BAD_TTL"),
    ],
)
def test_token_api_rejects(secure_server, case, kind, body, secret, status, code):
    assert_json_error(token_request(secure_server, kind, body, secret), status, code)


def test_token_api_rejects_a_token_as_app_secret(secure_server):
    tok = issue(secure_server, "webrtc", ROOM)
    assert_json_error(token_request(secure_server, "whip", {"room": ROOM}, tok), 401, "APP_TOKEN_INVALID")


def test_get_on_token_is_405(secure_server):
    r = httpx.get(f"{secure_server.base_url}/token/whip", timeout=10)
    assert_json_error(r, 405)


# ------------------------------------------------------- media with tokens ---


@pytest.mark.timeout(90)
def test_publish_and_play_with_tokens(secure_server):
    """aiortc publishes and plays with tokens from the token API; only the creator's token may end a session."""
    srv = secure_server

    async def run():
        base = srv.base_url
        pub_tok = issue(srv, "whip", ROOM, peer="publisher")
        view_tok = issue(srv, "whep", ROOM, peer="viewer")
        other_view_tok = issue(srv, "whep", ROOM, peer="someone-else")
        pub = await publish_t(base, f"/whip/{ROOM}", pub_tok)
        viewer = await play_t(base, f"/whep/{ROOM}", view_tok)
        try:
            await asyncio.gather(pub.wait_connected(10), viewer.wait_connected(10))
            await viewer.stats.wait_video_frames(30, timeout=15)
            await viewer.stats.wait_audio_frames(25, timeout=10)
            assert set(viewer.stats.track_kinds) == {"audio", "video"}, viewer.stats.summary()

            for s, own, others in ((viewer, view_tok, [other_view_tok, pub_tok]), (pub, pub_tok, [view_tok, other_view_tok])):
                assert_json_error(await a_delete(s.location, None), 401, "TOKEN_MISSING")
                assert_json_error(await a_patch(s.location, None), 401, "TOKEN_MISSING")
                for other in others:
                    assert_json_error(await a_delete(s.location, other), 403, "TOKEN_NOT_OWNER")
                    assert_json_error(await a_patch(s.location, other), 403, "TOKEN_NOT_OWNER")
                r = await a_patch(s.location, own)
                assert r.status_code == 204, (r.status_code, r.text)

            # none of that touched the sessions: media still flows
            n = viewer.stats.video_frames
            await asyncio.sleep(1.5)
            assert viewer.stats.video_frames - n >= 20, viewer.stats.summary()
            assert (await a_delete(viewer.location, view_tok)).status_code == 200
            assert (await a_delete(pub.location, pub_tok)).status_code == 200
            # gone now: the owner's second DELETE is a 404
            assert (await a_delete(pub.location, pub_tok)).status_code == 404
        finally:
            await viewer.close()
            await pub.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


@pytest.mark.timeout(90)
def test_endpoint_routes_take_the_room_from_the_token(secure_server):
    """/whip/endpoint publishes into the token's room; /whep/{room} and /whep/endpoint viewers see it."""
    srv = secure_server
    room = "endpoint-room"

    async def run():
        base = srv.base_url
        pub_tok = issue(srv, "whip", room)
        v1_tok, v2_tok = issue(srv, "whep", room), issue(srv, "webrtc", room)
        decoy_tok = issue(srv, "whep", "decoy-room")
        pub = await publish_t(base, "/whip/endpoint", pub_tok)
        v1 = await play_t(base, f"/whep/{room}", v1_tok)
        v2 = await play_t(base, "/whep/endpoint", v2_tok)
        decoy = await play_t(base, "/whep/endpoint", decoy_tok)
        sessions = (v1, v2, decoy, pub)
        try:
            await asyncio.gather(*(s.wait_connected(10) for s in sessions))
            await asyncio.gather(v1.stats.wait_video_frames(20, 15), v2.stats.wait_video_frames(20, 15))
            h = srv.health()
            assert h["sessions"] == 4 and h["rooms"] == 2, h
            assert decoy.stats.video_frames == 0, "a viewer of another room got this room's video"
            for s, tok in ((v1, v1_tok), (v2, v2_tok), (decoy, decoy_tok), (pub, pub_tok)):
                r = await a_delete(s.location, tok)
                assert r.status_code == 200, (r.status_code, r.text)
        finally:
            for s in sessions:
                await s.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_webrtc_token_publishes_and_plays(secure_server):
    srv = secure_server

    async def run():
        base = srv.base_url
        tok = issue(srv, "webrtc", ROOM)
        pub = await publish_t(base, f"/whip/{ROOM}", tok)
        viewer = await play_t(base, f"/whep/{ROOM}", tok)
        try:
            await viewer.stats.wait_video_frames(10, timeout=15)
            # the same token created both; it may end both
            assert (await a_delete(viewer.location, tok)).status_code == 200
            assert (await a_delete(pub.location, tok)).status_code == 200
        finally:
            await viewer.close()
            await pub.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_rejected_publish_leaves_nothing_behind(secure_server):
    """A 401/403 publish attempt does not take the room: a valid publisher gets it right after."""
    srv = secure_server

    async def run():
        base = srv.base_url
        for tok in (None, issue(srv, "whep", ROOM), issue(srv, "whip", OTHER_ROOM)):
            with pytest.raises(WhipError) as ei:
                await publish_t(base, f"/whip/{ROOM}", tok)
            assert ei.value.status in (401, 403)
        assert srv.health()["sessions"] == 0
        tok = issue(srv, "whip", ROOM)
        pub = await publish_t(base, f"/whip/{ROOM}", tok)
        try:
            await pub.wait_connected(10)
        finally:
            assert (await a_delete(pub.location, tok)).status_code == 200
            await pub.close()

    asyncio.run(run())


# ---------------------------------------------------------------- dev mode ---


@pytest.mark.timeout(60)
def test_dev_mode_needs_no_token(dev_server):
    """With the default secret, /whip|whep/{room} work without a token and DELETE needs none."""

    async def run():
        base = dev_server.base_url
        pub = await publish(base, "dev-room", video_codec="VP8")
        viewer = await play(base, "dev-room")
        try:
            await viewer.stats.wait_video_frames(10, timeout=15)
            assert (await a_delete(viewer.location, None)).status_code == 200
            assert (await a_delete(pub.location, None)).status_code == 200
        finally:
            await viewer.close()
            await pub.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())
    assert "DEV MODE" in dev_server.log_text()


def test_dev_mode_endpoint_still_needs_a_token(dev_server):
    """/whip/endpoint has no room in its path, so even dev mode needs a token there (issued with `insecure`)."""
    srv = dev_server
    sdp = asyncio.run(offer_sdp("whip"))
    r = httpx.post(f"{srv.base_url}/whip/endpoint", content=sdp, headers={"Content-Type": SDP_CT}, timeout=10)
    assert_json_error(r, 401, "TOKEN_MISSING")
    tok = issue(srv, "whip", "dev-endpoint", secret="insecure")
    r = httpx.post(f"{srv.base_url}/whip/endpoint", content=sdp, headers={"Content-Type": SDP_CT, **bearer(tok)}, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    assert srv.health()["rooms"] == 1
    loc = urljoin(srv.base_url + "/", r.headers["location"])
    assert httpx.delete(loc, timeout=10).status_code == 200  # dev mode: no owner check


def test_secret_from_environment(monkeypatch, request):
    """SFUMATO_SECRET (instead of --secret) also turns secure mode on; tokens signed with it work."""
    monkeypatch.setenv("SFUMATO_SECRET", SECRET)
    srv = request.getfixturevalue("server")
    assert_secure(srv)
    tok = issue(srv, "whip", ROOM)
    sdp = asyncio.run(offer_sdp("whip"))
    r = httpx.post(f"{srv.base_url}/whip/{ROOM}", content=sdp, headers={"Content-Type": SDP_CT, **bearer(tok)}, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    loc = urljoin(srv.base_url + "/", r.headers["location"])
    assert httpx.delete(loc, headers=bearer(tok), timeout=10).status_code == 200
    assert SECRET not in srv.log_text(), "the app secret appears in the server's log"
    assert tok not in srv.log_text(), "a token appears in the server's log"
    assert tok.split(".")[2] not in srv.log_text(), "a token's signature appears in the server's log"
