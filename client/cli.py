"""``flexsn-cache``: the one command line, for a training node and for the service host.

    flexsn-cache --version
    flexsn-cache warm my_project.models:build_model      # a job's start-up step
    flexsn-cache build neurons.py:lif -i 1 -s 1 -o 1
    flexsn-cache ls | stats
    flexsn-cache serve | gc | verify                    # the service host (needs flexsn-cache[service])

The client commands (``warm``, ``build``, ``ls``, ``stats``) live here and need
only the core install (``pip install flexsn-cache``). ``serve``, ``gc`` and
``verify`` live in :mod:`flexsn_service.cli`, registered here, and say which
extra to install when it is missing. Importing this module imports neither
torch nor FastAPI: ``--help``, ``--version``, ``ls`` and ``stats`` never load
them; ``warm`` and ``build`` import torch when they run.

Every client command first checks that the URL is a flexsn-cache service
(``GET /v1/version``); every failure is one line on stderr and exit status 1
(:func:`_service`). Tables and human units: :mod:`flexsn_client.report`;
progress while builds run: :mod:`flexsn_client.progress`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.text import Text

from flexsn_service import cli as service_cli

if TYPE_CHECKING:
    from flexsn_client.api import ServiceAPI

__all__ = ["app", "main", "version_text"]

app = typer.Typer(
    help="flexsn-cache: a shared compile cache for FlexSN spiking-neuron kernels.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)
out = Console()

UrlOption = Annotated[str, typer.Option("--url", envvar="FLEXSN_CACHE_URL", help="the service's URL")]
TokenOption = Annotated[Optional[str], typer.Option("--token", envvar="FLEXSN_CACHE_TOKEN", help="bearer token")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", envvar="FLEXSN_CACHE_TIMEOUT", min=0.1, help="seconds to wait for each answer")
]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0


def _fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr (never wrapped, never a traceback), and the exit status to raise."""
    console.print(Text.assemble(("error:", "red"), " ", " ".join(str(message).split())), soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _service(url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[ServiceAPI]:
    """A connection to a flexsn-cache service, checked first (``GET /v1/version``); errors become one line.

    A person waits: one retry, not three, and nothing is remembered between
    calls (``unavailable_s=0``). The check makes a wrong path, another server
    or a proxy's page an error up front instead of a confusing answer later.
    """
    import httpx

    from flexsn_client.api import ServiceAPI
    from flexsn_core.errors import FlexSNError

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _fail(f"--url / FLEXSN_CACHE_URL is not a URL: {url!r} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _fail(f"--url / FLEXSN_CACHE_URL must be http://HOST:PORT or https://..., got {url!r}")
    try:
        with ServiceAPI(url, token, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)), retries=1,
                        unavailable_s=0.0) as api:
            api.version()
            yield api
    except FlexSNError as exc:
        raise _fail(str(exc)) from None


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    """The package, codegen, Triton and torch versions (read from metadata: imports neither)."""
    from flexsn_core._version import CODEGEN_VERSION

    return "\n".join([
        f"flexsn-cache {_dist_version('flexsn-cache')}",
        f"codegen {CODEGEN_VERSION}",
        f"triton {_dist_version('triton')}",
        f"torch {_dist_version('torch')}",
    ])


def _show_version(value: bool) -> None:
    if value:
        out.print(version_text(), highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the versions and exit")
    ] = False,
) -> None:
    """flexsn-cache: a shared compile cache for FlexSN spiking-neuron kernels."""


# ------------------------------------------------------------ loading user code
def _import(where: str) -> ModuleType:
    """A module from a file path (``models/snn.py``) or a dotted name (``models.snn``)."""
    path = Path(where)
    if where.endswith(".py") or path.is_file():
        if not path.is_file():
            raise _fail(f"no such file: {path}")
        spec = importlib.util.spec_from_file_location(re.sub(r"\W", "_", path.stem), path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent.resolve()))
        sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)
        return module
    sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise _fail(f"cannot import {where!r}: {exc}") from None


def _load_core(target: str) -> Any:
    where, _, func = target.rpartition(":")
    if not where or not func:
        raise _fail(f"expected FILE:FUNC, got {target!r}")
    module = _import(where)
    if not hasattr(module, func):
        raise _fail(f"{where} defines no {func!r}")
    return getattr(module, func)


