"""SIGKILL at random instants while a process writes and deletes cache items, 100 times.

After every kill the cache must open, the only leftovers may be orphan audio files (a file
written whose transaction never committed), the start-up sweep must remove them, and then
metadata, audio, vectors and the exact index must agree (CacheStore.verify).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore

RUNS = 50

WRITER = textwrap.dedent("""
    import random, sys, time
    import numpy as np
    from appliance.cache.keys import exact_key, new_item_key
    from appliance.cache.store import CacheItem, CacheStore

    store = CacheStore(sys.argv[1], map_size_bytes=1024 * 1024)  # small: the map grows under the kill
    rng = random.Random(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        keys = [item.key for item in store.items()]
        if keys and rng.random() < 0.35:
            store.delete(rng.sample(keys, min(len(keys), rng.randint(1, 3))))
            continue
        prompt = f"sound {rng.randint(0, 40)}"
        item = CacheItem(
            key=new_item_key(), exact_key=exact_key(prompt, model="m", duration_s=2.0, loop=False),
            prompt=prompt, model="m", duration_s=2.0, requested_duration_s=2.0, is_loop=False, steps=4,
            guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
            audio_format="wav", audio_bytes=0, generation_timestamp=time.time(), generation_s=0.1,
        )
        vector = np.random.default_rng(rng.randint(0, 10**6)).normal(size=16).astype(np.float32)
        store.put(item, bytes(rng.randint(100, 60_000)), max_items=30, max_bytes=600_000,
                  prompt_vector=vector, clap_vector=vector)
""")


def test_sigkill_during_writes_never_damages_the_cache(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    rng = random.Random(7)
    orphans_seen = 0
    items_seen = 0
    for run in range(RUNS):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(run)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"ready\n", writer.stderr.read() if writer.stderr else b""
        time.sleep(rng.uniform(0.0, 0.25))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL, "the writer must still have been running"

        store = CacheStore(directory, map_size_bytes=1024 * 1024)
        try:
            report = store.verify()
            assert not report.damaged, f"run {run}: {report}"
            orphans_seen += len(report.orphan_files)
            store.sweep()
            after = store.verify()
            assert after.ok, f"run {run}: after the sweep: {after}"
            items_seen += after.items
            keys, vectors = store.prompt_vectors()
            assert sorted(keys) == sorted(item.key for item in store.items())
            for item in store.items():
                # an exact entry names an item of the same request (a newer one after a
                # regeneration; none when that newer one was deleted: the older is then
                # still found semantically)
                found = store.lookup_exact(item.exact_key)
                assert found is None or found.exact_key == item.exact_key
                assert len(store.read_audio(item)) == item.audio_bytes
            if keys:
                assert vectors.shape == (len(keys), 16)
        finally:
            store.close()
    assert items_seen > 0, "the writer never committed anything: the test proved nothing"
    print(f"runs={RUNS} orphan_files_swept={orphans_seen} items_checked={items_seen}")


def test_a_full_disk_leaves_no_partial_file_and_no_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CacheStore(tmp_path / "cache")
    prompt = "rain"
    item = CacheItem(
        key=new_item_key(), exact_key=exact_key(prompt, model="m", duration_s=2.0, loop=False),
        prompt=prompt, model="m", duration_s=2.0, requested_duration_s=2.0, is_loop=False, steps=4,
        guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2, audio_format="wav",
        audio_bytes=0, generation_timestamp=time.time(), generation_s=0.1,
    )
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        real_fsync(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        store.put(item, b"x" * 1000, max_items=10, max_bytes=10**6, prompt_vector=np.ones(4, np.float32))
    monkeypatch.undo()
    assert list(store.audio_dir.iterdir()) == []
    assert store.totals().items == 0 and store.verify().ok
    store.close()
