"""The PostgreSQL cache store against a real private server: the store's contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.cache.pg_store import PgCacheStore
from appliance.errors import GeneratedElsewhere, NotFound
from tests.test_cache_store import make_item

MB = 1024 * 1024


@pytest.fixture
def pg(postgres_dsn: str, tmp_path: Path) -> Iterator[PgCacheStore]:
    store = PgCacheStore(postgres_dsn, tmp_path / "node-a", local_audio_bytes=64 * MB)
    yield store
    store.close()


def _vector(seed: int, dimension: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return v / np.linalg.norm(v)


def test_put_stores_item_exact_key_vectors_and_audio_together(pg: PgCacheStore) -> None:
    item = make_item("rain on a tin roof")
    result = pg.put(item, b"RIFF" + b"a" * 996, max_items=10, max_bytes=10**9,
                    prompt_vector=_vector(1), clap_vector=_vector(2, 16))
    assert (result.evicted, result.generation_after) == ([], result.generation_before + 1)
    found = pg.lookup_exact(item.exact_key)
    assert found is not None and found.key == item.key and found.audio_bytes == 1000
    assert pg.get(item.key).prompt == "rain on a tin roof"
    assert np.array_equal(np.asarray(pg.prompt_vector(item.key)), _vector(1))
    assert np.array_equal(np.asarray(pg.clap_vector(item.key)), _vector(2, 16))
    keys, matrix = pg.prompt_vectors()
    assert keys == [item.key] and matrix.shape == (1, 8)
    assert pg.read_audio(found) == b"RIFF" + b"a" * 996
    assert pg.totals().items == 1 and pg.totals().bytes == 1000
    assert pg.verify().ok


def test_a_clip_stored_by_one_node_is_fetched_by_another_into_its_local_files(
    pg: PgCacheStore, postgres_dsn: str, tmp_path: Path
) -> None:
    item = make_item("thunder")
    pg.put(item, b"clip-bytes", max_items=10, max_bytes=10**9)
    other = PgCacheStore(postgres_dsn, tmp_path / "node-b", local_audio_bytes=64 * MB)
    try:
        assert not (other.audio_dir / f"{item.key}.wav").exists()
        path = other.audio_path(item.key, "wav")
        assert path.read_bytes() == b"clip-bytes"
        found = other.lookup_exact(item.exact_key)
        assert found is not None and other.read_audio(found) == b"clip-bytes"
    finally:
        other.close()


def test_delete_removes_everything_and_bumps_the_generation(pg: PgCacheStore) -> None:
    keep, gone = make_item("wind"), make_item("birds")
    for item in (keep, gone):
        pg.put(item, b"x" * 100, max_items=10, max_bytes=10**9, prompt_vector=_vector(3))
    generation = pg.generation()
    assert pg.delete([gone.key, "0" * 32]) == 100
    assert pg.generation() == generation + 1
    assert pg.lookup_exact(gone.exact_key) is None
    with pytest.raises(NotFound):
        pg.get(gone.key)
    assert not pg.audio_path(gone.key).exists()
    assert pg.prompt_vectors()[0] == [keep.key]
    assert pg.delete([gone.key]) == 0 and pg.generation() == generation + 1  # nothing: no bump
    assert pg.totals().items == 1 and pg.totals().bytes == 100 and pg.verify().ok


def test_eviction_keeps_the_caps_and_removes_the_least_used_first(pg: PgCacheStore) -> None:
    old, used, new = (make_item(p, ts=t) for p, t in (("old", 1000.0), ("used", 2000.0), ("new", 3000.0)))
    for item in (old, used):
        pg.put(item, b"x" * 100, max_items=10, max_bytes=10**9)
    pg.record_hit(used.key, timestamp=5000.0)
    assert pg.flush_hits() == 1
    result = pg.put(new, b"y" * 100, max_items=2, max_bytes=10**9)
    assert result.evicted == [old.key]
    assert {i.key for i in pg.items()} == {used.key, new.key}
    assert pg.get(used.key).hits == 1
    result = pg.put(make_item("big"), b"z" * 250, max_items=10, max_bytes=300)
    assert result.evicted == [new.key, used.key]  # the newest item is kept, even alone
    assert pg.totals().bytes == 250 and pg.verify().ok


def test_a_re_put_of_a_key_replaces_it_without_counting_it_twice(pg: PgCacheStore) -> None:
    item = make_item("rain")
    pg.put(item, b"x" * 100, max_items=10, max_bytes=10**9)
    pg.put(item, b"x" * 40, max_items=10, max_bytes=10**9)
    assert pg.totals().items == 1 and pg.totals().bytes == 40 and pg.verify().ok


def test_changes_since_a_generation_are_the_writes_and_removals_after_it(pg: PgCacheStore) -> None:
    a, b = make_item("a"), make_item("b")
    pg.put(a, b"x", max_items=10, max_bytes=10**9, prompt_vector=_vector(4))
    seen = pg.generation()
    pg.put(b, b"y", max_items=10, max_bytes=10**9, prompt_vector=_vector(5))
    pg.delete([a.key])
    changes = pg.changes_since(seen)
    assert changes is not None and changes.generation == seen + 2
    assert [e.item.key for e in changes.written] == [b.key] and changes.removed == [a.key]
    assert np.array_equal(np.asarray(changes.written[0].prompt_vector), _vector(5))
    assert pg.changes_since(seen + 5) is None  # a generation from another database: reload
    snapshot = pg.snapshot()
    assert snapshot.generation == seen + 2 and [e.item.key for e in snapshot.written] == [b.key]


def test_the_sweep_removes_local_files_that_no_item_names(pg: PgCacheStore) -> None:
    item = make_item("rain")
    pg.put(item, b"x", max_items=10, max_bytes=10**9)
    (pg.audio_dir / ("f" * 32 + ".wav")).write_bytes(b"orphan")
    assert pg.verify().orphan_files == ["f" * 32 + ".wav"]
    assert pg.sweep() == (1, 0)
    assert pg.verify().ok and pg.audio_path(item.key).is_file()


def test_the_configuration_chooses_the_backend_and_postgres_needs_a_dsn(
    postgres_dsn: str, tmp_path: Path
) -> None:
    from pydantic import ValidationError

    from appliance.cache.backend import open_store
    from appliance.cache.store import CacheStore
    from appliance.config import CacheSettings

    with pytest.raises(ValidationError, match="postgres_dsn"):
        CacheSettings.model_validate({"backend": "postgres"})
    lmdb_store = open_store(CacheSettings.model_validate({"dir": str(tmp_path / "l")}))
    assert type(lmdb_store) is CacheStore
    lmdb_store.close()
    settings = CacheSettings.model_validate(
        {"dir": str(tmp_path / "p"), "backend": "postgres", "postgres_dsn": postgres_dsn})
    store = open_store(settings)
    try:
        assert isinstance(store, PgCacheStore) and store.totals().items == 0
    finally:
        store.close()


def test_an_identical_prompt_generated_meanwhile_elsewhere_is_stored_once(pg: PgCacheStore) -> None:
    first = make_item("rain on a tin roof")
    pg.put(first, b"RIFF" + b"a" * 96, max_items=10, max_bytes=10**9)
    twin = make_item("rain on a tin roof", ts=first.generation_timestamp + 0.01)  # started before first ended
    with pytest.raises(GeneratedElsewhere):
        pg.put(twin, b"RIFF" + b"b" * 96, max_items=10, max_bytes=10**9)
    assert [i.key for i in pg.items()] == [first.key] and pg.local.read(twin.key, "wav") is None
    forced = make_item("rain on a tin roof", ts=first.generation_timestamp + 5)  # started after: force
    pg.put(forced, b"RIFF" + b"c" * 96, max_items=10, max_bytes=10**9)
    assert {i.key for i in pg.items()} == {first.key, forced.key}
    assert pg.lookup_exact(first.exact_key) == pg.get(forced.key)
