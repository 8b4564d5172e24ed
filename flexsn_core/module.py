"""``FlexSN`` and ``FlexSNKernel``: multi-step neurons from a single-step core.

Backends of ``FlexSN``:

``"torch"``          a Python time loop (always available, any step mode)
``"hop"``            the ``flex_sn_scan`` HigherOrderOperator (eager loop)
``"triton"``         generated kernels behind the ``flexsn::*`` custom ops
``"inductor"``       a peer label of ``"triton"`` (the same kernels)
``"remote-cache"``   kernels fetched from the cache service (see the client)

On CPU tensors the Triton backends run in Triton's interpreter when
``TRITON_INTERPRET=1``; otherwise they fall back to the HOP path (logged once).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from . import ops
from .hop import eager_scan, eager_scan_final_state, flex_sn_scan
from .local import kernels_for
from .memory import MemoryModule
from .runtime import KernelSet, interpreter_enabled
from .spec import SUPPORTED_DTYPES, KernelSpec

__all__ = ["FlexSN", "FlexSNKernel", "collect_specs"]

logger = logging.getLogger("flexsn_core")

_TRITON_BACKENDS = ("triton", "inductor")
_KERNEL_BACKENDS = (*_TRITON_BACKENDS, "remote-cache")
_SUPPORTED_BACKENDS = ("triton", "torch", "inductor", "hop", "remote-cache")


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def _kernels_usable(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _requires_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(_requires_grad(v) for v in value)
    return False


def _broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes (torch.broadcast_shapes imports sympy: half a second)."""
    ndim = max(len(s) for s in shapes)
    result = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size != 1:
                if result[i] not in (1, size):
                    raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                result[i] = size
    return tuple(result)


def _spec_flags(
    requires_grad: Sequence[bool] | None, num_args: int, statics: Sequence[torch.Tensor]
) -> tuple[bool, ...] | None:
    """``requires_grad`` over (inputs, states) extended with the statics' own flags."""
    static_flags = tuple(bool(s.requires_grad) for s in statics)
    if requires_grad is None:
        return None if all(static_flags) else (True,) * num_args + static_flags
    flags = tuple(bool(f) for f in requires_grad)
    if len(flags) == num_args:
        return flags + static_flags
    if len(flags) == num_args + len(statics):
        return flags
    raise ValueError(
        f"requires_grad must have {num_args} entries (num_inputs + num_states), got {len(flags)}"
    )


Provider = Callable[[KernelSpec, torch.device], "KernelSet | None"]


