"""/metrics, /readyz, the MQTT stats summary and `appliance status` of a real running service.

One service answers a generation, an exact hit, a semantic hit and a malformed request; each
counter must move by exactly what those four requests explain, and `promtool check metrics`
must accept the live scrape (not only a fresh registry, as tests/test_dashboards.py checks).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.client import RequestClient
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker, Service
from tests.mqtt_helpers import RawClient
from tests.test_dashboards import run_promtool

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROOT = Path(__file__).resolve().parent.parent  # `python -m appliance` run here imports this checkout


def scrape(service: Service) -> tuple[str, Samples]:
    status, body = service.http_bytes("/metrics")
    assert status == 200
    text = body.decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def live(tmp_path: Path, broker: Broker, models_dir: Path) -> Iterator[Service]:
    """The standard test service, with a stats summary every half second."""
    sections = service_sections(tmp_path, broker, models_dir)
    sections["stats"] = {"interval_s": 0.5}
    svc = ServiceProcess.start(tmp_path, sections)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def _ask(client: RequestClient, prompt: str) -> dict[str, object]:
    reply = client.request({"prompt": prompt, "duration_s": 2}, timeout_s=120)
    assert reply.body["status"] == "ok", reply.body
    return reply.body


def test_counters_move_with_hits_generation_and_errors(live: Service, broker: Broker) -> None:
    _, before = scrape(live)
    client = RequestClient(broker.settings(), live.topics)
    raw = RawClient(broker.host, broker.port, "live/errors/#")
    client.connect()
    try:
        generated = _ask(client, "a dog barking in the distance")
        exact = _ask(client, "a dog barking in the distance")
        semantic = _ask(client, "a dog barks far away")
        raw.publish(live.topics.request, b"{not json", response_topic="live/errors/1")
        error = raw.next(timeout_s=30).json()
    finally:
        client.close()
        raw.close()
    assert generated["cached"] is False and generated["stored"] is True
    assert exact["match_type"] == "exact" and semantic["match_type"] == "semantic"
    assert error["status"] == "error" and error["code"] == "invalid_json"
    text, after = scrape(live)

    for outcome in ("generated", "hit", "semantic_hit", "invalid_json"):
        assert moved(before, after, "audiogen_requests_total", outcome=outcome, source="mqtt5") == 1, outcome
    for result in ("exact", "semantic", "miss"):
        assert moved(before, after, "audiogen_cache_lookups_total", result=result) == 1, result
    for path in ("generated", "hit", "semantic_hit", "error"):
        assert moved(before, after, "audiogen_request_duration_seconds_count", path=path) == 1, path
    assert moved(before, after, "audiogen_malformed_requests_total", code="invalid_json") == 1
    assert moved(before, after, "audiogen_generation_seconds_count") == 1
    assert moved(before, after, "audiogen_generation_seconds_sum") > 0
    assert moved(before, after, "audiogen_queue_wait_seconds_count") == 1
    assert moved(before, after, "audiogen_semantic_similarity_count") == 1
    assert 0.6 <= moved(before, after, "audiogen_semantic_similarity_sum") < 1.0
    # the tiny CLAP scores every generation; its scores mean nothing, so the gate stays off
    assert moved(before, after, "audiogen_clap_similarity_count") == 1
    assert moved(before, after, "audiogen_quality_gate_rejections_total") == 0
    assert moved(before, after, "audiogen_cache_items") == 1
    assert value(after, "audiogen_cache_bytes") == generated["audio_bytes"]
    assert value(after, "audiogen_cache_evictions_total") == 0
    assert value(after, "audiogen_cache_store_failures_total") == 0
    # 4 requests in; 4 replies, the progress messages and the stats summaries out
    assert moved(before, after, "audiogen_mqtt_messages_received_total") == 4
    assert moved(before, after, "audiogen_mqtt_messages_sent_total") >= 4 + 4  # + progress steps
    assert value(after, "audiogen_mqtt_connected") == 1
    assert value(after, "audiogen_mqtt_reconnects_total") == 0
    assert value(after, "audiogen_queue_depth") == 0
    assert value(after, "audiogen_queue_capacity") == live.settings.workers.queue_size
    assert value(after, "audiogen_cache_max_items") == live.settings.cache.max_items
    assert value(after, "audiogen_cache_max_bytes") == live.settings.cache.max_bytes
    worker = {"worker": "cpu", "device": "cpu"}
    assert value(after, "audiogen_worker_up", **worker) == 1
    assert value(after, "audiogen_worker_ready", **worker) == 1
    assert value(after, "audiogen_model_load_seconds", **worker) > 0
    assert "audiogen_worker_restarts_total{" not in text
    assert "audiogen_worker_gpu_memory_bytes{" not in text, "a CPU worker reports no GPU memory"
    assert 0 < value(after, "audiogen_start_time_seconds") <= time.time()
    assert any(name == "audiogen_build_info" and dict(labels).get("version")
               for name, labels in after)
    series = [line for line in text.splitlines() if not line.startswith("#")]
    assert not [line for line in series if "dog" in line or "bark" in line], "prompt text in a label"

    result = run_promtool("check", "metrics", stdin=text)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"promtool check metrics on the live scrape:\n{output}"

    _check_stats_summary(live, broker)
    _check_status_command(live)


def _check_stats_summary(service: Service, broker: Broker) -> None:
    """The retained summary catches up with the four requests (it is published every 0.5 s)."""
    topic = f"{service.topics.prefix}/stats"
    raw = RawClient(broker.host, broker.port, topic)
    try:
        while True:
            try:
                received = raw.next(timeout_s=10)
            except queue.Empty:
                pytest.fail("no stats summary with the four requests arrived")
            assert received.topic == topic
            stats = received.json()
            if stats["requests"] >= 4:
                break
    finally:
        raw.close()
    assert stats["node"] == "test-node" and stats["requests"] == 4
    cache = stats["cache"]
    assert cache["items"] == 1 and cache["bytes"] > 0 and cache["evictions"] == 0
    assert (cache["exact_hits"], cache["semantic_hits"], cache["misses"]) == (1, 1, 1)
    assert cache["hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert stats["workers"] == {"ready": 1, "configured": 1}
    assert stats["uptime_s"] > 0 and stats["mqtt_connected"] is True and stats["queue_depth"] == 0


def _check_status_command(service: Service) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--config", str(service.config_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "status: ready" in lines
    workers = [line for line in lines if line.startswith("worker cpu (device cpu): ready, pid ")]
    assert len(workers) == 1, result.stdout
    assert "model tiny-tangoflux" in workers[0] and "restarts 0" in workers[0]
    notes = [line for line in lines if line.startswith("NOTE: ")]
    assert any("TINY random-weight TangoFlux" in note for note in notes), result.stdout
    assert any("random-weight CLAP scorer" in note for note in notes), result.stdout

    as_json = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--json", "--config", str(service.config_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    body = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and body["status"] == "ready" and body["reasons"] == []
    assert body["workers"][0]["state"] == "ready" and body["workers"][0]["scorer_random"] is True
    assert len(body["notes"]) == 2


def wait_readyz(service: Service, want_status: int) -> dict[str, object]:
    """Poll /readyz until it answers ``want_status`` (the reconnect back-off is at most 2 s)."""
    deadline = time.monotonic() + 60
    while True:
        status, body = service.http_json("/readyz")
        if status == want_status:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz stayed {status}: {body}")
        time.sleep(0.1)


def test_readyz_follows_the_broker_connection(service: Service, broker: Broker) -> None:
    assert wait_readyz(service, 200)["status"] == "ready"
    broker.stop()
    body = wait_readyz(service, 503)
    assert body["status"] == "not_ready" and body["reasons"] == ["not connected to the broker"]
    _, down = scrape(service)
    assert value(down, "audiogen_mqtt_connected") == 0
    status, health = service.http_json("/healthz")
    assert status == 200 and health["status"] == "ok", "liveness does not depend on the broker"

    broker.restart()  # same port: the service reconnects by itself
    body = wait_readyz(service, 200)
    assert body["status"] == "ready" and body["reasons"] == []
    _, up = scrape(service)
    assert value(up, "audiogen_mqtt_connected") == 1
    assert value(up, "audiogen_mqtt_reconnects_total") == 1

    client = RequestClient(broker.settings(), service.topics)  # and it serves again
    client.connect()
    try:
        assert _ask(client, "wind through pine trees")["cached"] is False
    finally:
        client.close()
