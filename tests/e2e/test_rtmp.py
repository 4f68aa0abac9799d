"""RTMP ingest: ffmpeg (and GStreamer) publish H.264 + AAC over RTMP, an aiortc WHEP viewer watches (H.264 + Opus).

Also: the GOP cache (a viewer joining mid-GOP starts at once), publisher reconnect and `--rtmp-replace`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from conftest import free_tcp_port
from h264 import PROFILE_ARGS, answer_h264_profiles, x264_profile_level_id
from webrtc_clients import WhipError, delete, healthz, media_codecs, play

RTMP_PORT = free_tcp_port()
MIN_FPS = 25.0  # ffmpeg sends 30 fps
RUN_SECONDS = 6.0
WINDOW = 4.0

pytestmark = [
    pytest.mark.server_args("--rtmp-port", str(RTMP_PORT)),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed"),
]


def ffmpeg_publish(room: str, *video_args: str, seconds: float = 30, gop: int = 30) -> subprocess.Popen:
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30",
        "-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds),
        "-c:v", "libx264", "-pix_fmt", "yuv420p", *video_args, "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(gop),
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
        await asyncio.sleep(0.5)  # the AVC sequence header and first frames have reached the room
        viewer = await play(server.base_url, room)
        # The answer names the stream's own profile-level-id (libx264 baseline: Constrained Baseline, 42c0xx),
        # not the aiortc offer's 42001f/42e01f.
        sps = x264_profile_level_id(*PROFILE_ARGS["baseline"])
        assert answer_h264_profiles(viewer.answer) == [sps], (sps, viewer.answer)
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


@pytest.mark.timeout(60)
def test_rtmp_main_profile_not_offered_to_baseline_only_viewers(server):
    """A Main-profile stream (no B-frames). aiortc offers H264 only as Baseline/Constrained Baseline: its answer
    has no H264 (RFC 6184: profiles must match; it keeps VP8 for a later publisher) and it gets audio. An offer
    with H264 as its only video codec and no audio is refused with the stream's profile-level-id in the reason."""
    asyncio.run(_main_profile_not_offered(server))


async def _main_profile_not_offered(server):
    room = "rtmp-main-profile"
    args = PROFILE_ARGS["main"]
    sps = x264_profile_level_id(*args)
    assert sps.startswith("4d"), sps
    ff = ffmpeg_publish(room, *args)
    viewer = None
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        await asyncio.sleep(0.5)  # the AVC sequence header and first frames have reached the room
        viewer = await play(server.base_url, room)
        assert answer_h264_profiles(viewer.answer) == [], viewer.answer
        answered = media_codecs(viewer.answer, "video")
        assert "H264" in media_codecs(viewer.offer, "video") and "H264" not in answered and "VP8" in answered, viewer.answer
        await viewer.stats.wait_audio_frames(25, timeout=10)
        assert viewer.stats.video_frames == 0, viewer.stats.summary()
        with pytest.raises(WhipError) as e:
            await play(server.base_url, room, audio=False, video_codec="H264")
        assert e.value.status == 400 and sps in e.value.body, e.value.body
    finally:
        if viewer is not None:
            await delete(server.base_url, viewer.location)
            await viewer.close()
        stop(ff)


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


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout.find("libmp3lame") < 0
    if shutil.which("ffmpeg") else True,
    reason="ffmpeg without libmp3lame",
)
def test_rtmp_mp3_audio_refused_with_reason(server):
    """H.264 + MP3 (not AAC): the server closes the publish, counts it and logs why."""
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
        "-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "20",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v", "baseline", "-bf", "0", "-preset", "ultrafast",
        "-g", "30", "-c:a", "libmp3lame", "-ar", "44100",
        "-f", "flv", f"rtmp://127.0.0.1:{RTMP_PORT}/live/rtmp-mp3",
    ]
    ff = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        rc = ff.wait(15)
    finally:
        out = stop(ff)
    assert rc != 0, f"ffmpeg should fail when the server closes the connection: {out}"
    h = httpx.get(f"{server.base_url}/healthz", timeout=5).json()
    assert h["publishers"] == 0 and h["stats"]["rtmp_rejected"] >= 1, h["stats"]
    log = server.log_path.read_text()
    assert "only AAC is supported" in log, log[-2000:]


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
    assert h["stats"]["rtmp_rejected"] >= 3, h["stats"]  # each garbage connection closed and counted
    # A real publisher still works after that.
    ff = ffmpeg_publish("rtmp-after-garbage", "-profile:v", "baseline", "-bf", "0")
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
    finally:
        stop(ff)


@pytest.mark.timeout(90)
def test_rtmp_slowloris_closed_while_a_publisher_streams(server):
    asyncio.run(_rtmp_slowloris_closed_while_a_publisher_streams(server))


