"""Packaging: entry points load, the Docker files say what the README says."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import yaml

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
    assert 'pip install "/src[service]" "triton==3.6.0" "numpy<2.4"' in text
    assert 'CMD ["flexsn-cache", "serve"]' in text
    assert "FLEXSN_SERVICE_STORE=disk:/data/store" in text
    for folder in ("flexsn_core", "service", "client"):
        assert f"COPY {folder} /src/{folder}" in text
    install = next(line for line in text.splitlines() if "apt-get install" in line)
    assert "bubblewrap" in install
    assert "bubblewrap" in (ROOT / "docker" / "check-install.sh").read_text()


def test_make_installs_bubblewrap_and_two_makes_do_not_install_at_once(tmp_path: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "apt-get install" in makefile and "bubblewrap" in makefile and "command -v bwrap" in makefile
    # A stand-in python: `-m venv DIR` makes DIR/bin/python, any other call is a 0.3 s "pip install".
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi\n'
        'echo "start $$" >> "$FAKE_LOG"; sleep 0.3; echo "end $$" >> "$FAKE_LOG"\n'
    )
    fake.chmod(0o755)
    log = tmp_path / "log"
    args = ["make", "-s", "-C", str(ROOT), "install", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}",
            f"LOCK={tmp_path / 'lock'}"]
    env = {**os.environ, "FAKE_LOG": str(log)}
    makes = [subprocess.Popen(args, env=env) for _ in range(2)]  # `make serve` and `make test` at once
    assert [m.wait(timeout=120) for m in makes] == [0, 0]
    events = log.read_text().splitlines()
    assert len(events) == 6  # three pip steps, once: the second make found the venv installed
    for start, end in zip(events[0::2], events[1::2]):  # never two pip steps at the same time
        assert start.split()[0] == "start" and end == "end " + start.split()[1]
    assert (tmp_path / "venv" / ".installed").exists()
