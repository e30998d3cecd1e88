"""The intake under overload: shedding with `busy`, the outgoing byte budget, a stalled disk.

These run the supervisor in the test process (real broker, real paho adapter, real LMDB
cache), so that a fault can be placed exactly: a dispatch thread that does not return, a
broker that stops acknowledging, a disk read and an LMDB write that hang.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore, PutResult
from appliance.config import Settings
from appliance.errors import Unavailable
from appliance.intake import Intake, Shedder
from appliance.metrics import Metrics
from appliance.mqtt import InboundMessage, MqttAdapter
from appliance.supervisor import Supervisor
from appliance.topics import Topics
from tests.conftest import Broker
from tests.mqtt_helpers import RawClient

MODEL = "tiny-test"


class NoGenerations:
    """These tests answer from the cache only; a miss is answered `unavailable`."""

    def submit(self, request_id: str, params: Any, on_progress: Any = None) -> Future[Any]:
        raise Unavailable("no worker in this test")


class StalledCache(CacheStore):
    """A real cache whose disk path hangs on purpose: writes, and reads of one clip's audio."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.released = threading.Event()
        self.stalled_key = ""
        self.stalled_calls = 0

    def _stall(self) -> None:
        self.stalled_calls += 1
        self.released.wait(60)

    def read_audio(self, item: CacheItem) -> bytes:
        if item.key == self.stalled_key:
            self._stall()
        return super().read_audio(item)

    def put(self, *args: Any, **kwargs: Any) -> PutResult:
        self._stall()
        return super().put(*args, **kwargs)

    def flush_hits(self) -> int:
        self._stall()
        return super().flush_hits()


def _settings(broker: Broker, **requests: Any) -> Settings:
    return Settings.model_validate({
        "node": {"id": "intake-node"},
        "broker": {"host": broker.host, "port": broker.port, "embedded": False, "keepalive_s": 5,
                   "outgoing_audio_budget_bytes": 1024 * 1024},
        "requests": requests,
    })


def _store_clip(cache: CacheStore, prompt: str, seconds: float = 1.0) -> CacheItem:
    audio = np.zeros(int(44100 * seconds) * 4, dtype=np.uint8).tobytes()  # stereo 16-bit
    item = CacheItem(
        key=new_item_key(), exact_key=exact_key(prompt, model=MODEL, duration_s=seconds, loop=False),
        prompt=prompt, model=MODEL, duration_s=seconds, requested_duration_s=seconds, is_loop=False,
        steps=4, guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
        audio_format="wav", audio_bytes=len(audio), generation_timestamp=time.time(),
        generation_s=0.1, clap_similarity=0.5, candidate_scores=[0.5],
    )
    CacheStore.put(cache, item, audio, max_items=100, max_bytes=2**30)  # never stalled
    return item


class Stack:
    """Adapter → intake → supervisor, wired as appliance/app.py wires them."""

    def __init__(self, settings: Settings, cache: CacheStore) -> None:
        self.metrics = Metrics()
        self.topics = Topics.from_settings(settings.node)
        self.intake: Intake | None = None
        self.mqtt = MqttAdapter(settings.broker, client_id="intake-test", status_topic=self.topics.status,
                                subscriptions=self.topics.subscriptions(), on_message=self._offer,
                                metrics=self.metrics, max_payload_bytes=settings.requests.max_payload_bytes)
        self.supervisor = Supervisor(settings, cache=cache, pool=NoGenerations(), publisher=self.mqtt,
                                     metrics=self.metrics, model_name=MODEL,
                                     audio_base_url="http://127.0.0.1:1",
                                     audio_budget=self.mqtt.audio_budget_allows)
        self.intake = Intake(self.supervisor.handle, Shedder(self.mqtt, self.topics, self.metrics),
                             capacity=settings.requests.intake_size,
                             threads=settings.requests.dispatch_threads)
        self.intake.start()
        assert self.mqtt.start(wait_s=10)

    def _offer(self, message: InboundMessage) -> None:
        assert self.intake is not None
        self.intake.offer(message)

    def reconnects(self) -> float:
        return self.metrics.registry.get_sample_value("audiogen_mqtt_reconnects_total") or 0.0

    def close(self) -> None:
        self.mqtt.stop()


@pytest.fixture
def device(broker: Broker) -> Iterator[RawClient]:
    client = RawClient(broker.host, broker.port, "dev/#")
    yield client
    client.close()


def _ask(device: RawClient, topic: str, body: dict[str, Any], tag: str) -> None:
    device.publish(topic, json.dumps(body), response_topic=f"dev/{tag}", correlation_data=tag.encode())


