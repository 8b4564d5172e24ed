"""``FlexSNKernel``: the generated kernels of a core as a plain callable."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..contract import (
    KERNEL_PATH,
    check_call_args,
    check_capture,
    check_counts,
    check_scan_call,
    validate_examples,
)
from .owner import KernelOwner
from .paths import default_device, kernels_usable, run_kernel

__all__ = ["FlexSNKernel"]


class FlexSNKernel:
    """A callable over the generated kernels: ``(*input_seqs, *init_states) -> (*output_seqs, *state_seqs)``."""

    def __init__(
        self,
        core: Callable[..., Any],
        num_inputs: int,
        num_states: int,
        num_outputs: int,
        example_inputs: Sequence[torch.Tensor] | None = None,
        requires_grad: Sequence[bool] | None = None,
    ) -> None:
        device = example_inputs[0].device if example_inputs else default_device()
        if not kernels_usable(device):
            raise RuntimeError(
                "FlexSNKernel requires CUDA (or TRITON_INTERPRET=1 for CPU tensors), but "
                "torch.cuda.is_available() is False. Use FlexSN with backend='torch' or backend='hop' "
                "for non-Triton paths."
            )
        check_counts(KERNEL_PATH, num_inputs, num_states)
        check_capture(core)
        examples = validate_examples(
            KERNEL_PATH, core, num_inputs, num_states, num_outputs, example_inputs, (), default_device()
        )
        self.num_inputs, self.num_states, self.num_outputs = num_inputs, num_states, num_outputs
        flags = None if requires_grad is None else tuple(bool(f) for f in requires_grad)
        self._kernels = KernelOwner(core, (num_inputs, num_states, num_outputs, 0), flags, "triton")
        self._kernels.handle(examples[0].dtype, device)

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_call_args(
            "FlexSNKernel", args, self.num_inputs + self.num_states,
            f"{self.num_inputs} input sequences + {self.num_states} initial states",
        )
        ni = self.num_inputs
        check_scan_call(args[:ni], args[ni:], (), ni, self.num_states, 0)
        if not kernels_usable(args[0].device):
            raise RuntimeError(
                "FlexSNKernel requires CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)."
            )
        handle = self._kernels.handle(args[0].dtype, args[0].device)
        if handle is None:
            raise RuntimeError("FlexSNKernel: no kernels could be built for this core.")
        return run_kernel(handle, self.num_inputs, self.num_outputs, self.num_states, args, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> FlexSNKernel:
        other = copy.copy(self)
        other._kernels = copy.deepcopy(self._kernels, memo)
        memo[id(self)] = other
        return other
