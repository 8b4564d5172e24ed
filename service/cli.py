"""The service host's commands: ``flexsn-cache serve``, ``gc``, ``verify``.

    flexsn-cache serve                       # embedded store in ./flexsn-store, 127.0.0.1:8000
    flexsn-cache gc --max-bytes 10G          # evict least recently used kernels
    flexsn-cache verify                      # re-hash every blob, check every manifest

They need the ``[service]`` extra (FastAPI, uvicorn, diskcache,
prometheus-client); without it each says so in one line and exits with
status 2. The ``flexsn-cache`` entry point (:mod:`flexsn_client.cli`) lists
them beside the client commands; ``python -m flexsn_service.cli`` runs them
alone. This module imports only typer and rich at import time.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from .store import Store

__all__ = ["app", "main", "register", "parse_size", "require_extra", "SERVICE_EXTRA"]

console = Console(stderr=True)
out = Console()

StoreOption = Annotated[
    str, typer.Option("--store", envvar="FLEXSN_SERVICE_STORE", help="the store, e.g. disk:./flexsn-store")
]
DEFAULT_STORE = "disk:./flexsn-store"

#: what each service command imports beyond the core install, and the extra that brings it
SERVICE_EXTRA = "flexsn-cache[service]"
_NEEDS = {
    "serve": ("fastapi", "uvicorn", "starlette", "diskcache", "prometheus_client"),
    "gc": ("diskcache",),
    "verify": ("diskcache",),
}


def _fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr (never wrapped), and the exit status to raise."""
    console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    return typer.Exit(code)


def require_extra(command: str, modules: Sequence[str] | None = None) -> None:
    """Exit with status 2 and one line saying what to install if a module ``command`` needs is missing."""
    missing = []
    for name in modules if modules is not None else _NEEDS[command]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        console.print(
            f"error: `flexsn-cache {command}` needs the service extra: pip install '{SERVICE_EXTRA}' "
            f"(missing: {', '.join(missing)})",
            highlight=False, markup=False, soft_wrap=True,
        )
        raise typer.Exit(2)