# ------------------------------------------------------------ client commands
@app.command()
def build(
    target: Annotated[str, typer.Argument(help="FILE:FUNC of the core")],
    inputs: Annotated[int, typer.Option("--inputs", "-i")] = 1,
    states: Annotated[int, typer.Option("--states", "-s")] = 1,
    outputs: Annotated[int, typer.Option("--outputs", "-o")] = 1,
    static: Annotated[int, typer.Option("--static", help="number of static inputs")] = 0,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16")] = "float32",
    arch: Annotated[Optional[list[str]], typer.Option("--target", help="e.g. cuda:90 (repeatable)")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Ask the service to build a core's kernels, showing progress until they are stored."""
    from flexsn_client.api import SpecRejectedError
    from flexsn_client.progress import build_line, progress_console
    from flexsn_core import FlexSNError, KernelSpec

    core = _load_core(target)
    try:
        spec = KernelSpec.from_core(core, inputs, states, outputs, num_static=static, dtype=dtype)
    except (FlexSNError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    with _service(url, token, timeout) as api:
        try:
            code, body = api.request_kernels(spec, arch)
            if code == 202:
                with build_line(progress_console(), f"{spec.entry} {spec.key[:8]}") as show:
                    api.wait_for_build(body["build_id"], on_progress=show)
                body = api.get_manifest(spec.key) or {}
        except SpecRejectedError as exc:
            raise _fail(f"the service rejected the core: {exc}") from None
    targets = sorted({b["target"] for b in body.get("binaries", [])})
    out.print(f"{spec.key}  {spec.entry}  {spec.dtype}  targets: {', '.join(targets)}  "
              f"({len(body.get('binaries', []))} binaries{', cached' if code == 200 else ''})")


@app.command()
def warm(
    target: Annotated[str, typer.Argument(help="FILE.py or package.module, optionally :FACTORY (called with no arguments)")],
    arch: Annotated[Optional[list[str]], typer.Option("--target", help="e.g. cuda:90 (default: this node's GPU)")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Prefetch every FlexSN kernel a model builds into the local mirror (a job's start-up step).

    Imports the module (and calls FACTORY if given) while recording each
    FlexSN's spec instead of building it, then fetches them all from the
    service, which builds what it lacks. Later FlexSN(..., backend="remote-cache")
    constructions on this node are local hits. Progress (one line per kernel)
    goes to stderr when it is a terminal (FLEXSN_CACHE_PROGRESS=always|never
    overrides); a summary line always ends the run.
    """
    import torch
    from rich.table import Table

    from flexsn_client.cache import KernelCacheClient
    from flexsn_client.progress import WarmProgress, progress_console
    from flexsn_core import FlexSNError
    from flexsn_core.local import local_target
    from flexsn_core.module import collect_specs

    where, _, factory = target.rpartition(":") if ":" in target else (target, "", "")
    with collect_specs() as specs:
        module = _import(where)
        if factory:
            if not hasattr(module, factory):
                raise _fail(f"{where} defines no {factory!r}")
            getattr(module, factory)()
    unique = list({s.key: s for s in specs}.values())
    if not unique:
        raise _fail(f"{target} built no FlexSN module with a kernel backend; nothing to warm")
    targets = list(arch or ([local_target(torch.device("cuda"))] if torch.cuda.is_available() else []))
    with _service(url, token):  # a wrong URL or another server: one line before any build is asked for
        pass
    client = KernelCacheClient(url, token)
    try:
        with WarmProgress(progress_console(), console, len(unique)) as shown:
            manifests = client.prefetch(unique, targets, progress=shown.note)
    except FlexSNError as exc:
        raise _fail(str(exc)) from None
    table = Table("key", "entry", "dtype", "targets", "binaries")
    for spec, manifest in zip(unique, manifests):
        have = sorted({b["target"] for b in manifest["binaries"]})
        table.add_row(spec.key[:16], spec.entry, spec.dtype, ",".join(have), str(len(manifest["binaries"])))
    out.print(table)
    console.print(Text(shown.summary_line(client.mirror.root)), soft_wrap=True)


@app.command("ls")
def list_kernels(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    limit: Annotated[int, typer.Option(help="rows per page", min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print the service's rows as JSON")] = False,
) -> None:
    """List the kernels the service stores: size, age and last use, most recently used first."""
    from flexsn_client.report import kernels_table

    rows = []
    with _service(url, token, timeout) as api:
        cursor = None
        while True:
            page = api.list_kernels(cursor=cursor, limit=limit)
            rows.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    if as_json:
        out.print_json(json.dumps(rows))
        return
    out.print(kernels_table(rows))


@app.command()
def stats(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: Annotated[bool, typer.Option("--json", help="print the service's JSON (GET /v1/stats)")] = False,
) -> None:
    """Hits, misses and hit rate, builds, kernels, store size and limit, versions (warns on a mismatch)."""
    from flexsn_client.report import local_versions, stats_view

    with _service(url, token, timeout) as api:
        body = api.stats()
    if as_json:
        out.print_json(json.dumps(body))
        return
    out.print(stats_view(body, local_versions()))


# The service host's commands (serve, gc, verify): defined with the service, listed here.
service_cli.register(app)


def main() -> None:
    """The ``flexsn-cache`` console entry point."""
    app()


if __name__ == "__main__":
    main()
