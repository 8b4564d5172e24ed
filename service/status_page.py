"""The status page at ``/``: server-rendered HTML, no JavaScript, no CDN.

Rendered with Jinja2 with autoescaping on: entry names come from user cores
and build error types from the jail's output, so nothing reaches the page
unescaped. The response also carries a Content-Security-Policy that allows no
script and no remote resource at all (inline styles and ``data:`` images only),
so a mistake in escaping still could not run code or phone home.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .metrics import MinuteCount
from .overview import Overview

__all__ = ["render_status_page", "CONTENT_SECURITY_POLICY", "MAX_KERNEL_ROWS", "human_bytes", "human_age"]

#: Kernel rows shown (most recently used first); the rest is counted ("and N more").
MAX_KERNEL_ROWS = 50
#: Failed builds shown.
MAX_FAILURE_ROWS = 20
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every {{ }} is HTML-escaped, whatever the template's name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bytes"] = human_bytes
    return env


def human_bytes(n: int | None) -> str:
    if n is None:
        return "none"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(then: float | None, now: float) -> str:
    if not then:
        return "never"
    seconds = max(0.0, now - then)
    for limit, size, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h")):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


@dataclass(frozen=True)
class _Bar:
    x: float
    width: float
    hits_y: float
    hits_h: float
    misses_y: float
    misses_h: float
    title: str


def _chart(history: list[MinuteCount], *, width: int = 600, height: int = 120) -> dict[str, Any]:
    """Geometry of a stacked bar chart (hits below, misses on top), one bar per minute."""
    peak = max((m.hits + m.misses for m in history), default=0)
    scale = height / peak if peak else 0.0
    step = width / max(len(history), 1)
    bars = []
    for i, m in enumerate(history):
        hits_h, misses_h = m.hits * scale, m.misses * scale
        label = time.strftime("%H:%M", time.gmtime(m.minute))
        bars.append(_Bar(
            x=round(i * step + 1, 2), width=round(max(step - 2, 1), 2),
            hits_y=round(height - hits_h, 2), hits_h=round(hits_h, 2),
            misses_y=round(height - hits_h - misses_h, 2), misses_h=round(misses_h, 2),
            title=f"{label} UTC: {m.hits} hits, {m.misses} misses",
        ))
    return {"width": width, "height": height, "bars": bars, "peak": peak, "minutes": len(history),
            "hits": sum(m.hits for m in history), "misses": sum(m.misses for m in history)}


def render_status_page(overview: Overview, *, details: bool, auth: str, note: str | None) -> str:
    """The page. ``details``: show kernel names and build details (the read scope, or no tokens configured).

    ``auth``: ``tokens`` or ``localhost-only``; ``note``: a line about access (e.g. a rejected token).
    """
    now = time.time()
    census = overview.census
    rate = overview.hit_rate
    limit = overview.max_bytes
    builds = overview.builds
    context = {
        "o": overview,
        "now": now,
        "now_text": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
        "age": lambda t: human_age(t, now),
        "hit_rate": "–" if rate is None else f"{rate:.1%}",
        "used_fraction": None if not limit else min(overview.bytes / limit, 1.0),
        "chart": _chart(overview.history),
        "details": details,
        "auth": auth,
        "note": note,
        "in_flight": builds.in_flight[:MAX_FAILURE_ROWS],
        "failures": builds.recent_failures[:MAX_FAILURE_ROWS],
        "kernels": census.kernels[:MAX_KERNEL_ROWS],
        # counted from the store's size, so a census cut short (a huge store) still tells the truth
        "more_kernels": max(overview.kernels - min(len(census.kernels), MAX_KERNEL_ROWS), 0),
        "by_target": census.by_target,
        "census_complete": census.complete,
    }
    return _environment().get_template("status.html").render(context)
