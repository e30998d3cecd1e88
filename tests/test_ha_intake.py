"""Home Assistant's prompts go through the intake, never run on the MQTT network thread.

The supervisor runs in the test process (real broker, real paho adapter, real LMDB cache),
wired as appliance/app.py wires it: adapter → HA bridge → LocalReplies → intake → supervisor.
One prompt's cache lookup hangs on purpose; while it hangs, another prompt typed in Home
Assistant is answered from the cache and fires the clip event. Were the prompt handled on the
network thread, the hang would stop the appliance reading MQTT and nothing would follow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.cache.store import CacheItem, CacheStore
from appliance.config import Settings
from appliance.ha_discovery import DeviceInfo, HaTopics
from appliance.homeassistant import HomeAssistantBridge
from appliance.intake import Intake, Shedder
from appliance.local_requests import LocalReplies
from appliance.metrics import Metrics
from appliance.mqtt import InboundMessage, MqttAdapter
from appliance.supervisor import Supervisor
from appliance.topics import Topics
from tests.conftest import Broker
from tests.mqtt_helpers import RawClient
from tests.test_intake import MODEL, NoGenerations, _store_clip


class StalledLookups(CacheStore):
    """A real cache whose exact lookup of one prompt hangs until released."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.released = threading.Event()
        self.stalled_exact_key = ""
        self.stalled_on: list[str] = []  # the names of the threads that hung here

    def lookup_exact(self, exact_key: str) -> CacheItem | None:
        if exact_key == self.stalled_exact_key:
            self.stalled_on.append(threading.current_thread().name)
            self.released.wait(60)
        return super().lookup_exact(exact_key)


class HaStack:
    """The HA path as appliance/app.py wires it, around a given cache."""

    def __init__(self, settings: Settings, cache: CacheStore) -> None:
        metrics = Metrics()
        topics = Topics.from_settings(settings.node)
        self.ha_topics = HaTopics.build(settings.homeassistant, topics)
        self.mqtt = MqttAdapter(settings.broker, client_id="ha-intake-test", status_topic=topics.status,
                                subscriptions=topics.subscriptions() + self.ha_topics.subscriptions(),
                                on_message=self._on_message, metrics=metrics,
                                max_payload_bytes=settings.requests.max_payload_bytes)
        local = LocalReplies(self.mqtt, topics)
        supervisor = Supervisor(settings, cache=cache, pool=NoGenerations(), publisher=local,
                                metrics=metrics, model_name=MODEL, audio_base_url="http://127.0.0.1:1",
                                on_served=lambda body: self.bridge.clip_served(body))
        self.intake = Intake(local.dispatcher(supervisor.handle), Shedder(local, topics, metrics),
                             capacity=settings.requests.intake_size,
                             threads=settings.requests.dispatch_threads)
        local.bind(self.intake.offer)

        def submit(body: dict[str, Any]) -> None:  # as app.py's: the reply ends up in the clip event
            local.submit(body, source="homeassistant")

        self.bridge = HomeAssistantBridge(
            settings.homeassistant, self.ha_topics, self.mqtt,
            device=DeviceInfo(topics.node, "test", MODEL, "http://127.0.0.1:1"),
            audio_base_url="http://127.0.0.1:1", summary=metrics.summary, workers=list,
            submit_prompt=submit,
        )
        self.intake.start()
        assert self.mqtt.start(wait_s=10)

    def _on_message(self, message: InboundMessage) -> None:
        if self.bridge.handles(message.topic):
            self.bridge.handle(message)
        else:
            self.intake.offer(message)

    def close(self) -> None:
        self.mqtt.stop()


@pytest.fixture
def stalled(broker: Broker, tmp_path: Path) -> Iterator[tuple[HaStack, StalledLookups]]:
    settings = Settings.model_validate({
        "node": {"id": "ha-node"},
        "broker": {"host": broker.host, "port": broker.port, "embedded": False},
        "generation": {"default_duration_s": 1.0},
        "requests": {"dispatch_threads": 2},
        "homeassistant": {"audio_format": "wav"},  # the stored clips are not real audio to encode
    })
    cache = StalledLookups(tmp_path / "cache")
    stack: HaStack | None = None
    try:
        stack = HaStack(settings, cache)
        yield stack, cache
    finally:
        cache.released.set()
        if stack is not None:
            stack.close()
        cache.close()


def _events(watcher: RawClient, count: int) -> list[dict[str, Any]]:
    return [json.loads(watcher.next(30).payload) for _ in range(count)]


def test_a_cached_ha_prompt_is_answered_while_another_ones_lookup_hangs(
    broker: Broker, stalled: tuple[HaStack, StalledLookups]
) -> None:
    stack, cache = stalled
    cache.stalled_exact_key = _store_clip(cache, "thunder far away").exact_key
    _store_clip(cache, "rain on a tin roof")
    watcher = RawClient(broker.host, broker.port, stack.ha_topics.clip_event)
    try:
        watcher.publish(stack.ha_topics.prompt_command, "thunder far away")
        deadline = time.monotonic() + 30
        while not cache.stalled_on and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.stalled_on and cache.stalled_on[0].startswith("dispatch-"), cache.stalled_on
        watcher.publish(stack.ha_topics.prompt_command, "rain on a tin roof")
        (first,) = _events(watcher, 1)
        assert (first["prompt"], first["event_type"]) == ("rain on a tin roof", "exact"), first
        assert not cache.released.is_set()
        cache.released.set()
        (second,) = _events(watcher, 1)
    finally:
        watcher.close()
    assert (second["prompt"], second["event_type"]) == ("thunder far away", "exact"), second
