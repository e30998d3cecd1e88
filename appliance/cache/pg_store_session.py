"""One PostgreSQL connection of a cache node, and the transactions run on it.

A node writes once per generation and reads rarely (its mirror answers lookups), so one
connection serialised by a lock is enough, and it keeps the fleet's connection count at a
few per node. The connection is pinged before a write, and before a read after a while
idle, so that a database restarted meanwhile costs a reconnect rather than a lost write.
Driver errors become the appliance's typed errors: a lost database is ``cache_unavailable``,
anything else ``cache_error``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from appliance.cache.pg_store_schema import SCHEMA, SCHEMA_LOCK, Cursor
from appliance.errors import CacheError, CacheUnavailable

_PING_AFTER_S = 1.0  # a connection idle this long is checked before use
_T = TypeVar("_T")


class PgSession:
    """A lazily (re)opened connection; the first one of a node creates the schema. Thread-safe."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 3.0) -> None:
        self.dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[Any] | None = None
        self._used_at = 0.0
        self._lock = threading.RLock()

    def read(self, body: Callable[[Cursor], _T]) -> _T:
        return self._transaction(body, ping=False)

    def write(self, body: Callable[[Cursor], _T]) -> _T:
        return self._transaction(body, ping=True)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _transaction(self, body: Callable[[Cursor], _T], *, ping: bool) -> _T:
        with self._lock:
            try:
                conn = self._connection(ping)
                with conn.transaction(), conn.cursor() as cur:
                    return body(cur)
            except psycopg.OperationalError as exc:
                self._drop()
                raise CacheUnavailable(f"the cache database is unreachable: {exc}") from exc
            except psycopg.Error as exc:
                raise CacheError(f"cache database error: {exc}") from exc

    def _connection(self, ping: bool) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            if not ping and time.monotonic() - self._used_at < _PING_AFTER_S:
                self._used_at = time.monotonic()
                return conn
            try:
                conn.execute("SELECT 1")
                self._used_at = time.monotonic()
                return conn
            except psycopg.OperationalError:
                pass
        self._drop()
        conn = psycopg.connect(self.dsn, autocommit=True, application_name="appliance",
                               connect_timeout=max(1, round(self._connect_timeout_s)))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cur.execute(SCHEMA)
        self._conn = conn
        self._used_at = time.monotonic()
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
