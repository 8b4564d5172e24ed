"""The README's commands for each role, run as written (blocks marked ``<!-- role-commands: ROLE -->``).

What is not run, and why, is listed in ``NOT_RUN`` and said in the README under each block.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import ROOT, free_port, live_server, server_env

README = ROOT / "README.md"
BIN = Path(sys.executable).parent

#: lines of the role blocks the test does not run: the reason is in the README too
NOT_RUN = {
    "pip install": "installs into the environment (torch: minutes); the suite runs in the installed venv",
    "make serve": "its install is what CI's make test runs; tests/test_make_install.py runs the Makefile",
    "make test": "the suite itself; .ci/run runs it on CI (checked below)",
}


def role_commands(role: str) -> list[str]:
    """The command lines (comments stripped) of the fenced block after ``<!-- role-commands: ROLE -->``."""
    text = README.read_text()
    match = re.search(rf"<!-- role-commands: {re.escape(role)} -->\s*```bash\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no block marked role-commands: {role}"
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _runnable(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith(tuple(NOT_RUN))]


def _bash(lines: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXSN_CACHE_", "FLEXSN_SERVICE_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
                "COLUMNS": "200", "TRITON_INTERPRET": "1"})
    return env


def test_the_training_node_commands_run_as_written(tmp_path: Path) -> None:
    lines = role_commands("training-node")
    assert any(line.startswith("flexsn-cache warm") for line in lines) and "python train.py" in lines
    token = secrets.token_urlsafe(32)
    (tmp_path / "tokens").write_text(f"{token} build trainer\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".flexsn-token").write_text(token + "\n")
    job = tmp_path / "job"
    (job / "my_project").mkdir(parents=True)
    (job / "my_project" / "__init__.py").write_text("")
    (job / "my_project" / "models.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import torch
        import neurons
        from flexsn_core import FlexSN

        def build_model():
            return torch.nn.Sequential(torch.nn.Linear(8, 8), FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache"))
    """))
    (job / "train.py").write_text(textwrap.dedent("""
        import json
        import torch
        from flexsn_core import counters
        from my_project.models import build_model

        model = build_model()
        model(torch.randn(4, 2, 8)).sum().backward()
        print("counters", json.dumps(counters()))
    """))
    user = f"readme-{secrets.token_hex(4)}"
    mirror = Path(f"/tmp/{user}/flexsn")
    try:
        with live_server(tmp_path / "service", tokens=str(tmp_path / "tokens")) as server:
            # the one change: the service's real address for the README's placeholder host
            script = [line.replace("http://cache-host:8000", server.url) for line in _runnable(lines)]
            result = _bash(script, job, {**_base_env(home), "USER": user})
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"warmed 1/1 kernel\(s\) \(1 built by the service, 0 cached\)", result.stderr), result.stderr
        seen = json.loads(re.search(r"^counters (.*)$", result.stdout, re.MULTILINE).group(1))
        assert seen["local_hits"] >= 1 and seen["remote_misses"] == 0, seen  # warm made train.py a local hit
        assert re.search(r"requests\s+\d+ hits, \d+ misses, hit rate", result.stdout), result.stdout
        assert re.search(r"lif_hard .*(\d+ s ago|just now)", result.stdout), result.stdout
        assert (mirror / "artifacts").is_dir()
    finally:
        shutil.rmtree(mirror.parent, ignore_errors=True)


@contextlib.contextmanager
def _serve_like_make(cwd: Path, port: int) -> Iterator[None]:
    """What ``make serve`` runs after its install: ``.venv/bin/flexsn-cache serve``, from the clone's root."""
    recipe = re.search(r"^serve: install\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe and recipe.group(1) == "$(VENV)/bin/flexsn-cache serve", "the test starts what make serve starts"
    env = {**server_env(cwd), "FLEXSN_SERVICE_PORT": str(port)}
    env.pop("FLEXSN_SERVICE_STORE")  # make serve's default: ./flexsn-store
    with open(cwd / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(BIN / "flexsn-cache"), "serve"], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (cwd / "serve.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, (cwd / "serve.log").read_text()
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_service_commands_run_as_written(tmp_path: Path) -> None:
    lines = role_commands("service")
    assert lines[0].startswith("make serve")
    runnable = _runnable(lines)
    assert [line.split()[1] for line in runnable] == ["stats", "verify", "gc"]
    # port 8000 as written; if something on this machine holds it, a free port in the lines instead
    port = 8000 if _port_free(8000) else free_port()
    script = [line.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for line in runnable]
    with _serve_like_make(tmp_path, port):
        result = _bash(script, tmp_path, _base_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hit rate" in result.stdout and "checked 0 blob(s), 0 manifest(s)" in result.stdout
    assert "0 -> 0 bytes" in result.stdout


def test_the_develop_command_is_what_ci_runs() -> None:
    assert role_commands("develop") == ["make test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci
    assert set(NOT_RUN) >= {" ".join(line.split()[:2]) for line in
                            role_commands("develop") + role_commands("service")[:1]}
