"""A load generator for benchmarks and tests: MQTT 5 clients that count every reply.

Each :class:`BurstClient` sends requests with a fresh Correlation Data each, keeps at most
``window`` of them unanswered, and records per correlation how many replies came, their
status or error code, and the latency from publish to reply. That is what "every request
answered exactly once" is checked against. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.mqtt import enable_tcp_nodelay


@dataclass
class Sent:
    body: dict[str, Any]
    at: float
    replies: int = 0
    outcome: str = ""
    latency_s: float | None = None


class BurstClient:
    """One device: publishes requests, collects the replies by correlation data."""

    def __init__(self, host: str, port: int, request_topic: str) -> None:
        self.request_topic = request_topic
        self.reply_topic = f"load/{uuid.uuid4().hex[:10]}"
        self.sent: dict[bytes, Sent] = {}
        self.unknown_replies = 0
        self._cond = threading.Condition()
        self._answered = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"load-{uuid.uuid4().hex[:10]}")
        self.client.on_socket_open = enable_tcp_nodelay
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError("the broker did not acknowledge the reply subscription")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        correlation = getattr(message.properties, "CorrelationData", None)
        body = json.loads(message.payload)
        with self._cond:
            sent = self.sent.get(correlation) if correlation is not None else None
            if sent is None:
                self.unknown_replies += 1
                return
            sent.replies += 1
            if sent.replies == 1:
                self._answered += 1
                sent.latency_s = now - sent.at
                if body.get("status") == "ok":
                    sent.outcome = str(body.get("match_type") or "generated")
                else:
                    sent.outcome = str(body.get("code"))
            self._cond.notify_all()

    def send(self, body: dict[str, Any]) -> bytes:
        correlation = uuid.uuid4().bytes
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = correlation
        with self._cond:
            self.sent[correlation] = Sent(body, time.perf_counter())
        self.client.publish(self.request_topic, json.dumps(body), qos=1, properties=properties)
        return correlation

    def run(self, bodies: Sequence[dict[str, Any]], *, window: int, timeout_s: float) -> None:
        """Send every body, never more than ``window`` unanswered, then wait for the rest."""
        deadline = time.monotonic() + timeout_s
        for index, body in enumerate(bodies):
            with self._cond:
                while index - self._answered >= window and time.monotonic() < deadline:
                    self._cond.wait(0.05)
            self.send(body)
        with self._cond:
            while self._answered < len(bodies) and time.monotonic() < deadline:
                self._cond.wait(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class BurstReport:
    sent: int
    answered: int
    duplicated: int
    unknown: int
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_by_outcome: dict[str, list[float]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def burst(
    host: str, port: int, request_topic: str, per_client: Sequence[Sequence[dict[str, Any]]], *,
    window: int = 32, timeout_s: float = 300.0, settle_s: float = 0.5,
) -> BurstReport:
    """Run one client per body list at once; wait ``settle_s`` for late duplicates."""
    clients = [BurstClient(host, port, request_topic) for _ in per_client]
    threads = [threading.Thread(target=c.run, args=(bodies,), kwargs={"window": window,
                                                                      "timeout_s": timeout_s})
               for c, bodies in zip(clients, per_client, strict=True)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    time.sleep(settle_s)
    report = BurstReport(sent=0, answered=0, duplicated=0, unknown=0, elapsed_s=elapsed)
    for client in clients:
        client.close()
        report.unknown += client.unknown_replies
        for sent in client.sent.values():
            report.sent += 1
            if sent.replies:
                report.answered += 1
                report.duplicated += sent.replies - 1
                report.outcomes[sent.outcome] += 1
                if sent.latency_s is not None:
                    report.latencies_by_outcome.setdefault(sent.outcome, []).append(sent.latency_s)
    return report


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a process (its peak resident set), from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")
