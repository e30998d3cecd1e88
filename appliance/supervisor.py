"""One request's life: validate → exact hit? → queue → worker → cache → reply.

Every inbound message ends in exactly one reply (or one error reply), published to the
address the request named: the MQTT 5 Response Topic (with its Correlation Data), else the
``reply_to`` field, else ``<base>/<node>/reply/<request_id>``. Requests arrive from the
intake's dispatch threads (appliance/intake.py), never on the MQTT network thread: exact hits
are answered there, semantic lookups go to their own thread (so exact hits never wait behind
embeddings), generations are queued and answered from the pool's callback.

Admission, before any cache work: draining → ``unavailable``; the per-client and the global
rate limit → ``busy``. Later: an audio reply that would go beyond the outgoing byte budget, and
an identical request beyond ``requests.max_waiters_per_generation``, are answered ``busy``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from appliance.audio import MEDIA_TYPES, delivered_rate, encode_wav, transcode
from appliance.cache.contract import Store
from appliance.cache.encoded import EncodedClips
from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.prompt_vectors import PromptVectors
from appliance.cache.semantic import Compatibility, SemanticCache, Vector
from appliance.cache.store import CacheItem
from appliance.config import Settings
from appliance.errors import (
    ApplianceError,
    Busy,
    CacheError,
    InvalidRequest,
    NotFound,
    Unavailable,
    WorkerFailed,
)
from appliance.metrics import Metrics
from appliance.models.generator import FAMILY_DEFAULTS, ModelCatalogue
from appliance.mqtt import InboundMessage
from appliance.protocol import (
    FieldError,
    Request,
    RequestMessage,
    encode,
    error_reply,
    parse_request,
    resolve_parameters,
    salvage_reply_fields,
)
from appliance.ratelimit import RateLimiter
from appliance.topics import Topics
from appliance.worker.client import GenerationResult

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        correlation_data: bytes | None = None, qos: int = 1,
    ) -> None: ...


class GenerationQueue(Protocol):
    def submit(
        self, request_id: str, params: Any, on_progress: Callable[[int, int], None] | None = None
    ) -> Future[GenerationResult]: ...


@dataclass(frozen=True)
class ReplyAddress:
    topic: str
    correlation_data: bytes | None = None


_RESERVED = "names a topic of an appliance (its requests, status or admin commands)"


@dataclass
class PendingReply:
    """A request waiting for a generation (several when identical requests coalesce)."""

    request: Request
    address: ReplyAddress
    received_at: float


@dataclass
class _Generated:
    """A finished generation, shared by the requests that waited for it."""

    result: GenerationResult
    item: CacheItem
    stored: bool
    gate: str  # what the quality gate was (on, or off and why)
    encodings: dict[str, bytes]  # each format encoded once for all waiters

    def encoded(self, audio_format: str, kept: EncodedClips) -> bytes:
        if audio_format not in self.encodings:
            master = self.encodings[self.item.audio_format]
            self.encodings[audio_format] = (kept.read(self.item, audio_format, master=master)
                                            if self.stored else transcode(master, audio_format))
        return self.encodings[audio_format]


@dataclass
class _InFlight:
    waiters: list[PendingReply] = field(default_factory=list)
    vector: Vector | None = None


def reply_address(
    topics: Topics, message: InboundMessage, reply_to: str | None, default: str,
) -> ReplyAddress:
    """Where the answer to a request or an admin command goes: its Response Topic, else its
    ``reply_to``, else ``default``. An address naming the topics of this appliance or of
    another node (requests, status, admin commands) is refused, so that a device cannot make
    one appliance command itself or another."""
    if message.response_topic:
        if topics.is_reserved(message.response_topic):
            raise FieldError("response_topic", _RESERVED)
        return ReplyAddress(message.response_topic, message.correlation_data)
    if reply_to is not None:
        if topics.is_reserved(reply_to):
            raise FieldError("reply_to", _RESERVED)
        return ReplyAddress(reply_to)
    return ReplyAddress(default)


def error_address(
    topics: Topics, message: InboundMessage, request_id: str | None, reply_to: str | None,
    *, default: str | None = None,
) -> ReplyAddress:
    """Where an error goes when the request could not be read in full or its address was
    refused: :func:`reply_address`'s choice less the refused ones (the best one can)."""
    if message.response_topic and not topics.is_reserved(message.response_topic):
        return ReplyAddress(message.response_topic, message.correlation_data)
    if reply_to and not topics.is_reserved(reply_to):
        return ReplyAddress(reply_to)
    if default is not None:
        return ReplyAddress(default)
    if request_id:
        return ReplyAddress(topics.reply(request_id))
    return ReplyAddress(topics.errors)


