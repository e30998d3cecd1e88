"""Semantic lookup: find a cached clip whose prompt means the same as a new one.

Steps, in order (DESIGN.md): vector candidates (top-k by cosine over the stored prompt
embeddings, at least ``tau_semantic``) → compatibility (same model and loop flag, duration
within a tolerance; applied before the top-k is cut) → the reuse judge
(:mod:`appliance.cache.reuse`) → optionally the CLAP check (the new prompt's CLAP text
embedding against the candidate's stored CLAP audio embedding, at least ``tau_clap_reuse``).
The first candidate passing all is the hit.

The in-memory index follows the LMDB environment: every write bumps a generation counter;
a lookup that sees a counter it did not produce itself rebuilds the index from LMDB, so a
deletion made by the CLI is honoured by the next lookup without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from appliance.cache.index import Neighbour, VectorIndex
from appliance.cache.reuse import ReuseJudge
from appliance.cache.store import CacheItem, CacheStore, EmbedderInfo, PutResult
from appliance.errors import NotFound

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]
ClapTextScorer = Callable[[str, Vector], float]


@dataclass(frozen=True)
class SemanticHit:
    item: CacheItem
    similarity: float  # prompt-embedding cosine
    score: float  # the judge's reuse probability
    clap_score: float | None
    reason: str = ""  # why the judge accepted it (for operators calibrating)


@dataclass(frozen=True)
class Compatibility:
    """What must agree before meanings are compared at all."""

    model: str
    loop: bool
    duration_s: float
    duration_tolerance_s: float

    def admits(self, item: CacheItem) -> bool:
        return (
            item.model == self.model
            and item.is_loop == self.loop
            and abs(item.requested_duration_s - self.duration_s) <= self.duration_tolerance_s
        )


class SemanticCache:
    """The vector index over the store's prompt embeddings, and the lookup through it."""

    def __init__(
        self,
        store: CacheStore,
        judge: ReuseJudge,
        *,
        dimension: int,
        top_k: int = 8,
        clap_check: ClapTextScorer | None = None,
        tau_clap_reuse: float = 0.0,
    ) -> None:
        self._store = store
        self._judge = judge
        self._dimension = dimension
        self._top_k = top_k
        self._clap_check = clap_check
        self._tau_clap_reuse = tau_clap_reuse
        self._lock = threading.Lock()
        self._index = VectorIndex(dimension)
        self._generation = -1
        self.rebuilds = 0

    def __len__(self) -> int:
        return len(self._index)

    def sync(self) -> None:
        """Rebuild the index if another process changed the store since we last looked."""
        generation = self._store.generation()
        if generation == self._generation:
            return
        with self._lock:
            generation = self._store.generation()
            if generation == self._generation:
                return
            keys, vectors = self._store.prompt_vectors()
            if keys and vectors.shape[1] != self._dimension:
                raise ValueError(f"stored vectors have {vectors.shape[1]} dimensions, "
                                 f"the embedder {self._dimension}")
            self._index = (VectorIndex.build(keys, vectors) if keys
                           else VectorIndex(self._dimension))
            self._generation = generation
            self.rebuilds += 1
            log.info("vector index rebuilt", extra={"items": len(keys), "generation": generation})

    def find(self, prompt: str, vector: Vector, compatibility: Compatibility) -> SemanticHit | None:
        """The best reusable item for ``prompt``, or None.

        The top ``top_k`` are taken among *compatible* items: the search widens until it
        has that many or runs out of neighbours above ``tau_semantic``, so variants of one
        prompt at other durations or models can never hide a compatible item behind them.
        """
        self.sync()
        candidates = self._compatible_neighbours(vector, compatibility)
        if candidates:
            self._judge.prefetch(prompt, [item.prompt for _, item in candidates])
        for neighbour, item in candidates:
            decision = self._judge.decide(prompt, item.prompt, neighbour.score)
            log.debug("reuse decision", extra={"candidate": item.key, "accept": decision.accept,
                                               "reason": decision.reason})
            if not decision.accept:
                continue
            clap_score = self._verify_with_clap(prompt, item)
            if clap_score is not None and clap_score < self._tau_clap_reuse:
                continue
            return SemanticHit(item, neighbour.score, decision.score, clap_score, decision.reason)
        return None

    def _compatible_neighbours(
        self, vector: Vector, compatibility: Compatibility
    ) -> list[tuple[Neighbour, CacheItem]]:
        tau = self._judge.thresholds.tau_semantic
        k = self._top_k
        while True:
            with self._lock:  # added() changes the index in place from the generation thread
                neighbours = self._index.search(vector, k=k, min_score=tau)
            found: list[tuple[Neighbour, CacheItem]] = []
            for neighbour in neighbours:
                try:
                    item = self._store.get(neighbour.key)
                except NotFound:
                    continue  # deleted since the index saw it
                if compatibility.admits(item):
                    found.append((neighbour, item))
            if len(found) >= self._top_k or len(neighbours) < k:
                return found[: self._top_k]
            k *= 4

    def added(self, key: str, vector: Vector, result: PutResult, prompt: str | None = None) -> None:
        """Keep the index in step with our own write (no rebuild unless someone else wrote).

        With ``prompt``, the judge remembers its word vectors now: usually free, as the
        embedder still holds them from the lookup that missed (its last 256 prompts); else one
        token pass here, after the generation, rather than in a later lookup that meets this
        clip as a candidate."""
        if prompt is not None:
            self._judge.prefetch(prompt, [])
        with self._lock:
            for evicted in result.evicted:
                self._index.remove(evicted)
            self._index.add(key, vector)
            if self._generation == result.generation_before:
                self._generation = result.generation_after
            # otherwise another process wrote in between: the next sync rebuilds

    def _verify_with_clap(self, prompt: str, item: CacheItem) -> float | None:
        if self._clap_check is None:
            return None
        audio_vector = self._store.clap_vector(item.key)
        if audio_vector is None:
            return None
        return self._clap_check(prompt, audio_vector)


def ensure_embedder(store: CacheStore, info: EmbedderInfo, embed: Callable[[list[str]], Vector]) -> int:
    """Make the stored prompt vectors come from ``info``'s embedder; re-embed if not.

    Returns the number of prompts re-embedded. A cache is never left with vectors of two
    embedders mixed: the swap happens in one transaction.
    """
    stored = store.embedder_info()
    keys, _ = store.prompt_vectors()
    items = store.items()
    missing = {item.key for item in items} - set(keys)
    if stored == info and not missing:
        return 0
    if stored is None and not items:
        store.set_embedder_info(info)
        return 0
    log.warning("re-embedding cached prompts", extra={"from": stored.name if stored else None,
                                                      "to": info.name, "items": len(items)})
    fresh: dict[str, Vector] = {}
    batch = 64
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        for item, vector in zip(chunk, embed([i.prompt for i in chunk]), strict=True):
            fresh[item.key] = vector
    store.replace_prompt_vectors(fresh, info)
    return len(fresh)
