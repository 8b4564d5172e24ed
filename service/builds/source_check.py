"""The source check: a fast, friendly 422 for a core that cannot be right.

This is NOT a security boundary. Every build runs the core in an OS jail, and
the jail is what contains a hostile core; a filter over Python cannot (frames,
``match`` patterns, aliases and default arguments all got past the first one).
The check exists so that an honest mistake -- an ``import os``, a ``getattr``,
a module-level tensor -- gets an immediate answer that says what and where,
instead of a failed build, and so that the classes of escape we know about
never reach the jail at all.

It is an allowlist of what a core may do, applied to the parsed source (never
executed):

* **statements**: imports of ``torch`` (``torch.nn.functional``,
  ``torch.special``) and ``math`` at module level; module-level assignments of
  constants (literals, arithmetic on them, ``float('nan')``, a torch/math
  function, another constant or helper); ``def`` without decorators, whose
  defaults are constants and whose annotations are names; in function bodies
  assignments, ``if``/``for``/``while``, ``return``, ``assert``, ``raise``,
  nested ``def``, lambdas and comprehensions. No classes, ``match``, ``try``,
  ``with``, ``global``/``nonlocal``, generators, ``async``/``await``.
* **names**: every name resolves (scope by scope, with :mod:`symtable`) to a
  local, a closure variable, a module-level definition, or a builtin from
  :data:`ALLOWED_BUILTINS`. Dunder names are refused everywhere.
* **modules** are bound only by ``import`` and used only as the base of an
  attribute chain that ends at an allowed member (``torch.sigmoid``,
  ``F.relu``, ``math.pi``); a module as a value (``T = torch``,
  ``f(torch)``) or a member outside the allowlist (``torch.load``,
  ``torch.nn.functional.importlib``) is refused.
* **attributes** on values are those of tensors, dtypes, devices, sizes and
  ``finfo``/``iinfo`` (:class:`Allowlists`), minus the ones that reach outside
  the computation (``storage``, ``numpy``, ``register_hook`` ...). Frame,
  code, generator and traceback attributes (``gi_frame``, ``f_globals``,
  ``tb_frame``, ``co_code`` ...), ``str.format`` and ``format_map`` are not
  tensor attributes, so they are refused by construction.
* **limits**: source bytes, line length, AST nodes and nesting depth, checked
  before anything recursive runs, so no source can make the checker fail with
  anything but :class:`SourceRejected` (a 500-term sum is a clear 422).

The check is three modules: this one (the entry points, names resolved with
:mod:`symtable`), ``source_rules.py`` (the error, the limits, the node kinds)
and ``source_walker.py`` (the walk over the tree); the allowlists are in
``source_allowlist.py``. They import neither torch nor the service: the
server runs the check in a small process pool (``source_check_pool``) whose
workers receive the allowlists computed once in the server.
"""

from __future__ import annotations

import ast
import symtable
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .source_allowlist import ALLOWED_BUILTINS, Allowlists, default_allowlists
from .source_rules import CheckLimits, SourceRejected
from .source_walker import _Checker

if TYPE_CHECKING:
    from flexsn_core.spec import KernelSpec

__all__ = [
    "SourceRejected",
    "CheckLimits",
    "Allowlists",
    "ALLOWED_BUILTINS",
    "default_allowlists",
    "check_source",
    "check_source_text",
]


# ------------------------------------------------------- names, via symtable
def _check_names(source: str, checker: _Checker) -> None:
    """Every name read resolves to a local, a closure, a module-level definition or an allowed builtin."""
    modules = {name for name, b in checker.globals.items() if b.kind == "module"}
    top = symtable.symtable(source, "<core>", "exec")
    for sym in top.get_symbols():
        name = sym.get_name()
        if sym.is_referenced() and name not in checker.globals:
            _check_builtin(name, checker, None)
    stack = list(top.get_children())
    while stack:
        table = stack.pop()
        stack.extend(table.get_children())
        for sym in table.get_symbols():
            name = sym.get_name()
            if name in modules and (sym.is_local() or sym.is_parameter()):
                raise SourceRejected(
                    f"{name!r} names a module; use another name for the variable in {table.get_name()!r}",
                    table.get_lineno(),
                )
            if sym.is_referenced() and sym.is_global() and name not in checker.globals:
                _check_builtin(name, checker, table.get_lineno())


