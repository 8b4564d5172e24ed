"""``FlexSN``: a multi-step spiking neuron module from a single-step core.

Backends:

``"torch"``          a Python time loop (always available, any step mode)
``"hop"``            the ``flex_sn_scan`` HigherOrderOperator (eager loop)
``"triton"``         generated kernels behind the ``flexsn::*`` custom ops
``"inductor"``       a peer label of ``"triton"`` (the same kernels)
``"remote-cache"``   kernels fetched from the cache service (provided by the client)

Any other name is looked up in the provider registry
(:mod:`flexsn_core.providers`). On CPU tensors the kernel backends run in
Triton's interpreter when ``TRITON_INTERPRET=1``; otherwise they fall back to
the HOP path (logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import providers
from ..contract import (
    KERNEL_PATH,
    as_tuple,
    cast_returns,
    check_call_args,
    check_capture,
    check_counts,
    check_outputs_match,
    check_scan_call,
    output_templates,
    validate_examples,
)
from ..errors import CoreSignatureError
from ..hop import scan_arity_error
from ..memory import MemoryModule
from .collect import collector
from .owner import KernelOwner, spec_flags
from .paths import default_device, hop_forward, kernel_forward, kernels_usable, run_kernel, torch_forward

__all__ = ["FlexSN"]

logger = logging.getLogger("flexsn_core")

#: backends that run the core in Python; every other backend name is a kernel provider
PATH_BACKENDS = ("torch", "hop")

#: (backend, device type) pairs whose fallback to the HOP path was already logged in this process
_fallbacks_logged: set[tuple[str, str]] = set()


class FlexSN(MemoryModule):
    """A multi-step spiking neuron running ``core`` over time.

    ``core(*inputs, *states, *static_inputs) -> (*outputs, *new_states)``. In
    multi-step mode (``step_mode="m"``) inputs are ``[T, ...]`` sequences; the
    states carry over between calls until :meth:`reset`. ``static_inputs`` are
    tensors given to every step after the states (``nn.Parameter``s are
    registered and trained). With ``store_state_seqs=True`` the state sequences
    of the last call are kept in ``state_seqs``.

    ``cache_url`` and ``cache_token`` configure ``backend="remote-cache"``. The
    token is handed to the provider and never kept on the module, so a pickled
    or ``torch.save``d module holds no secret; an unpickled one takes the token
    from ``FLEXSN_CACHE_TOKEN``.
    """

    def __init__(
        self,
        core: Callable[..., Any],
        num_inputs: int,
        num_states: int,
        num_outputs: int,
        example_inputs: Sequence[torch.Tensor] | None = None,
        requires_grad: Sequence[bool] | None = None,
        step_mode: str = "m",
        backend: str = "triton",
        store_state_seqs: bool = False,
        example_outputs: Sequence[torch.Tensor] | None = None,
        *,
        static_inputs: Sequence[torch.Tensor] = (),
        cache_url: str | None = None,
        cache_token: str | None = None,
    ) -> None:
        super().__init__()
        self.core = core
        self.num_inputs = num_inputs
        self.num_states = num_states
        self.num_outputs = num_outputs
        self.step_mode = step_mode
        self.cache_url = cache_url
        self._static_names: list[str] = []
        for i, tensor in enumerate(static_inputs):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"static input #{i} is {type(tensor).__name__}; expected a tensor")
            name = f"static_{i}"
            if isinstance(tensor, torch.nn.Parameter):
                self.register_parameter(name, tensor)
            else:
                self.register_buffer(name, tensor)
            self._static_names.append(name)
        self._explicit_output_templates = output_templates(num_outputs, example_outputs)
        self._output_templates = (
            None
            if self._explicit_output_templates is None
            else tuple((shape, dtype) for shape, dtype, _ in self._explicit_output_templates)
        )
        if step_mode == "m" and num_inputs == 0:
            raise ValueError(
                f"FlexSN step_mode='m' requires at least one input sequence to derive T; got num_inputs={num_inputs}."
            )
        # Once here, not per call: Dynamo cannot trace inspect.signature (see flexsn_core.hop).
        arity_error = num_inputs + num_states and scan_arity_error(  # (no tensors at all: a count error below)
            core, num_inputs, num_states, num_inputs + num_states + len(static_inputs), "FlexSN", "static"
        )
        if arity_error:
            raise CoreSignatureError(arity_error)
        self._kernels: KernelOwner | None = None
        self.backend = backend
        self.store_state_seqs = store_state_seqs

        if backend not in PATH_BACKENDS:
            check_counts(KERNEL_PATH, num_inputs, num_states)
            check_capture(core)
            examples = validate_examples(
                KERNEL_PATH, core, num_inputs, num_states, num_outputs, example_inputs, self.static_tensors(),
                default_device(),
            )
            if self._explicit_output_templates is not None:
                check_outputs_match(KERNEL_PATH, self._explicit_output_templates, examples[0])
            flags = spec_flags(requires_grad, num_inputs + num_states, self.static_tensors())
            self._kernels = KernelOwner(
                core, (num_inputs, num_states, num_outputs, len(self._static_names)), flags, backend,
                cache_url=cache_url, cache_token=cache_token,
            )
            device = examples[0].device if example_inputs is not None else default_device()
            if kernels_usable(device) or collector() is not None:
                # Build now, so a core the kernels cannot express fails at construction.
                self._kernels.handle(examples[0].dtype, device)
        elif backend == "hop":
            check_counts("FlexSN HOP backend", num_inputs, num_states)
        self.register_memory("states", None)

    # ------------------------------------------------------------ settings
    @property
    def supported_backends(self) -> tuple[str, ...]:
        return (*PATH_BACKENDS, *providers.provider_names())

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in PATH_BACKENDS and not providers.is_provider(value):
            raise providers.not_found(
                value,
                f"{value} is not a supported backend of {self._get_name()}! "
                f"Supported: {', '.join(self.supported_backends)}.",
            )
        if value not in PATH_BACKENDS and self.step_mode != "m":
            raise RuntimeError(
                f"Cannot set backend={value!r} when step_mode={self.step_mode!r}; "
                "Triton/Inductor backends require step_mode='m'."
            )
        if value not in PATH_BACKENDS and self.__dict__.get("_kernels") is None and hasattr(self, "_backend"):
            logger.warning(
                "Switching FlexSN.backend to %s without prebuilt Triton kernels; this module will "
                "fall back to the HOP/eager path.",
                value,
            )
        self._backend = value

    @property
    def store_state_seqs(self) -> bool:
        return self._store_state_seqs

    @store_state_seqs.setter
    def store_state_seqs(self, value: bool) -> None:
        self._store_state_seqs = bool(value)
        if value and "state_seqs" not in self._memories:
            self.register_memory("state_seqs", None)

    def static_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self._static_names]

    # ------------------------------------------------------------ states
    @staticmethod
    def init_states(num_states: int, step_mode: str, *args: torch.Tensor) -> list[torch.Tensor]:
        """Initial states (zeros shaped like one step of the first input). Override to customize."""
        if step_mode == "s":
            return [torch.zeros_like(args[0]) for _ in range(num_states)]
        if step_mode == "m":
            return [args[0].new_zeros(args[0].shape[1:]) for _ in range(num_states)]
        raise ValueError(f"Unsupported step mode: {step_mode}")

    def _can_elide_zero_states(self) -> bool:
        return (
            self.backend not in PATH_BACKENDS
            and self._kernels is not None
            and type(self).init_states is FlexSN.init_states
        )

    # ------------------------------------------------------------ forward
    def forward(self, *args: torch.Tensor):  # noqa: ANN201
        if self.states is None and not (self.step_mode == "m" and self._can_elide_zero_states()):
            self.states = self.init_states(self.num_states, self.step_mode, *args)
        output = super().forward(*args)
        return output[0] if len(output) == 1 else output

    def single_step_forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # A tuple, as SpikingJelly's single-step FlexSN returns for several outputs.
        results = as_tuple(self.core(*args, *self.states, *self.static_tensors()))
        if args:
            results = cast_returns(results, args[0].dtype)
        self.states = list(results[self.num_outputs :])
        return tuple(results[: self.num_outputs])

    def multi_step_forward(self, *args: torch.Tensor) -> list[torch.Tensor]:
        if self.backend == "torch":
            return torch_forward(self, args)
        if self.backend == "hop":
            return hop_forward(self, args)
        handle = self._kernel_handle(args)
        if handle is None:
            return hop_forward(self, args)
        return kernel_forward(self, handle, args)

    def _kernel_handle(self, args: Sequence[torch.Tensor]) -> int | None:
        if not args:
            raise ValueError(f"FlexSN expected {self.num_inputs} input sequences, but got 0.")
        x0 = args[0]
        if self._kernels is None or not kernels_usable(x0.device):
            # A warning, once per process and kind of device: a user must see that no kernels run.
            seen = (self.backend, x0.device.type)
            if seen not in _fallbacks_logged and not torch.compiler.is_compiling():  # logging: no Dynamo
                _fallbacks_logged.add(seen)
                logger.warning(
                    "FlexSN(backend=%r): no Triton kernels for %s tensors (set TRITON_INTERPRET=1 to run "
                    "them on CPU in Triton's interpreter); using the HOP path (a Python loop over time).",
                    self.backend, x0.device.type,
                )
            return None
        return self._kernels.handle(x0.dtype, x0.device)

    # ------------------------------------------------------------ kernel accessor
    @property
    def kernel(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """``(*input_seqs, *init_states) -> (*output_seqs, *state_seqs)`` on the kernels."""
        return self._kernel_accessor

    def _kernel_accessor(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_call_args(
            "FlexSN.kernel", args, self.num_inputs + self.num_states,
            f"{self.num_inputs} input sequences + {self.num_states} initial states",
        )
        ni = self.num_inputs
        check_scan_call(args[:ni], args[ni:], self.static_tensors(), ni, self.num_states, len(self._static_names))
        if self._kernels is None or not kernels_usable(args[0].device):
            raise RuntimeError(
                "FlexSN.kernel is unavailable: FlexSN Triton kernels are not ready, or inputs are not "
                "CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)."
            )
        handle = self._kernels.handle(args[0].dtype, args[0].device)
        if handle is None:
            raise RuntimeError("FlexSN.kernel is unavailable: no kernels could be built or fetched for this core.")
        return run_kernel(handle, self.num_inputs, self.num_outputs, self.num_states, args, self.static_tensors())

    def extra_repr(self) -> str:
        core_name = getattr(self.core, "__name__", type(self.core).__name__)
        return (
            f"core={core_name}, num_inputs={self.num_inputs}, num_states={self.num_states}, "
            f"num_outputs={self.num_outputs}, step_mode={self.step_mode!r}, backend={self.backend!r}"
        )
