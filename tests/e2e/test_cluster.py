"""Cluster (`sfumato media`): three real nodes on loopback, aiortc peers, QUIC links between the nodes.

One module-scoped cluster, secure mode (tokens from any node work on every node):
  a: zone z1 (the seed)      b, c: zone z2 (join through a)      `--cores 1` each, distinct ports
The tests run in file order and share it:
  1. cascading: publisher on a, 3 viewers on b, 1 on c; a sends one copy per subscribing node (not per viewer)
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
    for n in (b, c):
        n.start()
    for n in (b, c):
        n.wait_healthy()
    nodes = {"a": a, "b": b, "c": c}
    try:
        for n in nodes.values():
            wait_until(lambda: n.cluster()["links_up"] == 2 and n.cluster()["members_alive"] == 2, 10,
                       f"{n.name} linked to both others")
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


async def post_offer(node: Node, kind: str, room: str, *, zone: Optional[str] = None, expect: int = 201) -> Peer:
    """A WHIP (publish synthetic video + audio) or WHEP (receive, decode) aiortc peer through `node`."""
    pc = new_pc()
    stats, tasks = None, []
    if kind == "whip":
        vt = pc.addTransceiver(SyntheticVideoTrack(W, H, 30), direction="sendonly")
        vt.setCodecPreferences(codec_preferences("video", "VP8"))
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


# ------------------------------------------------------------------ tests ---


def test_cascade_one_copy_per_node(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]

    async def run():
        pub = await post_offer(a, "whip", "cast")
        assert "/conn/" in pub.location and "/conn/a/" not in pub.location, pub.location  # placed on a itself
        await wait_connected(pub)
        viewers_b = [await post_offer(b, "whep", "cast") for _ in range(3)]
        viewer_c = await post_offer(c, "whep", "cast")
        for v in viewers_b + [viewer_c]:
            assert not re.search(r"/conn/[a-z]+/", v.location), f"viewer placed elsewhere: {v.location}"
        await wait_connected(*viewers_b, viewer_c)
        for v in viewers_b + [viewer_c]:
            await wait_frames(v, 10, timeout=15)
        # Steady state, then count over a window.
        await asyncio.sleep(1.0)
        ha0, hb0, e0 = a.health(), b.health(), export_packets(a, "cast")
        await asyncio.sleep(4.0)
        ha1, hb1, e1 = a.health(), b.health(), export_packets(a, "cast")
        end = time.monotonic()
        for i, v in enumerate(viewers_b + [viewer_c]):
            fps, audio = v.stats.video_fps(3.0, end), v.stats.audio_frames
            print(f"viewer {i}: fps={fps:.1f} {v.stats.summary()}")
            assert fps >= MIN_FPS, v.stats.summary()
            assert audio > 50 and "audio" in v.stats.track_kinds, v.stats.summary()
        published = ha1["stats"]["rtp_packets_in"] - ha0["stats"]["rtp_packets_in"]
        sent = ha1["cluster"]["cascade_packets_out"] - ha0["cluster"]["cascade_packets_out"]
        per_node = {n: e1.get(n, 0) - e0.get(n, 0) for n in ("b", "c")}
        received_b = hb1["cluster"]["cascade_packets_in"] - hb0["cluster"]["cascade_packets_in"]
        forwarded_b = hb1["stats"]["rtp_packets_forwarded"] - hb0["stats"]["rtp_packets_forwarded"]
        print(f"publisher packets {published}, cascade out {sent} {per_node}, b in {received_b}, b forwarded {forwarded_b}")
        assert published > 300, published
        # One copy per subscribing node (2), not per viewer (4).
        assert 1.9 * published <= sent <= 2.1 * published, (published, sent)
        for n, k in per_node.items():
            assert 0.85 * published <= k <= 1.15 * published, (n, k, published)
        assert 0.9 * published <= received_b <= 1.1 * published
        # b fans its one stream out to its three viewers.
        assert 2.7 * published <= forwarded_b <= 3.3 * published, (forwarded_b, published)
        sub = [s for s in hb1["cluster"]["subscriptions"] if s["room"] == "cast"]
        assert sub == [{"room": "cast", "from": "a"}], hb1["cluster"]["subscriptions"]
        metrics = httpx.get(f"{a.url}/metrics", timeout=5).text
        for line in ("sfumato_cluster_links_up 2", "sfumato_cluster_members 2", "sfumato_cascade_packets_out_total ",
                     'sfumato_cascade_export_packets_total{room="cast",node="b"}'):
            assert line in metrics, line
        # The last viewer of a node leaving ends that node's subscription.
        assert await delete(viewer_c.location, viewer_c.token) == 200
        await viewer_c.close()
        wait_until(lambda: "c" not in export_packets(a, "cast"), 5, "a to stop exporting to c")
        assert export_packets(a, "cast").keys() == {"b"}
        for v in viewers_b:
            assert await delete(v.location, v.token) == 200
            await v.close()
        assert await delete(pub.location, pub.token) == 200
        await pub.close()
        wait_until(lambda: not a.cluster()["exports"] and not b.cluster()["subscriptions"], 5, "cascade torn down")

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
        assert p2.response.headers.get("x-sfumato-node") in ("b", "c"), p2.response.headers
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


def test_wrong_secret_never_joins(cluster):
    a = cluster["a"]
    refused_before = a.cluster()["auth_refused"]
    d = new_node("d", "z1", [a.quic], secret="not-the-cluster-secret")
    d.start()
    try:
        d.wait_healthy()
        wait_until(lambda: a.cluster()["auth_refused"] > refused_before, 10, "a to refuse d")
        time.sleep(1.5)
        for n in cluster.values():
            assert n.status_of("d") is None, n.cluster()["nodes"]
            assert n.cluster()["links_up"] == 2
        assert d.cluster()["links_up"] == 0 and len(d.cluster()["nodes"]) == 1
        assert "cluster node refused" in a.log_text()
        assert "refused our proof" in d.log_text()
    finally:
        d.stop()
        if d.log_path:
            d.log_path.unlink(missing_ok=True)


def test_node_failures(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]

    async def run():
        pub = await post_offer(a, "whip", "fail")
        await wait_connected(pub)
        vb = await post_offer(b, "whep", "fail")
        vc = await post_offer(c, "whep", "fail")
        await wait_connected(vb, vc)
        await wait_frames(vb, 10, 15)
        await wait_frames(vc, 10, 15)

        # kill -9 the viewer node c: a and b drop it within ~5 s, b's viewer goes on.
        t0 = time.monotonic()
        c.kill9()
        for n in (a, b):
            wait_until(lambda: n.status_of("c") in ("dead", None), 7, f"{n.name} to declare c dead")
        took = time.monotonic() - t0
        print(f"c declared dead after {took:.1f}s")
        assert took < 6.5
        assert a.cluster()["links_up"] == 1 and "c" not in export_packets(a, "fail")
        await asyncio.sleep(1.0)
        assert vb.stats.video_fps(2.0) >= MIN_FPS, vb.stats.summary()
        await vc.close()

        # c restarts (new incarnation) and rejoins.
        c.start()
        c.wait_healthy()
        wait_until(lambda: a.status_of("c") == "alive" and b.status_of("c") == "alive" and c.cluster()["links_up"] == 2,
                   10, "c to rejoin")

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
