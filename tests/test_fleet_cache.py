"""Appliances on one PostgreSQL cache, as real `appliance serve` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from appliance.client import RequestClient
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


def _ask(node: ServiceProcess, broker: Broker, prompt: str) -> dict[str, Any]:
    client = RequestClient(broker.settings(), node.topics)
    client.connect()
    try:
        body = client.request({"prompt": prompt, "duration_s": 1, "steps": 1}, timeout_s=120).body
    finally:
        client.close()
    assert body["status"] == "ok", body
    return body


def _serves(node: ServiceProcess, key: str) -> bool:
    """Whether the node's mirror holds the item (``/audio/<key>`` reads it)."""
    return node.http_bytes(f"/audio/{key}")[0] == 200


def test_two_nodes_share_hits_and_removals_through_the_database(
    tmp_path: Path, broker: Broker, models_dir: Path, postgres_dsn: str
) -> None:
    nodes = []
    for node_id in ("node-a", "node-b"):
        state = tmp_path / node_id
        state.mkdir()
        sections = service_sections(state, broker, models_dir)
        sections["node"] = {"id": node_id, "share_group": "fleet"}
        sections["cache"].update({"backend": "postgres", "postgres_dsn": postgres_dsn})
        nodes.append(ServiceProcess.start(state, sections))
    a, b = nodes
    try:
        a.wait_ready()
        b.wait_ready()
        made = _ask(a, broker, "a kettle whistling in a cold kitchen")
        assert made["cached"] is False and made["worker"]
        wait_for(lambda: _serves(b, made["key"]), 30)  # pushed to b's mirror by NOTIFY
        hit = _ask(b, broker, "A kettle whistling in a cold kitchen.")
        assert (hit["cached"], hit["match_type"], hit["key"]) == (True, "exact", made["key"])
        assert b.http_bytes(f"/audio/{made['key']}") == a.http_bytes(f"/audio/{made['key']}")

        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        removed = subprocess.run(
            [sys.executable, "-m", "appliance", "cache", "remove-pattern", "kettle", "--json",
             "--config", str(b.config_path)], env=env, capture_output=True, text=True, timeout=60)
        assert removed.returncode == 0, removed.stderr
        assert json.loads(removed.stdout)["removed_count"] == 1
        wait_for(lambda: not _serves(a, made["key"]), 30)  # a's mirror dropped it
        again = _ask(a, broker, "a kettle whistling in a cold kitchen")
        assert again["cached"] is False and again["key"] != made["key"]
    finally:
        a.stop()
        b.stop()
