"""Packaging: entry points load, the Docker files say what the README says."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_console_entry_points_load() -> None:
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert "flexsn-cache" in scripts
    main = scripts["flexsn-cache"].load()
    assert callable(main)


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


def test_dockerfile_installs_the_service_and_runs_it() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'pip install "/src[service]" "triton==3.6.0" "numpy<2.4"' in text
    assert 'CMD ["flexsn-cache", "serve"]' in text
    assert "FLEXSN_SERVICE_STORE=disk:/data/store" in text
    for folder in ("flexsn_core", "service", "client"):
        assert f"COPY {folder} /src/{folder}" in text
