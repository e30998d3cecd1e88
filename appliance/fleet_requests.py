"""Fleet requests a node took, journaled in the shared database, so a node killed mid-request is covered.

The broker hands a fleet request (``$share/<group>/<base>/request``) to one node, and paho
acknowledges it on receipt. If that node is then killed (-9, power) before it answers, the
request is gone: mosquitto does not give an acknowledged message, nor even an unacknowledged
one of a session that ended, to another member of the share group (tested, mosquitto 2.0).
So a node that cannot answer a fleet request at once (a miss: a semantic lookup or a
generation follows) writes it to ``fleet_requests`` in the fleet's PostgreSQL, and deletes
the row when its reply is published. Every node writes a heartbeat once a second; a node
whose heartbeat is older than :data:`STALE_S` is gone, and a survivor claims its rows
(``FOR UPDATE SKIP LOCKED``: one survivor per row) and serves them as if they had just
arrived. A node restarted under the same id serves its own rows from before its start.

What this does not cover: a node killed in the milliseconds between receiving a request
and journaling it; requests with neither a Response Topic, a ``reply_to`` nor a
``request_id`` (their reply topic is made up by the node, so no survivor could answer them
where the device listens). A claim waits until its node has held its connection for
:data:`STALE_S`, so that after a database restart nobody takes over a live node's rows
before that node has written its heartbeat again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from appliance.cache.pg_store_schema import SCHEMA_LOCK, Cursor
from appliance.cache.pg_store_session import PgSession
from appliance.errors import CacheError
from appliance.mqtt import InboundMessage
from appliance.protocol import salvage_reply_fields
from appliance.supervisor import Publisher
from appliance.topics import Topics

log = logging.getLogger(__name__)

STALE_S = 3.0  # a node silent this long is gone; its journaled requests go to a survivor
_TICK_S = 1.0  # heartbeat and claim period
_MAX_HANDOFFS = 3  # a request that killed three nodes is dropped, not passed on forever
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_nodes (node text PRIMARY KEY, seen_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_requests (
    id bigserial PRIMARY KEY, owner text NOT NULL, taken_at timestamptz NOT NULL DEFAULT now(),
    handoffs int NOT NULL DEFAULT 0, topic text NOT NULL, payload bytea NOT NULL,
    response_topic text, correlation bytea, reply_topic text NOT NULL);
"""
_CLAIM = f"""
UPDATE fleet_requests SET owner = %(me)s, taken_at = now(), handoffs = handoffs + 1
WHERE id IN (SELECT r.id FROM fleet_requests r LEFT JOIN fleet_nodes n ON n.node = r.owner
             WHERE (r.owner <> %(me)s AND (n.seen_at IS NULL
                                            OR n.seen_at < now() - interval '{STALE_S} seconds'))
                OR (r.owner = %(me)s AND r.taken_at < %(started)s)
             ORDER BY r.id LIMIT 16 FOR UPDATE OF r SKIP LOCKED)
RETURNING id, handoffs, topic, payload, response_topic, correlation, reply_topic
"""

ReplyKey = tuple[str, bytes | None]  # (reply topic, correlation data)


