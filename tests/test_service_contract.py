"""The HTTP contract, in process: the OpenAPI document against real answers, auth before
bodies, canonical targets, exact sha checks, bounded waits, a damaged store never served."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import neurons
import pytest
import store_damage
from fastapi.testclient import TestClient
from test_store import _artifact, _put, config_id

import flexsn_service.api.routes.kernels as kernel_routes
from flexsn_core import KernelSpec
from flexsn_core.local import LocalStore
from flexsn_service import Settings, create_app, schemas
from flexsn_service.builds.manager import BuildActivity
from flexsn_service.builds.source_check_pool import CheckUnavailable
from flexsn_service.store import StoreError
from flexsn_service.store.reads import ReadCache

TOKENS = {scope: secrets.token_urlsafe(32) for scope in ("read", "build", "admin")}
LIMIT = 50_000


@dataclass
class FakeRecord:
    """What the routes read from a build record (the build manager itself is tested elsewhere)."""

    key: str
    targets: list[str]
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "queued"
    error: str | None = None
    error_type: str | None = None
    user_error: bool = False
    error_op: str | None = None
    error_line: int | None = None
    log: deque[str] = field(default_factory=deque)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_dict(self) -> dict[str, Any]:
        return {"build_id": self.id, "key": self.key, "state": self.state, "targets": self.targets,
                "progress": {"stage": self.state, "done": 0, "total": 0}, "error": self.error,
                "error_type": self.error_type, "user_error": self.user_error, "error_op": self.error_op,
                "error_line": self.error_line, "log_tail": list(self.log), "created": 1.0, "started": None,
                "finished": None}


class FakeBuilds:
    def __init__(self) -> None:
        self.records: dict[str, FakeRecord] = {}
        self.next_state = "queued"
        self.requested: list[tuple[str, list[str]]] = []

    async def request(self, spec: KernelSpec, targets: list[str]) -> tuple[FakeRecord, bool]:
        self.requested.append((spec.key, targets))
        record = FakeRecord(spec.key, targets, state=self.next_state)
        if self.next_state == "failed":
            record.error, record.error_type, record.user_error = "aten.sort.default is not supported", "X", True
            record.error_op, record.error_line = "aten.sort.default", 3
            record.done.set()
        self.records[record.id] = record
        return record, True

    def get(self, build_id: str) -> FakeRecord | None:
        return self.records.get(build_id)

    async def status(self, build_id: str) -> dict[str, Any] | None:
        record = self.records.get(build_id)
        return record.to_dict() if record is not None else None

    async def activity(self) -> BuildActivity:
        records = list(self.records.values())
        return BuildActivity([r for r in records if r.state in ("queued", "running")],
                             [r for r in records if r.state == "failed"])


class BrokenStore:
    """Every call fails the way an unreachable store does."""

    def __getattr__(self, name: str) -> Any:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise StoreError("the disk went away")

        return fail


@pytest.fixture
def client(tmp_path):  # noqa: ANN001, ANN201
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{value} {scope} {scope}-user\n" for scope, value in TOKENS.items()))
    settings = Settings(store=f"disk:{tmp_path / 'store'}", use_gpu=False, max_request_bytes=LIMIT, tokens=tokens)
    with TestClient(create_app(settings)) as c:
        c.app.state.ctx.builds = FakeBuilds()
        yield c


def _auth(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


def _ctx(client: TestClient) -> Any:
    return client.app.state.ctx


def _spec(name: str = "lif_hard") -> dict[str, Any]:
    model = neurons.MODELS[name]
    return KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics)).to_dict()


# ------------------------------------------------------------------ OpenAPI
def _schemas_of(response_doc: dict[str, Any]) -> list[str] | None:
    """The component names a declared JSON body may be (None: not a declared model)."""
    schema = response_doc.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    refs = [schema] if "$ref" in schema else schema.get("anyOf", [])
    names = [r["$ref"].rsplit("/", 1)[1] for r in refs if "$ref" in r]
    return names or None


def _conforms(body: Any, names: list[str]) -> bool:
    for name in names:
        try:
            getattr(schemas, name).model_validate(body)
            return True
        except Exception:  # noqa: BLE001 - try the next one
            continue
    return False


def test_the_openapi_document_matches_every_answer(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # our 422s are {"detail": str}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    store = _ctx(client).store
    art = _artifact("alif", (500, 70_000))
    _put(store, art, now=1.0)
    key, blob = art.key, art.manifest["binaries"][0]["sha256"]
    missing = "c" * 64
    big = {**_spec(), "source": "#" * (LIMIT + 10)}
    tuning = {"target": "cuda:90", "choices": [{"kind": "inference", "bucket": 1, "variant": "aligned",
                                                "config_id": config_id(0)}]}
    builds: FakeBuilds = _ctx(client).builds
    failed = FakeRecord(key, ["cuda:90"], state="failed", error="boom", user_error=True)
    builds.records[failed.id] = failed
    R, B, A = _auth("read"), _auth("build"), _auth("admin")

    cases: list[tuple[str, str, dict[str, Any]]] = [
        # POST /v1/kernels
        ("post", "/v1/kernels", {"json": _spec("alif"), "headers": B}),                         # 200 cached? no: 202
        ("post", "/v1/kernels", {"json": _spec(), "headers": B}),                                # 202
        ("post", "/v1/kernels", {"json": _spec()}),                                              # 401
        ("post", "/v1/kernels", {"json": _spec(), "headers": R}),                                # 403
        ("post", "/v1/kernels", {"json": big, "headers": B}),                                    # 413
        ("post", "/v1/kernels", {"json": {**_spec(), "targets": ["cuda:5"]}, "headers": B}),     # 422
        ("post", "/v1/kernels", {"json": {**_spec(), "dtype": "int8"}, "headers": B}),           # 422
        # GET /v1/kernels
        ("get", "/v1/kernels", {"headers": R}), ("get", "/v1/kernels", {}),
        ("get", "/v1/kernels", {"params": {"limit": 0}, "headers": R}),
        # GET /v1/kernels/{key}
        ("get", f"/v1/kernels/{key}", {"headers": R}), ("get", f"/v1/kernels/{missing}", {"headers": R}),
        ("get", f"/v1/kernels/{key.upper()}", {"headers": R}), ("get", f"/v1/kernels/{key}", {}),
        # bundle
        ("get", f"/v1/kernels/{key}/bundle", {"headers": R}), ("get", f"/v1/kernels/{missing}/bundle", {"headers": R}),
        ("get", f"/v1/kernels/{key}/bundle", {"params": {"target": "cuda:5"}, "headers": R}),
        ("get", f"/v1/kernels/{key}/bundle", {}),
        # tuning
        ("post", f"/v1/kernels/{key}/tuning", {"json": tuning, "headers": B}),
        ("post", f"/v1/kernels/{missing}/tuning", {"json": tuning, "headers": B}),
        ("post", f"/v1/kernels/{key}/tuning", {"json": {**tuning, "target": "cuda:80"}, "headers": B}),
        ("post", f"/v1/kernels/{key}/tuning", {"json": {**tuning, "pad": "x" * LIMIT}, "headers": B}),
        ("post", f"/v1/kernels/{key}/tuning", {"json": tuning, "headers": R}),
        ("post", f"/v1/kernels/{key}/tuning", {"json": tuning}),
        # blobs
        ("get", f"/v1/blobs/{blob}", {"headers": R}), ("get", f"/v1/blobs/{missing}", {"headers": R}),
        ("get", f"/v1/blobs/{blob}", {"headers": {**R, "If-None-Match": f'"{blob}"'}}),
        ("get", f"/v1/blobs/{blob}%0A", {"headers": R}), ("get", f"/v1/blobs/{blob}", {}),
        # builds
        ("get", f"/v1/builds/{failed.id}", {"headers": R}), ("get", "/v1/builds/nope", {"headers": R}),
        ("get", "/v1/builds/" + "x" * 65, {"headers": R}), ("get", "/v1/builds/nope", {}),
        # status
        ("get", "/v1/stats", {"headers": R}), ("get", "/v1/stats", {}), ("get", "/metrics", {"headers": R}),
        ("get", "/metrics", {}), ("get", "/healthz", {}), ("get", "/v1/version", {}),
        # delete last
        ("delete", f"/v1/kernels/{missing}", {"headers": A}), ("delete", f"/v1/kernels/{key}", {"headers": B}),
        ("delete", f"/v1/kernels/{key}", {}), ("delete", f"/v1/kernels/{key}!", {"headers": A}),
        ("delete", f"/v1/kernels/{key}", {"headers": A}),
    ]
    answers = [(method, path, client.request(method.upper(), path, **kw)) for method, path, kw in cases]
    # the 200 of POST /v1/kernels (cached), wait=true failures, and 503s
    answers.append(("post", "/v1/kernels", client.post("/v1/kernels", json=_spec("lif_soft"), headers=B)))
    art2 = _artifact("lif_soft", (300,))
    _put(store, art2, now=1.0)
    answers.append(("post", "/v1/kernels", client.post("/v1/kernels", json={**_spec("lif_soft"), "targets": ["cuda:90"]},
                                                       headers=B)))
    builds.next_state = "failed"
    answers.append(("post", "/v1/kernels", client.post("/v1/kernels", params={"wait": "true"},
                                                       json=_spec("plif"), headers=B)))
    # a manifest unchanged since the client's copy: 304
    etag = client.get(f"/v1/kernels/{art2.key}", headers=A).headers["etag"]
    answers.append(("get", f"/v1/kernels/{art2.key}",
                    client.get(f"/v1/kernels/{art2.key}", headers={**A, "If-None-Match": etag})))
    _ctx(client).store = BrokenStore()
    reads = _ctx(client).reads
    _ctx(client).reads = ReadCache(BrokenStore(), max_bytes=1 << 20, ttl_s=1.0)  # nothing verified in memory yet
    for method, path in [("get", "/v1/kernels"), ("get", f"/v1/kernels/{key}"), ("get", f"/v1/kernels/{key}/bundle"),
                         ("delete", f"/v1/kernels/{key}"), ("post", f"/v1/kernels/{key}/tuning"),
                         ("get", f"/v1/blobs/{blob}"), ("get", "/v1/stats"), ("get", "/healthz"),
                         ("post", "/v1/kernels")]:
        body = tuning if path.endswith("tuning") else _spec("izhikevich") if method == "post" else None
        answers.append((method, path, client.request(method.upper(), path, json=body, headers=A)))
    _ctx(client).store = store
    _ctx(client).reads = reads
    # Without tokens the service serves loopback clients only: 403 for anyone else, on every route.
    settings = _ctx(client).settings.model_copy(update={"tokens": None})
    with TestClient(create_app(settings), client=("10.1.2.3", 40000)) as remote:
        for method, path in [("get", "/v1/kernels"), ("get", f"/v1/kernels/{key}"),
                             ("get", f"/v1/kernels/{key}/bundle"), ("get", f"/v1/blobs/{blob}"),
                             ("get", "/v1/builds/nope"), ("get", "/v1/stats"), ("get", "/metrics")]:
            answers.append((method, path, remote.request(method.upper(), path)))

    def operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, ops in doc["paths"].items():
            parts, want = template.strip("/").split("/"), path.split("?")[0].strip("/").split("/")
            if len(parts) == len(want) and all(p.startswith("{") or p == w for p, w in zip(parts, want, strict=True)):
                if method in ops:
                    return template, ops[method]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    seen: set[tuple[str, str, str]] = set()
    for method, path, response in answers:
        template, op = operation(method, path)
        status = str(response.status_code)
        assert status in op["responses"], (method, template, status, response.text[:300])
        seen.add((method, template, status))
        declared = op["responses"][status]
        names = _schemas_of(declared)
        if names is not None:
            assert _conforms(response.json(), names), (method, template, status, names, response.text[:300])
        elif "application/json" in declared.get("content", {}):
            assert isinstance(response.json(), dict), (method, template, status)
        elif declared.get("content"):
            assert response.headers["content-type"].startswith(next(iter(declared["content"])))
        else:
            assert not response.content, (method, template, status)
    declared_all = {(m, t, s) for t, ops in doc["paths"].items() for m, op in ops.items() for s in op["responses"]}
    never_answered = declared_all - seen
    assert not never_answered, f"declared but never produced: {sorted(never_answered)}"


# --------------------------------------------------------------------- auth
def test_a_request_without_a_known_token_gets_401_before_its_body_is_read(client: TestClient) -> None:
    read = {"body": False}

    def body():  # noqa: ANN202 - a streamed (chunked) body that records whether it was read
        read["body"] = True
        yield b"{}"

    # TestClient runs the app in-process: a body the app never asks for is never pulled from the generator.
    for headers in ({}, {"Authorization": "Bearer " + secrets.token_urlsafe(32)}, {"Authorization": "Basic x"}):
        response = client.post("/v1/kernels", content=body(), headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert set(response.json()) == {"detail"}
    assert not read["body"]
    # a known token with too small a scope: 403 from the route (the body is read then)
    response = client.post("/v1/kernels", json=_spec(), headers=_auth("read"))
    assert response.status_code == 403 and "'build' scope" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200  # public
    assert client.get("/openapi.json").status_code == 200


def test_streamed_bodies_over_the_limit_get_413(client: TestClient) -> None:
    def chunks():  # noqa: ANN202
        for _ in range(8):
            yield b" " * (LIMIT // 4)

    response = client.post("/v1/kernels", content=chunks(), headers={**_auth("build"), "Content-Type": "application/json"})
    assert response.status_code == 413 and f"{LIMIT}-byte limit" in response.json()["detail"]


# ----------------------------------------------------------- targets and shas
def test_targets_are_canonical_and_impossible_ones_are_422(client: TestClient) -> None:
    builds: FakeBuilds = _ctx(client).builds
    B = _auth("build")
    first = client.post("/v1/kernels", json={**_spec(), "targets": ["cuda:090", "cuda:90", "cuda:0080"]}, headers=B)
    assert first.status_code == 202
    assert builds.requested[-1] == (KernelSpec.from_dict(_spec()).key, ["cuda:80", "cuda:90"])
    for target in ("cuda:5", "cuda:999", "cuda:-1", "rocm:90", "sm90", "cuda:90\n", "cuda:110"):
        response = client.post("/v1/kernels", json={**_spec(), "targets": [target]}, headers=B)
        assert response.status_code == 422, (target, response.text)
        assert "cuda:90" in response.json()["detail"]
    # a stored kernel answers for any spelling of its targets
    art = _artifact("alif", (300,))
    _put(_ctx(client).store, art, now=1.0)
    hit = client.post("/v1/kernels", json={**_spec("alif"), "targets": ["cuda:090"]}, headers=B)
    assert hit.status_code == 200 and hit.json()["key"] == art.key
    bundle = client.get(f"/v1/kernels/{art.key}/bundle", params={"target": "cuda:090"}, headers=_auth("read"))
    assert bundle.status_code == 200


def test_keys_and_shas_are_exactly_64_lowercase_hex_digits(client: TestClient, tmp_path) -> None:  # noqa: ANN001
    R = _auth("read")
    good = "a" * 64
    assert client.get(f"/v1/kernels/{good}", headers=R).status_code == 404
    for bad in (good + "%0A", good + "%0D%0A", good.upper(), good[:-1], good + "a", "g" * 64):
        assert client.get(f"/v1/kernels/{bad}", headers=R).status_code == 422, bad
        assert client.get(f"/v1/blobs/{bad}", headers=R).status_code == 422, bad
    mirror = LocalStore(tmp_path / "mirror")
    for bad in (good + "\n", good.upper(), "../" + good[3:]):
        with pytest.raises(ValueError, match="not a"):
            mirror.has_blob(bad)
        with pytest.raises(ValueError, match="not a"):
            mirror.get_manifest(bad)


# ------------------------------------------------------------------ builds
def test_wait_true_never_hangs_on_a_build(client: TestClient, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(kernel_routes, "WAIT_MARGIN_S", 0.2)
    _ctx(client).settings = _ctx(client).settings.model_copy(update={"build_timeout_s": 0.1})
    started = time.monotonic()
    response = client.post("/v1/kernels", params={"wait": "true"}, json=_spec(), headers=_auth("build"))
    assert response.status_code == 202 and response.json()["status_url"].startswith("/v1/builds/")
    assert time.monotonic() - started < 5


def test_a_busy_source_check_is_503_with_retry_after(client: TestClient, monkeypatch) -> None:  # noqa: ANN001
    async def busy(*_args: Any, **_kwargs: Any) -> None:
        raise CheckUnavailable("every source check process stayed busy for 60 s; retry later")

    monkeypatch.setattr(_ctx(client).checks, "check", busy)
    response = client.post("/v1/kernels", json=_spec(), headers=_auth("build"))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"


def test_the_source_check_answers_through_the_api(client: TestClient) -> None:
    B = _auth("build")
    bad = {**_spec(), "source": "import torch\nT = torch\n\ndef lif_hard(x, v):\n    return x, v\n"}
    response = client.post("/v1/kernels", json=bad, headers=B)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the core source was rejected: line 2: the module 'torch'")
    deep = {**_spec(), "source": "def lif_hard(x, v):\n    return " + " + ".join(["x"] * 500) + ", v\n"}
    assert client.post("/v1/kernels", json=deep, headers=B).status_code == 422


# -------------------------------------------------------------- store damage
def test_a_damaged_kernel_is_never_served(client: TestClient) -> None:
    store, R = _ctx(client).store, _auth("read")
    art = _artifact("alif", (500, 70_000))
    _put(store, art, now=1.0)
    small = next(s for s, d in art.blobs.items() if 500 <= len(d) < 1000)
    large = next(s for s, d in art.blobs.items() if len(d) > 60_000)
    assert store_damage.rewrite(store.directory, f"blob:{large}", store_damage.flip_tail) == "file"
    assert store_damage.rewrite(store.directory, f"blob:{small}", store_damage.flip_tail) == "row"
    response = client.get(f"/v1/blobs/{large}", headers=R)
    assert response.status_code == 404
    assert client.get(f"/v1/kernels/{art.key}/bundle", headers=R).status_code == 404  # the small one is damaged
    assert client.get(f"/v1/kernels/{art.key}", headers=R).status_code == 404
    assert store.verify().ok or not store.verify().corrupt_blobs
    # a rebuild (POST -> the build manager) is what a miss leads to
    builds: FakeBuilds = _ctx(client).builds
    assert client.post("/v1/kernels", json=_spec("alif"), headers=_auth("build")).status_code == 202
    assert builds.requested[-1][0] == art.key


def test_listing_survives_an_unreadable_manifest(client: TestClient) -> None:
    store, R = _ctx(client).store, _auth("read")
    good, bad = _artifact("lif_hard", (300,)), _artifact("alif", (300,))
    _put(store, good, now=1.0)
    _put(store, bad, now=1.0)
    store_damage.rewrite(store.directory, f"manifest:{bad.key}", lambda b: b[: len(b) // 2])
    page = client.get("/v1/kernels", headers=R)
    assert page.status_code == 200 and [i["key"] for i in page.json()["items"]] == [good.key]
    assert client.get(f"/v1/kernels/{bad.key}", headers=R).status_code == 404
    served = client.get(f"/v1/blobs/{good.manifest['source']['sha256']}", headers=R)
    assert hashlib.sha256(served.content).hexdigest() == good.manifest["source"]["sha256"]


def test_the_http_client_sees_the_same_contract(client: TestClient) -> None:
    """Sanity: the error body of the body-limit middleware is the one the routes use."""
    response = client.post("/v1/kernels", content=b"x" * (LIMIT + 1), headers=_auth("build"))
    assert response.status_code == 413 and isinstance(response.json()["detail"], str)
    assert isinstance(httpx.Response(200).status_code, int)
