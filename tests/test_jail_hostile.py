"""Hostile cores against the jail alone: the source check is OFF (FLEXSN_SERVICE_SOURCE_CHECK=0, test only).

Each core tries one thing, then raises with a report of what it got (a core
that merely *succeeded* would, with the temporary IR shim, be traced again
outside the jail). Every build must fail (or do no harm), the service must keep
serving, the store must be unchanged (same manifests, same blobs, no new
files) and the canary secret -- planted in the server's environment, its
tokens file and two files on the host -- must appear in no build status, log
tail or server log.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import textwrap
import time
from pathlib import Path

import neurons
import pytest
from live_server import Server, live_server

from flexsn_core import KernelSpec

SECRET = secrets.token_urlsafe(32)
MARK = os.urandom(6).hex()
SCRATCH_MB = 16


def _body(source: str) -> dict:
    return {"source": textwrap.dedent(source), "entry": "core", "num_inputs": 1, "num_states": 1, "num_outputs": 1}


def _honest(name: str) -> dict:
    model = neurons.MODELS[name]
    return KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs).to_dict()


class Env:
    """Everything the hostile cores aim at."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokens = root / "tokens.txt"
        self.builder = secrets.token_urlsafe(32)
        self.tokens.write_text(f"{self.builder} build builder\n{SECRET} admin operators\n")
        self.canary = root / "canary.txt"
        self.canary.write_text(SECRET)
        self.public = Path("/var/tmp") / f"flexsn-canary-{MARK}"  # world-readable on the host
        self.public.write_text(SECRET)
        self.public.chmod(0o644)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.daemon_file = Path("/tmp") / f"flexsn-daemon-{MARK}"
        self.host_pwned = Path("/tmp") / f"flexsn-pwned-{MARK}"


def _cores(env: Env, server: Server) -> dict[str, tuple[str, str]]:
    """name -> (source, a text the failed build's error must contain)."""
    store = server.store
    report = "raise RuntimeError('REPORT ' + repr(got)[:3000])"
    return {
        "read a canary file": (f"""
            def core(x, v):
                got = []
                for path in [{str(env.canary)!r}, {str(env.public)!r}, {str(env.tokens)!r}, "/etc/shadow"]:
                    try:
                        got.append(open(path).read())
                    except OSError as exc:
                        got.append(type(exc).__name__)
                {report}
        """, "REPORT"),
        "read the service's environment and tokens": (f"""
            import os
            def core(x, v):
                got = [dict(os.environ)]
                pids = ["self", "1", str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]
                for pid in pids:
                    for what in ("environ", "cmdline"):
                        try:
                            got.append(open(f"/proc/{{pid}}/{{what}}", "rb").read().decode(errors="replace"))
                        except OSError as exc:
                            got.append(type(exc).__name__)
                for path in [{str(env.tokens)!r}, "/run/secrets/flexsn_tokens"]:
                    try:
                        got.append(open(path).read())
                    except OSError as exc:
                        got.append(type(exc).__name__)
                {report}
        """, "REPORT"),
        "write outside scratch": (f"""
            import os
            def core(x, v):
                got = {{}}
                for path in [{str(store / 'pwned')!r}, {str(server.root / 'pwned')!r}, {str(env.host_pwned)!r},
                             "/pwned", "/usr/pwned", "/opt/flexsn/flexsn_core/pwned.py", "/proc/1/attr/current"]:
                    try:
                        with open(path, "w") as fh:
                            fh.write("x")
                        got[path] = "written"
                    except OSError as exc:
                        got[path] = type(exc).__name__
                {report}
        """, "REPORT"),
        "open sockets to the service and another loopback port": (f"""
            import socket
            def core(x, v):
                got = {{}}
                for host, port in [("127.0.0.1", {server.port}), ("127.0.0.1", {env.listener.getsockname()[1]}),
                                   ("::1", {server.port}), ("10.0.2.2", 80)]:
                    try:
                        socket.create_connection((host, port), timeout=2).close()
                        got[port] = "connected"
                    except OSError as exc:
                        got[port] = type(exc).__name__
                {report}
        """, "REPORT"),
        "fork 50 processes": ("""
            import os, time
            def core(x, v):
                forked = 0
                try:
                    for _ in range(50):
                        if os.fork() == 0:
                            time.sleep(60)
                            os._exit(0)
                        forked += 1
                except OSError:
                    pass
                raise RuntimeError(f"REPORT forked {forked}")
        """, "REPORT forked"),
        "allocate 4 GB over several processes": ("""
            import os, time
            def core(x, v):
                children = []
                for _ in range(10):  # 10 x 400 MB: each within its own address-space limit
                    pid = os.fork()
                    if pid == 0:
                        block = bytearray(400 << 20)
                        time.sleep(3)
                        os._exit(0)
                    children.append(pid)
                got = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in children]
                raise RuntimeError(f"REPORT {got}")
        """, ""),
        "write more than the scratch limit": (f"""
            def core(x, v):
                written = 0
                try:
                    with open("/tmp/big", "wb") as fh:
                        for _ in range({4 * SCRATCH_MB}):
                            fh.write(b"x" * (1 << 20))
                            written += 1
                except OSError as exc:
                    raise RuntimeError(f"REPORT stopped after {{written}} MB: {{exc}}")
                raise RuntimeError(f"REPORT wrote {{written}} MB")
        """, "REPORT stopped after"),
        "start a double-forked daemon": (f"""
            import os, sys
            def core(x, v):
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        code = "import time; time.sleep(20); open({str(env.daemon_file)!r}, 'w').write('x')"
                        os.execv(sys.executable, [sys.executable, "-c", code, "{MARK}"])
                    os._exit(0)
                raise RuntimeError("REPORT daemon started")
        """, "REPORT daemon started"),
        "open the store and rewrite a manifest": (f"""
            import os
            def core(x, v):
                got = []
                try:
                    for folder, _, files in os.walk({str(store)!r}):
                        for name in files:
                            with open(os.path.join(folder, name), "r+b") as fh:
                                fh.write(b"{{}}")
                            got.append(name)
                    got.append("walked")
                except OSError as exc:
                    got.append(type(exc).__name__)
                raise RuntimeError("REPORT " + repr(got))
        """, "REPORT"),
        "print a 1 MB line": ("""
            import os, sys
            def core(x, v):
                print("x" * (1 << 20))
                os.write(2, b"y" * (1 << 20))
                for fd in range(1, 20):  # forged events on whatever the events pipe is
                    try:
                        os.write(fd, b'{"event": "done"}\\n{"event": "progress", "stage": "' + b"z" * (1 << 20) + b'"}\\n')
                    except OSError:
                        pass
                raise RuntimeError("REPORT printed")
        """, "REPORT printed"),
        "loop forever": ("""
            def core(x, v):
                while True:
                    pass
        """, "did not finish within"),
    }


