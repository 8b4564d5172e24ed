"""Per-build cgroups: one memory bound and one process bound for all of a jail's processes.

Rlimits bound one process at a time (a build that forks ten children gets ten
address-space budgets). A cgroup bounds them together. The service makes a
subtree of its own, ``flexsn-<host>-<pid>-<random>``, below the cgroup it runs
in, and one child per jail with:

* cgroup v1 (separate ``memory`` and ``pids`` hierarchies): ``memory.limit_in_bytes``
  and ``memory.memsw.limit_in_bytes`` (no swap beyond the limit, where swap
  accounting exists), ``pids.max``;
* cgroup v2 (one unified hierarchy): ``memory.max``, ``memory.swap.max = 0``,
  ``memory.oom.group = 1`` (an out-of-memory kill takes the whole build),
  ``pids.max``. The service's cgroup must be delegated to it (writable, with
  the memory and pids controllers available); if the service is the only
  process in it, it moves itself into a ``flexsn-service`` leaf so that the
  controllers can be enabled for its children (cgroup v2's "no internal
  processes" rule). With several HTTP workers, ``serve`` does that move before
  it starts them (:func:`prepare_for_workers`), so they all run in the leaf and
  each makes its own subtree beside it.

The launcher (``launcher.py``) writes its pid into the child's
``cgroup.procs`` before it execs bwrap, so every process of the jail is
inside from the start. After the build the service kills what is left and
removes the child. :func:`detect` raises :class:`CgroupUnavailable` with the
reason when none of this is possible (e.g. a read-only ``/sys/fs/cgroup`` in a
plain Docker container); the service then warns loudly and falls back to
rlimits (see ``jail.py``), or refuses to start with ``FLEXSN_SERVICE_JAIL_CGROUPS=require``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupUnavailable", "BuildCgroup", "Cgroups", "detect", "prepare_for_workers"]

_CONTROLLERS = ("memory", "pids")
_SUBTREE_PREFIX = "flexsn-"
_SERVICE_LEAF = "flexsn-service"


class CgroupUnavailable(RuntimeError):
    """No cgroup can be created for builds here; the message says why."""


@dataclass
class BuildCgroup:
    """The cgroup(s) of one jail: a directory per hierarchy (two on v1, one on v2)."""

    dirs: list[Path]
    version: int
    removed: bool = field(default=False)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this build for going over its memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for d in self.dirs:
            with contextlib.suppress(OSError):
                match = re.search(r"^oom_kill (\d+)", (d / name).read_text(), re.MULTILINE)
                if match and int(match.group(1)) > 0:
                    return True
        return False

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (repeated by :meth:`remove` until it is empty)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill what is left, wait until empty, remove; False if it could not be removed in time."""
        deadline = time.monotonic() + timeout
        while True:
            self.kill()
            leftover = []
            for d in self.dirs:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    leftover.append(d)
            if not leftover:
                self.removed = True
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


class Cgroups:
    """The service's own cgroup subtree; one child per jail."""

    def __init__(self, version: int, bases: list[Path]) -> None:
        self.version = version
        self.bases = bases  # our subtree, one per hierarchy

    def describe(self) -> str:
        return f"cgroup v{self.version} at {', '.join(str(b) for b in self.bases)}"

    def create(self, name: str, *, memory_bytes: int, pids: int) -> BuildCgroup:
        """A child with the limits set (raises OSError if the kernel refuses one)."""
        dirs = [base / name for base in self.bases]
        made: list[Path] = []
        try:
            for d in dirs:
                d.mkdir()
                made.append(d)
            cgroup = BuildCgroup(dirs, self.version)
            if self.version == 1:
                memory_dir, pids_dir = dirs
                (memory_dir / "memory.limit_in_bytes").write_text(str(memory_bytes))
                swap = memory_dir / "memory.memsw.limit_in_bytes"
                if swap.exists():  # only with swap accounting; memsw counts memory + swap
                    swap.write_text(str(memory_bytes))
                (pids_dir / "pids.max").write_text(str(pids))
            else:
                (dirs[0] / "memory.max").write_text(str(memory_bytes))
                for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    if (dirs[0] / optional).exists():
                        (dirs[0] / optional).write_text(value)
                (dirs[0] / "pids.max").write_text(str(pids))
            return cgroup
        except OSError:
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise

    def close(self) -> None:
        """Remove our subtree (its children must be gone: remove them first)."""
        for base in self.bases:
            for child in [p for p in base.iterdir() if p.is_dir()] if base.exists() else []:
                BuildCgroup([child], self.version).remove(timeout=2.0)
            with contextlib.suppress(OSError):
                base.rmdir()


