"""Cluster (`sfumato media`): four real nodes on loopback, aiortc peers, QUIC links between the nodes.

One module-scoped cluster, secure mode (tokens from any node work on every node):
  a: zone z1 (the seed)      b, c, d: zone z2 (join through a)      `--cores 1` each, distinct ports
The tests run in file order and share it:
  1. cascading across zones: publisher on a, 2 viewers on b, 1 on c, 1 on d; one copy crosses into z2 (to
     the zone's relay for the room, c), which sends one copy per other z2 node (not per viewer); kill -9 the
     relay -> the other z2 viewers get video back through the new relay (d); c restarts and relays again
  1b. bitrate feedback: a viewer's REMB estimate on b travels upstream to a's publisher (REMB)
  2. gateway placement: proxied WHEP through a to b (Location routes DELETE back through a), 409 through c,
     zone preference (X-Sfumato-Zone, and the gateway's own zone)
  3. a node with a wrong secret never joins and is logged as refused
  4. failures: kill -9 c (viewer node) -> dropped within ~5 s, b's viewer goes on; c restarts and rejoins;
     kill -9 a (publisher node) -> b's viewer stops, gets video again once the publisher re-publishes on c
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urljoin

import httpx
import pytest
from aiortc import RTCSessionDescription

from conftest import free_tcp_port, free_udp_range, server_binary, REPO_ROOT
from h264 import answer_h264_profiles
from webrtc_clients import (
    HTTP_TIMEOUT,
    SDP_CT,
    PlayStats,
    SineAudioTrack,
    SyntheticVideoTrack,
    _consume,
    codec_preferences,
    new_pc,
)

SECRET = "cluster-e2e-" + secrets.token_hex(8)
MIN_FPS = 20.0
W, H = 320, 180  # small frames: five aiortc decoders share this machine with three servers


# ------------------------------------------------------------------ nodes ---


@dataclass
class Node:
    name: str
    zone: str
    http_port: int
    quic_port: int
    webrtc_port: int
    secret: str
    seeds: list
    proc: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def quic(self) -> str:
        return f"127.0.0.1:{self.quic_port}"

    def start(self) -> None:
        fd, name = tempfile.mkstemp(prefix=f"sfumato-cluster-{self.name}-", suffix=".log")
        self.log_path = Path(name)
        cmd = [str(server_binary()), "media", "--node-id", self.name, "--zone", self.zone, "--cores", "1", "--no-pin",
               "--http-addr", "127.0.0.1", "--http-port", str(self.http_port), "--webrtc-port", str(self.webrtc_port),
               "--webrtc-ips", "127.0.0.1", "--rtmp-port", "0", "--quic-port", str(self.quic_port),
               "--advertise-ip", "127.0.0.1", "--secret", self.secret]
        if self.seeds:
            cmd += ["--seeds", ",".join(self.seeds)]
        env = dict(os.environ, RUST_LOG="info,str0m=warn", NO_COLOR="1")
        env.pop("SFUMATO_SECRET", None)
        with os.fdopen(fd, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         cwd=REPO_ROOT)

    def wait_healthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{self.name} not healthy:\n{self.log_tail()}"
            time.sleep(0.1)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=5).json()

    def cluster(self) -> dict:
        return self.health()["cluster"]

    def status_of(self, other: str) -> Optional[str]:
        for n in self.cluster()["nodes"]:
            if n["id"] == other:
                return n["status"]
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def new_node(name: str, zone: str, seeds: list, secret: str = SECRET) -> Node:
    http = free_tcp_port()
    quic = free_udp_range(1, exclude={http})
    webrtc = free_udp_range(1, exclude={http, quic})
    return Node(name, zone, http, quic, webrtc, secret, seeds)


def wait_until(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


@pytest.fixture(scope="module")
def cluster(request):
    a = new_node("a", "z1", [])
    a.start()
    a.wait_healthy()
    b = new_node("b", "z2", [a.quic])
    c = new_node("c", "z2", [a.quic])
    d = new_node("d", "z2", [a.quic])
    for n in (b, c, d):
        n.start()
    for n in (b, c, d):
        n.wait_healthy()
    nodes = {"a": a, "b": b, "c": c, "d": d}
    try:
        for n in nodes.values():
            wait_until(lambda: n.cluster()["links_up"] == 3 and n.cluster()["members_alive"] == 3, 10,
                       f"{n.name} linked to all others")
        yield nodes
    finally:
        failed = getattr(request.session, "testsfailed", 0)
        for n in nodes.values():
            n.stop()
            if failed:
                print(f"--- {n.name} log ({n.log_path}) ---\n{n.log_tail(80)}")
            elif n.log_path and not os.environ.get("SFUMATO_KEEP_LOGS"):
                n.log_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- clients ---


def token(node: Node, kind: str, room: str) -> str:
    r = httpx.post(f"{node.url}/token/{kind}", json={"room": room, "ttl": 600},
                   headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["token"]


@dataclass
class Peer:
    pc: object
    response: httpx.Response
    location: str  # absolute, against the node the request went to
    token: str
    stats: Optional[PlayStats] = None
    tasks: list = None

    async def close(self) -> None:
        await self.pc.close()
        for t in self.tasks or []:
            t.cancel()


async def post_offer(node: Node, kind: str, room: str, *, zone: Optional[str] = None, expect: int = 201,
                     video_codec: str = "VP8") -> Peer:
    """A WHIP (publish synthetic video + audio) or WHEP (receive, decode) aiortc peer through `node`."""
    pc = new_pc()
    stats, tasks = None, []
    if kind == "whip":
        vt = pc.addTransceiver(SyntheticVideoTrack(W, H, 30), direction="sendonly")
        vt.setCodecPreferences(codec_preferences("video", video_codec))
        at = pc.addTransceiver(SineAudioTrack(), direction="sendonly")
        at.setCodecPreferences(codec_preferences("audio", "opus", rtx=False))
    else:
        stats = PlayStats()

        @pc.on("track")
        def on_track(track):
            stats.track_kinds.append(track.kind)
            tasks.append(asyncio.ensure_future(_consume(track, stats)))

        pc.addTransceiver("video", direction="recvonly")
        at = pc.addTransceiver("audio", direction="recvonly")
        at.setCodecPreferences(codec_preferences("audio", "opus", rtx=False))
    await pc.setLocalDescription(await pc.createOffer())
    tok = token(node, kind, room)
    headers = {"Content-Type": SDP_CT, "Authorization": f"Bearer {tok}"}
    if zone:
        headers["X-Sfumato-Zone"] = zone
    url = f"{node.url}/{kind}/{room}"
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.post(url, content=pc.localDescription.sdp.encode(), headers=headers)
    assert r.status_code == expect, f"POST {url} -> {r.status_code} {r.text[:300]}"
    location = urljoin(url, r.headers.get("location", ""))
    if r.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
    peer = Peer(pc, r, location, tok, stats, tasks)
    if r.status_code != 201:
        await peer.close()
    return peer


async def wait_connected(*peers: Peer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.pc.connectionState == "connected" for p in peers):
        assert time.monotonic() < deadline, [p.pc.connectionState for p in peers]
        await asyncio.sleep(0.05)


async def wait_frames(peer: Peer, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while peer.stats.video_frames < n:
        assert time.monotonic() < deadline, f"waiting for {n} video frames: {peer.stats.summary()}"
        await asyncio.sleep(0.05)


async def delete(location: str, tok: str) -> int:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.delete(location, headers={"Authorization": f"Bearer {tok}"})
    return r.status_code


def export_packets(node: Node, room: str) -> dict:
    return {e["node"]: e["packets"] for e in node.cluster()["exports"] if e["room"] == room}


def pulls(node: Node, room: str) -> list:
    """`node`'s cascade subscriptions of `room` (at most one): from, relaying, viewers."""
    return [s for s in node.cluster()["subscriptions"] if s["room"] == room]


