"""Where a person waits on builds: ``warm``, ``build`` and a remote-cache miss inside ``FlexSN(...)``.

Progress goes to stderr when it is a terminal; a batch job (stderr a pipe or
a file) sees none. Tests force the terminal case with ``FLEXSN_CACHE_PROGRESS=always``
(the same switch a user has) and check the batch case with stderr captured;
nothing here depends on timing. Also: ``ls`` and ``stats`` tables once the
service holds a kernel.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import neurons
import pytest
from live_server import ROOT, Server, live_server, run_cli

import flexsn_client.cache as cache_module
import flexsn_client.provider as provider_module
from flexsn_core import FlexSN


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("progress-service")) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXSN_CACHE_DIR", str(tmp_path / "mirror"))
    monkeypatch.delenv("FLEXSN_CACHE_PROGRESS", raising=False)
    monkeypatch.setattr(provider_module, "_providers", {})
    monkeypatch.setattr(cache_module, "_pools", {})


def _flat(text: str) -> str:
    """Terminal output without its control sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_build_then_ls_and_stats_read_as_tables(server: Server) -> None:
    env = {"COLUMNS": "200"}
    built = run_cli("build", str(ROOT / "tests" / "neurons.py:lif_hard"), "--url", server.url, env=env)
    assert built.returncode == 0, built.stderr
    assert "lif_hard" in built.stdout and built.stderr == ""  # no terminal: no progress drawn
    listed = run_cli("ls", "--url", server.url, env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if "lif_hard" in line]
    assert re.search(r"cuda:80,cuda:90 │ [\d.]+ kB │ (\d+ s|just now) │ (\d+ s ago|just now)", row), row
    stats = run_cli("stats", "--url", server.url, env=env)
    assert stats.returncode == 0, stats.stderr
    text = stats.stdout
    assert re.search(r"requests\s+\d+ hits, [1-9]\d* misses, hit rate [\d.]+ %", text), text
    assert re.search(r"builds\s+1 started, 1 succeeded, 0 failed; 0 in flight", text), text
    assert re.search(r"store\s+disk, [\d.]+ kB / no limit", text), text
    assert re.search(r"│ cuda:90 +│ 1 +│ (\d+ s ago|just now)", text), text
    assert "warning" not in text  # same versions on both sides


def _model(tmp_path: Path, core: str, counts: str) -> Path:
    model = tmp_path / f"model_{core}.py"
    model.write_text(textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import neurons
        from flexsn_core import FlexSN

        def build():
            return FlexSN(neurons.{core}, {counts}, backend="remote-cache")
        """
    ))
    return model


def test_warm_draws_a_line_per_kernel_on_a_terminal_and_a_summary_in_a_batch_job(server: Server, tmp_path: Path) -> None:
    env = {"FLEXSN_CACHE_DIR": str(tmp_path / "node"), "COLUMNS": "200"}
    shown = run_cli("warm", f"{_model(tmp_path, 'lif_soft', '1, 1, 1')}:build", "--url", server.url,
                    env={**env, "FLEXSN_CACHE_PROGRESS": "always"})
    assert shown.returncode == 0, shown.stderr
    drawn = _flat(shown.stderr)
    assert re.search(r"lif_soft [0-9a-f]{8} .*building: ", drawn), drawn  # the build's stages while it runs
    assert re.search(r"lif_soft [0-9a-f]{8} .*ready \(built\)", drawn), drawn
    assert "warmed 1/1 kernel(s) (1 built by the service, 0 cached)" in drawn

    batch = run_cli("warm", f"{_model(tmp_path, 'alif', '1, 2, 1')}:build", "--url", server.url, env=env)
    assert batch.returncode == 0, batch.stderr
    (line,) = batch.stderr.strip().splitlines()  # stderr is a pipe: the summary only, no control codes
    assert line.startswith("warmed 1/1 kernel(s) (1 built by the service, 0 cached) in ") and "\x1b" not in line

    again = run_cli("warm", f"{_model(tmp_path, 'alif', '1, 2, 1')}:build", "--url", server.url, env=env)
    assert again.returncode == 0 and "(0 built by the service, 1 cached)" in again.stderr, again.stderr


def test_a_remote_build_inside_flexsn_shows_one_line_on_a_terminal_only(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEXSN_CACHE_PROGRESS", "always")  # what a terminal gets
    FlexSN(neurons.izhikevich, 1, 2, 2, backend="remote-cache", cache_url=server.url)
    drawn = _flat(capsys.readouterr().err)
    assert "FlexSN: the kernel cache is building izhikevich" in drawn, drawn
    assert re.search(r"FlexSN: the kernel cache built izhikevich [0-9a-f]{8} in \d+ s", drawn), drawn

    monkeypatch.setenv("FLEXSN_CACHE_PROGRESS", "auto")  # stderr captured, not a terminal: a batch job
    FlexSN(neurons.two_inputs, 2, 1, 2, backend="remote-cache", cache_url=server.url)
    assert capsys.readouterr().err == ""