def _check_builtin(name: str, checker: _Checker, scope_line: int | None) -> None:
    import builtins

    if name in ALLOWED_BUILTINS:
        return
    line = checker.line_of_use(name, scope_line)
    if hasattr(builtins, name):
        raise SourceRejected(f"use of {name!r} is not allowed in a core", line)
    raise SourceRejected(f"{name!r} is not defined in the source (a core's source must define what it uses)", line)


# -------------------------------------------------------------------- entry
def _check_limits(source: str, limits: CheckLimits) -> None:
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise SourceRejected(f"the source is {size} bytes; the limit is {limits.max_bytes}")
    for number, line in enumerate(source.splitlines(), start=1):
        if len(line) > limits.max_line_chars:
            raise SourceRejected(f"the line is {len(line)} characters long; the limit is {limits.max_line_chars}",
                                 number)


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        raise SourceRejected(
            f"syntax error: {exc.msg}" + (f" -> {text[:120]!r}" if text else ""), exc.lineno
        ) from None
    except (RecursionError, MemoryError, SystemError):
        # CPython's parser gives up on very deep nesting (e.g. thousands of unary minus signs);
        # 3.11 can report a deep tree as "SystemError: AST constructor recursion depth mismatch".
        raise SourceRejected("the source is nested too deeply to parse; split long expressions up") from None
    except ValueError as exc:  # e.g. null bytes
        raise SourceRejected(f"the source cannot be parsed: {exc}") from None


def _check_arity(tree: ast.Module, entry: str, counts: dict[str, int]) -> None:
    defs = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == entry]
    if not defs:
        raise SourceRejected(f"the source defines no top-level function {entry!r}")
    args = defs[0].args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    required_kwonly = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    n = counts["num_inputs"] + counts["num_states"] + counts["num_static"]
    if required_kwonly or n < required or (args.vararg is None and n > positional):
        raise SourceRejected(
            f"{entry}() takes {required}..{positional if args.vararg is None else 'any'} positional "
            f"arguments but is called with {n} (num_inputs={counts['num_inputs']} + "
            f"num_states={counts['num_states']} + num_static={counts['num_static']})"
            + (f" and requires keyword-only {required_kwonly}" if required_kwonly else ""),
            defs[0].lineno,
        )


def check_source_text(
    source: str, entry: str, counts: dict[str, int], allow: Allowlists, limits: CheckLimits = CheckLimits(),
    declared: Mapping[str, Any] | None = None,
) -> None:
    """Raise SourceRejected unless ``source`` is a core the rules above allow.

    ``counts`` holds ``num_inputs``, ``num_states`` and ``num_static``.
    ``declared`` (``KernelSpec.external_names()``) names what the spec defines
    outside the source, its surrogates: ``None`` for a value, or the member names
    of a namespace. Never raises anything else for any text (tested with
    pathological inputs).
    """
    _check_limits(source, limits)
    tree = _parse(source)
    checker = _Checker(allow, limits, declared)
    try:
        checker.scan(tree)
        checker.bind_module(tree)
        _check_names(source, checker)  # first: "use of 'open'" says more than what is done with it
        checker.check_module(tree)
    except (RecursionError, MemoryError):  # pragma: no cover - depth is bounded before anything recursive runs
        raise SourceRejected("the source is nested too deeply to check; split long expressions up") from None
    except SyntaxError as exc:  # symtable's own findings (e.g. a name both global and local)
        raise SourceRejected(f"syntax error: {exc.msg}", exc.lineno) from None
    _check_arity(tree, entry, counts)


def check_source(spec: KernelSpec, *, max_bytes: int = 200_000) -> None:
    """Raise SourceRejected if ``spec.source`` breaks the rules (synchronous; imports torch)."""
    counts = {"num_inputs": spec.num_inputs, "num_states": spec.num_states, "num_static": spec.num_static}
    check_source_text(spec.source, spec.entry, counts, default_allowlists(), CheckLimits(max_bytes=max_bytes),
                      spec.external_names())
