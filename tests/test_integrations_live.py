"""Home Assistant discovery and the Wyoming server, end to end against one real service.

One `appliance serve` (real mosquitto, real worker with the tiny model, Wyoming enabled on a
free port) is shared by every test here; Home Assistant's side is played by plain MQTT
clients and the `wyoming` package's own AsyncTcpClient.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import soundfile
from paho.mqtt.enums import CallbackAPIVersion
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from appliance.config import HomeAssistantSettings, NodeSettings
from appliance.ha_discovery import DeviceInfo, HaTopics
from appliance.homeassistant import HomeAssistantBridge
from appliance.metrics import Metrics
from appliance.mqtt import MqttAdapter
from appliance.topics import Topics
from testkit.services import BrokerProcess, ServiceProcess, free_port, service_sections
from tests.mqtt_helpers import RawClient

CONFIG = "homeassistant/device/test-node/config"
STATE = "audiogen/test-node/ha/state"
EVENTS = "audiogen/test-node/ha/clip"
PROMPT = "audiogen/test-node/ha/prompt/set"


@dataclass
class Stack:
    broker: BrokerProcess
    service: ServiceProcess
    wyoming_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("integrations")
    broker = BrokerProcess.start(root / "broker")
    sections = service_sections(root, broker, models_dir)
    port = free_port()
    sections["wyoming"] = {"enabled": True, "uri": f"tcp://127.0.0.1:{port}"}
    sections["generation"]["default_duration_s"] = 2.0
    service = ServiceProcess.start(root, sections)
    try:
        service.wait_ready()
        while service.http_json("/readyz")[1]["homeassistant"]["configs_published"] < 1:
            time.sleep(0.05)  # the main loop publishes it on its first turn after connecting
        yield Stack(broker, service, port)
    finally:
        service.stop()
        broker.stop()


class Watcher:
    """Records every message on some topics with its retain flag (HA's view of the broker)."""

    def __init__(self, broker: BrokerProcess, *topics: str) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for topic in topics:
            self.client.subscribe(topic, qos=1)

    def next(self, topic: str, timeout_s: float = 60.0) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if message.topic == topic:
                return message

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher(stack: Stack) -> Iterator[Watcher]:
    w = Watcher(stack.broker, CONFIG, STATE, EVENTS)
    yield w
    w.close()


def test_discovery_config_is_retained_and_republished_on_birth(stack: Stack, watcher: Watcher) -> None:
    retained = watcher.next(CONFIG)
    assert retained.retain, "a new subscriber gets the configuration from the broker's store"
    config = json.loads(retained.payload)
    assert config["availability_topic"] == stack.service.topics.status
    assert {c["p"] for c in config["cmps"].values()} >= {"sensor", "binary_sensor", "text", "event", "button"}
    assert watcher.next(STATE).retain

    watcher.publish("homeassistant/status", b"online")  # Home Assistant (re)started
    again = watcher.next(CONFIG)
    assert not again.retain and json.loads(again.payload) == config, "published anew, not replayed"
    state = json.loads(watcher.next(STATE).payload)
    assert state["worker_state"] in ("ready", "busy") and state["problem"] is False


def test_text_entity_prompt_generates_a_clip_and_fires_the_event(stack: Stack, watcher: Watcher) -> None:
    prompt = f"wind through tall grass {uuid.uuid4().hex[:6]}"
    watcher.publish(PROMPT, prompt.encode())
    event_message = watcher.next(EVENTS, timeout_s=120)
    assert not event_message.retain, "HA discards retained event messages"
    event = json.loads(event_message.payload)
    assert event["event_type"] == "new_generation" and event["prompt"] == prompt
    name = event["url"].rsplit("/", 1)[1]
    assert name.endswith(".mp3") and event["format"] == "mp3", "homeassistant.audio_format's default"
    status, audio = stack.service.http_bytes(f"/audio/{name}")
    assert status == 200
    info = soundfile.info(io.BytesIO(audio))
    assert info.format == "MP3" and info.samplerate == 44100 and info.channels == 2
    assert abs(info.duration - 2.0) < 0.2

    watcher.publish(PROMPT, prompt.encode())  # the same prompt again: served from the cache
    again = json.loads(watcher.next(EVENTS).payload)
    assert again["event_type"] == "exact" and again["url"] == event["url"]
    deadline = time.monotonic() + 30
    while True:  # the state follows: the generation's duration appears
        state = json.loads(watcher.next(STATE, timeout_s=max(0.1, deadline - time.monotonic())).payload)
        if state["last_generation_s"] is not None:
            break
    assert state["last_generation_s"] > 0 and state["cache_items"] >= 1


def test_event_entity_fires_for_mqtt_requests_too(stack: Stack, watcher: Watcher) -> None:
    client = RawClient(stack.broker.host, stack.broker.port, "test/replies/#")
    try:
        client.publish(stack.service.topics.request,
                       json.dumps({"prompt": "a door creaks", "deliver": "url"}),
                       response_topic="test/replies/1")
        reply = client.next(120).json()
    finally:
        client.close()
    event = json.loads(watcher.next(EVENTS).payload)
    assert event["request_id"] == reply["request_id"] and reply["format"] == "wav"
    base = reply["audio_url"].rsplit("/audio/", 1)[0]
    assert event["url"] == f"{base}/audio/{reply['key']}.mp3", "HA's format, not the request's"


async def _exchange(port: int, event: Event) -> list[Event]:
    """Send one event; collect the answer up to info, audio-stop or error."""
    received = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(event)
        while True:
            answer = await asyncio.wait_for(client.read_event(), timeout=120)
            assert answer is not None, "the server hung up"
            received.append(answer)
            if answer.type in ("info", "audio-stop", "error"):
                return received


def _counter(stack: Stack, outcome: str) -> float:
    status, body = stack.service.http_bytes("/metrics")
    assert status == 200
    wanted = f'audiogen_requests_total{{outcome="{outcome}",source="wyoming"}} '
    lines = [line for line in body.decode().splitlines() if line.startswith(wanted)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_wyoming_describe_lists_one_program_with_one_voice_per_model(stack: Stack) -> None:
    (answer,) = asyncio.run(_exchange(stack.wyoming_port, Describe().event()))
    info = Info.from_event(answer)
    assert len(info.tts) == 1 and info.tts[0].installed
    voices = info.tts[0].voices
    assert [v.name for v in voices] == ["tiny-tangoflux"] and voices[0].languages == ["en"]


def test_wyoming_synthesize_new_then_cached_through_the_shared_cache(stack: Stack) -> None:
    text = f"a kettle whistling {uuid.uuid4().hex[:6]}"
    generated = _counter(stack, "generated")
    first = asyncio.run(_exchange(stack.wyoming_port, Synthesize(text=text).event()))
    second = asyncio.run(_exchange(stack.wyoming_port, Synthesize(text=text).event()))
    clips = []
    for events in (first, second):
        start = AudioStart.from_event(events[0])
        chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
        assert AudioStop.is_type(events[-1].type) and chunks
        assert all((c.rate, c.width, c.channels) == (start.rate, start.width, start.channels) for c in chunks)
        assert (start.rate, start.width, start.channels) == (44100, 2, 2)
        pcm = b"".join(c.audio for c in chunks)
        assert abs(len(pcm) / (44100 * 2 * 2) - 2.0) < 0.1
        clips.append(pcm)
    assert clips[0] == clips[1], "the second answer is the cached clip"
    assert _counter(stack, "generated") == generated + 1 and _counter(stack, "hit") >= 1


def test_wyoming_failure_is_an_error_event(stack: Stack) -> None:
    (too_long,) = asyncio.run(_exchange(stack.wyoming_port, Synthesize(text="rain " * 200).event()))
    assert Error.is_type(too_long.type) and Error.from_event(too_long).code == "invalid_request"


def test_wyoming_describe_answers_while_a_generation_runs(stack: Stack) -> None:
    client = RawClient(stack.broker.host, stack.broker.port, "test/slow/#")
    progress = RawClient(stack.broker.host, stack.broker.port, stack.service.topics.progress("slow-1"))
    try:
        client.publish(stack.service.topics.request,
                       json.dumps({"prompt": "thunder far away", "steps": 100, "duration_s": 1.0,
                                   "request_id": "slow-1", "force": True}), response_topic="test/slow/1")
        progress.next(120)  # the worker is generating
        started = time.perf_counter()
        (answer,) = asyncio.run(_exchange(stack.wyoming_port, Describe().event()))
        describe_s = time.perf_counter() - started
        assert Info.is_type(answer.type)
        assert client.messages.empty(), "info came while the generation was still running"
        assert client.next(300).json()["status"] == "ok"
    finally:
        client.close()
        progress.close()
    print(f"wyoming_describe_during_generation_s={describe_s:.4f}")


def test_status_reports_discovery_and_wyoming(stack: Stack) -> None:
    status, body = stack.service.http_json("/readyz")
    assert status == 200
    assert body["homeassistant"]["discovery"] is True and body["homeassistant"]["configs_published"] >= 1
    assert body["homeassistant"]["audio_format"] == "mp3"
    assert body["wyoming"] == {"enabled": True, "address": f"tcp://127.0.0.1:{stack.wyoming_port}",
                               "voices": ["tiny-tangoflux"]}


def test_discovery_off_removes_the_device_with_an_empty_retained_config(broker: BrokerProcess) -> None:
    settings = HomeAssistantSettings(discovery=False)
    topics = HaTopics.build(settings, Topics.from_settings(NodeSettings(id="retired")))
    watcher = Watcher(broker, topics.config)
    watcher.publish(topics.config, b'{"cmps": {}}', retain=True)  # what the node left behind
    assert watcher.next(topics.config).payload
    mqtt = MqttAdapter(broker.settings(), client_id="retiring", status_topic="audiogen/retired/status",
                       subscriptions=[], on_message=lambda _m: None, metrics=Metrics())
    assert mqtt.start(wait_s=10)
    bridge = HomeAssistantBridge(settings, topics, mqtt, device=DeviceInfo("retired", "x", "m", "http://h"),
                                 audio_base_url="http://h", summary=Metrics().summary, workers=list,
                                 submit_prompt=lambda _t: None)
    try:
        assert bridge.subscriptions() == []
        bridge.tick(connected=True)
        assert watcher.next(topics.config).payload == b""
        # a new subscriber: a retained configuration would arrive before this round trip
        late = Watcher(broker, topics.config, "test/probe")
        late.publish("test/probe", b"x")
        first = late.messages.get(timeout=10)
        late.close()
        assert first.topic == "test/probe", "the broker still holds a configuration"
    finally:
        mqtt.stop()
        watcher.close()
