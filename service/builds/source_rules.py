"""The source check's vocabulary: its error, its limits, and the syntax node kinds a core may hold.

Data shared by the walker (``source_walker.py``) and the entry points
(``source_check.py``); imports neither torch nor the service.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

__all__ = ["SourceRejected", "CheckLimits"]


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
