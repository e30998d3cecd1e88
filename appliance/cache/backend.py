"""The cache store a configuration asks for: LMDB on this node, or PostgreSQL for a fleet.

Both stores keep one contract (:class:`appliance.cache.contract.Store`), which mypy checks
here: each class is returned as a ``Store`` without a cast.
"""

from __future__ import annotations

from appliance.cache.contract import Store
from appliance.cache.store import CacheStore
from appliance.config import CacheSettings


def open_store(settings: CacheSettings, *, service: bool = False) -> Store:
    """The configured store. ``service``: the running appliance, which reads a PostgreSQL
    cache through an in-memory mirror kept in step with the fleet; a command-line tool
    talks to the database directly (no mirror to load for one command)."""
    if settings.backend == "lmdb":
        return CacheStore(settings.dir, map_size_bytes=settings.map_size_bytes)
    if service:
        from appliance.cache.sync import FleetCache

        return FleetCache(settings.postgres_dsn, settings.dir, local_audio_bytes=settings.max_bytes)
    from appliance.cache.pg_store import PgCacheStore

    return PgCacheStore(settings.postgres_dsn, settings.dir, local_audio_bytes=settings.max_bytes)


def database_connected(store: Store) -> bool | None:
    """Whether a fleet node's mirror holds its database connection; None without a database (LMDB)."""
    if isinstance(store, CacheStore):
        return None
    from appliance.cache.sync import FleetCache

    return store.connected.is_set() if isinstance(store, FleetCache) else None
