"""Headless Chromium (Debian's ``chromium``) driven through its own command line.

Every run resolves no host but 127.0.0.1 (``--host-resolver-rules``), so a page
that needs a CDN cannot render, and Chromium's own background requests never
leave the machine. ``--log-net-log`` records every request; :func:`page_requests`
picks those a page made (its network isolation key is the page's site), so a
test can assert that a page asked for nothing but its own server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["chromium", "Page", "load", "page_requests", "png_summary", "MISSING"]

MISSING = (
    "headless browser tests need Debian's `chromium` package, and it is not installed: "
    "`make test` installs it (with the other system packages the tests need)"
)

_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--disable-dev-shm-usage", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    # lets the page's scripts run and their fetches finish before the DOM is dumped or the shot taken
    "--virtual-time-budget=15000",
)


def chromium() -> str:
    """The browser binary; AssertionError (a failing test, never a skip) if it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path is not None, MISSING
    return path


@dataclass
class Page:
    url: str
    #: the DOM after scripts ran (``--dump-dom``), or "" for a screenshot run
    dom: str
    #: URLs the page requested (main frame, scripts, styles, fetches)
    requests: list[str]
    screenshot: Path | None


def page_requests(netlog: Path, site: str) -> list[str]:
    """URLs a page of ``site`` (e.g. ``http://127.0.0.1``) asked for: the page itself (the main frame)
    and every request its document started (the initiator is the page's origin).

    Requests of Chromium's own (updates, account checks, autofill hints) have no origin as their
    initiator and are not the page's doing; they resolve nowhere anyway.
    """
    log = json.loads(netlog.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        main_frame = params.get("request_type") == "main frame" and str(
            params.get("network_isolation_key", "")).startswith(site)
        if main_frame or str(params.get("initiator", "")).startswith(site):
            urls.append(params["url"])
    return urls


def load(url: str, *, site: str = "http://127.0.0.1", screenshot: Path | None = None,
         window: tuple[int, int] = (1280, 900), timeout: float = 120.0) -> Page:
    """Open ``url`` once: its DOM after scripts ran (or a PNG screenshot), and the requests it made."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        netlog = Path(tmp) / "netlog.json"
        args = [chromium(), *_FLAGS, f"--user-data-dir={tmp}/profile", f"--log-net-log={netlog}",
                f"--window-size={window[0]},{window[1]}"]
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        done = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
        if screenshot is not None:
            assert screenshot.exists(), f"chromium wrote no screenshot:\n{done.stderr[-3000:]}"
        return Page(url, "" if screenshot else done.stdout, page_requests(netlog, site), screenshot)


# ------------------------------------------------------------------ screenshots
def png_summary(path: Path) -> tuple[tuple[int, int], dict[tuple[int, int, int], int]]:
    """The image's size and how many pixels have each colour (RGB)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return rgb.size, {colour: count for count, colour in rgb.getcolors(maxcolors=1 << 24)}
