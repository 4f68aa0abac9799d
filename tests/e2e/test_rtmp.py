"""RTMP ingest: ffmpeg publishes H.264 + AAC over RTMP, an aiortc WHEP viewer watches (H.264 + Opus)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from conftest import free_tcp_port
from webrtc_clients import delete, healthz, play

RTMP_PORT = free_tcp_port()
MIN_FPS = 25.0  # ffmpeg sends 30 fps
RUN_SECONDS = 6.0
WINDOW = 4.0

pytestmark = [
    pytest.mark.server_args("--rtmp-port", str(RTMP_PORT)),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed"),
]


def ffmpeg_publish(room: str, *video_args: str, seconds: float = 30) -> subprocess.Popen:
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30",
        "-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds),
        "-c:v", "libx264", "-pix_fmt", "yuv420p", *video_args, "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
        "-c:a", "aac", "-ar", "44100",
        "-f", "flv", f"rtmp://127.0.0.1:{RTMP_PORT}/live/{room}",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.stdout.read() if proc.stdout else ""


async def wait_publishers(base_url: str, n: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = await healthz(base_url)
        if h["publishers"] == n:
            return h
        if time.monotonic() > deadline:
            raise TimeoutError(f"publishers={h['publishers']}, wanted {n}: {h['stats']}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
def test_rtmp_publish_whep_play(server):
    asyncio.run(_rtmp_publish_whep_play(server))


async def _rtmp_publish_whep_play(server):
    room = "rtmp-live"
    ff = ffmpeg_publish(room, "-profile:v", "baseline", "-bf", "0")
    viewer = None
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        viewer = await play(server.base_url, room)
        await viewer.stats.wait_video_frames(30, timeout=15)
        await viewer.stats.wait_audio_frames(25, timeout=10)
        await asyncio.sleep(RUN_SECONDS)
        end = time.monotonic()
        fps = viewer.stats.video_fps(WINDOW, end)
        info = f"fps={fps:.1f} audio_s={viewer.stats.audio_seconds(WINDOW, end):.2f}; {viewer.stats.summary()}"
        print(info)
        assert ff.poll() is None, f"ffmpeg ended early: {stop(ff)}"
        assert fps >= MIN_FPS, info
        assert viewer.stats.video_sizes == {(640, 360)}, info
        assert viewer.stats.audio_seconds(WINDOW, end) > 0.5 * WINDOW, info
        h = await healthz(server.base_url)
        assert h["stats"]["rtmp_sessions"] == 1, h["stats"]
        assert h["stats"]["rtmp_bytes_in"] > 100_000, h["stats"]
        assert h["publishers"] == 1
    finally:
        if viewer is not None:
            await delete(server.base_url, viewer.location)
            await viewer.close()
        out = stop(ff)
    # The publisher leaves with the connection.
    h = await wait_publishers(server.base_url, 0, timeout=5)
    assert h["stats"]["rtmp_rejected"] == 0, (h["stats"], out)


@pytest.mark.timeout(90)
def test_second_rtmp_publisher_refused(server):
    asyncio.run(_second_rtmp_publisher_refused(server))


async def _second_rtmp_publisher_refused(server):
    room = "rtmp-busy"
    first = ffmpeg_publish(room, "-profile:v", "baseline", "-bf", "0")
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        second = ffmpeg_publish(room, "-profile:v", "baseline", "-bf", "0")
        try:
            rc = await asyncio.to_thread(second.wait, 15)
        finally:
            out = stop(second)
        assert rc != 0, out
        h = await healthz(server.base_url)
        assert h["publishers"] == 1 and h["stats"]["rtmp_rejected"] >= 1, h["stats"]
        assert first.poll() is None, "the first publisher must keep publishing"
    finally:
        stop(first)


@pytest.mark.timeout(90)
def test_rtmp_b_frames_refused(server):
    asyncio.run(_rtmp_b_frames_refused(server))


async def _rtmp_b_frames_refused(server):
    ff = ffmpeg_publish("rtmp-bframes", "-profile:v", "main", "-bf", "2", seconds=20)
    try:
        rc = await asyncio.to_thread(ff.wait, 15)
    finally:
        out = stop(ff)
    assert rc != 0, f"ffmpeg should fail when the server closes the connection: {out}"
    h = await wait_publishers(server.base_url, 0, timeout=5)
    assert h["stats"]["rtmp_rejected"] >= 1, h["stats"]


@pytest.mark.timeout(90)
def test_rtmp_garbage_closed_server_keeps_serving(server):
    asyncio.run(_rtmp_garbage_closed_server_keeps_serving(server))


async def _rtmp_garbage_closed_server_keeps_serving(server):
    def garbage() -> bytes:
        with socket.create_connection(("127.0.0.1", RTMP_PORT), timeout=5) as s:
            s.sendall(b"\x07" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
            s.settimeout(10)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk

    for _ in range(3):
        await asyncio.to_thread(garbage)  # returns only when the server closed the connection
    h = await healthz(server.base_url)
    assert h["status"] == "ok"
    assert h["stats"]["rtmp_sessions"] == 0, h["stats"]
    # A real publisher still works after that.
    ff = ffmpeg_publish("rtmp-after-garbage", "-profile:v", "baseline", "-bf", "0")
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
    finally:
        stop(ff)


SECRET = "rtmp-e2e-secret"


@pytest.mark.timeout(90)
@pytest.mark.server_args("--rtmp-port", str(RTMP_PORT), "--secret", SECRET)
def test_rtmp_secure_mode_needs_rtmp_token(server):
    asyncio.run(_rtmp_secure_mode_needs_rtmp_token(server))


async def _rtmp_secure_mode_needs_rtmp_token(server):
    def issue(kind: str, room: str) -> str:
        r = httpx.post(f"{server.base_url}/token/{kind}", json={"room": room},
                       headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]["token"]

    # The bare room name and a WHIP token are refused.
    for key in ("rtmp-secure", issue("whip", "rtmp-secure")):
        ff = ffmpeg_publish(key, "-profile:v", "baseline", "-bf", "0", seconds=20)
        try:
            rc = await asyncio.to_thread(ff.wait, 15)
        finally:
            out = stop(ff)
        assert rc != 0, out
    h = await healthz(server.base_url)
    assert h["publishers"] == 0 and h["stats"]["rtmp_rejected"] == 2, h["stats"]
    # An rtmp token publishes to the room its claims name.
    ff = ffmpeg_publish(issue("rtmp", "rtmp-secure"), "-profile:v", "baseline", "-bf", "0")
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        assert "rtmp-secure" in server.log_text()
    finally:
        stop(ff)
