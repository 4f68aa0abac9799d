"""Reusable aiortc WHIP/WHEP clients for sfumato's end-to-end tests.

The peers here are aiortc (a third-party WebRTC stack), so passing tests mean
the server interoperates with software nobody on the project wrote.

    pub = await publish(base_url, "room1", video_codec="H264")
    pc, location = pub                      # unpacks like a (pc, location) tuple
    viewer = await play(base_url, "room1")
    await viewer.stats.wait_video_frames(1, timeout=10)
    print(viewer.stats.video_fps(window=4.0))
    await delete(base_url, viewer.location); await viewer.close()

Also usable as a script, e.g. to run a peer in a separate process that a test
can SIGKILL (a crashed browser tab that never says goodbye):

    python webrtc_clients.py play http://127.0.0.1:8080 room1 --seconds 60
    python webrtc_clients.py publish http://127.0.0.1:8080 room1 --codec VP8

It prints `CONNECTED <location>` once the peer connection is up, then for
`play` one `FRAMES video=N audio=M` line per second.

Gotchas (see also /work/shared/design/REAL-CLIENTS.md):
- aioice never offers 127.0.0.1 as a host candidate; on a machine without a
  routable address it would then offer nothing at all.  Importing this module
  patches aioice so that every peer offers exactly 127.0.0.1 (the server is on
  this machine).
- aiortc's default configuration uses a public STUN server (Google's); every
  peer here is made by new_pc(), which sets no ICE servers.
- aiortc gathers all ICE candidates inside setLocalDescription(), so the offer
  we POST already carries them (no trickle needed).
- aiortc decodes Opus to 20 ms frames (960 samples, 48 kHz, stereo s16).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urljoin

import aioice.ice
import av
import httpx
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)

# --- aioice: offer the loopback address (it deliberately skips 127.0.0.1) ---
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]

def new_pc() -> RTCPeerConnection:
    """An RTCPeerConnection with no ICE servers.

    aiortc's default configuration adds stun:stun.l.google.com:19302; tests
    must only ever send traffic to this machine, so always use this.
    """
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


SDP_CT = "application/sdp"
TRICKLE_CT = "application/trickle-ice-sdpfrag"
HTTP_TIMEOUT = httpx.Timeout(10.0)


# ---------------------------------------------------------------- sources ---


class SyntheticVideoTrack(VideoStreamTrack):
    """yuv420p frames with a textured pattern that scrolls every frame.

    Made without numpy: a random block texture wider than the frame is built
    once and each frame is a horizontal window into it, so the encoder sees
    real detail and real motion (not a static or flat image).
    """

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30, seed: int = 1):
        super().__init__()
        assert width % 2 == 0 and height % 2 == 0
        self.width, self.height, self.fps = width, height, fps
        self.frames_sent = 0
        self._period = 512
        self._step = 4  # pixels of motion per frame
        rng = random.Random(seed)
        block = 32
        tex_w = width + self._period
        rows = []
        for by in range(0, height, block):
            # one row of block values, expanded to pixels
            vals = [rng.randrange(16, 236) for _ in range(tex_w // block + 1)]
            line = bytes(v for v in vals for _ in range(block))[:tex_w]
            # give each block row a little vertical gradient so it is not flat
            for y in range(by, min(by + block, height)):
                shade = (y - by) * 2
                rows.append(bytes(min(b + shade, 239) for b in line))
        self._rows = rows
        self._start_time: Optional[float] = None
        self._ts = 0
        self._clock = 90000

    async def _next_pts(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_time is None:
            self._start_time = time.time()
            self._ts = 0
        else:
            self._ts += self._clock // self.fps
            wait = self._start_time + self._ts / self._clock - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        return self._ts

    async def recv(self) -> av.VideoFrame:
        pts = await self._next_pts()
        n = self.frames_sent
        self.frames_sent += 1
        off = (n * self._step) % self._period
        w, h = self.width, self.height
        frame = av.VideoFrame(w, h, "yuv420p")
        y_plane, u_plane, v_plane = frame.planes
        ls = y_plane.line_size
        pad = bytes(ls - w)
        y_plane.update(b"".join(r[off : off + w] + pad for r in self._rows))
        # chroma slowly cycles so colour changes too
        u = 128 + int(60 * math.sin(n / 45.0))
        v = 128 + int(60 * math.cos(n / 60.0))
        u_plane.update(bytes([u]) * u_plane.buffer_size)
        v_plane.update(bytes([v]) * v_plane.buffer_size)
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, self._clock)
        return frame


class SineAudioTrack(AudioStreamTrack):
    """48 kHz mono s16 sine tone in 20 ms (960-sample) frames."""

    SAMPLE_RATE = 48000
    SAMPLES = 960

    def __init__(self, freq: int = 440):
        super().__init__()
        # 1 s of tone holds an integer number of cycles for an integer freq,
        # and 48000 / 960 = 50 frames, so precompute and cycle through them.
        pcm = struct.pack(
            "<%dh" % self.SAMPLE_RATE,
            *(int(8000 * math.sin(2 * math.pi * freq * i / self.SAMPLE_RATE)) for i in range(self.SAMPLE_RATE)),
        )
        step = self.SAMPLES * 2
        self._chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        self.frames_sent = 0
        self._start_time: Optional[float] = None
        self._ts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_time is None:
            self._start_time = time.time()
            self._ts = 0
        else:
            self._ts += self.SAMPLES
            wait = self._start_time + self._ts / self.SAMPLE_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(self._chunks[self.frames_sent % len(self._chunks)])
        self.frames_sent += 1
        frame.pts = self._ts
        frame.sample_rate = self.SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, self.SAMPLE_RATE)
        return frame


# ------------------------------------------------------------------ stats ---


@dataclass
class PlayStats:
    """What a viewer decoded, with arrival times (time.monotonic())."""

    video_times: list = field(default_factory=list)
    audio_times: list = field(default_factory=list)
    audio_durations: list = field(default_factory=list)  # seconds per decoded audio frame
    video_sizes: set = field(default_factory=set)
    audio_formats: set = field(default_factory=set)  # (sample_rate, samples, layout)
    track_kinds: list = field(default_factory=list)
    video_pts_regressions: int = 0
    _last_video_pts: Optional[int] = None
    ended: list = field(default_factory=list)
    # time.monotonic() of: the WHEP POST, the first video RTP packet, the first H.264 keyframe start packet
    post_time: Optional[float] = None
    first_video_rtp: Optional[float] = None
    first_keyframe_rtp: Optional[float] = None
    connected_time: Optional[float] = None  # connectionState became "connected" (ICE + DTLS done)

    @property
    def video_frames(self) -> int:
        return len(self.video_times)

    @property
    def audio_frames(self) -> int:
        return len(self.audio_times)

    def video_fps(self, window: float, end: Optional[float] = None) -> float:
        """Decoded video frames per second over the `window` seconds before `end` (default now)."""
        end = time.monotonic() if end is None else end
        start = end - window
        return sum(1 for t in self.video_times if start <= t <= end) / window

    def audio_seconds(self, window: float, end: Optional[float] = None) -> float:
        """Seconds of decoded audio that arrived in the window."""
        end = time.monotonic() if end is None else end
        start = end - window
        return sum(d for t, d in zip(self.audio_times, self.audio_durations) if start <= t <= end)

    def audio_ratio(self, window: float, end: Optional[float] = None) -> float:
        """Decoded audio duration / wall time over the window (1.0 = continuous)."""
        return self.audio_seconds(window, end) / window

    def max_video_gap(self, window: float, end: Optional[float] = None) -> float:
        end = time.monotonic() if end is None else end
        ts = [t for t in self.video_times if end - window <= t <= end]
        if len(ts) < 2:
            return window
        return max(b - a for a, b in zip(ts, ts[1:]))

    def summary(self) -> str:
        return (
            f"video={self.video_frames} frames sizes={sorted(self.video_sizes)} "
            f"audio={self.audio_frames} frames formats={sorted(self.audio_formats)} "
            f"tracks={self.track_kinds} pts_regressions={self.video_pts_regressions}"
        )

    async def wait_video_frames(self, n: int, timeout: float) -> None:
        await _wait_for(lambda: self.video_frames >= n, timeout, lambda: f"waiting for {n} video frames: {self.summary()}")

    async def wait_audio_frames(self, n: int, timeout: float) -> None:
        await _wait_for(lambda: self.audio_frames >= n, timeout, lambda: f"waiting for {n} audio frames: {self.summary()}")


async def _wait_for(pred, timeout: float, what, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s {what() if callable(what) else what}")
        await asyncio.sleep(interval)


async def _consume(track: MediaStreamTrack, stats: PlayStats) -> None:
    kind = track.kind
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            stats.ended.append(kind)
            return
        now = time.monotonic()
        if kind == "video":
            stats.video_times.append(now)
            stats.video_sizes.add((frame.width, frame.height))
            if frame.pts is not None:
                if stats._last_video_pts is not None and frame.pts <= stats._last_video_pts:
                    stats.video_pts_regressions += 1
                stats._last_video_pts = frame.pts
        else:
            stats.audio_times.append(now)
            stats.audio_durations.append(frame.samples / frame.sample_rate)
            stats.audio_formats.add((frame.sample_rate, frame.samples, frame.layout.name))


# ---------------------------------------------------------------- clients ---


class WhipError(Exception):
    def __init__(self, status: int, body: str, url: str):
        super().__init__(f"POST {url} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass
class Session:
    """One WHIP/WHEP session. Unpacks as (pc, location)."""

    pc: RTCPeerConnection
    location: str  # absolute URL of the resource
    answer: str  # SDP answer from the server
    offer: str  # SDP offer we sent
    stats: Optional[PlayStats] = None  # viewers only
    tracks: list = field(default_factory=list)  # our local source tracks (publishers)
    tasks: list = field(default_factory=list)

    def __iter__(self):
        return iter((self.pc, self.location))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await wait_connected(self.pc, timeout)

    async def close(self) -> None:
        """Close the peer connection (does not DELETE the resource)."""
        await self.pc.close()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass


async def wait_connected(pc: RTCPeerConnection, timeout: float = 10.0) -> None:
    await _wait_for(
        lambda: pc.connectionState == "connected" or pc.connectionState in ("failed", "closed"),
        timeout,
        lambda: f"for connectionState=connected (ice={pc.iceConnectionState}, conn={pc.connectionState})",
    )
    if pc.connectionState != "connected":
        raise ConnectionError(f"peer connection {pc.connectionState} (ice={pc.iceConnectionState})")


def codec_preferences(kind: str, name: str, rtx: bool = True) -> list:
    """Capabilities of `kind` whose MIME subtype is `name` (e.g. VP8, H264, opus), plus rtx."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.split("/")[1].lower() == name.lower()]
    if not chosen:
        raise ValueError(f"aiortc has no {kind} codec {name}; has {[c.mimeType for c in caps]}")
    if kind == "video" and name.upper() == "H264":
        # constrained baseline (42e01f) first, as browsers do
        chosen.sort(key=lambda c: c.parameters.get("profile-level-id") != "42e01f")
    if rtx:
        chosen += [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    return chosen


def h264_keyframe_start(payload: bytes) -> bool:
    """An RTP H.264 payload that starts a keyframe: SPS/IDR, alone, first in a STAP-A, or an FU-A start."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24 and len(payload) > 3:  # STAP-A: 2-byte size, then the first NAL
        return (payload[3] & 0x1F) in (5, 7)
    if nal == 28 and len(payload) > 1:  # FU-A: start bit + type
        return bool(payload[1] & 0x80) and (payload[1] & 0x1F) == 5
    return False


def _watch_first_packets(receiver, stats: PlayStats) -> None:
    """Records when the first video RTP packet and the first keyframe start arrive (before decoding)."""
    orig = receiver._handle_rtp_packet

    async def handle(packet, arrival_time_ms):
        now = time.monotonic()
        if stats.first_video_rtp is None:
            stats.first_video_rtp = now
        if stats.first_keyframe_rtp is None and h264_keyframe_start(packet.payload):
            stats.first_keyframe_rtp = now
        return await orig(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle


async def _post_offer(
    base_url: str,
    path: str,
    pc: RTCPeerConnection,
    stats: Optional[PlayStats] = None,
    answer_hook: Optional[Callable[[str], str]] = None,
) -> tuple[str, str, str]:
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)  # aiortc completes ICE gathering here
    sdp = pc.localDescription.sdp
    url = urljoin(base_url.rstrip("/") + "/", path.lstrip("/"))
    if stats is not None:
        stats.post_time = time.monotonic()
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.post(url, content=sdp.encode(), headers={"Content-Type": SDP_CT})
    if r.status_code != 201:
        raise WhipError(r.status_code, r.text, url)
    loc = r.headers.get("location")
    if not loc:
        raise WhipError(r.status_code, "201 without Location header", url)
    ctype = r.headers.get("content-type", "")
    if not ctype.lower().startswith(SDP_CT):
        raise WhipError(r.status_code, f"201 with Content-Type {ctype!r}, want {SDP_CT}", url)
    answer = answer_hook(r.text) if answer_hook else r.text
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return urljoin(url, loc), r.text, sdp


async def publish(
    base_url: str,
    room: str,
    video_codec: str = "VP8",
    *,
    audio: bool = True,
    video: bool = True,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    rtx: bool = True,
) -> Session:
    """WHIP-publish synthetic video (`video_codec`: VP8 or H264) + Opus audio to /whip/{room}."""
    pc = new_pc()
    tracks = []
    try:
        if video:
            vt = SyntheticVideoTrack(width, height, fps)
            tr = pc.addTransceiver(vt, direction="sendonly")
            tr.setCodecPreferences(codec_preferences("video", video_codec, rtx=rtx))
            tracks.append(vt)
        if audio:
            at = SineAudioTrack()
            tr = pc.addTransceiver(at, direction="sendonly")
            tr.setCodecPreferences(codec_preferences("audio", "opus", rtx=False))
            tracks.append(at)
        location, answer, offer = await _post_offer(base_url, f"/whip/{room}", pc)
    except BaseException:
        await pc.close()
        raise
    return Session(pc=pc, location=location, answer=answer, offer=offer, tracks=tracks)


async def play(
    base_url: str,
    room: str,
    *,
    audio: bool = True,
    video: bool = True,
    video_codec: Optional[str] = None,
    answer_hook: Optional[Callable[[str], str]] = None,
) -> Session:
    """WHEP-play /whep/{room} with recvonly audio+video; frames are counted in `.stats`.

    By default the offer lists every video codec aiortc can decode (VP8, H264)
    so the server can pick the one its publisher uses. `answer_hook` may rewrite the answer before aiortc
    applies it (e.g. to route the media through a test proxy).
    """
    pc = new_pc()
    stats = PlayStats()
    tasks: list = []

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected" and stats.connected_time is None:
            stats.connected_time = time.monotonic()

    @pc.on("track")
    def on_track(track):
        stats.track_kinds.append(track.kind)
        tasks.append(asyncio.ensure_future(_consume(track, stats)))

    try:
        if video:
            tr = pc.addTransceiver("video", direction="recvonly")
            if video_codec:
                tr.setCodecPreferences(codec_preferences("video", video_codec))
            _watch_first_packets(tr.receiver, stats)
        if audio:
            tr = pc.addTransceiver("audio", direction="recvonly")
            tr.setCodecPreferences(codec_preferences("audio", "opus", rtx=False))
        location, answer, offer = await _post_offer(base_url, f"/whep/{room}", pc, stats, answer_hook)
    except BaseException:
        await pc.close()
        for t in tasks:
            t.cancel()
        raise
    return Session(pc=pc, location=location, answer=answer, offer=offer, stats=stats, tasks=tasks)


async def delete(base_url: str, location: str) -> int:
    """DELETE a WHIP/WHEP resource (absolute or relative Location); returns the HTTP status."""
    url = urljoin(base_url.rstrip("/") + "/", location)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.delete(url)
    return r.status_code


async def healthz(base_url: str) -> dict:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.get(urljoin(base_url.rstrip("/") + "/", "healthz"))
    r.raise_for_status()
    return r.json()


async def wait_sessions(base_url: str, n: int, timeout: float = 10.0) -> dict:
    """Poll /healthz until `sessions == n`; returns the last health document."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while True:
        last = await healthz(base_url)
        if last.get("sessions") == n:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"/healthz sessions != {n} after {timeout}s: {last}")
        await asyncio.sleep(0.1)


