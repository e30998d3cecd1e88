"""``appliance serve``: the wiring of every component, in one place, and the drain on exit.

Start order: broker (if embedded) → cache (with its sweep) → worker pool (loads in the
background) → HTTP → MQTT. Cache hits are served as soon as MQTT is up, even while the
workers still load. SIGTERM/SIGINT drain: stop taking requests, let the generations in
flight finish (up to ``drain_timeout_s``), answer the queued ones ``unavailable``, publish
``offline``, close the cache.

Under systemd (``Type=notify``) the main loop tells systemd ``READY=1`` once ``/readyz``
would say ready (broker connected, cache open, a worker ready), pings ``WATCHDOG=1`` on every
turn (so a stuck loop stops the pings and systemd restarts the service), keeps ``STATUS=``
current and says ``STOPPING=1`` when the drain begins. The same loop flushes hit counts to the
cache and publishes the retained ``<base>/<node>/stats`` summary.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import numpy as np
from threadpoolctl import threadpool_limits

from appliance.admin import AdminDispatcher
from appliance.admin_topics import AdminTopicHandler
from appliance.broker import BrokerChoice, EmbeddedBroker, start_broker
from appliance.cache.backend import database_connected, open_store
from appliance.cache.contract import Store
from appliance.cache.encoded import EncodedClips
from appliance.cache.prompt_vectors import PromptVectors
from appliance.cache.reuse import ReuseJudge, ReuseThresholds
from appliance.cache.semantic import ClapTextScorer, SemanticCache, Vector, ensure_embedder
from appliance.cache.store import CacheStore, EmbedderInfo
from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.fleet_requests import FleetRequests
from appliance.ha_discovery import DeviceInfo, HaTopics
from appliance.homeassistant import HomeAssistantBridge
from appliance.http import HttpServer, network_exposure
from appliance.instance import InstanceLock
from appliance.intake import Intake, Shedder
from appliance.local_requests import LocalReplies, LocalReply
from appliance.metrics import Metrics
from appliance.models.embedder import PromptEmbedder
from appliance.models.generator import random_weight_notes
from appliance.mqtt import InboundMessage, MqttAdapter
from appliance.sdnotify import SystemdNotifier
from appliance.stats import Periodic, WorkerCounts, stats_message
from appliance.supervisor import Supervisor
from appliance.topics import Topics
from appliance.worker.pool import WorkerPool
from appliance.wyoming_server import WyomingServer

log = logging.getLogger(__name__)

HIT_FLUSH_INTERVAL_S = 2.0
EMBEDDING_CACHE_SIZE = 4096  # prompts; 384 float32 each: ~6 MB
# The main loop's longest sleep: READY=1 follows the first ready worker within it. Shorter
# when the systemd watchdog asks for pings more often (WATCHDOG_USEC / 2).
MAX_TICK_S = 0.5


class Appliance:
    """The running service."""

    def __init__(
        self, settings: Settings, *, drain_timeout_s: float = 30.0,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.drain_timeout_s = drain_timeout_s
        self.metrics = Metrics()
        self.topics = Topics.from_settings(settings.node)
        self._notifier = notifier or SystemdNotifier.from_environment()
        self._ready_notified = False
        self._status_line = ""
        self._hit_flush = Periodic(HIT_FLUSH_INTERVAL_S, start_due=False)
        self._stats = Periodic(settings.stats.interval_s)
        self._stop = threading.Event()
        self._started_at = time.time()
        self._broker: EmbeddedBroker | None = None
        self._broker_choice: BrokerChoice | None = None
        self._instance: InstanceLock | None = None
        self._cache: Store | None = None
        self._fleet_requests: FleetRequests | None = None
        self._pool: WorkerPool | None = None
        self._mqtt: MqttAdapter | None = None
        self._http: HttpServer | None = None
        self._supervisor: Supervisor | None = None
        self._intake: Intake | None = None
        self._admin: AdminTopicHandler | None = None
        self._ha: HomeAssistantBridge | None = None
        self._wyoming: WyomingServer | None = None

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        """Start everything, serve until a stop signal, drain. Returns the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self._notify_status("starting")
            self._start()
            while not self._stop.wait(self.tick_interval_s()):
                self._tick()
        finally:
            self._shutdown()
        return 0

    def tick_interval_s(self) -> float:
        """How long the main loop sleeps between turns."""
        watchdog = self._notifier.watchdog_interval_s
        return min(MAX_TICK_S, watchdog) if watchdog else MAX_TICK_S

    def _start(self) -> None:
        s = self.settings
        # numpy's BLAS serves one vector search at a time; a second BLAS thread only waits to
        # be scheduled on a core the worker and the embedder already use (docs/cache.md)
        threadpool_limits(limits=1, user_api="blas")
        for note in random_weight_notes(s):
            log.warning("NO REAL MODEL: %s", note)
        self._instance = InstanceLock.acquire(s.cache.dir.parent)
        self._broker, self._broker_choice = start_broker(s.broker, s.cache.dir.parent / "broker")
        self._cache = open_store(s.cache, service=True)  # LMDB, or the fleet's PostgreSQL
        self._cache.sweep()
        # FLAC, Ogg Opus and MP3 copies of cached clips, kept within a quarter of the cache's cap
        encoded = EncodedClips(self._cache, max_bytes=s.cache.max_bytes // 4)
        encoded.sweep()
        self._refresh_cache_gauges()
        self.metrics.cache_max_items.set(s.cache.max_items)
        self.metrics.cache_max_bytes.set(s.cache.max_bytes)
        self.metrics.queue_capacity.set(s.workers.queue_size)
        self.metrics.cache_database_up.set_function(lambda: self._database_state() is not False)
        self._pool = WorkerPool(s, self.metrics)
        self._pool.start()
        self._http = HttpServer(
            s.http.host, s.http.port, cache=self._cache, metrics=self.metrics,
            health=self.health, readiness=self.readiness, audio_token=s.http.audio_token,
            encoded=encoded,
        )
        self._http.start()
        base_url = s.http.public_url or f"http://{s.http.host}:{self._http.port}"
        ha_topics = HaTopics.build(s.homeassistant, self.topics)
        self._mqtt = MqttAdapter(
            s.broker,
            client_id=s.broker.client_id or f"appliance-{self.topics.node}",
            status_topic=self.topics.status,
            subscriptions=self.topics.subscriptions()
            + (ha_topics.subscriptions() if s.homeassistant.discovery else []),
            on_message=self._on_message,
            metrics=self.metrics,
            fleet_subscriptions=self.topics.fleet_subscriptions(),
            max_payload_bytes=s.requests.max_payload_bytes,
        )
        # Home Assistant's prompts and Wyoming's requests take the same path as MQTT ones
        # a fleet on PostgreSQL journals the fleet requests it has not answered yet, so that
        # another node answers them if this one is killed (appliance/fleet_requests.py)
        if s.cache.backend == "postgres" and self.topics.share_group:
            self._fleet_requests = FleetRequests(s.cache.postgres_dsn, self.topics, self._offer)
        local = LocalReplies(self._fleet_requests.publisher(self._mqtt) if self._fleet_requests
                             else self._mqtt, self.topics)
        catalogue = self._pool.catalogue  # the models the workers serve; one is the default
        model_name = catalogue.default
        semantic, embed = self._semantic_cache() if s.cache.semantic else (None, None)
        self._supervisor = Supervisor(
            s, cache=self._cache, pool=self._pool, publisher=local, metrics=self.metrics,
            model_name=model_name, audio_base_url=base_url, semantic=semantic, embed=embed,
            on_served=self._clip_served, audio_budget=self._mqtt.audio_budget_allows,
            catalogue=catalogue, encoded=encoded,
        )
        # local requests (HA, Wyoming) take the intake too: its queue, its threads, its `busy`
        dispatch = local.dispatcher(self._supervisor.handle)
        self._intake = Intake(self._fleet_requests.dispatcher(dispatch) if self._fleet_requests else dispatch,
                              Shedder(local, self.topics, self.metrics),
                              capacity=s.requests.intake_size, threads=s.requests.dispatch_threads)
        self._intake.start()
        if self._fleet_requests is not None:
            self._fleet_requests.start()
        self.metrics.intake_capacity.set(s.requests.intake_size)
        self.metrics.intake_depth.set_function(self._intake.depth)
        self.metrics.mqtt_outgoing_bytes.set_function(lambda: self._mqtt.outgoing_bytes if self._mqtt else 0)
        local.bind(self._intake.offer)
        self._ha = HomeAssistantBridge(
            s.homeassistant, ha_topics, self._mqtt, audio_base_url=base_url,
            device=DeviceInfo(self.topics.node, s.homeassistant.device_name
                              or f"Audio generator {self.topics.node}", model_name, base_url),
            summary=self.metrics.summary, workers=self._pool.states,
            submit_prompt=lambda body: self._log_failure(local.submit(body, source="homeassistant")),
        )
        if s.wyoming.enabled:
            self._wyoming = WyomingServer(
                s.wyoming, submit=lambda body: local.submit(body, source="wyoming"),
                models=[model_name], timeout_s=s.workers.generation_timeout_s + 60)
            self._wyoming.start()
        self._admin = AdminTopicHandler(
            AdminDispatcher(self._cache), self._mqtt, self.topics,
            max_payload_bytes=s.requests.max_payload_bytes, after_change=self._refresh_cache_gauges,
        )
        self._mqtt.start()
        log.info("appliance started", extra={
            "request_topic": self.topics.request, "http": base_url,
            "broker": self._broker_choice.describe(), "cache_items": self._cache.totals().items,
        })

    def _semantic_cache(self) -> tuple[SemanticCache, PromptVectors]:
        """Load the prompt embedder, align the stored vectors with it, build the index."""
        assert self._cache is not None
        # appliance/cache/semantic.py still names the LMDB class; every store keeps its contract
        store = cast(CacheStore, self._cache)
        s = self.settings
        embedder = PromptEmbedder.from_dir(Path(s.models.embedder) if s.models.embedder else None)
        info = EmbedderInfo(embedder.name, embedder.dimension)
        reembedded = ensure_embedder(store, info, embedder.embed)
        tau_reuse = None if s.cache.tau_reuse == "model" else float(s.cache.tau_reuse)
        judge = ReuseJudge(embedder.embed, ReuseThresholds(s.cache.tau_semantic, tau_reuse),
                           token_vectors=embedder.token_vectors)
        clap_check = self._clap_text_check()
        semantic = SemanticCache(store, judge, dimension=embedder.dimension, top_k=s.cache.top_k,
                                 clap_check=clap_check, tau_clap_reuse=s.cache.tau_clap_reuse)
        semantic.sync()
        log.info("semantic cache ready", extra={"embedder": embedder.name, "items": len(semantic),
                                                "reembedded": reembedded,
                                                "clap_check": clap_check is not None})

        return semantic, PromptVectors(embedder.embed, capacity=EMBEDDING_CACHE_SIZE)

    def _clap_text_check(self) -> ClapTextScorer | None:
        """The CLAP verification of semantic hits, per ``cache.clap_check``; None when off.

        ``auto`` turns it on only with real CLAP weights: a random-weight scorer's numbers
        mean nothing (DESIGN.md). The text tower runs here on the CPU (one prompt, ~40 ms on
        the full model), not in a worker that may be busy generating for seconds.
        """
        s = self.settings
        mode = s.cache.clap_check
        if mode == "off" or (mode == "auto" and s.models.uses_tiny_clap):
            log.info("semantic hits are not verified by CLAP",
                     extra={"clap_check": mode, "reason": "configured off" if mode == "off"
                            else "random-weight scorer (models.clap is empty)"})
            return None
        clap_dir = s.models.clap_dir()
        if not (clap_dir / "config.json").is_file():
            raise ConfigError(f"cache.clap_check is {mode!r} but there is no CLAP model at {clap_dir} "
                              "(set models.clap, or run `appliance models build-tiny`)")
        from appliance.models.clap import ClapScorer  # torch + transformers: only when used

        scorer = ClapScorer.from_dir(clap_dir, device="cpu")
        if mode == "auto" and scorer.is_random:
            log.info("semantic hits are not verified by CLAP",
                     extra={"clap_check": mode, "reason": f"random-weight scorer at {clap_dir}"})
            return None

        def check(prompt: str, audio_vector: Vector) -> float:
            text = scorer.text_embeddings([prompt])[0]
            return float(np.dot(text.astype(np.float64), audio_vector.astype(np.float64)))

        return check

    def _offer(self, message: InboundMessage) -> None:
        if self._intake is not None:
            self._intake.offer(message)

    def _on_message(self, message: InboundMessage) -> None:
        if self._admin is not None and self.topics.is_admin(message.topic):
            self._admin.handle(message)
        elif self._ha is not None and self._ha.handles(message.topic):
            self._ha.handle(message)
        elif self._intake is not None:
            self._intake.offer(message)  # the network thread only enqueues (appliance/intake.py)

    def _clip_served(self, body: dict[str, Any]) -> None:
        if self._ha is not None:
            self._ha.clip_served(body)

    @staticmethod
    def _log_failure(future: Future[LocalReply]) -> None:
        """Log a prompt from Home Assistant that was not served (nobody else would see it)."""
        def done(f: Future[LocalReply]) -> None:
            if f.exception() is None and not f.result().ok:
                body = f.result().body
                log.warning("prompt from Home Assistant not served", extra={
                    "request_id": body.get("request_id"), "code": body.get("code"),
                    "error": body.get("message")})

        future.add_done_callback(done)

    def _refresh_cache_gauges(self) -> None:
        if self._cache is not None:
            totals = self._cache.totals()
            self.metrics.cache_items.set(totals.items)
            self.metrics.cache_bytes.set(totals.bytes)

    def _tick(self) -> None:
        """One turn of the main loop. Never raises: a failing chore must not stop the loop."""
        self._notifier.watchdog()
        try:
            if self._cache is not None and self._hit_flush.due():
                self._cache.flush_hits()
                self._refresh_cache_gauges()  # also sees what `appliance cache …` changed
            ready, body = self.readiness()
            if ready and not self._ready_notified:
                self._ready_notified = True
                self._status_line = self._describe(ready, body)
                self._notifier.ready(self._status_line)
                log.info("ready", extra={"workers_ready": self._pool.ready_count() if self._pool else 0})
                if self._mqtt is not None and self.settings.stats.interval_s > 0:
                    self._publish_stats()  # the first summary that counts a ready worker
            else:
                self._notify_status(self._describe(ready, body))
            if self._mqtt is not None and self._mqtt.connected and self._stats.due():
                self._publish_stats()
            if self._ha is not None and self._mqtt is not None:
                self._ha.tick(self._mqtt.connected)
        except Exception:
            log.exception("main loop chore failed")

    def _describe(self, ready: bool, body: dict[str, Any]) -> str:
        """The one-line STATUS= text that `systemctl status` shows."""
        ready_workers = self._pool.ready_count() if self._pool else 0
        workers = f"{ready_workers}/{len(self.settings.workers.devices)} workers ready"
        if ready:
            return f"ready: {workers}"
        state = "starting" if not self._ready_notified else "not ready"
        return f"{state}: {'; '.join(body['reasons'])} ({workers})"

    def _notify_status(self, line: str) -> None:
        if line != self._status_line:
            self._status_line = line
            self._notifier.status(line)

    def _publish_stats(self) -> None:
        assert self._mqtt is not None
        workers = WorkerCounts(self._pool.ready_count() if self._pool else 0,
                               len(self.settings.workers.devices))
        message = stats_message(self.metrics.summary(), node=self.topics.node, workers=workers,
                                mqtt_connected=self._mqtt.connected)
        self._mqtt.publish(self.topics.stats, json.dumps(message).encode(), retain=True)

    def notes(self) -> list[str]:
        """What an operator must know about the models in use (shown by `appliance status`)."""
        notes = random_weight_notes(self.settings)  # each served generator, tiny or full-size
        states = self._pool.states() if self._pool else []
        if self.settings.models.uses_tiny_clap or any(s.get("scorer_random") for s in states):
            notes.append("random-weight CLAP scorer: clap_similarity means nothing, so the quality "
                         "gate and the CLAP check of semantic hits are off unless forced on "
                         "(set models.clap to a directory of real LAION-CLAP weights)")
        exposure = network_exposure(self.settings.http.host, self.settings.http.audio_token)
        if exposure is not None:
            notes.append(exposure)
        if self._database_state() is False:
            notes.append("the cache database is unreachable: hits come from this node's mirror, "
                         "new clips are delivered but not stored (docs/fleet.md)")
        return notes

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
            # why not, e.g. models.tangoflux names no directory (each worker's line says it too)
            reasons.extend(self._pool.start_problems() if self._pool else [])
        database = self._database_state()
        status = "not_ready" if reasons else "degraded" if database is False else "ready"
        body: dict[str, Any] = {"status": status,
                                "reasons": reasons,
                                "cache": {"backend": self.settings.cache.backend} | (
                                    {} if database is None else
                                    {"database": "connected" if database else "lost"}),
                                "broker": self._broker_choice.describe() if self._broker_choice else {},
                                "workers": self._pool.states() if self._pool else [],
                                "model_tiny": self.settings.models.uses_tiny,
                                "homeassistant": self._ha.status() if self._ha else {"discovery": False},
                                "wyoming": self._wyoming.status() if self._wyoming else {"enabled": False},
                                "notes": self.notes()}
        return not reasons, body

    def _database_state(self) -> bool | None:
        """The fleet cache's database connection; None with LMDB (or before the cache opens)."""
        return None if self._cache is None else database_connected(self._cache)

    def _shutdown(self) -> None:
        log.info("draining")
        supervisor, pool = self._supervisor, self._pool
        in_flight = supervisor.in_flight() if supervisor is not None else 0
        self._notifier.stopping(f"draining: {in_flight} requests in flight")
        if self._mqtt is not None:
            self._mqtt.leave_fleet()  # the fleet's other nodes take its requests from now on
        if supervisor is not None:
            supervisor.stop_accepting()
        if pool is not None:
            pool.stop_accepting()
        if supervisor is not None:
            supervisor.close()  # lookups under way end in a hit or in `unavailable`
        if pool is not None:
            # queued generations are answered `unavailable` at once; the ones under way get
            # until the drain timeout to finish (then `unavailable` too)
            pool.stop(timeout_s=self.drain_timeout_s)
        if supervisor is not None:
            answered_by = time.monotonic() + 2.0
            while supervisor.in_flight() and time.monotonic() < answered_by:
                time.sleep(0.02)
        if self._wyoming is not None:
            self._wyoming.stop()
        if self._admin is not None:
            self._admin.close()
        if self._intake is not None:
            self._intake.close()  # what is queued is answered (`unavailable` or a hit)
        if self._mqtt is not None:
            self._mqtt.stop()
        if self._http is not None:
            self._http.stop()
        if self._fleet_requests is not None:
            self._fleet_requests.close()
        if self._cache is not None:
            self._cache.close()
        if self._broker is not None:
            self._broker.stop()
        if self._instance is not None:
            self._instance.release()
        self._notifier.status("stopped")
        self._notifier.close()
        log.info("stopped")
