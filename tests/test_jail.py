"""The build jail on its own: what a process inside can see, do and use (no service, no torch)."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from flexsn_service.builds import cgroup as cgroup_module
from flexsn_service.builds.jail import Jail, JailLimits, JailUnavailable

SECRET = "canary-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def cgroups():  # noqa: ANN201
    groups = cgroup_module.detect()  # this CI machine has writable cgroups: no fallback here
    yield groups
    groups.close()


@pytest.fixture(scope="module")
def jail(cgroups) -> Jail:  # noqa: ANN001
    limits = JailLimits(memory_bytes=160 << 20, pids=16, scratch_bytes=8 << 20, cpu_seconds=30,
                        baseline_bytes=64 << 20)
    return Jail(bwrap="bwrap", limits=limits, cgroups=cgroups)


def _python(jail: Jail, code: str, timeout: float = 60) -> tuple[int, str, str]:
    result = jail.run(jail.python_command("-S", "-c", textwrap.dedent(code)), timeout=timeout)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_inside_sees_only_what_it_needs_and_writes_only_scratch(jail: Jail, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text(SECRET)
    public = Path("/var/tmp") / f"flexsn-canary-{os.getpid()}"
    public.write_text(SECRET)
    public.chmod(0o644)  # readable by anyone on the host: only the mount namespace hides it
    try:
        code, out, err = _python(jail, f"""
            import json, os, socket
            facts = {{"uid": os.getuid(), "gid": os.getgid(), "env": sorted(os.environ),
                      "hostname": socket.gethostname(), "pids": sorted(p for p in os.listdir('/proc') if p.isdigit()),
                      "root": sorted(os.listdir('/')), "pid1_environ": open('/proc/1/environ', 'rb').read().decode()}}
            for name, path in [("canary", {str(canary)!r}), ("public", {str(public)!r}), ("root_home", "/root/.bashrc"),
                               ("passwd", "/etc/passwd"), ("shadow", "/etc/shadow")]:
                try:
                    facts[name] = open(path).read()
                except OSError as exc:
                    facts[name] = type(exc).__name__
            writes = {{}}
            for path in ["/x", "/usr/x", "/opt/flexsn/x", "/etc/x", "/dev/x", {str(tmp_path / 'w')!r}, "/tmp/ok"]:
                try:
                    open(path, "w").write("x")
                    writes[path] = "written"
                except OSError as exc:
                    writes[path] = type(exc).__name__
            facts["writes"] = writes
            print(json.dumps(facts))
        """)
    finally:
        public.unlink()
    assert code == 0, err
    facts = json.loads(out)
    assert (facts["uid"], facts["gid"]) == (65534, 65534)
    assert set(facts["env"]) <= {"PATH", "PYTHONPATH", "HOME", "TMPDIR", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                                 "PYTHONDONTWRITEBYTECODE", "FLEXSN_CACHE_DIR", "TRITON_CACHE_DIR", "LANG", "PWD",
                                 "LC_CTYPE", "USER", "LOGNAME", "TORCHINDUCTOR_CACHE_DIR"}
    assert facts["pid1_environ"] == ""
    assert len(facts["pids"]) <= 3  # bwrap's init, python (and the shell, if any): nothing of the host
    assert facts["hostname"] == "flexsn-jail"
    for name in ("canary", "public", "root_home", "passwd", "shadow"):
        assert facts[name] in ("FileNotFoundError", "PermissionError"), (name, facts[name])
    assert facts["writes"].pop("/tmp/ok") == "written"
    assert all(v in ("OSError", "PermissionError", "FileNotFoundError") for v in facts["writes"].values()), facts
    assert not (tmp_path / "w").exists()
    assert SECRET not in out + err


def test_no_network_not_even_to_host_loopback(jail: Jail) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        code, out, err = _python(jail, f"""
            import socket
            for host in ("127.0.0.1", "10.0.0.1", "8.8.8.8"):
                try:
                    socket.create_connection((host, {port}), timeout=2)
                    print("connected", host)
                except OSError as exc:
                    print("refused", host, type(exc).__name__)
        """)
        with pytest.raises(OSError):
            listener.accept()  # nothing reached the host
    assert code == 0, err
    assert "connected" not in out and out.count("refused") == 3


def test_limits_are_set_and_cannot_be_raised(jail: Jail) -> None:
    code, out, err = _python(jail, """
        import json, resource
        report = {}
        for name in ("AS", "NPROC", "FSIZE", "CPU", "CORE"):
            which = getattr(resource, "RLIMIT_" + name)
            soft, hard = resource.getrlimit(which)
            try:
                resource.setrlimit(which, (hard + 1, hard + 1))
                raised = True
            except (ValueError, OSError):
                raised = False
            report[name] = [soft, hard, raised]
        print(json.dumps(report))
    """)
    assert code == 0, err
    for name, (soft, hard, raised) in json.loads(out).items():
        assert soft == hard and not raised, name
        assert soft != -1, name  # not unlimited
    assert json.loads(out)["CORE"][0] == 0


def test_scratch_is_size_limited(jail: Jail) -> None:
    code, out, err = _python(jail, """
        import errno
        try:
            with open("/tmp/big", "wb") as fh:
                for _ in range(64):
                    fh.write(b"x" * (1 << 20))
            print("wrote 64 MB")
        except OSError as exc:
            print("stopped:", errno.errorcode[exc.errno])
    """)
    assert "wrote 64 MB" not in out, out + err
    assert "ENOSPC" in out or "EFBIG" in out or code != 0, out + err


def test_process_count_is_bounded(jail: Jail) -> None:
    code, out, err = _python(jail, """
        import os, time
        n = 0
        try:
            for _ in range(50):
                if os.fork() == 0:
                    time.sleep(10)
                    os._exit(0)
                n += 1
        except OSError as exc:
            pass
        print("forked", n)
    """)
    forked = int(out.split()[-1])
    assert forked < 16, out + err


def test_memory_is_bounded_over_all_processes(jail: Jail) -> None:
    # 4 children x 100 MB: each within its own address-space limit, together over the cgroup's 224 MB.
    code, out, err = _python(jail, """
        import os, time
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = bytearray(100 << 20)
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        statuses = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in children]
        print("statuses", statuses)
    """)
    assert "statuses [0, 0, 0, 0]" not in out, out + err


def test_no_process_outlives_the_jail(jail: Jail) -> None:
    marker = f"{1000 + os.getpid() % 1000}.{os.urandom(2).hex()}"
    started = time.monotonic()
    code, out, err = _python(jail, f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{marker}"])
            os._exit(0)
        time.sleep(0.5)
        print("daemon started")
    """)
    assert "daemon started" in out, err
    assert time.monotonic() - started < 30
    time.sleep(0.5)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert marker.encode() not in cmdline, f"process {pid} survived the jail: {cmdline!r}"


