"""A small MQTT client for sending one request and waiting for its reply (used by the CLI,
the tests and the benchmarks)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.config import BrokerSettings
from appliance.errors import GenerationTimeout, Unavailable
from appliance.mqtt import make_client
from appliance.topics import Topics


@dataclass
class Reply:
    body: dict[str, Any]
    audio: bytes | None = None
    progress: list[tuple[int, int]] = field(default_factory=list)


class RequestClient:
    """Publishes requests to one appliance and collects the replies (MQTT 5 or 3.1.1)."""

    def __init__(self, broker: BrokerSettings, topics: Topics, *, client_id: str = "") -> None:
        self._topics = topics
        self._v5 = broker.protocol == "5"
        self._reply_topic = topics.reply(f"client-{uuid.uuid4().hex[:12]}")
        self._client = make_client(broker, client_id or f"audiogen-cli-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._lock = threading.Lock()
        self._replies: dict[str, dict[str, Any]] = {}
        self._audio: dict[str, bytes] = {}
        self._events: dict[str, threading.Event] = {}
        self._progress: dict[str, list[tuple[int, int]]] = {}
        self._progress_callbacks: dict[str, Callable[[int, int], None]] = {}
        self._host, self._port = broker.host, broker.port

    def connect(self, timeout_s: float = 10.0) -> None:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise Unavailable(f"cannot reach the broker at {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            raise Unavailable(f"no answer from the broker at {self._host}:{self._port}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def request(self, body: dict[str, Any], *, timeout_s: float = 600.0,
                want_audio: bool = False,
                on_progress: Callable[[int, int], None] | None = None) -> Reply:
        """Send one request and wait for its reply (and its audio, when asked for).

        ``on_progress(step, total)`` is called (on the MQTT thread) for each denoising step
        the appliance publishes.
        """
        request_id = str(body.setdefault("request_id", uuid.uuid4().hex))
        event = threading.Event()
        with self._lock:
            self._events[request_id] = event
            self._progress[request_id] = []
            if on_progress is not None:
                self._progress_callbacks[request_id] = on_progress
        self._client.subscribe(self._topics.progress(request_id), qos=0)
        reply_topic = f"{self._reply_topic}/{request_id}"
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = reply_topic
            properties.CorrelationData = request_id.encode()
        else:
            body["reply_to"] = reply_topic
        self._client.publish(self._topics.request, json.dumps(body), qos=1, properties=properties)
        deadline_ok = event.wait(timeout_s)
        self._client.unsubscribe(self._topics.progress(request_id))
        with self._lock:
            reply = self._replies.pop(request_id, None)
            self._events.pop(request_id, None)
            progress = self._progress.pop(request_id, [])
            self._progress_callbacks.pop(request_id, None)
        if not deadline_ok or reply is None:
            raise GenerationTimeout(f"no reply to {request_id} within {timeout_s:.0f} s")
        audio = None
        if want_audio and reply.get("status") == "ok":
            audio = self._wait_audio(request_id, timeout_s=10.0)
        return Reply(reply, audio, progress)

    def _wait_audio(self, request_id: str, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if request_id in self._audio:
                    return self._audio.pop(request_id)
            time.sleep(0.005)
        return None

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(f"{self._reply_topic}/#", qos=1)
        self._connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic.startswith(f"{self._topics.prefix}/progress/"):
            self._on_progress(bytes(message.payload))
            return
        if not message.topic.startswith(self._reply_topic + "/"):
            return
        request_id, _, kind = message.topic[len(self._reply_topic) + 1 :].partition("/")
        if kind == "audio":
            with self._lock:
                self._audio[request_id] = bytes(message.payload)
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            self._replies[request_id] = body
            event = self._events.get(request_id)
        if event is not None:
            event.set()

    def _on_progress(self, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            step, total, request_id = int(data["step"]), int(data["total"]), str(data["request_id"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            if request_id in self._progress:
                self._progress[request_id].append((step, total))
            callback = self._progress_callbacks.get(request_id)
        if callback is not None:
            callback(step, total)
