"""The client commands against servers that are not (quite) a flexsn-cache service: one line, non-zero exit.

Each case runs the real ``flexsn-cache`` in a subprocess against a real server:
a live flexsn-cache (wrong path, tokens), a tiny ``http.server`` thread answering
HTML, foreign JSON, 404, 403 or 500, a closed port, and a socket that never
answers (a timeout).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from live_server import Server, free_port, live_server, run_cli

from flexsn_client.report import ago, local_versions, version_mismatches

HTML = ("<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>"
        "<body><h1>Welcome</h1><p>" + "lorem ipsum " * 200 + "</p></body></html>")
GOOD_VERSIONS = {**local_versions(), "api": "1", "ir": "1"}


def _answer(mode: str, path: str) -> tuple[int, str, str]:
    """(status, content type, body) a fake server of ``mode`` answers for ``path``."""
    if mode == "html":  # e.g. a web server's default page on the port
        return 200, "text/html", HTML
    if mode == "foreign-json":  # some other JSON API
        return 200, "application/json", json.dumps({"status": "ok", "name": "another service"})
    if mode == "404":
        return 404, "text/html", "<html><head><title>404 Not Found</title></head><body>" + "x" * 2000 + "</body></html>"
    if mode == "500":
        return 500, "text/html", "<html><head><title>500 Internal Server Error</title></head><body>oops</body></html>"
    if mode == "403":
        return 403, "application/json", json.dumps({"detail": "token lacks the 'read' scope"})
    if mode == "version-only":  # recognisably flexsn-cache, but /v1/stats and /v1/kernels are not found
        if path.startswith("/v1/version"):
            return 200, "application/json", json.dumps(GOOD_VERSIONS)
        return 404, "application/json", json.dumps({"detail": "Not Found"})
    raise AssertionError(mode)


@contextlib.contextmanager
def fake_server(mode: str) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, kind, body = _answer(mode, self.path)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("cli-errors")) as s:
        yield s


def _one_error_line(result, *needles: str) -> str:  # noqa: ANN001
    """The run failed with exactly one readable line on stderr (containing ``needles``) and nothing on stdout."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "<html" not in result.stderr.lower(), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert len(lines[0]) < 600, lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("command", ["stats", "ls"])
@pytest.mark.parametrize(("mode", "needles"), [
    ("html", ("an HTML page ('Welcome to nginx!')", "not the service's JSON", "flexsn-cache service?")),
    ("foreign-json", ("JSON without package, api, codegen, triton, torch", "flexsn-cache service?")),
    ("404", ("404 Not Found", "an HTML page ('404 Not Found')", "flexsn-cache service?")),
    ("500", ("answered 500", "an HTML page ('500 Internal Server Error')")),
    ("403", ("refused the request (403)", "lacks the 'read' scope", "FLEXSN_CACHE_TOKEN")),
    ("version-only", ("404 Not Found: Not Found",)),
])
def test_a_server_that_is_not_flexsn_cache_is_one_line(command: str, mode: str, needles: tuple[str, ...]) -> None:
    with fake_server(mode) as url:
        _one_error_line(run_cli(command, "--url", url), *needles)


def test_a_wrong_path_on_a_real_service_is_one_line(server: Server) -> None:
    for command in ("stats", "ls"):
        line = _one_error_line(run_cli(command, "--url", server.url + "/cache"), "/cache/v1/version answered 404")
        assert "the service's root" in line


def test_a_closed_port_and_a_silent_server_are_one_line() -> None:
    line = _one_error_line(run_cli("stats", "--url", f"http://127.0.0.1:{free_port()}"), "cannot reach")
    assert "Connection refused" in line
    with silent_server() as url:
        _one_error_line(run_cli("ls", "--url", url, "--timeout", "0.5"), "cannot reach", "ReadTimeout")
    _one_error_line(run_cli("stats", "--url", "cache-host:8000"), "must be http://HOST:PORT")


def test_a_missing_or_wrong_token_is_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    token = secrets.token_urlsafe(32)
    tokens.write_text(f"{token} read reader\n")
    with live_server(tmp_path / "auth", tokens=str(tokens)) as server:
        _one_error_line(run_cli("stats", "--url", server.url), "refused the request (401)", "FLEXSN_CACHE_TOKEN")
        _one_error_line(run_cli("ls", "--url", server.url, "--token", secrets.token_urlsafe(32)), "(401)")
        ok = run_cli("stats", "--json", "--url", server.url, env={"FLEXSN_CACHE_TOKEN": token})
        assert ok.returncode == 0 and json.loads(ok.stdout)["kernels"] == 0, ok.stderr


def test_stats_warns_when_the_service_keys_with_other_versions() -> None:
    other = {**GOOD_VERSIONS, "triton": "3.5.1", "torch": local_versions()["torch"].split("+")[0] + "+cu128"}
    stats = {"hits": 3, "misses": 1, "hit_rate": 0.75, "builds_started": 1, "builds_succeeded": 1,
             "builds_failed": 0, "builds_in_flight": 0, "builds_failed_last_hour": 0, "kernels": 1,
             "bytes": 2_500_000, "max_bytes": 10_000_000_000, "store": "redis", "by_target": {},
             "by_target_complete": True, "started": 0, "versions": other}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            data = json.dumps(other if self.path.startswith("/v1/version") else stats).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        result = run_cli("stats", "--url", f"http://127.0.0.1:{httpd.server_address[1]}", env={"COLUMNS": "200"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 0, result.stderr
    assert "3 hits, 1 misses, hit rate 75.0 %" in result.stdout
    assert "redis, 2.5 MB / 10.0 GB (0 %)" in result.stdout
    # torch differs in its build tag only: the key hashes the release, so that is no mismatch
    assert "warning: the service's triton version differs from this client's" in " ".join(result.stdout.split())


def test_versions_and_ages_read_as_a_person_reads_them() -> None:
    local = {"codegen": "6", "triton": "3.6.0", "torch": "2.13.0+cpu"}
    assert version_mismatches({"codegen": "6", "triton": "3.6.0", "torch": "2.13.0+cu128"}, local) == []
    assert version_mismatches({"codegen": "7", "triton": "3.6.0", "torch": "2.12.0"}, local) == ["codegen", "torch"]
    assert version_mismatches({}, local) == ["codegen", "triton", "torch"]
    now = 1_000_000.0
    assert [ago(now - s, now) for s in (1, 42, 600, 3 * 3600 + 5, 2 * 86400)] == [
        "just now", "42 s ago", "10 min ago", "3 h ago", "2 d ago"]
    assert ago(None) == "never" and ago(0.0) == "never"
