"""``appliance serve``: the wiring of every component, in one place, and the drain on exit.

Start order: broker (if embedded) → cache (with its sweep) → worker pool (loads in the
background) → HTTP → MQTT. Cache hits are served as soon as MQTT is up, even while the
workers still load. SIGTERM/SIGINT drain: stop taking requests, let the generations in
flight finish (up to ``drain_timeout_s``), answer the queued ones ``unavailable``, publish
``offline``, close the cache.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.admin import AdminDispatcher
from appliance.admin_topics import AdminTopicHandler
from appliance.broker import EmbeddedBroker
from appliance.cache.match import ReuseJudge, ReuseThresholds
from appliance.cache.semantic import SemanticCache, Vector, ensure_embedder
from appliance.cache.store import CacheStore, EmbedderInfo
from appliance.config import Settings
from appliance.http import HttpServer
from appliance.metrics import Metrics
from appliance.models.embedder import PromptEmbedder
from appliance.models.files import generator_identity
from appliance.mqtt import InboundMessage, MqttAdapter
from appliance.supervisor import Supervisor
from appliance.topics import Topics
from appliance.worker.pool import WorkerPool

log = logging.getLogger(__name__)

HIT_FLUSH_INTERVAL_S = 2.0


class Appliance:
    """The running service."""

    def __init__(self, settings: Settings, *, drain_timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.drain_timeout_s = drain_timeout_s
        self.metrics = Metrics()
        self.topics = Topics.from_settings(settings.node)
        self._stop = threading.Event()
        self._started_at = time.time()
        self._broker: EmbeddedBroker | None = None
        self._cache: CacheStore | None = None
        self._pool: WorkerPool | None = None
        self._mqtt: MqttAdapter | None = None
        self._http: HttpServer | None = None
        self._supervisor: Supervisor | None = None
        self._admin: AdminTopicHandler | None = None

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        """Start everything, serve until a stop signal, drain. Returns the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self._start()
            while not self._stop.wait(HIT_FLUSH_INTERVAL_S):
                self._tick()
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        s = self.settings
        if s.models.uses_tiny:
            log.warning(
                "NO REAL MODEL CONFIGURED: generating with the TINY RANDOM-WEIGHT TangoFlux "
                "(noise, for demos and tests). Set models.tangoflux to a TangoFlux directory "
                "for real audio.",
                extra={"model_dir": str(s.models.tangoflux_dir())},
            )
        if s.broker.embedded:
            self._broker = EmbeddedBroker(
                s.broker.host, s.broker.port, s.cache.dir.parent / "broker",
                max_packet_bytes=s.broker.max_packet_bytes,
            )
            self._broker.start()
        self._cache = CacheStore(s.cache.dir, map_size_bytes=s.cache.map_size_bytes)
        self._cache.sweep()
        self._refresh_cache_gauges()
        self._pool = WorkerPool(s, self.metrics)
        self._pool.start()
        self._http = HttpServer(
            s.http.host, s.http.port, cache=self._cache, metrics=self.metrics,
            health=self.health, readiness=self.readiness,
        )
        self._http.start()
        base_url = s.http.public_url or f"http://{s.http.host}:{self._http.port}"
        self._mqtt = MqttAdapter(
            s.broker,
            client_id=s.broker.client_id or f"appliance-{self.topics.node}-{os.getpid()}",
            status_topic=self.topics.status,
            subscriptions=self.topics.subscriptions(),
            on_message=self._on_message,
            metrics=self.metrics,
        )
        semantic, embed = self._semantic_cache() if s.cache.semantic else (None, None)
        self._supervisor = Supervisor(
            s, cache=self._cache, pool=self._pool, publisher=self._mqtt, metrics=self.metrics,
            model_name=generator_identity(s.models.tangoflux_dir(), tiny=s.models.uses_tiny),
            audio_base_url=base_url, semantic=semantic, embed=embed,
        )
        self._admin = AdminTopicHandler(
            AdminDispatcher(self._cache), self._mqtt, self.topics,
            max_payload_bytes=s.requests.max_payload_bytes, after_change=self._refresh_cache_gauges,
        )
        self._mqtt.start()
        log.info("appliance started", extra={
            "request_topic": self.topics.request, "http": base_url,
            "broker": f"{s.broker.host}:{s.broker.port}", "cache_items": self._cache.totals().items,
        })

    def _semantic_cache(self) -> tuple[SemanticCache, Callable[[str], Vector]]:
        """Load the prompt embedder, align the stored vectors with it, build the index."""
        assert self._cache is not None
        s = self.settings
        embedder = PromptEmbedder.from_dir(Path(s.models.embedder) if s.models.embedder else None)
        info = EmbedderInfo(embedder.name, embedder.dimension)
        reembedded = ensure_embedder(self._cache, info, embedder.embed)
        judge = ReuseJudge(ReuseThresholds(tau_semantic=s.cache.tau_semantic, tau_reuse=s.cache.tau_reuse))
        semantic = SemanticCache(self._cache, judge, dimension=embedder.dimension, top_k=s.cache.top_k,
                                 tau_clap_reuse=s.cache.tau_clap_reuse)
        semantic.sync()
        log.info("semantic cache ready", extra={"embedder": embedder.name, "items": len(semantic),
                                                "reembedded": reembedded})

        def embed(prompt: str) -> Vector:
            return embedder.embed([prompt])[0]

        return semantic, embed

    def _on_message(self, message: InboundMessage) -> None:
        if self._admin is not None and self.topics.is_admin(message.topic):
            self._admin.handle(message)
        elif self._supervisor is not None:
            self._supervisor.handle(message)

    def _refresh_cache_gauges(self) -> None:
        if self._cache is not None:
            totals = self._cache.totals()
            self.metrics.cache_items.set(totals.items)
            self.metrics.cache_bytes.set(totals.bytes)

    def _tick(self) -> None:
        if self._cache is not None:
            self._cache.flush_hits()

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok", "pid": os.getpid(),
                      "uptime_s": round(time.time() - self._started_at, 1),
                      "workers": self._pool.states() if self._pool else []}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons = []
        if self._mqtt is None or not self._mqtt.connected:
            reasons.append("not connected to the broker")
        if self._cache is None:
            reasons.append("cache not open")
        if self._pool is None or self._pool.ready_count() == 0:
            reasons.append("no worker ready")
        body: dict[str, Any] = {"status": "ready" if not reasons else "not_ready",
                                "reasons": reasons,
                                "workers": self._pool.states() if self._pool else [],
                                "model_tiny": self.settings.models.uses_tiny}
        return not reasons, body

    def _shutdown(self) -> None:
        log.info("draining")
        supervisor, pool = self._supervisor, self._pool
        if supervisor is not None:
            supervisor.stop_accepting()
        if pool is not None:
            pool.stop_accepting()
        deadline = time.monotonic() + self.drain_timeout_s
        while supervisor is not None and supervisor.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pool is not None:
            pool.stop(timeout_s=max(1.0, deadline - time.monotonic()))  # queued → unavailable
        if supervisor is not None:
            supervisor.close()
            answered_by = time.monotonic() + 2.0
            while supervisor.in_flight() and time.monotonic() < answered_by:
                time.sleep(0.02)
        if self._admin is not None:
            self._admin.close()
        if self._mqtt is not None:
            self._mqtt.stop()
        if self._http is not None:
            self._http.stop()
        if self._cache is not None:
            self._cache.close()
        if self._broker is not None:
            self._broker.stop()
        log.info("stopped")
