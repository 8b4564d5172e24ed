"""The runtime's GPU logic on CPU, through fakes: selection, autotuning, the ctypes launcher.

No GPU here: the CUDA facts the runtime asks PyTorch for (device arch, stream,
graph capture) are replaced, binaries are never real, launches go to a fake
launcher (or, for the driver launcher, a fake libcuda object), and the
autotuner's timer is a fake that returns set timings.
"""

from __future__ import annotations

import ctypes
import logging
import math

import neurons
import pytest
import torch

import flexsn_core.runtime.cuda as runtime_cuda
from flexsn_core import ArtifactError, KernelSpec, counters
from flexsn_core.artifacts import build_artifacts, generate
from flexsn_core.compile import KernelConfig
from flexsn_core.runtime import KernelSet, size_bucket
from flexsn_core.runtime.launchers import Launcher, gpu_launcher
from flexsn_core.runtime.launchers.cuda_driver import CudaDriverError, CudaDriverLauncher
from flexsn_core.runtime.selection import BUCKET_BOUNDS

TARGET = "cuda:90"
CONFIGS = [
    KernelConfig(512, 4, 1, True),
    KernelConfig(512, 4, 1, False),
    KernelConfig(1024, 4, 1, True),
    KernelConfig(1024, 4, 1, False),
    KernelConfig(2048, 8, 1, True),
    KernelConfig(2048, 8, 1, False),
]
KIND = "inference_final"


@pytest.fixture(scope="module")
def head() -> dict:
    """A real manifest head of LIF (kernel signatures, plan) with no binaries: nothing compiled."""
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    return build_artifacts(spec, targets=(), generated=generate(spec)).manifest


def _manifest(head: dict, configs=CONFIGS, tuning=None) -> dict:
    manifest = {**head, "binaries": [], "tuning": tuning or {}}
    for kind in head["kernels"]:
        for c in configs:
            manifest["binaries"].append({
                "kind": kind, "target": TARGET, "config": c.to_dict(), "config_id": c.id,
                "sha256": f"{abs(hash((kind, c.id))):064x}"[-64:],
                "launch": {"name": f"{kind}_kernel", "num_warps": c.num_warps, "shared": 0},
            })
    return manifest


class FakeLauncher(Launcher):
    """Records loads and launches; ``fail`` config ids raise at load."""

    name = "fake"

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.fail = set(fail)
        self.loads: list[tuple[str, int]] = []
        self.launches: list[tuple[str, int, int, list]] = []
        self.last: str | None = None

    def load(self, entry, cubin, params, device):  # noqa: ANN001, ANN201
        config_id = entry["config_id"]
        if config_id in self.fail:
            raise CudaDriverError(f"cannot load {config_id}")
        self.loads.append((config_id, device))
        launcher = self

        class Loaded:
            def launch(self, grid: int, stream: int, args) -> None:  # noqa: ANN001
                launcher.last = config_id
                launcher.launches.append((config_id, grid, stream, list(args)))

        return Loaded()


class FakeTimer:
    """Milliseconds per config id; counts how often each config was timed."""

    def __init__(self, launcher: FakeLauncher, ms: dict[str, float]) -> None:
        self.launcher, self.ms, self.timed = launcher, ms, []

    def __call__(self, run, device) -> float:  # noqa: ANN001
        run()
        self.timed.append(self.launcher.last)
        return self.ms.get(self.launcher.last, 5.0)


@pytest.fixture
def fake_gpu(monkeypatch):  # noqa: ANN001, ANN201
    """Stand in for an sm_90 device: its arch, a stream handle per device, no graph capture."""
    monkeypatch.setattr(runtime_cuda, "target", lambda index: TARGET)
    monkeypatch.setattr(runtime_cuda, "stream", lambda device: 1000 + (device.index or 0))
    monkeypatch.setattr(runtime_cuda, "capturing", lambda: False)
    monkeypatch.setattr(runtime_cuda, "device_index", lambda device: 0)
    monkeypatch.setenv("FLEXSN_AUTOTUNE", "1")


