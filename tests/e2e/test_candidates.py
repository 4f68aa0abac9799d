"""ICE candidates the server advertises in its SDP answers."""

import asyncio

import pytest

from webrtc_clients import delete, play, publish


def candidate_addrs(sdp: str) -> set[tuple[str, int]]:
    out = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            out.add((parts[4], int(parts[5])))
    return out


@pytest.mark.server_args("--public-ip", "192.0.2.99")
@pytest.mark.timeout(60)
def test_answer_has_loopback_and_public_ip_on_the_owning_core_port(server):
    async def run():
        pub = await publish(server.base_url, "cands", video_codec="VP8")
        viewer = await play(server.base_url, "cands")
        await asyncio.gather(pub.wait_connected(10), viewer.wait_connected(10))
        for sess in (pub, viewer):
            addrs = candidate_addrs(sess.answer)
            ports = {p for _, p in addrs}
            # One port per session: the owning core's (base + core index).
            assert len(ports) == 1, addrs
            (port,) = ports
            assert port in server.media_ports, (port, server.media_ports)
            assert ("127.0.0.1", port) in addrs, addrs
            assert ("192.0.2.99", port) in addrs, addrs
            assert all(ip != "0.0.0.0" for ip, _ in addrs), addrs
        await viewer.stats.wait_video_frames(5, 10)
        for sess in (viewer, pub):
            assert await delete(server.base_url, sess.location) in (200, 204)
            await sess.close()

    asyncio.run(run())