def _replies(device: RawClient, count: int, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """``count`` JSON replies by correlation tag (audio messages are skipped)."""
    found: dict[str, dict[str, Any]] = {}
    while len(found) < count:
        message = device.next(timeout_s)
        if message.topic.endswith("/audio"):
            continue
        tag = (message.correlation_data or b"").decode()
        assert tag not in found, f"two replies for {tag}"
        found[tag] = message.json()
    return found


def test_a_full_intake_answers_busy_at_once_from_the_network_thread(
    broker: Broker, device: RawClient, tmp_path: Path
) -> None:
    settings = _settings(broker, intake_size=2, dispatch_threads=1)
    topics = Topics.from_settings(settings.node)
    metrics = Metrics()
    stuck = threading.Event()
    release = threading.Event()
    handled: list[bytes] = []

    def slow_handle(message: InboundMessage) -> None:  # a dispatch thread that does not return
        stuck.set()
        release.wait(30)
        handled.append(message.correlation_data or b"")

    holder: dict[str, Intake] = {}
    mqtt = MqttAdapter(settings.broker, client_id="shed-test", status_topic=topics.status,
                       subscriptions=topics.subscriptions(), metrics=metrics,
                       on_message=lambda message: holder["intake"].offer(message))
    holder["intake"] = Intake(slow_handle, Shedder(mqtt, topics, metrics), capacity=2, threads=1)
    holder["intake"].start()
    assert mqtt.start(wait_s=10)
    try:
        _ask(device, topics.request, {"prompt": "rain"}, "first")
        assert stuck.wait(10)
        for tag in ("q1", "q2"):  # fill the queue
            _ask(device, topics.request, {"prompt": "rain"}, tag)
        _ask(device, topics.request, {"prompt": "rain", "request_id": "shed-1"}, "s1")
        device.publish(topics.request, b"not json", response_topic="dev/s2", correlation_data=b"s2")
        # a 3.1.1-style device: no Response Topic, the address is in the body
        device.publish(topics.request, json.dumps({"prompt": "rain", "request_id": "shed-3",
                                                   "reply_to": "dev/body-addressed"}))
        shed = [device.next(10) for _ in range(3)]
        assert not release.is_set() and handled == [], "answered while every dispatch thread is stuck"
    finally:
        release.set()
        holder["intake"].close()
        mqtt.stop()
    by_topic = {message.topic: message for message in shed}
    assert set(by_topic) == {"dev/s1", "dev/s2", "dev/body-addressed"}
    for message in shed:
        assert message.json()["code"] == "busy" and message.json()["status"] == "error"
    assert by_topic["dev/s1"].correlation_data == b"s1"
    assert by_topic["dev/s1"].json()["request_id"] == "shed-1"
    assert by_topic["dev/body-addressed"].json()["request_id"] == "shed-3"
    assert sorted(handled) == [b"first", b"q1", b"q2"], "the queued requests are served after all"
    assert metrics.registry.get_sample_value("audiogen_intake_shed_total") == 3


def test_deliver_mqtt_beyond_the_outgoing_byte_budget_is_answered_busy(
    broker: Broker, device: RawClient, tmp_path: Path
) -> None:
    settings = _settings(broker)  # budget 1 MiB; a 1 s clip is 176 kB
    cache = CacheStore(tmp_path / "cache")
    _store_clip(cache, "rain on a tin roof")
    stack = Stack(settings, cache)
    try:
        os.kill(broker.process.pid, signal.SIGSTOP)  # acknowledges nothing: audio piles up in paho
        try:
            for index in range(10):
                stack.supervisor.handle(InboundMessage(
                    stack.topics.request, json.dumps({"prompt": "rain on a tin roof", "duration_s": 1,
                                                      "deliver": "mqtt"}).encode(),
                    f"dev/m{index}", f"m{index}".encode(), time.perf_counter()))
            url = json.dumps({"prompt": "rain on a tin roof", "duration_s": 1}).encode()
            stack.supervisor.handle(InboundMessage(stack.topics.request, url, "dev/u", b"u",
                                                   time.perf_counter()))
            held = stack.mqtt.outgoing_bytes
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        replies = _replies(device, 11)
    finally:
        stack.close()
        cache.close()
    codes = [replies[f"m{index}"].get("code", "ok") for index in range(10)]
    assert codes[0] == "ok" and "busy" in codes, codes
    assert codes == sorted(codes, key=lambda code: code != "ok"), "busy only once the budget is spent"
    assert held <= 1024 * 1024 + 2 * 176_400 + 64 * 1024, held
    assert replies["u"]["status"] == "ok", "deliver: url does not need the budget"


def test_hits_and_busy_flow_and_keepalive_holds_while_the_disk_path_is_stalled(
    broker: Broker, device: RawClient, tmp_path: Path
) -> None:
    settings = _settings(broker, intake_size=3, dispatch_threads=2)
    cache = StalledCache(tmp_path / "cache")
    cache.stalled_key = _store_clip(cache, "thunder far away").key
    _store_clip(cache, "rain on a tin roof")
    stack = Stack(settings, cache)
    request = stack.topics.request
    flush = threading.Thread(target=cache.flush_hits, daemon=True)  # the main loop's LMDB write
    try:
        flush.start()
        _ask(device, request, {"prompt": "thunder far away", "duration_s": 1, "deliver": "mqtt"}, "stuck1")
        for index in range(5):  # one dispatch thread is stuck on a disk read; the other serves
            _ask(device, request, {"prompt": "rain on a tin roof", "duration_s": 1}, f"hit{index}")
        hits = _replies(device, 5)
        assert {body["cache_type"] for body in hits.values()} == {"exact"}
        _ask(device, request, {"prompt": "thunder far away", "duration_s": 1, "deliver": "mqtt"}, "stuck2")
        deadline = time.monotonic() + 10
        while cache.stalled_calls < 3 and time.monotonic() < deadline:  # flush + two reads
            time.sleep(0.01)
        for index in range(3):  # both dispatch threads stuck: these fill the intake
            _ask(device, request, {"prompt": "rain on a tin roof", "duration_s": 1}, f"queued{index}")
        time.sleep(8)  # longer than 1.5 x keepalive (5 s): a blocked network thread is cut off
        for index in range(4):
            _ask(device, request, {"prompt": "rain on a tin roof", "duration_s": 1}, f"shed{index}")
        shed = _replies(device, 4)
        assert {body["code"] for body in shed.values()} == {"busy"}
        assert stack.mqtt.connected and stack.reconnects() == 0, "the keepalive held"
        assert not cache.released.is_set() and cache.stalled_calls == 3
        cache.released.set()
        rest = _replies(device, 5)
    finally:
        cache.released.set()
        stack.close()
        cache.close()
    assert set(rest) == {"stuck1", "stuck2", "queued0", "queued1", "queued2"}
    assert all(body["status"] == "ok" for body in rest.values()), rest