# ------------------------------------------------------------------ detection
def _own_cgroups(proc_self: Path) -> dict[str, str]:
    """{controller or "" (v2): path} from /proc/self/cgroup."""
    found = {}
    for line in proc_self.joinpath("cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def _mounts(proc_self: Path) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of each cgroup mount."""
    mounts = []
    for line in proc_self.joinpath("mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            mounts.append((fields[3], fields[4].replace("\\040", " "), tail[0], set(tail[2].split(","))))
    return mounts


def _join(mount_root: str, mount_point: str, path: str) -> Path:
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    return Path(mount_point) / ("" if relative == "." else relative)


def _subtree_name() -> str:
    return f"{_SUBTREE_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_stale(parent: Path) -> None:
    """Remove the subtrees of service processes on this host that are gone (after a crash)."""
    pattern = re.compile(rf"^{re.escape(_SUBTREE_PREFIX)}{re.escape(socket.gethostname())}-(\d+)-[0-9a-f]+$")
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = pattern.match(entry.name)
            if match and not _pid_alive(int(match.group(1))):
                Cgroups(0, [entry]).close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _detect_v1(own: dict[str, str], mounts: list) -> Cgroups:
    bases = []
    for controller in _CONTROLLERS:
        mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
        if mount is None or controller not in own:
            raise CgroupUnavailable(f"no cgroup v1 {controller} hierarchy is mounted")
        parent = _join(mount[0], mount[1], own[controller])
        _remove_stale(parent)
        bases.append(parent / _subtree_name())
    return _make_bases(Cgroups(1, bases))


def _v2_own(own: dict[str, str], mounts: list) -> Path:
    mount = next((m for m in mounts if m[2] == "cgroup2"), None)
    if mount is None or "" not in own:
        raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
    return _join(mount[0], mount[1], own[""])


def _v2_parent(own: dict[str, str], mounts: list) -> Path:
    """The cgroup v2 folder our subtrees go into: our own cgroup, or, when we run in the
    ``flexsn-service`` leaf made by us (or by ``serve`` for its workers), the leaf's parent."""
    parent = _v2_own(own, mounts)
    if parent.name == _SERVICE_LEAF and _controllers_enabled(parent.parent):
        return parent.parent
    return parent


def _controllers_enabled(folder: Path) -> bool:
    try:
        enabled = set((folder / "cgroup.subtree_control").read_text().split())
    except OSError:
        return False
    return all(c in enabled for c in _CONTROLLERS)


def prepare_for_workers(proc_self: Path = Path("/proc/self")) -> str | None:
    """Before ``serve`` starts several workers, on cgroup v2: move itself into the ``flexsn-service``
    leaf and enable the controllers for its cgroup's children, so that the workers (started in the
    leaf) can each make build cgroups beside it. Without this the first worker would find the others
    in its cgroup and fall back to rlimits. Best effort: where it cannot (cgroup v1 needs nothing;
    not delegated; other processes), the workers decide as one process would and say why.
    Returns a line to print, or None."""
    try:
        own = _own_cgroups(proc_self)
        mounts = _mounts(proc_self)
        if any(m[2] == "cgroup" and "memory" in m[3] for m in mounts) and "memory" in own:
            return None  # v1: no "no internal processes" rule, each worker's subtree sits below our cgroup
        parent = _v2_parent(own, mounts)
        if parent != _v2_own(own, mounts) or _controllers_enabled(parent):
            return None  # already in our leaf, or the controllers are enabled (a delegated tree)
        members = {int(p) for p in (parent / "cgroup.procs").read_text().split()}
        if members - {os.getpid()}:
            return None  # the workers will report it (CgroupUnavailable: other processes)
        _enter_leaf(parent)
    except (OSError, ValueError, CgroupUnavailable) as exc:
        return f"cgroups for builds not prepared for several workers ({exc}); each worker decides on its own"
    return None


def _enter_leaf(parent: Path) -> None:
    """Move this process into ``parent/flexsn-service`` and enable the controllers for parent's children."""
    leaf = parent / _SERVICE_LEAF
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(str(os.getpid()))
    (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in _CONTROLLERS))


def _detect_v2(own: dict[str, str], mounts: list) -> Cgroups:
    parent = _v2_parent(own, mounts)
    available = set((parent / "cgroup.controllers").read_text().split())
    missing = [c for c in _CONTROLLERS if c not in available]
    if missing:
        raise CgroupUnavailable(f"cgroup v2 at {parent} does not offer the {', '.join(missing)} controller(s)")
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    if not all(c in enabled for c in _CONTROLLERS):
        members = {int(p) for p in (parent / "cgroup.procs").read_text().split()}
        if members - {os.getpid()}:
            raise CgroupUnavailable(
                f"cgroup v2 at {parent} holds other processes, so its controllers cannot be enabled for "
                "children; give the service a delegated cgroup of its own (e.g. systemd Delegate=yes)"
            )
        _enter_leaf(parent)
    _remove_stale(parent)
    cgroups = _make_bases(Cgroups(2, [parent / _subtree_name()]))
    (cgroups.bases[0] / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in _CONTROLLERS))
    return cgroups


def _make_bases(cgroups: Cgroups) -> Cgroups:
    for base in cgroups.bases:
        base.mkdir()
    return cgroups


def detect(proc_self: Path = Path("/proc/self")) -> Cgroups:
    """Our own cgroup subtree, created and checked with a probe child; raises CgroupUnavailable."""
    try:
        own = _own_cgroups(proc_self)
        mounts = _mounts(proc_self)
        v1 = any(m[2] == "cgroup" and "memory" in m[3] for m in mounts) and "memory" in own
        cgroups = _detect_v1(own, mounts) if v1 else _detect_v2(own, mounts)
    except CgroupUnavailable:
        raise
    except OSError as exc:
        raise CgroupUnavailable(f"the service's cgroup is not writable ({exc.strerror}: {exc.filename})") from exc
    try:
        probe = cgroups.create("probe", memory_bytes=64 << 20, pids=8)
        probe.remove()
    except OSError as exc:
        cgroups.close()
        raise CgroupUnavailable(f"cannot set limits in {cgroups.describe()} ({exc.strerror}: {exc.filename})") from exc
    return cgroups
