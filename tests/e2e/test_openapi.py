"""docs/openapi.json against the live server, so the spec and control/src/http_api.rs stay in sync.

- the spec is valid OpenAPI 3.0 (openapi-spec-validator when installed, plus structural checks here:
  every $ref resolves, every example validates against its schema);
- the spec lists exactly ROUTES (below, taken from `handle` in control/src/http_api.rs) plus OPTIONS on
  every path, and a scan of http_api.rs and gateway.rs (the cluster's gateway, a child module of http_api)
  finds no route segment, error code or `X-Sfumato-*` header the spec does not know;
- every documented operation, sent a well-formed request, answers a documented status whose body and
  headers match the spec; documented errors (401/403/404/409/413/415...) are provoked and checked the same
  way, their `error` codes among the response's documented examples;
- the cluster-only answers (`/whip|whep/conn/{node}/{id}`, `X-Sfumato-Zone`/`X-Sfumato-Node`, BAD_ZONE,
  NO_CAPACITY, NODE_UNAVAILABLE, /healthz `cluster`) against two real `sfumato media` nodes
  (test_cluster_routes_answer_as_documented): a standalone server answers 404 on the node routes, so the
  other tests leave those routes to it;
- GET /openapi.json serves this very file and GET / the demo page (control/assets/index.html).
  Those two need the lead's route patch (/tmp/demo-wiring.patch): the tests named *_needs_route_patch.

When you add a route: add it to ROUTES, to docs/openapi.json, and a well-formed request to
well_formed_requests().
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urljoin

import httpx
import pytest

from conftest import free_tcp_port, free_udp_range, server_binary
from webrtc_clients import SDP_CT, TRICKLE_CT, offer_sdp

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = REPO_ROOT / "docs" / "openapi.json"
HTTP_API_RS = REPO_ROOT / "control" / "src" / "http_api.rs"
GATEWAY_RS = REPO_ROOT / "control" / "src" / "gateway.rs"
AUTH_RS = REPO_ROOT / "control" / "src" / "auth.rs"
DEMO_PAGE = REPO_ROOT / "control" / "assets" / "index.html"

# Every (method, path) `handle` in control/src/http_api.rs routes, OPTIONS aside (answered on any path).
ROUTES = {
    ("GET", "/"),  # demo page (route patch)
    ("GET", "/openapi.json"),  # this spec (route patch)
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/token/{kind}"),
    ("POST", "/whip/{room}"),
    ("POST", "/whip/endpoint"),
    ("DELETE", "/whip/conn/{id}"),
    ("PATCH", "/whip/conn/{id}"),
    ("POST", "/whep/{room}"),
    ("POST", "/whep/endpoint"),
    ("DELETE", "/whep/conn/{id}"),
    ("PATCH", "/whep/conn/{id}"),
    # `sfumato media`: a session a gateway placed on another node (gateway.rs); 404 on a standalone server
    ("DELETE", "/whip/conn/{node}/{id}"),
    ("PATCH", "/whip/conn/{node}/{id}"),
    ("DELETE", "/whep/conn/{node}/{id}"),
    ("PATCH", "/whep/conn/{node}/{id}"),
}
CLUSTER_ROUTES = {r for r in ROUTES if "{node}" in r[1]}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SECRET = "oas-secret-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_FILE.read_text())


@pytest.fixture
def secure_server(monkeypatch, request):
    """conftest's server with `--secret SECRET` (its server_args marker)."""
    monkeypatch.delenv("SFUMATO_SECRET", raising=False)
    request.node.add_marker(pytest.mark.server_args("--secret", SECRET))
    return request.getfixturevalue("server")


@pytest.fixture
def dev_server(monkeypatch, request):
    monkeypatch.delenv("SFUMATO_SECRET", raising=False)
    return request.getfixturevalue("server")


# ------------------------------------------------------------ spec helpers ---


