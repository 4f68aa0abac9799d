"""A third-party browser WHIP client (npm `whip-whep`, medooze's WHIPClient) publishing from headless Chromium
with trickle ICE and an ICE restart, both over PATCH (RFC 9725 §4.3/§4.4).

The package is installed by scripts/test.sh (`npm ci` in tests/e2e/js, version pinned by its lock file) and
served with a small page from another origin (python http.server), so every PATCH is a real cross-origin
fetch with If-Match. An aiortc WHEP viewer checks that the browser's media really flows, before and after
the restart; the restart is proven by the browser's remote description carrying the server's new ufrag, ICE staying
connected, and the session outliving the ICE consent timeout (~15 s) that the old credentials would have hit.

Also plain-HTTP checks of the PATCH rules: If-Match mismatch → 412, unusable fragment → 400, wrong
content type → 415.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from test_browser import chromium, new_page
from webrtc_clients import delete, play, publish, wait_sessions

WHIP_JS = Path(__file__).parent / "js" / "node_modules" / "whip-whep" / "whip.js"
WHEP_JS = WHIP_JS.with_name("whep.js")

# Every PATCH the page's client sends, with the server's answer (window.patches).
RECORD_PATCHES = """window.patches = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (url, opts = {}) => {
  const r = await realFetch(url, opts);
  if (opts.method === "PATCH") {
    const headers = opts.headers || {};
    window.patches.push({ status: r.status, ifMatch: headers["If-Match"] || null, body: String(opts.body),
                          etag: r.headers.get("etag") });
  }
  return r;
};
"""

PAGE = """<!doctype html><meta charset="utf-8"><title>whip-whep publisher</title>
<script type="module">
import { WHIPClient } from "./whip.js";
""" + RECORD_PATCHES + """window.startPublish = async (url) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
  const pc = new RTCPeerConnection();
  for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: "sendonly" });
  const client = new WHIPClient();
  window.client = client;
  window.pc = pc;
  await client.publish(pc, url);
  return client.resourceURL.toString();
};
window.iceState = () => {
  const sender = window.pc.getSenders().find((s) => s.transport);
  const ice = sender && sender.transport.iceTransport;
  return {
    pc: window.pc.iceConnectionState,
    ice: ice ? ice.state : null,
    // The server's ufrag as the browser's ICE agent uses it (whip.js rewrites the remote description on restart).
    remoteUfrag: ((window.pc.currentRemoteDescription || {}).sdp || "").match(/a=ice-ufrag:(.*)\\r\\n/)?.[1] || null,
  };
};
window.ready = true;
</script>"""


# A WHEP viewer page on the same package's WHEPClient: plays, restarts ICE over PATCH.
WHEP_PAGE = """<!doctype html><meta charset="utf-8"><title>whip-whep viewer</title>
<script type="module">
import { WHEPClient } from "./whep.js";
""" + RECORD_PATCHES + """window.startView = async (url) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const client = new WHEPClient();
  window.client = client;
  window.pc = pc;
  await client.view(pc, url);
  return client.resourceURL.toString();
};
window.framesDecoded = async () => {
  let n = 0;
  (await window.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") n = r.framesDecoded || 0; });
  return n;
};
window.remoteUfrag = () => ((window.pc.currentRemoteDescription || {}).sdp || "").match(/a=ice-ufrag:(.*)\\r\\n/)?.[1] || null;
window.ready = true;
</script>"""


@pytest.fixture
def js_origin():
    """The page + whip.js, served from another origin than sfumato."""
    if not WHIP_JS.exists():
        pytest.fail(f"{WHIP_JS} missing: run scripts/test.sh (npm ci in tests/e2e/js)", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="sfumato-whipjs-"))
    shutil.copy(WHIP_JS, root / "whip.js")
    shutil.copy(WHEP_JS, root / "whep.js")
    (root / "index.html").write_text(PAGE)
    (root / "viewer.html").write_text(WHEP_PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    shutil.rmtree(root, ignore_errors=True)


async def wait_for(page, js: str, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        v = await page.evaluate(js)
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {js} -> {v!r}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(150)
def test_whip_whep_js_trickles_and_restarts_ice(server, js_origin):
    base = server.base_url
    room = "whipjs-trickle"

    async def run():
        async with chromium() as browser:
            page = await new_page(browser, "whip.js")
            await page.goto(f"{js_origin}/index.html")
            await wait_for(page, "window.ready === true", "page module loaded")
            resource = await page.evaluate("(u) => window.startPublish(u)", f"{base}/whip/{room}")
            assert resource.startswith(f"{base}/whip/conn/"), resource
            await wait_for(page, "window.pc.connectionState === 'connected'", "publisher connected")

            # Trickle: whip.js PATCHes its candidates with If-Match = the ETag of the 201.
            patches = await wait_for(page, "window.patches.length > 0 && window.patches", "a trickle PATCH")
            first = patches[0]
            print("trickle PATCH:", first)
            assert first["status"] == 204, first
            assert first["ifMatch"] and first["ifMatch"].strip('"') in resource, first
            # Chromium may have put its candidates in the offer already; then whip.js trickles only
            # a=end-of-candidates. Either way the fragment names the client's ICE credentials.
            assert "a=ice-ufrag:" in first["body"], first
            assert "a=candidate:" in first["body"] or "a=end-of-candidates" in first["body"], first

            viewer = await play(base, room)
            try:
                await viewer.wait_connected(10)
                await viewer.stats.wait_video_frames(10, timeout=15)
                before = await page.evaluate("window.iceState()")
                print("before restart:", before)
                assert before["ice"] == "connected" and before["remoteUfrag"], before

                # ICE restart: new client credentials, If-Match: * → 200 with the server's new ufrag/pwd.
                n = len(await page.evaluate("window.patches"))
                await page.evaluate("window.client.restart()")
                restart = await wait_for(
                    page, f"window.patches.length > {n} && window.patches.find((p, i) => i >= {n} && p.ifMatch === '*')",
                    "the ICE restart PATCH",
                )
                print("restart PATCH:", restart)
                assert restart["status"] == 200, restart
                assert restart["etag"] and restart["etag"] != first["ifMatch"], restart
                assert server.health()["stats"]["ice_restarts"] == 1

                after = await wait_for(
                    page,
                    f"(() => {{ const s = window.iceState(); return s.ice === 'connected' && "
                    f"s.remoteUfrag !== {before['remoteUfrag']!r} && s; }})()",
                    "the browser's ICE transport on the server's new credentials",
                )
                print("after restart:", after)
                # Outlive the ICE consent timeout: with the old credentials the server would have dropped
                # the session ~15 s after the restart.
                await asyncio.sleep(17)
                state = await page.evaluate("window.iceState()")
                assert state["ice"] == "connected", state
                assert server.health()["publishers"] == 1
                frames = viewer.stats.video_frames
                await asyncio.sleep(2)
                assert viewer.stats.video_frames > frames + 20, viewer.stats.summary()
                assert await delete(base, viewer.location) == 200
            finally:
                await viewer.close()
            await page.evaluate("window.client.stop()")
            await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


@pytest.mark.timeout(120)
def test_whep_js_viewer_restarts_ice_and_keeps_playing(server, js_origin):
    """The package's WHEPClient in Chromium plays an aiortc publisher, restarts ICE (PATCH, If-Match: *), and
    keeps decoding: the viewer's media (sfumato's direct send path) follows the restarted ICE session."""
    base = server.base_url
    room = "whepjs-restart"

    async def run():
        pub = await publish(base, room)
        try:
            await pub.wait_connected(10)
            async with chromium() as browser:
                page = await new_page(browser, "whep.js")
                await page.goto(f"{js_origin}/viewer.html")
                await wait_for(page, "window.ready === true", "page module loaded")
                resource = await page.evaluate("(u) => window.startView(u)", f"{base}/whep/{room}")
                assert resource.startswith(f"{base}/whep/conn/"), resource
                await wait_for(page, "window.pc.connectionState === 'connected'", "viewer connected")
                await wait_for(page, "window.framesDecoded().then((n) => n > 10)", "frames before the restart")
                ufrag = await page.evaluate("window.remoteUfrag()")

                n = len(await page.evaluate("window.patches"))
                await page.evaluate("window.client.restart()")
                restart = await wait_for(
                    page, f"window.patches.length > {n} && window.patches.find((p, i) => i >= {n} && p.ifMatch === '*')",
                    "the ICE restart PATCH",
                )
                assert restart["status"] == 200, restart
                assert server.health()["stats"]["ice_restarts"] == 1
                await wait_for(
                    page, f"window.pc.iceConnectionState === 'connected' && window.remoteUfrag() !== {ufrag!r}",
                    "the viewer's ICE on the server's new credentials",
                )
                frames = await page.evaluate("window.framesDecoded()")
                await asyncio.sleep(3)
                after = await page.evaluate("window.framesDecoded()")
                print(f"frames decoded: {frames} -> {after} in 3 s after the restart")
                assert after - frames >= 60, (frames, after)  # the publisher sends 30 fps
                assert server.health()["viewers"] == 1
                await page.evaluate("window.client.stop()")
        finally:
            await delete(base, pub.location)
            await pub.close()
        await wait_sessions(base, 0, timeout=10)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_patch_rules(server):
    """If-Match, content type and fragment checks, with an aiortc publisher's real resource."""
    base = server.base_url

    async def run():
        pub = await publish(base, "patch-rules")
        try:
            await pub.wait_connected(10)
            url = pub.location
            frag_type = {"Content-Type": "application/trickle-ice-sdpfrag"}
            good = "a=end-of-candidates\r\n"
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.patch(url, content=good, headers={**frag_type, "If-Match": '"nope"'})
                assert r.status_code == 412 and r.json()["error"] == "ETAG_MISMATCH", r.text
                r = await http.patch(url, content=good, headers=frag_type)
                assert r.status_code == 204, r.text
                r = await http.patch(url, content="hello", headers=frag_type)
                assert r.status_code == 400 and r.json()["error"] == "BAD_SDP_FRAGMENT", r.text
                r = await http.patch(url, content="a=ice-ufrag:x\r\n", headers=frag_type)
                assert r.status_code == 400 and "ice-pwd" in r.json()["message"], r.text
                r = await http.patch(url, content=good, headers={"Content-Type": "text/plain"})
                assert r.status_code == 415, r.text
                # Still alive and unchanged: a trickle that names the current ETag works.
                etag = pub.location.rsplit("/", 1)[1]
                r = await http.patch(url, content=good, headers={**frag_type, "If-Match": f'"{etag}"'})
                assert r.status_code == 204, r.text
            assert await delete(base, pub.location) == 200
        finally:
            await pub.close()

    asyncio.run(run())
