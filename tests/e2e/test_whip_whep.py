"""WHIP publish -> WHEP play with aiortc peers: media really flows through sfumato."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from webrtc_clients import delete, healthz, media_codecs, play, publish, wait_sessions

MIN_FPS = 25.0  # the publisher sends 30 fps
MIN_AUDIO_RATIO = 0.90  # decoded audio duration / wall time (aiortc yields 20 ms Opus frames)
RUN_SECONDS = 6.0
WINDOW = 4.0  # measure over the last 4 s


def first_video_codec(sdp: str) -> str:
    codecs = media_codecs(sdp, "video")
    return codecs[0].upper() if codecs else ""


def assert_media_ok(stats, label: str, window: float = WINDOW, min_fps: float = MIN_FPS) -> None:
    end = time.monotonic()
    fps = stats.video_fps(window, end)
    audio = stats.audio_ratio(window, end)
    gap = stats.max_video_gap(window, end)
    info = f"{label}: fps={fps:.1f} audio_ratio={audio:.3f} max_video_gap={gap:.3f}s; {stats.summary()}"
    print(info)
    assert set(stats.track_kinds) == {"audio", "video"}, info
    assert fps >= min_fps, info
    assert audio >= MIN_AUDIO_RATIO, info
    assert stats.video_sizes == {(640, 360)}, info
    assert gap < 0.5, f"video froze for {gap:.2f}s; {info}"


async def teardown_sessions(base_url: str, *sessions) -> None:
    for s in sessions:
        status = await delete(base_url, s.location)
        assert status in (200, 204), f"DELETE {s.location} -> {status}"
    for s in sessions:
        await s.close()
    await wait_sessions(base_url, 0, timeout=10)


async def publish_then_play(base_url: str, codec: str) -> None:
    room = f"room-{codec.lower()}"
    pub = await publish(base_url, room, video_codec=codec)
    assert first_video_codec(pub.answer) == codec, f"answer video codecs {media_codecs(pub.answer, 'video')}"
    assert "opus" in [c.lower() for c in media_codecs(pub.answer, "audio")]
    await pub.wait_connected(10)

    viewer = await play(base_url, room)
    # The viewer offered VP8 and H264; the answer must keep the publisher's codec
    # (the SFU does not transcode).  It may list others too: RFC 3264 lets the
    # answerer send any codec of its answer, and aiortc picks the decoder by
    # payload type, which the decoded-frame checks below prove.
    viewer_codecs = [c.upper() for c in media_codecs(viewer.answer, "video")]
    assert codec in viewer_codecs, f"viewer answer lacks the publisher's codec {codec}: {viewer_codecs}"
    await viewer.wait_connected(10)
    await viewer.stats.wait_video_frames(1, timeout=10)
    await viewer.stats.wait_audio_frames(1, timeout=5)

    h = await healthz(base_url)
    assert h.get("sessions") == 2, h
    assert h.get("rooms") == 1, h

    await asyncio.sleep(RUN_SECONDS)
    assert_media_ok(viewer.stats, f"{codec} viewer")
    assert viewer.stats.video_pts_regressions == 0, viewer.stats.summary()

    await teardown_sessions(base_url, viewer, pub)


@pytest.mark.timeout(90)
def test_vp8_opus_publish_play(server):
    asyncio.run(publish_then_play(server.base_url, "VP8"))


@pytest.mark.timeout(90)
def test_h264_opus_publish_play(server):
    asyncio.run(publish_then_play(server.base_url, "H264"))


@pytest.mark.timeout(90)
def test_viewer_joins_before_publisher(server):
    async def run():
        base = server.base_url
        viewer = await play(base, "early")
        # ICE + DTLS complete although the room has no publisher yet
        await viewer.wait_connected(10)
        await asyncio.sleep(1.0)
        assert viewer.stats.video_frames == 0
        assert (await healthz(base)).get("sessions") == 1
        pub = await publish(base, "early", video_codec="VP8")
        await pub.wait_connected(10)
        await viewer.stats.wait_video_frames(1, timeout=10)
        await asyncio.sleep(5.0)
        assert_media_ok(viewer.stats, "early viewer", window=3.0)
        await teardown_sessions(base, viewer, pub)

    asyncio.run(run())


@pytest.mark.timeout(90)
def test_two_viewers(server):
    async def run():
        base = server.base_url
        pub = await publish(base, "two", video_codec="VP8")
        await pub.wait_connected(10)
        v1, v2 = await asyncio.gather(play(base, "two"), play(base, "two"))
        assert v1.location != v2.location
        await asyncio.gather(v1.wait_connected(10), v2.wait_connected(10))
        await asyncio.gather(v1.stats.wait_video_frames(1, 10), v2.stats.wait_video_frames(1, 10))
        h = await healthz(base)
        assert h.get("sessions") == 3, h
        await asyncio.sleep(RUN_SECONDS)
        end = time.monotonic()
        for name, v in (("viewer1", v1), ("viewer2", v2)):
            assert_media_ok(v.stats, name)
        # both viewers see the same stream at the same rate
        assert abs(v1.stats.video_fps(WINDOW, end) - v2.stats.video_fps(WINDOW, end)) <= 3
        await teardown_sessions(base, v1, v2, pub)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_delete_frees_only_that_session(server):
    """DELETE of one viewer leaves the publisher and the other viewer running."""

    async def run():
        base = server.base_url
        pub = await publish(base, "del", video_codec="VP8")
        v1 = await play(base, "del")
        v2 = await play(base, "del")
        await asyncio.gather(pub.wait_connected(10), v1.wait_connected(10), v2.wait_connected(10))
        await v2.stats.wait_video_frames(1, 10)
        assert await delete(base, v1.location) in (200, 204)
        await v1.close()
        await wait_sessions(base, 2, timeout=10)
        # a second DELETE of the same resource is a 404
        assert await delete(base, v1.location) == 404
        n = v2.stats.video_frames
        await asyncio.sleep(2.0)
        assert v2.stats.video_frames - n >= 2 * MIN_FPS, v2.stats.summary()
        await teardown_sessions(base, v2, pub)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_trickle_patch_is_204(server):
    """PATCH with application/trickle-ice-sdpfrag on a live resource -> 204."""

    async def run():
        base = server.base_url
        pub = await publish(base, "trickle", video_codec="VP8")
        sdp = pub.offer
        ufrag = next(l.split(":", 1)[1] for l in sdp.splitlines() if l.startswith("a=ice-ufrag:"))
        pwd = next(l.split(":", 1)[1] for l in sdp.splitlines() if l.startswith("a=ice-pwd:"))
        mid = next(l.split(":", 1)[1] for l in sdp.splitlines() if l.startswith("a=mid:"))
        frag = (
            f"a=ice-ufrag:{ufrag}\r\n"
            f"a=ice-pwd:{pwd}\r\n"
            f"m=video 9 UDP/TLS/RTP/SAVPF 0\r\n"
            f"a=mid:{mid}\r\n"
            f"a=end-of-candidates\r\n"
        )
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.patch(pub.location, content=frag, headers={"Content-Type": "application/trickle-ice-sdpfrag"})
        assert r.status_code == 204, (r.status_code, r.text)
        await pub.wait_connected(10)
        await teardown_sessions(base, pub)

    asyncio.run(run())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_late_viewer_gets_video_quickly(server, codec):
    """A viewer joining a running stream gets a keyframe fast.

    aiortc's VP8 encoder emits a keyframe only every 3000 frames (100 s), so a
    late viewer sees video within seconds only if sfumato asks the publisher
    for a keyframe (PLI/FIR on viewer join, or by forwarding the viewer's PLI).
    """

    async def run():
        base = server.base_url
        room = f"late-{codec.lower()}"
        pub = await publish(base, room, video_codec=codec)
        await pub.wait_connected(10)
        await asyncio.sleep(3.0)  # the publisher's first keyframe is long gone
        t0 = time.monotonic()
        viewer = await play(base, room)
        await viewer.wait_connected(10)
        await viewer.stats.wait_video_frames(1, timeout=10)
        first = viewer.stats.video_times[0] - t0
        print(f"{codec}: late viewer's first decoded video frame {first:.2f}s after POST /whep")
        assert first < 3.0, f"late viewer waited {first:.2f}s for its first video frame"
        await asyncio.sleep(3.0)
        assert_media_ok(viewer.stats, f"late {codec} viewer", window=2.0)
        await teardown_sessions(base, viewer, pub)

    asyncio.run(run())


def video_ssrc(answer: str) -> int:
    """The first SSRC the answer's video section names (the one the server sends video on)."""
    video = answer.split("m=video", 1)[1].split("\r\nm=", 1)[0]
    for line in video.split("\r\n"):
        if line.startswith("a=ssrc:"):
            return int(line[len("a=ssrc:"):].split(" ", 1)[0])
    raise AssertionError(f"no a=ssrc in the answer's video section:\n{answer}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "send_path",
    [
        "direct",
        pytest.param("str0m", marks=pytest.mark.server_args("--str0m-send")),
        pytest.param("no-lane", marks=pytest.mark.server_args("--no-rtcp-lane")),
    ],
)
def test_viewer_pli_reaches_the_publisher(server, send_path):
    """aiortc's RTCP stack sends a PLI for the video SSRC the WHEP answer named; the server counts it and asks the
    publisher for a keyframe — on the direct send path its own RTCP reading does this, not str0m's. The PLI comes
    in through the RTCP lane (net/src/rtcp_lane.rs: the kernel steers RTCP to a socket the core reads when
    something else wakes it), or through the one socket with --no-rtcp-lane."""
    base = server.base_url
    room = f"pli-{send_path}"

    async def run():
        pub = await publish(base, room)
        await pub.wait_connected(10)
        viewer = await play(base, room)
        try:
            await viewer.wait_connected(10)
            await viewer.stats.wait_video_frames(5, timeout=10)
            await asyncio.sleep(1.0)  # past the publisher-side PLI throttle (500 ms) of the join's request
            before = (await healthz(base))["stats"]
            receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
            # aiortc builds and SRTCP-protects the PLI itself (its private sender of PLIs, as its jitter buffer uses).
            await receiver._send_rtcp_pli(video_ssrc(viewer.answer))
            deadline = time.monotonic() + 5
            while True:
                after = (await healthz(base))["stats"]
                got = after["keyframe_requests_received"] - before["keyframe_requests_received"]
                asked = after["keyframe_requests"] - before["keyframe_requests"]
                if (got >= 1 and asked >= 1) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            lane = after["udp_rtcp_lane_in"] - before["udp_rtcp_lane_in"]
            print(f"{send_path}: PLIs received from the viewer +{got}, keyframe requests to the publisher +{asked}, "
                  f"datagrams through the RTCP lane +{lane}")
            assert got >= 1, (before, after)
            assert asked >= 1, (before, after)
            if send_path == "no-lane":
                assert after["udp_rtcp_lane_in"] == 0, after
            else:
                assert lane >= 1, (before, after)
                # Only RTCP takes the lane: the publisher's RTP (hundreds of packets by now) does not.
                assert after["udp_rtcp_lane_in"] < after["rtp_packets_in"] // 4, after
        finally:
            for s in (viewer, pub):
                await delete(base, s.location)
                await s.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())