def test_each_run_gets_its_own_cgroup_and_it_is_removed(jail: Jail, cgroups) -> None:  # noqa: ANN001
    before = [sorted(p.name for p in base.iterdir() if p.is_dir()) for base in cgroups.bases]
    code, out, err = _python(jail, "print(open('/proc/self/cgroup').read())")
    assert code == 0, err
    after = [sorted(p.name for p in base.iterdir() if p.is_dir()) for base in cgroups.bases]
    assert before == after == [[] for _ in cgroups.bases]


def test_missing_bwrap_is_refused_with_what_the_host_needs() -> None:
    limits = JailLimits(memory_bytes=1 << 30, pids=16, scratch_bytes=1 << 20, cpu_seconds=10)
    with pytest.raises(JailUnavailable, match="bubblewrap was not found.*user namespaces"):
        Jail(bwrap="/nonexistent/bwrap", limits=limits, cgroups=None)


def test_a_broken_jail_fails_the_self_test(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    limits = JailLimits(memory_bytes=1 << 30, pids=16, scratch_bytes=1 << 20, cpu_seconds=10)
    jail = Jail(bwrap=str(fake), limits=limits, cgroups=None)
    jail.as_root, jail.uid = False, None  # no staging: the fake is not a real bwrap
    with pytest.raises(JailUnavailable, match="No permissions to create new namespace.*user namespaces"):
        jail.self_test()


def test_cgroup_v2_without_controllers_or_with_other_processes_is_reported(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/service\n")
    (proc / "mountinfo").write_text(f"30 25 0:26 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    group = tmp_path / "cg" / "service"
    group.mkdir(parents=True)
    (group / "cgroup.controllers").write_text("cpu io\n")
    (group / "cgroup.subtree_control").write_text("")
    (group / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")
    with pytest.raises(cgroup_module.CgroupUnavailable, match="memory, pids controller"):
        cgroup_module.detect(proc)
    (group / "cgroup.controllers").write_text("cpu io memory pids\n")
    with pytest.raises(cgroup_module.CgroupUnavailable, match="holds other processes"):
        cgroup_module.detect(proc)


def test_bind_sources_below_tmp_are_reachable(cgroups, tmp_path: Path) -> None:  # noqa: ANN001
    # A venv under /tmp (as docker/check-install.sh makes) once vanished under the launcher's staging tmpfs.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "data.txt").write_text("visible")
    limits = JailLimits(memory_bytes=160 << 20, pids=16, scratch_bytes=8 << 20, cpu_seconds=30, baseline_bytes=64 << 20)
    jail = Jail(bwrap="bwrap", limits=limits, cgroups=cgroups)
    jail.binds.append([str(tmp_path / "pkg"), str(tmp_path / "pkg")])  # also inside, below the scratch /tmp
    code, out, err = _python(jail, f"print(open({str(tmp_path / 'pkg' / 'data.txt')!r}).read())")
    assert (code, out.strip()) == (0, "visible"), err


def test_jail_processes_are_unprivileged_on_the_host(jail: Jail) -> None:
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("the uid drop happens only when the service runs as root")
    group = jail.new_cgroup(f"uid-{os.getpid()}")
    proc = subprocess.Popen(jail.argv(["/bin/sleep", "3"], group), env={}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while len(group.pids()) < 3 and time.monotonic() < deadline:  # bwrap, its init, sleep
            time.sleep(0.05)
        uids = {tuple(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]) for pid in group.pids()}
        assert uids == {("65534",) * 4}, uids  # real, effective, saved, fs uid: nobody, never root
    finally:
        proc.kill()
        proc.wait()
        group.remove()


def test_without_cgroups_the_service_warns_or_refuses(monkeypatch, caplog) -> None:  # noqa: ANN001
    import logging

    from flexsn_service import main
    from flexsn_service.config import Settings

    def unavailable():  # noqa: ANN202
        raise cgroup_module.CgroupUnavailable("the service's cgroup is not writable (Read-only file system)")

    monkeypatch.setattr(main, "detect_cgroups", unavailable)
    with pytest.raises(JailUnavailable, match="JAIL_CGROUPS=require, but the service's cgroup is not writable"):
        main.start_jail(Settings(jail_cgroups="require"))
    with caplog.at_level(logging.WARNING, logger="flexsn_service"):
        jail = main.start_jail(Settings(jail_cgroups="auto", build_memory_mb=512, build_pids=20))
    assert jail.cgroups is None
    assert "BUILD LIMITS ARE WEAKER" in caplog.text and "512 MB of address space per process x 20 processes" in caplog.text


def test_the_jail_user_has_a_name_without_a_passwd_file(jail: Jail) -> None:
    """On the H200 image uid 65534 had no name: torch 2.11 asks getpass.getuser() while importing
    torch._dynamo (its inductor cache folder), and every trace in the jail failed with KeyError."""
    code, out, err = _python(jail, """
        import getpass, os, json
        print(json.dumps({"user": getpass.getuser(), "passwd": os.path.exists("/etc/passwd"),
                          "inductor": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}))
    """)
    assert code == 0, err
    seen = json.loads(out)
    assert seen["user"] == "nobody" and not seen["passwd"]
    assert seen["inductor"].startswith("/tmp/")
