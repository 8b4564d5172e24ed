"""``FlexSN`` and ``FlexSNKernel``: multi-step neurons from a single-step core.

    flexsn.py    FlexSN, the module (settings, states, dispatch to a forward path)
    kernel.py    FlexSNKernel, the kernels as a plain callable
    paths.py     the forward paths: torch loop, HOP, kernels (custom ops)
    owner.py     KernelOwner: custom-op handles of a core, what a pickle keeps
    collect.py   collect_specs(): record the specs a model needs, building nothing

The scan contract both modules (and ``flex_sn_scan``) check lives in
:mod:`flexsn_core.contract`; kernel providers by backend name in
:mod:`flexsn_core.providers`.
"""

from __future__ import annotations

from .collect import collect_specs
from .flexsn import FlexSN
from .kernel import FlexSNKernel
from .owner import KernelOwner

# Pickles name classes by module: keep them at this public path, whatever file defines them.
# `_KernelOwner` is the owner's name in checkpoints written before the split.
for _cls in (FlexSN, FlexSNKernel, KernelOwner):
    _cls.__module__ = __name__
_KernelOwner = KernelOwner

__all__ = ["FlexSN", "FlexSNKernel", "collect_specs"]
