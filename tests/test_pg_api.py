"""``appliance.Cache`` on a fleet's PostgreSQL cache: the configured backend, not LMDB."""

from __future__ import annotations

from pathlib import Path

from appliance import Cache
from appliance.cache.pg_store import PgCacheStore
from testkit.services import write_config
from tests.test_cache_store import make_item


def test_cache_from_a_postgres_config_maintains_the_shared_store(postgres_dsn: str, tmp_path: Path) -> None:
    node = PgCacheStore(postgres_dsn, tmp_path / "node", local_audio_bytes=1 << 26)
    try:
        for prompt in ("rain on a tin roof", "a kettle whistling", "rain on a tent"):
            node.put(make_item(prompt), b"RIFF" + bytes(500), max_items=10, max_bytes=1 << 30)
        config = tmp_path / "appliance.toml"
        write_config(config, {"cache": {"dir": str(tmp_path / "tool"), "backend": "postgres",
                                        "postgres_dsn": postgres_dsn}})
        cache = Cache.from_config(config)  # no index.lmdb anywhere: the database is the cache
        assert cache.stats().items == 3
        assert cache.list(prompt="rain").matched == 2
        removed = cache.remove_pattern("^rain", dry_run=False)
        assert removed.removed_count == 2
        assert [item.prompt for item in node.items()] == ["a kettle whistling"]  # gone fleet-wide
        assert Cache(tmp_path / "other", postgres_dsn=postgres_dsn).stats().items == 1
    finally:
        node.close()
