"""docs/openapi.json against the live server, so the spec and control/src/http_api.rs stay in sync.

- the spec is valid OpenAPI 3.0 (openapi-spec-validator when installed, plus structural checks here:
  every $ref resolves, every example validates against its schema);
- the spec lists exactly ROUTES (below, taken from `handle` in control/src/http_api.rs) plus OPTIONS on
  every path, and a scan of http_api.rs finds no route segment or error code the spec does not know;
- every documented operation, sent a well-formed request, answers a documented status whose body and
  headers match the spec; documented errors (401/403/404/409/413/415...) are provoked and checked the same
  way, their `error` codes among the response's documented examples;
- GET /openapi.json serves this very file and GET / the demo page (control/assets/index.html).
  Those two need the lead's route patch (/tmp/demo-wiring.patch): the tests named *_needs_route_patch.

When you add a route: add it to ROUTES, to docs/openapi.json, and a well-formed request to
well_formed_requests().
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urljoin

import httpx
import pytest

from webrtc_clients import SDP_CT, TRICKLE_CT, SineAudioTrack, SyntheticVideoTrack, new_pc

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = REPO_ROOT / "docs" / "openapi.json"
HTTP_API_RS = REPO_ROOT / "control" / "src" / "http_api.rs"
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
}
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

    codes = set(re.findall(r'StatusCode::\w+,\s*"([A-Z][A-Z0-9_]+)"', src))
    codes |= set(re.findall(r'AuthError::\w+(?:\([^)]*\))?\s*=>\s*"([A-Z][A-Z0-9_]+)"', AUTH_RS.read_text()))
    assert len(codes) >= 10, f"error-code scan found only {sorted(codes)}: update this scan"
    enum = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert codes - enum == set(), f"error codes the server sends that the Error schema lacks: {sorted(codes - enum)}"
    assert enum - codes == set(), f"error codes in the Error schema the server never sends: {sorted(enum - codes)}"


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
    untested = ROUTES - seen - {("GET", "/"), ("GET", "/openapi.json")}
    assert not untested, f"no well-formed request for {sorted(untested)}: add one to well_formed()"


def test_options_on_every_path_is_the_documented_preflight(dev_server, spec):
    for path in spec["paths"]:
        url = dev_server.base_url + path.replace("{kind}", "whip").replace("{room}", "r").replace("{id}", "x")
        r = httpx.options(url, headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": "content-type, authorization"}, timeout=10)
        assert r.status_code == 204, (path, r.status_code)
        check_response(spec, "OPTIONS", path, r)
        assert "authorization" in r.headers["access-control-allow-headers"].lower(), r.headers
        for m in ("POST", "DELETE", "PATCH"):
            assert m in r.headers["access-control-allow-methods"], r.headers
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"location", "etag", "link"} <= exposed, r.headers


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/token/whip", "/whip/r", "/whep/endpoint", "/whip/conn/x"])
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

    # every documented 4xx was provoked (500/503 need a broken server)
    for method, path, op in operations(spec):
        for code in op["responses"]:
            if code.startswith("4"):
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
