"""GET /metrics: Prometheus text format, HTTP requests by route group and status (summed over cores), auth
failures by reason, and Prometheus naming (HELP/TYPE on every metric, `_total` on every counter)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from webrtc_clients import SDP_CT, SineAudioTrack, SyntheticVideoTrack, new_pc

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (-?[0-9.e+]+|NaN)$')
SECRET = "metrics-secret"


def parse(text: str) -> tuple[dict, dict, dict]:
    """(samples {(name, labels-tuple): value}, types {name: type}, helps {name: text}) of an exposition."""
    samples, types, helps = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name not in types, f"second TYPE line for {name}"
            types[name] = kind
        elif line.strip():
            m = SAMPLE_RE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or "")))
            assert m.group(1) in types, f"sample before its TYPE line: {line!r}"
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types, helps


def scrape(base: str) -> tuple[dict, dict, dict]:
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def requests_total(samples: dict, route: str, status: str) -> float:
    return samples.get(("sfumato_http_requests_total", (("route", route), ("status", status))), 0.0)


async def offer_sdp(kind: str) -> str:
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


def test_names_follow_prometheus_conventions(server):
    samples, types, helps = scrape(server.base_url)
    assert types, "no metrics"
    for name, kind in types.items():
        assert name.startswith("sfumato_"), name
        assert name in helps and helps[name], f"{name} has no HELP"
        assert kind in ("counter", "gauge"), (name, kind)
        assert (kind == "counter") == name.endswith("_total"), f"{name} is a {kind}: counters and only they end in _total"
    assert types["sfumato_sessions"] == "gauge"
    assert types["sfumato_udp_datagrams_in_total"] == "counter"
    assert types["sfumato_http_requests_total"] == "counter"
    assert types["sfumato_auth_failures_total"] == "counter"
    per_core = {dict(labels).get("core") for (name, labels) in samples if name == "sfumato_sessions"}
    assert per_core == {str(c) for c in range(server.cores)}, per_core


def test_http_requests_counted_by_route_and_status(server):
    base = server.base_url
    before, _, _ = scrape(base)
    # Separate connections: the kernel spreads them over both cores; the scrape sums every core.
    for kind in ("whip", "whep"):
        r = httpx.post(f"{base}/{kind}/metrics-room", content=asyncio.run(offer_sdp(kind)),
                       headers={"Content-Type": SDP_CT}, timeout=10)
        assert r.status_code == 201, r.text
        assert httpx.delete(base + r.headers["location"], timeout=10).status_code == 200
    for _ in range(3):
        assert httpx.post(f"{base}/whip/metrics-room", content="hello", headers={"Content-Type": SDP_CT},
                          timeout=10).status_code == 400
    assert httpx.post(f"{base}/whep/metrics-room", content="v=0", headers={"Content-Type": "text/plain"},
                      timeout=10).status_code == 415
    for path in ("/nope", "/nope/deeper", "/favicon.ico", "/whip/conn/doesnotexist"):
        r = httpx.request("DELETE" if "conn" in path else "GET", base + path, timeout=10)
        assert r.status_code == 404, (path, r.status_code)
    assert httpx.put(f"{base}/healthz", timeout=10).status_code == 405
    assert httpx.options(f"{base}/whip/x", timeout=10).status_code == 204

    after, _, _ = scrape(base)
    delta = lambda route, status: requests_total(after, route, status) - requests_total(before, route, status)
    assert delta("whip", "201") == 1
    assert delta("whep", "201") == 1
    assert delta("whip", "200") == 1  # DELETE of the publisher
    assert delta("whep", "200") == 1
    assert delta("whip", "400") == 3
    assert delta("whep", "415") == 1
    assert delta("other", "404") == 3
    assert delta("whip", "404") == 1
    assert delta("healthz", "405") == 1
    assert delta("whip", "204") == 1
    # the first scrape itself was counted, on whichever core answered it
    assert requests_total(after, "metrics", "200") >= 1


@pytest.mark.server_args("--secret", SECRET)
def test_auth_failures_counted_by_reason(server):
    base = server.base_url

    def failures() -> dict:
        samples, _, _ = scrape(base)
        return {dict(l)["reason"]: v for (n, l), v in samples.items() if n == "sfumato_auth_failures_total"}

    before = failures()
    assert set(before) == {"missing", "invalid", "expired", "wrong_kind", "wrong_room", "not_owner", "bad_secret"}
    tok = httpx.post(f"{base}/token/whep", json={"room": "r1"}, headers={"Authorization": f"Bearer {SECRET}"},
                     timeout=10).json()["data"]["token"]
    sdp = {"Content-Type": SDP_CT}
    assert httpx.post(f"{base}/whip/r1", content="v=0", headers=sdp, timeout=10).status_code == 401
    assert httpx.post(f"{base}/whip/r1", content="v=0", headers={**sdp, "Authorization": "Bearer a.b.c"},
                      timeout=10).status_code == 401
    assert httpx.post(f"{base}/whip/r1", content="v=0", headers={**sdp, "Authorization": f"Bearer {tok}"},
                      timeout=10).status_code == 403  # a whep token used to publish
    assert httpx.post(f"{base}/whep/r2", content="v=0", headers={**sdp, "Authorization": f"Bearer {tok}"},
                      timeout=10).status_code == 403  # another room
    for _ in range(2):
        assert httpx.post(f"{base}/token/whip", json={"room": "r1"}, headers={"Authorization": "Bearer nope"},
                          timeout=10).status_code == 401
    after = failures()
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {"missing": 1, "invalid": 1, "expired": 0, "wrong_kind": 1, "wrong_room": 1, "not_owner": 0,
                     "bad_secret": 2}, delta
    samples, _, _ = scrape(base)
    assert requests_total(samples, "whip", "401") == 2
    assert requests_total(samples, "token", "401") == 2
