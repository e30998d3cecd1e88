"""A bounded burst of mixed requests from several MQTT 5 clients on loopback.

Starts a private mosquitto and a real ``appliance serve`` (tiny model), caches a few prompts,
then sends ``--total`` requests (default 5,000) from ``--clients`` clients at once: exact hits,
paraphrases (semantic hits) and new prompts (misses: generated, or ``busy`` when the queue is
full). Checks that every request was answered exactly once and reports latency percentiles by
outcome and the supervisor's peak RSS (VmHWM).

    .venv/bin/python bench/load.py [--total 5000] [--clients 8] [--window 32]

Last line: ``sent=… answered=… lost=… duplicated=… exact_p50_ms=… exact_p99_ms=… semantic_p50_ms=…
busy=… generated=… supervisor_peak_rss_mb=… requests_per_s=…``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.client import RequestClient
from appliance.loadgen import burst, peak_rss_bytes, percentile
from appliance.models.tiny import build_tiny_tangoflux
from testkit.services import BrokerProcess, ServiceProcess, service_sections

CACHED = ["rain on a tin roof", "a dog barking in the distance", "wind through pine trees",
          "church bells ringing", "a busy street with traffic"]
PARAPHRASES = ["a dog barks far away", "rain falling on a metal roof", "bells of a church ringing"]


def workload(client: int, count: int, *, hits: int = 10, paraphrases: int = 4,
             invalid: int = 0) -> list[dict[str, Any]]:
    """Of every 20 requests: ``hits`` exact repeats of cached prompts, ``paraphrases`` of them,
    ``invalid`` ones (an empty prompt), the rest new prompts (cheap generations)."""
    bodies: list[dict[str, Any]] = []
    for index in range(count):
        kind = index % 20
        if kind < hits:
            bodies.append({"prompt": CACHED[index % len(CACHED)], "duration_s": 1})
        elif kind < hits + paraphrases:
            bodies.append({"prompt": PARAPHRASES[index % len(PARAPHRASES)], "duration_s": 1})
        elif kind < hits + paraphrases + invalid:
            bodies.append({"prompt": "", "duration_s": 1})
        else:
            bodies.append({"prompt": f"new sound {client} {index}", "duration_s": 1, "steps": 2})
    return bodies


def prefill(service: ServiceProcess, broker: BrokerProcess) -> None:
    """Wait until the service is ready, then cache the prompts that the workload repeats."""
    service.wait_ready()
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        for prompt in CACHED:
            client.request({"prompt": prompt, "duration_s": 1}, timeout_s=120)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=int, default=32, help="unanswered requests per client")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="audiogen-load-") as tmp:
        root = Path(tmp)
        build_tiny_tangoflux(root / "models" / "tiny-tangoflux")
        broker = BrokerProcess.start(root / "broker")
        service = ServiceProcess.start(root, service_sections(root, broker, root / "models"))
        try:
            prefill(service, broker)
            per_client = [workload(c, args.total // args.clients) for c in range(args.clients)]
            report = burst(broker.host, broker.port, service.topics.request, per_client,
                           window=args.window, timeout_s=600, settle_s=1.0)
            rss = peak_rss_bytes(service.process.pid)
        finally:
            service.stop()
            broker.stop()

    print(f"outcomes: {dict(report.outcomes)}")
    for outcome, values in sorted(report.latencies_by_outcome.items()):
        print(f"  {outcome:>10}: n={len(values)} p50={percentile(values, 0.5) * 1e3:.2f} ms "
              f"p99={percentile(values, 0.99) * 1e3:.2f} ms max={max(values) * 1e3:.2f} ms")
    lat = report.latencies_by_outcome
    figures = {
        "sent": report.sent, "answered": report.answered, "lost": report.lost,
        "duplicated": report.duplicated + report.unknown,
        "exact_p50_ms": round(percentile(lat.get("exact", []), 0.5) * 1e3, 3),
        "exact_p99_ms": round(percentile(lat.get("exact", []), 0.99) * 1e3, 3),
        "semantic_p50_ms": round(percentile(lat.get("semantic", []), 0.5) * 1e3, 3),
        "semantic_p99_ms": round(percentile(lat.get("semantic", []), 0.99) * 1e3, 3),
        "busy": report.outcomes.get("busy", 0), "generated": report.outcomes.get("generated", 0),
        "supervisor_peak_rss_mb": round(rss / 2**20, 1),
        "requests_per_s": round(report.sent / report.elapsed_s, 1),
    }
    print(" ".join(f"{name}={value}" for name, value in figures.items()))
    return 0 if report.lost == 0 and report.duplicated == 0 and report.unknown == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
