"""Operator views, in process: /v1/version, /healthz, /v1/stats, the status page at /, offline docs."""

from __future__ import annotations

import base64
import re
import secrets
import time
from pathlib import Path
from typing import Any

import neurons
import pytest
from fastapi.testclient import TestClient
from test_store import _artifact, _put

from flexsn_core import KernelSpec
from flexsn_core._version import CODEGEN_VERSION
from flexsn_core.ir import IR_VERSION
from flexsn_core.spec import triton_version
from flexsn_service import Settings, create_app
from flexsn_service.api.docs import ASSETS_DIR
from flexsn_service.builds.manager import BuildActivity, BuildRecord
from flexsn_service.metrics import MinuteHistory
from flexsn_service.overview import KernelCensus, Overview, TargetSummary, census, store_kind
from flexsn_service.status_page import MAX_KERNEL_ROWS, human_age, human_bytes, render_status_page
from flexsn_service.store import ManifestInfo
from flexsn_service.versions import versions

TOKENS = {scope: secrets.token_urlsafe(32) for scope in ("read", "build", "admin")}


def _spec(name: str) -> KernelSpec:
    model = neurons.MODELS[name]
    return KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics))


def _app(tmp_path: Path, *, tokens: bool, client: tuple[str, int] = ("testclient", 50000)) -> TestClient:
    extra: dict[str, Any] = {}
    if tokens:
        path = tmp_path / "tokens"
        path.write_text("".join(f"{value} {scope} {scope}-user\n" for scope, value in TOKENS.items()))
        extra["tokens"] = path
    settings = Settings(store=f"disk:{tmp_path / 'store'}", use_gpu=False, **extra)
    return TestClient(create_app(settings), client=client)


@pytest.fixture
def open_client(tmp_path):  # noqa: ANN001, ANN201
    with _app(tmp_path, tokens=False) as c:
        yield c


@pytest.fixture
def token_client(tmp_path):  # noqa: ANN001, ANN201
    with _app(tmp_path, tokens=True) as c:
        yield c


