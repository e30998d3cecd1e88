"""The walking skeleton, end to end: real broker, real `appliance serve`, real worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from appliance.audio import decode_wav
from appliance.client import RequestClient
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker, Service
from tests.mqtt_helpers import RawClient


def _client(service: Service, broker: Broker, protocol: str = "5") -> RequestClient:
    client = RequestClient(broker.settings(protocol), service.topics)
    client.connect()
    return client


def test_mqtt5_request_generates_then_repeats_as_exact_hit(service: Service, broker: Broker) -> None:
    client = _client(service, broker)
    try:
        first = client.request({"prompt": "rain on a tin roof", "duration_s": 4, "deliver": "both"},
                               want_audio=True)
        again = client.request({"prompt": "Rain on a  tin roof.", "duration_s": 4, "deliver": "mqtt"},
                               want_audio=True)
    finally:
        client.close()
    body = first.body
    assert body["status"] == "ok", body
    assert body["cached"] is False and body["cache_type"] == "new_generation"
    for field in ("clap_similarity", "duration_s", "generation_timestamp", "is_loop", "model", "steps",
                  "guidance_scale", "requested_duration_s", "candidates", "tau_accept_new", "request_id",
                  "key", "worker", "gpu", "queue_wait_s", "generation_s"):
        assert field in body, field
    assert body["model"] == "tiny-tangoflux" and body["steps"] == 4 and body["gpu"] == "cpu"
    assert first.progress and first.progress[-1] == (4, 4)
    assert first.audio is not None
    waveform, rate = decode_wav(first.audio)
    assert rate == 44100
    assert waveform.shape[0] == 2
    assert abs(waveform.shape[1] / rate - 4.0) <= 0.05 * 4.0
    status, over_http = service.http_bytes(f"/audio/{body['key']}")
    assert status == 200 and over_http == first.audio

    hit = again.body
    assert hit["status"] == "ok" and hit["cached"] is True
    assert hit["match_type"] == "exact" and hit["cache_type"] == "exact"
    assert hit["key"] == body["key"] and hit["similarity"] == 1.0 and hit["age_s"] >= 0
    assert hit["current_config"]["steps"] == 4
    assert again.audio == first.audio
    assert not again.progress, "an exact hit must not touch the worker"


def test_mqtt311_reply_to_request_is_answered(service: Service, broker: Broker) -> None:
    client = _client(service, broker, protocol="3.1.1")
    try:
        reply = client.request({"prompt": "a distant church bell", "duration_s": 2, "deliver": "mqtt"},
                               want_audio=True)
    finally:
        client.close()
    assert reply.body["status"] == "ok", reply.body
    assert reply.audio is not None
    waveform, rate = decode_wav(reply.audio)
    assert rate == 44100 and abs(waveform.shape[1] / rate - 2.0) <= 0.1


MALFORMED: list[tuple[str, bytes, str, str | None]] = [
    ("not json", b"rain please", "invalid_json", None),
    ("json array", b"[1, 2]", "invalid_json", None),
    ("json string", b'"rain"', "invalid_json", None),
    ("not utf-8", b'{"prompt": "\xff\xfe"}', "invalid_json", None),
    ("duplicate key", b'{"prompt": "a", "prompt": "b"}', "invalid_json", None),
    ("NaN literal", b'{"prompt": "a", "duration_s": NaN}', "invalid_json", None),
    ("deep nesting", b"[" * 20000 + b"]" * 20000, "invalid_json", None),
    ("missing prompt", b"{}", "invalid_request", "prompt"),
    ("empty prompt", b'{"prompt": ""}', "invalid_request", "prompt"),
    ("blank prompt", b'{"prompt": "   \\t "}', "invalid_request", "prompt"),
    ("prompt too long", json.dumps({"prompt": "x" * 501}).encode(), "invalid_request", "prompt"),
    ("prompt not a string", b'{"prompt": 42}', "invalid_request", "prompt"),
    ("control character", b'{"prompt": "rain\\u0007"}', "invalid_request", "prompt"),
    ("unknown field", b'{"prompt": "rain", "colour": "blue"}', "invalid_request", "colour"),
    ("zero duration", b'{"prompt": "rain", "duration_s": 0}', "invalid_request", "duration_s"),
    ("negative duration", b'{"prompt": "rain", "duration_s": -3}', "invalid_request", "duration_s"),
    ("duration too long", b'{"prompt": "rain", "duration_s": 31}', "invalid_request", "duration_s"),
    ("infinite duration", b'{"prompt": "rain", "duration_s": 1e400}', "invalid_request", "duration_s"),
    ("duration as string", b'{"prompt": "rain", "duration_s": "4"}', "invalid_request", "duration_s"),
    ("duration as bool", b'{"prompt": "rain", "duration_s": true}', "invalid_request", "duration_s"),
    ("zero steps", b'{"prompt": "rain", "steps": 0}', "invalid_request", "steps"),
    ("too many steps", b'{"prompt": "rain", "steps": 100000}', "invalid_request", "steps"),
    ("fractional steps", b'{"prompt": "rain", "steps": 2.5}', "invalid_request", "steps"),
    ("negative guidance", b'{"prompt": "rain", "guidance_scale": -1}', "invalid_request", "guidance_scale"),
    ("zero candidates", b'{"prompt": "rain", "candidates": 0}', "invalid_request", "candidates"),
    ("too many candidates", b'{"prompt": "rain", "candidates": 99}', "invalid_request", "candidates"),
    ("loop not bool", b'{"prompt": "rain", "loop": "yes"}', "invalid_request", "loop"),
    ("unknown delivery", b'{"prompt": "rain", "deliver": "fax"}', "invalid_request", "deliver"),
    ("unknown format", b'{"prompt": "rain", "format": "aiff"}', "invalid_request", "format"),
    ("negative seed", b'{"prompt": "rain", "seed": -1}', "invalid_request", "seed"),
    ("bad request id", b'{"prompt": "rain", "request_id": "has spaces"}', "invalid_request", "request_id"),
    ("wildcard reply_to", b'{"prompt": "rain", "reply_to": "a/+/b"}', "invalid_request", "reply_to"),
    ("oversized payload", json.dumps({"prompt": "rain", "pad": "x" * 70000}).encode(),
     "payload_too_large", None),
]


def test_malformed_requests_each_get_a_specific_error(service: Service, broker: Broker) -> None:
    assert len(MALFORMED) >= 20
    raw = RawClient(broker.host, broker.port, "test/replies/#")
    good = _client(service, broker)
    try:
        for index, (name, payload, code, field) in enumerate(MALFORMED):
            correlation = f"c{index}".encode()
            raw.publish(service.topics.request, payload, response_topic=f"test/replies/{index}",
                        correlation_data=correlation)
            reply = raw.next(timeout_s=10)
            body = reply.json()
            assert reply.topic == f"test/replies/{index}", name
            assert reply.correlation_data == correlation, name
            assert body["status"] == "error", name
            assert body["code"] == code, (name, body)
            if field is not None:
                assert body.get("field") == field, (name, body)
            assert body["message"], name
            if index % 8 == 0:  # the service keeps answering good requests throughout
                ok = good.request({"prompt": f"wind chimes number {index}", "duration_s": 1})
                assert ok.body["status"] == "ok", ok.body
    finally:
        raw.close()
        good.close()
    status, _ = service.http_json("/healthz")
    assert status == 200 and service.process.poll() is None


def test_reply_to_of_a_311_request_carries_the_error(service: Service, broker: Broker) -> None:
    raw = RawClient(broker.host, broker.port, "device/7/#")
    try:
        raw.publish(service.topics.request, json.dumps(
            {"prompt": "", "reply_to": "device/7/reply", "request_id": "r-7"}))
        reply = raw.next(timeout_s=10)
    finally:
        raw.close()
    assert reply.topic == "device/7/reply"
    assert reply.json() == {"request_id": "r-7", "status": "error", "code": "invalid_request",
                            "message": "prompt: must not be empty", "field": "prompt"}


def test_worker_killed_mid_generation_answers_worker_failed_then_recovers(
    service: Service, broker: Broker
) -> None:
    _, health = service.http_json("/healthz")
    first_pid = health["workers"][0]["pid"]
    raw = RawClient(broker.host, broker.port, f"{service.topics.prefix}/progress/long-1")
    client = _client(service, broker)
    try:
        replies: list[dict[str, object]] = []

        def send_long() -> None:
            replies.append(client.request({"prompt": "a very long thunderstorm", "duration_s": 10,
                                           "steps": 1000, "request_id": "long-1"}, timeout_s=60).body)

        sender = threading.Thread(target=send_long)
        sender.start()
        raw.next(timeout_s=30)  # generation is under way
        os.kill(first_pid, signal.SIGKILL)
        sender.join(timeout=60)
        assert replies and replies[0]["status"] == "error", replies
        assert replies[0]["code"] == "worker_failed"
        after = client.request({"prompt": "birds after the storm", "duration_s": 1}, timeout_s=120)
        assert after.body["status"] == "ok", after.body
    finally:
        raw.close()
        client.close()
    _, health = service.http_json("/healthz")
    worker = health["workers"][0]
    assert worker["pid"] != first_pid and worker["restarts"] == 1
    _, metrics = service.http_bytes("/metrics")
    assert b'audiogen_worker_restarts_total{reason="worker_failed",worker="cpu"} 1.0' in metrics


def test_metrics_and_health_endpoints(service: Service, broker: Broker) -> None:
    status, ready = service.http_json("/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["model_tiny"] is True
    status, _ = service.http_bytes("/audio/../../etc/passwd")
    assert status == 404
    status, _ = service.http_bytes("/audio/" + "0" * 32)
    assert status == 404
    _, metrics = service.http_bytes("/metrics")
    text = metrics.decode()
    for name in ("audiogen_requests_total", "audiogen_cache_lookups_total", "audiogen_worker_ready",
                 "audiogen_mqtt_connected 1.0", "audiogen_build_info"):
        assert name in text, name


def test_sigterm_drains_and_publishes_offline(service: Service, broker: Broker) -> None:
    raw = RawClient(broker.host, broker.port, service.topics.status)
    try:
        assert raw.next(timeout_s=5).payload == b"online"  # retained
        started = time.monotonic()
        assert service.stop() == 0
        assert time.monotonic() - started < 30
        assert raw.next(timeout_s=5).payload == b"offline"
    finally:
        raw.close()


def test_busy_when_queue_is_full(tmp_path: Path, broker: Broker, models_dir: Path) -> None:
    sections = service_sections(tmp_path, broker, models_dir)
    sections["workers"]["queue_size"] = 1
    svc = ServiceProcess.start(tmp_path, sections)
    raw = RawClient(broker.host, broker.port, "busy/replies/#")
    try:
        svc.wait_ready()
        for index in range(4):
            raw.publish(svc.topics.request, json.dumps(
                {"prompt": f"long drone {index}", "steps": 150, "duration_s": 4}),
                response_topic=f"busy/replies/{index}")
        codes = [raw.next(timeout_s=10).json().get("code") for _ in range(2)]
        assert codes == ["busy", "busy"]
    finally:
        raw.close()
        svc.stop()
