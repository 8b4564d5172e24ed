"""What ``flexsn-cache stats`` and ``ls`` print for a person: rich tables, human units, version checks.

Imports neither torch nor Triton (``ls`` and ``stats`` stay fast): this
client's versions are read from package metadata.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.filesize import decimal
from rich.table import Table
from rich.text import Text

__all__ = ["ago", "human_bytes", "local_versions", "version_mismatches", "stats_view", "kernels_table"]

#: the versions a kernel key hashes (flexsn_core.spec.KernelSpec.key): another one means other keys
KEY_VERSIONS = ("codegen", "triton", "torch")


def ago(epoch: float | None, now: float | None = None) -> str:
    """``epoch`` (seconds) as a person reads it: ``just now``, ``42 s ago``, ``3 h ago``, ``2 d ago``."""
    if not epoch:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now" if seconds < 5 else f"{int(seconds)} s ago"


def human_bytes(size: int | None) -> str:
    return "no limit" if size is None else decimal(size)


def _release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the key hashes torch's release without the build tag."""
    return version.split("+", 1)[0]


def local_versions() -> dict[str, str]:
    """This client's package, codegen, Triton, torch and Python versions (metadata: no import of torch)."""
    from flexsn_core._version import CODEGEN_VERSION

    found = {"codegen": str(CODEGEN_VERSION), "python": platform.python_version()}
    for key, name in (("package", "flexsn-cache"), ("triton", "triton"), ("torch", "torch")):
        try:
            found[key] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[key] = "not installed"
    return found


def version_mismatches(server: dict[str, Any], local: dict[str, str]) -> list[str]:
    """The key versions that differ between the service and this client (their keys will not match)."""
    return [name for name in KEY_VERSIONS
            if _release(str(server.get(name, "?"))) != _release(local.get(name, "?"))]


def _rate(stats: dict[str, Any]) -> str:
    rate = stats.get("hit_rate")
    return "–" if rate is None else f"{100 * rate:.1f} %"


def stats_view(stats: dict[str, Any], local: dict[str, str], now: float | None = None) -> RenderableType:
    """``GET /v1/stats`` as three tables: counters, kernels per target, versions (server against client)."""
    counters = Table.grid(padding=(0, 2))
    counters.add_column(style="bold")
    counters.add_column()
    limit = stats.get("max_bytes")
    used = f"{human_bytes(stats['bytes'])} / {human_bytes(limit)}"
    if limit:
        used += f" ({100 * stats['bytes'] / limit:.0f} %)"
    started = stats.get("started")
    rows = [
        ("requests", f"{stats['hits']} hits, {stats['misses']} misses, hit rate {_rate(stats)}"),
        ("builds", f"{stats.get('builds_started', 0)} started, {stats.get('builds_succeeded', 0)} succeeded, "
                   f"{stats.get('builds_failed', 0)} failed; {stats.get('builds_in_flight', 0)} in flight, "
                   f"{stats.get('builds_failed_last_hour', 0)} failed in the last hour"),
        ("kernels", str(stats["kernels"])),
        ("store", f"{stats.get('store', '?')}, {used}"),
        ("counting since", f"{ago(started, now)}" if started else "?"),
    ]
    for name, value in rows:
        counters.add_row(name, value)

    targets = Table("target", "kernels", "last use", title="kernels per target", title_justify="left")
    for target, entry in sorted((stats.get("by_target") or {}).items()):
        targets.add_row(target, str(entry.get("kernels", 0)), ago(entry.get("last_use"), now))
    if not stats.get("by_target"):
        targets.add_row("(none)", "0", "–")
    parts: list[RenderableType] = [counters, Text(), targets]
    if stats.get("by_target_complete") is False:
        parts.append(Text("(a partial census: the store holds more kernels than one census reads)", style="dim"))

    server_versions = stats.get("versions") or {}
    mismatched = version_mismatches(server_versions, local)
    versions = Table("", "service", "this client", title="versions", title_justify="left")
    for name in ("package", "codegen", "triton", "torch", "python"):
        mark = " [red]≠[/red]" if name in mismatched else ""
        versions.add_row(name, str(server_versions.get(name, "?")), local.get(name, "") + mark)
    parts += [Text(), versions]
    if mismatched:
        parts.append(Text(
            f"warning: the service's {', '.join(mismatched)} version differs from this client's: kernel keys "
            "hash these versions, so this client's keys will not match the service's kernels (every request "
            "is a miss, and FlexSN builds locally)", style="yellow"))
    return Group(*parts)


def kernels_table(rows: list[dict[str, Any]], now: float | None = None) -> Table:
    """``ls``: one row per stored kernel, most recently used first."""
    table = Table("key", "entry", "dtype", "targets", "size", "age", "last use")
    for row in sorted(rows, key=lambda r: r.get("last_access") or 0.0, reverse=True):
        table.add_row(row["key"][:16], row["entry"], row["dtype"], ",".join(row["targets"]),
                      decimal(row["bytes"]), ago(row.get("created"), now).removesuffix(" ago"),
                      ago(row.get("last_access"), now))
    return table