def _store_snapshot(server: Server, http) -> tuple:  # noqa: ANN001
    kernels = http.get("/v1/kernels").json()["items"]
    manifests = {k["key"]: http.get(f"/v1/kernels/{k['key']}").json() for k in kernels}
    blobs = {}
    for manifest in manifests.values():
        for entry in [manifest["source"], *manifest["binaries"]]:
            blobs[entry["sha256"]] = hashlib.sha256(http.get(f"/v1/blobs/{entry['sha256']}").content).hexdigest()
    files = sorted(str(p.relative_to(server.store)) for p in server.store.rglob("*")
                   if p.is_file() and p.relative_to(server.store).parts[0] != "work" and not p.name.startswith("cache.db"))
    return manifests, blobs, files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("jail-hostile")
    env = Env(root)
    extra = {"FLEXSN_TEST_SECRET": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET}
    try:
        with live_server(root, extra_env=extra, tokens=str(env.tokens), source_check="0", build_timeout_s="25",
                         build_memory_mb="512", build_scratch_mb=str(SCRATCH_MB)) as server:
            yield server, env
    finally:
        env.public.unlink(missing_ok=True)
        env.listener.close()


def test_hostile_cores_fail_in_the_jail_and_change_nothing(hostile) -> None:  # noqa: ANN001
    server, env = hostile
    with server.client(env.builder, timeout=300) as http:
        first = http.post("/v1/kernels", params={"wait": "true"}, json=_honest("lif_hard"))
        assert first.status_code == 200, first.text
        before = _store_snapshot(server, http)
        cores = _cores(env, server)
        started = {}
        for name, (source, _) in cores.items():
            response = http.post("/v1/kernels", json=_body(source))
            assert response.status_code == 202, (name, response.text)
            started[name] = (response.json()["build_id"], time.monotonic())
        statuses = {name: server.wait_build(http, build_id, timeout=400) for name, (build_id, _) in started.items()}
        daemon_started = started["start a double-forked daemon"][1]

        for name, status in statuses.items():
            assert status["state"] == "failed", (name, status)
            assert cores[name][1] in status["error"], (name, status["error"])
            assert all(len(line) <= 520 for line in status["log_tail"]), name
        forked = int(re.search(r"forked (\d+)", statuses["fork 50 processes"]["error"]).group(1))
        assert forked < 50
        assert "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" not in statuses["allocate 4 GB over several processes"]["error"]
        writes = statuses["write outside scratch"]["error"]
        assert "written" not in writes.replace(f"'{env.host_pwned}': 'written'", ""), writes  # only its own /tmp
        sockets = statuses["open sockets to the service and another loopback port"]["error"]
        assert "connected" not in sockets, sockets
        with pytest.raises(OSError):
            env.listener.accept()
        assert "walked" in statuses["open the store and rewrite a manifest"]["error"]  # it found nothing there

        # Nothing of a build survives it: no process, and 20 s later no file written by the daemon.
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                assert MARK.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), f"process {pid} survived"
            except OSError:
                continue
        time.sleep(max(0.0, daemon_started + 21 - time.monotonic()))
        assert not env.daemon_file.exists()
        assert not env.host_pwned.exists()
        assert not (server.root / "pwned").exists()

        assert http.get("/healthz").status_code == 200
        again = http.post("/v1/kernels", json=_honest("lif_hard"))
        assert again.status_code == 200  # still serving, from an unchanged store
        assert _store_snapshot(server, http) == before
        leaked = [name for name, status in statuses.items() if SECRET in repr(status)]
        assert leaked == []
    assert SECRET not in server.logs()


def test_the_service_refuses_to_start_without_its_jail(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failure:
        with live_server(tmp_path / "no-jail", jail_bwrap="/nonexistent/bwrap"):
            pass
    text = str(failure.value)
    assert "server exited" in text and "refusing to start" in text
    assert "bubblewrap was not found" in text and "user namespaces" in text
