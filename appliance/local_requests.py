"""Requests made inside the process (Home Assistant's text entity, the Wyoming server).

They take the supervisor's one request path (validation, cache, queue, metrics, coalescing)
instead of a second one: each becomes an :class:`InboundMessage` whose Response Topic is a
local address, and :class:`LocalReplies` (the publisher the supervisor is given) hands what
the supervisor publishes there back to the waiting future instead of to the broker. The
Correlation Data tells the requests apart; everything else is forwarded to the broker.

They also take the same intake (appliance/intake.py): :meth:`LocalReplies.submit` only
offers the message to the intake's bounded queue, so a prompt typed in Home Assistant, which
arrives on the MQTT network thread, is never handled there (a slow disk would stop the
appliance reading MQTT), and a full intake answers it ``busy`` like any other request.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from appliance.mqtt import InboundMessage
from appliance.supervisor import Publisher
from appliance.topics import Topics

RequestHandler = Callable[[InboundMessage, str | None], None]
Offer = Callable[[InboundMessage], None]


@dataclass(frozen=True)
class LocalReply:
    """The supervisor's reply body, and the encoded clip when the request asked for it."""

    body: dict[str, Any]
    audio: bytes | None

    @property
    def ok(self) -> bool:
        return self.body.get("status") == "ok"


@dataclass
class _Pending:
    future: Future[LocalReply]
    source: str
    audio: bytes | None = None


class LocalReplies:
    """A publisher that routes replies to local requests back in-process."""

    def __init__(self, publisher: Publisher, topics: Topics) -> None:
        self._publisher = publisher
        self._topics = topics
        self.reply_topic = f"{topics.prefix}/local"
        self._audio_topic = Topics.audio(self.reply_topic)
        self._pending: dict[bytes, _Pending] = {}
        self._lock = threading.Lock()
        self._offer: Offer | None = None

    def bind(self, offer: Offer) -> None:
        """Where requests go (the intake's ``offer``); set once it exists."""
        self._offer = offer

    def dispatcher(self, handle: RequestHandler) -> Callable[[InboundMessage], None]:
        """The intake's handler: the supervisor's ``handle``, told which source a local
        request came from (for its metrics); MQTT requests pass through unchanged."""
        def dispatch(message: InboundMessage) -> None:
            handle(message, self.source_of(message))

        return dispatch

    def source_of(self, message: InboundMessage) -> str | None:
        """``homeassistant``, ``wyoming``…: the source of a local request; None for MQTT."""
        if message.response_topic != self.reply_topic or message.correlation_data is None:
            return None
        with self._lock:
            pending = self._pending.get(message.correlation_data)
        return pending.source if pending is not None else None

    def submit(self, body: dict[str, Any], *, source: str) -> Future[LocalReply]:
        """Queue one request for the supervisor (never blocks); the future gets its reply."""
        if self._offer is None:
            raise RuntimeError("LocalReplies.bind() was not called")
        request_id = str(body.setdefault("request_id", f"{source}-{uuid.uuid4().hex}"))
        token = request_id.encode()
        future: Future[LocalReply] = Future()
        with self._lock:
            self._pending[token] = _Pending(future, source)
        message = InboundMessage(
            topic=f"{self._topics.prefix}/{source}", payload=json.dumps(body).encode(),
            response_topic=self.reply_topic, correlation_data=token, received_at=time.perf_counter(),
        )
        self._offer(message)
        return future

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        correlation_data: bytes | None = None, qos: int = 1,
    ) -> None:
        if correlation_data is not None and topic in (self.reply_topic, self._audio_topic):
            with self._lock:
                pending = self._pending.get(correlation_data)
                if pending is not None and topic == self._audio_topic:
                    pending.audio = payload
                    return
                if pending is not None:
                    del self._pending[correlation_data]
            if pending is not None:
                self._resolve(pending, payload)
                return
        self._publisher.publish(topic, payload, retain=retain, correlation_data=correlation_data, qos=qos)

    @staticmethod
    def _resolve(pending: _Pending, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError as exc:  # the supervisor only publishes JSON here: a bug
            pending.future.set_exception(exc)
            return
        pending.future.set_result(LocalReply(body, pending.audio))
