"""KernelSpec: everything that determines a core's kernels, as JSON-able data.

``spec.key`` names the kernels everywhere (local mirror, service store,
manifests). It hashes a canonical JSON encoding of the spec together with
everything else that decides the generated code and binaries: the code
generator's version (``CODEGEN_VERSION``, pinned to the codegen sources by a
golden hash, see ``flexsn_core/_version.py``), the Triton version (it compiles)
and the torch version (make_fx and AOTAutograd draw the graphs). It never
traces or compiles.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import json
import linecache
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._version import CODEGEN_VERSION
from .capture import capture_source
from .errors import CoreSignatureError, CoreSourceError

__all__ = ["KernelSpec", "SUPPORTED_DTYPES", "triton_version", "torch_version"]

#: Element dtypes a spec may name, by their torch name.
SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@functools.lru_cache(maxsize=1)
def triton_version() -> str:
    """The installed Triton's version, read without importing Triton."""
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        import triton

        return triton.__version__


@functools.lru_cache(maxsize=1)
def torch_version() -> str:
    """torch's release version, e.g. ``2.11.0``, for the spec key.

    The whole release, not just major.minor: decompositions and AOTAutograd's
    partitioner change in patch releases too, and they draw the graphs the
    kernels are generated from. Without the local build tag (``+cpu``,
    ``+cu128``): every build of a release traces the same graphs on CPU/fake
    tensors, and a service cross-compiling on a CPU-only host must share keys
    with its CUDA clients.
    """
    return torch.__version__.split("+", 1)[0]


def _dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = str(dtype).removeprefix("torch.")
    if name not in SUPPORTED_DTYPES:
        raise ValueError(
            f"dtype {dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}"
        )
    return name


def _check_count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class KernelSpec:
    """What a core's kernels are built from.

    ``source`` is self-contained module text defining ``entry`` (see
    :func:`flexsn_core.capture.capture_source`). The core is called as
    ``entry(*inputs, *states, *static_inputs)`` and returns
    ``(*outputs, *new_states)``; every tensor has the same shape and ``dtype``.
    ``requires_grad`` has one flag per argument (inputs, states, statics);
    ``None`` means every argument requires grad. Gradients always flow through
    the states over time; a state's flag only says whether the gradient of its
    *initial* value is returned.
    """

    source: str
    entry: str
    num_inputs: int
    num_states: int
    num_outputs: int
    num_static: int = 0
    dtype: str = "float32"
    requires_grad: tuple[bool, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise CoreSourceError("spec source must be non-empty text")
        if not isinstance(self.entry, str) or not self.entry.isidentifier():
            raise CoreSourceError(f"spec entry must be a Python identifier, got {self.entry!r}")
        _check_count("num_inputs", self.num_inputs, minimum=1)
        _check_count("num_states", self.num_states)
        _check_count("num_outputs", self.num_outputs)
        _check_count("num_static", self.num_static)
        if self.num_outputs + self.num_states == 0:
            raise ValueError("a core must return at least one output or state")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        n_args = self.num_args
        flags = self.requires_grad
        if flags is None:
            flags = (True,) * n_args
        else:
            flags = tuple(flags)
            if len(flags) != n_args or not all(isinstance(f, bool) for f in flags):
                raise ValueError(
                    f"requires_grad must hold {n_args} bools (num_inputs + num_states + "
                    f"num_static), got {flags!r}"
                )
        object.__setattr__(self, "requires_grad", flags)

    # ----------------------------------------------------------------- build
    @classmethod
    def from_core(
        cls,
        core: Callable[..., Any],
        num_inputs: int,
        num_states: int,
        num_outputs: int,
        *,
        num_static: int = 0,
        dtype: torch.dtype | str = torch.float32,
        requires_grad: Sequence[bool] | None = None,
    ) -> KernelSpec:
        """Capture ``core``'s source (and what it reads) into a spec."""
        source, entry = capture_source(core)
        return cls(
            source=source,
            entry=entry,
            num_inputs=num_inputs,
            num_states=num_states,
            num_outputs=num_outputs,
            num_static=num_static,
            dtype=dtype,  # type: ignore[arg-type]
            requires_grad=None if requires_grad is None else tuple(bool(f) for f in requires_grad),
        )

    # ------------------------------------------------------------- identity
    @property
    def num_args(self) -> int:
        return self.num_inputs + self.num_states + self.num_static

    @property
    def torch_dtype(self) -> torch.dtype:
        return SUPPORTED_DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "entry": self.entry,
            "num_inputs": self.num_inputs,
            "num_states": self.num_states,
            "num_outputs": self.num_outputs,
            "num_static": self.num_static,
            "dtype": self.dtype,
            "requires_grad": list(self.requires_grad or ()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelSpec:
        known = {
            "source",
            "entry",
            "num_inputs",
            "num_states",
            "num_outputs",
            "num_static",
            "dtype",
            "requires_grad",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown spec fields: {', '.join(sorted(unknown))}")
        missing = {"source", "entry", "num_inputs", "num_states", "num_outputs"} - set(data)
        if missing:
            raise ValueError(f"missing spec fields: {', '.join(sorted(missing))}")
        flags = data.get("requires_grad")
        return cls(
            source=data["source"],
            entry=data["entry"],
            num_inputs=data["num_inputs"],
            num_states=data["num_states"],
            num_outputs=data["num_outputs"],
            num_static=data.get("num_static", 0),
            dtype=data.get("dtype", "float32"),
            requires_grad=None if flags is None else tuple(flags),
        )

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def key(self) -> str:
        """sha256 naming this spec's kernels for this codegen, Triton and torch version."""
        payload = json.dumps(
            {
                "spec": self.to_dict(),
                "codegen": CODEGEN_VERSION,
                "triton": triton_version(),
                "torch": torch_version(),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    # ----------------------------------------------------------- rebuild
    @property
    def filename(self) -> str:
        """Pseudo file name used for the core's code objects and tracebacks."""
        return f"<flexsn-core {self.entry} {self.key[:12]}>"

    def load_core(self) -> Callable[..., Any]:
        """Rebuild the core callable from ``source``.

        This executes the source, so call it only on trusted text or inside the
        build sandbox (the service does).
        """
        return _load_core(self.source, self.entry, self.filename)


@functools.lru_cache(maxsize=256)
def _load_core(source: str, entry: str, filename: str) -> Callable[..., Any]:
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        raise CoreSourceError(
            f"syntax error in the core source at line {exc.lineno}: {exc.msg}"
            + (f" -> {line!r}" if line else "")
        ) from exc
    if not any(isinstance(n, ast.FunctionDef) and n.name == entry for n in tree.body):
        raise CoreSourceError(
            f"the core source does not define a top-level function {entry!r}"
        )
    # Register the text so tracebacks and our error messages can show lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(tree, filename, "exec")
    namespace: dict[str, Any] = {"__name__": "flexsn_core_user", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except Exception as exc:  # the module-level part of the source failed
        raise CoreSourceError(
            f"running the core source's module level failed: {type(exc).__name__}: {exc}"
        ) from exc
    fn = namespace[entry]
    if not callable(fn):
        raise CoreSignatureError(f"{entry!r} in the core source is not callable")
    return fn
