"""Artifacts: a spec's kernels as JSON metadata plus content-addressed blobs.

``build_artifacts`` generates the kernel module (from a given
``GeneratedKernels``, e.g. ``ir.generate_from_ir`` on a jail's IR, or by
tracing the core through the IR here) and compiles every kind for every
(config, target). The result is a manifest (plain JSON)
and the blobs it names by sha256: the generated source and one binary per
kind x config x target. Nothing in a manifest is executable; a GPU process
loads binaries, an interpreter process regenerates the source itself and
checks it against ``manifest["source"]["sha256"]``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._version import CODEGEN_VERSION
from .codegen.kernels import GeneratedKernels
from .compile import CompiledBinary, KernelConfig, compile_kernel, default_configs, parse_target
from .counters import bump
from .errors import ArtifactError, IntegrityError
from .ir import dumps_ir, generate_from_ir, trace_to_ir
from .manifest import MANIFEST_FORMAT, merge_manifests, referenced_blobs, validate_manifest
from .spec import KernelSpec, triton_version
from .store.base import sha256_hex

__all__ = [
    "MANIFEST_FORMAT",
    "DEFAULT_TARGETS",
    "Artifact",
    "build_artifacts",
    "generate",
    "sha256_hex",
    "validate_manifest",
    "merge_binaries",
    "referenced_blobs",
]

#: The name merging had before flexsn_core.manifest (callers and tests import it from here).
merge_binaries = merge_manifests
DEFAULT_TARGETS: tuple[str, ...] = ("cuda:80", "cuda:90")

Progress = Callable[[str, int, int], None]


@dataclass
class Artifact:
    """A manifest and the blobs it names."""

    manifest: dict[str, Any]
    blobs: dict[str, bytes]

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    def verify(self) -> None:
        """Raise IntegrityError if a blob does not match its name or one is missing."""
        for sha, data in self.blobs.items():
            if sha256_hex(data) != sha:
                raise IntegrityError(f"blob {sha[:16]}… does not match its sha256")
        missing = set(referenced_blobs(self.manifest)) - set(self.blobs)
        if missing:
            raise ArtifactError(f"manifest names {len(missing)} blob(s) that are missing")


def generate(spec: KernelSpec) -> GeneratedKernels:
    """Trace ``spec`` and generate its kernel module (no compilation).

    Goes through the JSON IR exactly as a service build does (trace -> IR text
    -> validate -> generate), so a local build and a service build of a spec
    give the same source, byte for byte, and every kernel test exercises the
    round trip. The detour costs a few milliseconds next to ~0.3 s of tracing.
    """
    return generate_from_ir(spec, dumps_ir(trace_to_ir(spec)))


def _manifest_head(spec: KernelSpec, gen: GeneratedKernels) -> dict[str, Any]:
    plan = gen.plan.to_dict() if gen.plan is not None else None
    head = {
        "format": MANIFEST_FORMAT,
        "key": spec.key,
        "spec": spec.to_dict(),
        "codegen_version": CODEGEN_VERSION,
        "triton_version": triton_version(),
        "source": {"sha256": gen.sha256, "size": len(gen.source.encode())},
        "infos": {path: info._asdict() for path, info in gen.infos.items()},
        "plan": plan,
        "differentiable_returns": list(gen.differentiable_returns),
        "kernels": {
            kind: {"name": kdef.name, "params": [list(p) for p in kdef.params]}
            for kind, kdef in gen.kernels.items()
        },
        "binaries": [],
        "tuning": {},
    }
    # Plain JSON types only (no tuples), so a manifest equals its stored copy.
    return json.loads(json.dumps(head))


def build_artifacts(
    spec: KernelSpec,
    targets: Sequence[str] = DEFAULT_TARGETS,
    configs: Iterable[KernelConfig] | None = None,
    *,
    progress: Progress | None = None,
    generated: GeneratedKernels | None = None,
    workers: int | None = None,
) -> Artifact:
    """Build every kernel kind of ``spec`` for every config and target.

    Runs on a machine without a GPU. ``progress(stage, done, total)`` is called
    after tracing and after each compiled binary. Binaries compile in
    ``workers`` forked processes (default: up to 8 cores) when that is safe.
    """
    for target in targets:
        parse_target(target)
    configs = tuple(configs or default_configs(spec.torch_dtype))
    if not configs:
        raise ValueError("configs must not be empty")
    started = time.perf_counter()
    gen = generated or generate(spec)
    manifest = _manifest_head(spec, gen)
    blobs: dict[str, bytes] = {gen.sha256: gen.source.encode()}
    # Configs that differ only in their launch grid share one binary: compile it once.
    keys = list(dict.fromkeys(c.binary_key for c in configs))
    jobs = [(kind, key, target) for target in targets for kind in gen.kernels for key in keys]
    if progress:
        progress("traced", 0, len(jobs))
    for done, binary in enumerate(_compile_all(gen, jobs, workers), start=1):
        kind, target = binary.kind, binary.target
        blobs[binary.sha256] = binary.binary
        for config in (c for c in configs if c.binary_key == binary.config):
            manifest["binaries"].append(
                {
                    "kind": kind,
                    "target": target,
                    "config": config.to_dict(),
                    "config_id": config.id,
                    "sha256": binary.sha256,
                    "size": len(binary.binary),
                    "launch": binary.launch,
                    "triton_metadata": binary.triton_metadata,
                }
            )
        if progress:
            progress("compiled", done, len(jobs))
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    validate_manifest(manifest)
    return Artifact(manifest=manifest, blobs=blobs)


_pool_generated: GeneratedKernels | None = None  # what forked compile workers inherit


def _compile_in_child(job: tuple[str, KernelConfig, str]) -> CompiledBinary:
    assert _pool_generated is not None
    return compile_kernel(_pool_generated, *job)


def _fork_is_safe() -> bool:
    """Forking is safe in a single-threaded process that has not touched CUDA."""
    import multiprocessing
    import threading

    import torch

    return (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not torch.cuda.is_initialized()
    )


def _compile_all(
    gen: GeneratedKernels, jobs: list[tuple[str, KernelConfig, str]], workers: int | None
) -> Iterator[CompiledBinary]:
    """Compiled binaries in job order, from a pool of forked processes when possible.

    Compilation is CPU-bound and holds the GIL for much of its time, so threads
    barely help; forked children inherit the imported Triton and the generated
    module and share nothing else.
    """
    global _pool_generated
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) <= 1 or not _fork_is_safe():
        for job in jobs:
            yield compile_kernel(gen, *job)
        return
    import concurrent.futures
    import multiprocessing

    from .compile import load_generated_module

    load_generated_module(gen)  # write and import it once, before forking
    _pool_generated = gen
    try:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            yield from pool.map(_compile_in_child, jobs)
    finally:
        _pool_generated = None
    bump("compiles", len(jobs))  # children counted in their own processes