async def _rtmp_slowloris_closed_while_a_publisher_streams(server):
    """Connections that dribble a handshake byte by byte (and ones that send nothing) are closed ~10 s after
    they connect (no publish request in time); a real publisher's viewer keeps its frame rate meanwhile."""

    def slowloris(dribble: bool) -> float:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", RTMP_PORT), timeout=5) as s:
            s.settimeout(0.5)
            handshake = b"\x03" + bytes(1536)
            for i in range(60):  # never more than 60 s
                try:
                    if dribble and i < len(handshake):
                        s.sendall(handshake[i : i + 1])
                    if s.recv(65536) == b"":
                        return time.monotonic() - t0  # closed by the server
                except socket.timeout:
                    continue
                except OSError:  # reset by the server
                    return time.monotonic() - t0
        return float("inf")

    ff = ffmpeg_publish("rtmp-slowloris", "-profile:v", "baseline", "-bf", "0")
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        viewer = await play(server.base_url, "rtmp-slowloris", video_codec="H264")
        try:
            await viewer.wait_connected(10)
            await viewer.stats.wait_video_frames(10, timeout=15)
            slow = [asyncio.to_thread(slowloris, d) for d in (True, True, False, False)]
            n0 = viewer.stats.video_frames
            t0 = time.monotonic()
            closed_after = await asyncio.gather(*slow)
            fps = (viewer.stats.video_frames - n0) / (time.monotonic() - t0)
            print(f"slow connections closed after {closed_after} s; viewer {fps:.1f} fps meanwhile")
            assert all(8 <= t <= 20 for t in closed_after), closed_after
            assert fps >= MIN_FPS, viewer.stats.summary()
            h = await healthz(server.base_url)
            assert h["stats"]["rtmp_sessions"] == 1, h["stats"]  # only the real publisher is left
            assert h["stats"]["rtmp_rejected"] >= 4, h["stats"]  # each closed with a reason and counted
            await delete(server.base_url, viewer.location)
        finally:
            await viewer.close()
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


BASELINE = ("-profile:v", "baseline", "-bf", "0")


def median(xs: list) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


@pytest.mark.timeout(120)
def test_rtmp_gop_cache_instant_start(server):
    asyncio.run(_rtmp_gop_cache_instant_start(server))


async def _rtmp_gop_cache_instant_start(server):
    """-g 250 at 30 fps: keyframes 8.3 s apart. Viewers joining 2-6 s into a GOP start from the cached GOP
    at once instead of waiting for the next keyframe; then they play live with no duplicate or gap."""
    room = "rtmp-gop"
    ff = ffmpeg_publish(room, *BASELINE, gop=250, seconds=40)
    viewers = []
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        await asyncio.sleep(2.0)  # well into the first GOP
        post_to_key, post_to_frame, connected_to_key = [], [], []
        for _ in range(5):
            v = await play(server.base_url, room)
            viewers.append(v)
            await v.stats.wait_video_frames(1, timeout=3)  # the next keyframe is > 2 s away
            s = v.stats
            assert s.first_keyframe_rtp is not None and s.first_video_rtp == s.first_keyframe_rtp, s.summary()
            post_to_key.append((s.first_keyframe_rtp - s.post_time) * 1000)
            post_to_frame.append((s.video_times[0] - s.post_time) * 1000)
            if s.connected_time is not None:
                connected_to_key.append((s.first_keyframe_rtp - s.connected_time) * 1000)
            await asyncio.sleep(0.5)
        print(f"WHEP POST -> first keyframe packet (ms): {[round(x, 1) for x in post_to_key]} median {median(post_to_key):.1f}; "
              f"-> first decoded frame: median {median(post_to_frame):.1f}; "
              f"client 'connected' -> first keyframe packet: {[round(x, 1) for x in connected_to_key]}; load {os.getloadavg()}")
        # After the replay the viewers play live: 30 fps, timestamps only forward.
        await asyncio.sleep(3.0)
        end = time.monotonic()
        for v in viewers:
            info = v.stats.summary()
            assert v.stats.video_fps(2.0, end) >= MIN_FPS, info
            assert v.stats.video_pts_regressions == 0, info
            assert v.stats.max_video_gap(2.0, end) < 0.5, info
            # The first viewer joined ~60 frames into the GOP: they were all replayed and decoded.
            assert v.stats.video_frames >= 60 + 2.5 * MIN_FPS, info
        h = await healthz(server.base_url)
        assert h["stats"]["rtmp_gop_replays"] >= 5, h["stats"]
        assert h["stats"]["rtmp_gop_replay_packets"] > 0, h["stats"]
        assert median(post_to_key) < 1000, post_to_key
    finally:
        for v in viewers:
            await delete(server.base_url, v.location)
            await v.close()
        stop(ff)


@pytest.mark.timeout(120)
def test_rtmp_publisher_reconnect_viewer_resumes(server):
    asyncio.run(_rtmp_publisher_reconnect_viewer_resumes(server))


