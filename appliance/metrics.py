"""The Prometheus registry: every metric the appliance exports, owned by the supervisor.

Workers report their figures over IPC and the supervisor records them here, so there is no
multiprocess directory and no metric is lost when a worker restarts. One registry per
:class:`Metrics` instance (no global state), which keeps tests independent.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from appliance import __version__

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300,
)
_GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# CLAP cosines of a prompt and a clip: real LAION-CLAP scores of good clips sit around
# 0.3-0.6; negative ones mean "unrelated" (or a random-weight scorer).
_CLAP_BUCKETS = (-0.2, 0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1.0)


class Metrics:
    """All metrics of one supervisor."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "audiogen_requests_total", "Requests answered, by outcome and source.",
            ["outcome", "source"], registry=r,
        )
        self.malformed_requests = Counter(
            "audiogen_malformed_requests_total", "Requests rejected as invalid, by error code.",
            ["code"], registry=r,
        )
        self.cache_lookups = Counter(
            "audiogen_cache_lookups_total", "Cache lookups by result (exact, semantic, miss).",
            ["result"], registry=r,
        )
        self.request_duration = Histogram(
            "audiogen_request_duration_seconds",
            "Time from request received to reply published, by path (hit, semantic_hit, "
            "generated, error).",
            ["path"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "audiogen_queue_wait_seconds", "Time a generation waited for a worker.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.generation = Histogram(
            "audiogen_generation_seconds", "Time a worker spent generating one request.",
            buckets=_GENERATION_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "audiogen_queue_depth", "Generations waiting for a worker.", registry=r,
        )
        self.cache_items = Gauge("audiogen_cache_items", "Items in the cache.", registry=r)
        self.cache_bytes = Gauge(
            "audiogen_cache_bytes", "Bytes of audio held by the cache.", registry=r,
        )
        self.cache_evictions = Counter(
            "audiogen_cache_evictions_total", "Items evicted to keep the cache under its caps.",
            registry=r,
        )
        self.semantic_similarity = Histogram(
            "audiogen_semantic_similarity", "Prompt-embedding cosine of accepted semantic hits.",
            buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0), registry=r,
        )
        self.cache_max_items = Gauge(
            "audiogen_cache_max_items", "The configured item cap (cache.max_items).", registry=r,
        )
        self.cache_max_bytes = Gauge(
            "audiogen_cache_max_bytes", "The configured byte cap (cache.max_bytes).", registry=r,
        )
        self.queue_capacity = Gauge(
            "audiogen_queue_capacity", "The configured queue bound (workers.queue_size).",
            registry=r,
        )
        self.clap_similarity = Histogram(
            "audiogen_clap_similarity",
            "CLAP prompt-audio cosine of each new generation (the clip that was delivered).",
            buckets=_CLAP_BUCKETS, registry=r,
        )
        self.quality_gate_rejections = Counter(
            "audiogen_quality_gate_rejections_total",
            "New generations delivered but not cached: CLAP score below tau_accept_new.",
            registry=r,
        )
        self.cache_store_failures = Counter(
            "audiogen_cache_store_failures_total", "Results that could not be cached.",
            registry=r,
        )
        self.cache_database_up = Gauge(
            "audiogen_cache_database_up",
            "1 while this node holds its connection to the fleet's cache database "
            "(cache.backend = postgres); always 1 for the embedded LMDB store.", registry=r,
        )
        self.worker_up = Gauge(
            "audiogen_worker_up", "1 when the worker process is running.",
            ["worker", "device"], registry=r,
        )
        self.worker_ready = Gauge(
            "audiogen_worker_ready", "1 when the worker has loaded its model and is serving.",
            ["worker", "device"], registry=r,
        )
        self.worker_restarts = Counter(
            "audiogen_worker_restarts_total", "Worker processes restarted after a failure.",
            ["worker", "reason"], registry=r,
        )
        self.model_load = Gauge(
            "audiogen_model_load_seconds", "Seconds the worker took to load its model.",
            ["worker", "device"], registry=r,
        )
        self.worker_gpu_memory = Gauge(
            "audiogen_worker_gpu_memory_bytes",
            "GPU memory held by the worker's PyTorch tensors, as it last reported it.",
            ["worker", "device"], registry=r,
        )
        self.mqtt_connected = Gauge(
            "audiogen_mqtt_connected", "1 while connected to the broker.", registry=r,
        )
        self.mqtt_reconnects = Counter(
            "audiogen_mqtt_reconnects_total", "Connections to the broker after the first.",
            registry=r,
        )
        self.mqtt_received = Counter(
            "audiogen_mqtt_messages_received_total", "MQTT messages received.", registry=r,
        )
        self.mqtt_sent = Counter(
            "audiogen_mqtt_messages_sent_total", "MQTT messages published.", registry=r,
        )
        self.intake_depth = Gauge(
            "audiogen_intake_depth", "Requests received and waiting for a dispatch thread.",
            registry=r,
        )
        self.intake_capacity = Gauge(
            "audiogen_intake_capacity", "The configured intake bound (requests.intake_size).",
            registry=r,
        )
        self.intake_shed = Counter(
            "audiogen_intake_shed_total",
            "Requests answered busy on arrival because the intake was full.", registry=r,
        )
        self.mqtt_outgoing_bytes = Gauge(
            "audiogen_mqtt_outgoing_bytes",
            "Bytes published and not yet acknowledged by the broker.", registry=r,
        )
        self.mqtt_redeliveries = Counter(
            "audiogen_mqtt_redeliveries_dropped_total",
            "QoS 1 messages the broker sent again (DUP) after they had been handled.", registry=r,
        )
        self.start_time = Gauge(
            "audiogen_start_time_seconds", "Unix time the supervisor started.", registry=r,
        )
        self.start_time.set(time.time())
        self.build_info = Info("audiogen_build", "Version of the appliance.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})

    def summary(self) -> Summary:
        """The headline figures, read back from the counters (for the MQTT stats message)."""
        def value(name: str, labels: dict[str, str] | None = None) -> float:
            return self.registry.get_sample_value(name, labels or {}) or 0.0

        lookups = {result: value("audiogen_cache_lookups_total", {"result": result})
                   for result in ("exact", "semantic", "miss")}
        requests = sum(
            sample.value for metric in self.requests.collect() for sample in metric.samples
            if sample.name == "audiogen_requests_total"
        )
        return Summary(
            requests=int(requests),
            exact_hits=int(lookups["exact"]),
            semantic_hits=int(lookups["semantic"]),
            misses=int(lookups["miss"]),
            cache_items=int(value("audiogen_cache_items")),
            cache_bytes=int(value("audiogen_cache_bytes")),
            evictions=int(value("audiogen_cache_evictions_total")),
            queue_depth=int(value("audiogen_queue_depth")),
            start_time=value("audiogen_start_time_seconds"),
        )


@dataclass(frozen=True)
class Summary:
    """Counters since the supervisor started, and the current gauges."""

    requests: int
    exact_hits: int
    semantic_hits: int
    misses: int
    cache_items: int
    cache_bytes: int
    evictions: int
    queue_depth: int
    start_time: float

    @property
    def lookups(self) -> int:
        return self.exact_hits + self.semantic_hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        """Share of lookups answered from the cache; None before the first lookup."""
        return (self.exact_hits + self.semantic_hits) / self.lookups if self.lookups else None
