"""The cache store a configuration asks for: LMDB on this node, or PostgreSQL for a fleet.

Both stores keep one contract (appliance/cache/store.py: items, exact index, prompt and
CLAP vectors, audio as local files, a generation counter, eviction under the caps), and
the rest of the appliance is written against the LMDB class, whose signatures the
PostgreSQL stores repeat method for method; the cast below stands in for a shared protocol
that the annotations elsewhere do not use yet.
"""

from __future__ import annotations

from typing import cast

from appliance.cache.store import CacheStore
from appliance.config import CacheSettings


def open_store(settings: CacheSettings, *, service: bool = False) -> CacheStore:
    """The configured store. ``service``: the running appliance, which reads a PostgreSQL
    cache through an in-memory mirror kept in step with the fleet; a command-line tool
    talks to the database directly (no mirror to load for one command)."""
    if settings.backend == "lmdb":
        return CacheStore(settings.dir, map_size_bytes=settings.map_size_bytes)
    if service:
        from appliance.cache.sync import FleetCache

        return cast(CacheStore, FleetCache(settings.postgres_dsn, settings.dir,
                                           local_audio_bytes=settings.max_bytes))
    from appliance.cache.pg_store import PgCacheStore

    return cast(CacheStore, PgCacheStore(settings.postgres_dsn, settings.dir,
                                         local_audio_bytes=settings.max_bytes))



def database_connected(store: CacheStore) -> bool | None:
    """Whether a fleet node's mirror holds its database connection; None without a database (LMDB)."""
    if isinstance(store, CacheStore):
        return None
    from appliance.cache.sync import FleetCache

    return store.connected.is_set() if isinstance(store, FleetCache) else None
