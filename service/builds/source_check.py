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

The module imports neither torch nor the service: the server runs the check
in a small process pool (``source_check_pool``) whose workers receive the
allowlists computed once in the server.
"""

from __future__ import annotations

import ast
import symtable
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .source_allowlist import ALLOWED_BUILTINS, MODULES, Allowlists, default_allowlists

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


class SourceRejected(ValueError):
    """The source breaks a rule; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:  # cross the process pool intact
        return (SourceRejected, (self.reason, self.line))


@dataclass(frozen=True)
class CheckLimits:
    max_bytes: int = 200_000
    #: longest line; captured cores are formatted code, minified one-liners are not cores
    max_line_chars: int = 4_000
    max_nodes: int = 150_000
    #: AST nesting; a 100-term sum is a 100-deep tree, and CPython's own limits sit at ~200 for some nodes
    max_depth: int = 100


# ---------------------------------------------------------------- node kinds
#: Statements a function body may hold.
_BODY_STATEMENTS = (
    ast.FunctionDef, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.While, ast.If, ast.Expr,
    ast.Pass, ast.Break, ast.Continue, ast.Assert, ast.Raise, ast.Delete,
)
#: Expression and helper nodes code may contain.
_EXPRESSIONS = (
    ast.BoolOp, ast.NamedExpr, ast.BinOp, ast.UnaryOp, ast.Lambda, ast.IfExp, ast.Dict, ast.Set, ast.ListComp,
    ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Compare, ast.Call, ast.keyword, ast.FormattedValue,
    ast.JoinedStr, ast.Constant, ast.Attribute, ast.Subscript, ast.Starred, ast.Name, ast.List, ast.Tuple,
    ast.Slice, ast.comprehension, ast.arguments, ast.arg,
    ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)