class _KernelOwner:
    """Builds (or fetches) and owns custom-op handles of one core, one per dtype.

    ``provider(spec, device)`` returns the kernels: built locally for
    ``backend="triton"``, from the cache service for ``"remote-cache"``; None
    means "no kernels" and the module runs the HOP path.
    """

    def __init__(
        self,
        core: Callable[..., Any],
        counts: tuple[int, int, int, int],
        requires_grad: tuple[bool, ...] | None,
        provider: Provider = kernels_for,
    ) -> None:
        self.core = core
        self.counts = counts
        self.requires_grad = requires_grad
        self.provider = provider
        self.handles: dict[torch.dtype, int | None] = {}
        self._finalizers: list[Any] = []
        self._spec_cache: dict[torch.dtype, KernelSpec] = {}

    def spec(self, dtype: torch.dtype) -> KernelSpec:
        spec = self._spec_cache.get(dtype)
        if spec is None:
            ni, ns, no, nc = self.counts
            spec = KernelSpec.from_core(
                self.core, ni, ns, no, num_static=nc, dtype=dtype, requires_grad=self.requires_grad
            )
            self._spec_cache[dtype] = spec
        return spec

    def handle(self, dtype: torch.dtype, device: torch.device) -> int | None:
        if dtype in self.handles:
            return self.handles[dtype]
        if _collector is not None:
            _collector.append(self.spec(dtype))
            return None
        spec = self.spec(dtype)
        prototype = self.provider(spec, device)
        if prototype is None:
            self.handles[dtype] = None
            return None
        provider = self.provider

        def resolve(d: torch.device, _s: KernelSpec = spec) -> KernelSet:
            ks = provider(_s, d)
            if ks is None:
                raise RuntimeError(f"no FlexSN kernels of {_s.entry} for {d}")
            return ks

        number = ops.register_handle(spec, resolve, prototype)
        self.handles[dtype] = number
        self._finalizers.append(ops.attach_finalizer(self, number))
        return number

    def __deepcopy__(self, memo: dict[int, Any]) -> _KernelOwner:
        # Kernels depend only on the spec: a copy shares them (one more owner).
        other = _KernelOwner(self.core, self.counts, self.requires_grad, self.provider)
        other.handles = dict(self.handles)
        other._spec_cache = dict(self._spec_cache)
        for number in other.handles.values():
            if number is not None:
                ops.retain_owner(number)
                other._finalizers.append(ops.attach_finalizer(other, number))
        memo[id(self)] = other
        return other

    def __getstate__(self) -> dict[str, Any]:
        # Handles are process-local; an unpickled owner rebuilds them on use.
        state = {"core": self.core, "counts": self.counts, "requires_grad": self.requires_grad}
        if self.provider is not kernels_for:
            state["remote"] = getattr(self.provider, "settings", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        provider: Provider = kernels_for
        if "remote" in state:
            from flexsn_client.provider import remote_provider

            url, token = state["remote"] or (None, None)
            provider = remote_provider(url, token)
        self.__init__(state["core"], state["counts"], state["requires_grad"], provider)  # type: ignore[misc]


# Set while `collect_specs()` runs: FlexSN modules record their specs instead of building.
_collector: list[KernelSpec] | None = None


@contextlib.contextmanager
def collect_specs() -> Iterator[list[KernelSpec]]:
    """Record the spec of every FlexSN built inside the block, building nothing.

    ``flexsn-cache warm`` uses this to learn which kernels a model needs.
    """
    global _collector
    previous, _collector = _collector, []
    try:
        yield _collector
    finally:
        _collector = previous


def _validate_scan_contract(
    core: Callable[..., Any],
    num_inputs: int,
    num_states: int,
    num_outputs: int,
    example_inputs: Sequence[torch.Tensor] | None,
    statics: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """The checks SpikingJelly's Triton path makes, running the core once."""
    if num_inputs + num_states == 0:
        raise ValueError("FlexSN requires at least one input or state tensor.")
    if num_inputs == 0:
        raise ValueError(
            "FlexSN Triton path (backend='triton'/'inductor') requires at least one input sequence to derive T."
        )
    if example_inputs is None:
        device = _default_device()
        # One step of a neuron: broadcast with the statics (a per-neuron parameter fixes the shape).
        shape = _broadcast_shape((1,), *(s.shape for s in statics))
        examples = tuple(torch.zeros(shape, device=device) for _ in range(num_inputs + num_states))
    else:
        examples = tuple(x.detach().clone() for x in example_inputs)
        if len(examples) != num_inputs + num_states:
            raise ValueError(
                f"FlexSN expected {num_inputs + num_states} example inputs (num_inputs + num_states), "
                f"got {len(examples)}."
            )
    first = examples[0]
    for i, tensor in enumerate(examples[1:], start=1):
        if tensor.numel() != first.numel():
            raise ValueError(
                "FlexSN Triton path (backend='triton'/'inductor') currently requires every example input "
                f"and state tensor to have the same number of elements as the first example tensor "
                f"({first.numel()}), but example #{i} has {tensor.numel()} elements."
            )
        if tensor.dtype != first.dtype:
            raise ValueError(
                "FlexSN Triton path (backend='triton'/'inductor') currently requires every example input "
                f"and state tensor to match the first example tensor's dtype ({first.dtype}), but example "
                f"#{i} has dtype {tensor.dtype}."
            )
    if first.dtype not in SUPPORTED_DTYPES.values():
        raise ValueError(
            f"FlexSN Triton path supports float32, float16 and bfloat16 tensors, got {first.dtype}."
        )
    with torch.no_grad():
        # Run the core once on CPU zeros (big examples shrunk to the smallest shape the
        # statics allow: a core is elementwise): the same counts, shapes and dtypes,
        # without big allocations or loading GPU kernels at construction.
        shape = first.shape
        if first.numel() > 1 << 16:
            shape = _broadcast_shape((1,) * first.dim(), *(s.shape for s in statics))
        first = torch.zeros(shape, dtype=first.dtype)
        probes = [torch.zeros(shape, dtype=x.dtype) for x in examples]
        returns = _as_tuple(core(*probes, *(s.detach().cpu() for s in statics)))
    expected = num_outputs + num_states
    if len(returns) != expected:
        raise ValueError(
            f"FlexSN core returned {len(returns)} values, but expected {expected} (= num_outputs + num_states)."
        )
    for i, tensor in enumerate(returns):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"FlexSN core return #{i} is {type(tensor)!r}; scan backends require tensor outputs.")
        if tensor.shape != first.shape:
            raise ValueError(
                "FlexSN Triton path (backend='triton'/'inductor') currently requires every per-step output "
                f"and updated state to have the same shape as the first example tensor {tuple(first.shape)}, "
                f"but return #{i} has shape {tuple(tensor.shape)}."
            )
        if tensor.dtype != first.dtype or tensor.device != first.device:
            raise ValueError(
                "FlexSN Triton path (backend='triton'/'inductor') currently requires every per-step output "
                f"and updated state to match the first example tensor's dtype/device ({first.dtype}, "
                f"{first.device}), but return #{i} is ({tensor.dtype}, {tensor.device})."
            )
    return examples


def _output_template_specs(num_outputs: int, example_outputs: Sequence[torch.Tensor] | None):  # noqa: ANN202
    if example_outputs is None:
        return None
    if len(example_outputs) != num_outputs:
        raise ValueError(f"FlexSN expected {num_outputs} example output tensors, but got {len(example_outputs)}.")
    specs = []
    for i, tensor in enumerate(example_outputs):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"FlexSN example output #{i} is {type(tensor)!r}; expected a tensor.")
        specs.append((tuple(tensor.shape), tensor.dtype, tensor.device))
    return tuple(specs)


