"""``flexsn-cache``: run the service, build kernels, inspect and maintain the store.

    flexsn-cache serve                       # embedded store in ./flexsn-store, 127.0.0.1:8000
    flexsn-cache build neurons.py:lif -i 1 -s 1 -o 1
    flexsn-cache ls | stats
    flexsn-cache gc --max-bytes 10G          # evict least recently used kernels
    flexsn-cache verify                      # re-hash every blob, check every manifest
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="flexsn-cache: a shared compile cache for FlexSN spiking-neuron kernels.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)
out = Console()

UrlOption = Annotated[str, typer.Option("--url", envvar="FLEXSN_CACHE_URL", help="the service's URL")]
TokenOption = Annotated[Optional[str], typer.Option("--token", envvar="FLEXSN_CACHE_TOKEN", help="bearer token")]
StoreOption = Annotated[
    str, typer.Option("--store", envvar="FLEXSN_SERVICE_STORE", help="the store, e.g. disk:./flexsn-store")
]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_STORE = "disk:./flexsn-store"


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default 8000)")] = None,
    store: Annotated[Optional[str], typer.Option(help="store URL (default disk:./flexsn-store)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="builds running at once")] = None,
) -> None:
    """Run the cache service (works on a fresh machine: embedded store in a local folder)."""
    import uvicorn

    from .config import Settings
    from .main import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "store": store, "workers": workers}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        raise _fail(f"invalid settings: {exc}") from None
    bind = settings.host
    if settings.tokens is None and bind not in ("127.0.0.1", "::1", "localhost"):
        console.print(
            f"[yellow]no tokens configured (FLEXSN_SERVICE_TOKENS): refusing to bind {bind}; "
            "serving 127.0.0.1 only[/yellow]"
        )
        bind = "127.0.0.1"
    console.print(f"flexsn-cache serving on http://{bind}:{settings.port} (store {settings.store}, docs at /docs)")
    uvicorn.run(create_app(settings), host=bind, port=settings.port, log_config=None, access_log=False)


def _import(where: str):  # noqa: ANN202
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


def _load_core(target: str):  # noqa: ANN202
    where, _, func = target.rpartition(":")
    if not where or not func:
        raise _fail(f"expected FILE:FUNC, got {target!r}")
    module = _import(where)
    if not hasattr(module, func):
        raise _fail(f"{where} defines no {func!r}")
    return getattr(module, func)


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
) -> None:
    """Ask the service to build a core's kernels, showing progress until they are stored."""
    from flexsn_client.api import ServiceAPI, SpecRejectedError
    from flexsn_core import FlexSNError, KernelSpec

    core = _load_core(target)
    try:
        spec = KernelSpec.from_core(core, inputs, states, outputs, num_static=static, dtype=dtype)
    except (FlexSNError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    with ServiceAPI(url, token) as api:
        try:
            code, body = api.request_kernels(spec, arch)
            if code == 202:
                with Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console,
                ) as bar:
                    task = bar.add_task("queued", total=None)

                    def show(status: dict) -> None:
                        p = status.get("progress") or {}
                        bar.update(task, description=str(p.get("stage", status["state"])),
                                   completed=p.get("done") or 0, total=p.get("total") or None)

                    api.wait_for_build(body["build_id"], on_progress=show)
                body = api.get_manifest(spec.key) or {}
        except SpecRejectedError as exc:
            raise _fail(f"the service rejected the core: {exc}") from None
        except FlexSNError as exc:
            raise _fail(str(exc)) from None
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
    constructions on this node are local hits.
    """
    import torch

    from flexsn_client import KernelCacheClient
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
    client = KernelCacheClient(url, token)
    try:
        manifests = client.prefetch(unique, targets)
    except FlexSNError as exc:
        raise _fail(str(exc)) from None
    table = Table("key", "entry", "dtype", "targets", "binaries")
    for spec, manifest in zip(unique, manifests):
        have = sorted({b["target"] for b in manifest["binaries"]})
        table.add_row(spec.key[:16], spec.entry, spec.dtype, ",".join(have), str(len(manifest["binaries"])))
    out.print(table)
    out.print(f"warmed {len(unique)} kernel(s) into {client.mirror.root}")


@app.command("ls")
def list_kernels(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    limit: Annotated[int, typer.Option(help="rows per page")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the kernels the service stores."""
    from flexsn_client.api import ServiceAPI
    from flexsn_core import FlexSNError

    rows = []
    try:
        with ServiceAPI(url, token) as api:
            cursor = None
            while True:
                page = api.list_kernels(cursor=cursor, limit=limit)
                rows.extend(page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
    except FlexSNError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("key", "entry", "dtype", "targets", "bytes")
    for row in rows:
        table.add_row(row["key"][:16], row["entry"], row["dtype"], ",".join(row["targets"]), f"{row['bytes']:,}")
    out.print(table)


@app.command()
def stats(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Print the service's hit/miss and build counters and store size (JSON)."""
    from flexsn_client.api import ServiceAPI
    from flexsn_core import FlexSNError

    try:
        with ServiceAPI(url, token) as api:
            out.print_json(json.dumps(api.stats()))
    except FlexSNError as exc:
        raise _fail(str(exc)) from None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1500``, ``10M``, ``2.5G``, ``1GiB`` -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"not a size: {text!r} (try 500M or 2G)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(number * 1024 ** " kmgt".index(unit or " "))


def _open(store_url: str):  # noqa: ANN202
    from .store import open_store

    try:
        return open_store(store_url)
    except (ValueError, NotImplementedError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def gc(
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="keep at most this much, e.g. 10G")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Evict least recently used kernels (and their unshared blobs) until the store fits."""
    limit = parse_size(max_bytes)
    report = _open(store).gc(limit)
    out.print(
        f"{report.bytes_before:,} -> {report.bytes_after:,} bytes; evicted {len(report.evicted_manifests)} kernel(s), "
        f"deleted {report.deleted_blobs} blob(s)"
    )
    for key in report.evicted_manifests:
        out.print(f"  evicted {key}")


@app.command()
def verify(
    store: StoreOption = DEFAULT_STORE,
    repair: Annotated[bool, typer.Option(help="delete corrupt blobs and broken manifests")] = False,
) -> None:
    """Re-hash every blob and check that no manifest points at a missing blob."""
    report = _open(store).verify(repair=repair)
    out.print(f"checked {report.blobs_checked} blob(s), {report.manifests_checked} manifest(s)")
    for sha in report.corrupt_blobs:
        out.print(f"[red]corrupt blob[/red] {sha}")
    for key in report.unreadable_manifests:
        out.print(f"[red]unreadable manifest[/red] {key}")
    for key, shas in report.missing_blobs.items():
        out.print(f"[red]manifest {key} misses {len(shas)} blob(s)[/red]")
    for item in report.repaired:
        out.print(f"repaired: removed {item}")
    if not report.ok:
        raise typer.Exit(0 if repair else 1)
    out.print("[green]ok[/green]")


def main() -> None:  # the console entry point
    app()


if __name__ == "__main__":
    main()
