"""The CLI by role: a training node's core install runs the client commands; serve/gc/verify say what
to install; --help and --version import no torch.

A fresh venv with ``pip install .`` costs minutes (torch), so the "core install" is simulated: the
CLI runs in a subprocess whose ``sys.meta_path`` refuses the [service] extra's packages (a
``sitecustomize`` on PYTHONPATH), and a static check proves pyproject's base dependencies cover every
import the core and client make.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from live_server import ROOT, Server, live_server
from packaging.requirements import Requirement

#: the [service] extra's packages: absent from a training node
SERVICE_ONLY = ("fastapi", "uvicorn", "starlette", "diskcache", "prometheus_client")

_SITECUSTOMIZE = textwrap.dedent(
    f"""
    # Simulates the core install (no [service] extra) and records what a run imported.
    import atexit, os, sys

    BLOCKED = {SERVICE_ONLY!r}

    class _CoreInstallOnly:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (not in the core install)", name=name)
            return None

    sys.meta_path.insert(0, _CoreInstallOnly())

    def _record():
        with open(os.environ["FLEXSN_TEST_MODULES"], "w") as out:
            out.write("\\n".join(sorted(sys.modules)))

    atexit.register(_record)
    """
)

#: runs the installed ``flexsn-cache`` console entry point (what pip wrote into the venv's bin/)
_ENTRY_POINT = (
    "import sys; from importlib.metadata import entry_points; "
    "(ep,) = entry_points(group='console_scripts', name='flexsn-cache'); "
    "sys.argv[0] = 'flexsn-cache'; sys.exit(ep.load()())"
)


@pytest.fixture(scope="module")
def core_install(tmp_path_factory) -> Path:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("core-install")
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("cli-service")) as s:
        yield s


def _run(core_install: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``flexsn-cache ARGS`` on a simulated core install: the result and the modules it imported."""
    modules = core_install / f"modules-{os.getpid()}-{len(list(core_install.iterdir()))}.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(core_install), str(ROOT)]),
           "FLEXSN_TEST_MODULES": str(modules), "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("FLEXSN_CACHE_URL", None)
    result = subprocess.run([sys.executable, "-c", _ENTRY_POINT, *args], capture_output=True, text=True,
                            env=env, timeout=300, cwd=core_install)
    return result, set(modules.read_text().split()) if modules.exists() else set()


def _tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_version_and_help_import_no_torch(core_install: Path) -> None:
    result, modules = _run(core_install, "--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == f"flexsn-cache {importlib.metadata.version('flexsn-cache')}"
    assert re.fullmatch(r"codegen \S+", lines[1])
    assert lines[2:4] == [f"triton {importlib.metadata.version('triton')}", f"torch {importlib.metadata.version('torch')}"]
    assert modules and not {"torch", "triton", "numpy", "fastapi"} & _tops(modules), sorted(_tops(modules))
    result, modules = _run(core_install, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("warm", "build", "ls", "stats", "serve", "gc", "verify"):
        assert re.search(rf"│ {command}\s", result.stdout), command
    assert "torch" not in _tops(modules)


def test_the_core_install_runs_the_client_commands(core_install: Path, server: Server) -> None:
    result, modules = _run(core_install, "warm", "--help")
    assert result.returncode == 0 and "start-up step" in result.stdout, result.stderr
    assert "torch" not in _tops(modules)
    result, modules = _run(core_install, "stats", "--json", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert {"hits", "misses", "kernels", "bytes"} <= set(re.findall(r'"(\w+)":', result.stdout))
    assert not {"torch", *SERVICE_ONLY} & _tops(modules), sorted(_tops(modules))
    result, modules = _run(core_install, "stats", "--url", server.url)
    assert result.returncode == 0 and "hit rate" in result.stdout, result.stderr
    assert not {"torch", *SERVICE_ONLY} & _tops(modules), sorted(_tops(modules))
    result, _ = _run(core_install, "ls", "--json", "--url", server.url)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(("args", "missing"), [(("serve",), "fastapi"), (("gc", "--max-bytes", "1G"), "diskcache"),
                                               (("verify",), "diskcache")])
def test_service_commands_say_which_extra_to_install(core_install: Path, args: tuple[str, ...], missing: str) -> None:
    result, _ = _run(core_install, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: `flexsn-cache {args[0]}` needs the service extra: "
                           "pip install 'flexsn-cache[service]'") and missing in line
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ base dependencies
def _requirement_names(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    names = set()
    for text in requirements:
        req = Requirement(text)
        env = [{"extra": e} for e in extras or ("",)]
        if req.marker is None or any(req.marker.evaluate(e) for e in env):
            names.add(_normalize(req.name))
    return names


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str]) -> set[str]:
    """Every distribution the named ones need, transitively (as installed here)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_requirement_names(importlib.metadata.requires(name) or []))
        except importlib.metadata.PackageNotFoundError:
            pass  # a platform-specific requirement not installed here
    return seen


def _imported_top_levels(path: Path, *, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    tops = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_base_dependencies_cover_every_import_of_the_core_and_client() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _requirement_names(project["dependencies"])
    allowed = _closure(base)
    first_party = {"flexsn_core", "flexsn_client", "flexsn_service"}
    sources = [*(ROOT / "flexsn_core").rglob("*.py"), *(ROOT / "client").rglob("*.py")]
    tops = set().union(*(_imported_top_levels(p) for p in sources))
    # the service half of the CLI is imported by the entry point: its module level must be core-only too
    for light in ("service/cli.py", "service/__init__.py"):
        tops |= _imported_top_levels(ROOT / light, module_level_only=True)
    distributions = importlib.metadata.packages_distributions()
    uncovered = {}
    for top in sorted(tops - first_party - set(sys.stdlib_module_names)):
        dists = {_normalize(d) for d in distributions.get(top, [])}
        if not dists & allowed:
            uncovered[top] = sorted(dists) or ["(not installed)"]
    assert not uncovered, f"imports whose distribution is not a base dependency (or one of theirs): {uncovered}"
    assert not set(SERVICE_ONLY) & tops
