"""The PostgreSQL cache's tables, and the row-level steps every node's transactions share.

Kept apart from the store class so that the schema, the generation/change-log rules and the
eviction order read in one place: every write locks the single ``cache_state`` row first
(:func:`lock_state`), which commits the fleet's writes in generation order, logs what it
changed (:func:`log_changes`, which also sends ``NOTIFY``), and evicts under an advisory lock
(:func:`evict`) so that one node evicts at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from appliance.cache.store import CacheItem, EmbedderInfo

CHANNEL = "audiogen_cache"
EVICT_LOCK = 0x617564696F67  # advisory lock id: one evicting node at a time
SCHEMA_LOCK = 0x617564696F68  # two nodes creating the schema at once
KEEP_CHANGES = 100_000  # generations of change log kept; an older node reloads everything
Vector = npt.NDArray[np.float32]
Cursor = psycopg.Cursor[Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_state (
    id int PRIMARY KEY CHECK (id = 1),
    generation bigint NOT NULL, items bigint NOT NULL, total_bytes bigint NOT NULL,
    embedder jsonb);
INSERT INTO cache_state VALUES (1, 0, 0, 0, NULL) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS cache_items (
    key text PRIMARY KEY, item jsonb NOT NULL, audio_bytes bigint NOT NULL,
    rank double precision NOT NULL, prompt_vector bytea, clap_vector bytea);
CREATE INDEX IF NOT EXISTS cache_items_rank ON cache_items (rank);
CREATE TABLE IF NOT EXISTS cache_audio (
    key text PRIMARY KEY REFERENCES cache_items ON DELETE CASCADE, data bytea NOT NULL);
ALTER TABLE cache_audio ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS cache_exact (
    exact_key text PRIMARY KEY, key text NOT NULL REFERENCES cache_items ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS cache_exact_key ON cache_exact (key);
CREATE TABLE IF NOT EXISTS cache_changes (
    generation bigint NOT NULL, key text NOT NULL, op char(1) NOT NULL,
    PRIMARY KEY (generation, key));
"""
ENTRIES = ("SELECT i.item, i.prompt_vector, i.clap_vector, e.key IS NOT NULL FROM cache_items i"
            " LEFT JOIN cache_exact e ON e.key = i.key")


@dataclass(frozen=True)
class StoredEntry:
    """One item as a node mirrors it: metadata and both vectors."""

    item: CacheItem
    prompt_vector: Vector | None
    clap_vector: Vector | None
    exact: bool  # whether its exact key points at it (a forced regeneration re-points it)


@dataclass(frozen=True)
class ChangeSet:
    """What changed after a generation: items written (as they are now) and keys removed."""

    generation: int
    written: list[StoredEntry]
    removed: list[str]


def lock_state(cur: Cursor, *, lock: bool = True) -> tuple[int, int, int]:
    """``(generation, items, total_bytes)``; with ``lock`` the row stays locked to commit,
    which puts every write of the fleet in generation order."""
    row = cur.execute("SELECT generation, items, total_bytes FROM cache_state"
                      + (" FOR UPDATE" if lock else "")).fetchone()
    assert row is not None, "cache_state has its one row from schema creation"
    return int(row[0]), int(row[1]), int(row[2])


def evict(cur: Cursor, count: int, total: int, max_items: int, max_bytes: int,
           keep: str) -> tuple[list[str], int, int]:
    """Remove least-valued items until under the caps (the same order as the LMDB store)."""
    if count <= max_items and total <= max_bytes:
        return [], count, total
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (EVICT_LOCK,))
    evicted: list[str] = []
    for key, size in cur.execute("SELECT key, audio_bytes FROM cache_items WHERE key <> %s"
                                 " ORDER BY rank", (keep,)).fetchall():
        if count <= max_items and total <= max_bytes:
            break
        evicted.append(key)
        count, total = count - 1, total - int(size)
    cur.execute("DELETE FROM cache_items WHERE key = ANY(%s)", (evicted,))
    return evicted, count, total


def log_changes(cur: Cursor, generation: int, changes: list[tuple[str, str]]) -> None:
    cur.executemany("INSERT INTO cache_changes VALUES (%s, %s, %s)",
                    [(generation, key, op) for key, op in changes])
    if generation % 1024 == 0:
        cur.execute("DELETE FROM cache_changes WHERE generation <= %s", (generation - KEEP_CHANGES,))
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(generation)))


def entry_of(row: tuple[Any, ...]) -> StoredEntry:
    return StoredEntry(item_of(row[0]), vector_of(row[1]) if row[1] is not None else None,
                       vector_of(row[2]) if row[2] is not None else None, bool(row[3]))


def item_of(raw: dict[str, Any]) -> CacheItem:
    return CacheItem(**raw)


def vector_of(raw: bytes) -> Vector:
    return np.frombuffer(bytes(raw), dtype=np.float32)


def vector_bytes(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def maybe_bytes(vector: Vector | None) -> bytes | None:
    return None if vector is None else vector_bytes(vector)


def embedder_json(info: EmbedderInfo) -> dict[str, Any]:
    return {"name": info.name, "dimension": info.dimension}
