"""Every knob flexsn_core reads from the environment, in one place.

| variable | read by | meaning | default |
| --- | --- | --- | --- |
| ``FLEXSN_CACHE_DIR`` | :func:`cache_dir` | generated modules and the local artifact store | ``$XDG_CACHE_HOME/flexsn`` or ``~/.cache/flexsn`` |
| ``TRITON_INTERPRET`` | :func:`interpreter_enabled` | ``1``: run kernels on CPU tensors in Triton's interpreter | off |
| ``FLEXSN_LAUNCHER`` | :func:`launcher_name` | ``driver`` (ctypes CUDA driver) or ``triton`` (Triton's launcher) | ``driver`` |
| ``FLEXSN_AUTOTUNE`` | :func:`autotune_enabled` | ``0`` turns GPU autotuning off (default configs) | on |
| ``FLEXSN_BACKWARD`` | :func:`backward_mode` | training backward: ``auto``, ``stored`` (read the save plan's buffers) or ``recompute`` (keep only inputs, rebuild the rest) | ``auto`` |
| ``FLEXSN_COMPILE_REMAT`` | :func:`compile_remat_enabled` | ``0``: under ``torch.compile``, let Inductor save a FlexSN layer's input instead of recomputing it in the backward (:mod:`flexsn_core.remat`) | on |
| ``FLEXSN_HOP_LOWERING`` | :func:`hop_lowering` | the HOP path's time loop inside ``torch.compile`` without grad: ``unroll``, ``while_loop`` or ``scan`` | ``unroll`` |

The functions read the environment when called (tests change it with
``monkeypatch.setenv``), and each costs one dict lookup: cheap enough for the
places that call them per forward (``interpreter_enabled``). The others are read
when a kernel is loaded or a bucket is chosen, never per launch.

The client's knobs (``FLEXSN_CACHE_URL``, ``FLEXSN_CACHE_TOKEN``) live in
``flexsn_client.settings``; the service's in ``flexsn_service.config``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "cache_dir", "interpreter_enabled", "launcher_name", "autotune_enabled", "backward_mode", "hop_lowering",
    "compile_remat_enabled",
    "LAUNCHERS", "BACKWARD_MODES", "HOP_LOWERINGS",
]

#: Values ``FLEXSN_LAUNCHER`` may take.
LAUNCHERS = ("driver", "triton")
#: Values ``FLEXSN_BACKWARD`` may take.
BACKWARD_MODES = ("auto", "stored", "recompute")

#: Values ``FLEXSN_HOP_LOWERING`` may take.
HOP_LOWERINGS = ("unroll", "while_loop", "scan")

_OFF = ("", "0")


def cache_dir() -> Path:
    """Local folder for generated modules and mirrored artifacts (``FLEXSN_CACHE_DIR``), created if absent."""
    root = os.environ.get("FLEXSN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flexsn"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def interpreter_enabled() -> bool:
    """``TRITON_INTERPRET`` set (and not ``0``): kernels run on CPU tensors in Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in _OFF


def autotune_enabled() -> bool:
    """GPU autotuning of untuned size buckets (``FLEXSN_AUTOTUNE=0`` turns it off)."""
    return os.environ.get("FLEXSN_AUTOTUNE", "1") not in _OFF


def compile_remat_enabled() -> bool:
    """Whether the Inductor pass of :mod:`flexsn_core.remat` marks FlexSN inputs for recomputation."""
    return os.environ.get("FLEXSN_COMPILE_REMAT", "1") not in _OFF


def launcher_name() -> str:
    """How GPU binaries are loaded and launched: ``"driver"`` (default) or ``"triton"`` (``FLEXSN_LAUNCHER``)."""
    name = os.environ.get("FLEXSN_LAUNCHER", "").strip().lower() or "driver"
    if name not in LAUNCHERS:
        raise ValueError(f"FLEXSN_LAUNCHER must be one of {', '.join(LAUNCHERS)}; got {name!r}")
    return name


def backward_mode() -> str:
    """How a training step keeps what its backward needs (``FLEXSN_BACKWARD``; see ``ops.choose_recompute``)."""
    mode = os.environ.get("FLEXSN_BACKWARD", "").strip().lower() or "auto"
    if mode not in BACKWARD_MODES:
        raise ValueError(f"FLEXSN_BACKWARD must be one of {', '.join(BACKWARD_MODES)}; got {mode!r}")
    return mode


def hop_lowering() -> str:
    """How ``FlexSN(backend="hop")`` loops over time inside ``torch.compile`` without grad
    (``FLEXSN_HOP_LOWERING``): ``"unroll"`` (default), ``"while_loop"`` or ``"scan"``
    (see :mod:`flexsn_core.hop_lowerable`). Read while Dynamo traces, so a change needs a recompile."""
    name = os.environ.get("FLEXSN_HOP_LOWERING", "").strip().lower() or "unroll"
    if name not in HOP_LOWERINGS:
        raise ValueError(f"FLEXSN_HOP_LOWERING must be one of {', '.join(HOP_LOWERINGS)}; got {name!r}")
    return name
