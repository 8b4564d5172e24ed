"""The build jail: user Python runs only inside bubblewrap.

Every process that executes a core (loading its source, tracing it) starts as

    python -I -S launcher.py CONFIG  ->  (cgroup, rlimits, drop to uid 65534)  ->  bwrap ... python -m worker

and sees, inside ``bwrap``:

* its own user namespace (uid/gid 65534 inside; the launcher already dropped
  to an unprivileged host uid when the service runs as root, so nothing inside
  maps to root outside), no further user namespaces (``--disable-userns``);
* its own pid, network (no interfaces but a loopback of its own), ipc, uts and
  cgroup namespaces; ``--die-with-parent`` and a new pid namespace mean every
  process of the build dies with it -- no daemon survives;
* a read-only view of only the system libraries, the Python installation, the
  virtual environment and the project's packages (at ``/opt/flexsn``); not the
  store, not the service's work folder, not the tokens file, not ``/root`` or
  ``/home``; a fresh ``/proc`` (only the jail's processes), a minimal ``/dev``,
  a read-only root;
* one writable place, ``/tmp``: a tmpfs of ``scratch_bytes``, gone with the jail;
* an empty environment but PATH, PYTHONPATH, HOME/TMPDIR (``/tmp``), a user
  name (USER/LOGNAME ``nobody``: there is no /etc/passwd inside), cache folders
  under ``/tmp`` and OMP_NUM_THREADS=1: no secrets, no GPU;
* limits on the whole build: a cgroup (memory of all its processes together,
  process count) where one can be created, and rlimits with hard == soft
  (address space, processes, file size, CPU time, no core dumps); the server
  adds the wall clock.

Without cgroups (a read-only ``/sys/fs/cgroup``, as in a plain Docker
container) the bound is weaker: ``memory_bytes`` of address space per
process times ``pids`` processes; the service says so at start.

:meth:`Jail.self_test` runs the jail once at start-up; the service refuses to
start if it fails -- there is no fallback to running builds without a jail.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import launcher
from .cgroup import BuildCgroup, Cgroups

__all__ = ["JailUnavailable", "JailLimits", "Jail", "JAIL_PACKAGES", "BASELINE_BYTES", "HOST_NEEDS"]

logger = logging.getLogger("flexsn_service.builds")

#: Where the project's packages appear inside the jail (PYTHONPATH).
JAIL_PACKAGES = "/opt/flexsn"
#: What a warmed-up worker takes before any user code runs (torch and tracing
#: imported: ~0.4 GB resident here); the jail's cgroup allows this plus the build's own budget.
BASELINE_BYTES = 1 << 30
#: Address space allowed before the worker narrows it to "now + the build's budget" (torch maps a lot).
_BASELINE_ADDRESS_SPACE = 4 << 30
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
HOST_NEEDS = (
    "The build jail needs bubblewrap (`apt-get install bubblewrap`; `make install` does it) and "
    "unprivileged user namespaces: user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 "
    "where that sysctl exists, kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile "
    "for bwrap) on Ubuntu 24.04. In Docker: security_opt seccomp=unconfined, apparmor=unconfined and "
    "systempaths=unconfined (see docker-compose.yml)."
)


class JailUnavailable(RuntimeError):
    """The jail cannot run on this host; the message says what the host needs."""


@dataclass(frozen=True)
class JailLimits:
    memory_bytes: int  # the build's own budget (the cgroup adds BASELINE_BYTES)
    pids: int  # processes (and threads) of the whole build
    scratch_bytes: int  # the writable /tmp, and the largest file
    cpu_seconds: int  # CPU time per process
    concurrency: int = 4  # jails that may exist at once (spares included): the host-wide process bound
    baseline_bytes: int = BASELINE_BYTES  # added to memory_bytes for the cgroup: the worker's own imports


class Jail:
    """Builds the launcher/bwrap command line and starts jailed processes."""

    def __init__(
        self,
        *,
        bwrap: str,
        limits: JailLimits,
        cgroups: Cgroups | None,
        jail_uid: int = 65534,
        python: str = sys.executable,
    ) -> None:
        found = shutil.which(bwrap)
        if found is None:
            raise JailUnavailable(f"bubblewrap was not found (FLEXSN_SERVICE_JAIL_BWRAP={bwrap!r}). {HOST_NEEDS}")
        self.bwrap = os.path.realpath(found)
        self.limits = limits
        self.cgroups = cgroups
        # The venv's bin/python by its real folder (the jail binds real paths), keeping the link's name:
        # Python finds its virtual environment from there.
        self.python = os.path.join(os.path.realpath(os.path.dirname(python)), os.path.basename(python))
        self.as_root = os.geteuid() == 0
        self.uid = jail_uid if self.as_root else None
        self.binds = _binds(self.python)
        self.supports_disable_userns = "--disable-userns" in _bwrap_help(self.bwrap)

    # ------------------------------------------------------------------ command line
    def launcher_config(self, command: list[str], cgroup: BuildCgroup | None) -> dict:
        limits = self.limits
        head = [
            "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
            "--die-with-parent", "--new-session", "--hostname", "flexsn-jail",
            # Scratch first: binds below /tmp (a venv made with mktemp) then land on top of it.
            "--size", str(limits.scratch_bytes), "--tmpfs", "/tmp",
        ]
        if self.supports_disable_userns:
            head.append("--disable-userns")
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                head += ["--symlink", os.readlink(path), path]
        env = {
            "PATH": "/usr/bin:/bin", "PYTHONPATH": JAIL_PACKAGES, "HOME": "/tmp", "TMPDIR": "/tmp",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1",
            "FLEXSN_CACHE_DIR": "/tmp/flexsn-cache", "TRITON_CACHE_DIR": "/tmp/triton", "LANG": "C.UTF-8",
            # The jail has no /etc/passwd, so uid 65534 has no name: getpass.getuser() reads these first.
            # torch 2.11 asks for it while importing torch._dynamo (its inductor cache folder); without
            # them every trace failed on the H200 image with "getpwuid(): uid not found: 65534".
            "USER": "nobody", "LOGNAME": "nobody", "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor",
        }
        tail = ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--remount-ro", "/dev", "--clearenv"]
        for name, value in env.items():
            tail += ["--setenv", name, value]
        tail += ["--chdir", "/tmp", "--", *command]
        rlimits = {
            "AS": limits.memory_bytes + _BASELINE_ADDRESS_SPACE,
            # Counted per user namespace and uid on Linux >= 5.14, and for all jails at once at
            # the host level: room for every jail; the worker narrows it to `pids` for its own.
            "NPROC": limits.pids * (limits.concurrency + 1) + 64,
            "FSIZE": limits.scratch_bytes,
            "CPU": limits.cpu_seconds + 120,  # + the worker's warm-up; the worker narrows it
            "CORE": 0,
        }
        return {
            "bwrap": self.bwrap,
            "head": head,
            "binds": self.binds,
            "tail": tail,
            "cgroup_procs": cgroup.procs_files if cgroup else [],
            "rlimits": rlimits,
            "uid": self.uid,
            "gid": self.uid,
            "stage": self.as_root,
        }

    def argv(self, command: list[str], cgroup: BuildCgroup | None) -> list[str]:
        config = json.dumps(self.launcher_config(command, cgroup))
        return [self.python, "-I", "-S", launcher.__file__, config]

    def python_command(self, *args: str) -> list[str]:
        """``python`` inside the jail: no user site, the current directory not on sys.path."""
        return [self.python, "-P", "-s", *args]

    # ------------------------------------------------------------------ processes
    def new_cgroup(self, name: str) -> BuildCgroup | None:
        if self.cgroups is None:
            return None
        return self.cgroups.create(name, memory_bytes=self.limits.memory_bytes + self.limits.baseline_bytes,
                                   pids=self.limits.pids)

    async def spawn(self, command: list[str], name: str) -> tuple[asyncio.subprocess.Process, BuildCgroup | None]:
        """Start ``command`` in a fresh jail (and cgroup); stdin/stdout/stderr are pipes."""
        cgroup = await asyncio.to_thread(self.new_cgroup, name)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(command, cgroup),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={}, cwd="/", start_new_session=True,
            )
        except BaseException:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            raise
        return proc, cgroup

    def run(self, command: list[str], *, timeout: float = 60.0, stdin: bytes = b"") -> subprocess.CompletedProcess:
        """Run ``command`` in a jail to completion (self test, tests); output captured."""
        cgroup = self.new_cgroup(f"run-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            return subprocess.run(
                self.argv(command, cgroup), input=stdin, capture_output=True, env={}, cwd="/",
                timeout=timeout, start_new_session=True, check=False,
            )
        finally:
            if cgroup is not None:
                cgroup.remove()

    def self_test(self) -> None:
        """Run the jail once; raise JailUnavailable saying what the host needs if it fails."""
        probe = (
            "import importlib.util, os, sys\n"
            "missing = [m for m in ('torch', 'flexsn_core', 'flexsn_service') if importlib.util.find_spec(m) is None]\n"
            "print(os.getuid(), ','.join(missing))\n"
        )
        try:
            result = self.run(self.python_command("-c", probe), timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise JailUnavailable(f"the build jail could not be started: {exc}. {HOST_NEEDS}") from exc
        stderr = result.stderr.decode(errors="replace").strip()
        if result.returncode != 0:
            raise JailUnavailable(
                f"the build jail does not work on this host (exit status {result.returncode}: "
                f"{stderr[-800:] or 'no message'}). {HOST_NEEDS}"
            )
        uid, _, missing = result.stdout.decode(errors="replace").strip().partition(" ")
        if uid != "65534":
            raise JailUnavailable(f"the build jail runs as uid {uid!r} inside, expected 65534")
        if missing:
            raise JailUnavailable(
                f"inside the build jail Python cannot find {missing}: install the project into a virtual "
                "environment or system Python, not a user site-packages"
            )

    def describe(self) -> str:
        who = f"host uid {self.uid}" if self.uid is not None else f"the service's uid {os.geteuid()}"
        bound = (
            f"{self.cgroups.describe()}: {(self.limits.memory_bytes + self.limits.baseline_bytes) >> 20} MB and "
            f"{self.limits.pids} processes per build"
            if self.cgroups is not None
            else f"NO cgroup: only rlimits, {self.limits.memory_bytes >> 20} MB of address space per process "
                 f"x {self.limits.pids} processes per build"
        )
        return f"bwrap {self.bwrap} as {who}; {bound}; scratch {self.limits.scratch_bytes >> 20} MB"


def _bwrap_help(bwrap: str) -> str:
    try:
        result = subprocess.run([bwrap, "--help"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JailUnavailable(f"bubblewrap at {bwrap} cannot run: {exc}. {HOST_NEEDS}") from exc
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise JailUnavailable(f"cannot locate the {name} package to show it inside the jail")
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def _binds(python: str) -> list[list[str]]:
    """[source, dest] pairs, read-only: system dirs, /etc basics, Python, the venv, our packages."""
    binds: list[list[str]] = []
    for path in _SYSTEM_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            binds.append([path, path])
    binds += [[p, p] for p in _ETC_FILES if os.path.exists(p)]
    covered = [b[0] for b in binds]
    interpreter = os.path.realpath(python)
    # The installation, the virtual environment (its bin/python links into the installation).
    for prefix in (os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), os.path.dirname(interpreter)):
        if not any(prefix == c or prefix.startswith(c + "/") for c in covered):
            binds.append([prefix, prefix])
            covered.append(prefix)
    binds.append([_package_dir("flexsn_core"), f"{JAIL_PACKAGES}/flexsn_core"])
    binds.append([_package_dir("flexsn_service"), f"{JAIL_PACKAGES}/flexsn_service"])
    return binds