def pulls_from(node: Node, room: str) -> Optional[str]:
    p = pulls(node, room)
    return p[0]["from"] if p else None


_M64 = (1 << 64) - 1


def hrw_score(room: str, node: str) -> int:
    """Mirror of `control/src/cascade/relay.rs::score` (FNV-1a + splitmix64): which node relays a room."""
    h = 0xCBF29CE484222325
    for byte in room.encode() + b"\xff" + node.encode():
        h = ((h ^ byte) * 0x100000001B3) & _M64
    h = (h + 0x9E3779B97F4A7C15) & _M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def zone_relay(room: str, nodes) -> str:
    """The node of `nodes` that relays `room` into their zone (rendezvous hashing, highest score)."""
    return max(nodes, key=lambda n: (hrw_score(room, n), n))


def rejoin(node: Node, cluster: dict) -> None:
    """Restarts a killed node (new incarnation) and waits until everyone sees it alive and linked."""
    node.start()
    node.wait_healthy()
    others = [n for n in cluster.values() if n is not node and n.proc.poll() is None]
    wait_until(lambda: all(o.status_of(node.name) == "alive" for o in others)
               and node.cluster()["links_up"] == len(others), 10, f"{node.name} to rejoin")


# ------------------------------------------------------------------ tests ---


def test_cascade_one_copy_per_zone_pair(cluster):
    a, b, c, d = cluster["a"], cluster["b"], cluster["c"], cluster["d"]
    room = "zone"
    relay = zone_relay(room, "bcd")
    assert relay == "c"  # the room name is chosen for it; the cluster must agree with the mirror below

    async def run():
        pub = await post_offer(a, "whip", room)
        assert "/conn/" in pub.location and "/conn/a/" not in pub.location, pub.location  # placed on a itself
        await wait_connected(pub)
        # All four at once: a viewer in z2 is placed on a z2 node that already pulls the room, and gossip
        # (every 500 ms) tells c and d when b starts pulling; posted one after the other (each aiortc offer
        # takes a while), c's and d's viewers could be proxied to b, and this test needs them on c and d.
        viewers = list(await asyncio.gather(*(post_offer(n, "whep", room) for n in (b, b, c, d))))
        viewers_b, viewer_c, viewer_d = viewers[:2], viewers[2], viewers[3]
        for v in viewers:
            assert not re.search(r"/conn/[a-z]+/", v.location), f"viewer placed elsewhere: {v.location}"
        await wait_connected(*viewers)
        for v in viewers:
            await wait_frames(v, 10, timeout=15)
        # One copy into z2, to its relay; the other z2 nodes pull from the relay.
        assert export_packets(a, room).keys() == {relay}, a.cluster()["exports"]
        assert pulls(c, room) == [{"room": room, "from": "a", "relaying": True, "viewers": True}], pulls(c, room)
        assert pulls_from(b, room) == relay and pulls_from(d, room) == relay
        assert export_packets(c, room).keys() == {"b", "d"}
        # Steady state, then count over a window.
        await asyncio.sleep(1.0)
        ha0, hb0, hc0 = a.health(), b.health(), c.health()
        await asyncio.sleep(4.0)
        ha1, hb1, hc1 = a.health(), b.health(), c.health()
        end = time.monotonic()
        for i, v in enumerate(viewers):
            fps, audio = v.stats.video_fps(3.0, end), v.stats.audio_frames
            print(f"viewer {i}: fps={fps:.1f} {v.stats.summary()}")
            assert fps >= MIN_FPS, v.stats.summary()
            assert audio > 50 and "audio" in v.stats.track_kinds, v.stats.summary()
        published = ha1["stats"]["rtp_packets_in"] - ha0["stats"]["rtp_packets_in"]
        sent_a = ha1["cluster"]["cascade_packets_out"] - ha0["cluster"]["cascade_packets_out"]
        sent_c = hc1["cluster"]["cascade_packets_out"] - hc0["cluster"]["cascade_packets_out"]
        received_b = hb1["cluster"]["cascade_packets_in"] - hb0["cluster"]["cascade_packets_in"]
        forwarded_b = hb1["stats"]["rtp_packets_forwarded"] - hb0["stats"]["rtp_packets_forwarded"]
        print(f"publisher packets {published}, a out {sent_a}, relay c out {sent_c}, b in {received_b}, "
              f"b forwarded {forwarded_b}")
        assert published > 300, published
        # One copy per (source zone, destination zone) pair, not per z2 node (3) or viewer (4)...
        assert 0.9 * published <= sent_a <= 1.1 * published, (published, sent_a)
        # ...and the relay sends one copy per other node of its zone (2).
        assert 1.8 * published <= sent_c <= 2.2 * published, (published, sent_c)
        assert 0.9 * published <= received_b <= 1.1 * published
        # b fans its one stream out to its two viewers.
        assert 1.8 * published <= forwarded_b <= 2.2 * published, (forwarded_b, published)
        # Gossiped load: b sees the publisher's node moving media (1 Mbit/s in, a copy out to the relay).
        a_seen_by_b = next(n for n in b.cluster()["nodes"] if n["id"] == "a")
        assert a_seen_by_b["load"]["bandwidth_bps"] > 500_000, a_seen_by_b
        metrics = httpx.get(f"{a.url}/metrics", timeout=5).text
        for line in ("sfumato_cluster_links_up 3", "sfumato_cluster_members 3", "sfumato_cascade_packets_out_total ",
                     f'sfumato_cascade_export_packets_total{{room="{room}",node="{relay}"}}'):
            assert line in metrics, line

        # kill -9 the relay: once their links to it time out (QUIC idle, 2.5 s; before membership's dead
        # verdict, ~4 s), d relays (it scores next) and b pulls from d. 30 more frames take 1 s of that.
        survivors = viewers_b + [viewer_d]
        before = [v.stats.video_frames for v in survivors]
        t0 = time.monotonic()
        c.kill9()
        for v, n in zip(survivors, before):
            await wait_frames(v, n + 30, timeout=12)
        took = time.monotonic() - t0
        print(f"video back through the new relay {took:.1f}s after kill -9 of the relay")
        assert took < 7
        assert zone_relay(room, "bd") == "d"
        assert pulls_from(d, room) == "a" and pulls_from(b, room) == "d"
        assert export_packets(a, room).keys() == {"d"} and export_packets(d, room).keys() == {"b"}
        await viewer_c.close()

        # c restarts: it ranks first again and relays for b and d without a viewer of its own.
        await asyncio.to_thread(rejoin, c, cluster)
        relaying_only = [{"room": room, "from": "a", "relaying": True, "viewers": False}]
        await asyncio.to_thread(wait_until, lambda: pulls(c, room) == relaying_only and pulls_from(b, room) == "c"
                                and pulls_from(d, room) == "c", 10, "c to relay again")
        before = [v.stats.video_frames for v in survivors]
        for v, n in zip(survivors, before):
            await wait_frames(v, n + 30, timeout=10)

        # The last viewer of a node leaving ends that node's subscription; the relay keeps the other one.
        assert await delete(viewer_d.location, viewer_d.token) == 200
        await viewer_d.close()
        await asyncio.to_thread(wait_until, lambda: "d" not in export_packets(c, room) and pulls_from(d, room) is None,
                                5, "c to stop exporting to d")
        assert export_packets(a, room).keys() == {"c"}
        for v in viewers_b:
            assert await delete(v.location, v.token) == 200
            await v.close()
        await asyncio.to_thread(wait_until, lambda: not a.cluster()["exports"] and not c.cluster()["subscriptions"],
                                5, "the relay to let go once nobody downstream needs it")
        assert await delete(pub.location, pub.token) == 200
        await pub.close()
        wait_until(lambda: all(not n.cluster()["subscriptions"] and not n.cluster()["exports"]
                               for n in cluster.values()), 5, "cascade torn down")

    asyncio.run(run())


