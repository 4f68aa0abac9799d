"""`sfumato standalone --config FILE.toml`: settings from the file, precedence command line > SFUMATO_* > file >
default, and invalid files refused with a clear message and exit code 2.

These tests start the binary themselves (conftest's `server` fixture always passes --http-port on the command
line, which is what some of them must not do).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO_ROOT, STARTUP_TIMEOUT, _stop, free_tcp_port, free_udp_range, server_binary

EXAMPLE = REPO_ROOT / "docs" / "sfumato.example.toml"


def clean_env(**extra: str) -> dict:
    """The environment without any SFUMATO_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFUMATO_")}
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


class Node:
    """A sfumato process started with explicit arguments; stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [str(server_binary()), "standalone", *args],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT,
            )

    def wait_healthy(self, port: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"no /healthz on port {port} within {STARTUP_TIMEOUT}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        exited, _ = _stop(self.proc)
        assert exited, "did not exit after SIGTERM"


@pytest.fixture
def node(tmp_path):
    started: list[Node] = []

    def start(args: list[str], env: dict | None = None) -> Node:
        n = Node(args, env if env is not None else clean_env(), tmp_path / f"node{len(started)}.log")
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def write_toml(tmp_path: Path, text: str, name: str = "sfumato.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def ports() -> tuple[int, int]:
    http = free_tcp_port()
    return http, free_udp_range(2, exclude={http})


def token_status(port: int, secret: str) -> int:
    r = httpx.post(f"http://127.0.0.1:{port}/token/whip", json={"room": "r"},
                   headers={"Authorization": f"Bearer {secret}"}, timeout=5)
    return r.status_code


def test_settings_come_from_the_file(node, tmp_path):
    http, webrtc = ports()
    cfg = write_toml(tmp_path, f"""
http-addr = "127.0.0.1"
http-port = {http}
webrtc-port = {webrtc}
webrtc-ips = "127.0.0.1"
cores = 2
rtmp-port = 0
secret = "from-the-file"
log-format = "json"
ice-server = ["stun:stun.example.org", "turns:turn.example.org:5349?transport=tcp"]
ice-server-username = "u"
ice-server-credential = "c"
""")
    n = node(["--config", str(cfg)])
    n.wait_healthy(http)
    health = httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=5).json()
    assert health["cores"] == 2
    assert token_status(http, "from-the-file") == 200, "secret from the file"
    assert token_status(http, "insecure") == 401, "secure mode: the default secret is not it"
    r = httpx.options(f"http://127.0.0.1:{http}/whip/endpoint", timeout=5)
    assert r.headers.get_list("link") == [
        '<stun:stun.example.org>; rel="ice-server"',
        '<turns:turn.example.org:5349?transport=tcp>; rel="ice-server"; username="u"; credential="c"; '
        'credential-type="password"',
    ], r.headers
    first = n.log.read_text().splitlines()[0]
    assert json.loads(first)["level"], f"log-format = json from the file: {first!r}"


def test_command_line_and_environment_override_the_file(node, tmp_path):
    file_port, webrtc = ports()
    cli_port = free_tcp_port()
    cfg = write_toml(tmp_path, f"""
http-addr = "127.0.0.1"
http-port = {file_port}
webrtc-port = {webrtc}
cores = 2
rtmp-port = 0
secret = "file-secret"
""")
    env = clean_env(SFUMATO_CONFIG=str(cfg), SFUMATO_SECRET="env-secret")
    n = node(["--http-port", str(cli_port)], env)  # the file comes from SFUMATO_CONFIG
    n.wait_healthy(cli_port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{file_port}/healthz", timeout=2)
    assert token_status(cli_port, "env-secret") == 200, "SFUMATO_SECRET beats the file"
    assert token_status(cli_port, "file-secret") == 401


def test_the_example_file_is_accepted(node, tmp_path):
    """docs/sfumato.example.toml as shipped, and with every key uncommented (ports and addresses overridden;
    nats-url/hook-url left out: no broker here)."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        body = line[2:] if line.startswith("# ") else ""
        key = body.split(" = ")[0] if " = " in body else ""
        if key and all(c.islower() or c == "-" for c in key):
            if key not in ("nats-url", "hook-url"):
                lines.append(body)
        else:
            lines.append(line)
    full = write_toml(tmp_path, "\n".join(lines) + "\n", "full.toml")
    assert "ice-server-credential" in full.read_text()
    for cfg in (EXAMPLE, full):
        http, webrtc = ports()
        n = node(["--config", str(cfg), "--http-addr", "127.0.0.1", "--http-port", str(http), "--webrtc-port",
                  str(webrtc), "--webrtc-ips", "127.0.0.1", "--rtmp-port", "0", "--cores", "2"])
        n.wait_healthy(http)
        n.stop()


INVALID = {
    "syntax": ("http-port = = 3\n", ["line 1"]),
    "unknown-key": ("http_port = 3000\n", ["http_port", "unknown", "kebab-case"]),
    "wrong-type": ("cores = 2\nhttp-port = \"three thousand\"\n", ["line 2", "http-port", "invalid type"]),
    "out-of-range": ("webrtc-port = 70000\n", ["webrtc-port"]),
    "bad-ip": ("webrtc-ips = [\"127.0.0.1\", \"not-an-ip\"]\n", ["webrtc-ips", "not-an-ip"]),
    "bad-ice-url": ("ice-server = [\"http://stun.example.org\"]\n", ["ice-server", "stun:"]),
    "secret-type": ("secret = 31337\n", ["secret", "invalid type"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_file_exits_2_with_a_clear_message(tmp_path, case):
    text, needles = INVALID[case]
    cfg = write_toml(tmp_path, text)
    r = subprocess.run([str(server_binary()), "standalone", "--config", str(cfg)], env=clean_env(),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert str(cfg) in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)
    assert "panicked" not in r.stderr, r.stderr
    assert "31337" not in r.stderr, "secret values are never echoed"


def test_missing_file_exits_2(tmp_path):
    missing = tmp_path / "nope.toml"
    r = subprocess.run([str(server_binary()), "standalone", "--config", str(missing)], env=clean_env(),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert str(missing) in r.stderr and "cannot read" in r.stderr, r.stderr


def test_help_explains_every_flag_and_the_precedence():
    r = subprocess.run([str(server_binary()), "standalone", "--help"], env=clean_env(), capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    for flag in ("--config", "--ice-server", "--ice-server-username", "--ice-server-credential", "--http-port",
                 "--secret", "--log-format", "--no-pin"):
        assert flag in r.stdout, flag
    # every flag but --help names its environment variable
    entries = [e for e in r.stdout.split("\n      --")[1:]]
    assert len(entries) >= 18, r.stdout
    for e in entries:
        assert "[env: SFUMATO_" in e, e
    assert "Precedence: command line > environment > file > default" in r.stdout
