"""The service's own work folder, one per replica (process): ``<root>/<host>-<pid>-<random>``.

It holds the compile step's output folders, HOME/TMPDIR and Triton's cache
of the (trusted) compile and tuner processes -- never anything of the jail,
whose scratch is a tmpfs inside it. Several replicas may share a store folder
(or one host may run several replicas in containers whose pids and host names
repeat), so liveness is a lock, not a pid: each replica holds an ``fcntl``
lock on ``<its folder>/.owner`` for its whole life (the kernel drops it when the
process dies, however it dies). Start-up removes only folders whose lock it can
take -- their owner is gone -- and each replica removes its own at shutdown.
A folder is created under a hidden name and renamed once locked, so no replica
ever sees another's folder unlocked.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

__all__ = ["create_work_dir", "remove_work_dir"]

SUBDIRS = ("builds", "home", "tmp", "cache", "triton")
_NAME = re.compile(r"^[A-Za-z0-9._-]+-(\d+)-[0-9a-f]{8}$")
_OWNER = ".owner"

#: this process's work folders -> the descriptor holding their lock
_held: dict[Path, int] = {}


def _owner_gone(folder: Path) -> bool:
    """True if ``folder``'s owner lock can be taken (then its process is gone)."""
    try:
        fd = os.open(folder / _OWNER, os.O_RDWR)
    except FileNotFoundError:
        return False  # not ours to judge (a folder of an older version, or not a work folder)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def create_work_dir(root: Path, subdirs: tuple[str, ...] = SUBDIRS) -> Path:
    """A fresh folder for this process below ``root``, after removing those of replicas that are gone."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if _NAME.match(entry.name) and entry not in _held and _owner_gone(entry):
            shutil.rmtree(entry, ignore_errors=True)
    name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    staging = root / f".{name}.creating"
    staging.mkdir()
    fd = os.open(staging / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for sub in subdirs:
        (staging / sub).mkdir()
    work = root / name
    staging.rename(work)  # visible only once locked
    _held[work] = fd
    return work


def remove_work_dir(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    fd = _held.pop(work, None)
    if fd is not None:
        os.close(fd)
