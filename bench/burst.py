"""A room full of devices firing at once: N MQTT 5 clients publish M requests each, no window.

The workload, per client: 80 % exact repeats of cached prompts, 5 % paraphrases of them
(semantic hits), 10 % invalid requests, 5 % new prompts (cheap generations, or ``busy`` once
the generation queue is full). Every request must be answered exactly once.

First, in the same run and on the same broker, a *bare paho responder* (parse, dict lookup,
publish, all on paho's network thread: what a minimal MQTT service does) answers the same
workload: its hit rate is the floor the appliance is compared with. Then a real
``appliance serve`` (tiny model) answers it.

    .venv/bin/python bench/burst.py [--clients 4] [--per-client 500] [--broker embedded|stock]

``--broker embedded``: mosquitto configured exactly as the embedded broker of ``make run``;
``stock``: mosquitto at its default settings (the appliance with ``broker.embedded = false``),
as a site's own broker often is. Last line:
``requests=… answered=… lost=… duplicated=… hits_per_s=… floor_hits_per_s=… ratio=…
hit_p50_ms=… hit_p99_ms=… peak_rss_mb=…`` (the appliance's figures; ratio = hits_per_s /
floor_hits_per_s; peak_rss_mb is the supervisor's VmHWM).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.loadgen import BurstClient, peak_rss_bytes, percentile
from appliance.models.tiny import build_tiny_tangoflux
from appliance.mqtt import enable_tcp_nodelay
from bench.load import CACHED, prefill, workload
from testkit.services import BrokerProcess, ServiceProcess, service_sections

QUIET_S = 20.0  # no reply for this long after the last request: the rest is lost


class BareResponder:
    """The floor: a paho client that answers from a dict on its network thread."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                   client_id="bare-responder")
        self._client.on_socket_open = enable_tcp_nodelay
        self._client.on_message = self._on_message
        self._answers = {prompt: {"status": "ok", "match_type": "exact", "key": f"k{i}"}
                         for i, prompt in enumerate(CACHED)}
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError("the broker did not acknowledge the responder's subscription")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            answer = self._answers.get(body.get("prompt"), {"status": "error", "code": "busy"})
        except ValueError:
            answer = {"status": "error", "code": "invalid_json"}
        request: Any = message.properties
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = request.CorrelationData
        client.publish(request.ResponseTopic, json.dumps(answer), qos=1, properties=properties)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def run_burst(
    host: str, port: int, topic: str, per_client: Sequence[Sequence[dict[str, Any]]],
) -> dict[str, Any]:
    """Publish everything at once from every client; wait until all is answered or quiet."""
    clients = [BurstClient(host, port, topic) for _ in per_client]
    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as senders:  # every client at once, no window
        list(senders.map(lambda pair: [pair[0].send(body) for body in pair[1]],
                         zip(clients, per_client, strict=True)))
    total = sum(len(bodies) for bodies in per_client)
    last_count, last_change = -1, time.monotonic()
    while True:
        count = sum(1 for c in clients for sent in list(c.sent.values()) if sent.replies)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        if count >= total or time.monotonic() - last_change > QUIET_S:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # late duplicates
    for c in clients:
        c.close()
    sent = [s for c in clients for s in c.sent.values()]
    hits = [s for s in sent if s.outcome == "exact" and s.latency_s is not None]
    hit_latencies = [s.latency_s for s in hits if s.latency_s is not None]
    hits_span = max((s.at + (s.latency_s or 0) for s in hits), default=started) - started
    outcomes: dict[str, int] = {}
    for s in sent:
        outcomes[s.outcome or "lost"] = outcomes.get(s.outcome or "lost", 0) + 1
    return {
        "requests": len(sent), "answered": sum(1 for s in sent if s.replies),
        "lost": sum(1 for s in sent if not s.replies),
        "duplicated": sum(max(0, s.replies - 1) for s in sent) + sum(c.unknown_replies for c in clients),
        "hits": len(hits), "hits_per_s": len(hits) / hits_span if hits_span > 0 else 0.0,
        "hit_p50_ms": percentile(hit_latencies, 0.5) * 1e3,
        "hit_p99_ms": percentile(hit_latencies, 0.99) * 1e3, "outcomes": outcomes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=500)
    parser.add_argument("--broker", choices=("embedded", "stock"), default="embedded")
    args = parser.parse_args()
    per_client = [workload(c, args.per_client, hits=16, paraphrases=1, invalid=2)
                  for c in range(args.clients)]

    with tempfile.TemporaryDirectory(prefix="audiogen-burst-") as tmp:
        root = Path(tmp)
        build_tiny_tangoflux(root / "models" / "tiny-tangoflux")
        broker = BrokerProcess.start(root / "broker", stock=args.broker == "stock")
        service: ServiceProcess | None = None
        try:
            responder = BareResponder(broker.host, broker.port, "floor/request")
            floor = run_burst(broker.host, broker.port, "floor/request", per_client)
            responder.close()
            service = ServiceProcess.start(root, service_sections(root, broker, root / "models"))
            prefill(service, broker)
            result = run_burst(broker.host, broker.port, service.topics.request, per_client)
            rss = peak_rss_bytes(service.process.pid)
        finally:
            if service is not None:
                service.stop()
            broker.stop()
        dropped = (root / "broker" / "mosquitto.log").read_text(errors="replace").count("dropped")

    print(f"broker={args.broker} clients={args.clients} per_client={args.per_client} "
          f"broker_drop_warnings={dropped}")
    print(f"floor: answered={floor['answered']} lost={floor['lost']} hits={floor['hits']} "
          f"hits_per_s={floor['hits_per_s']:.0f} hit_p50_ms={floor['hit_p50_ms']:.1f} "
          f"hit_p99_ms={floor['hit_p99_ms']:.1f}")
    print(f"appliance outcomes: {result['outcomes']}")
    figures = {
        "requests": result["requests"], "answered": result["answered"], "lost": result["lost"],
        "duplicated": result["duplicated"], "hits_per_s": round(result["hits_per_s"]),
        "floor_hits_per_s": round(floor["hits_per_s"]),
        "ratio": round(result["hits_per_s"] / floor["hits_per_s"], 2) if floor["hits_per_s"] else 0,
        "hit_p50_ms": round(result["hit_p50_ms"], 2), "hit_p99_ms": round(result["hit_p99_ms"], 2),
        "peak_rss_mb": round(rss / 2**20, 1),
    }
    print(" ".join(f"{name}={value}" for name, value in figures.items()))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