def resolve(spec: dict, node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local $refs are used: {ref}"
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations(spec: dict):
    """(METHOD, path, operation) for every operation of the spec."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def schema_errors(spec: dict, schema: Any, value: Any, where: str = "$") -> list[str]:
    """A small JSON-schema check covering what docs/openapi.json uses."""
    schema = resolve(spec, schema)
    if value is None and schema.get("nullable"):
        return []
    t = schema.get("type")
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool}
    if t:
        if not isinstance(value, kinds[t]) or (t in ("integer", "number") and isinstance(value, bool)):
            return [f"{where}: want {t}, got {value!r:.80}"]
    errs = []
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not in {schema['enum']}")
    if t == "object":
        errs += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errs += schema_errors(spec, props[k], v, f"{where}.{k}")
            elif extra is False:
                errs.append(f"{where}: unexpected property {k!r}")
            elif isinstance(extra, dict):
                errs += schema_errors(spec, extra, v, f"{where}.{k}")
    elif t == "array":
        for i, v in enumerate(value):
            errs += schema_errors(spec, schema.get("items", {}), v, f"{where}[{i}]")
    elif t == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errs.append(f"{where}: length {len(value)} out of range")
    elif t in ("integer", "number"):
        if value < schema.get("minimum", float("-inf")) or value > schema.get("maximum", float("inf")):
            errs.append(f"{where}: {value} out of range")
    return errs


def documented_codes(spec: dict, response: dict) -> set[str]:
    """The `error` codes a documented JSON error response lists in its example(s)."""
    media = response.get("content", {}).get("application/json", {})
    values = [media["example"]] if "example" in media else [e["value"] for e in media.get("examples", {}).values()]
    return {v["error"] for v in values if isinstance(v, dict) and "error" in v}


def check_response(spec: dict, method: str, path: str, r: httpx.Response) -> dict:
    """Asserts `r` is documented for (method, path): status, content type, body schema, required headers."""
    op = spec["paths"][path][method.lower()]
    what = f"{method} {path} -> {r.status_code} {r.text[:200]!r}"
    assert str(r.status_code) in op["responses"], f"undocumented status: {what}; documented {sorted(op['responses'])}"
    resp = resolve(spec, op["responses"][str(r.status_code)])
    assert r.headers.get("access-control-allow-origin") == "*", f"no CORS header: {what}"
    for name, h in resp.get("headers", {}).items():
        if resolve(spec, h).get("required"):
            assert name.lower() in r.headers, f"documented header {name} missing: {what}"
    content = resp.get("content")
    if not content:
        assert r.content == b"", f"documented without a body: {what}"
        return resp
    ctype = r.headers.get("content-type", "").split(";")[0].strip()
    assert ctype in content, f"Content-Type {ctype!r} not documented ({sorted(content)}): {what}"
    if ctype == "application/json":
        errs = schema_errors(spec, content[ctype].get("schema", {}), r.json())
        assert not errs, f"body does not match the schema: {what}: {errs}"
        codes = documented_codes(spec, resp)
        if codes and r.json().get("status") is False:
            assert r.json()["error"] in codes, f"error code not among the documented examples {sorted(codes)}: {what}"
    return resp



def token(base: str, kind: str, room: str, secret: str) -> str:
    r = httpx.post(f"{base}/token/{kind}", json={"room": room}, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["token"]


# No ICE credentials: plain trickle (204). With credentials other than the offer's: an ICE restart (200).
TRICKLE_FRAG = "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n"
RESTART_FRAG = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"


# ------------------------------------------------------------- the spec itself ---


def test_spec_is_valid_openapi_3(spec):
    assert spec["openapi"].startswith("3.0."), spec["openapi"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        validate = None  # pip install openapi-spec-validator for the full check; the checks below still run
    if validate is not None:
        validate(spec)
    # every $ref resolves
    def walk(node, where):
        if isinstance(node, dict):
            if "$ref" in node:
                try:
                    resolve(spec, node)
                except (KeyError, AssertionError) as e:
                    pytest.fail(f"{where}: unresolvable $ref {node['$ref']} ({e})")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")
    walk(spec, "#")
    # path templates have their parameters; operationIds are unique; every operation has responses
    seen = set()
    for method, path, op in operations(spec):
        params = [resolve(spec, p) for p in spec["paths"][path].get("parameters", []) + op.get("parameters", [])]
        names = {p["name"] for p in params if p["in"] == "path"}
        assert names == set(re.findall(r"\{(\w+)\}", path)), (method, path, names)
        assert op.get("responses"), (method, path)
        assert op["operationId"] not in seen, op["operationId"]
        seen.add(op["operationId"])
        for code, resp in op["responses"].items():
            resp = resolve(spec, resp)
            assert resp.get("description"), (method, path, code)
            if code.startswith(("4", "5")):
                assert "application/json" in resp.get("content", {}), f"{method} {path} {code}: errors are JSON"
                assert resolve(spec, resp["content"]["application/json"]["schema"]) is resolve(spec, {"$ref": "#/components/schemas/Error"})


def test_spec_examples_match_their_schemas(spec):
    def examples(media):
        if "example" in media:
            yield media["example"]
        for e in media.get("examples", {}).values():
            yield resolve(spec, e)["value"]

    checked = 0
    for method, path, op in operations(spec):
        medias = [(f"{method} {path} request", op.get("requestBody", {}).get("content", {}))]
        medias += [(f"{method} {path} {c}", resolve(spec, r).get("content", {})) for c, r in op["responses"].items()]
        for where, content in medias:
            for ctype, media in content.items():
                if ctype != "application/json":
                    continue
                for ex in examples(media):
                    errs = schema_errors(spec, media["schema"], ex)
                    assert not errs, f"{where}: example {ex} does not match: {errs}"
                    checked += 1
    assert checked >= 10, checked


def test_spec_lists_exactly_the_server_routes(spec):
    ops = {(m, p) for m, p, _ in operations(spec)}
    documented = {(m, p) for m, p in ops if m != "OPTIONS"}
    assert ROUTES - documented == set(), f"served but not in docs/openapi.json: {sorted(ROUTES - documented)}"
    assert documented - ROUTES == set(), f"in docs/openapi.json but not in ROUTES (http_api.rs): {sorted(documented - ROUTES)}"
    no_options = sorted(p for p in spec["paths"] if ("OPTIONS", p) not in ops)
    assert not no_options, f"OPTIONS (CORS preflight) is answered on every path; document it on {no_options}"


def test_http_api_source_has_no_undocumented_route_or_error(spec):
    """A scan of http_api.rs's `handle`: every literal path segment and every error code is in the spec."""
    src = HTTP_API_RS.read_text()
    start = src.index("async fn handle(")
    body = src[start : src.index("\n}\n", start)]
    segments = {s for group in re.findall(r"\[([^\]]*)\]", body) for s in re.findall(r'"([^"]*)"', group)}
    if '"endpoint"' in body:
        segments.add("endpoint")
    spec_segments = {seg for p in spec["paths"] for seg in p.strip("/").split("/") if not seg.startswith("{")}
    spec_segments.add("")  # "/" is the path of segment ""
    assert segments, "found no route patterns in http_api.rs's handle(): update this scan"
    missing = sorted(segments - spec_segments)
    assert not missing, f"http_api.rs routes path segments the spec never mentions: {missing}; add the routes to ROUTES and docs/openapi.json"
    route_segments = {seg for _, p in ROUTES for seg in p.strip("/").split("/") if not seg.startswith("{")}
    gone = sorted(route_segments - segments - {"", "openapi.json"})  # "" and openapi.json: route patch pending
    assert not gone, f"ROUTES mentions path segments http_api.rs no longer has: {gone}"

    gateway = GATEWAY_RS.read_text()
    assert "#[path = \"gateway.rs\"]" in src, "gateway.rs is no longer http_api's child module: update this scan"
    codes = set(re.findall(r'StatusCode::\w+,\s*"([A-Z][A-Z0-9_]+)"', src + gateway))
    assert {"BAD_ZONE", "NO_CAPACITY", "NODE_UNAVAILABLE"} <= codes, f"gateway.rs scan found only {sorted(codes)}"
    codes |= set(re.findall(r'AuthError::\w+(?:\([^)]*\))?\s*=>\s*"([A-Z][A-Z0-9_]+)"', AUTH_RS.read_text()))
    assert len(codes) >= 10, f"error-code scan found only {sorted(codes)}: update this scan"
    enum = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert codes - enum == set(), f"error codes the server sends that the Error schema lacks: {sorted(codes - enum)}"
    assert enum - codes == set(), f"error codes in the Error schema the server never sends: {sorted(enum - codes)}"

    # the cluster's own headers: read from requests (parameters) or set on responses (response headers)
    headers = {h.lower() for h in re.findall(r'"(x-sfumato-[a-z-]+)"', (src + gateway).lower())}
    assert {"x-sfumato-zone", "x-sfumato-node"} <= headers, f"header scan found only {sorted(headers)}: update this scan"
    documented = {resolve(spec, p)["name"].lower() for _, _, op in operations(spec) for p in op.get("parameters", [])
                  if resolve(spec, p)["in"] == "header"}
    documented |= {h.lower() for _, _, op in operations(spec) for r in op["responses"].values()
                   for h in resolve(spec, r).get("headers", {})}
    assert headers - documented == set(), f"headers http_api.rs/gateway.rs use that the spec never mentions: {sorted(headers - documented)}"


# ----------------------------------------------------------- against the server ---


def well_formed(spec, base: str, secret: str, room: str) -> list[tuple[str, str, dict, int]]:
    """(method, spec path, httpx request kwargs, expected status) for each documented non-OPTIONS operation
    but the two of the route patch; sessions created here are DELETEd by the last requests."""
    whip_sdp, whep_sdp = asyncio.run(offer_sdp("whip")), asyncio.run(offer_sdp("whep"))
    ep_pub_tok, ep_view_tok = token(base, "whip", room + "-ep", secret), token(base, "whep", room + "-ep", secret)
    sdp_h = {"Content-Type": SDP_CT}
    return [
        ("GET", "/healthz", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("POST", "/token/{kind}", {"url": "/token/webrtc", "json": {"room": room, "peer": "p", "ttl": 60},
                                   "headers": {"Authorization": f"Bearer {secret}"}}, 200),
        ("POST", "/whip/{room}", {"url": f"/whip/{room}", "content": whip_sdp, "headers": sdp_h}, 201),
        ("POST", "/whep/{room}", {"url": f"/whep/{room}", "content": whep_sdp, "headers": sdp_h}, 201),
        ("POST", "/whip/endpoint", {"content": whip_sdp, "headers": {**sdp_h, "Authorization": f"Bearer {ep_pub_tok}"}}, 201),
        ("POST", "/whep/endpoint", {"content": whep_sdp, "headers": {**sdp_h, "Authorization": f"Bearer {ep_view_tok}"}}, 201),
    ]


def test_every_operation_answers_as_documented(dev_server, spec):
    base = dev_server.base_url
    seen = set()
    created = []  # (spec path of the resource, location)
    for method, path, kw, want in well_formed(spec, base, "insecure", "oas-room"):
        kw = dict(kw)
        url = base + kw.pop("url", path)
        r = httpx.request(method, url, timeout=10, **kw)
        assert r.status_code == want, f"{method} {url}: want {want}, got {r.status_code} {r.text[:300]}"
        check_response(spec, method, path, r)
        if path == "/healthz":
            assert len(r.json()["per_core"]) == r.json()["cores"]
        if path == "/metrics":
            assert "# TYPE sfumato_sessions gauge" in r.text
        if r.status_code == 201:
            loc = r.headers["location"]
            assert re.fullmatch(rf"/{path.split('/')[1]}/conn/[^/]+", loc), loc
            created.append((f"/{path.split('/')[1]}/conn/{{id}}", urljoin(base + "/", loc)))
        seen.add((method, path))
    assert dev_server.health()["sessions"] == 4
    for spec_path, loc in created:
        r = httpx.patch(loc, content=TRICKLE_FRAG, headers={"Content-Type": TRICKLE_CT}, timeout=10)
        assert r.status_code == 204, (loc, r.status_code, r.text)
        check_response(spec, "PATCH", spec_path, r)
        r = httpx.patch(loc, content=RESTART_FRAG, headers={"Content-Type": TRICKLE_CT, "If-Match": "*"}, timeout=10)
        assert r.status_code == 200 and "a=ice-ufrag:" in r.text and r.headers.get("etag"), (loc, r.status_code, r.text)
        check_response(spec, "PATCH", spec_path, r)
        r = httpx.delete(loc, timeout=10)
        assert r.status_code == 200, (loc, r.status_code, r.text)
        check_response(spec, "DELETE", spec_path, r)
        seen |= {("PATCH", spec_path), ("DELETE", spec_path)}
    assert dev_server.health()["sessions"] == 0
    untested = ROUTES - seen - {("GET", "/"), ("GET", "/openapi.json")} - CLUSTER_ROUTES  # those: cluster test below
    assert not untested, f"no well-formed request for {sorted(untested)}: add one to well_formed()"


def test_options_on_every_path_is_the_documented_preflight(dev_server, spec):
    for path in spec["paths"]:
        url = dev_server.base_url + path.replace("{kind}", "whip").replace("{room}", "r").replace("{node}", "n").replace("{id}", "x")
        r = httpx.options(url, headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": "content-type, authorization"}, timeout=10)
        assert r.status_code == 204, (path, r.status_code)
        check_response(spec, "OPTIONS", path, r)
        assert "authorization" in r.headers["access-control-allow-headers"].lower(), r.headers
        for m in ("POST", "DELETE", "PATCH"):
            assert m in r.headers["access-control-allow-methods"], r.headers
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"location", "etag", "link"} <= exposed, r.headers


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/token/whip", "/whip/r", "/whep/endpoint", "/whip/conn/x", "/whep/conn/n/x"])
def test_undocumented_method_on_a_known_path_is_405(dev_server, spec, path):
    r = httpx.put(dev_server.base_url + path, content=b"x", timeout=10)
    assert r.status_code == 405, (path, r.status_code, r.text)
    doc = r.json()
    assert doc["status"] is False and doc["error"] == "METHOD_NOT_ALLOWED", doc
    assert not schema_errors(spec, {"$ref": "#/components/schemas/Error"}, doc)


def test_documented_errors(secure_server, spec):
    """Provokes every documented 4xx in secure mode and checks each answer against the spec."""
    base = secure_server.base_url
    room = "oas-err"
    big = "v=0\r\n" + "a" * 70000
    sdp = {"whip": asyncio.run(offer_sdp("whip")), "whep": asyncio.run(offer_sdp("whep"))}
    own = {"whip": token(base, "whip", room, SECRET), "whep": token(base, "whep", room, SECRET)}
    other = {"whip": own["whep"], "whep": own["whip"]}  # valid, but the wrong kind / not the owner

    def auth(t: Optional[str], ctype: Optional[str] = SDP_CT) -> dict:
        h = {"Content-Type": ctype} if ctype else {}
        return {**h, "Authorization": f"Bearer {t}"} if t else h

    # a live publisher and a live viewer, owned by own[kind]
    loc = {}
    for kind in ("whip", "whep"):
        r = httpx.post(f"{base}/{kind}/{room}", content=sdp[kind], headers=auth(own[kind]), timeout=10)
        assert r.status_code == 201, r.text
        check_response(spec, "POST", f"/{kind}/{{room}}", r)
        loc[kind] = urljoin(base + "/", r.headers["location"])

    cases: list[tuple[str, str, str, dict, int]] = [  # method, spec path, url, httpx kwargs, status
        ("POST", "/token/{kind}", "/token/whip", {"json": {"room": room}}, 401),
        ("POST", "/token/{kind}", "/token/whip", {"json": {"room": room}, "headers": auth("wrong", None)}, 401),
        ("POST", "/token/{kind}", "/token/nope", {"json": {"room": room}, "headers": auth(SECRET, None)}, 404),
        ("POST", "/token/{kind}", "/token/whip", {"content": b"{", "headers": auth(SECRET, None)}, 400),
        ("POST", "/token/{kind}", "/token/whip", {"json": {"room": "a b"}, "headers": auth(SECRET, None)}, 400),
        ("POST", "/token/{kind}", "/token/whip", {"json": {"room": room, "ttl": 0}, "headers": auth(SECRET, None)}, 400),
        ("POST", "/token/{kind}", "/token/whip", {"content": b" " * 70000, "headers": auth(SECRET, None)}, 413),
    ]
    for kind in ("whip", "whep"):
        for seg in ("{room}", "endpoint"):
            path, url = f"/{kind}/{seg}", f"/{kind}/{room if seg == '{room}' else seg}"
            cases += [
                ("POST", path, url, {"content": sdp[kind], "headers": auth(None)}, 401),
                ("POST", path, url, {"content": sdp[kind], "headers": auth("x.y.z")}, 401),
                ("POST", path, url, {"content": sdp[kind], "headers": auth(other[kind])}, 403),
                ("POST", path, url, {"content": "hello", "headers": auth(own[kind])}, 400),
                ("POST", path, url, {"content": sdp[kind], "headers": auth(own[kind], "text/plain")}, 415),
                ("POST", path, url, {"content": big, "headers": auth(own[kind])}, 413),
            ]
            if seg == "{room}":
                cases.append(("POST", path, f"/{kind}/elsewhere", {"content": sdp[kind], "headers": auth(own[kind])}, 403))
            if kind == "whip":  # the room already has its publisher
                cases.append(("POST", path, url, {"content": sdp[kind], "headers": auth(own[kind])}, 409))
        path, frag = f"/{kind}/conn/{{id}}", TRICKLE_FRAG
        cases += [
            ("DELETE", path, loc[kind], {}, 401),
            ("DELETE", path, loc[kind], {"headers": auth(other[kind], None)}, 403),
            ("DELETE", path, f"/{kind}/conn/doesnotexist", {"headers": auth(own[kind], None)}, 404),
            ("PATCH", path, loc[kind], {"content": frag, "headers": auth(None, TRICKLE_CT)}, 401),
            ("PATCH", path, loc[kind], {"content": frag, "headers": auth(other[kind], TRICKLE_CT)}, 403),
            ("PATCH", path, f"/{kind}/conn/doesnotexist", {"content": frag, "headers": auth(own[kind], TRICKLE_CT)}, 404),
            ("PATCH", path, loc[kind], {"content": frag, "headers": auth(own[kind], SDP_CT)}, 415),
            ("PATCH", path, loc[kind], {"content": "a" * 70000, "headers": auth(own[kind], TRICKLE_CT)}, 413),
            ("PATCH", path, loc[kind], {"content": "hello", "headers": auth(own[kind], TRICKLE_CT)}, 400),
            ("PATCH", path, loc[kind], {"content": frag, "headers": {**auth(own[kind], TRICKLE_CT), "If-Match": '"stale"'}}, 412),
        ]
    covered = set()
    for method, path, url, kw, want in cases:
        r = httpx.request(method, urljoin(base + "/", url), timeout=10, **kw)
        assert r.status_code == want, f"{method} {url}: want {want}, got {r.status_code} {r.text[:300]}"
        check_response(spec, method, path, r)
        covered.add((method, path, str(want)))
    for kind in ("whip", "whep"):
        r = httpx.delete(loc[kind], headers=auth(own[kind], None), timeout=10)
        assert r.status_code == 200, r.text
        check_response(spec, "DELETE", f"/{kind}/conn/{{id}}", r)
    assert secure_server.health()["sessions"] == 0

    # a standalone server has no other node: the node routes answer 404 (all of their 4xx: the cluster test)
    for kind in ("whip", "whep"):
        for method in ("DELETE", "PATCH"):
            kw = {"content": TRICKLE_FRAG, "headers": auth(own[kind], TRICKLE_CT)} if method == "PATCH" else {}
            r = httpx.request(method, f"{base}/{kind}/conn/somenode/{'0' * 32}", timeout=10, **kw)
            assert r.status_code == 404, (method, kind, r.status_code, r.text)
            check_response(spec, method, f"/{kind}/conn/{{node}}/{{id}}", r)

    # every documented 4xx was provoked (500/503 need a broken server); cluster routes: the cluster test
    for method, path, op in operations(spec):
        for code in op["responses"]:
            if code.startswith("4") and (method, path) not in CLUSTER_ROUTES:
                assert (method, path, code) in covered, f"documented {method} {path} {code} is never provoked here"


# ------------------------------------------------------- needs the route patch ---


def test_served_openapi_equals_the_file_needs_route_patch(dev_server, spec):
    """GET /openapi.json is docs/openapi.json byte for byte (include_str!): lead's route patch."""
    r = httpx.get(f"{dev_server.base_url}/openapi.json", timeout=10)
    assert r.status_code != 404, "GET /openapi.json is 404: apply the route patch (/tmp/demo-wiring.patch)"
    assert r.status_code == 200, (r.status_code, r.text[:300])
    check_response(spec, "GET", "/openapi.json", r)
    assert r.content == SPEC_FILE.read_bytes(), "served /openapi.json differs from docs/openapi.json: rebuild the server"
    assert r.json() == spec


def test_served_demo_page_equals_the_file_needs_route_patch(dev_server, spec):
    """GET / is control/assets/index.html byte for byte (include_str!): lead's route patch."""
    r = httpx.get(f"{dev_server.base_url}/", timeout=10)
    assert r.status_code != 404, "GET / is 404: apply the route patch (/tmp/demo-wiring.patch)"
    assert r.status_code == 200, (r.status_code, r.text[:300])
    check_response(spec, "GET", "/", r)
    assert r.content == DEMO_PAGE.read_bytes(), "served / differs from control/assets/index.html: rebuild the server"
    for path in ("/", "/openapi.json"):
        r = httpx.post(dev_server.base_url + path, content=b"x", timeout=10)
        assert r.status_code == 405, (path, r.status_code)


# ------------------------------------------------------------- cluster routes ---


class MediaNode:
    """One `sfumato media` node on loopback (`--cores 1`), secure mode."""

    def __init__(self, name: str, zone: str, secret: str, seeds: tuple = (), extra: tuple = ()):
        self.name, self.zone = name, zone
        self.http_port = free_tcp_port()
        self.quic_port = free_udp_range(1, exclude={self.http_port})
        self.webrtc_port = free_udp_range(1, exclude={self.http_port, self.quic_port})
        fd, log = tempfile.mkstemp(prefix=f"sfumato-oas-{name}-", suffix=".log")
        self.log_path = Path(log)
        cmd = [str(server_binary()), "media", "--node-id", name, "--zone", zone, "--cores", "1", "--no-pin",
               "--http-addr", "127.0.0.1", "--http-port", str(self.http_port), "--webrtc-port", str(self.webrtc_port),
               "--webrtc-ips", "127.0.0.1", "--rtmp-port", "0", "--quic-port", str(self.quic_port),
               "--advertise-ip", "127.0.0.1", "--secret", secret, *extra]
        if seeds:
            cmd += ["--seeds", ",".join(seeds)]
        env = dict(os.environ, RUST_LOG="info,str0m=warn", NO_COLOR="1")
        env.pop("SFUMATO_SECRET", None)
        with os.fdopen(fd, "wb") as f:
            f.write(("$ " + " ".join(cmd) + "\n").encode())
            f.flush()
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def quic(self) -> str:
        return f"127.0.0.1:{self.quic_port}"

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=5).json()

    def wait(self, what: str, ok, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
            try:
                if ok():
                    return
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            assert time.monotonic() < deadline, f"{self.name}: {what} not within {timeout}s:\n{self.log_tail()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def cluster():
    """a (zone z1, the seed) and b (zone z2), linked; c: a node of its own with `--max-sessions 1`."""
    secret = "oas-cluster-" + secrets.token_hex(6)
    nodes = []
    try:
        a = MediaNode("a", "z1", secret)
        nodes.append(a)
        b = MediaNode("b", "z2", secret, seeds=(a.quic,))
        nodes.append(b)
        c = MediaNode("c", "z1", secret, extra=("--max-sessions", "1"))
        nodes.append(c)
        for n in (a, b):
            n.wait("a live link to the other node",
                   lambda n=n: any(m["status"] == "alive" and not m["is_self"] for m in n.health()["cluster"]["nodes"]))
        c.wait("healthy", lambda: c.health()["status"] == "ok")
        yield a, b, c, secret
    finally:
        for n in nodes:
            n.stop()


def test_cluster_routes_answer_as_documented(cluster, spec):
    """Two `sfumato media` nodes: sessions placed through a gateway (`X-Sfumato-Zone`), their
    `/{kind}/conn/{node}/{id}` resources, and every documented 4xx of those routes, plus the cluster-only
    errors (BAD_ZONE, NO_CAPACITY, NODE_UNAVAILABLE) and the `cluster` object of /healthz."""
    a, b, c, secret = cluster
    try:
        _cluster_routes(a, b, c, secret, spec)
    except AssertionError as e:
        logs = "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in (a, b, c))
        raise AssertionError(f"{e}\n{logs}") from None


def _cluster_routes(a: MediaNode, b: MediaNode, c: MediaNode, secret: str, spec: dict) -> None:
    r = httpx.get(f"{a.url}/healthz", timeout=10)
    check_response(spec, "GET", "/healthz", r)
    assert r.json()["cluster"]["node_id"] == "a" and r.json()["cluster"]["zone"] == "z1", r.json()["cluster"]
    room = "oas-cluster"
    sdp = {"whip": asyncio.run(offer_sdp("whip")), "whep": asyncio.run(offer_sdp("whep"))}
    own = {k: token(a.url, k, room, secret) for k in ("whip", "whep")}
    other = {"whip": own["whep"], "whep": own["whip"]}

    def auth(t: Optional[str], ctype: Optional[str] = SDP_CT, zone: Optional[str] = None) -> dict:
        h = {"Content-Type": ctype} if ctype else {}
        if zone is not None:
            h["X-Sfumato-Zone"] = zone
        return {**h, "Authorization": f"Bearer {t}"} if t else h

    covered = set()

    def expect(method: str, path: str, url: str, want: int, **kw) -> httpx.Response:
        r = httpx.request(method, urljoin(a.url + "/", url), timeout=15, **kw)
        assert r.status_code == want, f"{method} {url}: want {want}, got {r.status_code} {r.text[:300]}"
        check_response(spec, method, path, r)
        covered.add((method, path, str(want)))
        return r

    # Through gateway a, zone z2: both sessions are placed on b and relayed.
    loc = {}
    for kind in ("whip", "whep"):
        r = expect("POST", f"/{kind}/{{room}}", f"/{kind}/{room}", 201, content=sdp[kind], headers=auth(own[kind], zone="z2"))
        assert r.headers.get("x-sfumato-node") == "b", r.headers
        assert re.fullmatch(rf"/{kind}/conn/b/[0-9a-f]{{32}}", r.headers["location"]), r.headers["location"]
        assert "x-sfumato-node" in r.headers["access-control-expose-headers"].lower(), r.headers
        loc[kind] = r.headers["location"]
    assert b.health()["sessions"] == 2 and a.health()["sessions"] == 0

    # ... and on a itself (its own zone): plain Location, no X-Sfumato-Node; reachable as /{kind}/conn/a/{id} too.
    local = {}
    for kind in ("whip", "whep"):
        tok = token(a.url, kind, f"{room}-a", secret)
        r = expect("POST", f"/{kind}/{{room}}", f"/{kind}/{room}-a", 201, content=sdp[kind], headers=auth(tok, zone="z1"))
        assert "x-sfumato-node" not in r.headers, r.headers
        assert re.fullmatch(rf"/{kind}/conn/[0-9a-f]{{32}}", r.headers["location"]), r.headers["location"]
        local[kind] = (r.headers["location"].replace("/conn/", "/conn/a/"), tok)

    # /endpoint: room from the token, placed the same way
    for kind in ("whip", "whep"):
        tok = token(a.url, kind, f"{room}-ep", secret)
        r = expect("POST", f"/{kind}/endpoint", f"/{kind}/endpoint", 201, content=sdp[kind], headers=auth(tok, zone="z2"))
        assert r.headers.get("x-sfumato-node") == "b", r.headers
        expect("DELETE", f"/{kind}/conn/{{node}}/{{id}}", r.headers["location"], 200, headers=auth(tok, None))
        # 400 BAD_ZONE
        r = expect("POST", f"/{kind}/endpoint", f"/{kind}/endpoint", 400, content=sdp[kind], headers=auth(tok, zone="no zone!"))
        assert r.json()["error"] == "BAD_ZONE", r.text
        r = expect("POST", f"/{kind}/{{room}}", f"/{kind}/{room}", 400, content=sdp[kind], headers=auth(own[kind], zone="x" * 65))
        assert r.json()["error"] == "BAD_ZONE", r.text

    for kind in ("whip", "whep"):
        path, frag, l = f"/{kind}/conn/{{node}}/{{id}}", TRICKLE_FRAG, loc[kind]
        expect("DELETE", path, l, 401)  # b: TOKEN_MISSING
        expect("DELETE", path, l, 403, headers=auth(other[kind], None))  # b: TOKEN_NOT_OWNER
        expect("DELETE", path, f"/{kind}/conn/b/not-an-id", 404, headers=auth(own[kind], None))  # the gateway
        expect("DELETE", path, f"/{kind}/conn/b/{'0' * 32}", 404, headers=auth(own[kind], None))  # b
        expect("PATCH", path, l, 401, content=frag, headers=auth(None, TRICKLE_CT))
        expect("PATCH", path, l, 403, content=frag, headers=auth(other[kind], TRICKLE_CT))
        expect("PATCH", path, f"/{kind}/conn/b/{'0' * 32}", 404, content=frag, headers=auth(own[kind], TRICKLE_CT))
        expect("PATCH", path, l, 415, content=frag, headers=auth(own[kind], SDP_CT))
        expect("PATCH", path, l, 413, content="a" * 70000, headers=auth(own[kind], TRICKLE_CT))
        expect("PATCH", path, l, 400, content="hello", headers=auth(own[kind], TRICKLE_CT))
        r = expect("DELETE", path, f"/{kind}/conn/ghost/{'0' * 32}", 503, headers=auth(own[kind], None))
        assert r.json()["error"] == "NODE_UNAVAILABLE", r.text
        # If-Match is only checked when the session is on the gateway itself
        lloc, ltok = local[kind]
        expect("PATCH", path, lloc, 412, content=frag, headers={**auth(ltok, TRICKLE_CT), "If-Match": '"stale"'})
        expect("PATCH", path, lloc, 204, content=frag, headers=auth(ltok, TRICKLE_CT))
        expect("DELETE", path, lloc, 200, headers=auth(ltok, None))
        # well-formed, relayed to b
        expect("PATCH", path, l, 204, content=frag, headers=auth(own[kind], TRICKLE_CT))
        r = expect("PATCH", path, l, 200, content=RESTART_FRAG, headers={**auth(own[kind], TRICKLE_CT), "If-Match": "*"})
        assert "a=ice-ufrag:" in r.text and r.headers.get("etag"), r.text
        expect("DELETE", path, l, 200, headers=auth(own[kind], None))
    a.wait("sessions gone", lambda: a.health()["sessions"] == 0, timeout=5)
    b.wait("sessions gone", lambda: b.health()["sessions"] == 0, timeout=5)

    # every documented 4xx of the node routes was provoked above
    for method, path, op in operations(spec):
        for code in op["responses"]:
            if code.startswith("4") and (method, path) in CLUSTER_ROUTES:
                assert (method, path, code) in covered, f"documented {method} {path} {code} is never provoked here"

    # 503 NO_CAPACITY: c takes one session (`--max-sessions 1`), then refuses the next once its load shows it
    tok = token(c.url, "whep", room, secret)
    r = httpx.post(f"{c.url}/whep/{room}", content=sdp["whep"], headers=auth(tok), timeout=10)
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(f"{c.url}/whep/{room}", content=sdp["whep"], headers=auth(tok), timeout=10)
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        assert r.status_code == 201, r.text
        httpx.delete(c.url + r.headers["location"], headers=auth(tok, None), timeout=10)
        time.sleep(0.3)
    assert r.status_code == 503 and r.json()["error"] == "NO_CAPACITY", (r.status_code, r.text)
    check_response(spec, "POST", "/whep/{room}", r)
