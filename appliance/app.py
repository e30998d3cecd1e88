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
from typing import Any

from appliance.broker import EmbeddedBroker
from appliance.cache.store import CacheStore
from appliance.config import Settings
from appliance.http import HttpServer
from appliance.metrics import Metrics
from appliance.models.files import generator_identity
from appliance.mqtt import MqttAdapter
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
        totals = self._cache.totals()
        self.metrics.cache_items.set(totals.items)
        self.metrics.cache_bytes.set(totals.bytes)
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
        self._supervisor = Supervisor(
            s, cache=self._cache, pool=self._pool, publisher=self._mqtt, metrics=self.metrics,
            model_name=generator_identity(s.models.tangoflux_dir(), tiny=s.models.uses_tiny),
            audio_base_url=base_url,
        )
        self._mqtt.start()
        log.info("appliance started", extra={
            "request_topic": self.topics.request, "http": base_url,
            "broker": f"{s.broker.host}:{s.broker.port}", "cache_items": totals.items,
        })

    def _on_message(self, message: Any) -> None:
        if self._supervisor is not None:
            self._supervisor.handle(message)

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
            answered_by = time.monotonic() + 2.0
            while supervisor.in_flight() and time.monotonic() < answered_by:
                time.sleep(0.02)
        if self._mqtt is not None:
            self._mqtt.stop()
        if self._http is not None:
            self._http.stop()
        if self._cache is not None:
            self._cache.close()
        if self._broker is not None:
            self._broker.stop()
        log.info("stopped")
