"""Session/room events over NATS, against a real nats-server started here.

sfumato (conftest's `server`) runs with SFUMATO_NATS_URL=nats://127.0.0.1:<port>
(= --nats-url) and SFUMATO_NODE_ID; a raw-socket NATS
client (below, no extra Python packages) subscribes to `sfumato.events.>`.

- publish + play + DELETE produce room.created, peer.joined, track.started,
  peer.left, track.stopped, room.destroyed in order, each with node, room,
  session and ts_ms;
- session.stats arrives every 5 s for a live session with packets > 0;
- nats-server SIGKILLed mid-run: media keeps flowing to a viewer, sessions
  come and go, and after nats-server restarts on the same port the events
  emitted while it was down arrive.  That check reads a JetStream stream
  (file storage survives the restart) rather than a live subscription, so it
  does not depend on the test re-subscribing before sfumato reconnects.

Needs the `nats-server` binary (Debian: `apt-get install nats-server`, which
scripts/test.sh does); the test fails if it is missing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import httpx
import pytest

from conftest import free_tcp_port
from webrtc_clients import delete, play, publish, wait_sessions

NODE_ID = "e2e-node"
SUBJECTS = "sfumato.events.>"
SESSION_KINDS = {"peer.joined", "peer.left", "track.started", "track.stopped", "session.stats"}
ROOM_KINDS = {"room.created", "room.destroyed"}


# ------------------------------------------------------------ nats-server ---


def nats_server_binary() -> str:
    found = shutil.which("nats-server")
    if found:
        return found
    for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"):
        if os.access(p, os.X_OK):
            return p
    pytest.fail("nats-server not found: `apt-get install -y nats-server` (scripts/test.sh installs it)", pytrace=False)


class NatsProcess:
    """A nats-server on 127.0.0.1:port with JetStream (file store in a temp dir kept across restarts)."""

    def __init__(self, port: int, workdir: Path):
        self.port = port
        self.binary = nats_server_binary()
        self.store = workdir / "jetstream"
        self.log_path = workdir / "nats-server.log"
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "nats-server already running"
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        log = open(self.log_path, "ab")
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not accepting on {self.port} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"<no nats-server log: {e}>"


# ----------------------------------------------------------- NATS client ---


class NatsClient:
    """Minimal threaded NATS subscriber / requester over a raw socket."""

    INBOX_SID = 1

    def __init__(self, port: int, name: str = "sfumato-e2e"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.rfile = self.sock.makefile("rb")
        info = self.rfile.readline()
        assert info.startswith(b"INFO "), info
        self.inbox = f"_INBOX.e2e{os.getpid()}{id(self)}"
        connect = {"verbose": False, "pedantic": False, "name": name, "lang": "python", "version": "0", "protocol": 1}
        self.sock.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB {self.inbox}.* {self.INBOX_SID}\r\nPING\r\n".encode())
        line = self.rfile.readline()
        assert line == b"PONG\r\n", f"handshake: {line!r}"
        self.sock.settimeout(None)
        self.lock = threading.Condition()
        self.messages: list[tuple[str, dict, float]] = []  # (subject, json, time.time() on arrival)
        self.replies: dict[str, bytes] = {}
        self.errors: list[str] = []
        self.closed = False
        self._next_sid = 10
        self._next_req = 0
        self._wlock = threading.Lock()
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def _send(self, data: bytes) -> None:
        with self._wlock:
            self.sock.sendall(data)

    def _reader(self) -> None:
        try:
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                line = line.rstrip(b"\r\n")
                if line == b"PING":
                    self._send(b"PONG\r\n")
                elif line.startswith(b"MSG "):
                    parts = line.decode().split(" ")
                    subject, sid, n = parts[1], int(parts[2]), int(parts[-1])
                    data = self.rfile.read(n + 2)[:n]
                    with self.lock:
                        if sid == self.INBOX_SID:
                            self.replies[subject] = data
                        else:
                            self.messages.append((subject, json.loads(data), time.time()))
                        self.lock.notify_all()
                elif line.startswith(b"-ERR"):
                    self.errors.append(line.decode(errors="replace"))
        except (OSError, ValueError):
            pass
        finally:
            with self.lock:
                self.closed = True
                self.lock.notify_all()

    def subscribe(self, subject: str) -> None:
        self._next_sid += 1
        self._send(f"SUB {subject} {self._next_sid}\r\n".encode())
        self.flush()

    def flush(self, timeout: float = 5.0) -> None:
        """A round trip, so the server has processed everything sent so far."""
        self.request("$JS.API.INFO", b"", timeout)

    def request(self, subject: str, payload: bytes, timeout: float = 5.0) -> bytes:
        self._next_req += 1
        reply = f"{self.inbox}.{self._next_req}"
        self._send(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        with self.lock:
            if not self.lock.wait_for(lambda: reply in self.replies or self.closed, timeout):
                raise TimeoutError(f"no reply to {subject}")
            if reply not in self.replies:
                raise ConnectionError(f"connection closed waiting for a reply to {subject}")
            return self.replies.pop(reply)

    def js(self, api: str, body: dict) -> dict:
        r = json.loads(self.request(f"$JS.API.{api}", json.dumps(body).encode()))
        return r

    def events(self) -> list[dict]:
        with self.lock:
            out = []
            for subject, ev, _ in self.messages:
                assert subject == f"sfumato.events.{ev.get('kind')}", f"subject {subject} for {ev}"
                out.append(ev)
            return out

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def stream_events(client: NatsClient, stream: str) -> list[tuple[dict, float]]:
    """Every message of a JetStream stream in order: (event, server receive time as epoch seconds)."""
    info = client.js(f"STREAM.INFO.{stream}", {})
    assert "error" not in info, info
    out = []
    state = info["state"]
    for seq in range(state["first_seq"], state["last_seq"] + 1):
        r = client.js(f"STREAM.MSG.GET.{stream}", {"seq": seq})
        if "error" in r:  # deleted / limits: not expected, but not fatal here
            continue
        m = r["message"]
        ev = json.loads(base64.b64decode(m["data"]))
        assert m["subject"] == f"sfumato.events.{ev['kind']}", m
        out.append((ev, parse_rfc3339(m["time"])))
    return out


def parse_rfc3339(s: str) -> float:
    # 2026-11-23T21:43:45.673278048Z: Python wants at most 6 fractional digits
    m = re.match(r"(.*?T\d\d:\d\d:\d\d)(\.\d+)?Z$", s)
    assert m, s
    base = datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
    return base + (float(m.group(2)) if m.group(2) else 0.0)


# ----------------------------------------------------------------- fixtures ---


@pytest.fixture
def nats(tmp_path):
    n = NatsProcess(free_tcp_port(), tmp_path)
    n.start()
    yield n
    n.stop()


@pytest.fixture
def nats_env(nats, monkeypatch):
    """Points the next sfumato at `nats` (conftest's `server` passes the environment on)."""
    monkeypatch.setenv("SFUMATO_NATS_URL", f"nats://127.0.0.1:{nats.port}")
    monkeypatch.setenv("SFUMATO_NODE_ID", NODE_ID)
    return nats


@pytest.fixture
def evserver(request, nats_env, server):
    """conftest's sfumato `server`, started with --nats-url/--node-id (via SFUMATO_* env) for `nats`."""
    ev = health(server.base_url).get("events")
    if not isinstance(ev, dict) or "nats" not in ev:
        pytest.fail(f"sfumato reports no NATS events connector in /healthz (events={ev!r}); "
                    "does this build have --nats-url (SFUMATO_NATS_URL)?", pytrace=False)
    yield server
    if any(r.failed for r in getattr(request.node, "_sfumato_reports", {}).values()):
        print(f"nats-server log tail:\n{nats_env.log_tail()}")


# ------------------------------------------------------------------ helpers ---


async def until(pred: Callable[[], object], timeout: float, what: Callable[[], str] | str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(interval)


def health(base_url: str) -> dict:
    r = httpx.get(f"{base_url}/healthz", timeout=5)
    r.raise_for_status()
    return r.json()


def nats_counters(base_url: str) -> dict:
    """The connector's NATS counters from /healthz (`events.nats`)."""
    return health(base_url)["events"]["nats"]


def lifecycle(events: list[dict], room: str) -> list[dict]:
    """The room's events without session.stats, first occurrence only (delivery is at-least-once)."""
    seen, out = set(), []
    for e in events:
        if e.get("room") != room or e["kind"] == "session.stats":
            continue
        key = json.dumps(e, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def label(e: dict) -> str:
    d = e.get("data") or {}
    extra = d.get("role") or d.get("kind") or ""
    return f"{e['kind']}({extra})" if extra else e["kind"]


def check_fields(e: dict, room: str, t0_ms: int) -> None:
    now_ms = int(time.time() * 1000)
    assert e["node"] == NODE_ID, e
    assert e["room"] == room, e
    assert isinstance(e["ts_ms"], int) and t0_ms - 2000 <= e["ts_ms"] <= now_ms + 2000, e
    if e["kind"] in SESSION_KINDS:
        assert re.fullmatch(r"[0-9a-f]{16}", e.get("session") or ""), e
    else:
        assert e["kind"] in ROOM_KINDS, e
        assert "session" not in e, e


def assert_publisher_story(evs: list[dict], room: str, t0_ms: int, with_viewer: bool) -> tuple[str, Optional[str]]:
    """Checks the order publish [+ play + leave] + leave; returns (publisher session, viewer session)."""
    labels = [label(e) for e in evs]
    for e in evs:
        check_fields(e, room, t0_ms)
    av = {"track.started(audio)", "track.started(video)"}
    stopped = {"track.stopped(audio)", "track.stopped(video)"}
    expect = ["room.created", "peer.joined(publisher)", av]
    if with_viewer:
        expect += ["peer.joined(viewer)", "peer.left(viewer)"]
    expect += [stopped, "peer.left(publisher)", "room.destroyed"]
    # flatten, allowing the two track events of a pair in either order
    i = 0
    for want in expect:
        if isinstance(want, set):
            got = set(labels[i : i + 2])
            assert got == want, f"at {i}: want {sorted(want)}, got {labels}"
            i += 2
        else:
            assert i < len(labels) and labels[i] == want, f"at {i}: want {want}, got {labels}"
            i += 1
    assert i == len(labels), f"unexpected extra events: {labels[i:]} (all: {labels})"
    ts = [e["ts_ms"] for e in evs]
    assert ts == sorted(ts), f"timestamps go back: {list(zip(labels, ts))}"
    pub = evs[1]["session"]
    for e in evs:
        if e["kind"].startswith("track.") or (e.get("data") or {}).get("role") == "publisher":
            assert e["session"] == pub, e
    viewer = None
    if with_viewer:
        viewer = next(e["session"] for e in evs if label(e) == "peer.joined(viewer)")
        assert viewer != pub
        assert all(e["session"] == viewer for e in evs if (e.get("data") or {}).get("role") == "viewer")
    left = [e for e in evs if e["kind"] == "peer.left"]
    assert all(e["data"].get("reason") == "deleted" for e in left), left
    codecs = {e["data"]["kind"]: e["data"].get("codec", "") for e in evs if e["kind"] == "track.started"}
    assert "vp8" in codecs["video"].lower() and "opus" in codecs["audio"].lower(), codecs
    return pub, viewer


def has(events: list[dict], room: str, lab: str) -> bool:
    return any(e.get("room") == room and label(e) == lab for e in events)


# -------------------------------------------------------------------- tests ---


@pytest.mark.timeout(90)
def test_lifecycle_events_in_order(evserver, nats):
    sub = NatsClient(nats.port)
    sub.subscribe(SUBJECTS)

    async def run():
        room = "ev-lifecycle"
        t0_ms = int(time.time() * 1000)
        pub = await publish(evserver.base_url, room)
        await pub.wait_connected(10)
        # both tracks started before the viewer arrives, so the expected order is strict
        await until(lambda: has(sub.events(), room, "track.started(audio)") and has(sub.events(), room, "track.started(video)"),
                    10, lambda: f"track.started x2; got {[label(e) for e in sub.events()]}")
        viewer = await play(evserver.base_url, room)
        await viewer.wait_connected(10)
        await viewer.stats.wait_video_frames(5, timeout=10)
        await until(lambda: has(sub.events(), room, "peer.joined(viewer)"), 5, "peer.joined(viewer)")
        assert await delete(evserver.base_url, viewer.location) in (200, 204)
        await wait_sessions(evserver.base_url, 1)
        await until(lambda: has(sub.events(), room, "peer.left(viewer)"), 5, "peer.left(viewer)")
        assert await delete(evserver.base_url, pub.location) in (200, 204)
        await viewer.close()
        await pub.close()
        await wait_sessions(evserver.base_url, 0)
        await until(lambda: has(sub.events(), room, "room.destroyed"), 5,
                    lambda: f"room.destroyed; got {[label(e) for e in sub.events()]}")
        await asyncio.sleep(0.3)  # anything unexpected after room.destroyed would show up now
        evs = lifecycle(sub.events(), room)
        print("events:", [label(e) for e in evs])
        assert_publisher_story(evs, room, t0_ms, with_viewer=True)

    try:
        asyncio.run(run())
    finally:
        sub.close()
    assert not sub.errors, sub.errors


RTMP_PORT = free_tcp_port()


@pytest.mark.timeout(90)
@pytest.mark.server_args("--rtmp-port", str(RTMP_PORT))
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_rtmp_publisher_events(evserver, nats):
    """An RTMP publisher has the same story as a WebRTC one, with transport "rtmp"."""
    sub = NatsClient(nats.port)
    sub.subscribe(SUBJECTS)
    room = "ev-rtmp"
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
        "-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "30",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v", "baseline", "-bf", "0",
        "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
        "-c:a", "aac", "-ar", "44100", "-f", "flv", f"rtmp://127.0.0.1:{RTMP_PORT}/live/{room}",
    ]

    async def run():
        t0_ms = int(time.time() * 1000)
        ff = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            await until(lambda: has(sub.events(), room, "track.started(audio)") and has(sub.events(), room, "track.started(video)"),
                        15, lambda: f"track.started x2; got {[label(e) for e in sub.events()]}")
        finally:
            ff.terminate()  # ffmpeg unpublishes and closes
            ff.wait(timeout=10)
        await until(lambda: has(sub.events(), room, "room.destroyed"), 10,
                    lambda: f"room.destroyed; got {[label(e) for e in sub.events()]}")
        await asyncio.sleep(0.3)
        evs = lifecycle(sub.events(), room)
        labels = [label(e) for e in evs]
        print("events:", labels)
        for e in evs:
            check_fields(e, room, t0_ms)
        assert labels[:2] == ["room.created", "peer.joined(publisher)"], labels
        assert set(labels[2:4]) == {"track.started(audio)", "track.started(video)"}, labels
        assert set(labels[4:6]) == {"track.stopped(audio)", "track.stopped(video)"}, labels
        assert labels[6:] == ["peer.left(publisher)", "room.destroyed"], labels
        pub = evs[1]["session"]
        assert all(e["session"] == pub for e in evs[1:7]), evs
        assert all(e["data"]["transport"] == "rtmp" for e in evs[1:7]), evs
        codecs = {e["data"]["kind"]: e["data"]["codec"] for e in evs if e["kind"] == "track.started"}
        assert codecs == {"audio": "Opus", "video": "H264"}, codecs

    try:
        asyncio.run(run())
    finally:
        sub.close()
    assert not sub.errors, sub.errors


@pytest.mark.timeout(90)
def test_session_stats_every_5s(evserver, nats):
    sub = NatsClient(nats.port)
    sub.subscribe("sfumato.events.session.stats")

    async def run():
        room = "ev-stats"
        pub = await publish(evserver.base_url, room)
        await pub.wait_connected(10)
        viewer = await play(evserver.base_url, room)
        await viewer.wait_connected(10)
        await viewer.stats.wait_video_frames(5, timeout=10)
        # Media flows from here on: each core's next report (every 5 s) must show packets for both.
        t_flow = time.time()

        def live_stats():
            by_role = {}
            for subject, e, arrived in list(sub.messages):
                d = e.get("data") or {}
                if e.get("room") == room and arrived >= t_flow and d.get("packets", 0) > 0:
                    by_role.setdefault(d.get("role"), (e, arrived))
            return by_role if {"publisher", "viewer"} <= set(by_role) else None

        got = await until(live_stats, 6.5, lambda: f"session.stats with packets > 0 for publisher and viewer; got {sub.messages}")
        for role, (e, arrived) in got.items():
            d = e["data"]
            print(f"{role}: {d} (after {arrived - t_flow:.2f}s)")
            assert e["node"] == NODE_ID and re.fullmatch(r"[0-9a-f]{16}", e["session"]) and e["ts_ms"] > 0, e
            assert d["connected"] is True, e
            assert d["bytes"] > d["packets"] > 0, e
            assert d["packets_per_s"] > 0 and d["bitrate_bps"] > 0, e
        # and the next round ~5 s later
        n = len(sub.messages)
        await until(lambda: len(sub.messages) >= n + 2, 6.5, "a second round of session.stats")
        for s in (viewer, pub):
            assert await delete(evserver.base_url, s.location) in (200, 204)
            await s.close()
        await wait_sessions(evserver.base_url, 0)

    try:
        asyncio.run(run())
    finally:
        sub.close()


@pytest.mark.timeout(150)
def test_nats_restart_media_keeps_flowing_and_buffered_events_arrive(evserver, nats):
    admin = NatsClient(nats.port, name="e2e-admin")
    created = admin.js("STREAM.CREATE.EVENTS", {"name": "EVENTS", "subjects": [SUBJECTS], "storage": "file"})
    assert "error" not in created, created
    admin_alive = [admin]

    async def run():
        base = evserver.base_url
        t0_ms = int(time.time() * 1000)
        main_room, down_room = "ev-main", "ev-down"
        pub = await publish(base, main_room)
        await pub.wait_connected(10)

        def stored() -> list[dict]:
            return [e for e, _ in stream_events(admin_alive[0], "EVENTS")]

        await until(lambda: has(stored(), main_room, "track.started(audio)") and has(stored(), main_room, "track.started(video)"),
                    10, "main room track.started x2 in the stream")
        viewer = await play(base, main_room)
        await viewer.wait_connected(10)
        await viewer.stats.wait_video_frames(10, timeout=10)
        await until(lambda: has(stored(), main_room, "peer.joined(viewer)"), 5, "main room events in the stream")
        before = nats_counters(base)
        assert before["connected"] is True and before["dropped"] == 0 and before["published"] >= 5, before

        # ---- nats-server crashes ----
        admin_alive[0].close()
        nats.kill()
        t_kill = time.time()
        frames_at_kill = viewer.stats.video_frames
        await asyncio.sleep(0.5)
        rtp_before = health(base)["stats"]["rtp_packets_in"]
        # a whole publisher session comes and goes while NATS is down
        down_pub = await publish(base, down_room)
        await down_pub.wait_connected(10)
        # no events to watch now: give RTP a moment so both track.started precede the viewer's peer.joined
        await until(lambda: health(base)["stats"]["rtp_packets_in"] > rtp_before + 60, 5, "down-room RTP")
        await asyncio.sleep(0.3)
        down_viewer = await play(base, down_room)
        await down_viewer.wait_connected(10)
        await down_viewer.stats.wait_video_frames(5, timeout=10)
        assert await delete(base, down_viewer.location) in (200, 204)
        assert await delete(base, down_pub.location) in (200, 204)
        await down_viewer.close()
        await down_pub.close()
        await wait_sessions(base, 2)
        await asyncio.sleep(max(0.0, t_kill + 6.0 - time.time()))  # >= 6 s down: a stats round is buffered too
        during = nats_counters(base)
        assert during["connected"] is False and during["buffered"] >= 10, during  # the down room's 10 + stats
        t_down = time.time() - t_kill
        fps_down = (viewer.stats.video_frames - frames_at_kill) / t_down
        print(f"NATS down {t_down:.1f}s: viewer decoded {viewer.stats.video_frames - frames_at_kill} frames ({fps_down:.1f} fps); counters {during}")
        assert fps_down >= 20, f"media stalled while NATS was down: {fps_down:.1f} fps; {viewer.stats.summary()}"
        assert viewer.stats.max_video_gap(window=t_down) < 1.0, viewer.stats.summary()

        # ---- nats-server back on the same port (JetStream store kept) ----
        nats.start()
        t_restart = time.time()
        admin_alive[0] = NatsClient(nats.port, name="e2e-admin2")
        # sfumato's backoff is capped at 5 s
        await until(lambda: has(stored(), down_room, "room.destroyed"), 12,
                    lambda: f"{down_room} events after the restart; stream has {[label(e) for e in stored()][-20:]}")
        t_arrived = time.time()
        print(f"buffered events delivered {t_arrived - t_restart:.2f}s after the restart")
        msgs = stream_events(admin_alive[0], "EVENTS")
        down_evs = lifecycle([e for e, _ in msgs], down_room)
        print("down-room events:", [label(e) for e in down_evs])
        assert_publisher_story(down_evs, down_room, t0_ms, with_viewer=True)
        for e, received in msgs:
            if e.get("room") == down_room:
                # emitted while NATS was down, stored by the restarted server
                assert t_kill * 1000 - 50 <= e["ts_ms"] <= t_restart * 1000, (e, t_kill, t_restart)
                assert received >= t_restart - 1.0, (e, received, t_restart)
        stats_while_down = [e for e, _ in msgs if e["kind"] == "session.stats" and t_kill * 1000 < e["ts_ms"] < t_restart * 1000]
        assert stats_while_down, "the session.stats round emitted while NATS was down was not delivered"

        after = nats_counters(base)
        print("connector counters after the restart:", after)
        assert after["connected"] is True and after["reconnects"] >= 1 and after["dropped"] == 0, after
        assert after["published"] >= during["published"] + during["buffered"], (during, after)

        # live again: the main room's end arrives directly
        frames_before_end = viewer.stats.video_frames
        assert frames_before_end > frames_at_kill + 100, viewer.stats.summary()
        for s in (viewer, pub):
            assert await delete(base, s.location) in (200, 204)
            await s.close()
        await wait_sessions(base, 0)
        await until(lambda: has(stored(), main_room, "room.destroyed"), 5, "main room destroyed after the restart")
        main_evs = lifecycle(stored(), main_room)
        assert_publisher_story(main_evs, main_room, t0_ms, with_viewer=True)

    try:
        asyncio.run(run())
    finally:
        admin_alive[0].close()
