"""The API docs and the status page in a real headless Chromium, with no network but the service.

Fails (never skips) where Chromium is missing: `make test` installs it.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import browser
import neurons
import pytest
from live_server import Server, free_port, live_server
from test_store import _artifact, _put

from flexsn_core import KernelSpec
from flexsn_core._version import CODEGEN_VERSION
from flexsn_core.spec import triton_version
from flexsn_service.store import DiskStore

#: a core whose build fails in the jail at once (a miss, then a failed build on the page)
BAD_CORE = {"source": "def wrong_count(x, v):\n    return x, v, v\n", "entry": "wrong_count",
            "num_inputs": 1, "num_states": 1, "num_outputs": 1}
HITS_GREEN, MISSES_ORANGE = (0x2E, 0x9D, 0x57), (0xE8, 0x83, 0x3A)  # the chart's colours (status.html)


def _spec(name: str) -> dict:
    model = neurons.MODELS[name]
    return KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics)).to_dict()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:  # noqa: ANN001
    browser.chromium()  # fail first, with the message, if the browser is missing
    root = tmp_path_factory.mktemp("browser")
    store = DiskStore(root / "store")
    for name in ("alif", "lif_hard"):
        _put(store, _artifact(name, (3000,)), now=1.0)
    store.close()
    with live_server(root) as s:
        with s.client() as http:
            hit = http.post("/v1/kernels", json={**_spec("lif_hard"), "targets": ["cuda:90"]})
            assert hit.status_code == 200, hit.text
            miss = http.post("/v1/kernels", json=BAD_CORE)
            assert miss.status_code == 202, miss.text
            assert s.wait_build(http, miss.json()["build_id"], timeout=240)["state"] == "failed"
        yield s


def _only_local(page: browser.Page, server: Server) -> None:
    assert page.url in page.requests, page.requests
    foreign = [u for u in page.requests if not u.startswith(server.url + "/")]
    assert not foreign, f"the page asked for resources elsewhere: {foreign}"


def test_swagger_ui_renders_every_operation_offline(server: Server) -> None:
    page = browser.load(f"{server.url}/docs")
    with server.client() as http:
        doc = http.get("/openapi.json").json()
    ids = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    assert {"request_kernels", "get_stats", "get_version"} <= ids
    rendered = set(re.findall(r'id="operations-(?!tag-)[a-z]+-([a-z_]+)"', page.dom))
    assert rendered == ids, f"missing: {ids - rendered}"
    assert "btn authorize" in page.dom  # the bearer-token Authorize button (HTTPBearer scheme)
    _only_local(page, server)
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in page.requests)


def test_redoc_renders_the_operations_offline(server: Server) -> None:
    page = browser.load(f"{server.url}/redoc")
    assert 'id="operation/request_kernels"' in page.dom
    assert "Get the manifest of a spec, building it if needed" in page.dom  # a summary, rendered by ReDoc
    _only_local(page, server)
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in page.requests)


def test_the_status_page_shows_versions_hit_rate_kernels_failures_and_the_chart(server: Server) -> None:
    page = browser.load(f"{server.url}/")
    dom = page.dom
    versions = re.search(r'<div class="card" id="versions">(.*?)</div>', dom, re.S).group(1)
    assert f"<code>{triton_version()}</code>" in versions and f"<code>{CODEGEN_VERSION}</code>" in versions
    hit_rate = re.search(r'<div class="card" id="hit-rate">(.*?)</div>\s*</div>', dom, re.S).group(1)
    assert "50.0%" in hit_rate and "1 hits · 1 misses" in hit_rate
    assert re.search(r"<h2>Store \(disk\)</h2>", dom) and "2 kernels" in dom
    targets = re.search(r'<section id="targets">(.*?)</section>', dom, re.S).group(1)
    assert re.search(r"<code>cuda:90</code></td><td[^>]*>2</td>", targets), targets
    kernels = re.search(r'<section id="kernels">(.*?)</section>', dom, re.S).group(1)
    assert "<code>alif</code>" in kernels and "<code>lif_hard</code>" in kernels
    # lif_hard was just used (the hit); alif not since it was stored: most recent first
    assert kernels.index("<code>lif_hard</code>") < kernels.index("<code>alif</code>")
    failures = re.search(r'<section id="failures">(.*?)</section>', dom, re.S).group(1)
    assert "<code>wrong_count</code>" in failures
    chart = re.search(r'<section id="chart">(.*?)</section>', dom, re.S).group(1)
    assert chart.count('class="hits"') >= 2 and chart.count('class="misses"') >= 2  # bars + legend
    assert "1 hits, 1 misses" in chart  # the current minute's tooltip
    _only_local(page, server)


def test_a_screenshot_of_the_status_page_is_a_real_picture(server: Server, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    page = browser.load(f"{server.url}/", screenshot=shot, window=(1280, 1000))
    size, colours = browser.png_summary(shot)
    assert size == (1280, 1000)
    total = sum(colours.values())
    assert len(colours) >= 50, len(colours)  # text, cards, header, chart: many colours (antialiasing)
    assert max(colours.values()) < 0.8 * total  # not one colour filling the picture
    assert colours.get((0x1D, 0x23, 0x30), 0) > 20_000  # the dark header bar
    # the chart's bars are drawn: solid areas of the hits and misses colours
    assert colours.get(HITS_GREEN, 0) > 200 and colours.get(MISSES_ORANGE, 0) > 200, (
        colours.get(HITS_GREEN), colours.get(MISSES_ORANGE))
    _only_local(page, server)


def test_the_request_check_catches_a_page_that_needs_a_cdn(tmp_path: Path) -> None:
    """The negative control of ``_only_local``: a page with a CDN script is caught."""
    (tmp_path / "index.html").write_text(
        '<!DOCTYPE html><title>cdn</title><script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/'
        'swagger-ui-bundle.js"></script><p>x</p>'
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
        page = browser.load(url)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert url in page.requests
    assert any(u.startswith("https://cdn.jsdelivr.net/") for u in page.requests), page.requests


def test_a_missing_browser_fails_with_how_to_install_it(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(browser.shutil, "which", lambda _name: None)
    with pytest.raises(AssertionError, match="`make test` installs it"):
        browser.chromium()
