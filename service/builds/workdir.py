"""The service's own work folder, one per replica (process): ``<root>/<host>-<pid>-<random>``.

It holds the compile step's output folders, HOME/TMPDIR and Triton's cache
of the (trusted) compile and tuner processes -- never anything of the jail,
whose scratch is a tmpfs inside it. Several replicas may share a store
folder, so start-up removes only folders of processes on this host that are
gone, and each replica removes its own at shutdown.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from pathlib import Path

__all__ = ["create_work_dir", "remove_work_dir"]

SUBDIRS = ("builds", "home", "tmp", "cache", "triton")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_work_dir(root: Path) -> Path:
    """A fresh folder for this process below ``root``, after removing those of dead processes here."""
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    pattern = re.compile(rf"^{re.escape(host)}-(\d+)-[0-9a-f]{{8}}$")
    for entry in root.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    work = root / f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
    for sub in SUBDIRS:
        (work / sub).mkdir(parents=True)
    return work


def remove_work_dir(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
