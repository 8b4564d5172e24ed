"""bench/train_bench.py stays runnable: its CPU smoke mode, its failure records, its summary and plot.

The GPU run itself happens on a GPU host; these tests keep the script from rotting
between runs (the smoke run uses the same child-process path, network and records).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import train_bench  # noqa: E402

#: fields every measured configuration record carries (the JSONL schema the plot and README rely on)
MEASURED_FIELDS = {
    "neuron", "T", "dtype", "impl", "batch", "steps", "warmup", "device", "device_name", "torch", "triton",
    "build_s", "neuron_dtype", "neuron_elements_per_step", "ms", "ms_mean", "ms_min", "ms_max",
    "peak_mem_bytes", "peak_mem_gb", "first_step_s", "compile_s", "loss_first", "loss_last", "gpu", "wall_s",
}
SMOKE = train_bench.Config(neuron="alif", T=2, dtype="float32", impl="ours", batch=2, steps=1, warmup=1,
                           device="cpu", smoke=True, compile_backend="aot_eager")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str]:
    out = tmp_path_factory.mktemp("train_bench") / "smoke.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_bench.py"), "--smoke", "--no-plot", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout


def test_smoke_run_measures_every_implementation(smoke_run: tuple[list[dict], str]) -> None:
    records, stdout = smoke_run
    configs = [r for r in records if not r.get("summary")]
    assert sorted(r["impl"] for r in configs) == ["loop_compiled", "ours", "ours_compiled"]
    for record in configs:
        assert "error" not in record, record.get("traceback") or record["error"]
        assert MEASURED_FIELDS <= record.keys(), MEASURED_FIELDS - record.keys()
        assert record["ms"] > 0 and record["ms_min"] <= record["ms"] <= record["ms_max"]
        assert (record["compile_s"] is not None) == (record["impl"] in train_bench.COMPILED)
    compiled = {r["impl"]: r for r in configs if r["impl"] in train_bench.COMPILED}
    assert compiled["ours_compiled"]["graph_breaks"] == 0
    # The same weights and data everywhere: the implementations compute the same first loss.
    losses = [r["loss_first"] for r in configs]
    assert max(losses) - min(losses) < 1e-4, losses
    assert "| ours_compiled |" in stdout  # the printed side-by-side table


def test_smoke_run_ends_with_the_target_summary(smoke_run: tuple[list[dict], str]) -> None:
    records, _ = smoke_run
    summary = records[-1]
    assert summary["summary"] is True and summary["failed"] == []
    assert set(summary["targets"]) == set(train_bench.TARGETS)
    (row,) = summary["ratios"]
    assert (row["neuron"], row["T"], row["dtype"]) == ("alif", 2, "float32")
    by_impl = {r["impl"]: r for r in records[:-1]}
    assert row["eager_time_vs_loop_compiled"] == pytest.approx(
        by_impl["ours"]["ms"] / by_impl["loop_compiled"]["ms"], abs=1e-3
    )
    assert row["eager_peak_vs_loop_compiled"] is None  # no allocator statistics on CPU


def test_plot_from_the_jsonl_alone(smoke_run: tuple[list[dict], str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plotting needs matplotlib (a bench-only dependency)")
    import plot_train

    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in smoke_run[0]))
    assert plot_train.main([str(jsonl)]) == 0
    assert jsonl.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_plot_of_a_run_without_figures_says_so(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plotting needs matplotlib (a bench-only dependency)")
    import plot_train

    jsonl = tmp_path / "failed.jsonl"
    jsonl.write_text(json.dumps({**train_bench.asdict(SMOKE), "error": "RuntimeError: boom"}) + "\n")
    assert plot_train.main([str(jsonl)]) == 1
    assert not jsonl.with_suffix(".png").exists()


def test_a_failing_configuration_becomes_an_error_record() -> None:
    record = train_bench.run_child(replace(SMOKE, impl="no_such_impl"), None, timeout=300)
    assert record["impl"] == "no_such_impl"
    assert "unknown implementation 'no_such_impl'" in record["error"]
    assert "ValueError" in record["traceback"]


def test_a_configuration_past_its_time_limit_becomes_a_timeout_record() -> None:
    record = train_bench.run_child(SMOKE, None, timeout=0.2)
    assert record["error"].startswith("timeout after 0.2 s")
    assert record["impl"] == "ours" and record["wall_s"] < 30


def test_spikingjelly_missing_gives_an_unavailable_record(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "spikingjelly", None)  # import spikingjelly -> ImportError
    train_bench.child_main(json.dumps(train_bench.asdict(replace(SMOKE, impl="sj_flexsn"))))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(line.removeprefix(train_bench.RESULT_PREFIX))
    assert record["impl"] == "sj_flexsn" and "error" not in record
    assert "spikingjelly not importable" in record["unavailable"]


def _fake(impl: str, dtype: str, ms: float, gb: float, **extra: object) -> dict:
    cfg = train_bench.Config(neuron="lif", T=4, dtype=dtype, impl=impl, batch=128, steps=20, warmup=5)
    return {**train_bench.asdict(cfg), "ms": ms, "peak_mem_gb": gb, "peak_mem_bytes": int(gb * 1e9),
            "loss_first": 2.3, "compile_s": None, **extra}


def test_summary_ratios_and_targets() -> None:
    records = [
        _fake("ours", "float32", 12.0, 2.0),
        _fake("ours_compiled", "float32", 9.0, 2.2, compile_s=40.0),
        _fake("loop_compiled", "float32", 10.0, 2.0, compile_s=50.0),
        _fake("ours", "bfloat16", 9.0, 1.0),
        _fake("loop_compiled", "bfloat16", 10.0, 1.25),
        {**_fake("sj_flexsn", "float32", 0, 0), "unavailable": "spikingjelly is not installed"},
        {**_fake("ours_compiled", "bfloat16", 0, 0), "error": "timeout after 300 s: "},
    ]
    summary = train_bench.summarize(records, {"device_name": "test"})
    fp32, bf16 = summary["ratios"]
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert fp32["eager_time_vs_loop_compiled"] == 1.2 and fp32["compiled_time_vs_loop_compiled"] == 0.9
    assert fp32["compiled_peak_vs_loop_compiled"] == 1.1 and bf16["eager_peak_vs_loop_compiled"] == 0.8
    assert bf16["compiled_time_vs_loop_compiled"] is None  # that configuration failed
    assert fp32["eager_time_vs_sj_flexsn"] is None  # unavailable
    assert summary["worst"]["eager_time_vs_loop_compiled"] == 1.2
    assert summary["met"] == {
        "eager_time_vs_loop_compiled": False, "compiled_time_vs_loop_compiled": True,
        "eager_peak_vs_loop_compiled": True, "compiled_peak_vs_loop_compiled": False,
    }
    assert summary["failed"] == ["lif T=4 bfloat16 ours_compiled"]
    assert summary["unavailable"] == ["lif T=4 float32 sj_flexsn"]
    table = train_bench.format_tables([*records, summary])
    assert "| ours | 12.00 | 2.00 | 9.00 | 1.00 | — |" in table
    assert "| ours_compiled | 9.00 | 2.20 | timeout | timeout | 40.0 |" in table
    assert "| sj_flexsn | n/a | n/a | — | — | — |" in table
    assert "1.200 (not met)" in table


def test_grid_runs_lifnode_for_lif_only() -> None:
    grid = train_bench.make_grid(["lif", "alif"], [4, 8], ["float32"], train_bench.IMPLS,
                                 batch=128, steps=20, warmup=5)
    assert {c.neuron for c in grid if c.impl == "sj_lifnode"} == {"lif"}
    assert len(grid) == 2 * 5 + 2 * 4


def test_bad_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train_bench.parse_args(["--neurons", "lif,hodgkin"])
    assert exc.value.code == 2
    assert "unknown ['hodgkin']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_bench.parse_args(["--smoke", "--impls", "ours,sj_flexsn"])


def test_train_memory_finds_the_blocks_alive_at_the_peak() -> None:
    """bench/train_memory.py replays allocation events: the peak is the largest running total,
    and what is listed is what was allocated and not yet freed at that moment."""
    import train_memory

    here = str(ROOT / "flexsn_core" / "runtime" / "kinds.py")

    def event(action: str, addr: int, size: int, line: int = 1) -> dict:
        return {"action": action, "addr": addr, "size": size,
                "frames": [{"filename": "/x/torch/autograd/f.py", "line": 3, "name": "inner"},
                           {"filename": here, "line": line, "name": "run_backward"}]}

    trace = [event("alloc", 1, 100), event("alloc", 2, 50, 2), event("free_requested", 1, 100),
             event("free_completed", 1, 100), event("alloc", 3, 120, 3), event("alloc", 4, 10, 4),
             event("free_completed", 3, 120), event("alloc", 5, 60)]
    peak, blocks = train_memory.live_at_peak({"device_traces": [trace]})
    assert peak == 180  # blocks 2, 3, 4
    assert sorted(size for size, _ in blocks) == [10, 50, 120]
    assert all(site.startswith("kinds.py:") for _, site in blocks)  # torch's own frames skipped


def test_train_memory_smoke_runs_a_step_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    import train_memory

    assert train_memory.main(["--smoke", "--impl", "ours"]) == 0
    assert "no CUDA allocator" in capsys.readouterr().out
