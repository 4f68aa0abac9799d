"""Headless Chromium publishes each video codec over WHIP, a second Chromium page plays it over WHEP.

The demo page's `?codec=` parameter (control/assets/index.html) limits its video transceiver to one codec with
RTCRtpTransceiver.setCodecPreferences: `vp8`, `vp9`, `h264`, `av1`, or `h264/<profile-level-id>` for a single
H264 profile. The page is loaded from control/assets on disk by a separate http.server (test_browser's
`other_origin` fixture; `?server=` points it at sfumato), so the page under test is the one in the work tree,
not the copy compiled into the binary.

What the server does with H264 profiles (media/src/webrtc.rs, `WebRtcSession::accept`): a viewer joining a room
whose video is H264 is answered with exactly the room's profile-level-id, on the viewer's payload type whose
fmtp has the *same* profile (the level may differ, RFC 6184). A viewer that offered no such profile gets no
H264 in its answer: with no other video codec its video section is rejected (port 0), it connects, gets audio,
and never a video frame. There is no transcoding and no fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import httpx
import pytest

from test_browser import CHROMIUM, CHROMIUM_FLAGS, dev_server, new_page, other_origin, wait_state  # noqa: F401
from webrtc_clients import wait_sessions

# Chromium's fake camera runs at 20 fps unless told otherwise: 30 fps leaves room for the >= 20 fps check.
FLAGS = [f if f != "--use-fake-device-for-media-stream" else f + "=fps=30" for f in CHROMIUM_FLAGS]
MIN_FPS = 20.0
MEASURE_S = 3.0

# The page's session `kind` ("whip" sends, "whep" receives): video codec, frames encoded/decoded, size,
# packets of audio; plus the codec's fmtp line.
SIDE_STATS_JS = """async (kind) => {
  const s = window.sfumato && window.sfumato.sessions[kind];
  if (!s) return null;
  const sending = kind === "whip";
  const out = {state: s.pc.connectionState, codec: null, fmtp: null, frames: 0, packets: 0, width: 0, height: 0,
               audioPackets: 0, impl: null};
  const report = await s.pc.getStats();
  report.forEach((r) => {
    if (r.type !== (sending ? "outbound-rtp" : "inbound-rtp")) return;
    const packets = (sending ? r.packetsSent : r.packetsReceived) || 0;
    if (r.kind === "audio") { out.audioPackets += packets; return; }
    if (r.kind !== "video") return;
    out.frames = (sending ? r.framesEncoded : r.framesDecoded) || 0;
    out.packets = packets;
    out.width = r.frameWidth || 0;
    out.height = r.frameHeight || 0;
    out.impl = (sending ? r.encoderImplementation : r.decoderImplementation) || null;
    const c = report.get(r.codecId);
    if (c) { out.codec = c.mimeType; out.fmtp = c.sdpFmtpLine || ""; }
  });
  return out;
}"""

CAPS_JS = """(who) => (who === "send" ? RTCRtpSender : RTCRtpReceiver).getCapabilities("video").codecs
  .map((c) => c.mimeType.replace(/^video\\//, "") + (c.sdpFmtpLine ? " " + c.sdpFmtpLine : ""))"""


@contextlib.asynccontextmanager
async def chromium():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def side_stats(page, kind: str) -> dict:
    return await page.evaluate(SIDE_STATS_JS, kind)


def profile_of(fmtp: str | None) -> str | None:
    m = re.search(r"profile-level-id=([0-9a-fA-F]{6})", fmtp or "")
    return m.group(1).lower() if m else None


def answer_video_fmtp(sdp: str) -> list[str]:
    """`codec fmtp` of each payload type in the first m=video section of an SDP."""
    sec = re.search(r"^m=video [^\n]*\n(.*?)(?=^m=|\Z)", sdp, re.S | re.M)
    if not sec:
        return []
    body = sec.group(1)
    out = []
    for pt, name in re.findall(r"^a=rtpmap:(\d+) ([^/\r\n]+)", body, re.M):
        fmtp = re.search(rf"^a=fmtp:{pt} (.*?)\r?$", body, re.M)
        out.append(f"{name} {fmtp.group(1)}" if fmtp else name)
    return out


async def open_page(browser, name: str, origin: str, base: str, room: str, codec: str | None):
    page = await new_page(browser, name)
    q = f"?room={room}&server={base}" + (f"&codec={codec}" if codec else "")
    await page.goto(f"{origin}/index.html{q}")
    return page


async def start(page, kind: str) -> None:
    await page.click("#publish" if kind == "whip" else "#watch")
    await wait_state(page, kind)


async def wait_video(page, kind: str, frames: int = 1, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await side_stats(page, kind)
        if st and st["frames"] >= frames:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{kind}: < {frames} video frames in {timeout}s: {st}; error={await page.text_content('#error')!r}")
        await asyncio.sleep(0.2)


async def fps_over(page, kind: str, seconds: float = MEASURE_S) -> tuple[float, dict]:
    a = await side_stats(page, kind)
    await asyncio.sleep(seconds)
    b = await side_stats(page, kind)
    return (b["frames"] - a["frames"]) / seconds, b


def skipped_total(base: str) -> int:
    h = httpx.get(f"{base}/healthz", timeout=5).json()
    return sum(c.get("rtp_packets_skipped", 0) for c in h["per_core"])


async def stop_all(base: str, *pages) -> None:
    for page in pages:
        await page.click("#stop")
    await wait_sessions(base, 0, timeout=10)
    for page in pages:
        assert await page.text_content("#error") == "", await page.text_content("#error")


# ------------------------------------------------------------------ tests ---


@pytest.mark.timeout(60)
@pytest.mark.parametrize("codec", ["VP8", "VP9", "H264", "AV1"])
def test_chromium_publishes_codec_chromium_plays(dev_server, other_origin, codec):
    """Publisher offers only `codec`; the viewer offers everything Chromium can receive. Both sides report that
    codec (H264: the same profile-level-id), the viewer decodes >= 20 fps at the camera's 640x480."""
    base = dev_server.base_url
    room = f"codec-{codec.lower()}"

    async def run():
        async with chromium() as browser:
            pub = await open_page(browser, "publisher", other_origin, base, room, codec.lower())
            send_caps = await pub.evaluate(CAPS_JS, "send")
            if not any(c.split(" ")[0] == codec for c in send_caps):
                pytest.skip(f"Chromium here cannot encode {codec}: sender capabilities {send_caps}")
            await start(pub, "whip")
            view = await open_page(browser, "viewer", other_origin, base, room, None)
            await start(view, "whep")
            await wait_video(view, "whep")
            fps, st = await fps_over(view, "whep")
            ps = await side_stats(pub, "whip")
            answers = {k: answer_video_fmtp(await p.evaluate(f"window.sfumato.sessions.{k}.pc.remoteDescription.sdp"))
                       for p, k in ((pub, "whip"), (view, "whep"))}
            print(f"{codec}: publisher {ps}\n  viewer {st} ({fps:.1f} fps)\n  answers {answers}")
            assert ps["codec"] == f"video/{codec}", ps
            assert st["codec"] == f"video/{codec}", st
            if codec == "H264":
                assert profile_of(ps["fmtp"]) and profile_of(st["fmtp"]) == profile_of(ps["fmtp"]), (ps, st)
            assert fps >= MIN_FPS, f"viewer decoded {fps:.1f} fps of {codec}: {st}"
            # The fake camera is 640x480; a loaded machine makes Chromium's encoder scale down (CPU
            # adaptation), so accept any 4:3 size from 320 wide up.
            assert st["width"] >= 320 and st["width"] * 3 == st["height"] * 4 and st["width"] <= 640, st
            assert st["audioPackets"] > 0, st
            await stop_all(base, view, pub)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_h264_profile_negotiation(dev_server, other_origin):
    """Publisher sends H264 constrained baseline (42e01f). A viewer offering only 42e01f plays it. Viewers offering
    only Main (4d001f) or only Baseline (42001f) get their video section rejected (no profile of theirs matches the
    room's: RFC 6184, the same rule as libwebrtc's), connect, and get audio but no video; the room's packets are
    skipped for them (rtp_packets_skipped grows by at least one per frame)."""
    base = dev_server.base_url
    room = "codec-h264-profiles"

    async def run():
        async with chromium() as browser:
            pub = await open_page(browser, "publisher", other_origin, base, room, "h264/42e01f")
            await start(pub, "whip")
            same = await open_page(browser, "viewer-42e01f", other_origin, base, room, "h264/42e01f")
            others = {p: await open_page(browser, f"viewer-{p}", other_origin, base, room, f"h264/{p}")
                      for p in ("4d001f", "42001f")}
            for page in (same, *others.values()):
                await start(page, "whep")
            await wait_video(same, "whep")
            skipped0 = skipped_total(base)
            fps, st = await fps_over(same, "whep")
            skipped1 = skipped_total(base)
            ps = await side_stats(pub, "whip")
            print(f"publisher {ps}\n  viewer 42e01f {st} ({fps:.1f} fps)\n  rtp_packets_skipped {skipped0} -> {skipped1}")
            assert ps["codec"] == "video/H264" and profile_of(ps["fmtp"]) == "42e01f", ps
            assert st["codec"] == "video/H264" and profile_of(st["fmtp"]) == "42e01f", st
            assert fps >= MIN_FPS, st
            for profile, page in others.items():
                sdp = await page.evaluate("window.sfumato.sessions.whep.pc.remoteDescription.sdp")
                answer = answer_video_fmtp(sdp)
                vs = await side_stats(page, "whep")
                print(f"  viewer {profile}: {vs}, answer {answer}")
                assert re.search(r"^m=video 0 ", sdp, re.M) and not any(f.startswith("H264") for f in answer), sdp
                assert vs["state"] == "connected" and vs["audioPackets"] > 0, vs
                assert vs["frames"] == 0 and vs["packets"] == 0, vs
            assert skipped1 - skipped0 >= len(others) * fps * MEASURE_S, (skipped0, skipped1)
            await stop_all(base, same, *others.values(), pub)

    asyncio.run(run())
