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

import os
import threading

import torch

from .compile import default_configs
from .counters import bump
from .errors import ArtifactError
from .manifest import TuningChoice, targets_of
from .runtime import KernelSet
from .settings import cache_dir, interpreter_enabled
from .spec import KernelSpec
from .store import FileStore

__all__ = ["LocalStore", "kernels_for", "local_target", "clear_memo"]


class LocalStore(FileStore):
    """This machine's artifact store: a :class:`~flexsn_core.store.FileStore` in ``$FLEXSN_CACHE_DIR/artifacts``.

    The local builds of ``backend="triton"`` and the client's mirror both keep
    their artifacts here (the store interface and its rules: flexsn_core.store).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        super().__init__(root if root is not None else cache_dir() / "artifacts")


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
    # Tracing and code generation (.artifacts) are imported only to build: a GPU node whose store
    # has the kernels (a local hit, or the client's mirror, which shares LocalStore) never pays them.
    if device.type == "cpu":
        from .artifacts import build_artifacts, generate

        if not interpreter_enabled():
            raise ArtifactError("FlexSN Triton kernels run on CPU tensors only with TRITON_INTERPRET=1")
        gen = generate(spec)
        artifact = build_artifacts(spec, targets=(), generated=gen)
        ks = KernelSet(artifact.manifest, generated=gen)
    elif device.type == "cuda":
        store = store or LocalStore()
        target = mode
        manifest = store.get_manifest(spec.key)
        if manifest is not None and target in targets_of(manifest):
            bump("local_hits")
        else:
            from .artifacts import build_artifacts

            # blobs first, then the manifest merged with what another process may have stored meanwhile
            artifact = build_artifacts(spec, targets=(target,), configs=default_configs(spec.torch_dtype))
            manifest = store.put(artifact)
        ks = KernelSet(manifest, fetch=store.get_blob)
        ks.on_tuned = lambda decision, _store=store, _key=spec.key: _store.record_tuning(
            _key, [TuningChoice.of(decision)]
        )
    else:
        raise ArtifactError(f"FlexSN Triton kernels cannot run on {device.type} tensors")
    with _memo_lock:
        return _memo.setdefault(memo_key, ks)
