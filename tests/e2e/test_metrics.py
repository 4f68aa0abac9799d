"""GET /metrics: Prometheus text format, HTTP requests by route group and status (summed over cores), auth
failures by reason, bytes in/out, the latency histograms, the events connector's queue and sinks, and
Prometheus naming (HELP/TYPE on every metric, `_total` on every counter, histograms as `_bucket`/`_sum`/
`_count`)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from webrtc_clients import SDP_CT, offer_sdp

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (-?[0-9.e+]+|NaN|\+Inf)$')
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
            family = m.group(1)
            if family not in types:  # a histogram's series are named after it
                family = re.sub(r"_(bucket|sum|count)$", "", family)
                assert types.get(family) == "histogram", f"sample before its TYPE line: {line!r}"
            samples[(m.group(1), labels)] = float(m.group(3).replace("+Inf", "inf"))
    return samples, types, helps


def scrape(base: str) -> tuple[dict, dict, dict]:
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def requests_total(samples: dict, route: str, status: str) -> float:
    return samples.get(("sfumato_http_requests_total", (("route", route), ("status", status))), 0.0)



def test_names_follow_prometheus_conventions(server):
    samples, types, helps = scrape(server.base_url)
    assert types, "no metrics"
    for name, kind in types.items():
        assert name.startswith("sfumato_"), name
        assert name in helps and helps[name], f"{name} has no HELP"
        assert kind in ("counter", "gauge", "histogram"), (name, kind)
        assert (kind == "counter") == name.endswith("_total"), f"{name} is a {kind}: counters and only they end in _total"
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: latency histograms are in seconds"
    assert types["sfumato_sessions"] == "gauge"
    assert types["sfumato_udp_datagrams_in_total"] == "counter"
    assert types["sfumato_http_requests_total"] == "counter"
    assert types["sfumato_auth_failures_total"] == "counter"
    for name in ("sfumato_forward_latency_seconds", "sfumato_rtmp_forward_latency_seconds"):
        assert types[name] == "histogram", name
    for name in ("sfumato_udp_bytes_in_total", "sfumato_udp_bytes_out_total", "sfumato_rtp_bytes_forwarded_total"):
        assert types[name] == "counter", name
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


def histogram(samples: dict, name: str, core: str) -> list[tuple[float, float]]:
    """[(le, cumulative count)] of one core's histogram series, in `le` order."""
    return sorted((float(dict(l)["le"].replace("+Inf", "inf")), v) for (n, l), v in samples.items()
                  if n == f"{name}_bucket" and dict(l).get("core") == core)


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_bytes_and_forward_latency_histogram(server):
    """A publisher and a viewer: datagram bytes in/out and forwarded payload bytes grow, and the forward
    latency histogram is cumulative, `+Inf` == `_count`, and its count matches /healthz."""
    from webrtc_clients import delete, play, publish

    base = server.base_url
    before, _, _ = scrape(base)

    async def run():
        pub = await publish(base, "metrics-bytes", width=320, height=180)
        view = await play(base, "metrics-bytes")
        deadline = time.monotonic() + 15
        while view.stats.video_frames < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for s in (view, pub):
            await delete(base, s.location)
            await s.close()
        return view.stats.video_frames

    frames = asyncio.run(run())
    assert frames >= 20, f"viewer decoded {frames} video frames"
    after, _, _ = scrape(base)
    health = server.health()
    for name in ("sfumato_udp_bytes_in_total", "sfumato_udp_bytes_out_total", "sfumato_rtp_bytes_forwarded_total"):
        assert total(after, name) > total(before, name), name
    # SRTP + headers: every forwarded payload byte went out in a bigger datagram
    assert total(after, "sfumato_udp_bytes_out_total") > total(after, "sfumato_rtp_bytes_forwarded_total")
    assert total(after, "sfumato_rtp_bytes_forwarded_total") == health["stats"]["rtp_bytes_forwarded"]
    name = "sfumato_forward_latency_seconds"
    counted = 0.0
    for core in range(server.cores):
        buckets = histogram(after, name, str(core))
        assert buckets and buckets[-1][0] == float("inf"), buckets
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"buckets not cumulative: {buckets}"
        count = after[(f"{name}_count", (("core", str(core)),))]
        assert counts[-1] == count, (buckets, count)
        assert after[(f"{name}_sum", (("core", str(core)),))] >= 0
        counted += count
    assert counted > 0 and counted == health["forward_latency_us"]["count"], (counted, health["forward_latency_us"])
    assert health["rtmp_forward_latency_us"] is None, "no RTMP publisher here"
    assert total(after, "sfumato_rtmp_forward_latency_seconds_count") == 0


@pytest.mark.server_args("--hook-url", "http://127.0.0.1:9/events")
def test_events_connector_metrics(server):
    """With a hook that is down: the queue from the cores, and the sink's buffered/connected/dropped series."""
    base = server.base_url
    r = httpx.post(f"{base}/whep/metrics-events", content=asyncio.run(offer_sdp("whep")),
                   headers={"Content-Type": SDP_CT}, timeout=10)
    assert r.status_code == 201, r.text  # room.created + peer.joined
    assert httpx.delete(base + r.headers["location"], timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    while True:
        samples, types, helps = scrape(base)
        buffered = samples.get(("sfumato_events_buffered", (("sink", "hook"),)), 0)
        if buffered >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert buffered >= 4, samples  # joined, left, room created/destroyed: held while the hook is down
    assert types["sfumato_events_queue_depth"] == "gauge" and types["sfumato_events_buffered"] == "gauge"
    assert types["sfumato_events_dropped_total"] == "counter" and types["sfumato_events_published_total"] == "counter"
    assert samples[("sfumato_events_connected", (("sink", "hook"),))] == 0
    assert samples[("sfumato_events_published_total", (("sink", "hook"),))] == 0
    assert samples[("sfumato_events_dropped_total", (("sink", "hook"),))] == 0
    assert samples[("sfumato_events_queue_depth", ())] == 0
    assert samples[("sfumato_events_received_total", ())] >= 4
    assert not any(dict(l).get("sink") == "nats" for (_, l) in samples), "nats is not configured"
    events = server.health()["events"]
    assert events["queued"] == 0 and events["hook"]["buffered"] >= 4, events