async def _rtmp_publisher_reconnect_viewer_resumes(server):
    room = "rtmp-reconnect"
    first = ffmpeg_publish(room, *BASELINE)
    second = None
    viewer = None
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        viewer = await play(server.base_url, room)
        await viewer.stats.wait_video_frames(30, timeout=15)
        first.kill()  # no unpublish: the server notices the closed connection
        first.wait(timeout=5)
        await wait_publishers(server.base_url, 0, timeout=10)
        before = viewer.stats.video_frames
        second = ffmpeg_publish(room, *BASELINE)
        await wait_publishers(server.base_url, 1, timeout=10)
        await viewer.stats.wait_video_frames(before + 60, timeout=15)
        end = time.monotonic()
        info = viewer.stats.summary()
        print(f"after reconnect: {info}")
        assert viewer.pc.connectionState == "connected", info
        assert viewer.stats.video_fps(1.5, end) >= MIN_FPS, info
        assert viewer.stats.video_pts_regressions == 0, info  # timestamps continue forward across publishers
        assert "audio" not in viewer.stats.ended and "video" not in viewer.stats.ended, info
        await viewer.stats.wait_audio_frames(viewer.stats.audio_frames + 25, timeout=5)
    finally:
        if viewer is not None:
            await delete(server.base_url, viewer.location)
            await viewer.close()
        stop(first)
        if second is not None:
            stop(second)


@pytest.mark.timeout(120)
@pytest.mark.server_args("--rtmp-port", str(RTMP_PORT), "--rtmp-replace")
def test_rtmp_replace_takes_over(server):
    asyncio.run(_rtmp_replace_takes_over(server))


async def _rtmp_replace_takes_over(server):
    room = "rtmp-replace"
    first = ffmpeg_publish(room, *BASELINE)
    second = None
    viewer = None
    try:
        await wait_publishers(server.base_url, 1, timeout=10)
        viewer = await play(server.base_url, room)
        await viewer.stats.wait_video_frames(30, timeout=15)
        second = ffmpeg_publish(room, *BASELINE)
        # The first connection is closed by the server: ffmpeg ends with an error.
        rc = await asyncio.to_thread(first.wait, 15)
        out = stop(first)
        assert rc != 0, out
        before = viewer.stats.video_frames
        await viewer.stats.wait_video_frames(before + 60, timeout=15)
        assert second.poll() is None, stop(second)
        h = await healthz(server.base_url)
        assert h["publishers"] == 1 and h["stats"]["rtmp_replaced"] == 1, h["stats"]
        assert h["stats"]["rtmp_sessions"] == 1, h["stats"]
        assert viewer.stats.video_pts_regressions == 0, viewer.stats.summary()
        assert "replaced by a new publisher" in server.log_text()
    finally:
        if viewer is not None:
            await delete(server.base_url, viewer.location)
            await viewer.close()
        stop(first)
        if second is not None:
            stop(second)


def gst_publish(room: str, seconds: float = 30) -> subprocess.Popen:
    """GStreamer: videotestsrc -> x264 (no B-frames) + audiotestsrc -> AAC (voaacenc), flvmux ! rtmp2sink."""
    frames = int(seconds * 30)
    pipeline = (
        f"videotestsrc is-live=true num-buffers={frames} ! video/x-raw,width=640,height=360,framerate=30/1 "
        "! x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast "
        "! video/x-h264,profile=constrained-baseline ! h264parse ! queue ! flvmux name=m streamable=true "
        f"! rtmp2sink location=rtmp://127.0.0.1:{RTMP_PORT}/live/{room} "
        "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=44100,channels=2 ! audioconvert "
        "! voaacenc bitrate=128000 ! aacparse ! queue ! m."
    )
    cmd = ["gst-launch-1.0", "-q", "-e", *pipeline.split()]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="gstreamer1.0-tools not installed (scripts/test.sh installs it)")
def test_gstreamer_rtmp_publish_whep_play(server):
    asyncio.run(_gstreamer_rtmp_publish_whep_play(server))


async def _gstreamer_rtmp_publish_whep_play(server):
    room = "rtmp-gst"
    gst = gst_publish(room)
    viewer = None
    try:
        try:
            await wait_publishers(server.base_url, 1, timeout=10)
        except TimeoutError:
            raise AssertionError(f"GStreamer did not publish: {stop(gst)}") from None
        viewer = await play(server.base_url, room)
        await viewer.stats.wait_video_frames(30, timeout=15)
        await viewer.stats.wait_audio_frames(25, timeout=10)
        await asyncio.sleep(4.0)
        end = time.monotonic()
        info = f"fps={viewer.stats.video_fps(3.0, end):.1f} {viewer.stats.summary()}"
        print(info)
        assert gst.poll() is None, f"gst-launch ended early: {stop(gst)}"
        assert viewer.stats.video_fps(3.0, end) >= MIN_FPS, info
        assert viewer.stats.video_sizes == {(640, 360)}, info
        assert viewer.stats.audio_seconds(3.0, end) > 1.5, info
        h = await healthz(server.base_url)
        assert h["stats"]["rtmp_rejected"] == 0, h["stats"]
    finally:
        if viewer is not None:
            await delete(server.base_url, viewer.location)
            await viewer.close()
        stop(gst)
