"""--ice-server: STUN/TURN servers announced in `Link: <url>; rel="ice-server"` headers (RFC 9725 §4.6) on every
WHIP/WHEP 201 and every OPTIONS on /whip and /whep routes; invalid URLs refused at startup with exit code 2."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess

import httpx
import pytest

from conftest import server_binary
from webrtc_clients import SDP_CT, offer_sdp

STUN = "stun:stun.example.org:3478"
TURN = "turn:turn.example.org?transport=udp"
USER, CRED = "alice", "s3cret-pass"
ICE_ARGS = ("--ice-server", STUN, "--ice-server", TURN, "--ice-server-username", USER, "--ice-server-credential", CRED)

# <uri> followed by `; name="value"` parameters (RFC 8288 link-value, quoted-string parameters only)
LINK_RE = re.compile(r'^<([^>]+)>((?:\s*;\s*[a-z-]+="[^"\\]*")+)\s*$')


def parse_links(r: httpx.Response) -> list[tuple[str, dict]]:
    """(uri, params) for each Link header value (several headers, or one comma-joined)."""
    out = []
    for header in r.headers.get_list("link"):
        for value in re.split(r",\s*(?=<)", header):
            m = LINK_RE.match(value.strip())
            assert m, f"malformed Link value {value!r}"
            params = dict(re.findall(r'([a-z-]+)="([^"]*)"', m.group(2)))
            out.append((m.group(1), params))
    return out


def assert_ice_links(r: httpx.Response) -> None:
    links = parse_links(r)
    assert links == [
        (STUN, {"rel": "ice-server"}),
        (TURN, {"rel": "ice-server", "username": USER, "credential": CRED, "credential-type": "password"}),
    ], r.headers.get_list("link")



def preflight(url: str) -> httpx.Response:
    return httpx.options(url, headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"},
                         timeout=10)


@pytest.mark.server_args(*ICE_ARGS)
def test_201_and_options_carry_the_ice_servers(server):
    base = server.base_url
    created = []
    for kind in ("whip", "whep"):
        r = httpx.post(f"{base}/{kind}/ice-room", content=asyncio.run(offer_sdp(kind)),
                       headers={"Content-Type": SDP_CT}, timeout=10)
        assert r.status_code == 201, r.text
        assert_ice_links(r)
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert "link" in exposed, "browsers may read Link (CORS)"
        created.append(r.headers["location"])
    for path in ("/whip/ice-room", "/whep/ice-room", "/whip/endpoint", "/whep/endpoint", created[0], created[1]):
        r = preflight(base + path)
        assert r.status_code == 204, (path, r.status_code)
        assert_ice_links(r)
        assert "link" in r.headers["access-control-expose-headers"].lower()
    for path in ("/healthz", "/metrics", "/token/whip", "/"):
        r = preflight(base + path)
        assert r.status_code == 204 and "link" not in r.headers, (path, r.headers)
    # errors don't announce anything
    r = httpx.post(f"{base}/whip/ice-room2", content="hello", headers={"Content-Type": SDP_CT}, timeout=10)
    assert r.status_code == 400 and "link" not in r.headers, r.headers
    for loc in created:
        assert httpx.delete(base + loc, timeout=10).status_code == 200


def test_no_link_without_ice_servers(server):
    r = preflight(server.base_url + "/whip/r")
    assert r.status_code == 204 and "link" not in r.headers, r.headers


@pytest.fixture
def env_ice(monkeypatch):
    monkeypatch.setenv("SFUMATO_ICE_SERVER", f"{STUN},{TURN}")
    monkeypatch.setenv("SFUMATO_ICE_SERVER_USERNAME", USER)
    monkeypatch.setenv("SFUMATO_ICE_SERVER_CREDENTIAL", CRED)


def test_ice_servers_from_the_environment(env_ice, server):
    assert_ice_links(preflight(server.base_url + "/whep/endpoint"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ice-server", "http://stun.example.org"], "scheme must be stun:, stuns:, turn: or turns:"),
        (["--ice-server", "stun://stun.example.org"], "without `//`"),
        (["--ice-server", "stun:"], "host is missing"),
        (["--ice-server", "stun:host:0"], "port must be 1-65535"),
        (["--ice-server", "stun:host?transport=udp"], "only turn:/turns: take a query"),
        (["--ice-server", TURN], "is a TURN server"),
        (["--ice-server", STUN, "--ice-server-username", "u", "--ice-server-credential", "p"], "no turn:"),
        (["--ice-server", TURN, "--ice-server-username", "u", "--ice-server-credential", 'p"q'], "printable ASCII"),
    ],
)
def test_invalid_ice_servers_exit_2(args, needle):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFUMATO_")}
    r = subprocess.run([str(server_binary()), "standalone", "--http-port", "1", *args], env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "panicked" not in r.stderr, r.stderr
