"""NACK/RTX through a lossy path: aiortc plays while a UDP proxy drops some of the server's video packets.

The proxy sits between the viewer and sfumato (the WHEP answer's candidate is rewritten to point at it) and
drops every DROP_EVERY-th RTP packet of the negotiated video payload type on its way to the viewer — never
DTLS, STUN, RTCP or retransmissions. aiortc notices the gaps and sends NACKs; the server must send the
packets again (RTX when negotiated, as here), so the viewer keeps decoding at the publisher's frame rate.
Both send paths: sfumato's direct one (default) and str0m's (`--str0m-send`).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from webrtc_clients import delete, healthz, play, publish, wait_sessions

DROP_EVERY = 25  # 4 % of the video packets
WINDOW = 5.0
MIN_FPS = 25.0  # the publisher sends 30 fps


class LossyProxy(asyncio.DatagramProtocol):
    """Viewer <-> proxy port <-> (own socket) <-> server; drops video RTP towards the viewer."""

    def __init__(self, server_addr: tuple[str, int], video_pt: int):
        self.server_addr = server_addr
        self.video_pt = video_pt
        self.viewer_addr = None
        self.front = None  # transport the viewer talks to
        self.back = None  # transport towards the server
        self.video_seen = 0
        self.dropped = 0

    # front side: from the viewer
    def connection_made(self, transport):
        self.front = transport

    def datagram_received(self, data, addr):
        self.viewer_addr = addr
        if self.back is not None:
            self.back.sendto(data, self.server_addr)

    def from_server(self, data: bytes) -> None:
        if self.viewer_addr is None:
            return
        # RTP (RFC 7983: first byte 128..191), not RTCP (PT 192..223), of the video payload type.
        if len(data) > 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223 and data[1] & 0x7F == self.video_pt:
            self.video_seen += 1
            if self.video_seen % DROP_EVERY == 0:
                self.dropped += 1
                return
        self.front.sendto(data, self.viewer_addr)


class BackSide(asyncio.DatagramProtocol):
    def __init__(self, proxy: LossyProxy):
        self.proxy = proxy

    def datagram_received(self, data, addr):
        self.proxy.from_server(data)


def route_through(answer: str, proxy_port: int) -> tuple[str, tuple[str, int], int]:
    """The answer with one candidate, the proxy's; the server address it replaced; the video PT."""
    server = None
    lines = []
    for line in answer.split("\r\n"):
        m = re.match(r"a=candidate:(\S+) (\d+) udp (\d+) 127\.0\.0\.1 (\d+) typ host", line)
        if line.startswith("a=candidate:"):
            if m and server is None:
                server = ("127.0.0.1", int(m.group(4)))
                lines.append(line.replace(f" 127.0.0.1 {m.group(4)} ", f" 127.0.0.1 {proxy_port} "))
            continue
        lines.append(line)
    assert server, f"no 127.0.0.1 candidate in the answer:\n{answer}"
    m = re.search(r"m=video \d+ \S+ (\d+)", answer)
    assert m, answer
    return "\r\n".join(lines), server, int(m.group(1))


async def lossy_play(base_url: str, room: str):
    loop = asyncio.get_running_loop()
    proxy_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    proxy_sock.bind(("127.0.0.1", 0))
    port = proxy_sock.getsockname()[1]
    routed = {}

    def hook(answer: str) -> str:
        text, server, pt = route_through(answer, port)
        routed.update(server=server, pt=pt)
        return text

    proxy = LossyProxy(("127.0.0.1", 0), 0)
    front, _ = await loop.create_datagram_endpoint(lambda: proxy, sock=proxy_sock)
    back, _ = await loop.create_datagram_endpoint(lambda: BackSide(proxy), local_addr=("127.0.0.1", 0))
    proxy.back = back
    viewer = None
    try:
        # The answer is rewritten before aiortc starts ICE, so the proxy knows where to send in time.
        def hook_and_arm(answer: str) -> str:
            text = hook(answer)
            proxy.server_addr, proxy.video_pt = routed["server"], routed["pt"]
            return text

        viewer = await play(base_url, room, answer_hook=hook_and_arm)
        return viewer, proxy, (front, back)
    except BaseException:
        front.close()
        back.close()
        raise


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "send_path",
    [
        "direct",
        pytest.param("str0m", marks=pytest.mark.server_args("--str0m-send")),
    ],
)
def test_viewer_behind_lossy_path_recovers_by_retransmission(server, send_path):
    base = server.base_url
    room = f"lossy-{send_path}"

    async def run():
        pub = await publish(base, room, video_codec="VP8")
        await pub.wait_connected(10)
        viewer, proxy, transports = await lossy_play(base, room)
        try:
            await viewer.wait_connected(10)
            await viewer.stats.wait_video_frames(1, timeout=10)
            await asyncio.sleep(1.0 + WINDOW)
            end = time.monotonic()
            fps = viewer.stats.video_fps(WINDOW, end)
            gap = viewer.stats.max_video_gap(WINDOW, end)
            stats = (await healthz(base))["stats"]
            info = (
                f"{send_path}: fps={fps:.1f} max_gap={gap:.2f}s dropped={proxy.dropped}/{proxy.video_seen} "
                f"nacks_received={stats['nacks_received']} rtp_retransmitted={stats['rtp_retransmitted']} "
                f"keyframe_requests_received={stats['keyframe_requests_received']} "
                f"udp_rtcp_lane_in={stats['udp_rtcp_lane_in']}; {viewer.stats.summary()}"
            )
            print(info)
            assert proxy.dropped >= 10, info
            assert stats["nacks_received"] > 0, f"the viewer sent no NACK? {info}"
            # The NACKs came in through the RTCP lane (read when media woke the core), and were still in time.
            assert stats["udp_rtcp_lane_in"] > 0, info
            if send_path == "direct":
                assert stats["rtp_retransmitted"] >= proxy.dropped // 2, info
            assert fps >= MIN_FPS, info
            assert gap < 0.5, f"video froze for {gap:.2f}s; {info}"
        finally:
            for s in (viewer, pub):
                await delete(base, s.location)
                await s.close()
            for t in transports:
                t.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())
