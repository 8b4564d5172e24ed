"""Load cubins and launch them through the CUDA driver API, via ctypes.

Triton's own launch path builds a C extension per kernel signature on first
use (about a second, and a C compiler on every node). Our kernels take only
pointers and integers, so a ctypes call to ``cuLaunchKernel`` does the same
job with nothing to build: a brand-new node launches cached binaries at once.

The parameter layout is Triton's: every non-constexpr argument in signature
order, then the global-scratch and profile-scratch pointers (NULL: our kernels
use no scratch; binaries that would need it are rejected at load).

Contexts: a kernel is loaded into, and launched in, the primary context of the
device its tensors live on, whatever context is current in the calling thread
(issue #11: with ``cuda:0`` current and tensors on ``cuda:1``, binding a context
only when none was current loaded and launched on the wrong device). The
primary context is retained once per device; a launch compares the current
context with it (one cheap driver call) and pushes it around the launch only
when they differ. With no context current at all, it is made current for good,
as PyTorch itself would.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .base import Launcher

__all__ = ["CudaDriverError", "CudaDriverLauncher", "DriverFunction", "driver", "open_libcuda"]

CUDA_SUCCESS = 0
CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97
#: shared memory a block gets without opting in
_DEFAULT_SHARED_LIMIT = 49152

_ARG_CTYPES = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "u32": ctypes.c_uint32, "u64": ctypes.c_uint64}


class CudaDriverError(RuntimeError):
    pass


def open_libcuda(path: str = "libcuda.so.1") -> Any:
    """The driver library with the prototypes of the calls made here (``bench/`` opens a stand-in)."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:  # pragma: no cover - only on a machine without a driver
        raise CudaDriverError(f"cannot open {path}: {exc}") from exc
    vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
    prototypes: dict[str, list[Any]] = {
        "cuGetErrorString": [i32, ctypes.POINTER(ctypes.c_char_p)],
        "cuCtxGetCurrent": [ctypes.POINTER(vp)],
        "cuCtxSetCurrent": [vp],
        "cuCtxPushCurrent": [vp],
        "cuCtxPopCurrent": [ctypes.POINTER(vp)],
        "cuDevicePrimaryCtxRetain": [ctypes.POINTER(vp), i32],
        "cuModuleLoadData": [ctypes.POINTER(vp), ctypes.c_char_p],
        "cuModuleGetFunction": [ctypes.POINTER(vp), vp, ctypes.c_char_p],
        "cuFuncGetAttribute": [ctypes.POINTER(i32), i32, vp],
        "cuFuncSetAttribute": [vp, i32, i32],
        "cuDeviceGetAttribute": [ctypes.POINTER(i32), i32, i32],
        "cuLaunchKernel": [vp, u32, u32, u32, u32, u32, u32, u32, vp, ctypes.POINTER(vp), ctypes.POINTER(vp)],
    }
    for name, argtypes in prototypes.items():
        # The _v2 entry points are the current ABI of the context calls.
        fn = getattr(lib, f"{name}_v2", None) if name in ("cuCtxPushCurrent", "cuCtxPopCurrent") else None
        fn = fn or getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = i32
        setattr(lib, name, fn)
    return lib


