"""The read fast path (service/api/fast_reads.py) answers exactly as the FastAPI routes do.

Every case is asked twice, through the fast path and with it switched off
(``fast_reads=False``, so FastAPI answers), and the answers must match in
status, the headers that matter and body; ``flexsn_http_fast_reads`` shows
which path answered, so each test also fails when the fast path is gone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import store_damage
import uvicorn
from fastapi.testclient import TestClient
from test_store import _artifact, _put, config_id

from flexsn_core.manifest import TuningChoice
from flexsn_service import Settings, create_app
from flexsn_service.api.fast_reads import BLOB_ROUTE, KERNEL_ROUTE
from flexsn_service.serving import NoDelayH11, http_protocol

TOKENS = {scope: secrets.token_urlsafe(32) for scope in ("read", "build", "admin")}
TTL = 0.3
#: headers a client or cache acts on (date and server come from the HTTP server, not the app)
HEADERS = ("etag", "cache-control", "content-type", "content-length", "www-authenticate")


def _auth(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


R = _auth("read")


@pytest.fixture
def client(tmp_path):  # noqa: ANN001, ANN201
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{value} {scope} {scope}-user\n" for scope, value in TOKENS.items()))
    settings = Settings(store=f"disk:{tmp_path / 'store'}", use_gpu=False, tokens=tokens, manifest_ttl_s=TTL)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def art(client: TestClient):  # noqa: ANN201
    artifact = _artifact("alif", (500, 40_000))  # one blob in a SQLite row, one in a file
    _put(_ctx(client).store, artifact, now=1.0)
    return artifact


def _ctx(client: TestClient) -> Any:
    return client.app.state.ctx


def _fast_count(client: TestClient) -> int:
    """Answers of the fast path so far (all routes and statuses)."""
    metrics = _ctx(client).metrics
    metrics.fold_fast_reads()
    return int(sum(s.value for m in metrics.fast_reads.collect() for s in m.samples if s.name.endswith("_total")))


@contextmanager
def _fast_path(client: TestClient, on: bool):  # noqa: ANN202
    ctx = _ctx(client)
    before = ctx.settings
    ctx.settings = before.model_copy(update={"fast_reads": on})
    try:
        yield
    finally:
        ctx.settings = before


def _ask(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None,
         *, fast: bool) -> tuple[httpx.Response, bool]:
    """One answer, and whether the fast path gave it."""
    with _fast_path(client, fast):
        before = _fast_count(client)
        response = client.request(method, path, headers=headers or {})
        return response, _fast_count(client) > before


def _view(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    return response.status_code, {h: response.headers[h] for h in HEADERS if h in response.headers}, response.content


def _same(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None,
          *, fast_answers: bool) -> httpx.Response:
    """The fast path's answer, after checking that FastAPI gives the same one."""
    slow, slow_was_fast = _ask(client, method, path, headers, fast=False)
    fast, fast_was_fast = _ask(client, method, path, headers, fast=True)
    assert not slow_was_fast
    assert fast_was_fast is fast_answers, (method, path, fast.status_code)
    assert _view(fast) == _view(slow), (method, path)
    assert len(fast.headers["x-request-id"]) == 16 and fast.headers["x-request-id"] != slow.headers["x-request-id"]
    return fast


def _urls(art: Any) -> tuple[str, str, str]:
    big = next(s for s, d in art.blobs.items() if len(d) > 32_000)
    return f"/v1/kernels/{art.key}", f"/v1/blobs/{big}", big


def test_hits_304s_and_heads_are_answered_from_memory_as_fastapi_answers_them(client: TestClient, art: Any) -> None:
    manifest_url, blob_url, sha = _urls(art)
    for url in (manifest_url, blob_url):
        first, _ = _ask(client, "GET", url, R, fast=False)  # FastAPI's read fills the cache
        assert first.status_code == 200
        hit = _same(client, "GET", url, R, fast_answers=True)
        assert hit.content == first.content and int(hit.headers["content-length"]) == len(hit.content)
        etag = hit.headers["etag"]
        for match in (etag, f'"nope", {etag}', "*"):
            not_modified = _same(client, "GET", url, {**R, "If-None-Match": match}, fast_answers=True)
            assert not_modified.status_code == 304 and not_modified.content == b""
        assert _same(client, "GET", url, {**R, "If-None-Match": '"other"'}, fast_answers=True).status_code == 200
        head = _same(client, "HEAD", url, R, fast_answers=True)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(first.content))
        assert _same(client, "HEAD", url, {**R, "If-None-Match": etag}, fast_answers=True).status_code == 304
    assert client.get(blob_url, headers=R).content == art.blobs[sha]
    assert client.get(manifest_url, headers=R).headers["cache-control"] == "no-cache"
    assert "immutable" in client.get(blob_url, headers=R).headers["cache-control"]


