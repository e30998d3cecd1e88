"""The in-memory vector index over the cached prompts' embeddings.

Embeddings are L2-normalised, so cosine similarity is a dot product. The index keeps one
contiguous float32 matrix (rows grow by doubling, a removal moves the last row into the
hole) and answers a query with one matrix-vector product and a partial sort: exact, with no
build step, which is what a cache that changes one item at a time wants. Its figures are
in docs/cache.md (``bench/cache_lookup.py``).

Not thread-safe on its own: :class:`appliance.cache.semantic.SemanticCache` serialises
writers and swaps whole indexes on a rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]

_INITIAL_ROWS = 64


@dataclass(frozen=True)
class Neighbour:
    """One search result: a cache key and its cosine similarity to the query."""

    key: str
    score: float


class VectorIndex:
    """Exact top-k cosine search over keyed, normalised vectors."""

    def __init__(self, dimension: int) -> None:
        if dimension <= 0:
            raise ValueError("dimension must be positive")
        self.dimension = dimension
        self._matrix: Matrix = np.zeros((_INITIAL_ROWS, dimension), dtype=np.float32)
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}

    @classmethod
    def build(cls, keys: Sequence[str], vectors: Matrix) -> VectorIndex:
        """An index holding ``vectors[i]`` under ``keys[i]`` (a later duplicate key wins)."""
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError("need one vector row per key")
        index = cls(int(vectors.shape[1]))
        index._matrix = np.zeros((max(_INITIAL_ROWS, len(keys)), index.dimension), dtype=np.float32)
        for key, vector in zip(keys, vectors, strict=True):
            index.add(key, vector)
        return index

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def add(self, key: str, vector: npt.NDArray[np.floating]) -> None:
        """Insert ``key`` or replace its vector."""
        row_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if row_vector.shape[0] != self.dimension:
            raise ValueError(f"vector has {row_vector.shape[0]} dimensions, the index {self.dimension}")
        row = self._rows.get(key)
        if row is None:
            row = len(self._keys)
            if row == self._matrix.shape[0]:
                grown = np.zeros((2 * row, self.dimension), dtype=np.float32)
                grown[:row] = self._matrix
                self._matrix = grown
            self._keys.append(key)
            self._rows[key] = row
        self._matrix[row] = row_vector

    def remove(self, key: str) -> bool:
        """Drop ``key``; False when it was not there."""
        row = self._rows.pop(key, None)
        if row is None:
            return False
        last = len(self._keys) - 1
        if row != last:
            moved = self._keys[last]
            self._matrix[row] = self._matrix[last]
            self._keys[row] = moved
            self._rows[moved] = row
        self._keys.pop()
        return True

    def search(
        self, query: npt.NDArray[np.floating], *, k: int = 1, min_score: float = -1.0
    ) -> list[Neighbour]:
        """The ``k`` most similar keys with score ≥ ``min_score``, best first."""
        count = len(self._keys)
        if count == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dimension:
            raise ValueError(f"query has {q.shape[0]} dimensions, the index {self.dimension}")
        scores = self._matrix[:count] @ q
        top = np.argpartition(scores, count - k)[count - k:] if k < count else np.arange(count)
        ordered = top[np.argsort(-scores[top], kind="stable")]
        return [Neighbour(self._keys[i], float(scores[i])) for i in ordered if scores[i] >= min_score]
