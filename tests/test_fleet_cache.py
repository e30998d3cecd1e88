"""One appliance on a PostgreSQL cache that is killed and restarted (two nodes: tests/test_fleet_nodes.py)."""

from __future__ import annotations

from pathlib import Path

from appliance.pg_server import PostgresServer
from appliance.testing import ServiceProcess, service_sections
from tests.conftest import Broker
from tests.test_pg_sync import wait_for


def _database_up(node: ServiceProcess) -> str:
    """The value of ``audiogen_cache_database_up`` in the node's /metrics."""
    status, body = node.http_bytes("/metrics")
    assert status == 200
    lines = [line for line in body.decode().splitlines() if line.startswith("audiogen_cache_database_up ")]
    assert len(lines) == 1
    return lines[0].split()[1]


def _readiness(node: ServiceProcess) -> tuple[int, str, str]:
    status, body = node.http_json("/readyz")
    return status, body["status"], body["cache"].get("database", "")


def test_readiness_and_metric_follow_the_database_connection(
    tmp_path: Path, broker: Broker, models_dir: Path, own_postgres: PostgresServer
) -> None:
    sections = service_sections(tmp_path, broker, models_dir)
    sections["cache"].update({"backend": "postgres", "postgres_dsn": own_postgres.dsn})
    node = ServiceProcess.start(tmp_path, sections)
    try:
        node.wait_ready()
        assert _readiness(node) == (200, "ready", "connected") and _database_up(node) == "1.0"
        own_postgres.kill()  # -9: postmaster and backends at once
        wait_for(lambda: _database_up(node) == "0.0", 30)
        assert _readiness(node) == (200, "degraded", "lost")  # still serving from its mirror
        assert any("cache database is unreachable" in n for n in node.http_json("/readyz")[1]["notes"])
        own_postgres.start()
        wait_for(lambda: _database_up(node) == "1.0", 30)
        assert _readiness(node) == (200, "ready", "connected")
    finally:
        node.stop()
