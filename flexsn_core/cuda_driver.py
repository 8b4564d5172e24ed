"""Load cubins and launch them through the CUDA driver API, via ctypes.

Triton's own launch path builds a C extension per kernel signature on first
use (about a second, and a C compiler on every node). Our kernels take only
pointers and integers, so a ctypes call to ``cuLaunchKernel`` does the same
job with nothing to build: a brand-new node launches cached binaries at once.

The parameter layout is Triton's: every non-constexpr argument in signature
order, then the global-scratch and profile-scratch pointers (NULL: our kernels
use no scratch; binaries that would need it are rejected at load).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CudaDriverError", "LoadedFunction", "driver"]

CUDA_SUCCESS = 0
CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97

_ARG_CTYPES = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "u32": ctypes.c_uint32, "u64": ctypes.c_uint64}


class CudaDriverError(RuntimeError):
    pass


@dataclass
class LoadedFunction:
    """A kernel loaded into one device's primary context.

    ``values`` and ``params`` are made once: a launch only writes the new
    argument values into them (building ctypes objects per call costs more
    than the launch itself). ``lock`` keeps two threads from interleaving.
    """

    module: ctypes.c_void_p
    function: ctypes.c_void_p
    num_warps: int
    shared: int
    device: int
    arg_types: tuple[Any, ...]  # ctypes type per non-constexpr param (+ the two scratch pointers)
    values: list[Any] = field(default_factory=list)
    params: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.values = [ty(0) for ty in self.arg_types]
        self.params = (ctypes.c_void_p * len(self.values))(*[ctypes.addressof(v) for v in self.values])


class _Driver:
    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:  # pragma: no cover - only on a machine without a driver
            raise CudaDriverError(f"cannot open libcuda.so.1: {exc}") from exc
        vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        lib.cuGetErrorString.argtypes = [i32, ctypes.POINTER(ctypes.c_char_p)]
        lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(vp)]
        lib.cuCtxSetCurrent.argtypes = [vp]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(vp), i32]
        lib.cuModuleLoadData.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]
        lib.cuFuncGetAttribute.argtypes = [ctypes.POINTER(i32), i32, vp]
        lib.cuFuncSetAttribute.argtypes = [vp, i32, i32]
        lib.cuDeviceGetAttribute.argtypes = [ctypes.POINTER(i32), i32, i32]
        lib.cuLaunchKernel.argtypes = [vp, u32, u32, u32, u32, u32, u32, u32, vp, ctypes.POINTER(vp), ctypes.POINTER(vp)]
        for name in (
            "cuGetErrorString",
            "cuCtxGetCurrent",
            "cuCtxSetCurrent",
            "cuDevicePrimaryCtxRetain",
            "cuModuleLoadData",
            "cuModuleGetFunction",
            "cuFuncGetAttribute",
            "cuFuncSetAttribute",
            "cuDeviceGetAttribute",
            "cuLaunchKernel",
        ):
            getattr(lib, name).restype = i32
        self.lib = lib
        self._lock = threading.Lock()

    def check(self, result: int, what: str) -> None:
        if result != CUDA_SUCCESS:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(msg))
            text = msg.value.decode() if msg.value else f"error {result}"
            raise CudaDriverError(f"{what} failed: {text}")

    def _ensure_context(self, device: int) -> None:
        ctx = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:
            self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device), "cuDevicePrimaryCtxRetain")
            self.check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")

    def load(self, cubin: bytes, launch: dict[str, Any], params: list[tuple[str, str]], device: int) -> LoadedFunction:
        if launch.get("global_scratch_size", 0) or launch.get("profile_scratch_size", 0):
            raise CudaDriverError("kernel needs scratch memory; use FLEXSN_LAUNCHER=triton")
        if launch.get("num_ctas", 1) != 1 or launch.get("launch_cooperative_grid") or launch.get("launch_pdl"):
            raise CudaDriverError("kernel needs launch attributes; use FLEXSN_LAUNCHER=triton")
        arg_types = []
        for _name, ty in params:
            if ty == "constexpr":
                continue
            if ty.startswith("*"):
                arg_types.append(ctypes.c_uint64)
            elif ty in _ARG_CTYPES:
                arg_types.append(_ARG_CTYPES[ty])
            else:
                raise CudaDriverError(f"unsupported kernel argument type {ty!r}")
        with self._lock:
            self._ensure_context(device)
            module = ctypes.c_void_p()
            self.check(self.lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
            function = ctypes.c_void_p()
            self.check(
                self.lib.cuModuleGetFunction(ctypes.byref(function), module, launch["name"].encode()),
                "cuModuleGetFunction",
            )
            shared = int(launch.get("shared", 0))
            if shared > 49152:
                optin = ctypes.c_int()
                self.check(
                    self.lib.cuDeviceGetAttribute(
                        ctypes.byref(optin), CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device
                    ),
                    "cuDeviceGetAttribute",
                )
                static = ctypes.c_int()
                self.check(
                    self.lib.cuFuncGetAttribute(ctypes.byref(static), CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function),
                    "cuFuncGetAttribute",
                )
                self.check(
                    self.lib.cuFuncSetAttribute(
                        function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin.value - static.value
                    ),
                    "cuFuncSetAttribute",
                )
        # Triton appends two scratch pointers to every kernel.
        arg_types.extend([ctypes.c_uint64, ctypes.c_uint64])
        return LoadedFunction(module, function, int(launch["num_warps"]), shared, device, tuple(arg_types))

    def launch(self, fn: LoadedFunction, grid: int, stream: int, args: list[Any]) -> None:
        with fn.lock:
            for slot, value in zip(fn.values, args):  # the scratch pointers stay 0
                slot.value = value
            result = self.lib.cuLaunchKernel(
                fn.function, grid, 1, 1, 32 * fn.num_warps, 1, 1, fn.shared, stream, fn.params, None
            )
        if result != CUDA_SUCCESS:
            self.check(result, "cuLaunchKernel")


_driver: _Driver | None = None
_driver_lock = threading.Lock()


def driver() -> _Driver:
    """The process-wide driver binding (opened on first use)."""
    global _driver
    if _driver is None:
        with _driver_lock:
            if _driver is None:
                _driver = _Driver()
    return _driver
