from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore
from appliance.errors import CacheFull, NotFound


def make_item(prompt: str, *, key: str | None = None, score: float | None = None,
              ts: float | None = None) -> CacheItem:
    return CacheItem(
        key=key or new_item_key(), exact_key=exact_key(prompt, model="m", duration_s=4.0, loop=False),
        prompt=prompt, model="m", duration_s=4.0, requested_duration_s=4.0, is_loop=False, steps=4,
        guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2, audio_format="wav",
        audio_bytes=0, generation_timestamp=ts if ts is not None else time.time(), generation_s=0.1,
        clap_similarity=score,
    )


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = CacheStore(tmp_path / "cache")
    yield s
    s.close()


def test_exact_key_normalises_prompt_but_not_parameters() -> None:
    a = exact_key("Rain on a  tin roof.", model="m", duration_s=4, loop=False)
    assert a == exact_key("rain on a tin roof", model="m", duration_s=4.0, loop=False)
    assert a != exact_key("rain on a tin roof", model="m", duration_s=5, loop=False)
    assert a != exact_key("rain on a tin roof", model="m", duration_s=4, loop=True)
    assert a != exact_key("rain on a tin roof", model="other", duration_s=4, loop=False)


def test_put_then_lookup_get_and_read_audio(store: CacheStore) -> None:
    item = make_item("rain")
    store.put(item, b"RIFF-audio", max_items=10, max_bytes=10**9)
    found = store.lookup_exact(item.exact_key)
    assert found is not None and found.key == item.key and found.audio_bytes == 10
    assert store.read_audio(found) == b"RIFF-audio"
    assert store.totals().items == 1 and store.totals().bytes == 10
    with pytest.raises(NotFound):
        store.get("../../etc/passwd")


def test_delete_removes_metadata_index_and_file(store: CacheStore) -> None:
    item = make_item("rain")
    store.put(item, b"x" * 100, max_items=10, max_bytes=10**9)
    assert store.delete([item.key]) == 100
    assert store.lookup_exact(item.exact_key) is None
    assert not store.audio_path(item.key).exists()
    assert store.totals().bytes == 0


def test_sweep_removes_orphan_files_and_items_without_audio(store: CacheStore) -> None:
    kept, broken = make_item("kept"), make_item("broken")
    store.put(kept, b"a", max_items=10, max_bytes=10**9)
    store.put(broken, b"b", max_items=10, max_bytes=10**9)
    store.audio_path(broken.key).unlink()
    (store.audio_dir / f"{new_item_key()}.wav").write_bytes(b"orphan")
    (store.audio_dir / ".tmp-half-written.wav").write_bytes(b"half")
    assert store.sweep() == (2, 1)
    assert [i.key for i in store.items()] == [kept.key]


def test_eviction_keeps_the_caps_and_prefers_recent_and_good(store: CacheStore) -> None:
    now = time.time()
    old_bad = make_item("old bad", ts=now - 3600, score=0.1)
    old_good = make_item("old good", ts=now - 3600, score=0.9)
    store.put(old_bad, b"x" * 10, max_items=2, max_bytes=10**9)
    store.put(old_good, b"x" * 10, max_items=2, max_bytes=10**9)
    evicted = store.put(make_item("new"), b"x" * 10, max_items=2, max_bytes=10**9)
    assert evicted.evicted == [old_bad.key]
    assert not store.audio_path(old_bad.key).exists()
    assert store.totals().items == 2
    evicted = store.put(make_item("big"), b"x" * 25, max_items=10, max_bytes=40)
    assert store.totals().bytes <= 40 and len(evicted.evicted) == 1


def test_hits_are_batched_and_flushed(store: CacheStore) -> None:
    item = make_item("rain")
    store.put(item, b"a", max_items=10, max_bytes=10**9)
    for _ in range(3):
        store.record_hit(item.key, timestamp=123.0)
    assert store.get(item.key).hits == 0
    assert store.flush_hits() == 1
    updated = store.get(item.key)
    assert updated.hits == 3 and updated.last_hit_timestamp == 123.0


def test_a_full_map_is_cache_full_and_nothing_half_written(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "small", map_size_bytes=1024 * 1024)
    try:
        long_prompt = "p" * 4000
        with pytest.raises(CacheFull, match="appliance cache resize"):
            for index in range(400):
                store.put(make_item(f"{long_prompt} {index}"), b"a", max_items=10**6, max_bytes=10**9)
        assert store.verify().ok  # the failed put left neither its item nor its file
    finally:
        store.close()


def test_another_process_sees_writes_and_deletes(store: CacheStore) -> None:
    item = make_item("shared")
    store.put(item, b"a", max_items=10, max_bytes=10**9)
    generation = store.totals().generation
    code = (
        "import sys; from appliance.cache.store import CacheStore; "
        f"s = CacheStore(sys.argv[1]); assert s.get('{item.key}').prompt == 'shared'; "
        f"s.delete(['{item.key}']); s.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(store.directory)], check=True)
    assert store.lookup_exact(item.exact_key) is None
    assert store.totals().generation == generation + 1
