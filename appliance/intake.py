"""Intake: the MQTT network thread hands each request to a bounded queue, and goes back to reading.

paho reads, acknowledges and writes on one thread. Whatever that thread does per message
(parse, LMDB read, audio file read, publish) sets how fast the appliance reads, and a
subscriber that reads slower than devices publish loses requests in the broker: mosquitto
drops QoS 1 messages beyond a subscriber's queue limit without telling anyone. So the network
thread only offers the message here. The queue is bounded (``requests.intake_size``); when it
is full the request is *shed*: answered ``busy`` at once from a pre-encoded reply
(:meth:`Supervisor.shed`), so the backlog never sits in the broker.

Dispatch threads (``requests.dispatch_threads``) take messages off the queue and run the
request path (:meth:`Supervisor.handle`): exact hits are answered there, in parallel, and
semantic lookups and generations are handed on to their own bounded queues.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from appliance.metrics import Metrics
from appliance.mqtt import InboundMessage
from appliance.protocol import salvage_reply_fields
from appliance.supervisor import Publisher, error_address
from appliance.topics import Topics

log = logging.getLogger(__name__)

Handler = Callable[[InboundMessage], None]

# Payloads up to this size are read for their ``request_id`` and ``reply_to`` when shed (a few
# microseconds); a larger one is not parsed on the network thread, and its `busy` reply goes
# to its Response Topic, else to ``<base>/<node>/errors``.
SALVAGE_MAX_BYTES = 4096
_BUSY_HEAD = b'{"request_id":'
_BUSY_TAIL = (b',"status":"error","code":"busy","message":"the appliance is taking in more '
              b'requests than it can queue: ask again shortly"}')


class Shedder:
    """Answers a request ``busy`` on the network thread, without queueing it.

    The reply is pre-encoded; only a small payload is parsed, for the reply fields a device
    may rely on (``request_id``, ``reply_to``). Counted like every other ``busy`` reply.
    """

    def __init__(self, publisher: Publisher, topics: Topics, metrics: Metrics) -> None:
        self._publisher = publisher
        self._topics = topics
        self._metrics = metrics

    def __call__(self, message: InboundMessage) -> None:
        request_id: str | None = None
        reply_to: str | None = None
        if len(message.payload) <= SALVAGE_MAX_BYTES:
            request_id, reply_to = salvage_reply_fields(message.payload)
        address = error_address(self._topics, message, request_id, reply_to)
        quoted = b"null" if request_id is None else b'"' + request_id.encode() + b'"'  # [A-Za-z0-9._:-]
        self._publisher.publish(address.topic, _BUSY_HEAD + quoted + _BUSY_TAIL,
                                correlation_data=address.correlation_data)
        source = "mqtt5" if message.response_topic else "mqtt"
        self._metrics.requests.labels(outcome="busy", source=source).inc()
        self._metrics.intake_shed.inc()
        self._metrics.request_duration.labels(path="error").observe(time.perf_counter() - message.received_at)


class Intake:
    """A bounded queue of inbound requests and the threads that serve it."""

    def __init__(self, handle: Handler, shed: Handler, *, capacity: int, threads: int) -> None:
        if capacity < 1 or threads < 1:
            raise ValueError("capacity and threads must be at least 1")
        self._handle = handle
        self._shed = shed
        self._queue: queue.Queue[InboundMessage | None] = queue.Queue(maxsize=capacity)
        self._threads = [threading.Thread(target=self._serve, name=f"dispatch-{index}", daemon=True)
                         for index in range(threads)]
        self.capacity = capacity
        self._closed = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def offer(self, message: InboundMessage) -> None:
        """Network thread: queue the message, or shed it when the queue is full. Never blocks."""
        try:
            if self._closed:  # the last moments of a drain: nobody would take it off the queue
                raise queue.Full
            self._queue.put_nowait(message)
        except queue.Full:
            try:
                self._shed(message)
            except Exception:  # nothing a device sends may kill the network thread
                log.exception("could not shed a request", extra={"topic": message.topic})

    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 10.0) -> None:
        """Serve what is queued, then stop the threads (each takes one stop marker)."""
        deadline = time.monotonic() + timeout_s
        self._closed = True
        try:
            for _ in self._threads:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            log.warning("intake still full at shutdown", extra={"queued": self.depth()})
            return
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _serve(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            try:
                self._handle(message)
            except Exception:  # the handler answers its own errors; this is a last resort
                log.exception("unhandled error in a dispatch thread", extra={"topic": message.topic})
