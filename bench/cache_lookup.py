"""Cache lookup latency: exact key, semantic (with and without the embedding), and the index.

    .venv/bin/python bench/cache_lookup.py [--sizes 1000,10000,100000]
        [--index-sizes 100000,1000000] [--queries 300] [--crossover] [--big]

1. A real LMDB cache (``CacheStore`` in a temp dir) is filled to each size in turn; at each
   size it measures ``lookup_exact`` (hits and misses), ``SemanticCache.find`` with the
   query's embedding given (embedding excluded), and embedding plus find (included), p50
   and p99, plus the index rebuild from LMDB (what a start or a foreign write costs).
2. The vector index alone at each ``--index-sizes`` size: build time, search p50/p99 (k=8
   above tau_semantic, as the cache searches, and top-10 with no floor), numpy brute force
   for reference, and whether every top-1 equals brute force's.
3. ``--crossover``: pruned search against brute force at 10 k - 100 k rows.

Data. Prompts and queries are AudioCaps captions (``bench/data/audiocaps_val.csv``),
embedded with the shipped MiniLM; 300 are held out as queries, the rest go into the cache.
Past those, items are synthetic: a real caption's embedding plus Gaussian noise drawn with
the real embeddings' covariance (so the spectrum is the real one, not isotropic), scale
``--noise`` (0.7: a variant's cosine to its source is about 0.85), renormalised; its prompt
is the source caption with a variant number. The fill writes audio without fsync and opens
LMDB with ``sync=False`` (a fill of 100 k with fsyncs takes many minutes); lookups run on
the store reopened with the shipped settings.

Timing. Wall-clock (the real latency) and CPU time per call (``process_time``), which is the
more stable figure on a machine shared with other work. Run it once as it is and once with
``OPENBLAS_NUM_THREADS=1``: on two busy cores a threaded OpenBLAS product waits for its
second thread to be scheduled, which shows as p50/p99 in multiples of the 4-8 ms timeslice.
``--big`` adds a 300 k cache and a 2 M index (minutes); ``--isotropic 1.0`` adds isotropic
noise on top of the synthetic vectors, the worst case for the index's projection. The last
line holds the headline figures as ``name=value`` pairs.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lmdb  # noqa: E402

from appliance.cache import index as index_module  # noqa: E402
from appliance.cache import store as store_module  # noqa: E402
from appliance.cache.index import VectorIndex  # noqa: E402
from appliance.cache.keys import exact_key, new_item_key  # noqa: E402
from appliance.cache.reuse import DEFAULT_THRESHOLDS, ReuseJudge  # noqa: E402
from appliance.cache.semantic import Compatibility, SemanticCache  # noqa: E402
from appliance.cache.store import CacheItem, CacheStore  # noqa: E402
from appliance.models.embedder import PromptEmbedder  # noqa: E402

Matrix = npt.NDArray[np.float32]
DEFAULT_CSV = REPO / "bench" / "data" / "audiocaps_val.csv"
MODEL = "bench-model"
DURATION_S = 5.0
MAP_SIZE_BYTES = 4 * 1024**3  # 100 k items and more: the 256 MiB default is for an appliance
AUDIO = b"RIFF" + bytes(60)  # the bytes are never decoded; their size does not matter here


def load_captions(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["caption"] for row in csv.DictReader(fh) if row.get("caption")]


def quantiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return 1000 * statistics.median(ordered), 1000 * p99


def timed(call: Callable[[Any], Any], inputs: Iterable[Any]) -> tuple[list[float], list[float], list[Any]]:
    """Wall and CPU seconds of ``call(x)`` for each input, and the results."""
    wall, cpu, results = [], [], []
    for x in inputs:
        t0, c0 = time.perf_counter(), time.process_time()
        results.append(call(x))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return wall, cpu, results


class Variants:
    """Synthetic embeddings with the spectrum of the real ones (see the module docstring)."""

    def __init__(self, real: Matrix, noise: float, isotropic: float = 0.0, seed: int = 0) -> None:
        self.real = real
        self.noise = noise
        self.isotropic = isotropic  # a stress test: noise that no projection can capture
        self.rng = np.random.default_rng(seed)
        covariance = np.cov(real.T.astype(np.float64))
        self.factor = np.linalg.cholesky(covariance + 1e-8 * np.eye(real.shape[1])).astype(np.float32)

    def make(self, count: int) -> tuple[npt.NDArray[np.intp], Matrix]:
        """(source rows, vectors) for ``count`` new items."""
        sources = self.rng.integers(0, len(self.real), count)
        out = np.empty((count, self.real.shape[1]), dtype=np.float32)
        for start in range(0, count, 100_000):
            stop = min(count, start + 100_000)
            z = self.rng.standard_normal((stop - start, self.real.shape[1]), dtype=np.float32)
            out[start:stop] = self.real[sources[start:stop]] + self.noise * (z @ self.factor.T)
            if self.isotropic:
                flat = self.rng.standard_normal(z.shape, dtype=np.float32)
                out[start:stop] += self.isotropic / math.sqrt(z.shape[1]) * flat
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return sources, out

    def base(self, count: int) -> Matrix:
        """``count`` vectors: the real ones first, then variants."""
        if count <= len(self.real):
            return self.real[:count].copy()
        _, extra = self.make(count - len(self.real))
        return np.vstack([self.real, extra])


@contextmanager
def fast_fill() -> Iterator[None]:
    """Durability off while filling (see the module docstring); restored afterwards."""
    real_open, real_write = lmdb.open, store_module.write_file_durably

    def open_nosync(*args: Any, **kwargs: Any) -> Any:
        return real_open(*args, **{**kwargs, "sync": False, "metasync": False})

    def write_plain(path: Path, data: bytes) -> None:
        path.write_bytes(data)

    lmdb.open, store_module.write_file_durably = open_nosync, write_plain  # type: ignore[assignment]
    try:
        yield
    finally:
        lmdb.open, store_module.write_file_durably = real_open, real_write


def fill(directory: Path, prompts: list[str], vectors: Matrix) -> None:
    with fast_fill():
        store = CacheStore(directory, map_size_bytes=MAP_SIZE_BYTES)
        now = time.time()
        for prompt, vector in zip(prompts, vectors, strict=True):
            item = CacheItem(
                key=new_item_key(),
                exact_key=exact_key(prompt, model=MODEL, duration_s=DURATION_S, loop=False), prompt=prompt,
                model=MODEL, duration_s=DURATION_S, requested_duration_s=DURATION_S,
                is_loop=False, steps=25, guidance_scale=4.5, candidates=1, seed=None, sample_rate=44_100,
                channels=2, audio_format="wav", audio_bytes=0, generation_timestamp=now, generation_s=1.0,
            )
            store.put(item, AUDIO, max_items=10**9, max_bytes=10**15, prompt_vector=vector)
        store.close()


def cache_figures(
    sizes: list[int], captions: list[str], real: Matrix, variants: Variants,
    queries: list[str], query_vectors: Matrix, embedder: PromptEmbedder, headline: dict[str, str],
) -> None:
    compat = Compatibility(model=MODEL, loop=False, duration_s=DURATION_S, duration_tolerance_s=0.5)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        directory = Path(tmp)
        stored_prompts: list[str] = []
        for size in sizes:
            t0 = time.perf_counter()
            new = size - len(stored_prompts)
            take_real = max(0, min(new, len(captions) - len(stored_prompts)))
            prompts = captions[len(stored_prompts) : len(stored_prompts) + take_real]
            vectors = [real[len(stored_prompts) : len(stored_prompts) + take_real]]
            if new > take_real:
                sources, extra = variants.make(new - take_real)
                start = len(stored_prompts) + take_real
                prompts += [f"{captions[s]} (variant {start + i})" for i, s in enumerate(sources)]
                vectors.append(extra)
            fill(directory, prompts, np.vstack(vectors))
            stored_prompts += prompts
            fill_s = time.perf_counter() - t0

            store = CacheStore(directory, map_size_bytes=MAP_SIZE_BYTES)
            judge = ReuseJudge(embedder.embed, DEFAULT_THRESHOLDS, token_vectors=embedder.token_vectors)
            semantic = SemanticCache(store, judge,
                                     dimension=real.shape[1], top_k=8)
            t0 = time.perf_counter()
            semantic.sync()  # the rebuild from LMDB a start (or a foreign write) costs
            rebuild_s = time.perf_counter() - t0

            rng = np.random.default_rng(size)
            hits = [exact_key(stored_prompts[i], model=MODEL, duration_s=DURATION_S, loop=False)
                    for i in rng.integers(0, len(stored_prompts), 500)]
            misses = [exact_key(q, model=MODEL, duration_s=DURATION_S, loop=False) for q in queries[:500]]
            wall, _, results = timed(store.lookup_exact, hits + misses)
            assert all(r is not None for r in results[: len(hits)])
            e50, e99 = quantiles(wall)

            pairs = list(zip(queries, query_vectors, strict=True))

            def find(pair: tuple[str, Matrix], semantic: SemanticCache = semantic) -> Any:
                return semantic.find(pair[0], pair[1], compat)

            def embed_find(prompt: str, semantic: SemanticCache = semantic) -> Any:
                return semantic.find(prompt, embedder.embed([prompt])[0], compat)

            timed(find, pairs[:10])  # warm
            wall, cpu_s, results = timed(find, pairs)
            s50, s99 = quantiles(wall)
            sc50, _ = quantiles(cpu_s)
            hit_rate = sum(r is not None for r in results) / len(results)
            # again: the candidates' word vectors are now remembered, as in a service for
            # every clip it generated itself (SemanticCache.added) or judged before
            wall, _, results = timed(find, pairs)
            w50, w99 = quantiles(wall)
            h50, h99 = quantiles([w for w, r in zip(wall, results, strict=True) if r is not None])

            wall, _, _ = timed(embed_find, queries)
            i50, i99 = quantiles(wall)
            store.close()
            print(f"cache {size:>7} items (filled in {fill_s:.1f} s, index rebuilt from LMDB in "
                  f"{1000 * rebuild_s:.0f} ms, pruning={semantic_index_pruning(semantic)})")
            print(f"   exact lookup      p50 {e50:.3f} ms  p99 {e99:.3f} ms  (500 hits + 500 misses)")
            print(f"   semantic, no emb  p50 {s50:.3f} ms  p99 {s99:.3f} ms  (cpu p50 {sc50:.3f} ms; "
                  f"hit rate {hit_rate:.2f} over {len(queries)} held-out captions; candidates cold)")
            print(f"   semantic, no emb  p50 {w50:.3f} ms  p99 {w99:.3f} ms  (candidates' word vectors "
                  f"remembered; the hits alone: p50 {h50:.3f} ms  p99 {h99:.3f} ms)")
            print(f"   semantic + embed  p50 {i50:.3f} ms  p99 {i99:.3f} ms")
            tag = f"{size // 1000}k"
            headline.update({
                f"exact_p50_ms_{tag}": f"{e50:.3f}", f"exact_p99_ms_{tag}": f"{e99:.3f}",
                f"semantic_p50_ms_{tag}": f"{s50:.3f}", f"semantic_p99_ms_{tag}": f"{s99:.3f}",
                f"semantic_warm_p50_ms_{tag}": f"{w50:.3f}", f"semantic_warm_p99_ms_{tag}": f"{w99:.3f}",
                f"semantic_hit_p50_ms_{tag}": f"{h50:.3f}", f"semantic_hit_p99_ms_{tag}": f"{h99:.3f}",
                f"semantic_embed_p50_ms_{tag}": f"{i50:.2f}", f"semantic_embed_p99_ms_{tag}": f"{i99:.2f}",
                f"rebuild_ms_{tag}": f"{1000 * rebuild_s:.0f}",
            })


def semantic_index_pruning(semantic: SemanticCache) -> bool:
    index = getattr(semantic, "_index", None)
    return bool(index is not None and index.pruning)


def index_figures(
    sizes: list[int], variants: Variants, query_vectors: Matrix, headline: dict[str, str]
) -> None:
    tau = DEFAULT_THRESHOLDS.tau_semantic
    for size in sizes:
        base = variants.base(size)
        keys = [f"k{i}" for i in range(size)]
        t0 = time.perf_counter()
        index = VectorIndex.build(keys, base)
        build_s = time.perf_counter() - t0
        line = [f"index {size:>8}: build {build_s:.2f} s (pruning={index.pruning})"]
        tag = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}m"
        headline[f"index_build_s_{tag}"] = f"{build_s:.2f}"
        for label, k, floor in (("k8_tau", 8, tau), ("k10", 10, -1.0)):
            def search(q: Matrix, index: VectorIndex = index, k: int = k, floor: float = floor) -> Any:
                return index.search(q, k=k, min_score=floor)

            timed(search, query_vectors[:5])
            wall, cpu, results = timed(search, query_vectors)
            candidates = []
            for q in query_vectors[:50]:
                index.search(q, k=k, min_score=floor)
                candidates.append(index.last_candidates)
            w50, w99 = quantiles(wall)
            c50, c99 = quantiles(cpu)
            wrong = 0
            brute_wall = []
            for q, got in zip(query_vectors, results, strict=True):
                t0 = time.perf_counter()
                scores = base @ q
                brute_wall.append(time.perf_counter() - t0)
                best = int(np.argmax(scores))
                expected = [] if scores[best] < floor else [keys[best]]
                top1 = [n.key for n in got[:1]]
                if top1 != expected and not (got and abs(got[0].score - float(scores[best])) < 1e-6):
                    wrong += 1
            b50, _ = quantiles(brute_wall)
            line.append(f"   search {label:<6} p50 {w50:.2f} ms  p99 {w99:.2f} ms  (cpu p50 {c50:.2f} / "
                        f"p99 {c99:.2f} ms; candidates median {statistics.median(candidates):.0f}); "
                        f"brute force p50 {b50:.2f} ms; top-1 differs from brute force: "
                        f"{wrong}/{len(results)}")
            headline.update({
                f"index_{label}_p50_ms_{tag}": f"{w50:.2f}", f"index_{label}_p99_ms_{tag}": f"{w99:.2f}",
                f"index_{label}_cpu_p50_ms_{tag}": f"{c50:.2f}", f"brute_p50_ms_{tag}": f"{b50:.2f}",
                f"index_{label}_top1_wrong_{tag}": str(wrong),
            })
        print("\n".join(line))


def crossover(variants: Variants, query_vectors: Matrix, headline: dict[str, str]) -> None:
    print("crossover: pruned vs brute force (k=8, tau_semantic), p50 ms")
    old = index_module.BRUTE_FORCE_BELOW
    try:
        for size in (10_000, 20_000, 30_000, 50_000, 100_000):
            base = variants.base(size)
            keys = [f"k{i}" for i in range(size)]
            figures = []
            for threshold in (1, 10**12):  # always pruned, never pruned
                index_module.BRUTE_FORCE_BELOW = threshold
                index = VectorIndex.build(keys, base)

                def search(q: Matrix, index: VectorIndex = index) -> Any:
                    return index.search(q, k=8, min_score=DEFAULT_THRESHOLDS.tau_semantic)

                timed(search, query_vectors[:5])
                wall, cpu, _ = timed(search, query_vectors)
                figures += [quantiles(wall)[0], quantiles(cpu)[0]]
            print(f"   {size:>6}: pruned wall {figures[0]:.3f} (cpu {figures[1]:.3f})  "
                  f"brute wall {figures[2]:.3f} (cpu {figures[3]:.3f})")
            headline[f"crossover_pruned_ms_{size // 1000}k"] = f"{figures[0]:.3f}"
            headline[f"crossover_brute_ms_{size // 1000}k"] = f"{figures[2]:.3f}"
    finally:
        index_module.BRUTE_FORCE_BELOW = old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--index-sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.7)
    parser.add_argument("--isotropic", type=float, default=0.0,
                        help="add isotropic noise of this norm (a worst case for the index)")
    parser.add_argument("--crossover", action="store_true")
    parser.add_argument("--big", action="store_true", help="add a 300 k cache and a 2 M index")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    index_sizes = [int(s) for s in args.index_sizes.split(",") if s]
    if args.big:
        sizes.append(300_000)
        index_sizes.append(2_000_000)

    started = time.perf_counter()
    captions = load_captions(args.csv)
    order = np.random.default_rng(0).permutation(len(captions))
    queries = [captions[i] for i in order[: args.queries]]
    cached = [captions[i] for i in order[args.queries :]]
    embedder = PromptEmbedder.from_dir()
    t0 = time.perf_counter()
    real = embedder.embed(cached).astype(np.float32)
    query_vectors = embedder.embed(queries).astype(np.float32)
    print(f"embedder {embedder.name}: {len(cached)} cached + {len(queries)} query captions embedded "
          f"in {time.perf_counter() - t0:.1f} s; synthetic noise {args.noise}, isotropic {args.isotropic}")
    variants = Variants(real, args.noise, args.isotropic)
    headline: dict[str, str] = {}
    cache_figures(sizes, cached, real, variants, queries, query_vectors, embedder, headline)
    index_figures(index_sizes, variants, query_vectors, headline)
    if args.crossover:
        crossover(variants, query_vectors, headline)
    headline["total_s"] = f"{time.perf_counter() - started:.0f}"
    headline["load_avg_1m"] = f"{os.getloadavg()[0]:.1f}"  # the machine may be shared: say how busy
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"load average at the end: {load} on {os.cpu_count()} cores; OPENBLAS_NUM_THREADS={blas}")
    print(" ".join(f"{k}={v}" for k, v in headline.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
