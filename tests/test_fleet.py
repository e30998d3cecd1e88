"""Two appliances share the fleet queue (``$share/<group>/<base>/request``).

A node that drains, or dies, must not keep a share of the fleet's requests: the shared
subscription lives on a clean session of its own, left at drain start, so the broker sends
every fleet request to a node that is there to answer it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.loadgen import burst
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker

FLEET_TOPIC = "audiogen/request"  # what devices publish to; each node takes its share


def _node(
    root: Path, broker: Broker, models_dir: Path, node_id: str
) -> tuple[Path, dict[str, dict[str, Any]]]:
    state = root / node_id
    state.mkdir()
    sections = service_sections(state, broker, models_dir)
    sections["node"] = {"id": node_id, "share_group": "fleet"}
    return state, sections


def _all_answered(broker: Broker, count: int) -> None:
    bodies = [{"prompt": "a fleet of wind chimes", "duration_s": 1, "steps": 1}] * count
    report = burst(broker.host, broker.port, FLEET_TOPIC, [bodies], window=count, timeout_s=30)
    assert (report.sent, report.lost, report.duplicated, report.unknown) == (count, 0, 0, 0), report
    assert set(report.outcomes) <= {"generated", "exact", "busy"}, report.outcomes


def test_fleet_requests_are_answered_after_one_node_drains_and_the_other_is_killed(
    tmp_path: Path, broker: Broker, models_dir: Path
) -> None:
    state_a, sections_a = _node(tmp_path, broker, models_dir, "node-a")
    state_b, sections_b = _node(tmp_path, broker, models_dir, "node-b")
    node_a = ServiceProcess.start(state_a, sections_a)
    node_b = ServiceProcess.start(state_b, sections_b)
    try:
        node_a.wait_ready()
        node_b.wait_ready()
        _all_answered(broker, 20)
        assert node_a.stop() == 0  # SIGTERM: the drain leaves the fleet queue first
        _all_answered(broker, 20)  # a departed node's session would keep half of these
        node_b.process.kill()  # kill -9: no drain at all
        node_b.process.wait()
        node_b = ServiceProcess.start(state_b, sections_b)
        node_b.wait_ready()
        _all_answered(broker, 20)
    finally:
        node_a.stop()
        node_b.stop()
