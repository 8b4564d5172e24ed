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
import keyword
import linecache
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from . import surrogate as _surrogate
from ._version import CODEGEN_VERSION
from .capture import capture_core
from .errors import CoreSignatureError, CoreSourceError

__all__ = ["KernelSpec", "SurrogateRef", "SUPPORTED_DTYPES", "MAX_SURROGATES", "triton_version", "torch_version"]

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


#: Most surrogates one spec may declare.
MAX_SURROGATES = 64


class SurrogateRef(NamedTuple):
    """One surrogate a spec's source uses under ``name`` without defining it (see
    :mod:`flexsn_core.surrogate`): an ``instance`` of ``kind`` with ``params``, the
    ``class`` ``kind``, or the surrogate ``module``. Plain data, never code."""

    name: str
    form: str
    kind: str | None = None
    params: tuple[tuple[str, float], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"form": self.form}
        if self.kind is not None:
            data["kind"] = self.kind
        if self.params is not None:
            data["params"] = dict(self.params)
        return data


_SURROGATE_FIELDS = {"instance": {"form", "kind", "params"}, "class": {"form", "kind"}, "module": {"form"}}


def _surrogate_ref(name: object, data: object, entry: str) -> SurrogateRef:
    """Validate one ``surrogates`` entry of a spec (data from anyone: every field is checked)."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or len(name) > 128:
        raise ValueError(f"surrogate name {name!r} is not a Python identifier")
    if name.startswith("__") or name == entry:
        raise ValueError(f"surrogate name {name!r} is not allowed")
    if not isinstance(data, Mapping):
        raise ValueError(f"surrogate {name!r} must be an object, got {type(data).__name__}")
    form = data.get("form")
    if form not in _SURROGATE_FIELDS:
        raise ValueError(f"surrogate {name!r}: form must be one of {', '.join(_SURROGATE_FIELDS)}, got {form!r}")
    fields = set(data)
    if fields != _SURROGATE_FIELDS[form]:
        raise ValueError(
            f"surrogate {name!r} ({form}) must have exactly the fields {sorted(_SURROGATE_FIELDS[form])}, "
            f"got {sorted(map(str, fields))}"
        )
    if form == "module":
        return SurrogateRef(name, form)
    kind = data["kind"]
    cls = _surrogate.CATALOGUE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(
            f"surrogate {name!r}: unknown kind {kind!r}; known: {', '.join(_surrogate.CATALOGUE)}"
        )
    if form == "class":
        return SurrogateRef(name, form, kind)
    params = data["params"]
    if not isinstance(params, Mapping) or set(params) != set(cls.defaults):
        got = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"surrogate {name!r}: {kind} takes the parameters {sorted(cls.defaults)}, got {got}")
    values = []
    for param in cls.defaults:  # the class's own order
        value = params[param]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"surrogate {name!r}: parameter {param!r} must be a finite number, got {value!r}")
        values.append((param, float(value)))
    cls.check(**dict(values))
    return SurrogateRef(name, form, kind, tuple(values))


def _surrogate_refs(value: object, entry: str) -> tuple[SurrogateRef, ...]:
    if value is None:
        return ()
    if isinstance(value, tuple) and all(isinstance(v, SurrogateRef) for v in value):
        items = [(v.name, v.to_json()) for v in value]
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ValueError(f"surrogates must map names to surrogate data, got {type(value).__name__}")
    if len(items) > MAX_SURROGATES:
        raise ValueError(f"a spec may declare at most {MAX_SURROGATES} surrogates, got {len(items)}")
    refs = [_surrogate_ref(name, data, entry) for name, data in items]
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise ValueError("surrogate names must be unique")
    return tuple(sorted(refs))


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

    ``surrogates`` names the surrogate spike functions the source uses without
    defining them, as data (``{name: {"form": "instance", "kind": "Sigmoid",
    "params": {"alpha": 4.0}}}``, see :mod:`flexsn_core.surrogate`); it is part of
    the key, and :meth:`load_core` rebuilds them under those names. Given as a
    mapping, it is stored as a sorted tuple of :class:`SurrogateRef`.
    """

    source: str
    entry: str
    num_inputs: int
    num_states: int
    num_outputs: int
    num_static: int = 0
    dtype: str = "float32"
    requires_grad: tuple[bool, ...] | None = field(default=None)
    surrogates: tuple[SurrogateRef, ...] = ()

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
        object.__setattr__(self, "surrogates", _surrogate_refs(self.surrogates, self.entry))

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
        captured = capture_core(core)
        return cls(
            source=captured.source,
            entry=captured.entry,
            num_inputs=num_inputs,
            num_states=num_states,
            num_outputs=num_outputs,
            num_static=num_static,
            dtype=dtype,  # type: ignore[arg-type]
            requires_grad=None if requires_grad is None else tuple(bool(f) for f in requires_grad),
            surrogates=captured.surrogates,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------- identity
    @property
    def num_args(self) -> int:
        return self.num_inputs + self.num_states + self.num_static

    @property
    def torch_dtype(self) -> torch.dtype:
        return SUPPORTED_DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source,
            "entry": self.entry,
            "num_inputs": self.num_inputs,
            "num_states": self.num_states,
            "num_outputs": self.num_outputs,
            "num_static": self.num_static,
            "dtype": self.dtype,
            "requires_grad": list(self.requires_grad or ()),
        }
        if self.surrogates:  # absent when empty: specs without surrogates keep their keys
            data["surrogates"] = {ref.name: ref.to_json() for ref in self.surrogates}
        return data

    def external_names(self) -> dict[str, tuple[str, ...] | None]:
        """Names the source uses without defining them (the surrogates): ``None`` for a
        value (an instance or a class), the member names for the surrogate module."""
        members = ("heaviside", *sorted(_surrogate.CATALOGUE))
        return {ref.name: members if ref.form == "module" else None for ref in self.surrogates}

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
            "surrogates",
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
            surrogates=data.get("surrogates") or (),
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
        return _load_core(self.source, self.entry, self.filename, self.surrogates)


@functools.lru_cache(maxsize=256)
def _load_core(
    source: str, entry: str, filename: str, surrogates: tuple[SurrogateRef, ...] = ()
) -> Callable[..., Any]:
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
    # The surrogates are rebuilt from their data, never from code, and visible to the core as globals.
    declared = {ref.name: _surrogate.rebuild(ref.to_json()) for ref in surrogates}
    namespace.update(declared)
    try:
        exec(code, namespace)
    except Exception as exc:  # the module-level part of the source failed
        raise CoreSourceError(
            f"running the core source's module level failed: {type(exc).__name__}: {exc}"
        ) from exc
    for name, value in declared.items():
        if namespace.get(name) is not value:
            raise CoreSourceError(
                f"the core source defines {name!r}, which the spec declares as a surrogate; rename one of them"
            )
    fn = namespace[entry]
    if not callable(fn):
        raise CoreSignatureError(f"{entry!r} in the core source is not callable")
    return fn
