"""A raw paho MQTT 5 client for tests that need to see the properties of each reply."""

from __future__ import annotations

import json
import queue
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.mqtt import enable_tcp_nodelay


@dataclass
class Received:
    topic: str
    payload: bytes
    correlation_data: bytes | None

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


class RawClient:
    """Subscribes to a topic filter and queues everything that arrives."""

    def __init__(self, host: str, port: int, subscribe: str, *, protocol: int = paho.MQTTv5) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        kwargs: dict[str, Any] = {} if protocol == paho.MQTTv5 else {"clean_session": True}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol, **kwargs)
        self.client.on_socket_open = enable_tcp_nodelay
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        info = self.client.subscribe(subscribe, qos=1)
        assert info[0] == paho.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # let the SUBACK arrive before anything is published

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        self.messages.put(Received(message.topic, bytes(message.payload),
                                   getattr(props, "CorrelationData", None) if props else None))

    def publish(self, topic: str, payload: bytes | str, *, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def next(self, timeout_s: float = 30.0) -> Received:
        return self.messages.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
