"""Prompt embeddings for the lookup thread: remembered, and computed in batches.

Two facts make this worth a module. Devices repeat their prompts, so a prompt embedded once
is kept (least recently used ones forgotten first). And the encoder costs about the same for
a batch of 32 prompts as for three single ones, so under a burst the lookup thread should not
embed the queued prompts one by one: the supervisor announces each queued lookup with
:meth:`PromptVectors.expect`, and the first :meth:`PromptVectors.vector` call that misses the
cache embeds its prompt together with every announced prompt not yet embedded.

Vectors are keyed by the exact prompt text (a vector never differs from a fresh embedding)
and handed out read-only, since every request with that prompt shares it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
EmbedBatch = Callable[[Sequence[str]], npt.NDArray[np.float32]]


class PromptVectors:
    """An LRU of prompt embeddings that fills itself in batches."""

    def __init__(self, embed: EmbedBatch, *, capacity: int = 4096, max_batch: int = 32) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be at least 1")
        self._embed = embed
        self._capacity = capacity
        self._max_batch = max_batch
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._expected: deque[str] = deque()
        self._lock = threading.Lock()
        self.batches = 0  # embedding calls made (for tests and the curious)

    def expect(self, prompt: str) -> None:
        """A lookup of ``prompt`` is queued: embed it with the next batch."""
        with self._lock:
            if prompt not in self._cache:
                self._expected.append(prompt)

    def vector(self, prompt: str) -> Vector:
        """The embedding of ``prompt`` (computing it, and the expected ones, when needed)."""
        with self._lock:
            cached = self._cache.get(prompt)
            if cached is not None:
                self._cache.move_to_end(prompt)
                return cached
            batch = [prompt]
            while self._expected and len(batch) < self._max_batch:
                other = self._expected.popleft()
                if other not in self._cache and other not in batch:
                    batch.append(other)
        # the encoder runs outside the lock: expect() from the network thread never waits on it
        vectors = np.array(self._embed(batch), dtype=np.float32)  # a private copy
        vectors.setflags(write=False)
        rows = list(vectors)
        with self._lock:
            self.batches += 1
            for text, row in zip(batch, rows, strict=True):
                self._cache[text] = row
                self._cache.move_to_end(text)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return rows[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)