def _call(ks: KernelSet, n: int, *, offset: int = 0, device: torch.device = torch.device("cuda", 0)) -> None:
    """One inference_final launch over ``n`` elements (CPU buffers stand in for device memory).

    ``offset`` shifts the input pointer by that many elements (4 bytes each) to
    make an unaligned call.
    """
    x = torch.zeros(2 * n + 16)[offset : offset + 2 * n]
    values = {"in0": x, "init0": ks.dummy(torch.device("cpu")), "init0_flag": 0,
              "out0": torch.zeros(2 * n), "fin0": torch.zeros(n), "T": 2, "N": n}
    ks.launch(KIND, values, n, device)


# ------------------------------------------------------------------ selection
def test_size_buckets_are_inclusive_upper_bounds() -> None:
    assert [size_bucket(b) for b in BUCKET_BOUNDS] == [0, 1, 2, 3]
    assert [size_bucket(b + 1) for b in BUCKET_BOUNDS] == [1, 2, 3, 4]
    assert size_bucket(1) == 0


def test_tuned_choice_is_used_and_never_benchmarked(head: dict, fake_gpu) -> None:  # noqa: ANN001
    tuning = {TARGET: {KIND: {"1": {"aligned": "b2048-w8-s1-a16"}}}}
    launcher = FakeLauncher()
    timer = FakeTimer(launcher, {})
    ks = KernelSet(_manifest(head, tuning=tuning), fetch=lambda sha: b"", launcher=launcher, timer=timer)
    _call(ks, 1 << 18)
    assert timer.timed == []
    config_id, grid, stream, args = launcher.launches[-1]
    assert config_id == "b2048-w8-s1-a16" and grid == (1 << 18) // 2048 and stream == 1000
    assert all(isinstance(a, int) for a in args)  # data pointers, not tensors


def test_autotune_picks_the_fastest_records_it_and_never_benchmarks_again(head: dict, fake_gpu) -> None:  # noqa: ANN001
    launcher = FakeLauncher(fail={"b512-w4-s1-a16"})  # the "fastest" one cannot load: scores inf
    ms = {"b512-w4-s1-a16": 0.001, "b512-w4-s1-u": 0.9, "b1024-w4-s1-a16": 0.7, "b1024-w4-s1-u": 0.8,
          "b2048-w8-s1-a16": 0.3, "b2048-w8-s1-u": 0.6}
    timer = FakeTimer(launcher, ms)
    manifest = _manifest(head)
    decisions = []
    ks = KernelSet(manifest, fetch=lambda sha: b"", launcher=launcher, timer=timer)
    ks.on_tuned = decisions.append
    n = 1 << 18  # bucket 1, aligned
    _call(ks, n)
    assert sorted(timer.timed) == sorted(set(ms) - {"b512-w4-s1-a16"})  # every usable config timed once
    assert launcher.launches[-1][0] == "b2048-w8-s1-a16"
    assert manifest["tuning"][TARGET][KIND]["1"] == {"aligned": "b2048-w8-s1-a16"}
    assert counters()["autotunes"] == 1
    (decision,) = decisions
    assert decision["config_id"] == "b2048-w8-s1-a16" and decision["variant"] == "aligned"
    assert decision["bucket"] == 1 and decision["timings_ms"]["b512-w4-s1-a16"] is None  # inf reported as null

    timed = len(timer.timed)
    for _ in range(3):
        _call(ks, n - 16)  # same bucket, still aligned
    assert len(timer.timed) == timed and counters()["autotunes"] == 1
    assert [launch[0] for launch in launcher.launches[-3:]] == ["b2048-w8-s1-a16"] * 3

    # Another process with the recorded table: no benchmark at all.
    again = FakeLauncher()
    timer2 = FakeTimer(again, ms)
    _call(KernelSet(manifest, fetch=lambda sha: b"", launcher=again, timer=timer2), n)
    assert timer2.timed == [] and again.launches[-1][0] == "b2048-w8-s1-a16"

    # An unaligned call in the same bucket is its own variant: tuned once, unaligned configs only.
    _call(ks, n - 1)
    unaligned = [c for c in timer.timed[timed:]]
    assert unaligned and all(c.endswith("-u") for c in unaligned)
    assert manifest["tuning"][TARGET][KIND]["1"]["unaligned"] == "b2048-w8-s1-u"