class FleetRequests:
    """The journal of one node's unanswered fleet requests. Thread-safe; :meth:`close` stops it."""

    def __init__(self, dsn: str, topics: Topics, offer: Callable[[InboundMessage], None]) -> None:
        self._db = PgSession(dsn)
        self._topics = topics
        self._fleet_topic = f"{topics.base}/request"
        self._offer = offer
        self._lock = threading.Lock()
        self._rows: dict[ReplyKey, int] = {}  # journaled, not yet answered
        self._done: list[int] = []  # answered while the database was unreachable
        self._started: datetime | None = None  # this node's start, in the database's clock
        self._connected_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-requests", daemon=True)
        self.handed_over = 0  # requests this node took over from a node that was gone

    def start(self) -> None:
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether the journal holds the database (fleet requests are journaled)."""
        return self._connected_at is not None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._db.close()

    # -- the request path -------------------------------------------------------------

    def dispatcher(self, handle: Callable[[InboundMessage], None]) -> Callable[[InboundMessage], None]:
        """Wrap the intake's handler: a fleet request not answered by the time ``handle``
        returns (a hit is answered inside it) is journaled until its reply is published."""
        def dispatch(message: InboundMessage) -> None:
            key = self._reply_key(message) if message.topic == self._fleet_topic else None
            if key is not None:
                with self._lock:
                    if self._rows.get(key) or self._connected_at is None:
                        key = None  # taken over: journaled already; or no database to write to
                    else:
                        self._rows[key] = 0  # 0: waiting for its reply, not journaled yet
            handle(message)
            if key is not None:
                self._journal(key, message)

        return dispatch

    def publisher(self, inner: Publisher) -> Publisher:
        """Wrap the MQTT publisher: publishing a journaled request's reply deletes its row."""
        journal = self

        class _Publisher:
            def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                        correlation_data: bytes | None = None, qos: int = 1) -> None:
                inner.publish(topic, payload, retain=retain, correlation_data=correlation_data, qos=qos)
                journal._answered((topic, correlation_data))

        return _Publisher()

    def _reply_key(self, message: InboundMessage) -> ReplyKey | None:
        if message.response_topic:
            return message.response_topic, message.correlation_data
        request_id, reply_to = salvage_reply_fields(message.payload)
        if reply_to:
            return reply_to, None
        return (self._topics.reply(request_id), None) if request_id else None

    def _journal(self, key: ReplyKey, message: InboundMessage) -> None:
        with self._lock:  # the reply waits for the row, so that it deletes it
            if key not in self._rows:
                return  # answered already
            try:
                row = self._db.write(lambda cur: cur.execute(
                    "INSERT INTO fleet_requests (owner, topic, payload, response_topic, correlation,"
                    " reply_topic) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (self._topics.node, message.topic, message.payload, message.response_topic,
                     message.correlation_data, key[0])).fetchone())
            except CacheError as exc:
                del self._rows[key]
                self._connected_at = None
                log.warning("fleet request not journaled: another node could not take it over",
                            extra={"reply_topic": key[0], "error": str(exc)})
                return
            assert row is not None
            self._rows[key] = int(row[0])

    def _answered(self, key: ReplyKey) -> None:
        with self._lock:
            row = self._rows.pop(key, None)
            if not row:
                return
            if self._connected_at is None:  # the next heartbeat deletes it; replies never wait
                self._done.append(row)
                return
            try:
                self._db.write(lambda cur: cur.execute("DELETE FROM fleet_requests WHERE id = %s", (row,)))
            except CacheError as exc:
                self._done.append(row)
                self._connected_at = None
                log.warning("fleet request journal unreachable", extra={"error": str(exc)})

    # -- heartbeat and takeover -------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except CacheError as exc:
                if self._connected_at is not None:
                    log.warning("fleet request journal unreachable", extra={"error": str(exc)})
                self._connected_at = None
            self._stop.wait(_TICK_S)

    def _tick(self) -> None:
        def beat(cur: Cursor) -> datetime:
            if self._connected_at is None:  # first beat since (re)connecting: two nodes may create
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                cur.execute(_SCHEMA)
            row = cur.execute(
                "INSERT INTO fleet_nodes VALUES (%s, now()) ON CONFLICT (node) DO UPDATE"
                " SET seen_at = excluded.seen_at RETURNING seen_at", (self._topics.node,)).fetchone()
            assert row is not None
            moment: datetime = row[0]
            return moment

        now = self._db.write(beat)
        with self._lock:
            done, self._done = self._done, []
        try:
            if done:
                self._db.write(lambda cur: cur.execute("DELETE FROM fleet_requests WHERE id = ANY(%s)",
                                                       (done,)))
        except CacheError:
            with self._lock:
                self._done.extend(done)
            raise
        if self._started is None:
            self._started = now
        if self._connected_at is None:
            self._connected_at = time.monotonic()
        if time.monotonic() - self._connected_at < STALE_S:
            return  # live nodes have not all written their heartbeat since we (re)connected
        claimed = self._db.write(lambda cur: cur.execute(
            _CLAIM, {"me": self._topics.node, "started": self._started}).fetchall())
        for row_id, handoffs, topic, payload, response_topic, correlation, reply_topic in claimed:
            message = InboundMessage(topic, bytes(payload), response_topic,
                                     None if correlation is None else bytes(correlation), time.perf_counter())
            # where this node will reply: a request named only by its request_id is answered
            # on this node's reply topic, not on the one the gone node would have used
            key = self._reply_key(message) or (reply_topic, message.correlation_data)
            self._take_over(int(row_id), int(handoffs), message, key)

    def _take_over(self, row_id: int, handoffs: int, message: InboundMessage, key: ReplyKey) -> None:
        if handoffs > _MAX_HANDOFFS:
            self._db.write(lambda cur: cur.execute("DELETE FROM fleet_requests WHERE id = %s", (row_id,)))
            log.error("fleet request dropped after killing nodes in turn", extra={"reply_topic": key[0]})
            return
        with self._lock:
            self._rows[key] = row_id
        self.handed_over += 1
        log.info("took over a fleet request of a node that is gone", extra={"reply_topic": key[0]})
        self._offer(message)  # full intake: answered `busy`, which deletes the row too
