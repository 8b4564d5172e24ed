"""Turn a core function into self-contained source text.

A spec travels as JSON, so the core must be rebuilt from text alone. We take
the function's own ``def`` and add what it reads from outside:

* modules: ``torch`` (and its submodules) and ``math`` become import lines;
* scalar constants (``int``, ``float``, ``bool``, ``None``, ``str`` and tuples
  of those), read as globals or closed over, become assignments;
* plain Python helper functions it calls are captured the same way;
* functions of ``torch`` / ``math`` imported by name (``from torch import
  sigmoid``) become aliases of the module attribute;
* surrogate spike functions (:mod:`flexsn_core.surrogate` instances, classes or
  the module itself, and SpikingJelly's surrogate instances) are not written
  into the source: they are returned as data (class name + parameters, see
  :func:`flexsn_core.surrogate.describe`), which the spec carries and
  ``KernelSpec.load_core`` rebuilds under the same names.

Anything else (a tensor, an ``nn.Module``, a class, a numpy module...) cannot
be written down faithfully and raises :class:`CoreCaptureError` naming the
variable. The text is canonical: imports, then constants, then helpers, each
sorted by name, then the core, so the same core always gives the same bytes.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import math
import textwrap
import types
from dataclasses import dataclass, field

import torch

from . import surrogate
from .errors import CoreCaptureError, CoreSourceError

__all__ = ["CapturedCore", "capture_core", "capture_source"]

_SCALARS = (bool, int, float, str, type(None))


def _is_scalar_constant(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, tuple):
        return all(_is_scalar_constant(v) for v in value)
    return False


def _literal(value: object) -> str:
    """Source text that evaluates to ``value`` (scalars and tuples of them)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _is_allowed_module(module: types.ModuleType) -> bool:
    name = module.__name__
    return name == "math" or name == "torch" or name.startswith("torch.")


@dataclass
class _Captured:
    imports: set[str] = field(default_factory=set)
    constants: dict[str, str] = field(default_factory=dict)
    helpers: dict[str, str] = field(default_factory=dict)
    #: captured surrogates by name: their spec data (never code)
    surrogates: dict[str, dict[str, object]] = field(default_factory=dict)
    visiting: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class CapturedCore:
    """What a core becomes: self-contained ``source`` defining ``entry``, plus the
    surrogates it captured (name -> data), which the source uses but does not define."""

    source: str
    entry: str
    surrogates: dict[str, dict[str, object]]


def _function_source(fn: types.FunctionType, role: str) -> str:
    name = fn.__name__
    if name == "<lambda>":
        raise CoreSourceError(
            f"the {role} is a lambda; write it as a named function with `def` so its "
            "source can be captured exactly"
        )
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError) as exc:
        raise CoreSourceError(
            f"cannot read the source of {role} {name!r} ({exc}); define it in a .py file "
            "(not in an interactive prompt), or build the KernelSpec from source text"
        ) from exc
    text = textwrap.dedent(text)
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:  # pragma: no cover - inspect returned broken text
        raise CoreSourceError(f"cannot parse the source of {role} {name!r}: {exc}") from exc
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(defs) != 1:
        raise CoreSourceError(
            f"the source of {role} {name!r} is not a single `def {name}(...)`; "
            "use a plain module-level or nested function"
        )
    node = defs[0]
    if node.decorator_list:
        raise CoreSourceError(
            f"{role} {name!r} has decorators; remove them (a core must be a plain function)"
        )
    lines = text.splitlines()
    return "\n".join(lines[node.lineno - 1 : node.end_lineno]) + "\n"


