"""What a core may reach: modules, their members, attributes of values, builtins.

Plain data (names), computed once from the installed torch where torch is
loaded (:func:`default_allowlists`) and handed to the source check's worker
processes, which never import torch themselves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALLOWED_BUILTINS", "MODULES", "Allowlists", "default_allowlists"]

#: Builtins a core may call or read. Everything else (``getattr``, ``open``,
#: ``type``, ``vars``, ``format``, ``globals``, ``__import__`` ...) is refused.
ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "complex", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "pow", "print", "range", "reversed", "round", "set", "slice",
    "sorted", "sum", "tuple", "zip",
    "True", "False", "None", "NotImplemented", "Ellipsis",
    "ArithmeticError", "AssertionError", "Exception", "IndexError", "KeyError", "NotImplementedError",
    "RuntimeError", "TypeError", "ValueError", "ZeroDivisionError",
})

#: Modules a core may import (a submodule is reached through its parent's attribute chain).
MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.special", "math")

#: Tensor attributes that reach outside the computation (memory, files, other
#: devices, Python callbacks, autograd internals) or cannot be traced.
_DENIED_VALUE_ATTRIBUTES = frozenset({
    "storage", "untyped_storage", "storage_type", "data_ptr", "numpy", "tolist", "to_dlpack", "register_hook",
    "register_post_accumulate_grad_hook", "retain_grad", "backward", "apply_", "map_", "map2_", "share_memory_",
    "is_shared", "pin_memory", "cuda", "mps", "xpu", "ipu", "hpu", "mtia", "grad_fn", "set_", "module_load",
    "record_stream", "to_sparse", "to_sparse_coo", "to_sparse_csr", "to_sparse_csc", "to_sparse_bsr",
    "to_sparse_bsc", "to_mkldnn", "to_padded_tensor", "smm", "sspaddmm", "nested_tensor",
})

#: torch members that load, save, compile, reach other processes or devices,
#: or change global state: not elementwise tensor math.
_TORCH_DENY = frozenset({
    "load", "save", "from_file", "compile", "hub", "jit", "ops", "library", "classes", "cuda", "backends",
    "utils", "package", "distributed", "multiprocessing", "fx", "export", "autograd", "random", "manual_seed",
    "seed", "initial_seed", "cond", "vmap", "func", "overrides", "frombuffer", "from_dlpack", "asarray",
    "set_printoptions", "typename", "while_loop", "compiled_with_cxx11_abi", "is_storage", "wait", "fork",
})


@dataclass(frozen=True)
class Allowlists:
    """What a core may reach, by name (plain data: it crosses into the pool's workers)."""

    #: module path -> public members that are functions, dtypes or constants (not modules)
    members: dict[str, frozenset[str]] = field(default_factory=dict)
    #: attribute names a core may read on a value (tensor, dtype, device, size, finfo)
    value_attributes: frozenset[str] = frozenset()


def _public_callables(module: Any, modules: tuple[str | None, ...]) -> set[str]:
    import types

    names = set()
    for name in dir(module):
        if name.startswith("_") or name in _TORCH_DENY or name.startswith(("set_", "use_", "get_")):
            continue
        obj = getattr(module, name, None)
        if isinstance(obj, (types.ModuleType, type)):
            continue
        if callable(obj) and getattr(obj, "__module__", None) in modules:
            names.add(name)
    return names


@functools.lru_cache(maxsize=1)
def default_allowlists() -> Allowlists:
    """The allowlists of the installed torch (imports torch; call where it is loaded)."""
    import math

    import torch
    import torch.nn.functional
    import torch.special

    torch_members = _public_callables(torch, ("torch", "torch.functional", "torch._C._VariableFunctions", None))
    torch_members |= {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}
    torch_members |= {"pi", "e", "inf", "nan", "finfo", "iinfo", "Tensor", "Size"}
    functional = _public_callables(
        torch.nn.functional,
        ("torch.nn.functional", "torch._C._nn", "torch.functional", "torch._C._VariableFunctions", "torch", None),
    )
    special = _public_callables(torch.special, ("torch.special", "torch._C._special", None))
    values: set[str] = set()
    for obj in (torch.Tensor, torch.float32, torch.finfo(torch.float32), torch.iinfo(torch.int32),
                torch.device("cpu"), torch.Size([1])):
        values |= {n for n in dir(obj) if not n.startswith("_")}
    return Allowlists(
        members={
            "torch": frozenset(torch_members - {"nn", "special"}),
            "torch.nn": frozenset(),
            "torch.nn.functional": frozenset(functional),
            "torch.special": frozenset(special),
            "math": frozenset(n for n in dir(math) if not n.startswith("_")),
        },
        value_attributes=frozenset(values - _DENIED_VALUE_ATTRIBUTES),
    )