class Supervisor:
    """Routes each request through the cache and the worker pool to its reply."""

    def __init__(
        self,
        settings: Settings,
        *,
        cache: Store,
        pool: GenerationQueue,
        publisher: Publisher,
        metrics: Metrics,
        model_name: str,
        audio_base_url: str,
        semantic: SemanticCache | None = None,
        embed: PromptVectors | None = None,
        on_served: Callable[[dict[str, Any]], None] | None = None,
        audio_budget: Callable[[int], bool] | None = None,
        catalogue: ModelCatalogue | None = None,
        encoded: EncodedClips | None = None,
    ) -> None:
        self._settings = settings
        self._on_served = on_served  # told of every clip served (the HA event entity)
        self._topics = Topics.from_settings(settings.node)
        self._cache = cache
        # the cache keeps one WAV master per clip; other formats are encoded once and kept
        self._encoded = encoded or EncodedClips(cache, max_bytes=settings.cache.max_bytes // 4)
        self._pool = pool
        self._publisher = publisher
        self._metrics = metrics
        self.model_name = model_name  # the default model
        # the models the workers serve (a request's `model` picks one); default: only model_name
        self._catalogue = catalogue or ModelCatalogue.single(model_name)
        self._audio_base_url = audio_base_url.rstrip("/")
        self._inflight: dict[str, _InFlight] = {}
        self._replying = 0  # waiters taken out of _inflight whose replies are being sent
        self._looking_up = 0  # requests queued for (or in) a semantic lookup
        self._lock = threading.Lock()
        self._accepting = True
        self._semantic = semantic
        self._embed = embed
        # semantic lookups embed the prompt (~10 ms of CPU): one thread, off the network
        # thread so that exact hits never wait behind them; bounded like the generation queue
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookup")
        self._lookup_slots = threading.BoundedSemaphore(settings.cache.max_pending_lookups)
        limits = settings.requests
        self._rate = RateLimiter(limits.rate_limit_per_s, limits.rate_limit_burst)
        self._global_rate = RateLimiter(limits.global_rate_limit_per_s, limits.global_rate_limit_burst)
        # whether a clip of n bytes may still be published over MQTT (the outgoing byte budget)
        self._audio_budget = audio_budget or (lambda size: True)

    # -- entry point ---------------------------------------------------------------------

    def handle(self, message: InboundMessage, source: str | None = None) -> None:
        """Answer one inbound request message. Never raises.

        ``source`` labels the metrics of requests made inside the process (Home Assistant's
        text entity, Wyoming); MQTT requests leave it out.
        """
        source = source or ("mqtt5" if message.response_topic else "mqtt")
        try:
            parsed = parse_request(message.payload, self._settings.requests.max_payload_bytes)
        except InvalidRequest as error:
            request_id, reply_to = salvage_reply_fields(message.payload)
            self._reject(message, error, request_id, reply_to, source)
            return
        try:
            request = self._resolve_request(parsed)
            address = self._reply_address(message, parsed.reply_to, request.request_id)
        except InvalidRequest as error:
            self._reject(message, error, parsed.request_id, parsed.reply_to, source)
            return
        try:
            if not self._accepting:
                raise Unavailable("the appliance is shutting down")
            # a client is its reply address; requests that name none share one bucket
            if not self._rate.allow(message.response_topic or parsed.reply_to or ""):
                raise Busy(f"rate limit: at most {self._rate.rate_per_s:g} requests/s from one client "
                           f"(burst {self._rate.burst})")
            if not self._global_rate.allow(""):
                raise Busy(f"rate limit: at most {self._global_rate.rate_per_s:g} requests/s in all "
                           f"(burst {self._global_rate.burst})")
            self._serve(request, address, message.received_at, source)
        except ApplianceError as error:
            self._reply_error(address, request.request_id, error, message.received_at, source)
        except Exception as exc:  # a bug answers the request instead of dropping it
            log.exception("internal error", extra={"request_id": request.request_id})
            self._reply_error(address, request.request_id, WorkerFailed(f"internal error: {exc}"),
                              message.received_at, source)

    def stop_accepting(self) -> None:
        self._accepting = False

    def close(self) -> None:
        """Wait for the lookups under way (each ends in a reply or a queued generation)."""
        self._lookups.shutdown(wait=True)

    def in_flight(self) -> int:
        """Requests accepted and not yet answered (the drain waits for them)."""
        with self._lock:
            return (self._replying + self._looking_up
                    + sum(len(entry.waiters) for entry in self._inflight.values()))

    # -- the request path ----------------------------------------------------------------

    def _resolve_request(self, parsed: RequestMessage) -> Request:
        """Choose the model (unknown: invalid_request listing the choices), then fill the
        defaults, a family's own first (SA3: 8 steps, no guidance) and the configured ones."""
        model = self._catalogue.resolve(parsed.model)
        if model is None:
            raise FieldError("model", f"unknown model {parsed.model!r}; choose one of "
                             f"{self._catalogue.choices()}")
        limits = self._settings.generation
        family = FAMILY_DEFAULTS[self._catalogue.families[model]]
        if family.steps is not None and family.guidance_scale is not None:
            limits = limits.model_copy(update={"default_steps": family.steps,
                                               "default_guidance_scale": family.guidance_scale})
        request = resolve_parameters(parsed, limits)
        return replace(request, params=replace(request.params, model=model))

    def _serve(self, request: Request, address: ReplyAddress, received_at: float, source: str) -> None:
        params = request.params
        key = exact_key(params.prompt, model=params.model, duration_s=params.duration_s,
                        loop=params.loop)
        if not request.force:
            item = self._cache.lookup_exact(key)
            if item is not None and self._audio_present(item) and self._reply_hit(
                    request, address, item, received_at, source, match="exact", similarity=1.0):
                return
        if self._semantic is None or self._embed is None:
            if not request.force:
                self._metrics.cache_lookups.labels(result="miss").inc()
            self._generate(request, address, received_at, source, key, None)
            return
        if not self._lookup_slots.acquire(blocking=False):
            raise Busy("too many semantic lookups waiting")
        with self._lock:
            self._looking_up += 1
        try:
            self._embed.expect(params.prompt)  # embedded with the next batch, not one by one
            self._lookups.submit(self._lookup_then_generate, request, address, received_at, source, key)
        except RuntimeError:  # the drain shut the lookups down after this request was admitted
            self._lookup_done()
            raise Unavailable("the appliance is shutting down") from None

    def _lookup_done(self) -> None:
        with self._lock:
            self._looking_up -= 1
        self._lookup_slots.release()

    def _audio_present(self, item: CacheItem) -> bool:
        """False (and the item dropped) when a cached item's audio file has gone missing."""
        if self._cache.audio_path(item.key, item.audio_format).is_file():
            return True
        log.error("cached audio is missing: dropping the item", extra={"key": item.key})
        with contextlib.suppress(CacheError):
            self._cache.delete([item.key])
        return False

    def _lookup_then_generate(
        self, request: Request, address: ReplyAddress, received_at: float, source: str, key: str
    ) -> None:
        """Runs on the lookup thread: embed, semantic hit or generation. Never raises."""
        assert self._semantic is not None and self._embed is not None
        params = request.params
        try:
            vector = self._embed.vector(params.prompt)
            if not request.force:
                compatibility = Compatibility(
                    model=params.model, loop=params.loop, duration_s=params.duration_s,
                    duration_tolerance_s=self._settings.cache.duration_tolerance_s,
                )
                hit = self._semantic.find(params.prompt, vector, compatibility)
                if hit is not None and self._audio_present(hit.item) and self._reply_hit(
                        request, address, hit.item, received_at, source, match="semantic",
                        similarity=hit.similarity, extra={
                            "reuse_score": round(hit.score, 4), "reuse_reason": hit.reason,
                            "clap_reuse_score": hit.clap_score}):
                    self._metrics.semantic_similarity.observe(hit.similarity)
                    return
                self._metrics.cache_lookups.labels(result="miss").inc()
            self._generate(request, address, received_at, source, key, vector)
        except ApplianceError as error:
            self._reply_error(address, request.request_id, error, received_at, source)
        except Exception as exc:
            log.exception("internal error in lookup", extra={"request_id": request.request_id})
            self._reply_error(address, request.request_id, WorkerFailed(f"internal error: {exc}"),
                              received_at, source)
        finally:
            self._lookup_done()

    def _generate(
        self, request: Request, address: ReplyAddress, received_at: float, source: str, key: str,
        vector: Vector | None,
    ) -> None:
        """Queue a generation, or join an identical one in flight."""
        params = request.params
        pending = PendingReply(request, address, received_at)
        flight_key = f"force:{request.request_id}" if request.force else key
        with self._lock:
            flight = self._inflight.get(flight_key)
            if flight is not None:
                if len(flight.waiters) >= self._settings.requests.max_waiters_per_generation:
                    raise Busy(f"{len(flight.waiters)} identical requests already wait for this sound")
                flight.waiters.append(pending)
                log.info("joined an identical generation in flight",
                         extra={"request_id": request.request_id})
                return
            self._inflight[flight_key] = _InFlight([pending], vector)
        log.info("queued for generation", extra={"request_id": request.request_id, "source": source})
        try:
            future = self._pool.submit(
                request.request_id, params, self._progress_publisher(request.request_id)
            )
        except ApplianceError:
            with self._lock:
                self._inflight.pop(flight_key, None)
            raise
        future.add_done_callback(lambda done: self._finish(flight_key, key, done, source))

    def _finish(self, flight_key: str, key: str, future: Future[GenerationResult], source: str) -> None:
        """Runs as the future's callback: store the clip while its entry is still in flight
        (an identical request arriving meanwhile joins it instead of generating again), then
        answer every waiter exactly once; one waiter's failure costs no other its clip."""
        outcome: _Generated | ApplianceError
        try:
            outcome = self._conclude(flight_key, key, future)
        except ApplianceError as error:
            outcome = error
        except Exception as exc:
            log.exception("could not complete a generation", extra={"key": key})
            outcome = WorkerFailed(f"internal error: {exc}")
        with self._lock:
            flight = self._inflight.pop(flight_key, _InFlight())
            self._replying += len(flight.waiters)  # still in flight for the drain until answered
        try:
            for waiter in flight.waiters:
                self._answer_waiter(waiter, outcome, source)
        finally:
            with self._lock:
                self._replying -= len(flight.waiters)
        if isinstance(outcome, _Generated) and flight.waiters:
            log.info("generated", extra={
                "request_id": flight.waiters[0].request.request_id, "key": outcome.item.key,
                "generation_s": round(outcome.result.generation_s, 3), "stored": outcome.stored,
                "waiters": len(flight.waiters)})

    def _conclude(self, flight_key: str, key: str, future: Future[GenerationResult]) -> _Generated:
        """The generation's clip as a cache item, stored unless the quality gate refuses it."""
        result = future.result()
        with self._lock:
            flight = self._inflight[flight_key]
            first, vector = flight.waiters[0].request, flight.vector
        audio = encode_wav(result.waveform, result.sample_rate)
        item = self._new_item(first, key, result, len(audio))
        # quality gate (DESIGN.md "Models"): "auto" trusts only a real-weight CLAP scorer
        gate: str = self._settings.generation.quality_gate
        if gate == "auto":
            gate = "off (random-weight scorer)" if result.scorer_random else "on"
        elif gate == "off":
            gate = "off (configured)"
        stored = self._store(item, audio, vector, result.clap_vector, gate_on=gate == "on")
        return _Generated(result, item, stored, gate, {item.audio_format: audio})

    def _answer_waiter(self, waiter: PendingReply, outcome: _Generated | ApplianceError,
                       source: str) -> None:
        """Deliver the clip to one waiter, or an error when that fails. Never raises."""
        request = waiter.request
        try:
            if isinstance(outcome, ApplianceError):
                self._reply_error(waiter.address, request.request_id, outcome, waiter.received_at, source)
                return
            audio = outcome.encoded(request.audio_format, self._encoded)
            body = self._generation_metadata(request, outcome.item, outcome.result, outcome.stored)
            body.update(_encoding_metadata(request.audio_format, len(audio), outcome.item))
            body["quality_gate"] = outcome.gate
            self._deliver(waiter, body, audio, outcome.item.key, stored=outcome.stored)
            self._metrics.request_duration.labels(path="generated").observe(
                time.perf_counter() - waiter.received_at)
            self._metrics.requests.labels(outcome="generated", source=source).inc()
        except Exception as exc:
            log.exception("could not deliver a generated clip", extra={"request_id": request.request_id})
            error = exc if isinstance(exc, ApplianceError) else WorkerFailed(f"internal error: {exc}")
            try:
                self._reply_error(waiter.address, request.request_id, error, waiter.received_at, source)
            except Exception:
                log.exception("could not answer a request", extra={"request_id": request.request_id})

    def _store(self, item: CacheItem, audio: bytes, vector: Vector | None,
               clap_vector: Vector | None = None, *, gate_on: bool = True) -> bool:
        """Cache the clip unless the quality gate rejects it; never fail the request."""
        score = item.clap_similarity
        if score is not None:
            self._metrics.clap_similarity.observe(score)
        if gate_on and score is not None and score < self._settings.generation.tau_accept_new:
            self._metrics.quality_gate_rejections.inc()
            return False
        cache = self._settings.cache
        try:
            result = self._cache.put(item, audio, max_items=cache.max_items, max_bytes=cache.max_bytes,
                                     prompt_vector=vector, clap_vector=clap_vector)
        except (CacheError, OSError) as exc:
            self._metrics.cache_store_failures.inc()
            log.error("could not cache a result", extra={"key": item.key, "error": str(exc)})
            return False
        if result.evicted:
            self._metrics.cache_evictions.inc(len(result.evicted))
        if self._semantic is not None and vector is not None:
            self._semantic.added(item.key, vector, result, item.prompt)
        totals = self._cache.totals()
        self._metrics.cache_items.set(totals.items)
        self._metrics.cache_bytes.set(totals.bytes)
        return True

    # -- replies -------------------------------------------------------------------------

    def _reply_hit(
        self, request: Request, address: ReplyAddress, item: CacheItem, received_at: float, source: str,
        *, match: str, similarity: float, extra: dict[str, Any] | None = None,
    ) -> bool:
        """Answer from the cache; False (nothing sent) when the item was evicted between the
        lookup and the read of its audio, so that the request is generated instead."""
        body = {
            "request_id": request.request_id,
            "status": "ok",
            **self._item_metadata(item),
            "cached": True,
            "cache_type": match,
            "match_type": match,
            "similarity": round(similarity, 4),
            **(extra or {}),
            "age_s": round(time.time() - item.generation_timestamp, 3),
            "current_config": self._current_config(request),
        }
        try:
            size = self._encoded.size(item, request.audio_format)  # encoded (and kept) if need be
            body.update(_encoding_metadata(request.audio_format, size, item))
            if request.deliver != "url" and not self._audio_budget(size):
                raise Busy("too much audio on its way over MQTT: ask again, or use deliver: url")
            audio = self._encoded.read(item, request.audio_format) if request.deliver != "url" else b""
        except (NotFound, FileNotFoundError):
            log.info("cached clip evicted as it was read: generating",
                     extra={"request_id": request.request_id, "key": item.key})
            return False
        self._cache.record_hit(item.key)
        self._metrics.cache_lookups.labels(result=match).inc()
        self._deliver(PendingReply(request, address, received_at), body, audio, item.key)
        path = "hit" if match == "exact" else "semantic_hit"
        self._metrics.request_duration.labels(path=path).observe(time.perf_counter() - received_at)
        self._metrics.requests.labels(outcome=path, source=source).inc()
        return True

    def _deliver(
        self, waiter: PendingReply, body: dict[str, Any], audio: bytes, key: str, *, stored: bool = True
    ) -> None:
        """Publish the audio (when asked or when no URL can serve it), then the reply."""
        request, address = waiter.request, waiter.address
        deliver = request.deliver
        if not stored and deliver == "url":
            deliver = "mqtt"  # the clip is not in the cache, so /audio/<key> cannot serve it
        if deliver in ("url", "both") and stored:
            suffix = "" if request.audio_format == "wav" else f".{request.audio_format}"
            body["audio_url"] = f"{self._audio_base_url}/audio/{key}{suffix}"
        if deliver in ("mqtt", "both"):
            if not self._audio_budget(len(audio)):  # a generation's clip (hits check before reading)
                busy = Busy("too much audio on its way over MQTT: ask again"
                            + (" (the clip is cached now)" if stored else ""))
                self._publisher.publish(address.topic, encode(error_reply(request.request_id, busy)),
                                        correlation_data=address.correlation_data)
                return
            body["audio_topic"] = Topics.audio(address.topic)
            self._publisher.publish(Topics.audio(address.topic), audio,
                                    correlation_data=address.correlation_data)
        self._publisher.publish(address.topic, encode(body), correlation_data=address.correlation_data)
        if self._on_served is not None:
            try:
                self._on_served(body)
            except Exception:  # a listener's bug must not cost the next waiter its reply
                log.exception("clip-served listener failed", extra={"request_id": request.request_id})

    def _reject(
        self, message: InboundMessage, error: ApplianceError, request_id: str | None,
        reply_to: str | None, source: str,
    ) -> None:
        self._metrics.malformed_requests.labels(code=error.code).inc()
        log.warning("invalid request", extra={"request_id": request_id, "code": error.code,
                                              "error": error.message, "topic": message.topic})
        address = error_address(self._topics, message, request_id, reply_to)
        self._reply_error(address, request_id, error, message.received_at, source)

    def _reply_error(
        self, address: ReplyAddress, request_id: str | None, error: ApplianceError,
        received_at: float, source: str,
    ) -> None:
        self._publisher.publish(address.topic, encode(error_reply(request_id, error)),
                                correlation_data=address.correlation_data)
        self._metrics.requests.labels(outcome=error.code, source=source).inc()
        self._metrics.request_duration.labels(path="error").observe(time.perf_counter() - received_at)

    def _reply_address(self, message: InboundMessage, reply_to: str | None, request_id: str) -> ReplyAddress:
        return reply_address(self._topics, message, reply_to, self._topics.reply(request_id))

    def _progress_publisher(self, request_id: str) -> Callable[[int, int], None]:
        topic = self._topics.progress(request_id)

        def publish(step: int, total: int) -> None:
            self._publisher.publish(topic, encode({"request_id": request_id, "step": step,
                                                   "total": total}), qos=0)

        return publish

    # -- metadata ------------------------------------------------------------------------

    def _new_item(self, request: Request, key: str, result: GenerationResult, audio_bytes: int) -> CacheItem:
        params = request.params
        return CacheItem(
            key=new_item_key(),
            exact_key=key,
            prompt=params.prompt,
            model=params.model,
            duration_s=round(result.waveform.shape[-1] / result.sample_rate, 3),
            requested_duration_s=params.duration_s,
            is_loop=params.loop,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            candidates=params.candidates,
            seed=params.seed,
            sample_rate=result.sample_rate,
            channels=int(result.waveform.shape[0]),
            audio_format="wav",  # the master; a request's format is encoded from it
            audio_bytes=audio_bytes,
            generation_timestamp=time.time(),
            generation_s=round(result.generation_s, 4),
            clap_similarity=(None if result.clap_similarity is None
                             else round(result.clap_similarity, 4)),
            candidate_scores=[round(score, 4) for score in result.candidate_scores],
        )

    def _item_metadata(self, item: CacheItem) -> dict[str, Any]:
        return {
            "key": item.key,
            "prompt": item.prompt,
            "clap_similarity": item.clap_similarity,
            "duration_s": item.duration_s,
            "requested_duration_s": item.requested_duration_s,
            "generation_timestamp": item.generation_timestamp,
            "is_loop": item.is_loop,
            "model": item.model,
            "steps": item.steps,
            "guidance_scale": item.guidance_scale,
            "candidates": item.candidates,
            "candidate_scores": item.candidate_scores,
            "seed": item.seed,
            "sample_rate": item.sample_rate,
            "channels": item.channels,
            "format": item.audio_format,
            "audio_bytes": item.audio_bytes,
            "hits": item.hits,
        }

    def _generation_metadata(
        self, request: Request, item: CacheItem, result: GenerationResult, stored: bool
    ) -> dict[str, Any]:
        return {
            "request_id": request.request_id,
            "status": "ok",
            **self._item_metadata(item),
            "cached": False,
            "cache_type": "new_generation",
            "match_type": None,
            "stored": stored,
            "tau_accept_new": self._settings.generation.tau_accept_new,
            "scorer": result.scorer,
            "scorer_random": result.scorer_random,
            "worker": result.worker,
            "gpu": result.gpu,
            "queue_wait_s": round(result.queue_wait_s, 4),
            "generation_s": round(result.generation_s, 4),
        }

    def _current_config(self, request: Request) -> dict[str, Any]:
        """What a new generation of this request would use (reported with every hit)."""
        params = request.params
        return {
            "model": params.model,
            "duration_s": params.duration_s,
            "steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "candidates": params.candidates,
            "loop": params.loop,
            "tau_accept_new": self._settings.generation.tau_accept_new,
        }


def _encoding_metadata(audio_format: str, size: int, item: CacheItem) -> dict[str, Any]:
    """What a reply says about the audio it delivers (the master's figures are the item's)."""
    return {"format": audio_format, "content_type": MEDIA_TYPES[audio_format], "audio_bytes": size,
            "sample_rate": delivered_rate(audio_format, item.sample_rate)}