def test_every_config_failing_is_a_clear_error(head: dict, fake_gpu) -> None:  # noqa: ANN001
    launcher = FakeLauncher(fail={c.id for c in CONFIGS})
    ks = KernelSet(_manifest(head), fetch=lambda sha: b"", launcher=launcher, timer=FakeTimer(launcher, {}))
    with pytest.raises(ArtifactError, match=r"every inference_final \(cuda:90\) config failed.*cannot load"):
        _call(ks, 4096)


def test_unaligned_calls_never_run_aligned_binaries(head: dict, fake_gpu, caplog) -> None:  # noqa: ANN001
    # A tuning table naming an aligned binary for the unaligned variant (a bad report) is ignored.
    tuning = {TARGET: {KIND: {"0": {"unaligned": "b1024-w4-s1-a16"}}}}
    launcher = FakeLauncher()
    timer = FakeTimer(launcher, {"b512-w4-s1-u": 0.2})
    ks = KernelSet(_manifest(head, tuning=tuning), fetch=lambda sha: b"", launcher=launcher, timer=timer)
    with caplog.at_level(logging.WARNING, logger="flexsn_core"):
        _call(ks, 4096, offset=1)  # pointer off by 4 bytes
    assert "ignoring the tuned" in caplog.text and "aligned-only binary" in caplog.text  # flexsn_core.manifest
    assert {c for c, _ in launcher.loads} <= {c.id for c in CONFIGS if not c.aligned}
    assert launcher.launches[-1][0] == "b512-w4-s1-u"


