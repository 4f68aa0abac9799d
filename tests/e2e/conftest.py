"""Fixtures for sfumato end-to-end tests.

`server` starts a fresh `sfumato standalone --cores 2` on free ports for each
test and stops it with SIGTERM afterwards (the test fails if it does not exit
within 10 s).  The binary is $SFUMATO_BIN, else target/release/sfumato.
On any failure the tail of the server's log is attached to the report.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
sys.path.insert(0, str(E2E_DIR))  # make webrtc_clients importable from tests

CORES = 2
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = int(os.environ.get("SFUMATO_LOG_TAIL", "300"))


def server_binary() -> Path:
    env = os.environ.get("SFUMATO_BIN")
    return Path(env) if env else REPO_ROOT / "target" / "release" / "sfumato"


@dataclass
class Server:
    base_url: str
    http_port: int
    webrtc_port: int  # core i listens on UDP webrtc_port + i
    cores: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def media_ports(self) -> list[int]:
        return [self.webrtc_port + i for i in range(self.cores)]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_text().splitlines()
        head = f"[server log {self.log_path}, {len(text)} lines" + (f", last {lines}]" if len(text) > lines else "]")
        return "\n".join([head] + text[-lines:])

    def health(self) -> dict:
        r = httpx.get(f"{self.base_url}/healthz", timeout=5)
        r.raise_for_status()
        return r.json()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def free_udp_range(count: int, exclude: set[int] = frozenset()) -> int:
    """A base port B such that UDP B..B+count-1 are all free right now."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 60000 - count)
        if any(p in exclude for p in range(base, base + count)):
            continue
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports found")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    item.__dict__.setdefault("_sfumato_reports", {})[rep.when] = rep
    srv = getattr(item, "_sfumato_server", None)
    if srv is not None and rep.failed:
        rep.sections.append((f"sfumato server log ({rep.when})", srv.log_tail()))


def _stop(proc: subprocess.Popen) -> tuple[bool, float]:
    """SIGTERM, wait; returns (exited_in_time, seconds)."""
    t0 = time.monotonic()
    if proc.poll() is not None:
        return True, 0.0
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
        return True, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return False, time.monotonic() - t0


@pytest.fixture
def server(request):
    binary = server_binary()
    if not binary.exists():
        pytest.fail(f"server binary {binary} not found: run `cargo build --release` or set SFUMATO_BIN", pytrace=False)

    http_port = free_tcp_port()
    webrtc_port = free_udp_range(CORES, exclude={http_port})
    fd, log_name = tempfile.mkstemp(prefix=f"sfumato-{request.node.name[:40]}-".replace("/", "_"), suffix=".log")
    log_path = Path(log_name)
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("NO_COLOR", "1")  # plain log file
    cmd = [
        str(binary),
        "standalone",
        "--http-port", str(http_port),
        "--webrtc-port", str(webrtc_port),
        "--cores", str(CORES),
    ]
    # @pytest.mark.server_args("--flag", "value", ...) adds arguments for one test.
    marker = request.node.get_closest_marker("server_args")
    if marker is not None:
        cmd += [str(a) for a in marker.args]
    with os.fdopen(fd, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)

    srv = Server(
        base_url=f"http://127.0.0.1:{http_port}",
        http_port=http_port,
        webrtc_port=webrtc_port,
        cores=CORES,
        proc=proc,
        log_path=log_path,
    )
    request.node._sfumato_server = srv

    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_err = None
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sfumato exited with code {proc.returncode} during startup", pytrace=False)
        try:
            r = httpx.get(f"{srv.base_url}/healthz", timeout=1)
            if r.status_code == 200:
                break
            last_err = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last_err = repr(e)
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"/healthz not 200 within {STARTUP_TIMEOUT}s (last: {last_err})", pytrace=False)
        time.sleep(0.1)

    yield srv

    exited, took = _stop(proc)
    # the log is kept when something failed (its path is in the report), removed otherwise
    failed = any(r.failed for r in getattr(request.node, "_sfumato_reports", {}).values())
    if not exited:
        pytest.fail(f"sfumato did not exit within {STOP_TIMEOUT}s of SIGTERM (killed)", pytrace=False)
    if proc.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
        pytest.fail(f"sfumato exited with code {proc.returncode} after SIGTERM", pytrace=False)
    if not failed and not os.environ.get("SFUMATO_KEEP_LOGS"):
        try:
            log_path.unlink()
        except OSError:
            pass
