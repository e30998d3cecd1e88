"""The stats summary built from a real registry, and its schedule (the live topic is in
tests/test_metrics_live.py)."""

from __future__ import annotations

from appliance.metrics import Metrics
from appliance.stats import Periodic, WorkerCounts, stats_message


def test_summary_reads_the_counters_back() -> None:
    metrics = Metrics()
    empty = stats_message(metrics.summary(), node="n", workers=WorkerCounts(0, 2), mqtt_connected=False)
    assert empty["requests"] == 0 and empty["cache"]["hit_rate"] is None, "no lookups: no rate"
    metrics.cache_lookups.labels(result="exact").inc(3)
    metrics.cache_lookups.labels(result="semantic").inc()
    metrics.cache_lookups.labels(result="miss").inc(4)
    metrics.requests.labels(outcome="hit", source="mqtt").inc(3)
    metrics.requests.labels(outcome="busy", source="mqtt5").inc(2)
    metrics.cache_items.set(7)
    metrics.cache_bytes.set(7000)
    metrics.cache_evictions.inc(1)
    now = metrics.summary().start_time + 12.34
    body = stats_message(metrics.summary(), node="lobby", workers=WorkerCounts(1, 2),
                         mqtt_connected=True, now=now)
    assert body["node"] == "lobby" and body["requests"] == 5 and body["uptime_s"] == 12.3
    assert body["cache"] == {"items": 7, "bytes": 7000, "evictions": 1, "lookups": 8,
                             "exact_hits": 3, "semantic_hits": 1, "misses": 4, "hit_rate": 0.5}
    assert body["workers"] == {"ready": 1, "configured": 2} and body["mqtt_connected"] is True


def test_periodic_is_due_once_per_interval_and_never_at_zero() -> None:
    start = 1000.0
    every = Periodic(10.0, start_due=False, now=start)
    assert not every.due(start + 9.9)
    assert every.due(start + 10.0)
    assert not every.due(start + 19.9)
    assert every.due(start + 20.0)
    assert Periodic(5.0).due(), "start_due: the first turn publishes at once"
    never = Periodic(0.0)
    assert not never.due() and not never.due(1e12)
