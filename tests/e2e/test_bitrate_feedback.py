"""Bitrate feedback: a viewer's bandwidth estimate reaches the publisher as REMB.

aiortc viewers do not send transport-wide congestion feedback, but they estimate the bitrate they receive
(abs-send-time, which the server's str0m stamps) and send it as REMB. The server turns the lowest estimate
of the room's viewers into a REMB to the publisher (at most once per second): `bitrate_hints_sent` counts
them, and the aiortc publisher's RTP sender receives them (observed by wrapping aiortc's REMB parser in the
sender module — aiortc exposes no public hook or stat for it).
"""

from __future__ import annotations

import asyncio
import time

import aiortc.rtcrtpsender as rtcrtpsender

from webrtc_clients import delete, healthz, play, publish, wait_sessions


def test_viewer_estimate_reaches_publisher_as_remb(server, monkeypatch):
    received: list[tuple[int, list[int]]] = []
    real = rtcrtpsender.unpack_remb_fci

    def spy(fci):
        bitrate, ssrcs = real(fci)
        received.append((bitrate, list(ssrcs)))
        return bitrate, ssrcs

    monkeypatch.setattr(rtcrtpsender, "unpack_remb_fci", spy)

    async def run() -> None:
        base = server.base_url
        pub = await publish(base, "bitrate-room", video_codec="VP8")
        await pub.wait_connected(10)
        viewer = await play(base, "bitrate-room")
        await viewer.stats.wait_video_frames(10, timeout=15)

        video_ssrcs = {s._ssrc for s in pub.pc.getSenders() if s.track is not None and s.track.kind == "video"}
        deadline = time.monotonic() + 15
        hints = 0
        while time.monotonic() < deadline:
            hints = (await healthz(base))["stats"]["bitrate_hints_sent"]
            if hints > 0 and any(set(ssrcs) & video_ssrcs for _, ssrcs in received):
                break
            await asyncio.sleep(0.25)
        info = f"bitrate_hints_sent={hints} REMBs at the publisher={received[:5]} video ssrcs={video_ssrcs}"
        print(info)
        assert hints > 0, info
        assert any(set(ssrcs) & video_ssrcs and bitrate > 0 for bitrate, ssrcs in received), info

        # At most one REMB per second: over ~3 more seconds only a handful more.
        before = (await healthz(base))["stats"]["bitrate_hints_sent"]
        await asyncio.sleep(3.0)
        after = (await healthz(base))["stats"]["bitrate_hints_sent"]
        assert after - before <= 4, f"{after - before} REMBs in 3 s"

        for s in (viewer, pub):
            await delete(base, s.location)
            await s.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


def test_chromium_viewer_estimate_reaches_publisher(server):
    """Without --viewer-bwe the server does not offer viewers transport-wide congestion control (nothing would
    read it), so Chromium runs its receive-side estimator and sends REMB: a browser viewer's estimate reaches
    the aiortc publisher as the server's REMB (bitrate_hints_sent grows)."""
    from test_browser import chromium, watch_from_demo

    async def run() -> None:
        base = server.base_url
        room = "bitrate-chromium"
        pub = await publish(base, room, video_codec="VP8")
        try:
            await pub.wait_connected(10)
            async with chromium() as browser:
                page = await watch_from_demo(browser, base, room, frames=5)
                answer = await page.evaluate("window.sfumato.sessions.whep.pc.remoteDescription.sdp")
                assert "transport-cc" not in answer and "transport-wide-cc" not in answer, answer
                assert "goog-remb" in answer, answer
                deadline = time.monotonic() + 15
                hints = 0
                while time.monotonic() < deadline:
                    hints = (await healthz(base))["stats"]["bitrate_hints_sent"]
                    if hints > 0:
                        break
                    await asyncio.sleep(0.25)
                print(f"bitrate_hints_sent={hints}")
                assert hints > 0, "no REMB from Chromium reached the publisher"
                await page.click("#stop")
            assert await delete(base, pub.location) == 200
        finally:
            await pub.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())
