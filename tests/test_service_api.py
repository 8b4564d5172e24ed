"""HTTP API details, in process (FastAPI TestClient), plus the service's pure helpers."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import uuid
from pathlib import Path

import neurons
import pytest
from fastapi.testclient import TestClient
from test_store import _artifact, _put, config_id

from flexsn_core import KernelSpec
from flexsn_service import Settings, create_app
from flexsn_service.auth import load_tokens, token_problem
from flexsn_service.builds.sandbox import SourceRejected, check_source
from flexsn_service.cli import parse_size
from flexsn_service.config import parse_configs


@pytest.fixture
def client(tmp_path):  # noqa: ANN001, ANN201
    settings = Settings(store=f"disk:{tmp_path / 'store'}", use_gpu=False, max_request_bytes=50_000)
    with TestClient(create_app(settings)) as c:
        yield c


def _store(client: TestClient):  # noqa: ANN202
    return client.app.state.ctx.store


def test_openapi_has_stable_operation_ids(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ids = {op["operationId"] for methods in paths.values() for op in methods.values()}
    assert {"request_kernels", "get_kernel", "list_kernels", "delete_kernel", "report_tuning", "get_blob",
            "get_build", "get_stats", "get_metrics", "healthz"} <= ids


def test_openapi_shows_the_manifest_schema(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schema = doc["components"]["schemas"]["Manifest"]
    assert {"key", "spec", "source", "kernels", "binaries", "tuning"} <= set(schema["properties"])
    assert doc["components"]["schemas"]["Binary"]["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"
    for path, method in (("/v1/kernels/{key}", "get"), ("/v1/kernels", "post")):
        ok = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"] == "#/components/schemas/Manifest", (path, method, ok)


def test_request_ids_are_returned(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc123"}).headers["x-request-id"] == "abc123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 16


def test_invalid_requests_get_actionable_422s(client: TestClient) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).to_dict()
    r = client.post("/v1/kernels", json={**spec, "dtype": "int8"})
    assert r.status_code == 422 and "dtype" in r.json()["detail"]
    r = client.post("/v1/kernels", json={k: v for k, v in spec.items() if k != "entry"})
    assert r.status_code == 422 and "entry" in r.json()["detail"]
    r = client.post("/v1/kernels", json={**spec, "requires_grad": [True]})
    assert r.status_code == 422 and "requires_grad must hold 2 bools" in r.json()["detail"]
    r = client.post("/v1/kernels", json={**spec, "targets": ["sm90"]})
    assert r.status_code == 422 and "cuda:90" in r.json()["detail"]
    assert client.get("/v1/kernels/not-a-key").status_code == 422
    assert client.get(f"/v1/kernels/{'a' * 64}").status_code == 404
    assert client.get(f"/v1/blobs/{'a' * 64}").status_code == 404
    assert client.get("/v1/builds/nope").status_code == 404


def test_request_body_size_limit(client: TestClient) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).to_dict()
    huge = {**spec, "source": spec["source"] + "\n# " + "x" * 60_000 + "\n"}
    r = client.post("/v1/kernels", json=huge)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_blobs_support_etags(client: TestClient) -> None:
    art = _artifact("lif_hard", (100_000,))
    _put(_store(client), art, now=1.0)
    sha = next(s for s, d in art.blobs.items() if len(d) > 90_000)
    first = client.get(f"/v1/blobs/{sha}")
    assert first.status_code == 200 and hashlib.sha256(first.content).hexdigest() == sha
    assert client.get(f"/v1/blobs/{sha}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304


def test_tuning_reports_are_validated_and_first_writer_wins(client: TestClient) -> None:
    art = _artifact("alif", (300, 400))  # binary 0 unaligned, binary 1 aligned-only
    _put(_store(client), art, now=1.0)
    url = f"/v1/kernels/{art.key}/tuning"
    c0, c1 = config_id(0), config_id(1)
    bad = client.post(url, json={"target": "cuda:90", "choices": [
        {"kind": "inference", "bucket": 1, "variant": "aligned", "config_id": "nope"}]})
    assert bad.status_code == 422 and "unknown config" in bad.json()["detail"]
    assert client.post(url, json={"target": "cuda:80", "choices": [
        {"kind": "inference", "bucket": 1, "variant": "aligned", "config_id": c0}]}).status_code == 422
    good = client.post(url, json={"target": "cuda:90", "choices": [
        {"kind": "inference", "bucket": 1, "variant": "aligned", "config_id": c1}]})
    assert good.status_code == 200 and good.json()["accepted"] == 1
    again = client.post(url, json={"target": "cuda:90", "choices": [
        {"kind": "inference", "bucket": 1, "variant": "aligned", "config_id": c0}]})
    assert again.json()["accepted"] == 0
    manifest = client.get(f"/v1/kernels/{art.key}").json()
    assert manifest["tuning"]["cuda:90"]["inference"]["1"]["aligned"] == c1


def test_a_tuning_choice_that_does_not_fit_its_alignment_is_a_422(client: TestClient) -> None:
    """An aligned-only binary as the "unaligned" choice would read out of bounds: refused, nothing recorded."""
    art = _artifact("alif", (300, 400))  # binary 0 unaligned, binary 1 aligned-only
    _put(_store(client), art, now=1.0)
    url = f"/v1/kernels/{art.key}/tuning"
    ok = {"kind": "inference", "bucket": 2, "variant": "unaligned", "config_id": config_id(0)}
    wrong = {"kind": "inference", "bucket": 1, "variant": "unaligned", "config_id": config_id(1)}
    response = client.post(url, json={"target": "cuda:90", "choices": [ok, wrong]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "aligned-only binary" in detail and "cannot be the 'unaligned' choice" in detail and config_id(1) in detail
    assert client.get(f"/v1/kernels/{art.key}").json()["tuning"] == {}  # not even the good one of the report
    # the same binary as the aligned choice is fine, and an unknown bucket is refused by the schema
    assert client.post(url, json={"target": "cuda:090", "choices": [{**wrong, "variant": "aligned"}]}).json() == {
        "accepted": 1, "tuning": {"inference": {"1": {"aligned": config_id(1)}}}}
    assert client.post(url, json={"target": "cuda:90", "choices": [{**ok, "bucket": 5}]}).status_code == 422


def test_delete_and_list(client: TestClient) -> None:
    arts = [_artifact(n, (200,)) for n in ("lif_hard", "alif", "plif")]
    for art in arts:
        _put(_store(client), art, now=1.0)
    page = client.get("/v1/kernels", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get("/v1/kernels", params={"cursor": page["next_cursor"]}).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert client.delete(f"/v1/kernels/{arts[0].key}").status_code == 204
    assert client.delete(f"/v1/kernels/{arts[0].key}").status_code == 404
    assert client.get("/v1/stats").json()["kernels"] == 2


# ------------------------------------------------------------------ helpers
def test_captured_sources_of_every_test_neuron_pass_the_sandbox() -> None:
    for model in neurons.MODELS.values():
        spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                    num_static=len(model.statics))
        check_source(spec)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import torch\ndef core(x, v):\n    return torch.ops.aten.add(x, v), v\n", "torch.ops"),
        ("import torch\ndef core(x, v):\n    return x, torch._C._nn.gelu(v)\n", "private"),
        ("def core(x, v):\n    return getattr(x, 'exp')(), v\n", "'getattr'"),
        ("import torch.utils\ndef core(x, v):\n    return x, v\n", "torch.utils"),
        ("from torch import load\ndef core(x, v):\n    return x, v\n", "torch.load"),
        ("class A:\n    pass\ndef core(x, v):\n    return x, v\n", "module-level"),
        ("def core(x, v):\n    global Y\n    return x, v\n", "global"),
        ("def core(x, v):\n    return x.numpy(), v\n", "'numpy'"),
        ("import torch\ndef core(x, v, *, scale):\n    return x, v\n", "keyword-only"),
    ],
)
def test_sandbox_rejections(source: str, message: str) -> None:
    spec = KernelSpec(source=source, entry="core", num_inputs=1, num_states=1, num_outputs=1)
    with pytest.raises(SourceRejected, match=message.replace("(", r"\(")):
        check_source(spec)


def test_tokens_file_rules(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "tokens"
    token = secrets.token_urlsafe(32)
    path.write_text("changeme read\n")
    with pytest.raises(ValueError, match="does not look generated.*token_urlsafe"):
        load_tokens(path)
    path.write_text(token + " superuser\n")
    with pytest.raises(ValueError, match="unknown scope"):
        load_tokens(path)
    path.write_text(f"# comment\n\n{token} admin root\n")
    table = load_tokens(path)
    assert table.authorize("Bearer " + token, "build").name == "root"
    assert load_tokens(None).enabled is False


def test_the_example_tokens_file_never_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "docker" / "tokens.example"
    with pytest.raises(ValueError, match="does not look generated") as info:
        load_tokens(example)
    assert "secrets.token_urlsafe(32)" in str(info.value)
    for line in example.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert token_problem(line.split()[0]) is not None


@pytest.mark.parametrize(
    "placeholder",
    ["REPLACE-WITH-A-GENERATED-TOKEN-1", "Replace-With-A-Generated-Token-2", "replace_with_a_generated_token_1",
     "CHANGE-ME-TO-A-LONG-RANDOM-SECRET-TOKEN-PLEASE", "your-secret-token-goes-here-now-ok",
     "PUT_A_REAL_TOKEN_HERE_0000000000000", "a" * 64, "0" * 40, "changeme", "short-but-Random-9x", "token with spaces"],
)
def test_placeholder_tokens_are_refused_by_rule(placeholder: str) -> None:
    assert token_problem(placeholder) is not None


def test_generated_tokens_are_always_accepted() -> None:
    generators = {
        "token_urlsafe(32)": lambda: secrets.token_urlsafe(32),
        "token_urlsafe(24)": lambda: secrets.token_urlsafe(24),
        "token_hex(32)": lambda: secrets.token_hex(32),
        "token_hex(16)": lambda: secrets.token_hex(16),
        "openssl rand -base64 32": lambda: base64.b64encode(os.urandom(32)).decode(),
        "uuid4().hex": lambda: uuid.uuid4().hex,
        "base32": lambda: base64.b32encode(os.urandom(20)).decode(),
    }
    for name, generate in generators.items():
        refused = [t for t in (generate() for _ in range(20_000)) if token_problem(t) is not None]
        assert not refused, (name, refused[:3], token_problem(refused[0]) if refused else None)


def test_size_and_config_parsing() -> None:
    assert parse_size("1500") == 1500 and parse_size("2K") == 2048 and parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size("3MiB") == 3 * 2**20
    assert [c.id for c in parse_configs("1024x4,512x2x3")] == [
        "b1024-w4-s1-a16", "b1024-w4-s1-u", "b512-w2-s3-a16", "b512-w2-s3-u"]
    with pytest.raises(ValueError, match="power of two"):
        parse_configs("1000x4")


def test_bundle_returns_verified_blobs_for_a_target(client: TestClient) -> None:
    import io
    import tarfile

    art = _artifact("lif_hard", (500, 600))
    _put(_store(client), art, now=1.0)
    r = client.get(f"/v1/kernels/{art.key}/bundle", params={"target": "cuda:90"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    assert set(members) == set(art.blobs)
    assert all(hashlib.sha256(data).hexdigest() == name for name, data in members.items())
    assert client.get(f"/v1/kernels/{'b' * 64}/bundle").status_code == 404
