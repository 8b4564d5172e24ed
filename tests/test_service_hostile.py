"""Bad and hostile cores: a clear 422 or a failed build, and the service keeps serving."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from live_server import Server, live_server

PWNED = Path("/tmp/flexsn-pwned")


def _body(source: str, num_inputs: int = 1, num_states: int = 1) -> dict:
    return {"source": textwrap.dedent(source), "entry": "core", "num_inputs": num_inputs,
            "num_states": num_states, "num_outputs": 1}


REJECTED_AT_ONCE = {
    "syntax error": ("import torch\ndef core(x, v):\n    return x +\n", "syntax error"),
    "import os": ("import os\ndef core(x, v):\n    os.system('touch /tmp/flexsn-pwned')\n    return x, v\n", "import of 'os'"),
    "open()": ("def core(x, v):\n    open('/tmp/flexsn-pwned', 'w').write('x')\n    return x, v\n", "'open'"),
    "dunder escape": ("def core(x, v):\n    x.__class__.__base__.__subclasses__()\n    return x, v\n", "dunder"),
    "torch.load": ("import torch\ndef core(x, v):\n    torch.load('/etc/passwd')\n    return x, v\n", "torch.load"),
    "module-level code": ("import torch\nX = torch.zeros(10**10)\ndef core(x, v):\n    return x, v\n", "module-level"),
    "wrong arity": ("def core(x, v, w):\n    return x, v\n", "called with 2"),
}

FAIL_IN_BUILD = {
    "endless loop": ("def core(x, v):\n    while True:\n        pass\n    return x, v\n", "did not finish within"),
    "huge allocation": ("def core(x, v):\n    junk = [0.0] * (10 ** 11)\n    return x, v\n", "MemoryError"),
    "unsupported op": ("import torch\ndef core(x, v):\n    y = torch.sort(x)[0]\n    return y, v\n", "aten.sort.default"),
    "wrong return count": ("def core(x, v):\n    return x, v, v\n", "returned 3 values"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("hostile"), build_timeout_s="25", build_memory_mb="1024") as s:
        yield s


@pytest.mark.parametrize("case", sorted(REJECTED_AT_ONCE))
def test_rejected_with_422_before_running(server: Server, case: str) -> None:
    source, message = REJECTED_AT_ONCE[case]
    with server.client() as http:
        response = http.post("/v1/kernels", json=_body(source))
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_failed_builds_are_readable_and_the_service_keeps_serving(server: Server) -> None:
    with server.client() as http:
        started = {}
        for case, (source, _) in FAIL_IN_BUILD.items():
            response = http.post("/v1/kernels", json=_body(source))
            assert response.status_code == 202, (case, response.text)
            started[case] = response.json()["build_id"]
        for case, build_id in started.items():
            status = server.wait_build(http, build_id, timeout=240)
            assert status["state"] == "failed", (case, status)
            assert FAIL_IN_BUILD[case][1] in status["error"], (case, status["error"])
        assert http.get("/healthz").status_code == 200
        assert http.get("/v1/stats").json()["builds_failed"] >= len(FAIL_IN_BUILD)
    assert not PWNED.exists()


def test_nothing_written_outside_the_store(server: Server) -> None:
    written = []
    for folder in ("home", "tmp", "cwd"):
        for path in (server.root / folder).rglob("*"):
            written.append(str(path.relative_to(server.root)))
    assert written == [], written
    assert os.listdir(server.store)  # the store (and the builds' scratch space) live here


def test_a_failed_build_is_remembered_not_rebuilt(server: Server) -> None:
    body = _body("import torch\ndef core(x, v):\n    y = torch.sort(x + 1.5)[0]\n    return y, v\n")
    with server.client(timeout=300) as http:
        first = http.post("/v1/kernels", json=body)
        assert first.status_code == 202, first.text
        status = server.wait_build(http, first.json()["build_id"], timeout=240)
        assert status["state"] == "failed" and "aten.sort.default" in status["error"]
        started = http.get("/v1/stats").json()["builds_started"]
        again = http.post("/v1/kernels", json=body)
        assert again.status_code == 202 and again.json()["build_id"] == first.json()["build_id"]
        assert again.json()["state"] == "failed"
        t0 = time.monotonic()
        waited = http.post("/v1/kernels", params={"wait": "true"}, json=body)
        assert waited.status_code == 422 and "aten.sort.default" in waited.json()["detail"]["message"]
        assert time.monotonic() - t0 < 5  # answered from memory
        assert http.get("/v1/stats").json()["builds_started"] == started


def test_a_core_printing_a_huge_line_still_builds(server: Server) -> None:
    # One 300 kB line without a newline stalled the build slot for good (StreamReader.readline).
    source = "import torch\ndef core(x, v):\n    print('x' * 300000)\n    h = v * 0.25 + x\n    return h, h\n"
    with server.client(timeout=300) as http:
        response = http.post("/v1/kernels", json=_body(source))
        assert response.status_code == 202, response.text
        status = server.wait_build(http, response.json()["build_id"], timeout=240)
        assert status["state"] == "succeeded", status
        assert status["log_tail"] and all(len(line) <= 520 for line in status["log_tail"])
        assert any(line.endswith("[cut]") for line in status["log_tail"])