#: What an annotation may be made of: names, attribute chains, subscripts, ``X | Y``, strings.
_ANNOTATION_NODES = (
    ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant, ast.BinOp, ast.BitOr,
    ast.expr_context,
)
_REFUSED: dict[type, str] = {
    ast.ClassDef: "class definitions are not allowed in a core",
    ast.AsyncFunctionDef: "async functions are not allowed in a core",
    ast.AsyncFor: "async loops are not allowed in a core",
    ast.AsyncWith: "with statements are not allowed in a core",
    ast.With: "with statements are not allowed in a core",
    ast.Match: "match statements are not allowed in a core (use torch.where for a choice per element)",
    ast.Try: "try statements are not allowed in a core (a traced kernel cannot catch exceptions)",
    ast.Global: "global statements are not allowed in a core",
    ast.Nonlocal: "nonlocal statements are not allowed in a core",
    ast.Yield: "generators (yield) are not allowed in a core",
    ast.YieldFrom: "generators (yield) are not allowed in a core",
    ast.Await: "await expressions are not allowed in a core",
    ast.Import: "imports belong at the top of the source, not inside a function",
    ast.ImportFrom: "imports belong at the top of the source, not inside a function",
}
#: Nodes that open a scope of their own (symtable's tables start on their line).
_SCOPES = (ast.FunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
if hasattr(ast, "TryStar"):
    _REFUSED[ast.TryStar] = _REFUSED[ast.Try]


def _line(node: ast.AST) -> int | None:
    return getattr(node, "lineno", None)


def _is_dunder(name: str) -> bool:
    return name.startswith("__")


# ------------------------------------------------------------------- checker
@dataclass
class _Binding:
    kind: str  # "module" | "value" | "function"
    target: str = ""  # module path for modules


class _Checker:
    """One pass over the tree with an explicit stack (no recursion, so no depth can crash it)."""

    def __init__(self, allow: Allowlists, limits: CheckLimits, declared: Mapping[str, Any] | None = None) -> None:
        self.allow = allow
        self.limits = limits
        #: module-level names: what each one is bound to
        self.globals: dict[str, _Binding] = {}
        #: names the spec defines outside the source (its surrogates): None for a value, else a
        #: namespace's member names (the surrogate module)
        self.declared = dict(declared or {})
        self.declared_members = {
            f"<{name}>": frozenset(members) for name, members in self.declared.items() if members is not None
        }
        #: lines each name is read on, and where each scope (def, lambda, comprehension) ends:
        #: to point symtable's findings at the right line
        self.uses: dict[str, list[int]] = {}
        self.scope_end: dict[int, int] = {}

    # ------------------------------------------------------------ first pass
    def scan(self, tree: ast.Module) -> None:
        """Size, nesting and statements a core never has; iterative, before anything recursive
        (symtable, the checker) runs. Also notes the lines each name is read on."""
        nodes = 0
        top_level_imports = {id(s) for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))}
        stack: list[tuple[ast.AST, int, int | None]] = [(tree, 0, None)]
        while stack:
            node, depth, line = stack.pop()
            line = _line(node) or line
            nodes += 1
            if nodes > self.limits.max_nodes:
                raise SourceRejected(f"the source has more than {self.limits.max_nodes} syntax nodes; split it up")
            if depth > self.limits.max_depth:
                raise SourceRejected(
                    f"an expression or block is nested more than {self.limits.max_depth} levels deep "
                    "(e.g. a very long chain of + or nested calls); split it into several statements",
                    line,
                )
            refused = _REFUSED.get(type(node))
            if refused is not None and id(node) not in top_level_imports:
                if depth == 1:
                    refused = f"module-level code may only import torch/math, assign constants and define " \
                              f"functions ({refused})"
                raise SourceRejected(refused, line)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and line:
                self.uses.setdefault(node.id, []).append(line)
            if isinstance(node, _SCOPES) and line:
                end = getattr(node, "end_lineno", None) or line
                self.scope_end[line] = max(end, self.scope_end.get(line, end))
            stack.extend((child, depth + 1, line) for child in reversed(list(ast.iter_child_nodes(node))))

    def line_of_use(self, name: str, scope_line: int | None = None) -> int | None:
        """The first line ``name`` is read on, inside the scope that starts at ``scope_line`` if given."""
        lines = sorted(self.uses.get(name, []))
        if scope_line:
            end = self.scope_end.get(scope_line, scope_line)
            inside = [line for line in lines if scope_line <= line <= end]
            lines = inside or lines
        return lines[0] if lines else None

    # ---------------------------------------------------------- module level
    def bind_module(self, tree: ast.Module) -> None:
        """Bind every module-level name (so a function may use an import written below it)."""
        for name, members in self.declared.items():
            self.globals[name] = _Binding("value") if members is None else _Binding("module", f"<{name}>")
        for stmt in tree.body:
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    self._import(alias.name, alias.asname, stmt)
            elif isinstance(stmt, ast.ImportFrom):
                self._import_from(stmt)
            elif isinstance(stmt, ast.FunctionDef):
                self._bind(stmt.name, _Binding("function"), stmt)
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # a docstring
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and self._is_constant_assignment(stmt):
                for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    assert isinstance(target, ast.Name)
                    self._bind(target.id, _Binding("value"), stmt)
            else:
                refused = _REFUSED.get(type(stmt))
                raise SourceRejected(
                    "module-level code may only import torch/math, assign constants and define functions"
                    + (f" ({refused})" if refused and not isinstance(stmt, (ast.Import, ast.ImportFrom)) else ""),
                    _line(stmt),
                )

    def check_module(self, tree: ast.Module) -> None:
        """Check the bodies of the module-level statements (after :meth:`bind_module`)."""
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef):
                self._walk(stmt, "code")
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                if isinstance(stmt, ast.AnnAssign):
                    self._walk(stmt.annotation, "annotation")
                assert stmt.value is not None
                self._walk(stmt.value, "static")

    def _bind(self, name: str, binding: _Binding, node: ast.AST) -> None:
        if name in self.declared:
            raise SourceRejected(f"{name!r} is a surrogate the spec declares; the source must not define it",
                                 _line(node))
        if _is_dunder(name):
            raise SourceRejected(f"the name {name!r} is not allowed in a core", _line(node))
        old = self.globals.get(name)
        if old == binding and binding.kind == "module":
            return  # import torch; import torch.nn.functional
        if old is not None and (old.kind == "module" or binding.kind == "module"):
            raise SourceRejected(f"{name!r} is bound twice at module level, once to a module", _line(node))
        self.globals[name] = binding

    def _import(self, name: str, asname: str | None, node: ast.AST) -> None:
        if name not in MODULES:
            root = name.split(".")[0]
            hint = "only torch, torch.nn.functional, torch.special and math" if root in ("torch", "math") else (
                "a core may import only torch (and submodules) and math")
            if any(part.startswith("_") for part in name.split(".")):
                raise SourceRejected(f"import of private module {name!r}", _line(node))
            raise SourceRejected(f"import of {name!r}: {hint}", _line(node))
        if asname:
            self._bind(asname, _Binding("module", name), node)
        else:
            self._bind(name.split(".")[0], _Binding("module", name.split(".")[0]), node)

    def _import_from(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            raise SourceRejected("relative imports are not allowed", _line(node))
        module = node.module
        if module not in MODULES:
            self._import(module, None, node)  # raises with the import message
        for alias in node.names:
            name = alias.name
            if name == "*":
                raise SourceRejected(f"'from {module} import *' is not allowed: import names one by one", _line(node))
            if f"{module}.{name}" in MODULES:
                self._bind(alias.asname or name, _Binding("module", f"{module}.{name}"), node)
                continue
            self._member(module, name, node)
            self._bind(alias.asname or name, _Binding("value"), node)

    def _is_constant_assignment(self, stmt: ast.Assign | ast.AnnAssign) -> bool:
        if isinstance(stmt, ast.AnnAssign):
            return isinstance(stmt.target, ast.Name) and stmt.value is not None
        return all(isinstance(t, ast.Name) for t in stmt.targets)

    # ------------------------------------------------------------- the walk
    def _walk(self, root: ast.AST, context: str) -> None:
        """Check ``root`` and everything under it, in source order; ``context`` is
        code | annotation | static | default. Iterative: :meth:`scan` bounded the depth already."""
        stack: list[tuple[ast.AST, str]] = [(root, context)]
        while stack:
            node, ctx = stack.pop()
            stack.extend(reversed(list(self._check_node(node, ctx))))

    def _check_node(self, node: ast.AST, ctx: str) -> Iterator[tuple[ast.AST, str]]:
        """Check one node; yield the children still to check, each with its context."""
        kind = type(node)
        if kind in _REFUSED:
            raise SourceRejected(_REFUSED[kind], _line(node))
        if ctx == "annotation" and not isinstance(node, _ANNOTATION_NODES):
            raise SourceRejected(
                "annotations may only name types (e.g. torch.Tensor, float); they run when the source loads",
                _line(node),
            )
        if ctx in ("static", "default"):
            self._check_static(node, ctx)
        elif not isinstance(node, (*_BODY_STATEMENTS, *_EXPRESSIONS)):
            raise SourceRejected(f"{kind.__name__} is not allowed in a core", _line(node))

        if isinstance(node, ast.FunctionDef):
            yield from self._function(node)
            return
        if isinstance(node, ast.Lambda):
            yield from self._arguments(node.args, node)
            yield node.body, ctx
            return
        if isinstance(node, ast.comprehension) and node.is_async:
            raise SourceRejected("async comprehensions are not allowed in a core", _line(node))
        if isinstance(node, ast.Attribute):
            yield from self._attribute(node, ctx)
            return
        if isinstance(node, ast.Name):
            self._name(node)
            return
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for sub in ast.walk(target) if isinstance(target, (ast.Tuple, ast.List, ast.Starred)) else [target]:
                    if isinstance(sub, ast.Attribute):
                        raise SourceRejected("assigning to an attribute is not allowed in a core", _line(node))
        if isinstance(node, ast.AnnAssign):
            yield node.target, ctx
            yield node.annotation, "annotation"
            if node.value is not None:
                yield node.value, ctx
            return
        for child in ast.iter_child_nodes(node):
            yield child, ctx

    def _check_static(self, node: ast.AST, ctx: str) -> None:
        """Constants: what a module-level assignment (or a default argument) may be."""
        ok = isinstance(node, (ast.Constant, ast.Tuple, ast.Load, ast.Name, ast.Attribute))
        if ctx == "static":
            ok = ok or isinstance(node, (ast.UnaryOp, ast.BinOp, ast.unaryop, ast.operator))
        else:
            ok = ok or (isinstance(node, (ast.UnaryOp, ast.USub, ast.UAdd)))
        if isinstance(node, ast.Call):  # float('nan'), float('inf'), float('-inf'): what capture writes
            ok = (isinstance(node.func, ast.Name) and node.func.id == "float" and not node.keywords
                  and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str))
        if not ok:
            if ctx == "default":
                raise SourceRejected(
                    "a default argument value must be a constant (a number, string, None or tuple of them): "
                    "defaults run when the source loads",
                    _line(node),
                )
            raise SourceRejected(
                "module-level code may only import torch/math, assign constants and define functions",
                _line(node),
            )

    def _function(self, node: ast.FunctionDef) -> Iterator[tuple[ast.AST, str]]:
        if node.decorator_list:
            raise SourceRejected(f"decorators on {node.name!r} are not allowed", _line(node))
        if _is_dunder(node.name):
            raise SourceRejected(f"the name {node.name!r} is not allowed in a core", _line(node))
        yield from self._arguments(node.args, node)
        if node.returns is not None:
            yield node.returns, "annotation"
        for stmt in node.body:
            yield stmt, "code"

    def _arguments(self, args: ast.arguments, owner: ast.AST) -> Iterator[tuple[ast.AST, str]]:
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is None:
                continue
            if _is_dunder(arg.arg):
                raise SourceRejected(f"the name {arg.arg!r} is not allowed in a core", _line(arg) or _line(owner))
            if arg.annotation is not None:
                yield arg.annotation, "annotation"
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            yield default, "default"

    def _name(self, node: ast.Name) -> None:
        if _is_dunder(node.id):
            raise SourceRejected(f"use of {node.id!r} is not allowed in a core", _line(node))
        if isinstance(node.ctx, ast.Load):
            binding = self.globals.get(node.id)
            if binding is not None and binding.kind == "module":
                raise SourceRejected(
                    f"the module {node.id!r} is used as a value; call its functions directly "
                    f"({node.id}.<function>(...)), and bind modules only with import statements",
                    _line(node),
                )

    def _attribute(self, node: ast.Attribute, ctx: str) -> Iterator[tuple[ast.AST, str]]:
        """An attribute chain as a whole: ``torch.nn.functional.relu``, ``x.exp().sum``, ``h.dtype``."""
        parts: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        parts.reverse()
        if not isinstance(node.ctx, ast.Load):
            raise SourceRejected("assigning to an attribute is not allowed in a core", _line(node))
        for part in parts:
            if _is_dunder(part):
                raise SourceRejected(f"dunder attribute {part!r} is not allowed", _line(node))
        line = _line(node)
        module = None
        if isinstance(base, ast.Name):
            binding = self.globals.get(base.id)
            if binding is not None and binding.kind == "module":
                module = binding.target
            else:
                yield base, ctx
        else:
            yield base, ctx
        rest = parts
        if module is not None:
            rest = self._module_chain(module, parts, line, base_name=base.id)  # type: ignore[attr-defined]
        for part in rest:
            if part.startswith("_"):
                raise SourceRejected(f"private attribute {part!r} is not allowed", line)
            if part not in self.allow.value_attributes:
                raise SourceRejected(
                    f"attribute {part!r} is not allowed in a core (a core may use tensor methods and attributes, "
                    "dtype/finfo fields, and torch/math functions)",
                    line,
                )

    def _module_chain(self, module: str, parts: list[str], line: int | None, base_name: str) -> list[str]:
        """Walk ``parts`` from ``module``; the attributes left once a member is reached."""
        dotted = base_name
        for i, part in enumerate(parts):
            dotted = f"{dotted}.{part}"
            if f"{module}.{part}" in MODULES:
                module = f"{module}.{part}"
                continue
            self._member(module, part, None, line=line, shown=dotted)
            return parts[i + 1 :]
        raise SourceRejected(
            f"the module {dotted!r} is used as a value; call its functions directly, and bind modules only "
            "with import statements",
            line,
        )

    def _member(self, module: str, name: str, node: ast.AST | None, *, line: int | None = None,
                shown: str | None = None) -> None:
        dotted = shown or f"{module}.{name}"
        line = line if node is None else _line(node)
        if name.startswith("_"):
            raise SourceRejected(f"private attribute {dotted!r} is not allowed", line)
        if name in self.allow.members.get(module, frozenset()) or name in self.declared_members.get(module, ()):
            return
        if module == "math":
            raise SourceRejected(f"{dotted!r} is not a math function or constant", line)
        if module == "torch.nn":
            raise SourceRejected(f"{dotted!r}: only torch.nn.functional may be used", line)
        raise SourceRejected(f"{dotted!r} is not allowed in a core (not an elementwise tensor function)", line)


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