def media_codecs(sdp: str, kind: str) -> list[str]:
    """Codec names (rtpmap encoding names) of the first m=<kind> section of an SDP."""
    names, in_section = [], False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_section:
                break
            in_section = line.startswith(f"m={kind} ")
        elif in_section and line.startswith("a=rtpmap:"):
            names.append(line.split(" ", 1)[1].split("/")[0])
    return names


# -------------------------------------------------------------------- CLI ---


async def _cli(args) -> int:
    if args.mode == "publish":
        s = await publish(args.base_url, args.room, video_codec=args.codec, width=args.width, height=args.height)
    else:
        s = await play(args.base_url, args.room)
    await s.wait_connected(15)
    print(f"CONNECTED {s.location}", flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        await asyncio.sleep(1)
        if s.stats is not None:
            print(f"FRAMES video={s.stats.video_frames} audio={s.stats.audio_frames}", flush=True)
        else:
            print(f"SENT video={s.tracks[0].frames_sent}", flush=True)
    if args.delete:
        print(f"DELETE {await delete(args.base_url, s.location)}", flush=True)
    await s.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["publish", "play"])
    p.add_argument("base_url")
    p.add_argument("room")
    p.add_argument("--codec", default="VP8")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--delete", action="store_true", help="DELETE the resource before exiting")
    args = p.parse_args(argv)
    return asyncio.run(_cli(args))


if __name__ == "__main__":
    sys.exit(main())


async def offer_sdp(kind: str) -> str:
    """A genuine aiortc offer without a session behind it: sendonly audio+video for "whip", recvonly for
    "whep" (for tests that only look at the HTTP answer)."""
    pc = new_pc()
    if kind == "whip":
        pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        pc.addTransceiver(SineAudioTrack(), direction="sendonly")
    else:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp
