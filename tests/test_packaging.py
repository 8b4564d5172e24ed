"""Packaging: entry points load, the Docker files say what the README says."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def test_console_entry_points_load() -> None:
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert "flexsn-cache" in scripts
    main = scripts["flexsn-cache"].load()
    assert callable(main)


def test_every_package_folder_is_installed() -> None:
    """pyproject lists packages one by one: a new subpackage left out works editable, breaks a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    names = {"flexsn_core": "flexsn_core", "service": "flexsn_service", "client": "flexsn_client"}
    found = set()
    for folder, name in names.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert found == listed


def test_packages_import_under_their_install_names() -> None:
    import flexsn_client
    import flexsn_service

    assert Path(flexsn_service.__file__).parent.name == "service"
    assert Path(flexsn_client.__file__).parent.name == "client"


def test_compose_file_reserves_a_gpu_and_persists_the_store() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["flexsn-cache"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert "flexsn-store:/data" in service["volumes"] and "flexsn-store" in compose["volumes"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert service["environment"]["FLEXSN_SERVICE_TOKENS"] == "/run/secrets/flexsn_tokens"
    assert "flexsn_tokens" in compose["secrets"]


def test_compose_file_lets_the_build_jail_run() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flexsn-cache"]
    # bwrap needs namespaces (seccomp, AppArmor) and a fresh /proc (Docker's masked paths).
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(service["security_opt"])
    assert service["environment"]["FLEXSN_SERVICE_JAIL_CGROUPS"] in ("auto", "require")
    assert service["mem_limit"] and service["pids_limit"] > 0  # the bound when cgroups are read-only


def test_dockerfile_installs_the_service_and_runs_it() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'pip install -c /src/docker/requirements.lock "/src[service]" "triton==3.6.0" "numpy<2.4"' in text
    assert 'CMD ["flexsn-cache", "serve"]' in text
    assert "FLEXSN_SERVICE_STORE=disk:/data/store" in text
    for folder in ("flexsn_core", "service", "client"):
        assert f"COPY {folder} /src/{folder}" in text
    install = next(line for line in text.splitlines() if "apt-get install" in line)
    assert "bubblewrap" in install
    assert "bubblewrap" in (ROOT / "docker" / "check-install.sh").read_text()


def _fake_apt(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `apt-get` only records its arguments."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    apt.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_make_installs_missing_system_packages_in_one_apt_call(tmp_path: Path) -> None:
    env, log = _fake_apt(tmp_path)
    pairs = "sh:never-installed no-such-command-1:pkg-one no-such-command-2:pkg-two"
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "system-packages", f"PACKAGES={pairs}", "SUDO="],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].split()[-2:] == ["pkg-one", "pkg-two"] and "install" in calls[1]  # not `never-installed`
    log.unlink()
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "system-packages", "PACKAGES=sh:x", "SUDO="],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not log.exists()  # nothing missing: no apt-get at all


def test_serving_needs_the_jail_and_testing_also_the_browser() -> None:
    def packages(target: str) -> str:
        plan = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60)
        assert plan.returncode == 0, plan.stderr
        return plan.stdout.split("PACKAGES=", 1)[1].splitlines()[0]

    assert "bwrap:bubblewrap" in packages("serve") and "chromium" not in packages("serve")
    assert "bwrap:bubblewrap" in packages("test") and "chromium:chromium" in packages("test")


def test_make_serve_and_make_test_do_not_install_at_once(tmp_path: Path) -> None:
    env, _ = _fake_apt(tmp_path)  # a missing system package is only recorded, never installed, here
    # A stand-in python: `-m venv DIR` makes DIR/bin/python, any other call is a 0.3 s "pip install".
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi\n'
        'echo "start $$" >> "$FAKE_LOG"; sleep 0.3; echo "end $$" >> "$FAKE_LOG"\n'
    )
    fake.chmod(0o755)
    log = tmp_path / "log"
    args = ["-s", "-C", str(ROOT), f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}", f"LOCK={tmp_path / 'lock'}", "SUDO="]
    env["FAKE_LOG"] = str(log)
    # the install steps of `make serve` and `make test`, at once
    makes = [subprocess.Popen(["make", target, *args], env=env) for target in ("install", "install-test")]
    assert [m.wait(timeout=120) for m in makes] == [0, 0]
    events = log.read_text().splitlines()
    assert len(events) == 6  # three pip steps, once: the second make found the venv installed
    for start, end in zip(events[0::2], events[1::2]):  # never two pip steps at the same time
        assert start.split()[0] == "start" and end == "end " + start.split()[1]
    assert (tmp_path / "venv" / ".installed").exists()


# ------------------------------------------------------------------ docker (no engine here: what can be checked)
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"  # vendored; see tests/data/README.md
CONTAINER_UID = 10001


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_spec_schema() -> None:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    problems = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert problems == []
    broken = _compose()  # the schema catches a misspelt key (the check is not vacuous)
    broken["services"]["flexsn-cache"]["secret"] = broken["services"]["flexsn-cache"].pop("secrets")
    assert any("secret" in e.message for e in validator.iter_errors(broken))


def test_the_tokens_secret_belongs_to_the_container_user() -> None:
    service = _compose()["services"]["flexsn-cache"]
    (secret,) = service["secrets"]
    assert secret["source"] == "flexsn_tokens" and secret["target"] == "flexsn_tokens"
    assert service["environment"]["FLEXSN_SERVICE_TOKENS"] == f"/run/secrets/{secret['target']}"
    assert (secret["uid"], secret["gid"]) == (str(CONTAINER_UID), str(CONTAINER_UID))
    mode = secret["mode"]  # 0o400 (YAML 1.2 octal, what Compose reads; PyYAML keeps it as text)
    mode = int(mode.removeprefix("0o"), 8) if isinstance(mode, str) else mode
    assert mode == 0o400  # the owner reads it, nobody else
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"groupadd --gid {CONTAINER_UID} flexsn" in dockerfile
    assert f"useradd --create-home --uid {CONTAINER_UID} --gid {CONTAINER_UID} flexsn" in dockerfile
    assert "\nUSER flexsn\n" in dockerfile
    # Compose bind-mounts a file secret with the host file's owner and mode: the compose file
    # says how to prepare it, and so does the README.
    prepare = f"sudo chown {CONTAINER_UID}:{CONTAINER_UID} docker/tokens.txt && sudo chmod 400 docker/tokens.txt"
    assert prepare in (ROOT / "docker-compose.yml").read_text() and prepare in (ROOT / "README.md").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner and reading as another user needs root")
def test_a_tokens_file_prepared_as_documented_is_readable_by_the_container_user_only() -> None:
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path sits below a root-only folder
    folder.chmod(0o755)
    tokens = folder / "tokens.txt"
    shutil.copy(ROOT / "docker" / "tokens.example", tokens)
    # the documented commands, on a copy (sudo is not needed as root)
    subprocess.run(["chown", f"{CONTAINER_UID}:{CONTAINER_UID}", str(tokens)], check=True)
    subprocess.run(["chmod", "400", str(tokens)], check=True)

    def read_as(uid: int) -> int:
        def drop() -> None:
            os.setgid(uid)
            os.setgroups([])
            os.setuid(uid)

        return subprocess.run(["cat", str(tokens)], preexec_fn=drop, capture_output=True, timeout=30).returncode

    try:
        assert read_as(CONTAINER_UID) == 0
        assert read_as(65534) != 0  # another user of the host (or container) cannot
    finally:
        shutil.rmtree(folder)


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the simple patterns used here: a pattern matches the path or a parent folder."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        glob = pattern.removeprefix("**/")
        candidates = parts if pattern.startswith("**/") else prefixes
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            return True
    return False


def test_dockerignore_keeps_large_local_and_secret_things_out_of_the_build_context() -> None:
    patterns = _dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", "flexsn-store/cache.db", "flexsn-work/work/x",
                 "bench/results/2026-11-22-gpu_perf-NVIDIA_H200.png", "service/__pycache__/main.cpython-311.pyc",
                 "dist/flexsn_cache-0.1.0-py3-none-any.whl", "torch-2.13.0-cp311-linux_x86_64.whl",
                 ".whl/x.whl", ".pytest_cache/v", ".hypothesis/examples/x", "flexsn_cache.egg-info/PKG-INFO",
                 "docker/tokens.txt", ".install.lock"):
        assert _ignored(path, patterns), path
    # ... and nothing the Dockerfile copies
    copied = re.findall(r"^COPY (.+) /src/", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    sources = [src for line in copied for src in line.split()]
    assert {"pyproject.toml", "README.md", "docker/requirements.lock", "flexsn_core", "service", "client"} <= set(sources)
    for source in sources:
        assert not _ignored(source, patterns), source
    for path in ("service/templates/status.html", "flexsn_core/py.typed"):
        assert not _ignored(path, patterns), path


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _closure(requirements: list[str], extras: set[str]) -> set[str]:
    """Distribution names a set of requirements pulls in (as installed in this venv), recursively."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, active = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (active or {""})):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(r), set(req.extras)) for r in importlib.metadata.requires(req.name) or []]
    return seen


def test_the_image_pins_every_python_dependency() -> None:
    pins = _lock()
    needed = _closure(["flexsn-cache[service]", "triton==3.6.0"], set()) - {"flexsn-cache"}
    # torch (and its CUDA libraries) come pinned from PyTorch's own index; the rest from the lock
    unpinned = {n for n in needed - set(pins) if n != "torch" and not n.startswith("nvidia-")}
    assert not unpinned, f"regenerate docker/requirements.lock with docker/lock.sh: {sorted(unpinned)}"
    assert "torch" not in pins and not any(n.startswith("nvidia-") for n in pins)
    assert pins["triton"] == "3.6.0"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128" in dockerfile
    installs = [line for line in dockerfile.splitlines() if "pip install" in line and "torch==" not in line]
    assert installs and all("-c /src/docker/requirements.lock" in line for line in installs), installs


def test_check_install_runs_the_images_install_commands() -> None:
    """docker/check-install.sh is the image's install in a plain venv: the same pip lines."""
    def pip_args(text: str) -> list[str]:
        lines = [line for line in text.splitlines() if re.search(r'pip"? install', line) and "torch" not in line]
        args = [re.sub(r'.*pip"? install (-q )?', "", line).rstrip(" \\").strip() for line in lines]
        return [a.replace("/src/", "").replace('"/src[service]"', '".[service]"') for a in args]

    image = pip_args((ROOT / "docker" / "Dockerfile").read_text())
    check = pip_args((ROOT / "docker" / "check-install.sh").read_text())
    assert len(image) == 2 and image == check, (image, check)
    assert "make check-image" in (ROOT / "README.md").read_text()
    assert "check-image:" in (ROOT / "Makefile").read_text()
