"""Nodes on one PostgreSQL: each node's mirror follows the others' writes through LISTEN/NOTIFY,
keeps serving when the database is gone, and catches up from its generation afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.cache.pg_store import PgCacheStore
from appliance.cache.sync import FleetCache
from appliance.errors import CacheUnavailable
from testkit.postgres import PostgresServer
from tests.test_cache_store import make_item

MB = 1024 * 1024


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def nodes(postgres_dsn: str, tmp_path: Path) -> Iterator[tuple[FleetCache, FleetCache]]:
    a = FleetCache(postgres_dsn, tmp_path / "a", local_audio_bytes=64 * MB)
    b = FleetCache(postgres_dsn, tmp_path / "b", local_audio_bytes=64 * MB)
    yield a, b
    a.close()
    b.close()


def test_a_clip_stored_on_one_node_is_an_exact_hit_on_the_other(nodes: tuple[FleetCache, FleetCache]) -> None:
    a, b = nodes
    wait_for(b.connected.is_set)
    item = make_item("rain on a tin roof")
    vector = np.ones(8, np.float32) / np.sqrt(8)
    a.put(item, b"clip", max_items=10, max_bytes=10**9, prompt_vector=vector)
    wait_for(lambda: b.lookup_exact(item.exact_key) is not None)  # pushed: polling is every 30 s
    assert b.generation() == a.generation()
    keys, matrix = b.prompt_vectors()
    assert keys == [item.key] and np.allclose(matrix[0], vector)
    assert b.audio_path(item.key).read_bytes() == b"clip"  # fetched into b's own directory
    assert b.full_reloads == 1  # the start; the rest came as changes


def test_a_removal_on_one_node_is_seen_on_the_other(nodes: tuple[FleetCache, FleetCache]) -> None:
    a, b = nodes
    item, other = make_item("thunder"), make_item("birds")
    for i in (item, other):
        a.put(i, b"clip", max_items=10, max_bytes=10**9, prompt_vector=np.ones(8, np.float32))
    wait_for(lambda: b.lookup_exact(item.exact_key) is not None)
    assert a.audio_path(item.key).is_file()
    b.delete([item.key])
    wait_for(lambda: a.lookup_exact(item.exact_key) is None)
    assert not (a.audio_dir / f"{item.key}.wav").exists()
    assert a.prompt_vectors()[0] == [other.key]


def test_without_the_database_a_node_serves_what_it_holds_and_catches_up_after(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    a = FleetCache(own_postgres.dsn, tmp_path / "a", local_audio_bytes=64 * MB, reconnect_s=8.0)
    writer = PgCacheStore(own_postgres.dsn, tmp_path / "w", local_audio_bytes=64 * MB)
    try:
        held, removed = make_item("wind"), make_item("surf")
        for i in (held, removed):
            a.put(i, b"held-clip", max_items=10, max_bytes=10**9, prompt_vector=np.ones(8, np.float32))
        own_postgres.kill()
        wait_for(lambda: not a.connected.is_set())
        found = a.lookup_exact(held.exact_key)
        assert found is not None and a.read_audio(found) == b"held-clip"
        assert a.audio_path(held.key).is_file() and a.prompt_vectors()[0] == sorted([held.key, removed.key])
        with pytest.raises(CacheUnavailable):
            a.put(make_item("new"), b"x", max_items=10, max_bytes=10**9)
        own_postgres.start()
        added = make_item("written while the node was away")
        writer.put(added, b"new-clip", max_items=10, max_bytes=10**9, prompt_vector=np.ones(8, np.float32))
        writer.delete([removed.key])
        wait_for(lambda: a.connected.is_set() and a.lookup_exact(added.exact_key) is not None, 60)
        assert a.lookup_exact(removed.exact_key) is None and a.generation() == writer.generation()
        assert a.full_reloads == 1  # caught up from its generation, not reloaded
    finally:
        writer.close()
        a.close()