class DriverFunction:
    """A kernel loaded into one device's primary context.

    The argument slots and the parameter array are made once: a launch only
    writes the new values into them (building ctypes objects per call costs
    more than the launch itself). ``lock`` keeps two threads from interleaving
    writes to the slots; it also guards the out-parameter of the context query.
    """

    def __init__(
        self,
        owner: CudaDriverLauncher,
        module: ctypes.c_void_p,
        function: ctypes.c_void_p,
        num_warps: int,
        shared: int,
        device: int,
        context: ctypes.c_void_p,
        arg_types: tuple[Any, ...],
    ) -> None:
        self.owner = owner
        self.module = module
        self.function = function
        self.num_warps = num_warps
        self.shared = shared
        self.device = device
        self.context = context
        self.arg_types = arg_types  # ctypes type per non-constexpr param, then the two scratch pointers
        self.values = [ty(0) for ty in arg_types]
        self.params = (ctypes.c_void_p * len(self.values))(*[ctypes.addressof(v) for v in self.values])
        self.lock = threading.Lock()
        self._context_value = context.value
        self._current = ctypes.c_void_p()
        self._current_ref = ctypes.byref(self._current)
        self._popped = ctypes.c_void_p()
        self._popped_ref = ctypes.byref(self._popped)

    def launch(self, grid: int, stream: int, args: Sequence[Any]) -> None:
        lib = self.owner.lib
        with self.lock:
            result = lib.cuCtxGetCurrent(self._current_ref)
            if result != CUDA_SUCCESS:
                self.owner.check(result, "cuCtxGetCurrent")
            pushed = False
            if self._current.value != self._context_value:
                if self._current.value:
                    self.owner.check(lib.cuCtxPushCurrent(self.context), "cuCtxPushCurrent")
                    pushed = True
                else:
                    self.owner.check(lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            try:
                for slot, value in zip(self.values, args):  # the scratch pointers stay 0
                    slot.value = value
                result = lib.cuLaunchKernel(
                    self.function, grid, 1, 1, 32 * self.num_warps, 1, 1, self.shared, stream, self.params, None
                )
            finally:
                if pushed:
                    self.owner.check(lib.cuCtxPopCurrent(self._popped_ref), "cuCtxPopCurrent")
        if result != CUDA_SUCCESS:
            self.owner.check(result, "cuLaunchKernel")


class CudaDriverLauncher(Launcher):
    """Cubins through ``cuModuleLoadData`` / ``cuLaunchKernel``.

    ``lib`` is libcuda (opened on construction when None); tests pass a fake
    object with the same functions.
    """

    name = "driver"

    def __init__(self, lib: Any | None = None) -> None:
        self.lib = lib if lib is not None else open_libcuda()
        self._lock = threading.Lock()
        self._primary: dict[int, ctypes.c_void_p] = {}

    def check(self, result: int, what: str) -> None:
        if result != CUDA_SUCCESS:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(msg))
            text = msg.value.decode() if msg.value else f"error {result}"
            raise CudaDriverError(f"{what} failed: {text}")

    def primary_context(self, device: int) -> ctypes.c_void_p:
        """The device's primary context, retained once per process (never released: kernels live in it)."""
        ctx = self._primary.get(device)
        if ctx is None:
            ctx = ctypes.c_void_p()
            self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device), "cuDevicePrimaryCtxRetain")
            self._primary[device] = ctx
        return ctx

    @contextmanager
    def _in_context(self, ctx: ctypes.c_void_p) -> Iterator[None]:
        """Run the block with ``ctx`` current, restoring the caller's context after."""
        current = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
        if current.value == ctx.value:
            yield
        elif not current.value:
            self.check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
            yield
        else:
            self.check(self.lib.cuCtxPushCurrent(ctx), "cuCtxPushCurrent")
            try:
                yield
            finally:
                self.check(self.lib.cuCtxPopCurrent(ctypes.byref(ctypes.c_void_p())), "cuCtxPopCurrent")

    def load(
        self, entry: Mapping[str, Any], cubin: bytes, params: Sequence[tuple[str, str]], device: int
    ) -> DriverFunction:
        launch = entry["launch"]
        if launch.get("global_scratch_size", 0) or launch.get("profile_scratch_size", 0):
            raise CudaDriverError("kernel needs scratch memory; use FLEXSN_LAUNCHER=triton")
        if launch.get("num_ctas", 1) != 1 or launch.get("launch_cooperative_grid") or launch.get("launch_pdl"):
            raise CudaDriverError("kernel needs launch attributes; use FLEXSN_LAUNCHER=triton")
        arg_types: list[Any] = []
        for _name, ty in params:
            if ty == "constexpr":
                continue
            if ty.startswith("*"):
                arg_types.append(ctypes.c_uint64)
            elif ty in _ARG_CTYPES:
                arg_types.append(_ARG_CTYPES[ty])
            else:
                raise CudaDriverError(f"unsupported kernel argument type {ty!r}")
        # Triton appends two scratch pointers to every kernel.
        arg_types.extend([ctypes.c_uint64, ctypes.c_uint64])
        lib = self.lib
        with self._lock:
            ctx = self.primary_context(device)
            with self._in_context(ctx):
                module = ctypes.c_void_p()
                self.check(lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
                function = ctypes.c_void_p()
                self.check(
                    lib.cuModuleGetFunction(ctypes.byref(function), module, str(launch["name"]).encode()),
                    "cuModuleGetFunction",
                )
                shared = int(launch.get("shared", 0))
                if shared > _DEFAULT_SHARED_LIMIT:
                    self._opt_in_shared(function, device)
        return DriverFunction(
            self, module, function, int(launch["num_warps"]), shared, device, ctx, tuple(arg_types)
        )

    def _opt_in_shared(self, function: ctypes.c_void_p, device: int) -> None:
        """Allow the kernel the device's opt-in shared memory (above the 48 KiB default)."""
        optin = ctypes.c_int()
        self.check(
            self.lib.cuDeviceGetAttribute(ctypes.byref(optin), CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device),
            "cuDeviceGetAttribute",
        )
        static = ctypes.c_int()
        self.check(
            self.lib.cuFuncGetAttribute(ctypes.byref(static), CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function),
            "cuFuncGetAttribute",
        )
        self.check(
            self.lib.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin.value - static.value),
            "cuFuncSetAttribute",
        )


_driver: CudaDriverLauncher | None = None
_driver_lock = threading.Lock()


def driver() -> CudaDriverLauncher:
    """The process-wide driver launcher (libcuda opened on first use)."""
    global _driver
    if _driver is None:
        with _driver_lock:
            if _driver is None:
                _driver = CudaDriverLauncher()
    return _driver
