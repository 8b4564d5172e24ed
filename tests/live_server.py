"""Start the real service as a subprocess (uvicorn on a free port, a temp store)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    root: Path
    store: Path
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        """kill -9 the service: ``serve`` and its HTTP workers (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait_build(self, client: httpx.Client, build_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get(f"/v1/builds/{build_id}").json()
            if status["state"] in ("succeeded", "failed"):
                return status
            time.sleep(0.3)
        raise TimeoutError(f"build {build_id} did not finish in {timeout} s; log:\n{self.logs()[-3000:]}")


def server_env(root: Path, **settings: str) -> dict[str, str]:
    for sub in ("home", "tmp", "cwd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "FLEXSN_SERVICE_STORE": f"disk:{root / 'store'}",
        "FLEXSN_SERVICE_USE_GPU": "0",
        # One config (aligned + unaligned) keeps CI builds short.
        "FLEXSN_SERVICE_CONFIGS": "1024x4",
    }
    env.update({f"FLEXSN_SERVICE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextlib.contextmanager
def live_server(root: Path, extra_env: dict[str, str] | None = None, **settings: str) -> Iterator[Server]:
    """A service on a free port; ``settings`` become FLEXSN_SERVICE_* variables, ``extra_env`` is added as is."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**server_env(root, **settings), **(extra_env or {})}
    log = root / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flexsn_service.cli", "serve", "--port", str(port)],
            cwd=root / "cwd", env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, root, root / "store", log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.logs()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flexsn_client.cli", *args],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300,
    )