def _check_args(where: str, args: Sequence[Any], expected: int, detail: str) -> None:
    if len(args) != expected:
        raise ValueError(f"{where} expected {expected} tensors ({detail}), but got {len(args)}.")
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"{where} expected tensor arguments, but arg #{i} is {type(arg).__name__}.")


class FlexSN(MemoryModule):
    """A multi-step spiking neuron running ``core`` over time.

    ``core(*inputs, *states, *static_inputs) -> (*outputs, *new_states)``. In
    multi-step mode (``step_mode="m"``) inputs are ``[T, ...]`` sequences; the
    states carry over between calls until :meth:`reset`. ``static_inputs`` are
    tensors given to every step after the states (``nn.Parameter``s are
    registered and trained). With ``store_state_seqs=True`` the state sequences
    of the last call are kept in ``state_seqs``.
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
        self.cache_token = cache_token
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
        self._explicit_output_templates = _output_template_specs(num_outputs, example_outputs)
        self._output_templates = (
            None
            if self._explicit_output_templates is None
            else tuple((shape, dtype) for shape, dtype, _ in self._explicit_output_templates)
        )
        if step_mode == "m" and num_inputs == 0:
            raise ValueError(
                f"FlexSN step_mode='m' requires at least one input sequence to derive T; got num_inputs={num_inputs}."
            )
        self._kernels: _KernelOwner | None = None
        self._fallback_logged = False
        self.backend = backend
        self.store_state_seqs = store_state_seqs

        if backend in _KERNEL_BACKENDS:
            examples = _validate_scan_contract(
                core, num_inputs, num_states, num_outputs, example_inputs, self.static_tensors()
            )
            if self._explicit_output_templates is not None:
                first = examples[0]
                for i, (shape, dtype, _) in enumerate(self._explicit_output_templates):
                    if tuple(shape) != tuple(first.shape) or dtype != first.dtype:
                        raise ValueError(
                            "FlexSN Triton path (backend='triton'/'inductor') requires example_outputs to "
                            f"match the first example input's per-step shape and dtype ({tuple(first.shape)}, "
                            f"{first.dtype}), but example output #{i} is ({tuple(shape)}, {dtype})."
                        )
            flags = _spec_flags(requires_grad, num_inputs + num_states, self.static_tensors())
            provider: Provider = kernels_for
            if backend == "remote-cache":
                from flexsn_client.provider import remote_provider

                provider = remote_provider(cache_url, cache_token)
            self._kernels = _KernelOwner(
                core, (num_inputs, num_states, num_outputs, len(self._static_names)), flags, provider
            )
            device = examples[0].device if example_inputs is not None else _default_device()
            if _kernels_usable(device) or _collector is not None:
                # Build now, so a core the kernels cannot express fails at construction.
                self._kernels.handle(examples[0].dtype, device)
        elif backend == "hop":
            if num_inputs + num_states == 0:
                raise ValueError("FlexSN requires at least one input or state tensor.")
            if num_inputs == 0:
                raise ValueError("FlexSN HOP backend requires at least one input sequence to derive T.")
        self.register_memory("states", None)

    # ------------------------------------------------------------ settings
    @property
    def supported_backends(self) -> tuple[str, ...]:
        return _SUPPORTED_BACKENDS

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in _SUPPORTED_BACKENDS:
            raise NotImplementedError(f"{value} is not a supported backend of {self._get_name()}!")
        if value in _KERNEL_BACKENDS and self.step_mode != "m":
            raise RuntimeError(
                f"Cannot set backend={value!r} when step_mode={self.step_mode!r}; "
                "Triton/Inductor backends require step_mode='m'."
            )
        if value in _KERNEL_BACKENDS and self.__dict__.get("_kernels") is None and hasattr(self, "_backend"):
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
            self.backend in _KERNEL_BACKENDS
            and self._kernels is not None
            and type(self).init_states is FlexSN.init_states
        )

    # ------------------------------------------------------------ forward
    def forward(self, *args: torch.Tensor):  # noqa: ANN201
        if self.states is None and not (self.step_mode == "m" and self._can_elide_zero_states()):
            self.states = self.init_states(self.num_states, self.step_mode, *args)
        output = super().forward(*args)
        return output[0] if len(output) == 1 else output

    def single_step_forward(self, *args: torch.Tensor) -> list[torch.Tensor]:
        results = _as_tuple(self.core(*args, *self.states, *self.static_tensors()))
        self.states = list(results[self.num_outputs :])
        return list(results[: self.num_outputs])

    def multi_step_forward(self, *args: torch.Tensor) -> list[torch.Tensor]:
        if self.backend == "torch":
            return self._torch_forward(args)
        if self.backend == "hop":
            return self._hop_forward(args)
        handle = self._kernel_handle(args)
        if handle is None:
            return self._hop_forward(args)
        return self._kernel_forward(handle, args)

    def _torch_forward(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        T = args[0].shape[0]
        if self.states is None:
            self.states = self.init_states(self.num_states, "m", *args)
        if T == 0:
            if self.num_outputs > 0 and self._output_templates is None:
                raise ValueError(
                    f"FlexSN backend='{self.backend}' requires example_outputs for empty multi-step inputs so "
                    "output shapes and dtypes match core's per-step return contract without executing core."
                )
            from .hop import empty_outputs

            outs = list(empty_outputs(args, self.num_outputs, self._output_templates))
            if self.store_state_seqs:
                self.state_seqs = [s.new_empty((0, *s.shape)) for s in self.states]
            return outs
        statics = self.static_tensors()
        outs: list[list[torch.Tensor]] = [[] for _ in range(self.num_outputs)]
        seqs: list[list[torch.Tensor]] = [[] for _ in range(self.num_states)]
        states = self.states
        for t in range(T):
            results = _as_tuple(self.core(*(x[t] for x in args), *states, *statics))
            for i in range(self.num_outputs):
                outs[i].append(results[i])
            states = list(results[self.num_outputs :])
            if self.store_state_seqs:
                for j, s in enumerate(states):
                    seqs[j].append(s)
        self.states = states
        if self.store_state_seqs:
            self.state_seqs = [torch.stack(s) for s in seqs]
        return [torch.stack(o) for o in outs]

    def _hop_forward(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.states is None:
            self.states = self.init_states(self.num_states, "m", *args)
        flat = [*args, *(s.contiguous() for s in self.states), *self.static_tensors()]
        scan = flex_sn_scan if self.store_state_seqs else eager_scan_final_state
        if self.store_state_seqs and torch.compiler.is_compiling():
            scan = eager_scan  # the HOP has no Dynamo rule yet; trace the loop instead
        results = scan(
            self.core, self.num_inputs, self.num_states, self.num_outputs, *flat,
            output_template_specs=self._output_templates,
        )
        outs = list(results[: self.num_outputs])
        tail = list(results[self.num_outputs :])
        if self.store_state_seqs:
            self.state_seqs = tail
            self.states = [seq[-1] if seq.shape[0] else self.states[j] for j, seq in enumerate(tail)]
        else:
            self.states = tail
        return outs

    def _kernel_handle(self, args: Sequence[torch.Tensor]) -> int | None:
        x0 = args[0]
        if self._kernels is None or not _kernels_usable(x0.device):
            if not self._fallback_logged:
                logger.info(
                    "FlexSN(backend=%r): no Triton kernels for %s tensors (set TRITON_INTERPRET=1 to run "
                    "them on CPU); using the HOP path.",
                    self.backend, x0.device.type,
                )
                self._fallback_logged = True
            return None
        return self._kernels.handle(x0.dtype, x0.device)

    def _kernel_forward(self, handle: int, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        no, ns = self.num_outputs, self.num_states
        inputs = list(args)
        states = [] if self.states is None else list(self.states)
        statics = self.static_tensors()
        grad = torch.is_grad_enabled() and (
            _requires_grad(inputs) or _requires_grad(states) or _requires_grad(statics)
        )
        store = self.store_state_seqs
        if grad and ops.lookup_handle(handle).trainable:
            res = torch.ops.flexsn.training(handle, inputs, states, statics, store)
            self.states = list(res[no : no + ns])
            if store:
                self.state_seqs = list(res[no + ns : no + 2 * ns])
            return list(res[:no])
        # Outside torch.compile, call the op's implementation directly: the
        # dispatcher round trip costs more than the kernel on small inputs.
        eager = not torch.compiler.is_compiling()
        if store:
            res = (ops.inference if eager else torch.ops.flexsn.inference)(handle, inputs, states, statics)
            seqs = list(res[no:])
            self.state_seqs = seqs
            T = inputs[0].shape[0]
            if T:
                self.states = [s[-1] for s in seqs]
            elif not states:
                self.states = self.init_states(ns, "m", *inputs)
            return list(res[:no])
        res = (ops.inference_final if eager else torch.ops.flexsn.inference_final)(handle, inputs, states, statics)
        self.states = list(res[no:])
        return list(res[:no])

    # ------------------------------------------------------------ kernel accessor
    @property
    def kernel(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """``(*input_seqs, *init_states) -> (*output_seqs, *state_seqs)`` on the kernels."""
        return self._kernel_accessor

    def _kernel_accessor(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_args(
            "FlexSN.kernel", args, self.num_inputs + self.num_states,
            f"{self.num_inputs} input sequences + {self.num_states} initial states",
        )
        if self._kernels is None or not _kernels_usable(args[0].device) or any(
            a.device != args[0].device for a in args
        ):
            raise RuntimeError(
                "FlexSN.kernel is unavailable: FlexSN Triton kernels are not ready, or inputs are not "
                "CUDA tensors (or CPU tensors under TRITON_INTERPRET=1) on a single device."
            )
        handle = self._kernels.handle(args[0].dtype, args[0].device)
        if handle is None:
            raise RuntimeError("FlexSN.kernel is unavailable: no kernels could be built or fetched for this core.")
        return _run_kernel(handle, self.num_inputs, self.num_outputs, self.num_states, args, self.static_tensors())

    def extra_repr(self) -> str:
        core_name = getattr(self.core, "__name__", type(self.core).__name__)
        return (
            f"core={core_name}, num_inputs={self.num_inputs}, num_states={self.num_states}, "
            f"num_outputs={self.num_outputs}, step_mode={self.step_mode!r}, backend={self.backend!r}"
        )


def _run_kernel(
    handle: int, ni: int, no: int, ns: int, args: Sequence[torch.Tensor], statics: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    inputs, states = list(args[:ni]), list(args[ni:])
    grad = torch.is_grad_enabled() and (_requires_grad(args) or _requires_grad(statics))
    if grad and ops.lookup_handle(handle).trainable:
        res = torch.ops.flexsn.training(handle, inputs, states, list(statics), True)
        return (*res[:no], *res[no + ns : no + 2 * ns])
    return tuple(torch.ops.flexsn.inference(handle, inputs, states, list(statics)))


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
        device = example_inputs[0].device if example_inputs else _default_device()
        if not _kernels_usable(device):
            raise RuntimeError(
                "FlexSNKernel requires CUDA (or TRITON_INTERPRET=1 for CPU tensors), but "
                "torch.cuda.is_available() is False. Use FlexSN with backend='torch' or backend='hop' "
                "for non-Triton paths."
            )
        examples = _validate_scan_contract(core, num_inputs, num_states, num_outputs, example_inputs, ())
        self.num_inputs, self.num_states, self.num_outputs = num_inputs, num_states, num_outputs
        flags = None if requires_grad is None else tuple(bool(f) for f in requires_grad)
        self._kernels = _KernelOwner(core, (num_inputs, num_states, num_outputs, 0), flags)
        self._kernels.handle(examples[0].dtype, device)

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_args(
            "FlexSNKernel", args, self.num_inputs + self.num_states,
            f"{self.num_inputs} input sequences + {self.num_states} initial states",
        )
        if not _kernels_usable(args[0].device) or any(a.device != args[0].device for a in args):
            raise RuntimeError(
                "FlexSNKernel requires all input sequences and initial states to be CUDA tensors on the "
                "same device (or CPU tensors under TRITON_INTERPRET=1)."
            )
        handle = self._kernels.handle(args[0].dtype, args[0].device)
        if handle is None:
            raise RuntimeError("FlexSNKernel: no kernels could be built for this core.")
        return _run_kernel(handle, self.num_inputs, self.num_outputs, self.num_states, args, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> FlexSNKernel:
        other = copy.copy(self)
        other._kernels = copy.deepcopy(self._kernels, memo)
        memo[id(self)] = other
        return other

