"""The walk over a core's syntax tree: bindings, statements, expressions, attribute chains.

:class:`_Checker` makes one pass with an explicit stack (no recursion, so no
nesting depth can crash it) and raises :class:`SourceRejected` at the first
thing a core may not do. The rules are described in ``source_check.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .source_allowlist import MODULES, Allowlists
from .source_rules import (
    _ANNOTATION_NODES,
    _BODY_STATEMENTS,
    _EXPRESSIONS,
    _REFUSED,
    _SCOPES,
    CheckLimits,
    SourceRejected,
    _is_dunder,
    _line,
)

__all__ = ["_Checker", "_Binding"]


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
