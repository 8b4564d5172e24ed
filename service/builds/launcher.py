"""Enter a build's limits, drop privileges, then exec bubblewrap.

    python -I -S launcher.py CONFIG_JSON

The service starts this tiny program (standard library only, no site
packages: it runs in a few milliseconds) for every jail. Between its fork and
the ``exec`` of ``bwrap`` it does what must happen before any process of the
jail exists, in this order:

1. join the build's cgroups (its pid goes into each ``cgroup.procs``), so every
   process the jail ever starts is counted against the build's memory and
   process limits;
2. set the rlimits with hard == soft, so nothing in the jail can raise them;
3. when the service runs as root: make the host paths the jail needs
   reachable by the unprivileged jail uid (in a private mount namespace of
   this process only, the ``stage`` binds below), then drop to that uid with
   no supplementary groups -- so no process of the jail maps to root outside;
4. close every inherited descriptor but stdin/stdout/stderr and exec
   ``bwrap`` with an empty environment.

Why the staging: ``bwrap`` runs as the jail uid and opens its bind sources
with that uid's permissions. A Python installed under ``/root`` (pyenv) is not
reachable by uid 65534. Bind-mounting each source on a fresh directory under a
private tmpfs gives bwrap a reachable path to exactly those trees and nothing
else; the mounts live in this process's own mount namespace and vanish with it.

CONFIG_JSON keys: ``bwrap`` (absolute path), ``head`` / ``tail`` (bwrap
arguments before and after the binds), ``binds`` ([source, dest] pairs,
read-only), ``cgroup_procs`` (files to write our pid to), ``rlimits``
({name: value}, e.g. ``"NPROC": 64``), ``uid`` / ``gid`` (drop to these when
root; null: stay), ``stage`` (bool: stage the binds, needs root).
Any failure prints one line starting with ``flexsn-launcher:`` and exits 125.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
_STAGE_ROOT = "/tmp"  # exists everywhere; bwrap handles binds from below /tmp (its own base path)
EXIT_LAUNCH_FAILED = 125


class LaunchError(Exception):
    pass


def _libc_call(libc: ctypes.CDLL, name: str, *args: object) -> None:
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"{name}{args!r}: {os.strerror(err)}")


def _stage(binds: list[list[str]]) -> list[list[str]]:
    """Mirror each bind source on a reachable path in a private mount namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    _libc_call(libc, "unshare", _CLONE_NEWNS)
    # Nothing we mount here may propagate back to the host's namespace.
    _libc_call(libc, "mount", b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
    # Hold every source before the staging tmpfs covers /tmp: a source may live below /tmp.
    held = [(os.open(source, os.O_PATH), os.path.isdir(source), dest) for source, dest in binds]
    _libc_call(libc, "mount", b"tmpfs", _STAGE_ROOT.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
               b"mode=0755,size=65536")
    staged = []
    for index, (fd, is_dir, dest) in enumerate(held):
        target = f"{_STAGE_ROOT}/{index}"
        if is_dir:
            os.mkdir(target)
        else:
            with open(target, "x"):
                pass
        _libc_call(libc, "mount", f"/proc/self/fd/{fd}".encode(), target.encode(), None, _MS_BIND | _MS_REC, None)
        os.close(fd)
        staged.append([target, dest])
    return staged


def launch(config: dict) -> None:
    pid = str(os.getpid())
    for procs in config.get("cgroup_procs", []):
        with open(procs, "w") as fh:  # noqa: PTH123 - the stdlib only, on purpose
            fh.write(pid)
    for name, value in config.get("rlimits", {}).items():
        limit = getattr(resource, f"RLIMIT_{name}")
        resource.setrlimit(limit, (int(value), int(value)))
    binds = config["binds"]
    if config.get("stage"):
        binds = _stage(binds)
    uid, gid = config.get("uid"), config.get("gid")
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise LaunchError("could not drop to the jail uid")
    argv = [config["bwrap"], *config["head"]]
    for source, dest in binds:
        argv += ["--ro-bind", source, dest]
    argv += config["tail"]
    os.closerange(3, 65536)
    os.execve(config["bwrap"], argv, {})


def main() -> int:
    try:
        launch(json.loads(sys.argv[1]))
    except (LaunchError, OSError, ValueError, KeyError, IndexError) as exc:
        print(f"flexsn-launcher: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return EXIT_LAUNCH_FAILED


if __name__ == "__main__":
    sys.exit(main())
