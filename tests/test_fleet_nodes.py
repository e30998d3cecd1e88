"""Two `appliance serve` processes on one broker, one share group and one PostgreSQL cache.

One pair of nodes on a PostgreSQL of their own serves every test of this module (starting a
node costs seconds of CPU); the tests that kill the database and then a node run last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from appliance.client import RequestClient
from testkit.postgres import PostgresServer
from testkit.services import BrokerProcess, ServiceProcess, service_sections
from tests.mqtt_helpers import RawClient
from tests.test_pg_sync import wait_for


@dataclass
class Fleet:
    broker: BrokerProcess
    server: PostgresServer
    nodes: dict[str, ServiceProcess]

    @property
    def dsn(self) -> str:
        return self.server.dsn

    def ask(self, node: str, prompt: str, **fields: Any) -> dict[str, Any]:
        client = RequestClient(self.broker.settings(), self.nodes[node].topics)
        client.connect()
        try:
            body = client.request({"prompt": prompt, "duration_s": 1, "steps": 1, **fields},
                                  timeout_s=120).body
        finally:
            client.close()
        assert body["status"] == "ok", body
        return body

    def serves(self, node: str, key: str) -> bool:
        return self.nodes[node].http_bytes(f"/audio/{key}")[0] == 200

    def stored_keys(self, prompt: str) -> list[str]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT key FROM cache_items WHERE item->>'prompt' = %s",
                                (prompt,)).fetchall()
        return [row[0] for row in rows]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    broker = BrokerProcess.start(root / "broker")
    server = PostgresServer.create()  # killed by a test: not the session's shared server
    dsn = server.dsn
    nodes: dict[str, ServiceProcess] = {}
    try:
        for node_id in ("node-a", "node-b"):
            state = root / node_id
            state.mkdir()
            sections = service_sections(state, broker, models_dir)
            sections["node"] = {"id": node_id, "share_group": "fleet"}
            sections["cache"].update({"backend": "postgres", "postgres_dsn": dsn})
            nodes[node_id] = ServiceProcess.start(state, sections)
        for node in nodes.values():
            node.wait_ready()
        yield Fleet(broker, server, nodes)
    finally:
        for node in nodes.values():
            node.stop()
        broker.stop()
        server.remove()


def test_a_prompt_generated_on_a_is_an_exact_hit_on_b_and_a_removal_on_b_is_seen_on_a(fleet: Fleet) -> None:
    made = fleet.ask("node-a", "a kettle whistling in a cold kitchen")
    assert made["cached"] is False and made["worker"]
    wait_for(lambda: fleet.serves("node-b", made["key"]), 30)  # pushed to b's mirror by NOTIFY
    hit = fleet.ask("node-b", "A kettle whistling in a cold kitchen.")
    assert (hit["cached"], hit["match_type"], hit["key"]) == (True, "exact", made["key"])
    a, b = fleet.nodes["node-a"], fleet.nodes["node-b"]
    assert b.http_bytes(f"/audio/{made['key']}") == a.http_bytes(f"/audio/{made['key']}")

    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    removed = subprocess.run(
        [sys.executable, "-m", "appliance", "cache", "remove-pattern", "kettle", "--json",
         "--config", str(b.config_path)], env=env, capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["removed_count"] == 1
    wait_for(lambda: not fleet.serves("node-a", made["key"]), 30)  # a's mirror dropped it
    again = fleet.ask("node-a", "a kettle whistling in a cold kitchen")
    assert again["cached"] is False and again["key"] != made["key"]


def test_a_paraphrase_of_a_prompt_generated_on_a_is_a_semantic_hit_on_b(fleet: Fleet) -> None:
    made = fleet.ask("node-a", "a dog barking in the distance")
    assert made["cached"] is False
    wait_for(lambda: fleet.serves("node-b", made["key"]), 30)
    hit = fleet.ask("node-b", "a dog barks far away")
    assert (hit["cached"], hit["match_type"], hit["key"]) == (True, "semantic", made["key"])


def test_identical_prompts_at_both_nodes_at_once_are_both_answered_and_stored_once(fleet: Fleet) -> None:
    prompt = "a steam train leaving a station"
    with ThreadPoolExecutor(2) as pool:  # 12 steps: both look up long before either stores
        replies = list(pool.map(lambda node: fleet.ask(node, prompt, steps=12), ["node-a", "node-b"]))
    stored = fleet.stored_keys(prompt)
    assert len(stored) == 1
    generated = [r for r in replies if not r["cached"]]  # both, as nobody waits on a peer
    assert [r["stored"] for r in generated].count(True) == 1  # the second to commit stores nothing
    assert stored[0] in {r["key"] for r in replies if r["cached"] or r["stored"]}
    wait_for(lambda: fleet.serves("node-a", stored[0]) and fleet.serves("node-b", stored[0]), 30)
    again = fleet.ask("node-b", prompt)
    assert (again["cached"], again["key"]) == (True, stored[0])


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


def test_readiness_and_metric_follow_the_database_connection(fleet: Fleet) -> None:
    nodes = list(fleet.nodes.values())
    held = fleet.ask("node-a", "a clock ticking in an empty hall")
    wait_for(lambda: fleet.serves("node-b", held["key"]), 30)
    assert all(_readiness(n) == (200, "ready", "connected") and _database_up(n) == "1.0" for n in nodes)
    fleet.server.kill()  # -9: postmaster and backends at once
    wait_for(lambda: all(_database_up(n) == "0.0" for n in nodes), 30)
    for node in nodes:
        assert _readiness(node) == (200, "degraded", "lost")  # still serving from its mirror
        assert any("cache database is unreachable" in n for n in node.http_json("/readyz")[1]["notes"])
    assert fleet.ask("node-b", "a clock ticking in an empty hall")["cached"] is True
    fleet.server.start()
    wait_for(lambda: all(_database_up(n) == "1.0" for n in nodes), 30)
    assert all(_readiness(n) == (200, "ready", "connected") for n in nodes)


def test_a_node_killed_during_a_generation_leaves_its_fleet_request_to_the_other(fleet: Fleet) -> None:
    held = fleet.ask("node-a", "wind through tall grass")  # in both mirrors: served throughout
    wait_for(lambda: fleet.serves("node-b", held["key"]), 30)
    request_id = uuid.uuid4().hex
    reply_topic = f"devices/test/{request_id}"
    progress = RawClient(fleet.broker.host, fleet.broker.port, f"audiogen/+/progress/{request_id}")
    replies = RawClient(fleet.broker.host, fleet.broker.port, reply_topic)
    try:
        body = {"prompt": "a thunderstorm over the sea", "duration_s": 1, "steps": 30,
                "request_id": request_id}
        replies.publish("audiogen/request", json.dumps(body), response_topic=reply_topic,
                        correlation_data=b"storm")  # the fleet queue: the broker picks a node
        generating = progress.next(60).topic.split("/")[1]
        survivor = next(node for node in fleet.nodes if node != generating)
        fleet.nodes[generating].process.kill()  # -9, mid-generation, its request acknowledged
        fleet.nodes[generating].process.wait()

        assert fleet.ask(survivor, "wind through tall grass")["cached"] is True  # keeps serving
        answer = replies.next(120)
        assert answer.correlation_data == b"storm"
        assert answer.json()["status"] == "ok" and answer.json()["request_id"] == request_id
        assert "took over a fleet request" in fleet.nodes[survivor].log()
    finally:
        progress.close()
        replies.close()