def serve(
    host: Annotated[Optional[str], typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default 8000)")] = None,
    store: Annotated[Optional[str], typer.Option(help="store URL (default disk:./flexsn-store)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="builds running at once")] = None,
    http_workers: Annotated[Optional[int], typer.Option(
        "--http-workers",
        help="uvicorn worker processes (default 2, 1 on a 1-CPU host; FLEXSN_SERVICE_HTTP_WORKERS)")] = None,
) -> None:
    """Run the cache service (works on a fresh machine: embedded store in a local folder)."""
    require_extra("serve")
    import uvicorn

    from .config import Settings
    from .main import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "store": store, "workers": workers,
                                   "http_workers": http_workers}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        raise _fail(f"invalid settings: {_one_line(exc)}") from None
    bind = settings.host
    if settings.tokens is None and bind not in ("127.0.0.1", "::1", "localhost"):
        console.print(
            f"[yellow]no tokens configured (FLEXSN_SERVICE_TOKENS): refusing to bind {bind}; "
            "serving 127.0.0.1 only[/yellow]"
        )
        bind = "127.0.0.1"
    from .serving import http_protocol, loop_name

    http_workers = settings.http_workers
    console.print(f"flexsn-cache serving on http://{bind}:{settings.port} (store {settings.store}, "
                  f"{http_workers} HTTP worker(s), docs at /docs)")
    # No access log from uvicorn (ours is JSON, with request ids); TCP_NODELAY on every connection
    # and httptools/uvloop when installed (serving.py says why).
    server = {"host": bind, "port": settings.port, "log_config": None, "access_log": False,
              "http": http_protocol(), "loop": loop_name()}
    if http_workers == 1:
        uvicorn.run(create_app(settings), **server)
        return
    _serve_workers(uvicorn, settings, overrides, server)


def _serve_workers(uvicorn: Any, settings: Any, overrides: dict[str, Any], server: dict[str, Any]) -> None:
    """Several worker processes. uvicorn spawns each and imports the app there, so the settings travel
    as environment variables. Each worker runs its own builds: the store's build leases keep one build
    per spec, the build slots bound them all together, and build status is shared through the store
    (builds/shared_records.py). Counters go to prometheus_client's multiprocess files in a fresh
    folder (metrics.py), removed when the workers are gone."""
    import os

    from .builds.cgroup import prepare_for_workers
    from .builds.workdir import create_work_dir, remove_work_dir
    from .metrics import MULTIPROC_ENV

    for name, value in {**overrides, "http_workers": settings.http_workers}.items():
        os.environ[f"FLEXSN_SERVICE_{name.upper()}"] = str(value)
    # A fresh folder, set before the workers start (prometheus_client reads it when imported), never
    # one inherited: counts left there by an earlier run would be added in. It is a work folder
    # (workdir.py) below the service's own, so it is locked while serve runs and removed by the next
    # serve if this one is killed.
    folder = create_work_dir(settings.work_root / "metrics", subdirs=())
    os.environ[MULTIPROC_ENV] = str(folder)
    if settings.jail_cgroups != "off":
        note = prepare_for_workers()  # cgroup v2: all workers in one leaf, so each can have build cgroups
        if note:
            console.print(note, highlight=False, markup=False, soft_wrap=True)
    try:
        uvicorn.run("flexsn_service.main:create_app", factory=True, workers=settings.http_workers, **server)
    finally:
        remove_work_dir(folder)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1500``, ``10M``, ``2.5G``, ``1GiB`` -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"not a size: {text!r} (try 500M or 2G)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(number * 1024 ** " kmgt".index(unit or " "))


def _open(store_url: str) -> Store:
    from .store import open_store

    try:
        return open_store(store_url)
    except (ValueError, NotImplementedError) as exc:
        raise _fail(str(exc)) from None


def _open_existing(store_url: str, command: str) -> Store:
    """The store ``gc``/``verify`` maintain: refused unless it exists (opening a folder would create one).

    Run from the wrong folder, the default ``disk:./flexsn-store`` used to become
    a fresh, empty store that verified "ok".
    """
    import sqlite3

    from .store import DiskStore, StoreError

    scheme, _, path = store_url.partition(":")
    if scheme == "disk" and path:
        problem = DiskStore.why_not_a_store(path)
        if problem:
            raise _fail(
                f"{problem}; `flexsn-cache {command}` works on an existing store: pass --store disk:PATH "
                "(or FLEXSN_SERVICE_STORE) as `serve` was given, or run it where `serve` runs"
            )
    try:
        return _open(store_url)
    except (StoreError, sqlite3.DatabaseError, OSError) as exc:
        raise _fail(f"cannot open the store {store_url}: {type(exc).__name__}: {exc}") from None


def gc(
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="keep at most this much, e.g. 10G")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Evict least recently used kernels (and their unshared blobs) until the store fits."""
    require_extra("gc")
    limit = parse_size(max_bytes)
    report = _open_existing(store, "gc").gc(limit)
    out.print(
        f"{report.bytes_before:,} -> {report.bytes_after:,} bytes; evicted {len(report.evicted_manifests)} kernel(s), "
        f"deleted {report.deleted_blobs} blob(s)"
    )
    for key in report.evicted_manifests:
        out.print(f"  evicted {key}")


def verify(
    store: StoreOption = DEFAULT_STORE,
    repair: Annotated[bool, typer.Option(help="delete corrupt blobs and broken manifests")] = False,
) -> None:
    """Re-hash every blob and check that no manifest points at a missing blob."""
    require_extra("verify")
    report = _open_existing(store, "verify").verify(repair=repair)
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


def register(target: typer.Typer) -> None:
    """Add ``serve``, ``gc`` and ``verify`` to a typer app (the ``flexsn-cache`` entry point's)."""
    for command in (serve, gc, verify):
        target.command(rich_help_panel=r"Service host (needs flexsn-cache\[service])")(command)


app = typer.Typer(help="flexsn-cache service commands.", no_args_is_help=True, pretty_exceptions_show_locals=False)
register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()


def _one_line(exc: ValueError) -> str:
    """A settings error as one line: pydantic's multi-line report reduced to "field: message"."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'settings'}: {str(e.get('msg', '')).removeprefix('Value error, ')}"
        for e in errors()
    )
