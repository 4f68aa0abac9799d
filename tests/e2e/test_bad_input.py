"""Malformed HTTP requests and UDP garbage must be rejected cleanly, never crash sfumato."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time

import httpx
import pytest

from webrtc_clients import delete, healthz, play, publish, wait_sessions

VALID_SDP_HEAD = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ENDPOINTS = ["/whip/badroom", "/whep/badroom"]


def post(server, path: str, body: bytes | str, content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    if isinstance(body, str):
        body = body.encode()
    return httpx.post(server.base_url + path, content=body, headers=headers, timeout=10)


def assert_json_reason(r: httpx.Response) -> None:
    try:
        doc = r.json()
    except ValueError:
        pytest.fail(f"{r.status_code} body is not JSON: {r.text[:300]!r}")
    assert isinstance(doc, dict) and doc, f"want a JSON object with a reason, got {doc!r}"


def assert_no_sessions(server) -> None:
    h = server.health()
    assert h.get("sessions") == 0, h


def a_real_offer() -> str:
    """A genuine aiortc sendonly offer, so only the header under test is wrong."""
    from webrtc_clients import SineAudioTrack, SyntheticVideoTrack, new_pc

    async def mk():
        pc = new_pc()
        pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        pc.addTransceiver(SineAudioTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(mk())


# ------------------------------------------------------------------- HTTP ---


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("ctype", ["text/plain", "application/json", None])
def test_wrong_content_type_is_415(server, path, ctype):
    r = post(server, path, a_real_offer(), ctype)
    assert r.status_code == 415, (r.status_code, r.text)
    assert_no_sessions(server)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "body",
    ["hello, this is not SDP", "v=0\r\nthis is not sdp either\r\n", "\x00\xff\xfe binary junk", ""],
    ids=["text", "broken-sdp", "binary", "empty"],
)
def test_non_sdp_body_is_400(server, path, body):
    r = post(server, path, body, "application/sdp")
    assert r.status_code == 400, (r.status_code, r.text)
    assert_json_reason(r)
    assert_no_sessions(server)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "body",
    [
        VALID_SDP_HEAD,  # session level only
        VALID_SDP_HEAD
        + "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
        + "a=sctp-port:5000\r\na=setup:actpass\r\n"
        + "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n",  # datachannel only
    ],
    ids=["no-m-lines", "datachannel-only"],
)
def test_sdp_without_media_is_400(server, path, body):
    r = post(server, path, body, "application/sdp")
    assert r.status_code == 400, (r.status_code, r.text)
    assert_json_reason(r)
    assert_no_sessions(server)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_body_over_64k_is_413(server, path):
    body = VALID_SDP_HEAD.encode()
    pad = b"a=x-padding:" + b"x" * 100 + b"\r\n"
    while len(body) < 70 * 1024:
        body += pad
    r = post(server, path, body, "application/sdp")
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert_no_sessions(server)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/whipx/room"),
        ("POST", "/api/does/not/exist"),
        ("DELETE", "/whip/conn/doesnotexist"),
        ("DELETE", "/whep/conn/doesnotexist"),
        ("DELETE", "/whip/conn/0"),
        ("DELETE", "/whep/conn/999999999999"),
    ],
)
def test_unknown_path_or_resource_is_404(server, method, path):
    headers = {"Content-Type": "application/sdp"} if method == "POST" else {}
    r = httpx.request(method, server.base_url + path, content=b"v=0\r\n" if method == "POST" else None,
                      headers=headers, timeout=10)
    assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert server.health().get("sessions") == 0


# -------------------------------------------------------------------- UDP ---


def _stun(msg_type: int, attrs: bytes, length: int | None = None) -> bytes:
    txid = os.urandom(12)
    return struct.pack("!HHI", msg_type, len(attrs) if length is None else length, 0x2112A442) + txid + attrs


def _stun_attr(t: int, v: bytes) -> bytes:
    return struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) % 4)


def garbage_datagrams(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    rb = lambda k: bytes(rng.getrandbits(8) for _ in range(k))  # noqa: E731
    makers = [
        lambda: b"",
        lambda: rb(1),
        lambda: rb(rng.randrange(2, 20)),
        # 20-byte STUN header claiming 0x50 bytes of attributes that are not there
        lambda: b"\x00\x01\x00\x50\x21\x12\xa4\x42" + rb(12),
        # truncated STUN header
        lambda: b"\x00\x01\x00\x50\x21\x12"[: rng.randrange(1, 7)],
        # well-formed Binding request for an unknown ufrag, bogus integrity and fingerprint
        lambda: _stun(
            0x0001,
            _stun_attr(0x0006, b"nobody:nobody")
            + _stun_attr(0x0024, rb(4))
            + _stun_attr(0x8029, rb(8))
            + _stun_attr(0x0008, rb(20))
            + _stun_attr(0x8028, rb(4)),
        ),
        # STUN with an attribute whose length runs past the message
        lambda: _stun(0x0001, struct.pack("!HH", 0x0006, 0xFFF0) + rb(8)),
        # STUN success/error responses nobody asked for
        lambda: _stun(rng.choice([0x0101, 0x0111]), _stun_attr(0x0020, rb(8))),
        # DTLS-looking: handshake record, DTLS 1.2, random epoch/seq/length/body
        lambda: b"\x16\xfe\xfd" + rb(rng.randrange(0, 200)),
        # DTLS ClientHello header with a length far beyond the datagram
        lambda: b"\x16\xfe\xfd\x00\x00" + rb(6) + b"\xff\xff\x01\x00\xff\xff" + rb(30),
        # DTLS application data / alert / change cipher spec records
        lambda: bytes([rng.choice([0x14, 0x15, 0x17])]) + b"\xfe\xfd" + rb(rng.randrange(8, 120)),
        # RTP-looking (SRTP without a session): V=2, PT 96/111
        lambda: bytes([0x80, rng.choice([96, 111, 0xE0, 0xEF])]) + rb(rng.randrange(10, 1200)),
        # RTCP-looking: SR, RR, PLI, NACK
        lambda: bytes([0x80 | rng.randrange(0, 32), rng.choice([200, 201, 205, 206])]) + rb(rng.randrange(2, 100)),
        # random sizes up to MTU
        lambda: rb(rng.randrange(20, 1500)),
        # jumbo
        lambda: rb(rng.choice([1501, 4096, 9000])),
    ]
    out = [m() for m in makers]  # every kind at least once
    while len(out) < n:
        out.append(rng.choice(makers)())
    # a few maximum-size datagrams
    out[rng.randrange(len(out))] = rb(65507)
    out[rng.randrange(len(out))] = rb(65000)
    return out


def spray(ports: list[int], datagrams: list[bytes]) -> int:
    sent = 0
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i, d in enumerate(datagrams):
                try:
                    s.sendto(d, ("127.0.0.1", port))
                    sent += 1
                except OSError:
                    time.sleep(0.001)
                if i % 200 == 199:
                    time.sleep(0.005)  # let the server drain its socket a little
    return sent


@pytest.mark.timeout(120)
def test_udp_garbage_is_ignored(server):
    datagrams = garbage_datagrams(2000, seed=0x5F0)
    sent = spray(server.media_ports, datagrams)
    print(f"sent {sent} garbage datagrams to UDP {server.media_ports}")
    time.sleep(0.5)
    assert server.proc.poll() is None, "server died on UDP garbage"
    h = server.health()
    assert h.get("status") == "ok" and h.get("sessions") == 0, h

    async def run():
        base = server.base_url
        pub = await publish(base, "garbage", video_codec="VP8")
        viewer = await play(base, "garbage")
        await asyncio.gather(pub.wait_connected(10), viewer.wait_connected(10))
        await viewer.stats.wait_video_frames(1, timeout=10)
        await asyncio.sleep(3)
        fps = viewer.stats.video_fps(2.0)
        assert fps >= 25, viewer.stats.summary()

        # more garbage, from new source ports, while media is flowing
        await asyncio.to_thread(spray, server.media_ports, garbage_datagrams(1000, seed=7))
        n = viewer.stats.video_frames
        await asyncio.sleep(2.5)
        got = viewer.stats.video_frames - n
        assert got >= 50, f"video stalled after garbage during a live session: {got} frames in 2.5s"
        assert viewer.stats.audio_ratio(2.0) >= 0.9, viewer.stats.summary()
        assert (await healthz(base)).get("sessions") == 2

        for s in (viewer, pub):
            assert await delete(base, s.location) in (200, 204)
            await s.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())
    assert server.proc.poll() is None
