"""Session lifecycle: churn many sessions, and free sessions whose peer vanished."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webrtc_clients import delete, healthz, play, publish, wait_sessions

E2E_DIR = Path(__file__).resolve().parent
CHURN = int(os.environ.get("SFUMATO_CHURN", "200"))  # total sessions (publishers + viewers)
CHURN_CONCURRENCY = int(os.environ.get("SFUMATO_CHURN_CONCURRENCY", "4"))  # pairs in flight at once
# How long the server may take to notice a peer that went away without DELETE
# (ICE consent freshness, RFC 7675, gives up after 30 s).
VANISH_TIMEOUT = float(os.environ.get("SFUMATO_VANISH_TIMEOUT", "40"))


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


async def one_pair(base: str, room: str, want_frames: bool) -> None:
    """Publish + play in `room`, wait until connected (and optionally a decoded frame), DELETE both."""
    pub = viewer = None
    try:
        # small video keeps aiortc's encoder/decoder cheap; the server does not care
        pub = await publish(base, room, video_codec="VP8", width=160, height=96)
        viewer = await play(base, room)
        await asyncio.gather(pub.wait_connected(15), viewer.wait_connected(15))
        if want_frames:
            await viewer.stats.wait_video_frames(1, timeout=10)
        for s in (viewer, pub):
            status = await delete(base, s.location)
            assert status in (200, 204), f"DELETE {s.location} -> {status}"
    finally:
        for s in (viewer, pub):
            if s is not None:
                await s.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_churn_sessions_return_to_zero(server):
    pairs = max(1, CHURN // 2)

    async def run():
        base = server.base_url
        rss0 = rss_kib(server.proc.pid)
        t0 = time.monotonic()
        done = 0
        max_seen = 0
        while done < pairs:
            batch = min(CHURN_CONCURRENCY, pairs - done)
            # every 5th pair also proves media flows; the rest only need ICE+DTLS up
            await asyncio.gather(
                *(one_pair(base, f"churn-{(done + i) % 7}-{done + i}", want_frames=(done + i) % 5 == 0)
                  for i in range(batch))
            )
            done += batch
            h = await healthz(base)
            max_seen = max(max_seen, h.get("sessions", 0))
            if done % 20 == 0 or done == pairs:
                print(f"{done}/{pairs} pairs in {time.monotonic() - t0:.1f}s, health={h}")
        h = await wait_sessions(base, 0, timeout=15)
        rss1 = rss_kib(server.proc.pid)
        print(f"churned {2 * pairs} sessions in {time.monotonic() - t0:.1f}s; "
              f"server RSS {rss0} -> {rss1} KiB; final health {h}")
        assert server.proc.poll() is None

    asyncio.run(run())


def spawn_peer(server, mode: str, room: str, seconds: float = 120) -> subprocess.Popen:
    cmd = [sys.executable, str(E2E_DIR / "webrtc_clients.py"), mode, server.base_url, room,
           "--seconds", str(seconds), "--width", "320", "--height", "180"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float, pred=lambda line: True) -> str:
    """Read the peer's stdout until a line starting with `prefix` that satisfies `pred`
    (blocking reads; the peer prints every second and pytest-timeout bounds the rest)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if line.startswith(prefix) and pred(line):
            return line.strip()
    raise AssertionError(f"peer never printed {prefix!r}; output:\n" + "\n".join(seen[-50:]))


def has_video(line: str) -> bool:
    # "FRAMES video=N audio=M"
    return int(line.split("video=")[1].split()[0]) > 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_viewer_closed_without_delete_is_freed(server):
    """A viewer closes its RTCPeerConnection but never DELETEs: the server frees it by itself."""

    async def run():
        base = server.base_url
        pub = await publish(base, "nodelete", video_codec="VP8", width=320, height=180)
        viewer = await play(base, "nodelete")
        await asyncio.gather(pub.wait_connected(10), viewer.wait_connected(10))
        await viewer.stats.wait_video_frames(1, timeout=10)
        await wait_sessions(base, 2, timeout=5)
        t0 = time.monotonic()
        await viewer.close()  # DTLS close_notify, then silence; no DELETE
        await wait_sessions(base, 1, timeout=VANISH_TIMEOUT)
        print(f"viewer freed {time.monotonic() - t0:.1f}s after pc.close()")
        # the resource is gone too
        assert await delete(base, viewer.location) == 404
        assert await delete(base, pub.location) in (200, 204)
        await pub.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("role", ["viewer", "publisher"])
def test_killed_peer_is_freed(server, role):
    """A peer process is SIGKILLed (no DELETE, no DTLS close): ICE consent expiry frees its session."""
    room = f"killed-{role}"
    procs = []
    try:
        # the survivor runs in-process; the victim in a child process we can SIGKILL
        async def run():
            base = server.base_url
            if role == "viewer":
                survivor = await publish(base, room, video_codec="VP8", width=320, height=180)
                await survivor.wait_connected(10)
                victim = spawn_peer(server, "play", room)
                procs.append(victim)
                await asyncio.to_thread(wait_line, victim, "CONNECTED", 20)
                await asyncio.to_thread(wait_line, victim, "FRAMES", 10, has_video)
            else:
                victim = spawn_peer(server, "publish", room)
                procs.append(victim)
                await asyncio.to_thread(wait_line, victim, "CONNECTED", 20)
                survivor = await play(base, room)
                await survivor.wait_connected(10)
                await survivor.stats.wait_video_frames(1, timeout=10)
            await wait_sessions(base, 2, timeout=5)
            t0 = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            await wait_sessions(base, 1, timeout=VANISH_TIMEOUT)
            print(f"{role} freed {time.monotonic() - t0:.1f}s after SIGKILL")
            assert server.proc.poll() is None
            assert await delete(base, survivor.location) in (200, 204)
            await survivor.close()
            await wait_sessions(base, 0, timeout=10)

        asyncio.run(run())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
