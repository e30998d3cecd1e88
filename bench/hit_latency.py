"""Exact cache hits over MQTT 5 on loopback: latency and throughput, end to end.

Starts a private mosquitto and a real ``appliance serve`` (tiny model), fills the cache
with a few clips, then measures from request publish to reply received:
  1. sequential latency of exact hits from one client (p50, p99);
  2. the broker's own round trip (an echo through a second client) for reference;
  3. throughput of exact hits from several clients at once, each with a window of
     requests in flight, and that every request was answered exactly once.

    .venv/bin/python bench/hit_latency.py [--requests 2000] [--clients 4] [--total 8000]

Last line: ``hit_p50_ms=… hit_p99_ms=… broker_rtt_p50_ms=… hits_per_s=… lost=… duplicated=…``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.client import RequestClient
from appliance.mqtt import enable_tcp_nodelay
from testkit.services import BrokerProcess, ServiceProcess, service_sections

PROMPTS = ["rain on a tin roof", "a dog barking far away", "wind through pine trees", "a busy street"]


class HitClient:
    """An MQTT 5 client that sends requests with correlation data and times each reply."""

    def __init__(self, broker: BrokerProcess, request_topic: str) -> None:
        self.request_topic = request_topic
        self.reply_topic = f"bench/{uuid.uuid4().hex[:8]}"
        self.sent: dict[bytes, float] = {}
        self.latencies: list[float] = []
        self.replies: dict[bytes, int] = {}
        self.errors = 0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"bench-{uuid.uuid4().hex[:8]}")
        self.client.on_socket_open = enable_tcp_nodelay
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        time.sleep(0.3)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        correlation = message.properties.CorrelationData  # type: ignore[union-attr]
        status = json.loads(message.payload).get("status")
        with self.cond:
            self.replies[correlation] = self.replies.get(correlation, 0) + 1
            if status != "ok":
                self.errors += 1
            started = self.sent.get(correlation)
            if started is not None:
                self.latencies.append(now - started)
            self.cond.notify_all()

    def send(self, prompt: str) -> bytes:
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        payload = json.dumps({"prompt": prompt, "duration_s": 1})
        with self.lock:
            self.sent[correlation] = time.perf_counter()
        self.client.publish(self.request_topic, payload, qos=1, properties=props)
        return correlation

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while len(self.replies) < count and time.monotonic() < deadline:
                self.cond.wait(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sequential_latency(client: HitClient, requests: int) -> list[float]:
    for index in range(requests):
        client.send(PROMPTS[index % len(PROMPTS)])
        client.wait_for(index + 1, timeout_s=5)
    return list(client.latencies)


def broker_round_trip(broker: BrokerProcess, samples: int) -> list[float]:
    """Publish to a topic an echo client answers on another topic: the broker's share."""
    echo = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    echo.on_socket_open = enable_tcp_nodelay
    echo.on_message = lambda c, u, m: c.publish("bench/echo/out", m.payload, qos=1)
    echo.connect(broker.host, broker.port)
    echo.loop_start()
    echo.subscribe("bench/echo/in", qos=1)
    got = threading.Event()
    probe = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    probe.on_socket_open = enable_tcp_nodelay
    probe.on_message = lambda c, u, m: got.set()
    probe.connect(broker.host, broker.port)
    probe.loop_start()
    probe.subscribe("bench/echo/out", qos=1)
    time.sleep(0.3)
    times = []
    for _ in range(samples):
        got.clear()
        started = time.perf_counter()
        probe.publish("bench/echo/in", b"x" * 100, qos=1)
        got.wait(5)
        times.append(time.perf_counter() - started)
    for c in (echo, probe):
        c.disconnect()
        c.loop_stop()
    return times


def throughput(broker: BrokerProcess, topic: str, clients: int, total: int, window: int) -> dict[str, float]:
    hitters = [HitClient(broker, topic) for _ in range(clients)]
    per_client = total // clients

    def run(client: HitClient) -> None:
        for index in range(per_client):
            with client.cond:
                while index - len(client.replies) >= window:
                    client.cond.wait(0.05)
            client.send(PROMPTS[index % len(PROMPTS)])
        client.wait_for(per_client, timeout_s=60)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in hitters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # anything answered twice would arrive now
    answered = sum(len(c.replies) for c in hitters)
    duplicated = sum(n - 1 for c in hitters for n in c.replies.values() if n > 1)
    errors = sum(c.errors for c in hitters)
    for c in hitters:
        c.close()
    return {"hits_per_s": answered / elapsed, "lost": per_client * clients - answered,
            "duplicated": duplicated, "errors": errors, "sent": per_client * clients}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--total", type=int, default=8000)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from appliance.models.tiny import build_tiny_tangoflux

        build_tiny_tangoflux(root / "models" / "tiny-tangoflux")
        broker = BrokerProcess.start(root / "broker")
        sections = service_sections(root, broker, root / "models")
        sections["logging"]["level"] = "WARNING"
        service = ServiceProcess.start(root, sections)
        try:
            service.wait_ready()
            warm = RequestClient(broker.settings(), service.topics)
            warm.connect()
            for prompt in PROMPTS:
                assert warm.request({"prompt": prompt, "duration_s": 1, "steps": 2}).body["status"] == "ok"
            warm.close()
            client = HitClient(broker, service.topics.request)
            sequential_latency(client, 200)  # warm-up
            client.latencies.clear()
            client.replies.clear()
            latencies = sequential_latency(client, args.requests)
            client.close()
            rtt = broker_round_trip(broker, 500)
            load = throughput(broker, service.topics.request, args.clients, args.total, args.window)
        finally:
            service.stop()
            broker.stop()
    p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
    print(f"exact hit, sequential, {len(latencies)} requests: p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
          f"mean {statistics.mean(latencies) * 1e3:.3f} ms")
    print(f"broker round trip (echo client): p50 {percentile(rtt, 0.5) * 1e3:.3f} ms, "
          f"p99 {percentile(rtt, 0.99) * 1e3:.3f} ms")
    print(f"throughput, {args.clients} clients x window {args.window}: {load['hits_per_s']:.0f} hits/s, "
          f"sent {load['sent']:.0f}, lost {load['lost']:.0f}, duplicated {load['duplicated']:.0f}, "
          f"errors {load['errors']:.0f}")
    print(f"hit_p50_ms={p50:.3f} hit_p99_ms={p99:.3f} broker_rtt_p50_ms={percentile(rtt, 0.5) * 1e3:.3f} "
          f"hits_per_s={load['hits_per_s']:.0f} lost={load['lost']:.0f} duplicated={load['duplicated']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