def test_without_autotuning_the_default_config_runs(head: dict, fake_gpu, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("FLEXSN_AUTOTUNE", "0")
    launcher = FakeLauncher()
    timer = FakeTimer(launcher, {})
    ks = KernelSet(_manifest(head), fetch=lambda sha: b"", launcher=launcher, timer=timer)
    _call(ks, 4096)
    _call(ks, 4095)
    assert timer.timed == []
    assert [launch[0] for launch in launcher.launches] == ["b1024-w4-s1-a16", "b1024-w4-s1-u"]


def test_a_target_without_binaries_says_what_to_do(head: dict, fake_gpu, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(runtime_cuda, "target", lambda index: "cuda:80")
    ks = KernelSet(_manifest(head), fetch=lambda sha: b"", launcher=FakeLauncher())
    with pytest.raises(ArtifactError, match="no inference_final binary for cuda:80.*FLEXSN_SERVICE_TARGETS"):
        _call(ks, 4096)


def test_binaries_load_once_per_device(head: dict, fake_gpu) -> None:  # noqa: ANN001
    launcher = FakeLauncher()
    ks = KernelSet(_manifest(head, tuning={TARGET: {KIND: {"0": {"aligned": "b512-w4-s1-a16"}}}}),
                   fetch=lambda sha: b"", launcher=launcher, timer=FakeTimer(launcher, {}))
    for device in (torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 0)):
        _call(ks, 4096, device=device)
    assert launcher.loads == [("b512-w4-s1-a16", 0), ("b512-w4-s1-a16", 1)]
    assert [launch[2] for launch in launcher.launches] == [1000, 1001, 1000]  # each device's own stream


def test_flexsn_launcher_selects_the_gpu_launcher(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("FLEXSN_LAUNCHER", "triton")
    assert gpu_launcher().name == "triton"
    monkeypatch.setenv("FLEXSN_LAUNCHER", "cuda")
    with pytest.raises(ValueError, match="FLEXSN_LAUNCHER must be one of driver, triton"):
        gpu_launcher()


# ------------------------------------------------------------------ the ctypes driver launcher
class FakeLibCuda:
    """The libcuda calls the launcher makes, with one context current per thread (this test's)."""

    CONTEXTS = {0: 0x1000, 1: 0x2000}

    def __init__(self, current: int | None = None) -> None:
        self.current = current
        self.stack: list[int | None] = []
        self.loaded_in: list[int | None] = []
        self.launched: list[dict] = []

    def cuGetErrorString(self, code, ref):  # noqa: ANN001, ANN201, N802
        ref._obj.value = b"CUDA_ERROR_FAKE"
        return 0

    def cuCtxGetCurrent(self, ref):  # noqa: ANN001, ANN201, N802
        ref._obj.value = self.current
        return 0

    def cuCtxSetCurrent(self, ctx):  # noqa: ANN001, ANN201, N802
        self.current = ctx.value
        return 0

    def cuCtxPushCurrent(self, ctx):  # noqa: ANN001, ANN201, N802
        self.stack.append(self.current)
        self.current = ctx.value
        return 0

    def cuCtxPopCurrent(self, ref):  # noqa: ANN001, ANN201, N802
        ref._obj.value = self.current
        self.current = self.stack.pop()
        return 0

    def cuDevicePrimaryCtxRetain(self, ref, device):  # noqa: ANN001, ANN201, N802
        ref._obj.value = self.CONTEXTS[device]
        return 0

    def cuModuleLoadData(self, ref, image):  # noqa: ANN001, ANN201, N802
        self.loaded_in.append(self.current)
        ref._obj.value = 0x77
        return 0

    def cuModuleGetFunction(self, ref, module, name):  # noqa: ANN001, ANN201, N802
        ref._obj.value = 0x88
        return 0

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):  # noqa: ANN001, ANN201, N802
        self.launched.append({"context": self.current, "grid": (gx, gy, gz), "block": (bx, by, bz),
                              "shared": shared, "stream": stream, "params": params, "extra": extra})
        return 0


PARAMS = [("in0", "*fp32"), ("flag", "i32"), ("T", "i64"), ("N", "i64"), ("BLOCK", "constexpr"),
          ("INTERPRET", "constexpr")]
ENTRY = {"launch": {"name": "k", "num_warps": 8, "shared": 1024}, "config": {"block": 2048}}


def test_driver_packs_arguments_into_the_parameter_array() -> None:
    lib = FakeLibCuda(current=FakeLibCuda.CONTEXTS[0])
    fn = CudaDriverLauncher(lib).load(ENTRY, b"cubin", PARAMS, 0)
    fn.launch(5, 1234, [0xDEAD_BEEF_0000, -7, 1 << 40, 3])
    (call,) = lib.launched
    assert call["grid"] == (5, 1, 1) and call["block"] == (256, 1, 1) and call["shared"] == 1024
    assert call["stream"] == 1234 and call["extra"] is None
    params = call["params"]
    assert len(params) == 6  # four arguments (constexprs skipped) + two scratch pointers
    kinds = [ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64]
    values = [ctypes.cast(p, ctypes.POINTER(k)).contents.value for p, k in zip(params, kinds)]
    assert values == [0xDEAD_BEEF_0000, -7, 1 << 40, 3, 0, 0]  # NULL global and profile scratch


def test_driver_rejects_what_it_cannot_launch() -> None:
    launcher = CudaDriverLauncher(FakeLibCuda())
    with pytest.raises(CudaDriverError, match="scratch memory.*FLEXSN_LAUNCHER=triton"):
        launcher.load({"launch": {"name": "k", "num_warps": 4, "global_scratch_size": 64}}, b"", PARAMS, 0)
    with pytest.raises(CudaDriverError, match="unsupported kernel argument type 'fp32'"):
        launcher.load(ENTRY, b"", [("x", "fp32")], 0)


def test_driver_loads_and_launches_in_the_tensor_devices_context() -> None:
    """Issue #11: cuda:0 current, tensors on cuda:1 -> load and launch in device 1's context, then restore."""
    ctx0, ctx1 = FakeLibCuda.CONTEXTS[0], FakeLibCuda.CONTEXTS[1]
    lib = FakeLibCuda(current=ctx0)
    launcher = CudaDriverLauncher(lib)
    fn = launcher.load(ENTRY, b"cubin", PARAMS, 1)
    assert lib.loaded_in == [ctx1] and lib.current == ctx0
    fn.launch(1, 0, [0, 0, 1, 1])
    assert lib.launched[-1]["context"] == ctx1 and lib.current == ctx0 and lib.stack == []
    # Device 1's context already current: launched there, nothing pushed.
    lib.current = ctx1
    fn.launch(1, 0, [0, 0, 1, 1])
    assert lib.launched[-1]["context"] == ctx1 and lib.current == ctx1
    # No context at all (a fresh thread): device 1's becomes current, as PyTorch would make it.
    lib.current = None
    fn.launch(1, 0, [0, 0, 1, 1])
    assert lib.launched[-1]["context"] == ctx1 and lib.current == ctx1
    # Device 0's kernel from a thread where device 1 is current.
    fn0 = launcher.load(ENTRY, b"cubin", PARAMS, 0)
    fn0.launch(1, 0, [0, 0, 1, 1])
    assert lib.loaded_in[-1] == ctx0 and lib.launched[-1]["context"] == ctx0 and lib.current == ctx1


def test_driver_errors_name_the_call() -> None:
    lib = FakeLibCuda(current=FakeLibCuda.CONTEXTS[0])
    fn = CudaDriverLauncher(lib).load(ENTRY, b"cubin", PARAMS, 0)
    lib.cuLaunchKernel = lambda *args: 700
    with pytest.raises(CudaDriverError, match="cuLaunchKernel failed: CUDA_ERROR_FAKE"):
        fn.launch(1, 0, [0, 0, 1, 1])


def test_interpreter_and_kernel_set_share_the_launcher_interface(head: dict) -> None:
    """CPU tensors go through the interpreter launcher: the same KernelSet.launch, real numerics."""
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    ks = KernelSet(head, generated=generate(spec))
    x = torch.randn(3, 40) + 0.5
    out, fin = torch.empty_like(x), torch.empty(40)
    ks.launch(KIND, {"in0": x, "init0": ks.dummy(x.device), "init0_flag": 0, "out0": out, "fin0": fin,
                     "T": 3, "N": 40}, 40, x.device)
    v = torch.zeros(40)
    for t in range(3):
        y, v = neurons.lif_hard(x[t], v)
        torch.testing.assert_close(out[t], y)
    torch.testing.assert_close(fin, v)
    assert not math.isnan(float(fin.sum()))


def test_settings_are_read_when_asked(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from flexsn_core import settings

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not settings.interpreter_enabled()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert settings.interpreter_enabled()
    monkeypatch.setenv("FLEXSN_AUTOTUNE", "0")
    assert not settings.autotune_enabled()
    monkeypatch.delenv("FLEXSN_AUTOTUNE")
    assert settings.autotune_enabled()
    monkeypatch.delenv("FLEXSN_LAUNCHER", raising=False)
    assert settings.launcher_name() == "driver"
    monkeypatch.setenv("FLEXSN_CACHE_DIR", str(tmp_path / "cache"))
    assert settings.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


@pytest.mark.parametrize("prefetch", [False, True])
def test_triton_launcher_passes_every_constexpr_the_kernel_declares(monkeypatch, prefetch) -> None:  # noqa: ANN001
    """On the H200 the Triton launcher passed (BLOCK, INTERPRET) only, while the kernels also declare
    PREFETCH: every launch failed with "function takes exactly 27 arguments (26 given)"."""
    import triton.compiler.compiler as triton_compiler

    from flexsn_core.runtime.launchers.triton import TritonLauncher

    made = []

    class FakeCompiledKernel:
        def __init__(self, src, group, hash_) -> None:  # noqa: ANN001
            self.src = src
            made.append(self)

    monkeypatch.setattr(triton_compiler, "CompiledKernel", FakeCompiledKernel)
    generated = generate(KernelSpec.from_core(neurons.lif_soft, 1, 1, 1))
    for kind, kernel in generated.kernels.items():
        params = list(kernel.params)
        constexpr_at = [i for i, (_, t) in enumerate(params) if t == "constexpr"]
        entry = {"launch": {"name": kernel.name}, "triton_metadata": {"name": kernel.name},
                 "config": {"block": 512, "prefetch": prefetch}}
        fn = TritonLauncher().load(entry, b"cubin", params, 0)
        # every constexpr has its value in the kernel's constants and in the launch's trailing arguments
        assert sorted(i for (i,) in made[-1].src.constants) == constexpr_at, kind
        assert constexpr_at == list(range(len(params) - len(constexpr_at), len(params))), kind  # they are last
        assert fn.constexprs == tuple({"BLOCK": 512, "INTERPRET": False, "PREFETCH": prefetch}[params[i][0]]
                                      for i in constexpr_at), kind
