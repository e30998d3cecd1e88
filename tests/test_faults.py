"""Fault injection against the real service: worker crashes and hangs, broker restarts.

Each test drives a real ``appliance serve`` with a real worker subprocess over a real
mosquitto; the faults are real signals to real processes. docs/reliability.md lists them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.cache.store import CacheStore
from appliance.mqtt import enable_tcp_nodelay
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker, Service
from tests.mqtt_helpers import RawClient

LONG = {"duration_s": 10, "steps": 1000}  # ~10 s on the tiny model: long enough to be hit


def _worker(service: Service) -> dict[str, Any]:
    _, health = service.http_json("/healthz")
    worker: dict[str, Any] = health["workers"][0]
    return worker


def _wait_worker_ready(service: Service, *, other_than: int | None, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker = _worker(service)
        if worker["state"] == "ready" and worker["pid"] != other_than:
            return worker
        time.sleep(0.05)
    raise AssertionError(f"worker not back within {timeout_s} s: {_worker(service)}")


KILLS = 8  # each costs a worker restart (~5 s): enough to show no leak or drift, in under a minute


def test_worker_killed_again_and_again_answers_each_and_comes_back(service: Service, broker: Broker) -> None:
    prefix = service.topics.prefix
    device = RawClient(broker.host, broker.port, "faults/replies/#")
    progress = RawClient(broker.host, broker.port, f"{prefix}/progress/#")
    replies: dict[str, dict[str, Any]] = {}
    try:
        worker = _wait_worker_ready(service, other_than=None)
        for attempt in range(KILLS):
            request_id = f"kill-{attempt}"
            device.publish(service.topics.request,
                           json.dumps({"prompt": f"thunder rolling {attempt}", "request_id": request_id,
                                       **LONG}),
                           response_topic=f"faults/replies/{request_id}")
            assert progress.next(timeout_s=30).topic.endswith(request_id)  # it is generating
            os.kill(worker["pid"], signal.SIGKILL)
            reply = device.next(timeout_s=30)
            replies[reply.topic.rsplit("/", 1)[-1]] = reply.json()
            worker = _wait_worker_ready(service, other_than=worker["pid"])
            while not progress.messages.empty():  # progress sent before the kill landed
                progress.messages.get_nowait()
        time.sleep(0.5)
        assert device.messages.empty(), "a request was answered twice"
        after = _ask(device, service, "birds after the storm", "after-1")
    finally:
        device.close()
        progress.close()
    assert sorted(replies) == sorted(f"kill-{i}" for i in range(KILLS))
    assert {body["code"] for body in replies.values()} == {"worker_failed"}
    assert after["status"] == "ok" and after["cached"] is False
    assert worker["restarts"] == KILLS
    cache_dir = service.settings.cache.dir
    store = CacheStore(cache_dir if cache_dir.is_absolute() else service.config_path.parent / cache_dir)
    try:
        assert store.verify().ok, "the crashes must not damage the cache"
    finally:
        store.close()
    _, metrics = service.http_bytes("/metrics")
    restarts = f'audiogen_worker_restarts_total{{reason="worker_failed",worker="cpu"}} {KILLS}.0'
    assert restarts.encode() in metrics
    status, _ = service.http_json("/readyz")
    assert status == 200


def _ask(device: RawClient, service: Service, prompt: str, request_id: str, **fields: Any) -> dict[str, Any]:
    device.publish(service.topics.request,
                   json.dumps({"prompt": prompt, "request_id": request_id, "duration_s": 1, **fields}),
                   response_topic=f"faults/replies/{request_id}")
    reply = device.next(timeout_s=60)
    while reply.topic.endswith("/audio"):  # a clip delivered over MQTT comes before its reply
        reply = device.next(timeout_s=10)
    assert reply.topic.endswith(request_id), reply.topic
    return reply.json()


def test_hung_worker_is_killed_at_its_timeout_and_restarted(
    tmp_path: Path, broker: Broker, models_dir: Path
) -> None:
    sections = service_sections(tmp_path, broker, models_dir)
    # short, but above a fresh worker's slow first step on a loaded machine
    sections["workers"]["generation_timeout_s"] = 6.0
    service = ServiceProcess.start(tmp_path, sections)
    device = RawClient(broker.host, broker.port, "faults/replies/#")
    progress = RawClient(broker.host, broker.port, f"{service.topics.prefix}/progress/#")
    try:
        service.wait_ready()
        worker = _wait_worker_ready(service, other_than=None)
        device.publish(service.topics.request,
                       json.dumps({"prompt": "a hum that never ends", "request_id": "hang-1", **LONG}),
                       response_topic="faults/replies/hang-1")
        progress.next(timeout_s=30)
        os.kill(worker["pid"], signal.SIGSTOP)  # alive, silent: a hang
        started = time.monotonic()
        reply = device.next(timeout_s=30).json()
        waited = time.monotonic() - started
        restarted = _wait_worker_ready(service, other_than=worker["pid"])
        after = _ask(device, service, "a short chime", "after-hang")
    finally:
        device.close()
        progress.close()
        service.stop()
    assert reply["request_id"] == "hang-1" and reply["code"] == "timeout", reply
    assert waited < 20, "the hang must be detected by the generation timeout, not by luck"
    assert restarted["restarts"] == 1
    assert after["status"] == "ok", after


class _PersistentDevice:
    """An MQTT 5 device with a persistent session: QoS 1 survives a broker outage."""

    def __init__(self, broker: Broker, reply_filter: str) -> None:
        self.replies: list[dict[str, Any]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-persistent",
                                  protocol=paho.MQTTv5)
        self.client.on_socket_open = enable_tcp_nodelay
        self.client.on_message = lambda c, u, m: self.replies.append(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_filter, qos=1)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=properties)
        self.client.loop_start()

    def request(self, topic: str, body: dict[str, Any], reply_topic: str) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = reply_topic
        self.client.publish(topic, json.dumps(body), qos=1, properties=properties)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_restart_with_requests_in_flight_loses_nothing_and_answers_once(
    tmp_path: Path, models_dir: Path
) -> None:
    broker = Broker.start(tmp_path / "broker", extra_config=(
        f"persistence true\npersistence_location {tmp_path / 'broker'}/\nautosave_interval 1\n"))
    service = ServiceProcess.start(tmp_path, service_sections(tmp_path, broker, models_dir))
    status = None
    try:
        service.wait_ready()
        device = _PersistentDevice(broker, "faults/replies/#")
        time.sleep(0.3)
        request = service.topics.request
        device.request(request, {"prompt": "waves on pebbles", "request_id": "before",
                                 "duration_s": 10, "steps": 100}, "faults/replies/before")
        time.sleep(0.5)  # generating when the broker goes
        broker.stop()
        device.request(request, {"prompt": "gulls over the harbour", "request_id": "during",
                                 "duration_s": 1}, "faults/replies/during")  # queued by the device
        time.sleep(1.0)
        broker.restart()
        deadline = time.monotonic() + 180  # generous: a loaded CI machine is slow
        while len(device.replies) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # anything answered twice would arrive now
        device.close()
        status = RawClient(broker.host, broker.port, service.topics.status)
        online = status.next(timeout_s=5).payload
        ready_code, _ = service.http_json("/readyz")
    finally:
        if status is not None:
            status.close()
        service.stop()
        broker.stop()
    answered = sorted(str(reply["request_id"]) for reply in device.replies)
    assert answered == ["before", "during"], (device.replies, service.log()[-4000:])
    assert all(reply["status"] == "ok" for reply in device.replies), device.replies
    assert online == b"online", "the retained status must be republished after the reconnect"
    assert ready_code == 200
    assert "connected to broker" in service.log()


def test_a_cache_that_cannot_be_written_still_answers_every_request(service: Service, broker: Broker) -> None:
    audio_dir = service.settings.cache.dir
    if not audio_dir.is_absolute():
        audio_dir = service.config_path.parent / audio_dir
    audio_dir = audio_dir / "audio"
    shutil.rmtree(audio_dir)
    audio_dir.write_bytes(b"")  # every audio write now fails, as on a full or broken disk
    device = RawClient(broker.host, broker.port, "faults/replies/#")
    try:
        device.publish(service.topics.request,  # deliver: url, by default
                       json.dumps({"prompt": "a creaking door", "request_id": "nospace-1", "duration_s": 1}),
                       response_topic="faults/replies/nospace-1")
        audio = device.next(timeout_s=60)  # the audio goes first, then the reply naming its topic
        first = device.next(timeout_s=10).json()
        second = _ask(device, service, "a creaking door", "nospace-2")
    finally:
        device.close()
    assert first["status"] == "ok" and first["stored"] is False, first
    assert "audio_url" not in first, "no URL can serve a clip that is not in the cache"
    assert audio.topic == first["audio_topic"] and audio.payload.startswith(b"RIFF")
    assert second["status"] == "ok" and second["cached"] is False, "nothing was cached, so no hit"
    _, metrics = service.http_bytes("/metrics")
    assert b"audiogen_cache_store_failures_total 2.0" in metrics
    assert "could not cache a result" in service.log()
    status, _ = service.http_json("/readyz")
    assert status == 200


def test_sigterm_with_requests_in_flight_answers_each_and_exits_cleanly(
    service: Service, broker: Broker
) -> None:
    device = RawClient(broker.host, broker.port, "faults/replies/#")
    status = RawClient(broker.host, broker.port, service.topics.status)
    progress = RawClient(broker.host, broker.port, f"{service.topics.prefix}/progress/#")
    try:
        assert status.next(timeout_s=5).payload == b"online"
        for index in range(4):  # one generating, three queued behind it
            device.publish(service.topics.request,
                           json.dumps({"prompt": f"a distant siren {index}", "request_id": f"drain-{index}",
                                       "duration_s": 4, "steps": 150}),
                           response_topic=f"faults/replies/drain-{index}")
        generating = progress.next(timeout_s=60).topic.rsplit("/", 1)[-1]  # intake may reorder them
        started = time.monotonic()
        code = service.stop(timeout_s=60)
        stopped_in = time.monotonic() - started
        replies = {}
        while len(replies) < 4:
            reply = device.next(timeout_s=10)
            replies[reply.topic.rsplit("/", 1)[-1]] = reply.json()
        offline = status.next(timeout_s=10).payload
    finally:
        device.close()
        status.close()
        progress.close()
    assert code == 0 and stopped_in < 60
    assert sorted(replies) == [f"drain-{i}" for i in range(4)]
    outcomes = {name: reply.get("code", reply["status"]) for name, reply in replies.items()}
    assert outcomes.pop(generating) == "ok", "the generation under way is finished, not dropped"
    assert set(outcomes.values()) <= {"ok", "unavailable"}, outcomes
    assert offline == b"offline"


def test_a_cached_clip_whose_audio_vanished_is_generated_again(service: Service, broker: Broker) -> None:
    device = RawClient(broker.host, broker.port, "faults/replies/#")
    try:
        first = _ask(device, service, "a door slamming", "gone-1")
        cache_dir = service.settings.cache.dir
        cache_dir = cache_dir if cache_dir.is_absolute() else service.config_path.parent / cache_dir
        (cache_dir / "audio" / f"{first['key']}.wav").unlink()  # lost by hand or by a bad disk
        again = _ask(device, service, "a door slamming", "gone-2")
        third = _ask(device, service, "a door slamming", "gone-3")
    finally:
        device.close()
    assert again["status"] == "ok" and again["cached"] is False and again["key"] != first["key"]
    assert third["cached"] is True and third["key"] == again["key"]
    assert "cached audio is missing" in service.log()
