"""Static checks of a core's source before any of it runs, and process limits.

The service receives Python source from the network. Before a build worker
executes it, :func:`check_source` parses it (never executing it) and rejects
anything a neuron core has no business doing:

* imports other than ``torch`` (and submodules) and ``math``;
* module-level code other than imports, constant assignments and ``def``s;
* dunder names and attributes (``__class__``, ``__subclasses__``, ...) and
  private attributes of modules (``torch._C``);
* builtins that reach outside the core: ``open``, ``exec``, ``eval``,
  ``compile``, ``__import__``, ``getattr``/``setattr``, ``globals``, ...;
* torch attributes outside an allowlist of tensor functions and dtypes
  (``torch.load``, ``torch.save``, ``torch.from_file``, ``torch.hub``,
  ``torch.utils``, ``torch.ops`` ... are refused);
* classes, ``global``/``nonlocal``, ``with``, ``async``, ``yield``.

It also checks the entry function exists and can take the spec's arguments.
The worker then runs the core under time and memory limits
(:func:`apply_limits`), in its own process, on fake tensors only.
"""

from __future__ import annotations

import ast
import functools
import math
import resource

import torch

from flexsn_core.spec import KernelSpec

__all__ = ["SourceRejected", "check_source", "apply_limits"]


class SourceRejected(ValueError):
    """The source breaks a rule; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{message}")
        self.line = line


_FORBIDDEN_BUILTINS = {
    "open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
    "locals", "vars", "input", "breakpoint", "memoryview", "help", "exit", "quit", "super", "object",
    "type", "classmethod", "staticmethod", "property",
}
_FORBIDDEN_ATTRIBUTES = {
    "storage", "untyped_storage", "data_ptr", "numpy", "tolist", "to_dlpack", "register_hook",
    "backward", "apply_", "map_", "map2_", "save", "load", "from_file", "share_memory_",
    "pin_memory", "cuda", "mps", "to_sparse", "grad_fn",
}
_TORCH_DENY = {
    "load", "save", "from_file", "compile", "hub", "jit", "ops", "library", "classes", "cuda",
    "backends", "utils", "package", "distributed", "multiprocessing", "fx", "export", "autograd",
    "random", "manual_seed", "seed", "initial_seed", "cond", "vmap", "func", "overrides",
    "frombuffer", "from_dlpack", "asarray", "set_printoptions", "typename",
}
_ALLOWED_MODULES = {"math", "torch"}


@functools.lru_cache(maxsize=1)
def _torch_allowlist() -> frozenset[str]:
    """Public tensor functions and dtypes of the torch namespace."""
    names = set()
    for name in dir(torch):
        if name.startswith("_") or name in _TORCH_DENY or name.startswith(("set_", "use_", "get_")):
            continue
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            names.add(name)
        elif callable(obj) and not isinstance(obj, type) and getattr(obj, "__module__", None) in (
            "torch", "torch.functional", "torch._C._VariableFunctions", None,
        ):
            names.add(name)
    return frozenset(names | {"nn", "special", "pi", "e", "inf", "nan"})


def _module_of_import(name: str, line: int) -> str:
    root = name.split(".")[0]
    if root not in _ALLOWED_MODULES or (root == "math" and name != "math"):
        raise SourceRejected(f"import of {name!r}: a core may import only torch (and submodules) and math", line)
    if any(part.startswith("_") for part in name.split(".")):
        raise SourceRejected(f"import of private module {name!r}", line)
    if root == "torch" and name not in ("torch", "torch.nn", "torch.nn.functional", "torch.special"):
        raise SourceRejected(f"import of {name!r}: only torch, torch.nn.functional and torch.special are allowed", line)
    return name


def _attribute_chain(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.modules: dict[str, str] = {}  # local name -> module path

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = _module_of_import(alias.name, node.lineno)
            self.modules[alias.asname or alias.name.split(".")[0]] = module if alias.asname else module.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            raise SourceRejected("relative imports are not allowed", node.lineno)
        module = _module_of_import(node.module, node.lineno)
        for alias in node.names:
            if alias.name == "*" or alias.name.startswith("_"):
                raise SourceRejected(f"'from {module} import {alias.name}' is not allowed", node.lineno)
            self._check_module_attribute([*module.split("."), alias.name], node.lineno)
            full = f"{module}.{alias.name}"
            self.modules[alias.asname or alias.name] = full

    # names and attributes
    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__") or node.id in _FORBIDDEN_BUILTINS:
            raise SourceRejected(f"use of {node.id!r} is not allowed in a core", node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__"):
            raise SourceRejected(f"dunder attribute {node.attr!r} is not allowed", node.lineno)
        chain = _attribute_chain(node)
        if chain and chain[0] in self.modules:
            full = [*self.modules[chain[0]].split("."), *chain[1:]]
            self._check_module_attribute(full, node.lineno)
            return  # the chain was checked as a whole
        if node.attr in _FORBIDDEN_ATTRIBUTES:
            raise SourceRejected(f"attribute {node.attr!r} is not allowed in a core", node.lineno)
        self.generic_visit(node)

    def _check_module_attribute(self, parts: list[str], line: int) -> None:
        dotted = ".".join(parts)
        if any(p.startswith("_") for p in parts[1:]):
            raise SourceRejected(f"private attribute {dotted!r} is not allowed", line)
        if parts[0] == "math":
            if len(parts) > 2 or (len(parts) == 2 and not hasattr(math, parts[1])):
                raise SourceRejected(f"{dotted!r} is not a math function or constant", line)
            return
        if len(parts) >= 2 and parts[1] not in _torch_allowlist():
            raise SourceRejected(f"{dotted!r} is not allowed in a core (not an elementwise tensor function)", line)
        if len(parts) >= 2 and parts[1] == "nn" and len(parts) >= 3 and parts[2] != "functional":
            raise SourceRejected(f"{dotted!r}: only torch.nn.functional may be used", line)
        if len(parts) > 4:
            raise SourceRejected(f"{dotted!r} is not allowed in a core", line)

    # statements a core never needs
    def _refuse(self, node: ast.AST, what: str) -> None:
        raise SourceRejected(f"{what} are not allowed in a core", getattr(node, "lineno", None))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._refuse(node, "class definitions")

    def visit_Global(self, node: ast.Global) -> None:
        self._refuse(node, "global statements")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self._refuse(node, "nonlocal statements")

    def visit_With(self, node: ast.With) -> None:
        self._refuse(node, "with statements")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._refuse(node, "async functions")

    def visit_Yield(self, node: ast.Yield) -> None:
        self._refuse(node, "generators (yield)")

    def visit_YieldFrom(self, node: ast.YieldFrom) -> None:
        self._refuse(node, "generators (yield)")

    def visit_Await(self, node: ast.Await) -> None:
        self._refuse(node, "await expressions")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            raise SourceRejected(f"decorators on {node.name!r} are not allowed", node.lineno)
        self.generic_visit(node)


def _is_constant_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return True
    if isinstance(node, ast.Tuple):
        return all(_is_constant_expr(e) for e in node.elts)
    if isinstance(node, (ast.Name, ast.Attribute)):
        return True  # an alias of a helper or a torch/math name (checked by the visitor)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
        return len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and not node.keywords
    return False


def _check_module_level(tree: ast.Module) -> None:
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            if _is_constant_expr(stmt.value):
                continue
        raise SourceRejected(
            "module-level code may only import torch/math, assign constants and define functions",
            stmt.lineno,
        )


def _check_arity(tree: ast.Module, spec: KernelSpec) -> None:
    defs = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == spec.entry]
    if not defs:
        raise SourceRejected(f"the source defines no top-level function {spec.entry!r}")
    args = defs[0].args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    required_kwonly = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    n = spec.num_args
    if required_kwonly or n < required or (args.vararg is None and n > positional):
        raise SourceRejected(
            f"{spec.entry}() takes {required}..{positional if args.vararg is None else 'any'} positional "
            f"arguments but is called with {n} (num_inputs={spec.num_inputs} + num_states={spec.num_states} "
            f"+ num_static={spec.num_static})"
            + (f" and requires keyword-only {required_kwonly}" if required_kwonly else ""),
            defs[0].lineno,
        )


def check_source(spec: KernelSpec, *, max_bytes: int = 200_000) -> None:
    """Raise SourceRejected if ``spec.source`` may not be run by a build worker."""
    if len(spec.source.encode()) > max_bytes:
        raise SourceRejected(f"the source is {len(spec.source.encode())} bytes; the limit is {max_bytes}")
    try:
        tree = ast.parse(spec.source)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        raise SourceRejected(f"syntax error: {exc.msg}" + (f" -> {text!r}" if text else ""), exc.lineno) from None
    _check_module_level(tree)
    _Checker().visit(tree)
    _check_arity(tree, spec)


def apply_limits(
    *,
    memory_bytes: int | None,
    cpu_seconds: float | None,
    max_processes: int | None = None,
    max_file_bytes: int | None = None,
) -> None:
    """Limit this process (call in a worker before running user code).

    Every limit is set with hard == soft, so code running afterwards cannot
    raise it again. The address-space limit counts from the process's current
    size, so the budget is what the build itself may add on top of torch; the
    CPU limit counts from the CPU time used so far. ``max_processes``
    (RLIMIT_NPROC) counts the processes and threads of this uid in this user
    namespace -- in the jail, the build's own.
    """
    limits: dict[int, int] = {resource.RLIMIT_CORE: 0}
    if memory_bytes is not None:
        limits[resource.RLIMIT_AS] = _address_space_bytes() + memory_bytes
    if cpu_seconds is not None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        limits[resource.RLIMIT_CPU] = int(math.ceil(used.ru_utime + used.ru_stime + cpu_seconds))
    if max_processes is not None:
        limits[resource.RLIMIT_NPROC] = max_processes
    if max_file_bytes is not None:
        limits[resource.RLIMIT_FSIZE] = max_file_bytes
    for which, value in limits.items():
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as fh:  # noqa: PTH123 - our own process, not user input
        pages = int(fh.read().split()[0])
    return pages * resource.getpagesize()
