"""Shared fixtures: a real mosquitto, a private PostgreSQL, the tiny model, a real `appliance serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.postgres import PostgresServer, fresh_database
from testkit.services import BrokerProcess, ServiceProcess, service_sections

Broker = BrokerProcess
Service = ServiceProcess


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A private mosquitto on a free loopback port, configured as the embedded one is."""
    b = BrokerProcess.start(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the tiny TangoFlux, built once per test session."""
    from appliance.models.tiny import build_tiny_tangoflux

    root = tmp_path_factory.mktemp("models")
    build_tiny_tangoflux(root / "tiny-tangoflux")
    return root


@pytest.fixture
def service(tmp_path: Path, broker: BrokerProcess, models_dir: Path) -> Iterator[ServiceProcess]:
    """`appliance serve` as a real process, with a real worker, against the test broker."""
    svc = ServiceProcess.start(tmp_path, service_sections(tmp_path, broker, models_dir))
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL (initdb in a temp dir, 127.0.0.1, free port), shared by the session."""
    server = PostgresServer.create()
    yield server
    server.remove()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped afterwards."""
    yield from fresh_database(postgres_server)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL for one test alone (one that kills it with -9)."""
    server = PostgresServer.create()
    yield server
    server.remove()
