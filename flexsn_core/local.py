"""Build or find a spec's kernels on this machine.

``kernels_for(spec, device)`` is the ``"triton"`` (and ``"inductor"``) kernel
provider of :mod:`flexsn_core.providers`, what ``FlexSN(backend="triton")`` uses:

* CUDA device: look in the local artifact store (``$FLEXSN_CACHE_DIR/artifacts``)
  for binaries of this GPU's arch (a ``local_hit``), else trace, generate and
  compile for it and store the result;
* CPU device under ``TRITON_INTERPRET=1``: trace and generate only; the
  interpreter runs the source.

Kernel sets are memoized per process, so a hundred FlexSN layers with the same
core trace and load once.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from .counters import bump
from .artifacts import Artifact, build_artifacts, generate, merge_binaries, sha256_hex, validate_manifest
from .compile import default_configs
from .errors import ArtifactError, IntegrityError
from .runtime import KernelSet
from .settings import cache_dir, interpreter_enabled
from .spec import KernelSpec

__all__ = ["LocalStore", "kernels_for", "local_target", "clear_memo"]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore:
    """Artifacts on local disk: ``blobs/<sha>`` and ``manifests/<key>.json``.

    Blobs are written before the manifest that names them, each atomically, so
    a reader never sees a manifest whose blobs are missing.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "artifacts"

    def _blob_path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return self.root / "blobs" / sha[:2] / sha

    def _manifest_path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a spec key: {key!r}")
        return self.root / "manifests" / f"{key}.json"

    def has_blob(self, sha: str) -> bool:
        return self._blob_path(sha).exists()

    def get_blob(self, sha: str) -> bytes:
        path = self._blob_path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"blob {sha[:16]}… is not in the local store {self.root}") from exc
        if sha256_hex(data) != sha:
            path.unlink(missing_ok=True)
            raise IntegrityError(f"local blob {sha[:16]}… was corrupt and has been removed")
        return data

    def put_blob(self, sha: str, data: bytes) -> None:
        if sha256_hex(data) != sha:
            raise IntegrityError(f"refusing to store blob {sha[:16]}…: bytes do not match")
        path = self._blob_path(sha)
        if not path.exists():
            _atomic_write(path, data)

    def get_manifest(self, key: str) -> dict[str, Any] | None:
        path = self._manifest_path(key)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            path.unlink(missing_ok=True)
            return None
        validate_manifest(manifest)
        return manifest

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        validate_manifest(manifest)
        missing = [b["sha256"] for b in manifest["binaries"] if not self.has_blob(b["sha256"])]
        if missing:
            raise ArtifactError(f"refusing to store a manifest whose {len(missing)} blob(s) are missing")
        _atomic_write(self._manifest_path(manifest["key"]), json.dumps(manifest, sort_keys=True).encode())

    def record_tuning(self, key: str, decision: dict[str, Any]) -> None:
        """Add one tuned choice to a stored manifest (first writer of a bucket wins)."""
        manifest = self.get_manifest(key)
        if manifest is None:
            return
        table = manifest.setdefault("tuning", {}).setdefault(decision["target"], {})
        bucket = table.setdefault(decision["kind"], {}).setdefault(str(decision["bucket"]), {})
        if decision["variant"] in bucket:
            return
        bucket[decision["variant"]] = decision["config_id"]
        _atomic_write(self._manifest_path(key), json.dumps(manifest, sort_keys=True).encode())

    def put(self, artifact: Artifact) -> None:
        artifact.verify()
        for sha, data in artifact.blobs.items():
            self.put_blob(sha, data)
        self.put_manifest(artifact.manifest)


def local_target(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"cuda:{major * 10 + minor}"


_memo: dict[tuple[str, str], KernelSet] = {}
_memo_lock = threading.Lock()


def clear_memo() -> None:
    """Forget the kernel sets loaded in this process (tests use this)."""
    with _memo_lock:
        _memo.clear()


def kernels_for(spec: KernelSpec, device: torch.device, *, store: LocalStore | None = None) -> KernelSet:
    """The kernel set of ``spec`` for ``device``, built locally if needed."""
    mode = "interpret" if device.type == "cpu" else local_target(device)
    memo_key = (spec.key, mode)
    with _memo_lock:
        ks = _memo.get(memo_key)
    if ks is not None:
        return ks
    if device.type == "cpu":
        if not interpreter_enabled():
            raise ArtifactError("FlexSN Triton kernels run on CPU tensors only with TRITON_INTERPRET=1")
        gen = generate(spec)
        artifact = build_artifacts(spec, targets=(), generated=gen)
        ks = KernelSet(artifact.manifest, generated=gen)
    elif device.type == "cuda":
        store = store or LocalStore()
        target = mode
        manifest = store.get_manifest(spec.key)
        if manifest is not None and any(b["target"] == target for b in manifest["binaries"]):
            bump("local_hits")
        else:
            artifact = build_artifacts(spec, targets=(target,), configs=default_configs(spec.torch_dtype))
            for sha, data in artifact.blobs.items():
                store.put_blob(sha, data)
            manifest = artifact.manifest if manifest is None else merge_binaries(manifest, artifact.manifest)
            store.put_manifest(manifest)
        ks = KernelSet(manifest, fetch=store.get_blob)
        ks.on_tuned = lambda decision, _store=store, _key=spec.key: _store.record_tuning(_key, decision)
    else:
        raise ArtifactError(f"FlexSN Triton kernels cannot run on {device.type} tensors")
    with _memo_lock:
        return _memo.setdefault(memo_key, ks)
