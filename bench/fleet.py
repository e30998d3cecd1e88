"""Two nodes' mirrors (appliance/cache/sync.py) on one private PostgreSQL, at the store level.

- remote_exact_hit_ms: on node B, the exact lookup and the audio of a 1 s clip (176 kB)
  written by node A, read for the first time (B fetches it from the database into its
  directory);
- remote_semantic_hit_ms: the same for a nearest-neighbour search over B's mirrored prompt
  vectors (``SEMANTIC_ITEMS`` items, 512 dimensions) instead of the exact lookup. Embedding
  the prompt and the reuse judge are left out: they cost what they cost on a single node;
- propagation_p50_ms: from A's commit (when its put starts keeping the clip locally) to B's
  mirror answering the exact lookup, watched by a thread that polls B every 0.2 ms;
- catch_up_100k_s: a node loading ``CATCH_UP_ITEMS`` items (metadata, exact index, both
  vectors) from the database, extrapolated linearly to 100,000 items. Measured as a full
  snapshot load (what a node does at start); catching up through the change log reads the
  same rows plus the log;
- writes_per_s: one node's committed puts of 1 s clips with both vectors, one after another.

Medians on this machine. Last line: remote_exact_hit_ms=… remote_semantic_hit_ms=…
propagation_p50_ms=… catch_up_100k_s=… writes_per_s=…
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.pg_store import PgCacheStore
from appliance.cache.store import CacheItem
from appliance.cache.sync import FleetCache
from appliance.pg_server import PostgresServer, fresh_database

CLIP = os.urandom(176_400)  # 1 s of 44.1 kHz 16-bit stereo
DIM = 512
ROUNDS = 50
SEMANTIC_ITEMS = 2_000
CATCH_UP_ITEMS = 10_000
MB = 1024 * 1024
rng = np.random.default_rng(0)


def _item(prompt: str) -> CacheItem:
    return CacheItem(
        key=new_item_key(), exact_key=exact_key(prompt, model="m", duration_s=1.0, loop=False),
        prompt=prompt, model="m", duration_s=1.0, requested_duration_s=1.0, is_loop=False, steps=4,
        guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
        audio_format="wav", audio_bytes=0, generation_timestamp=time.time(), generation_s=0.1,
        clap_similarity=0.4)


def _vector() -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _put(store: PgCacheStore, prompt: str, audio: bytes = CLIP) -> CacheItem:
    item = _item(prompt)
    store.put(item, audio, max_items=10**7, max_bytes=10**13,
              prompt_vector=_vector(), clap_vector=_vector())
    return item


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def main() -> None:
    server = PostgresServer.create()
    databases = fresh_database(server)
    dsn = next(databases)
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    a = FleetCache(dsn, root / "a", local_audio_bytes=2048 * MB)
    b = FleetCache(dsn, root / "b", local_audio_bytes=2048 * MB)
    try:
        while not b.connected.is_set():
            time.sleep(0.01)
        writes, propagation, exact, semantic = [], [], [], []
        committed: list[float] = []
        keep_locally = a.local.write

        def timed_write(*args: object) -> None:  # called right after the commit
            committed.append(time.perf_counter())
            keep_locally(*args)  # type: ignore[arg-type]

        setattr(a.local, "write", timed_write)  # noqa: B010 - instrumentation for the bench only
        for i in range(ROUNDS):
            seen: list[float] = []
            wanted = exact_key(f"round {i}", model="m", duration_s=1.0, loop=False)

            def watch(key: str = wanted, seen: list[float] = seen) -> None:
                while b.lookup_exact(key) is None:
                    time.sleep(0.0002)
                seen.append(time.perf_counter())

            watcher = threading.Thread(target=watch)
            watcher.start()
            start = time.perf_counter()
            item = _put(a, f"round {i}")
            writes.append(time.perf_counter() - start)
            watcher.join()
            propagation.append(seen[0] - committed[-1])
            start = time.perf_counter()
            found = b.lookup_exact(item.exact_key)
            assert found is not None and len(b.read_audio(found)) == len(CLIP)
            exact.append(time.perf_counter() - start)
        for i in range(SEMANTIC_ITEMS - ROUNDS):  # vectors only: the search runs over them all
            _put(a, f"filler {i}", b"x")
        targets = [_put(a, f"target {i}") for i in range(ROUNDS)]
        while b.generation() < a.generation():
            time.sleep(0.01)
        for target in targets:
            query = b.prompt_vector(target.key)
            assert query is not None
            start = time.perf_counter()
            keys, matrix = b.prompt_vectors()
            nearest = keys[int(np.argmax(matrix @ query))]
            assert len(b.read_audio(b.get(nearest))) == len(CLIP)
            semantic.append(time.perf_counter() - start)
        for i in range(CATCH_UP_ITEMS - a.totals().items):
            _put(a, f"catch-up {i}", b"x")
        start = time.perf_counter()
        joining = FleetCache(dsn, root / "c", local_audio_bytes=64 * MB)
        load_s = time.perf_counter() - start
        loaded = len(joining.prompt_vectors()[0])
        joining.close()
        print(f"items_loaded={loaded} load_s={load_s:.2f} (extrapolated x{100_000 / loaded:.1f})")
    finally:
        a.close()
        b.close()
        next(databases, None)  # drops the database
        server.remove()
    print(f"remote_exact_hit_ms={_ms(exact)} remote_semantic_hit_ms={_ms(semantic)} "
          f"propagation_p50_ms={_ms(propagation)} catch_up_100k_s={load_s * 100_000 / loaded:.1f} "
          f"writes_per_s={1 / statistics.median(writes):.0f}")


if __name__ == "__main__":
    main()
