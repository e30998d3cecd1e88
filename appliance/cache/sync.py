"""A node's view of the fleet's cache: an in-memory mirror kept in step by LISTEN/NOTIFY.

The service answers hits from memory: item metadata, the exact index and both vectors of
every item are mirrored here, and the clips a node served are in its local directory. A
listener thread holds one connection that LISTENs on the store's channel; every commit
anywhere in the fleet notifies the new generation, and the listener applies what changed
after the generation it holds (:meth:`PgCacheStore.changes_since`). After a disconnect it
reconnects, LISTENs first and then catches up from its generation, so nothing committed in
between is missed; when the change log no longer reaches back that far it reloads a whole
snapshot. :meth:`generation` returns the mirror's generation, which is what
:class:`appliance.cache.semantic.SemanticCache` watches to rebuild its index.

With the database gone the node keeps answering from the mirror and its local clips and
keeps generating; a new clip is then not stored anywhere (the put fails with
``cache_unavailable``, which the supervisor counts and logs), nor stored later.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from appliance.cache.pg_store import PgCacheStore
from appliance.cache.pg_store_schema import CHANNEL, ChangeSet, StoredEntry, Vector
from appliance.cache.store import CacheItem, CacheTotals, PutResult
from appliance.errors import CacheError, CacheUnavailable, NotFound

log = logging.getLogger(__name__)

_POLL_S = 30.0  # catch up at least this often even if a notification was lost


class FleetCache(PgCacheStore):
    """The shared store, read through a local mirror. Thread-safe; :meth:`close` stops the listener."""

    def __init__(self, dsn: str, directory: Path, *, local_audio_bytes: int,
                 connect_timeout_s: float = 3.0, reconnect_s: float = 1.0) -> None:
        super().__init__(dsn, directory, local_audio_bytes=local_audio_bytes,
                         connect_timeout_s=connect_timeout_s)
        self._dsn_listen = dsn  # the listener has a connection of its own
        self._reconnect_s = reconnect_s
        self._sync_lock = threading.Lock()  # one catch-up or own-write apply at a time
        self._items: dict[str, CacheItem] = {}
        self._exact: dict[str, str] = {}
        self._prompt: dict[str, Vector] = {}
        self._clap: dict[str, Vector] = {}
        self._generation = -1
        self._stop = threading.Event()
        self.connected = threading.Event()  # the listener holds a live connection
        self.catch_ups = 0
        self.full_reloads = 0
        self._catch_up()  # start with the fleet's cache loaded
        self._thread = threading.Thread(target=self._listen, name="cache-sync", daemon=True)
        self._thread.start()

    # -- reads from the mirror -----------------------------------------------------------

    def lookup_exact(self, exact_key: str) -> CacheItem | None:
        with self._sync_lock:
            key = self._exact.get(exact_key)
            return self._items.get(key) if key else None

    def get(self, key: str) -> CacheItem:
        with self._sync_lock:
            item = self._items.get(key)
        if item is None:
            raise NotFound(f"no cache item {key}")
        return item

    def generation(self) -> int:
        return self._generation

    def prompt_vectors(self) -> tuple[list[str], Vector]:
        with self._sync_lock:
            keys = sorted(self._prompt)
            rows = [self._prompt[k] for k in keys]
        return (keys, np.vstack(rows)) if rows else ([], np.zeros((0, 0), dtype=np.float32))

    def prompt_vector(self, key: str) -> Vector | None:
        return self._prompt.get(key)

    def clap_vector(self, key: str) -> Vector | None:
        return self._clap.get(key)

    def totals(self) -> CacheTotals:
        try:
            return super().totals()
        except CacheUnavailable:
            with self._sync_lock:
                items = list(self._items.values())
            return CacheTotals(len(items), sum(i.audio_bytes for i in items), self._generation)

    # -- writes: to the database, then into the mirror -----------------------------------

    def put(self, item: CacheItem, audio: bytes, *, max_items: int, max_bytes: int,
            prompt_vector: Vector | None = None, clap_vector: Vector | None = None) -> PutResult:
        result = super().put(item, audio, max_items=max_items, max_bytes=max_bytes,
                             prompt_vector=prompt_vector, clap_vector=clap_vector)
        entry = StoredEntry(item, _frozen(prompt_vector), _frozen(clap_vector), exact=True)
        self._apply(ChangeSet(result.generation_after, [entry], result.evicted),
                    after=result.generation_before)
        return result

    def delete_tracked(self, keys: list[str]) -> tuple[int, int, int]:
        freed, before, after = super().delete_tracked(keys)
        if after != before:
            self._apply(ChangeSet(after, [], list(keys)), after=before)
        return freed, before, after

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        super().close()

    # -- keeping in step ---------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn_listen, autocommit=True, connect_timeout=3,
                                     keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                     keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")  # before catching up: nothing falls between
                    self._catch_up()
                    self._set_connected(True)
                    self._follow(conn)
            except (psycopg.Error, CacheError) as exc:
                if self.connected.is_set():
                    log.warning("lost the cache database; serving what this node holds",
                                extra={"error": str(exc), "generation": self._generation})
                self._set_connected(False)
                self._stop.wait(self._reconnect_s)

    def _follow(self, conn: psycopg.Connection[Any]) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            notified = [n for n in conn.notifies(timeout=0.5, stop_after=1)]
            if notified and int(notified[-1].payload) <= self._generation:
                continue  # our own write, already applied
            if notified or time.monotonic() - last > _POLL_S:
                self._catch_up()
                last = time.monotonic()

    def _catch_up(self) -> None:
        """Apply what changed since the mirror's generation (everything, if it must)."""
        with self._sync_lock:
            changes = self.changes_since(self._generation) if self._generation >= 0 else None
            full = changes is None
            if changes is None:
                changes = self.snapshot()
            self._apply_locked(changes, full=full)
            self.catch_ups += 1
            self.full_reloads += full
        if full:
            log.info("cache mirror loaded", extra={"items": len(self._items), "generation": self._generation})

    def _apply(self, changes: ChangeSet, *, after: int) -> None:
        """Apply our own write; the generation moves only if nothing else came in between."""
        with self._sync_lock:
            generation = self._generation
            self._apply_locked(changes, full=False)
            self._generation = changes.generation if generation == after else generation

    def _apply_locked(self, changes: ChangeSet, *, full: bool) -> None:
        if full:
            gone = set(self._items) - {e.item.key for e in changes.written}
            self._items, self._exact, self._prompt, self._clap = {}, {}, {}, {}
            self.local.remove(sorted(gone))
        for key in changes.removed:
            item = self._items.pop(key, None)
            self._prompt.pop(key, None)
            self._clap.pop(key, None)
            if item is not None and self._exact.get(item.exact_key) == key:
                del self._exact[item.exact_key]
        self.local.remove(changes.removed)
        for entry in changes.written:
            key = entry.item.key
            self._items[key] = entry.item
            if entry.exact:
                self._exact[entry.item.exact_key] = key
            elif self._exact.get(entry.item.exact_key) == key:
                del self._exact[entry.item.exact_key]
            _set_or_drop(self._prompt, key, entry.prompt_vector)
            _set_or_drop(self._clap, key, entry.clap_vector)
        self._generation = changes.generation

    def _set_connected(self, connected: bool) -> None:
        if connected:
            self.connected.set()
        else:
            self.connected.clear()


def _set_or_drop(table: dict[str, Vector], key: str, vector: Vector | None) -> None:
    if vector is None:
        table.pop(key, None)
    else:
        table[key] = vector


def _frozen(vector: Vector | None) -> Vector | None:
    if vector is None:
        return None
    copy = np.array(vector, dtype=np.float32).reshape(-1)
    copy.setflags(write=False)
    return copy
