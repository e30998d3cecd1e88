"""The periodic, retained ``<base>/<node>/stats`` summary.

A device or a dashboard without Prometheus (a fleet console subscribed to
``<base>/+/stats``) sees each appliance's health and cache effect at a glance; retained, so a
new subscriber gets the latest one at once. Built from the same counters as ``/metrics``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from appliance import __version__
from appliance.metrics import Summary


@dataclass(frozen=True)
class WorkerCounts:
    ready: int
    configured: int


def stats_message(
    summary: Summary, *, node: str, workers: WorkerCounts, mqtt_connected: bool,
    now: float | None = None,
) -> dict[str, Any]:
    """The JSON body of one stats message (counters since the supervisor started)."""
    now = time.time() if now is None else now
    hit_rate = summary.hit_rate
    return {
        "node": node,
        "version": __version__,
        "timestamp": round(now, 3),
        "uptime_s": round(max(0.0, now - summary.start_time), 1),
        "requests": summary.requests,
        "cache": {
            "items": summary.cache_items,
            "bytes": summary.cache_bytes,
            "evictions": summary.evictions,
            "lookups": summary.lookups,
            "exact_hits": summary.exact_hits,
            "semantic_hits": summary.semantic_hits,
            "misses": summary.misses,
            "hit_rate": None if hit_rate is None else round(hit_rate, 4),
        },
        "workers": {"ready": workers.ready, "configured": workers.configured},
        "queue_depth": summary.queue_depth,
        "mqtt_connected": mqtt_connected,
    }


class Periodic:
    """Says when something that runs every ``interval_s`` (0: never) is due."""

    def __init__(self, interval_s: float, *, start_due: bool = True, now: float | None = None) -> None:
        self.interval_s = interval_s
        now = time.monotonic() if now is None else now
        self._next = now if start_due else now + interval_s

    def due(self, now: float | None = None) -> bool:
        if self.interval_s <= 0:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True