def test_cascade_bitrate_feedback_reaches_the_publisher(cluster, monkeypatch):
    """A viewer on b (zone z2) of a room published on a (z1): its REMB estimate goes b -> (z2's relay) -> a,
    whose home core asks the aiortc publisher with REMB (seen by wrapping aiortc's REMB parser)."""
    import aiortc.rtcrtpsender as rtcrtpsender

    a, b = cluster["a"], cluster["b"]
    room = "remb-up"
    received: list = []
    real = rtcrtpsender.unpack_remb_fci

    def spy(fci):
        bitrate, ssrcs = real(fci)
        received.append((bitrate, list(ssrcs)))
        return bitrate, ssrcs

    monkeypatch.setattr(rtcrtpsender, "unpack_remb_fci", spy)

    async def run():
        before = a.health()["stats"]["bitrate_hints_sent"]
        pub = await post_offer(a, "whip", room)
        await wait_connected(pub)
        v = await post_offer(b, "whep", room)
        assert not re.search(r"/conn/[a-z]+/", v.location), v.location  # kept by b, cascaded
        await wait_connected(v)
        await wait_frames(v, 10, timeout=15)
        ssrcs = {s._ssrc for s in pub.pc.getSenders() if s.track is not None and s.track.kind == "video"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if a.health()["stats"]["bitrate_hints_sent"] > before and any(set(x) & ssrcs for _, x in received):
                break
            await asyncio.sleep(0.25)
        info = f"a bitrate_hints_sent {a.health()['stats']['bitrate_hints_sent']} (before {before}); REMBs {received[:5]}"
        assert a.health()["stats"]["bitrate_hints_sent"] > before, info
        assert any(set(x) & ssrcs and bps > 0 for bps, x in received), info
        assert b.health()["stats"]["bitrate_hints_sent"] == 0, "b has no WebRTC publisher to send REMB to"
        assert b.cluster()["cascade_bitrate_hints"] > 0, b.cluster()
        for p in (v, pub):
            assert await delete(p.location, p.token) == 200
            await p.close()
        wait_until(lambda: all(not n.cluster()["subscriptions"] and not n.cluster()["exports"]
                               for n in cluster.values()), 5, "cascade torn down")

    asyncio.run(run())


def test_gateway_places_and_proxies(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]

    async def run():
        pub = await post_offer(b, "whip", "gw")
        assert not re.search(r"/conn/[a-z]+/", pub.location), pub.location
        await wait_connected(pub)
        wait_until(lambda: any("gw" in n["rooms"] for n in a.cluster()["nodes"] if n["id"] == "b"), 5,
                   "a to learn that b hosts gw")
        # Through a, for a client in zone z2: b hosts the room in that zone -> proxied to b.
        v = await post_offer(a, "whep", "gw", zone="z2")
        assert v.response.headers.get("x-sfumato-node") == "b", v.response.headers
        assert "/whep/conn/b/" in v.location and v.location.startswith(a.url), v.location
        await wait_connected(v)
        await wait_frames(v, 15, timeout=15)
        assert b.health()["viewers"] == 1 and a.health()["sessions"] == 0
        # Through c (zone z2), no header: b carries the room in c's zone -> proxied as well.
        v2 = await post_offer(c, "whep", "gw")
        assert "/whep/conn/b/" in v2.location, v2.location
        # Through a (zone z1), no header: no node of z1 hosts it; a keeps the viewer and cascades from b.
        v3 = await post_offer(a, "whep", "gw")
        assert not re.search(r"/conn/[a-z]+/", v3.location), v3.location
        await wait_connected(v2, v3)
        await wait_frames(v3, 15, timeout=15)
        # A second publisher for gw, through c: proxied to b, which has one -> 409.
        await post_offer(c, "whip", "gw", expect=409)
        # Zone preference for a new room: a publisher through a asking for z2 lands on b or c.
        p2 = await post_offer(a, "whip", "gw2", zone="z2")
        assert p2.response.headers.get("x-sfumato-node") in ("b", "c", "d"), p2.response.headers
        # DELETE through the gateway reaches the owning node; a wrong token is refused there.
        assert await delete(v.location, token(a, "whep", "gw")) == 403
        assert await delete(v.location, v.token) == 200
        assert await delete(v.location, v.token) == 404
        wait_until(lambda: b.health()["viewers"] == 1, 5, "b to drop the deleted viewer")
        for p in (v2, v3, p2, pub):
            assert await delete(p.location, p.token) == 200
        for p in (v, v2, v3, p2, pub):
            await p.close()
        assert c.cluster()["signals_proxied"] >= 2 and b.cluster()["signals_served"] >= 4

    asyncio.run(run())


def test_h264_profile_travels_with_gossip_and_viewers_go_where_the_room_is(cluster):
    """An H.264 publisher on a (z1). The first viewer on d (z2) is answered with the publisher's one profile
    before d has seen a packet of the room: the profile came with a's gossip. Then a viewer through c (z2,
    no zone header) is placed on d, which already pulls the room, instead of staying on c."""
    a, c, d = cluster["a"], cluster["c"], cluster["d"]
    # A room whose z2 relay is d, so that d is the only z2 node pulling it.
    room = next(f"h264-{i}" for i in range(1000) if zone_relay(f"h264-{i}", "bcd") == "d")

    async def run():
        pub = await post_offer(a, "whip", room, video_codec="H264")
        await wait_connected(pub)
        offered = set(answer_h264_profiles(pub.pc.localDescription.sdp))
        wait_until(lambda: room in d.cluster()["h264_profiles"], 5, "d to learn the room's H.264 profile")
        profile = d.cluster()["h264_profiles"][room]
        assert profile in offered, (profile, offered)
        v1 = await post_offer(d, "whep", room)
        assert not re.search(r"/conn/[a-z]+/", v1.location), v1.location
        viewer_offered = answer_h264_profiles(v1.pc.localDescription.sdp)
        assert len(set(viewer_offered)) > 1, viewer_offered  # an echo would name several
        assert answer_h264_profiles(v1.response.text) == [profile], v1.response.text
        await wait_connected(v1)
        await wait_frames(v1, 15, timeout=15)
        wait_until(lambda: any(room in n["pulls"] for n in c.cluster()["nodes"] if n["id"] == "d"), 5,
                   "c to learn that d pulls the room")
        v2 = await post_offer(c, "whep", room)
        assert v2.response.headers.get("x-sfumato-node") == "d", (v2.response.headers, c.cluster()["nodes"])
        assert answer_h264_profiles(v2.response.text) == [profile], v2.response.text
        await wait_connected(v2)
        await wait_frames(v2, 15, timeout=15)
        assert d.health()["viewers"] == 2 and c.health()["sessions"] == 0
        for p in (v1, v2, pub):
            assert await delete(p.location, p.token) == 200
            await p.close()

    asyncio.run(run())


def test_wrong_secret_never_joins(cluster):
    a = cluster["a"]
    refused_before = a.cluster()["auth_refused"]
    x = new_node("x", "z1", [a.quic], secret="not-the-cluster-secret")
    x.start()
    try:
        x.wait_healthy()
        wait_until(lambda: a.cluster()["auth_refused"] > refused_before, 10, "a to refuse x")
        time.sleep(1.5)
        for n in cluster.values():
            assert n.status_of("x") is None, n.cluster()["nodes"]
            assert n.cluster()["links_up"] == 3
        assert x.cluster()["links_up"] == 0 and len(x.cluster()["nodes"]) == 1
        assert "cluster node refused" in a.log_text()
        assert "refused our proof" in x.log_text()
    finally:
        x.stop()
        if x.log_path:
            x.log_path.unlink(missing_ok=True)


def test_node_failures(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    # z2's relay for "fail" is b (b pulls from a, c from b): killing c leaves b's viewer alone.
    assert zone_relay("fail", "bcd") == "b"

    async def run():
        pub = await post_offer(a, "whip", "fail")
        await wait_connected(pub)
        vb = await post_offer(b, "whep", "fail")
        vc = await post_offer(c, "whep", "fail")
        await wait_connected(vb, vc)
        await wait_frames(vb, 10, 15)
        await wait_frames(vc, 10, 15)
        assert pulls_from(b, "fail") == "a" and pulls_from(c, "fail") == "b"

        # kill -9 the viewer node c: a and b drop it within ~5 s, b's viewer goes on.
        t0 = time.monotonic()
        c.kill9()
        for n in (a, b):
            wait_until(lambda: n.status_of("c") in ("dead", None), 7, f"{n.name} to declare c dead")
        took = time.monotonic() - t0
        print(f"c declared dead after {took:.1f}s")
        assert took < 6.5
        assert a.cluster()["links_up"] == 2 and "c" not in export_packets(a, "fail")
        await asyncio.sleep(1.0)
        assert vb.stats.video_fps(2.0) >= MIN_FPS, vb.stats.summary()
        await vc.close()

        # c restarts (new incarnation) and rejoins.
        rejoin(c, cluster)

        # kill -9 the publisher's node a: b's viewer stops...
        frames_before = vb.stats.video_frames
        a.kill9()
        await asyncio.sleep(1.5)
        assert vb.stats.video_fps(1.0) < 5, vb.stats.summary()
        for n in (b, c):
            wait_until(lambda: n.status_of("a") in ("dead", None), 7, f"{n.name} to declare a dead")
        wait_until(lambda: not b.cluster()["subscriptions"] or b.cluster()["subscriptions"][0]["from"] is None, 5,
                   "b to drop its subscription to a")
        await pub.close()
        # ...and gets video again once the publisher re-publishes, on c: b subscribes to c.
        pub2 = await post_offer(c, "whip", "fail")
        assert not re.search(r"/conn/[a-z]+/", pub2.location), pub2.location
        await wait_connected(pub2)
        await wait_frames(vb, frames_before + 30, 15)
        await asyncio.sleep(2.0)
        assert vb.stats.video_fps(2.0) >= MIN_FPS, vb.stats.summary()
        assert [s["from"] for s in b.cluster()["subscriptions"] if s["room"] == "fail"] == ["c"]
        for p in (vb, pub2):
            assert await delete(p.location, p.token) == 200
            await p.close()

    asyncio.run(run())