def _annotation_names(source: str) -> set[str]:
    """Names the annotations of the source's function signatures start with (``torch`` of ``torch.Tensor``).

    Annotations are not code the function runs (``load_core`` never evaluates
    them), but the source must still define the names they use.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations = [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                  args.vararg, args.kwarg) if a is not None]
            for annotation in (*annotations, node.returns):
                if annotation is not None:
                    names |= {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)}
    return names


def _capture_annotations(fn: types.FunctionType, source: str, owner: str, out: _Captured) -> None:
    """Capture what annotations name, where it can be written down; skip the rest (an annotation
    does not run, and the service's source check names anything still undefined)."""
    for name in sorted(_annotation_names(source)):
        if name in fn.__globals__ and not hasattr(builtins, name):
            try:
                _capture_value(name, fn.__globals__[name], owner, out)
            except CoreCaptureError:
                continue


def _referenced_names(code: types.CodeType) -> tuple[set[str], set[str]]:
    """Global names and free (closure) names read by ``code`` and nested code."""
    global_names: set[str] = set()
    free_names: set[str] = set(code.co_freevars)
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            global_names.add(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner_globals, _ = _referenced_names(const)
            global_names |= inner_globals
    return global_names, free_names


def _resolve(fn: types.FunctionType) -> dict[str, object]:
    """Map every outside name the function reads to its current value."""
    global_names, free_names = _referenced_names(fn.__code__)
    values: dict[str, object] = {}
    if free_names:
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        for name in sorted(free_names):
            cell = cells.get(name)
            if cell is None:
                continue
            try:
                values[name] = cell.cell_contents
            except ValueError as exc:
                raise CoreCaptureError(
                    f"closure variable {name!r} of {fn.__name__!r} is not assigned yet"
                ) from exc
    for name in sorted(global_names):
        if name in values:
            continue
        if name in fn.__globals__:
            values[name] = fn.__globals__[name]
        elif hasattr(builtins, name):
            continue
        else:
            raise CoreCaptureError(
                f"{fn.__name__!r} refers to {name!r}, which is not defined; define it "
                "before building the kernel"
            )
    return values


def _capture_value(name: str, value: object, owner: str, out: _Captured) -> None:
    described = surrogate.describe(value, name)
    if described is not None:
        existing = out.surrogates.get(name)
        if existing is not None and existing != described:
            raise CoreCaptureError(
                f"the name {name!r} means the surrogate {existing} in one function and {described} in "
                "another; rename one of them"
            )
        out.surrogates[name] = described
        return
    if isinstance(value, types.ModuleType):
        if not _is_allowed_module(value):
            raise CoreCaptureError(
                f"{owner!r} uses module {value.__name__!r} as {name!r}; a core may only use "
                "torch (and its submodules) and math"
            )
        if name == value.__name__:
            out.imports.add(f"import {name}")
        else:
            out.imports.add(f"import {value.__name__} as {name}")
        return
    if isinstance(value, torch.Tensor):
        raise CoreCaptureError(
            f"{owner!r} captures the tensor {name!r} (shape {tuple(value.shape)}, "
            f"{value.dtype}); tensors cannot be written into a kernel spec. Pass it as a "
            "static input instead: FlexSN(..., static_inputs=(" + name + ",)) and take it as "
            "an extra argument after the states"
        )
    if isinstance(value, torch.nn.Module):
        raise CoreCaptureError(
            f"{owner!r} captures the module {name!r} ({type(value).__name__}); its "
            "parameters must be passed as static inputs: FlexSN(..., static_inputs=(...,)) "
            "and taken as extra arguments after the states"
        )
    if _is_scalar_constant(value):
        existing = out.constants.get(name)
        text = _literal(value)
        if existing is not None and existing != text:
            raise CoreCaptureError(
                f"the name {name!r} means {existing} in one function and {text} in another; "
                "rename one of them"
            )
        out.constants[name] = text
        return
    if isinstance(value, types.FunctionType):
        _capture_function(value, out, alias=name)
        return
    if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)) or callable(value):
        module_name = getattr(value, "__module__", None) or ""
        attr = getattr(value, "__name__", None)
        for mod_name, mod in (("torch", torch), ("math", math)):
            if attr and getattr(mod, attr, None) is value:
                out.imports.add(f"import {mod_name}")
                out.constants[name] = f"{mod_name}.{attr}"
                return
        if module_name.startswith("torch.nn.functional") and attr:
            out.imports.add("import torch.nn.functional")
            out.constants[name] = f"torch.nn.functional.{attr}"
            return
    kind = "class" if isinstance(value, type) else type(value).__name__
    hint = ""
    if callable(value):
        hint = (
            "; for a surrogate spike function use flexsn_core.surrogate (e.g. "
            "`sg = flexsn_core.surrogate.Sigmoid(alpha=4.0)`, then `sg(h - v_th)` in the core)"
        )
    raise CoreCaptureError(
        f"{owner!r} refers to {name!r}, a {kind}, which cannot be written into a kernel "
        f"spec; use scalars, torch and math only{hint}"
    )


