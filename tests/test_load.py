"""Bursts against the real service: every request answered exactly once; coalescing.

The full-size burst (5,000 requests) is bench/load.py; this is the same generator at a size
that keeps the suite short.
"""

from __future__ import annotations

import re
from pathlib import Path

from appliance.client import RequestClient
from appliance.loadgen import burst
from testkit.services import BrokerProcess, ServiceProcess, service_sections
from tests.conftest import Broker, Service

CACHED = ["rain on a tin roof", "a dog barking in the distance", "wind through pine trees"]
PARAPHRASES = ["a dog barks far away"]


def _prefill(service: Service, broker: Broker) -> None:
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        for prompt in CACHED:
            assert client.request({"prompt": prompt, "duration_s": 1}, timeout_s=120).body["status"] == "ok"
    finally:
        client.close()


def _generations(service: Service) -> float:
    _, metrics = service.http_bytes("/metrics")
    found = re.search(rb"^audiogen_generation_seconds_count (\S+)$", metrics, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def test_mixed_burst_from_several_clients_is_answered_exactly_once(service: Service, broker: Broker) -> None:
    _prefill(service, broker)
    per_client = []
    for client in range(4):
        bodies = []
        for index in range(150):
            kind = index % 10
            if kind < 5:
                bodies.append({"prompt": CACHED[index % len(CACHED)], "duration_s": 1})
            elif kind < 7:
                bodies.append({"prompt": PARAPHRASES[0], "duration_s": 1})
            else:
                bodies.append({"prompt": f"miss {client}-{index}", "duration_s": 1, "steps": 2})
        per_client.append(bodies)
    report = burst(broker.host, broker.port, service.topics.request, per_client, window=32, timeout_s=240)
    assert (report.sent, report.lost, report.duplicated, report.unknown) == (600, 0, 0, 0), report
    assert report.outcomes["exact"] == 300, report.outcomes
    assert set(report.outcomes) <= {"exact", "semantic", "generated", "busy"}, report.outcomes
    assert report.outcomes["semantic"] >= 120, "every paraphrase of a cached prompt is a semantic hit"
    assert report.outcomes["generated"] >= 1
    status, _ = service.http_json("/readyz")
    assert status == 200


def test_identical_prompts_in_flight_are_generated_once(service: Service, broker: Broker) -> None:
    before = _generations(service)
    body = {"prompt": "a cuckoo clock striking noon", "duration_s": 2, "steps": 40}
    report = burst(broker.host, broker.port, service.topics.request, [[body]] * 8, window=1, timeout_s=120)
    assert (report.sent, report.lost, report.duplicated) == (8, 0, 0), report
    assert report.outcomes == {"generated": 8}, report.outcomes
    assert _generations(service) - before == 1, "eight identical requests must cost one generation"


def test_an_unthrottled_burst_on_a_stock_broker_is_answered_exactly_once(
    tmp_path: Path, models_dir: Path
) -> None:
    """Devices keep no window; mosquitto at its defaults drops a subscriber's backlog beyond 1,000
    messages. 1,600 requests at once: the intake must take them in as fast as they come."""
    broker = BrokerProcess.start(tmp_path / "broker", stock=True)
    service = ServiceProcess.start(tmp_path, service_sections(tmp_path, broker, models_dir))
    try:
        service.wait_ready()
        _prefill(service, broker)
        bodies: list[dict[str, object]] = []
        for index in range(400):
            kind = index % 20
            if kind < 17:
                bodies.append({"prompt": CACHED[index % len(CACHED)], "duration_s": 1})
            elif kind < 19:
                bodies.append({"prompt": "", "duration_s": 1})
            else:  # one new sound: 80 identical requests wait on one generation (cap 64)
                bodies.append({"prompt": "a brand new sound", "duration_s": 1, "steps": 1})
        per_client = [bodies] * 4
        report = burst(broker.host, broker.port, service.topics.request, per_client, window=10**6,
                       timeout_s=240)
    finally:
        service.stop()
        broker.stop()
    assert (report.sent, report.lost, report.duplicated, report.unknown) == (1600, 0, 0, 0), report.outcomes
    assert report.outcomes["exact"] + report.outcomes["busy"] >= 1360, report.outcomes
    assert report.outcomes["invalid_request"] == 160, report.outcomes
    assert 1 <= report.outcomes["generated"] <= 64, "identical requests beyond the cap get busy"