def test_auth_is_the_routes_auth(client: TestClient, art: Any) -> None:
    manifest_url, blob_url, _ = _urls(art)
    for url in (manifest_url, blob_url):
        client.get(url, headers=R)  # in memory: the fast path answers even the refusals
        for headers in ({}, {"Authorization": "Bearer " + secrets.token_urlsafe(32)}, {"Authorization": "Basic x"},
                        {"Authorization": "Bearer "}):
            refused = _same(client, "GET", url, headers, fast_answers=True)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert isinstance(refused.json()["detail"], str)
        for scope in ("read", "build", "admin"):
            assert _same(client, "GET", url, _auth(scope), fast_answers=True).status_code == 200


def test_without_tokens_only_loopback_clients_are_served(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(store=f"disk:{tmp_path / 'store'}", use_gpu=False)
    art = _artifact("lif_hard", (300,))
    with TestClient(create_app(settings)) as local:
        _put(_ctx(local).store, art, now=1.0)
        url = f"/v1/kernels/{art.key}"
        local.get(url)
        assert _same(local, "GET", url, fast_answers=True).status_code == 200
    with TestClient(create_app(settings), client=("10.1.2.3", 40000)) as remote:
        remote.get(url)
        refused = _same(remote, "GET", url, fast_answers=True)
        assert refused.status_code == 403 and "localhost only" in refused.json()["detail"]


def test_bad_names_and_unknown_ones_are_left_to_fastapi(client: TestClient, art: Any) -> None:
    manifest_url, blob_url, sha = _urls(art)
    client.get(manifest_url, headers=R)
    client.get(blob_url, headers=R)
    for bad in (art.key.upper(), art.key[:-1], art.key + "a", art.key + "%0A", "g" * 64):
        for prefix in ("/v1/kernels/", "/v1/blobs/"):
            assert _same(client, "GET", prefix + bad, R, fast_answers=False).status_code == 422
    for prefix in ("/v1/kernels/", "/v1/blobs/"):
        assert _same(client, "GET", prefix + "c" * 64, R, fast_answers=False).status_code == 404
        assert _same(client, "HEAD", prefix + "c" * 64, R, fast_answers=False).status_code == 404
    # other methods and paths below the same prefixes pass through untouched
    assert _same(client, "GET", manifest_url + "/bundle", R, fast_answers=False).status_code == 200
    assert _same(client, "POST", blob_url, R, fast_answers=False).status_code == 405


def test_request_ids_are_kept_or_made(client: TestClient, art: Any) -> None:
    manifest_url, _, _ = _urls(art)
    client.get(manifest_url, headers=R)
    response, was_fast = _ask(client, "GET", manifest_url, {**R, "X-Request-ID": "job-17"}, fast=True)
    assert was_fast and response.headers["x-request-id"] == "job-17"
    long = "x" * 100
    response, was_fast = _ask(client, "GET", manifest_url, {**R, "X-Request-ID": long}, fast=True)
    assert was_fast and response.headers["x-request-id"] == long[:64]


def test_a_tuned_manifest_is_served_fresh(client: TestClient, art: Any) -> None:
    manifest_url, _, _ = _urls(art)
    old = client.get(manifest_url, headers=R)
    assert _same(client, "GET", manifest_url, R, fast_answers=True).headers["etag"] == old.headers["etag"]
    # tuned through this replica: its cache entry is dropped at once
    report = {"target": "cuda:90", "choices": [{"kind": "inference", "bucket": 1, "variant": "aligned",
                                                "config_id": config_id(0)}]}
    assert client.post(f"{manifest_url}/tuning", json=report, headers=_auth("build")).status_code == 200
    tuned = client.get(manifest_url, headers={**R, "If-None-Match": old.headers["etag"]})
    assert tuned.status_code == 200 and tuned.headers["etag"] != old.headers["etag"]
    assert tuned.json()["tuning"]["cuda:90"]["inference"]["1"]["aligned"] == config_id(0)
    assert _same(client, "GET", manifest_url, R, fast_answers=True).content == tuned.content
    # tuned through another replica (straight into the shared store): seen once the TTL ran out,
    # by the fast path's own check against the store
    choice = TuningChoice(target="cuda:90", kind="inference", bucket=1, variant="unaligned", config_id=config_id(0))
    assert _ctx(client).store.record_tuning(art.key, [choice], now=2.0)[0] == 1
    time.sleep(TTL + 0.1)
    fresh, was_fast = _ask(client, "GET", manifest_url, R, fast=True)
    assert was_fast and fresh.headers["etag"] != tuned.headers["etag"]
    assert fresh.json()["tuning"]["cuda:90"]["inference"]["1"]["unaligned"] == config_id(0)


def test_a_deleted_kernel_answers_404(client: TestClient, art: Any) -> None:
    manifest_url, _, _ = _urls(art)
    client.get(manifest_url, headers=R)
    assert _same(client, "GET", manifest_url, R, fast_answers=True).status_code == 200
    assert client.delete(manifest_url, headers=_auth("admin")).status_code == 204
    assert _same(client, "GET", manifest_url, R, fast_answers=False).status_code == 404
    # deleted through another replica: 404 once the TTL ran out
    other = _artifact("lif_hard", (300,))
    _put(_ctx(client).store, other, now=1.0)
    url = f"/v1/kernels/{other.key}"
    client.get(url, headers=R)
    assert _same(client, "GET", url, R, fast_answers=True).status_code == 200
    assert _ctx(client).store.delete_kernel(other.key)
    time.sleep(TTL + 0.1)
    gone, was_fast = _ask(client, "GET", url, R, fast=True)
    assert gone.status_code == 404 and not was_fast


def test_a_damaged_blob_is_never_served(client: TestClient, art: Any) -> None:
    store = _ctx(client).store
    _, blob_url, sha = _urls(art)
    assert store_damage.rewrite(store.directory, f"blob:{sha}", store_damage.flip_tail) == "file"
    for _ in range(3):
        response, was_fast = _ask(client, "GET", blob_url, R, fast=True)
        assert response.status_code == 404 and not was_fast
    # and a manifest naming it is not served either (the fast path never saw it intact)
    response, was_fast = _ask(client, "GET", f"/v1/kernels/{art.key}", R, fast=True)
    assert response.status_code == 404 and not was_fast


def test_reads_are_counted_and_their_access_times_batched(client: TestClient, art: Any) -> None:
    manifest_url, blob_url, _ = _urls(art)
    store, reads = _ctx(client).store, _ctx(client).reads
    _ask(client, "GET", manifest_url, R, fast=False)
    _ask(client, "GET", blob_url, R, fast=False)
    reads.flush()
    before = store._read_meta(art.key)["last_access"]
    for _ in range(5):
        assert _ask(client, "GET", manifest_url, R, fast=True)[1]
        assert _ask(client, "GET", blob_url, R, fast=True)[1]
    assert store._read_meta(art.key)["last_access"] == before  # reads write nothing ...
    assert reads.flush() == 1  # ... until the batch
    assert store._read_meta(art.key)["last_access"] > before
    text = client.get("/metrics", headers=R).text
    for route in (KERNEL_ROUTE, BLOB_ROUTE):
        assert f'flexsn_http_fast_reads_total{{route="{route}",status="200"}} 5.0' in text
        assert f'flexsn_http_requests_total{{route="{route}",status="200"}} 6.0' in text  # + the first, by FastAPI


def test_fast_answers_are_logged_only_when_asked(client: TestClient, art: Any) -> None:
    manifest_url, _, _ = _urls(art)
    client.get(manifest_url, headers=R)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("flexsn_service.http")
    log.addHandler(handler)
    try:
        assert _ask(client, "GET", manifest_url, R, fast=True)[1]
        assert records == []
        assert _ask(client, "GET", manifest_url, fast=True)[0].status_code == 401
        assert [(r.status, r.path) for r in records] == [(401, manifest_url)]  # refusals always
        ctx = _ctx(client)
        ctx.settings = ctx.settings.model_copy(update={"log_fast_reads": True})
        assert _ask(client, "GET", manifest_url, {**R, "X-Request-ID": "abc"}, fast=True)[1]
        assert [r.status for r in records] == [401, 200]
    finally:
        log.removeHandler(handler)


# ------------------------------------------------------------------ serving
def _blob_server(protocol: type, started: threading.Event, stop: threading.Event, port: list[int]) -> None:
    body = b"b" * 37_000  # a cubin's size: more than one segment, less than two full ones

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, loop="asyncio", log_config=None,
                            lifespan="off")
    sock = config.bind_socket()  # as uvicorn does for --workers > 1: socket(AF_INET), proto 0
    port.append(sock.getsockname()[1])
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.should_exit = True
        await serving

    asyncio.run(main())


def test_connections_have_nodelay_so_blobs_do_not_wait_for_delayed_acks() -> None:
    """With several HTTP workers (uvicorn's own proto-0 listening socket) on asyncio's loop, a 37 kB
    answer took 44 ms: Nagle held its last segment until the client's delayed ACK."""
    seen: list[int] = []

    class Recording(NoDelayH11):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    started, stop, port = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=_blob_server, args=(Recording, started, stop, port), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        with httpx.Client(base_url=f"http://127.0.0.1:{port[0]}", timeout=10) as http:
            for _ in range(20):
                try:
                    http.get("/")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            times = []
            for _ in range(9):
                began = time.perf_counter()
                assert len(http.get("/").content) == 37_000
                times.append(time.perf_counter() - began)
        assert sorted(times)[4] < 0.030, times  # 0.044 s each with Nagle
        assert seen and all(seen), seen
    finally:
        stop.set()
        thread.join(10)
    assert http_protocol().startswith("flexsn_service.serving:NoDelay")
