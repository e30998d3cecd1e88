"""The cache on PostgreSQL: one store shared by a fleet of appliances (docs/fleet.md).

Same contract as :class:`appliance.cache.store.CacheStore`. One transaction writes the
item, its exact-index entry, both vectors, the audio (``bytea``, stored uncompressed: the
figures that chose it over large objects are in docs/fleet.md), the totals and the change
log, so a crash of the database at any instant leaves the old state or the new one.

Every write first locks the single ``cache_state`` row and bumps its ``generation``: writes
commit in generation order, so a node that saw generation ``g`` catches up by reading the
change log after ``g`` (:meth:`PgCacheStore.changes_since`), and the commit sends
``NOTIFY audiogen_cache`` with the new generation (:mod:`appliance.cache.sync` listens).
Eviction runs inside the put, under a transaction advisory lock, so one node evicts at a
time and the caps hold for the whole fleet.

Each node keeps the clips it served in a bounded local directory (:class:`LocalAudio`),
which is what :meth:`audio_path` returns; a clip not there is fetched from the database.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
from psycopg.types.json import Jsonb

from appliance.cache.hits import PendingHits
from appliance.cache.keys import is_item_key
from appliance.cache.local_audio import LocalAudio
from appliance.cache.pg_store_schema import (
    ENTRIES,
    ChangeSet,
    Cursor,
    Vector,
    embedder_json,
    entry_of,
    evict,
    item_of,
    lock_state,
    log_changes,
    maybe_bytes,
    vector_bytes,
    vector_of,
)
from appliance.cache.pg_store_session import PgSession
from appliance.cache.store import (
    CacheItem,
    CacheTotals,
    EmbedderInfo,
    IntegrityReport,
    PutResult,
    _eviction_rank,
)
from appliance.errors import CacheError, CacheUnavailable, GeneratedElsewhere, NotFound

__all__ = ["PgCacheStore"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class PgCacheStore:
    """The shared cache. Thread-safe (one connection, one transaction at a time)."""

    def __init__(self, dsn: str, directory: Path, *, local_audio_bytes: int,
                 connect_timeout_s: float = 3.0, require_database: bool = True) -> None:
        self.directory = Path(directory)
        self.audio_dir = self.directory / "audio"
        self.local = LocalAudio(self.audio_dir, max_bytes=local_audio_bytes)
        self._db = PgSession(dsn, connect_timeout_s=connect_timeout_s)
        self._hits = PendingHits()
        try:
            self._read(lambda cur: None)  # connects and creates the schema
        except CacheUnavailable:
            if require_database:
                raise
            log.warning("the cache database is unreachable; serving what this node holds")

    # -- reading -----------------------------------------------------------------------

    def lookup_exact(self, exact_key: str) -> CacheItem | None:
        row = self._read(lambda cur: cur.execute(
            "SELECT i.item FROM cache_exact e JOIN cache_items i ON i.key = e.key"
            " WHERE e.exact_key = %s", (exact_key,)).fetchone())
        return item_of(row[0]) if row else None

    def get(self, key: str) -> CacheItem:
        if not is_item_key(key):
            raise NotFound(f"{key!r} is not a cache key")
        row = self._read(lambda cur: cur.execute(
            "SELECT item FROM cache_items WHERE key = %s", (key,)).fetchone())
        if row is None:
            raise NotFound(f"no cache item {key}")
        return item_of(row[0])

    def items(self) -> list[CacheItem]:
        rows = self._read(lambda cur: cur.execute("SELECT item FROM cache_items ORDER BY key").fetchall())
        return [item_of(row[0]) for row in rows]

    def totals(self) -> CacheTotals:
        row = self._read(lambda cur: cur.execute(
            "SELECT items, total_bytes, generation FROM cache_state").fetchone())
        assert row is not None
        return CacheTotals(items=int(row[0]), bytes=int(row[1]), generation=int(row[2]))

    def generation(self) -> int:
        return self.totals().generation

    def prompt_vectors(self) -> tuple[list[str], Vector]:
        rows = self._read(lambda cur: cur.execute(
            "SELECT key, prompt_vector FROM cache_items WHERE prompt_vector IS NOT NULL"
            " ORDER BY key").fetchall())
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [row[0] for row in rows], np.vstack([vector_of(row[1]) for row in rows])

    def prompt_vector(self, key: str) -> Vector | None:
        return self._column_vector(key, "prompt_vector")

    def clap_vector(self, key: str) -> Vector | None:
        return self._column_vector(key, "clap_vector")

    def embedder_info(self) -> EmbedderInfo | None:
        row = self._read(lambda cur: cur.execute("SELECT embedder FROM cache_state").fetchone())
        if row is None or row[0] is None:
            return None
        return EmbedderInfo(str(row[0]["name"]), int(row[0]["dimension"]))

    def set_embedder_info(self, info: EmbedderInfo) -> None:
        self._write(lambda cur: cur.execute(
            "UPDATE cache_state SET embedder = %s", (Jsonb(embedder_json(info)),)))

    def replace_prompt_vectors(self, vectors: dict[str, Vector], info: EmbedderInfo) -> None:
        """Swap in another embedder's vectors in one transaction; nodes reload everything."""
        def write(cur: Cursor) -> None:
            generation = lock_state(cur)[0] + 1
            cur.execute("UPDATE cache_items SET prompt_vector = NULL")
            cur.executemany("UPDATE cache_items SET prompt_vector = %s WHERE key = %s",
                            [(vector_bytes(v), k) for k, v in vectors.items()])
            cur.execute("UPDATE cache_state SET embedder = %s, generation = %s",
                        (Jsonb(embedder_json(info)), generation))
            log_changes(cur, generation, [("*", "r")])

        self._write(write)

    def audio_path(self, key: str, audio_format: str = "wav") -> Path:
        """The local file of a clip, fetched from the database when this node lacks it.

        When the database is unreachable the path is returned all the same; it names no
        file unless the node held the clip (callers check ``is_file()``).
        """
        path = self.local.path(key, audio_format)
        if not path.is_file():
            with contextlib.suppress(CacheUnavailable, NotFound):
                self._fetch_audio(key, audio_format)
        return path

    def read_audio(self, item: CacheItem) -> bytes:
        data = self.local.read(item.key, item.audio_format)
        return data if data is not None else self._fetch_audio(item.key, item.audio_format)

    # -- writing -----------------------------------------------------------------------

    def put(
        self, item: CacheItem, audio: bytes, *, max_items: int, max_bytes: int,
        prompt_vector: Vector | None = None, clap_vector: Vector | None = None,
    ) -> PutResult:
        """Store a clip with everything about it in one transaction; evict to the caps."""
        item.audio_bytes = len(audio)

        def write(cur: Cursor) -> PutResult:
            before, count, total = lock_state(cur)
            _refuse_concurrent_twin(cur, item)
            old = cur.execute("SELECT audio_bytes FROM cache_items WHERE key = %s",
                              (item.key,)).fetchone()
            if old is not None:
                count, total = count - 1, total - int(old[0])
            cur.execute(
                "INSERT INTO cache_items VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE"
                " SET item = excluded.item, audio_bytes = excluded.audio_bytes, rank = excluded.rank,"
                " prompt_vector = excluded.prompt_vector, clap_vector = excluded.clap_vector",
                (item.key, Jsonb(asdict(item)), item.audio_bytes, _eviction_rank(item)[0],
                 maybe_bytes(prompt_vector), maybe_bytes(clap_vector)))
            cur.execute("INSERT INTO cache_audio VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
                        " SET data = excluded.data", (item.key, audio))
            # a forced regeneration re-points the exact key; the older item stays
            cur.execute("INSERT INTO cache_exact VALUES (%s, %s) ON CONFLICT (exact_key) DO UPDATE"
                        " SET key = excluded.key", (item.exact_key, item.key))
            count, total = count + 1, total + item.audio_bytes
            evicted, count, total = evict(cur, count, total, max_items, max_bytes, keep=item.key)
            generation = before + 1
            cur.execute("UPDATE cache_state SET generation = %s, items = %s, total_bytes = %s",
                        (generation, count, total))
            log_changes(cur, generation, [(item.key, "p"), *[(k, "d") for k in evicted]])
            return PutResult(evicted, before, generation)

        result = self._write(write)
        try:
            self.local.write(item.key, item.audio_format, audio)
        except OSError as exc:  # the database has it; this node fetches it when asked
            log.warning("could not keep a clip locally", extra={"key": item.key, "error": str(exc)})
        self.local.remove(result.evicted)
        return result

    def delete(self, keys: list[str]) -> int:
        freed, _, _ = self.delete_tracked(keys)
        return freed

    def delete_tracked(self, keys: list[str]) -> tuple[int, int, int]:
        """Remove items; returns ``(bytes_freed, generation_before, generation_after)``."""
        def write(cur: Cursor) -> tuple[int, int, int, list[str]]:
            before, count, total = lock_state(cur)
            rows = cur.execute("DELETE FROM cache_items WHERE key = ANY(%s) RETURNING key, audio_bytes",
                               (keys,)).fetchall()
            if not rows:
                return 0, before, before, []
            freed = sum(int(row[1]) for row in rows)
            removed = [row[0] for row in rows]
            cur.execute("UPDATE cache_state SET generation = %s, items = %s, total_bytes = %s",
                        (before + 1, count - len(rows), max(0, total - freed)))
            log_changes(cur, before + 1, [(k, "d") for k in removed])
            return freed, before, before + 1, removed

        freed, before, after, removed = self._write(write)
        self.local.remove(removed)
        return freed, before, after

    def record_hit(self, key: str, timestamp: float | None = None) -> None:
        self._hits.record(key, timestamp)

    def flush_hits(self) -> int:
        """Write the counted hits in one transaction (they move items back in eviction order)."""
        pending = self._hits.take()
        if not pending:
            return 0

        def write(cur: Cursor) -> int:
            rows = cur.execute("SELECT item FROM cache_items WHERE key = ANY(%s) FOR UPDATE",
                               (list(pending),)).fetchall()
            updates = []
            for (raw,) in rows:
                item = item_of(raw)
                count, last = pending[item.key]
                item.hits += count
                item.last_hit_timestamp = max(last, item.last_hit_timestamp or 0.0)
                updates.append((Jsonb(asdict(item)), _eviction_rank(item)[0], item.key))
            cur.executemany("UPDATE cache_items SET item = %s, rank = %s WHERE key = %s", updates)
            return len(updates)

        try:
            return self._write(write)
        except CacheError:
            self._hits.restore(pending)  # written with the next flush
            raise

    def sweep(self) -> tuple[int, int]:
        """Remove local files that no item names. Items never lack audio here (one transaction)."""
        rows = self._read(lambda cur: cur.execute("SELECT key FROM cache_items").fetchall())
        keys = {row[0] for row in rows}
        orphans = sorted(self.local.keys() - keys)
        self.local.remove(orphans)
        if orphans:
            log.info("local audio swept", extra={"orphan_files": len(orphans)})
        return len(orphans), 0

    def verify(self) -> IntegrityReport:
        def read(cur: Cursor) -> IntegrityReport:
            rows = cur.execute(
                "SELECT i.key, i.audio_bytes, octet_length(a.data), octet_length(i.prompt_vector),"
                " octet_length(i.clap_vector) FROM cache_items i LEFT JOIN cache_audio a"
                " ON a.key = i.key").fetchall()
            state = lock_state(cur, lock=False)
            missing = [r[0] for r in rows if r[2] is None]
            mismatch = [r[0] for r in rows if r[2] is not None and r[2] != r[1]]
            dimensions = {r[3] for r in rows if r[3]}
            bad = [r[0] for r in rows if any(n is not None and (n == 0 or n % 4) for n in r[3:5])
                   or (len(dimensions) > 1 and r[3] != max(dimensions))]
            return IntegrityReport(
                items=len(rows), orphan_files=self.local.files_not_named({r[0] for r in rows}),
                items_without_audio=missing, audio_size_mismatch=mismatch,
                dangling_exact_entries=[], dangling_vectors=[], bad_vectors=bad,
                total_bytes_recorded=state[2], total_bytes_actual=sum(int(r[1]) for r in rows),
            )

        return self._read(read)

    # -- the fleet's view: what a node mirrors -------------------------------------------

    def snapshot(self) -> ChangeSet:
        """Every item with its vectors, and the generation they are as of (one snapshot)."""
        def read(cur: Cursor) -> ChangeSet:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            generation = lock_state(cur, lock=False)[0]
            rows = cur.execute(ENTRIES).fetchall()
            return ChangeSet(generation, [entry_of(row) for row in rows], [])

        return self._read(read)

    def changes_since(self, generation: int) -> ChangeSet | None:
        """What changed after ``generation``; None when only a full :meth:`snapshot` will do
        (the log no longer reaches back that far, vectors were replaced, or the database
        is not the one that generation came from)."""
        def read(cur: Cursor) -> ChangeSet | None:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            now = lock_state(cur, lock=False)[0]
            if now == generation:
                return ChangeSet(now, [], [])
            if now < generation:
                return None
            oldest = cur.execute("SELECT min(generation) FROM cache_changes").fetchone()
            if oldest is None or oldest[0] is None or int(oldest[0]) > generation + 1:
                return None
            changes = cur.execute("SELECT key, op FROM cache_changes WHERE generation > %s"
                                  " ORDER BY generation", (generation,)).fetchall()
            if any(op == "r" for _, op in changes):
                return None
            touched = list(dict.fromkeys(key for key, _ in changes))
            rows = cur.execute(ENTRIES + " WHERE i.key = ANY(%s)", (touched,)).fetchall()
            written = [entry_of(row) for row in rows]
            present = {entry.item.key for entry in written}
            return ChangeSet(now, written, [key for key in touched if key not in present])

        return self._read(read)

    def close(self) -> None:
        try:
            self.flush_hits()
        except CacheError as exc:
            log.warning("hits not written: the cache database is unreachable", extra={"error": str(exc)})
        self._db.close()

    # -- internals ---------------------------------------------------------------------

    def _column_vector(self, key: str, column: str) -> Vector | None:
        row = self._read(lambda cur: cur.execute(
            f"SELECT {column} FROM cache_items WHERE key = %s", (key,)).fetchone())
        return vector_of(row[0]) if row and row[0] is not None else None

    def _fetch_audio(self, key: str, audio_format: str) -> bytes:
        row = self._read(lambda cur: cur.execute(
            "SELECT data FROM cache_audio WHERE key = %s", (key,)).fetchone())
        if row is None:
            raise NotFound(f"audio of cache item {key} is gone")
        data = bytes(row[0])
        self.local.write(key, audio_format, data)
        return data

    def _read(self, body: Callable[[Cursor], _T]) -> _T:
        return self._db.read(body)

    def _write(self, body: Callable[[Cursor], _T]) -> _T:
        return self._db.write(body)


def _refuse_concurrent_twin(cur: Cursor, item: CacheItem) -> None:
    """Two nodes that missed on the same prompt at once both generate; the second to commit
    stores nothing (:class:`GeneratedElsewhere`), so the cache holds one item for the prompt.
    An exact entry older than this generation's start is another matter: this is a forced
    regeneration, which re-points the key and leaves the older item in place."""
    row = cur.execute("SELECT i.item FROM cache_exact e JOIN cache_items i ON i.key = e.key"
                      " WHERE e.exact_key = %s", (item.exact_key,)).fetchone()
    if row is None:
        return
    other = item_of(row[0])
    if other.key != item.key and other.generation_timestamp > item.generation_timestamp - item.generation_s:
        raise GeneratedElsewhere(f"an identical prompt generated meanwhile by another node is cached"
                                 f" as {other.key}; this clip is not stored")
