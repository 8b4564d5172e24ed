"""spikingjelly.activation_based.functional: flexsn_core.functional plus the setters the tests use."""

from __future__ import annotations

import torch

from flexsn_core.functional import *  # noqa: F401,F403
from flexsn_core.memory import MemoryModule


def _each(net: torch.nn.Module, instance: type | tuple[type, ...]):  # noqa: ANN202
    return (m for m in net.modules() if isinstance(m, instance))


def set_step_mode(net: torch.nn.Module, step_mode: str) -> None:
    for m in net.modules():
        if hasattr(m, "step_mode"):
            m.step_mode = step_mode


def set_backend(net: torch.nn.Module, backend: str, instance: type | tuple[type, ...] = MemoryModule) -> None:
    for m in _each(net, instance):
        if hasattr(m, "backend"):
            m.backend = backend


def reset_net(net: torch.nn.Module) -> None:
    for m in net.modules():
        if hasattr(m, "reset"):
            m.reset()