def _capture_function(fn: types.FunctionType, out: _Captured, alias: str) -> None:
    name = fn.__name__
    if name in out.visiting or name in out.helpers:
        if alias != name:
            out.constants[alias] = name
        return
    out.visiting.add(name)
    source = _function_source(fn, "helper")
    for ref, value in _resolve(fn).items():
        if ref == name and value is fn:
            continue  # recursion
        _capture_value(ref, value, name, out)
    _capture_annotations(fn, source, name, out)
    out.helpers[name] = source
    if alias != name:
        out.constants[alias] = name


def capture_source(core: object) -> tuple[str, str]:
    """Return ``(source, entry)`` for a core function that captures no surrogate.

    ``source`` is canonical module text that defines ``entry`` and everything
    it needs. A core that captures surrogates needs them as well: use
    :func:`capture_core` (or ``KernelSpec.from_core``).
    """
    captured = capture_core(core)
    if captured.surrogates:
        raise CoreCaptureError(
            f"the core captures surrogates ({', '.join(sorted(captured.surrogates))}), which its source text "
            "alone does not define; use capture_core() or KernelSpec.from_core()"
        )
    return captured.source, captured.entry


def capture_core(core: object) -> CapturedCore:
    """Capture a core function: its canonical source, entry name and surrogates.

    ``source`` is canonical module text that defines ``entry`` and everything
    it needs except the surrogates, which ``KernelSpec.load_core`` rebuilds from
    their data under the names the source uses.
    """
    if isinstance(core, torch.nn.Module):
        raise CoreCaptureError(
            f"the core is an nn.Module ({type(core).__name__}); pass a plain function and "
            "give its parameters as static_inputs"
        )
    if not isinstance(core, types.FunctionType):
        raise CoreCaptureError(
            f"the core must be a plain Python function, got {type(core).__name__}; "
            "bound methods and functools.partial objects are not supported"
        )
    out = _Captured()
    entry = core.__name__
    source = _function_source(core, "core")
    out.visiting.add(entry)
    for ref, value in _resolve(core).items():
        _capture_value(ref, value, entry, out)
    _capture_annotations(core, source, entry, out)
    out.helpers.pop(entry, None)
    clash = sorted(set(out.surrogates) & ({entry} | set(out.constants) | set(out.helpers)))
    if clash:
        raise CoreCaptureError(
            f"the name {clash[0]!r} means a surrogate in one function and something else in another; "
            "rename one of them"
        )

    parts: list[str] = []
    if out.imports:
        parts.append("\n".join(sorted(out.imports)) + "\n")
    # Aliases of helpers must come after the helper definitions.
    plain = {k: v for k, v in out.constants.items() if v not in out.helpers}
    aliases = {k: v for k, v in out.constants.items() if v in out.helpers}
    if plain:
        parts.append("".join(f"{k} = {plain[k]}\n" for k in sorted(plain)))
    for helper in sorted(out.helpers):
        parts.append(out.helpers[helper])
    if aliases:
        parts.append("".join(f"{k} = {aliases[k]}\n" for k in sorted(aliases)))
    parts.append(source)
    text = "\n\n".join(p.rstrip("\n") + "\n" for p in parts)
    return CapturedCore(text, entry, {k: out.surrogates[k] for k in sorted(out.surrogates)})
