"""``flexsn-cache verify`` / ``gc`` refuse a path that is not a store, and create nothing there.

The commands run in-process (typer's CliRunner: a subprocess per case would pay
the imports of torch each time), from ``tmp_path`` as their working folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from flexsn_client.cli import app
from flexsn_core.store import FileStore
from flexsn_service.store import DiskStore


@pytest.fixture(autouse=True)
def _no_store_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEXSN_SERVICE_STORE", raising=False)
    monkeypatch.setenv("COLUMNS", "80")  # the error line must stay one line however narrow the terminal


def _cli(cwd: Path, *args: str) -> Result:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return CliRunner().invoke(app, list(args))


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else []


def _refused(result: Result, *needles: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    assert "works on an existing store: pass --store disk:PATH" in line
    for needle in needles:
        assert needle in line, line
    assert "ok" not in result.stdout


@pytest.mark.parametrize("command", [("verify",), ("gc", "--max-bytes", "1G")])
def test_a_path_that_is_not_a_store_is_refused_and_left_alone(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "missing"
    _refused(_cli(tmp_path, *command, "--store", f"disk:{missing}"), f"no store at {missing}")
    assert not missing.exists()

    # run from another folder: the default ./flexsn-store is not made there
    _refused(_cli(tmp_path, *command), f"no store at {tmp_path / 'flexsn-store'}")
    assert not (tmp_path / "flexsn-store").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(_cli(tmp_path, *command, "--store", f"disk:{empty}"), "is not a flexsn-cache store", "db/cache.db")
    assert _tree(empty) == []

    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    (other / "cache.db").write_text("not the store's")
    before = _tree(other)
    _refused(_cli(tmp_path, *command, "--store", f"disk:{other}"), "is not a flexsn-cache store")
    assert _tree(other) == before

    mirror = tmp_path / "mirror"
    FileStore(mirror).put_blob(hashlib.sha256(b"x").hexdigest(), b"x")
    before = _tree(mirror)
    _refused(_cli(tmp_path, *command, "--store", f"disk:{mirror}"), "is a client's mirror")
    assert _tree(mirror) == before

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    _refused(_cli(tmp_path, *command, "--store", f"disk:{a_file}"), "is a file, not a store folder")


def test_a_real_store_is_verified_and_collected(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "flexsn-store")
    store.put_blob(hashlib.sha256(b"kernel").hexdigest(), b"kernel")
    result = _cli(tmp_path, "verify")  # the default store, from the folder where serve would run
    assert result.exit_code == 0 and "checked 1 blob(s)" in result.stdout and "ok" in result.stdout, result.stderr
    result = _cli(tmp_path, "gc", "--max-bytes", "1G", "--store", f"disk:{tmp_path / 'flexsn-store'}")
    assert result.exit_code == 0 and "deleted 1 blob(s)" in result.stdout, result.stderr  # an orphan blob


@pytest.mark.parametrize("args, needle", [
    (("--store", "foo:bar"), "store: store URL must look like 'disk:PATH' or 'redis://HOST:PORT/DB'"),
    (("--port", "-5"), "port:"),
])
def test_serve_with_bad_settings_says_so_in_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    """``serve --store foo:bar`` printed uvicorn's startup traceback (the store was opened only at start)."""
    result = _cli(tmp_path, "serve", *args)
    assert result.exit_code == 1, (result.output, result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: invalid settings: ") and needle in line, line
    assert _tree(tmp_path) == []