def _bearer(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


def _basic(token: str, user: str = "me") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def _record(key_of: str, state: str, *, error_type: str | None = None, age_s: float = 0.0) -> BuildRecord:
    spec = _spec(key_of)
    record = BuildRecord(id=secrets.token_hex(8), key=spec.key, spec=spec, targets=["cuda:90"], state=state)
    record.created -= age_s
    record.error_type = error_type
    return record


def _fill(client: TestClient) -> dict[str, BuildRecord]:
    """Two stored kernels, one hit and one miss, a build in flight and one that failed."""
    ctx = client.app.state.ctx
    for name in ("alif", "lif_hard"):
        _put(ctx.store, _artifact(name, (2000,)), now=time.time() - 120)
    ctx.metrics.hits.inc()
    ctx.metrics.misses.inc()
    book = ctx.builds.book
    running = _record("plif", "running", age_s=5)
    failed = _record("lif_soft", "queued", age_s=30)
    book.add(running)
    book.add(failed)
    failed.state, failed.error_type, failed.error = "failed", "<script>alert(1)</script>", "secret core line"
    book.finish(failed, remember_failure=True)
    return {"running": running, "failed": failed}


# ------------------------------------------------------------------ versions
def test_versions_are_open_and_name_what_keys_depend_on(token_client: TestClient) -> None:
    answer = token_client.get("/v1/version")  # no token
    assert answer.status_code == 200
    got = answer.json()
    assert got["codegen"] == CODEGEN_VERSION and got["ir"] == str(IR_VERSION)
    assert got["triton"] == triton_version() and got["api"] == "1"
    import torch

    assert got["torch"] == torch.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", got["python"]) and got["package"] not in ("", "not installed")
    health = token_client.get("/healthz").json()
    assert health["versions"] == got and health["auth"] == "tokens"
    assert versions() == got


# ------------------------------------------------------------------ /v1/stats
def test_stats_have_hit_rate_size_limit_targets_builds_and_versions(open_client: TestClient) -> None:
    empty = open_client.get("/v1/stats").json()
    assert empty["hit_rate"] is None and empty["by_target"] == {} and empty["builds_in_flight"] == 0
    records = _fill(open_client)
    stats = open_client.get("/v1/stats").json()
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (1, 1, 0.5)
    assert stats["kernels"] == 2 and stats["bytes"] > 4000 and stats["max_bytes"] is None
    assert stats["store"] == "disk"
    assert stats["by_target"]["cuda:90"]["kernels"] == 2 and stats["by_target_complete"] is True
    assert time.time() - stats["by_target"]["cuda:90"]["last_use"] < 300
    assert stats["builds_in_flight"] == 1 and stats["builds_failed_last_hour"] == 1
    assert stats["versions"] == versions()
    assert stats["started"] <= time.time()
    assert records["running"].finished is None  # the overview only reads


def test_a_real_post_counts_a_hit_in_the_minute_history(open_client: TestClient) -> None:
    ctx = open_client.app.state.ctx
    art = _artifact("alif", (2000,))
    _put(ctx.store, art, now=1.0)
    body = {**_spec("alif").to_dict(), "targets": ["cuda:90"]}
    assert open_client.post("/v1/kernels", json=body).status_code == 200
    assert ctx.metrics.history.series()[-1].hits == 1
    assert open_client.get("/v1/stats").json()["hit_rate"] == 1.0


def test_the_census_is_bounded_and_says_so(open_client: TestClient) -> None:
    store = open_client.app.state.ctx.store
    for name in ("alif", "lif_hard"):
        _put(store, _artifact(name, (1000,)), now=1.0)
    full, part = census(store), census(store, max_kernels=1)
    assert full.complete and len(full.kernels) == 2 and full.by_target[0].kernels == 2
    assert not part.complete and len(part.kernels) == 1 and part.by_target[0].kernels == 1


def test_store_kind_never_shows_the_address() -> None:
    assert store_kind("redis://:hunter2@cache:6379/0") == "redis"
    assert store_kind("disk:/srv/secret/place") == "disk"


# ------------------------------------------------------------------ the status page: who sees what
def _section(html: str, name: str) -> str | None:
    found = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    return found.group(1) if found else None


def test_without_tokens_loopback_sees_everything_and_remote_clients_nothing(open_client: TestClient,
                                                                            tmp_path: Path) -> None:
    records = _fill(open_client)
    page = open_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<code>alif</code>" in _section(html, "kernels") and "<code>lif_hard</code>" in _section(html, "kernels")
    assert records["running"].spec.entry in _section(html, "in-flight")
    assert records["failed"].key[:12] in _section(html, "failures")
    with _app(tmp_path / "remote", tokens=False, client=("10.1.2.3", 40000)) as remote:
        refused = remote.get("/")
        assert refused.status_code == 403 and "localhost only" in refused.json()["detail"]


def test_with_tokens_anonymous_visitors_see_aggregates_only(token_client: TestClient) -> None:
    records = _fill(token_client)
    html = token_client.get("/").text
    assert "50.0%" in html and "2 kernels" in html and triton_version() in html
    assert "<code>cuda:90</code>" in _section(html, "targets")  # targets are not user data
    assert "1 build(s) in flight, 1 failed in the last hour" in _section(html, "details-hidden")
    for hidden in ("kernels", "in-flight", "failures"):
        assert _section(html, hidden) is None
    for name in ("alif", "lif_hard", records["running"].spec.entry, records["failed"].spec.entry):
        assert f"<code>{name}</code>" not in html
    assert records["failed"].key[:12] not in html and records["failed"].id not in html
    assert 'href="/?auth=1"' in html


@pytest.mark.parametrize("how", ["bearer", "basic"])
def test_a_read_token_shows_the_details(token_client: TestClient, how: str) -> None:
    _fill(token_client)
    headers = _bearer("read") if how == "bearer" else _basic(TOKENS["read"])
    html = token_client.get("/", headers=headers).text
    assert "<code>alif</code>" in _section(html, "kernels")
    assert _section(html, "details-hidden") is None
    assert token_client.get("/?auth=1", headers=headers).status_code == 200


def test_auth_1_asks_the_browser_for_a_token(token_client: TestClient) -> None:
    asked = token_client.get("/?auth=1")
    assert asked.status_code == 401 and asked.headers["www-authenticate"].startswith("Basic realm=")
    bad = token_client.get("/?auth=1", headers=_basic(secrets.token_urlsafe(32)))
    assert bad.status_code == 401
    # a wrong or malformed token on the plain page: aggregates, and a line that says why
    for headers in (_bearer("read") | {"Authorization": "Bearer " + secrets.token_urlsafe(32)},
                    {"Authorization": "Basic !!!not-base64"}, {"Authorization": "Digest x"}):
        page = token_client.get("/", headers=headers)
        assert page.status_code == 200 and _section(page.text, "kernels") is None
        assert "Showing aggregate numbers only" in page.text


def test_basic_auth_is_accepted_on_the_status_page_only(token_client: TestClient) -> None:
    assert token_client.get("/v1/stats", headers=_basic(TOKENS["read"])).status_code == 401
    assert token_client.get("/v1/stats", headers=_bearer("read")).status_code == 200


def test_the_page_escapes_what_users_control_and_allows_no_script(open_client: TestClient) -> None:
    _fill(open_client)  # a build whose error type is markup (the jail's output is untrusted)
    page = open_client.get("/")
    html = page.text
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in _section(html, "failures")
    assert "secret core line" not in html  # error texts quote user code: /v1/builds/{id} has them
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # nothing to load from anywhere else: every link and source is on this server or inline data
    for url in re.findall(r'(?:href|src)="([^"]*)"', html):
        assert url.startswith("/") or url.startswith("data:"), url
    assert "http://" not in html and "https://" not in html


# ------------------------------------------------------------------ rendering details
def _overview(kernels: int, *, max_bytes: int | None = None) -> Overview:
    now = time.time()
    infos = [ManifestInfo(key=f"{i:064x}", entry=f"neuron_{i}", dtype="float32", targets=("cuda:90",),
                          bytes=1000, created=now - 600, last_access=now - i) for i in range(kernels)]
    history = MinuteHistory(60)
    history.add(hits=3, misses=1)
    return Overview(
        hits=3, misses=1, builds_started=0, builds_succeeded=0, builds_failed=0, kernels=kernels,
        bytes=kernels * 1000, max_bytes=max_bytes, store="disk", started=now - 60,
        builds=BuildActivity([], []),
        census=KernelCensus(infos, [TargetSummary("cuda:90", kernels, now)], complete=True),
        history=history.series(),
    )


def test_the_kernel_list_is_paged_with_a_count_of_the_rest() -> None:
    html = render_status_page(_overview(MAX_KERNEL_ROWS + 10), details=True, auth="tokens", note=None)
    rows = re.findall(r"<code>neuron_(\d+)</code>", _section(html, "kernels"))
    assert [int(r) for r in rows] == list(range(MAX_KERNEL_ROWS))  # most recently used first
    assert "and 10 more" in html
    few = render_status_page(_overview(3), details=True, auth="tokens", note=None)
    assert "more (" not in few


def test_size_against_the_limit() -> None:
    html = render_status_page(_overview(4, max_bytes=8000), details=False, auth="tokens", note=None)
    store = re.search(r'<div class="card" id="store">(.*?)</div>\s*</div>', html, re.S).group(1)
    assert "3.9 KiB" in store and "of 7.8 KiB" in store and 'style="width: 50.0%"' in store
    unlimited = render_status_page(_overview(4), details=False, auth="tokens", note=None)
    assert "no size limit" in unlimited and 'class="meter"' not in unlimited


def test_the_chart_draws_the_current_minute() -> None:
    html = render_status_page(_overview(1), details=False, auth="tokens", note=None)
    chart = _section(html, "chart")
    assert chart.count("<title>") == 60 and "3 hits, 1 misses" in chart
    assert len(re.findall(r'<rect class="hits"', chart)) == 1 and len(re.findall(r'<rect class="misses"', chart)) == 1
    assert "peak 4/min" in chart


def test_minute_history_is_a_ring_of_the_last_minutes() -> None:
    now = [10_000 * 60.0]
    history = MinuteHistory(3, clock=lambda: now[0])
    history.add(hits=2)
    now[0] += 61
    history.add(misses=1)
    history.add(hits=1)
    assert [(c.hits, c.misses) for c in history.series()] == [(0, 0), (2, 0), (1, 1)]
    now[0] += 120  # two minutes on: the first fell out of the window, empty minutes read as zeros
    assert [(c.hits, c.misses) for c in history.series()] == [(1, 1), (0, 0), (0, 0)]
    assert [c.minute % 60 for c in history.series()] == [0, 0, 0]
    now[0] += 3600
    history.add(hits=5)
    assert [(c.hits, c.misses) for c in history.series()] == [(0, 0), (0, 0), (5, 0)]


def test_humane_numbers() -> None:
    assert [human_bytes(n) for n in (None, 0, 1023, 1024, 5 << 20, 3 << 40)] == [
        "none", "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB"]
    assert [human_age(t, 100_000.0) for t in (0.0, 99_990.0, 99_000.0, 90_000.0, 1_000.0)] == [
        "never", "10 s ago", "17 min ago", "3 h ago", "1 d ago"]


# ------------------------------------------------------------------ offline docs
def test_docs_pages_load_nothing_from_a_cdn(token_client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        page = token_client.get(path)  # no token needed
        assert page.status_code == 200, path
        assert "http://" not in page.text and "https://" not in page.text.replace(
            "https://github.com/swagger-api/swagger-ui", ""), path
        assert "connect-src 'self'" in page.headers["content-security-policy"]
    swagger = token_client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in swagger and '"validatorUrl": null' in swagger
    assert "/docs-assets/redoc.standalone.js" in token_client.get("/redoc").text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        asset = token_client.get(f"/docs-assets/{name}")
        assert asset.status_code == 200 and asset.content == (ASSETS_DIR / name).read_bytes()


def test_the_assets_folder_opens_nothing_else(token_client: TestClient) -> None:
    for path in ("/docs-assets/../v1/stats", "/docs-assets/%2e%2e/v1/stats", "/docs-assetsX", "/docs-assets/nope"):
        answer = token_client.get(path)
        assert answer.status_code in (401, 404), (path, answer.status_code)
        assert "hits" not in answer.text
    assert token_client.get("/v1/stats").status_code == 401
    assert token_client.get("/openapi.json").status_code == 200
