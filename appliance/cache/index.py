"""The in-memory vector index over the cached prompts' embeddings: exact top-k by dot product.

Embeddings are L2-normalised, so cosine similarity is a dot product. Below
:data:`BRUTE_FORCE_BELOW` rows a query is one matrix-vector product over every row (about
0.2 ms at 10 k). Above it brute force costs 5 ms at 100 k and 47-56 ms at 1 M on two cores,
so the index prunes with bounds that can never drop a true result:

* a basis ``E`` (the principal directions of a sample of the stored vectors, uncentred) is
  fitted when the index crosses the crossover. Any orthonormal basis keeps the search
  exact; a good one only makes the pruning tighter;
* each row ``x`` keeps its coordinates ``y = Eᵀx`` cut into stages (dimensions 0-32,
  32-64, 64-128), and after each stage the norm of what the coordinates so far leave out.
  For a query ``q``, ``q·x = Σ_{j<r} y_q[j] y_x[j] + res_q(r)·res_x(r)`` and by
  Cauchy-Schwarz ``|res_q(r)·res_x(r)| ≤ ‖res_q(r)‖ ‖res_x(r)‖``, so the partial sum plus
  the product of the residual norms is an upper bound of the true score that tightens
  stage by stage. Stage 0 is one small matrix-vector product over every row (n × 33 floats,
  not n × 384);
* a lower bound ``L`` on the k-th best score comes from scoring exactly the 64 rows with
  the best bounds among a few hundred picked from stage 0 (and from ``min_score``). A row
  whose bound is under ``L`` cannot be in the answer; the rows left after the last stage
  are scored exactly, and the answer is the top k of those: brute force's answer.

Residual norms are rounded up and every bound gets a small slack, so float32 rounding can
only keep a row, never drop one. When the bounds cannot prune (vectors without a dominant
subspace, such as random isotropic ones) the search falls back to one full product, so it
is never much slower than brute force. Adding and removing rows keeps every array in step
(a removal moves the last row into the hole); the basis is refitted as the index doubles
while it is small, and kept afterwards because a refit reprojects every row. Figures, the
crossover and the data they were measured on: docs/cache.md (``bench/cache_lookup.py``).

Not thread-safe on its own: :class:`appliance.cache.semantic.SemanticCache` serialises
writers and swaps whole indexes on a rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Indices = npt.NDArray[np.intp]

__all__ = ["BRUTE_FORCE_BELOW", "Neighbour", "VectorIndex"]

_INITIAL_ROWS = 64
# Measured crossover (bench/cache_lookup.py): below it one full product is faster than the
# pruning's fixed costs.
BRUTE_FORCE_BELOW = 15_000
# Stage j reads coordinates _STAGE_EDGES[j-1] .. _STAGE_EDGES[j]: stage 0 for every row,
# each later stage only for the rows the one before kept.
_STAGE_EDGES = (32, 64, 128)
_FIT_SAMPLE = 16_384  # rows used to estimate the basis
_REFIT_LIMIT = 65_536  # past this many rows at the last fit, the basis is kept (stable)
_PROBE_ROWS = 512  # rows with the best stage-0 bounds looked at to find the lower bound
_PROBE_EXACT = 64  # of those, the best by last-stage bound, scored exactly
# Rounding guards. A squared residual computed in float64 from float32 coordinates is off
# by far less than _RESIDUAL_EPS × ‖x‖², so adding that before the square root rounds every
# residual norm up; a float32 dot product of 384 terms is off by far less than
# _SLACK × ‖q‖ × ‖x‖, which every bound is widened by.
_RESIDUAL_EPS = 1e-6
_SLACK = 1e-4
_SCAN_FRACTION = 0.05  # a later stage reached by more rows than this is scanned whole
_BRUTE_FRACTION = 0.5  # if more rows than this survive stage 0, brute force is cheaper


@dataclass(frozen=True)
class Neighbour:
    """One search result: a cache key and its cosine similarity to the query."""

    key: str
    score: float


class _Projection:
    """The basis, and per row its coordinates by stage and the norm left after each stage."""

    def __init__(self, basis: Matrix, edges: Sequence[int], capacity: int) -> None:
        self.basis = basis  # d × edges[-1], orthonormal columns, best directions first
        self.edges = list(edges)  # stage j holds coordinates edges[j-1] .. edges[j]
        starts = [0, *self.edges[:-1]]
        self.spans = list(zip(starts, self.edges, strict=True))
        # stage j: its coordinates, then the norm of the row outside the first edges[j] ones
        self.stages: list[Matrix] = [
            np.zeros((capacity, stop - start + 1), dtype=np.float32) for start, stop in self.spans
        ]
        self.max_norm = 0.0  # largest row norm ever stored (never lowered: only widens slack)

    @classmethod
    def fit(cls, vectors: Matrix, capacity: int, seed: int = 0) -> _Projection:
        """Principal directions of a sample of ``vectors`` (second moment, not covariance)."""
        count, dimension = vectors.shape
        if count > _FIT_SAMPLE:
            rows = np.random.default_rng(seed).choice(count, _FIT_SAMPLE, replace=False)
            rows.sort()
            sample = vectors[rows].astype(np.float64)
        else:
            sample = vectors.astype(np.float64)
        _, eigenvectors = np.linalg.eigh(sample.T @ sample)
        edges = sorted({min(edge, dimension) for edge in _STAGE_EDGES})
        basis = np.ascontiguousarray(eigenvectors[:, ::-1][:, : edges[-1]], dtype=np.float32)
        projection = cls(basis, edges, capacity)
        projection.set_rows(0, vectors)
        return projection

    def grow(self, capacity: int) -> None:
        for j, old in enumerate(self.stages):
            new = np.zeros((capacity, old.shape[1]), dtype=np.float32)
            new[: old.shape[0]] = old
            self.stages[j] = new

    def set_rows(self, start: int, vectors: Matrix, chunk: int = 65_536) -> None:
        """Coordinates and residual norms of ``vectors``, stored from row ``start``."""
        for offset in range(0, vectors.shape[0], chunk):
            block = vectors[offset : offset + chunk]
            coords = block @ self.basis
            norms = np.einsum("ij,ij->i", block, block, dtype=np.float64)
            head = np.cumsum(np.square(coords, dtype=np.float64), axis=1)
            rows = slice(start + offset, start + offset + block.shape[0])
            for stage, (lo, hi) in zip(self.stages, self.spans, strict=True):
                stage[rows, :-1] = coords[:, lo:hi]
                rest = np.maximum(norms - head[:, hi - 1], 0.0) + _RESIDUAL_EPS * norms
                stage[rows, -1] = np.sqrt(rest)
            self.max_norm = max(self.max_norm, math.sqrt(float(norms.max(initial=0.0))))

    def move_row(self, source: int, target: int) -> None:
        for stage in self.stages:
            stage[target] = stage[source]

    def query_parts(self, query: Matrix) -> list[Matrix]:
        """Per stage, the query's coordinates with its own residual norm appended."""
        coords = query @ self.basis
        norm = float(np.dot(query.astype(np.float64), query.astype(np.float64)))
        head = np.cumsum(np.square(coords, dtype=np.float64))
        parts: list[Matrix] = []
        for lo, hi in self.spans:
            rest = math.sqrt(max(norm - float(head[hi - 1]), 0.0) + _RESIDUAL_EPS * norm)
            parts.append(np.append(coords[lo:hi], np.float32(rest)).astype(np.float32))
        return parts

    def slack(self, query: Matrix) -> float:
        """How much float32 rounding could move any score for ``query`` (an overestimate)."""
        return _SLACK * float(np.linalg.norm(query)) * max(self.max_norm, 1e-30)


class VectorIndex:
    """Exact top-k dot-product search over keyed vectors (cosine for normalised ones)."""

    def __init__(self, dimension: int) -> None:
        if dimension <= 0:
            raise ValueError("dimension must be positive")
        self.dimension = dimension
        self._matrix: Matrix = np.zeros((_INITIAL_ROWS, dimension), dtype=np.float32)
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self._projection: _Projection | None = None
        self._fitted_rows = 0
        # how the last search went, for benchmarks and tests: "empty", "brute", "pruned"
        self.last_search_mode = "empty"
        self.last_candidates = 0

    @classmethod
    def build(cls, keys: Sequence[str], vectors: npt.NDArray[np.floating]) -> VectorIndex:
        """An index holding ``vectors[i]`` under ``keys[i]`` (a later duplicate key wins)."""
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise ValueError("need one vector row per key")
        index = cls(int(matrix.shape[1]))
        last = {key: i for i, key in enumerate(keys)}
        if len(last) == len(keys):
            unique_keys, rows = list(keys), matrix
        else:
            order = sorted(last.values())
            unique_keys, rows = [keys[i] for i in order], matrix[order]
        count = len(unique_keys)
        index._matrix = np.zeros((max(_INITIAL_ROWS, count), index.dimension), dtype=np.float32)
        index._matrix[:count] = rows
        index._keys = unique_keys
        index._rows = {key: i for i, key in enumerate(unique_keys)}
        index._refit_if_due()
        return index

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def pruning(self) -> bool:
        """Whether searches use the bounds (the index is past the brute-force crossover)."""
        return self._projection is not None

    def add(self, key: str, vector: npt.NDArray[np.floating]) -> None:
        """Insert ``key`` or replace its vector."""
        row_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if row_vector.shape[0] != self.dimension:
            raise ValueError(f"vector has {row_vector.shape[0]} dimensions, the index {self.dimension}")
        row = self._rows.get(key)
        if row is None:
            row = len(self._keys)
            if row == self._matrix.shape[0]:
                self._grow(2 * row)
            self._keys.append(key)
            self._rows[key] = row
        self._matrix[row] = row_vector
        if self._projection is not None:
            self._projection.set_rows(row, row_vector[None, :])
        self._refit_if_due()

    def remove(self, key: str) -> bool:
        """Drop ``key``; False when it was not there."""
        row = self._rows.pop(key, None)
        if row is None:
            return False
        last = len(self._keys) - 1
        if row != last:
            moved = self._keys[last]
            self._matrix[row] = self._matrix[last]
            if self._projection is not None:
                self._projection.move_row(last, row)
            self._keys[row] = moved
            self._rows[moved] = row
        self._keys.pop()
        return True

    def search(
        self, query: npt.NDArray[np.floating], *, k: int = 1, min_score: float = -1.0
    ) -> list[Neighbour]:
        """The ``k`` most similar keys with score ≥ ``min_score``, best first."""
        count = len(self._keys)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dimension:
            raise ValueError(f"query has {q.shape[0]} dimensions, the index {self.dimension}")
        if count == 0 or k <= 0:
            self.last_search_mode, self.last_candidates = "empty", 0
            return []
        if self._projection is None or k >= count:
            rows: Indices = np.arange(count)
            scores = self._matrix[:count] @ q
            self.last_search_mode, self.last_candidates = "brute", count
        else:
            rows, scores = self._pruned(self._projection, q, k, min_score)
        return self._top(rows, scores, k, min_score)

    # -- internals ---------------------------------------------------------------------

    def _top(self, rows: Indices, scores: Matrix, k: int, min_score: float) -> list[Neighbour]:
        if k < scores.shape[0]:
            top = np.argpartition(scores, scores.shape[0] - k)[scores.shape[0] - k :]
        else:
            top = np.arange(scores.shape[0])
        ordered = top[np.argsort(-scores[top], kind="stable")]
        return [
            Neighbour(self._keys[int(rows[i])], float(scores[i]))
            for i in ordered
            if scores[i] >= min_score
        ]

    def _pruned(
        self, projection: _Projection, q: Matrix, k: int, min_score: float
    ) -> tuple[Indices, Matrix]:
        """Rows that may be in the top k, with their exact scores (a superset of the answer)."""
        count = len(self._keys)
        parts = projection.query_parts(q)
        first = projection.stages[0]
        # one pass over n × (edges[0] + 1) floats: coordinates · coordinates + residual norms
        bound = first[:count] @ parts[0]  # ≥ every row's true score

        # A lower bound on the k-th best score: exact scores of rows with the best bounds,
        # found through a strided sample rather than a partition of all n bounds.
        step = max(1, count // 4096)
        sample = bound[::step]
        take = min(sample.shape[0], max(2, math.ceil(_PROBE_ROWS / step)))
        guess = float(np.partition(sample, sample.shape[0] - take)[sample.shape[0] - take])
        probe = np.flatnonzero(bound >= guess)
        if probe.shape[0] > _PROBE_ROWS:
            keep = np.argpartition(bound[probe], probe.shape[0] - _PROBE_ROWS)
            probe = probe[keep[probe.shape[0] - _PROBE_ROWS :]]
        probe_bound = bound[probe]
        probe_partial = probe_bound - first[probe, -1] * parts[0][-1]
        for j in range(1, len(parts)):
            probe_partial, probe_bound = self._refine(
                projection, j, probe, probe_partial, parts[j], count
            )
        if probe.shape[0] > _PROBE_EXACT:
            best = np.argpartition(probe_bound, probe.shape[0] - _PROBE_EXACT)
            probe = probe[best[probe.shape[0] - _PROBE_EXACT :]]
        probe_scores = self._matrix[probe] @ q
        floor = min_score
        if probe_scores.shape[0] >= k:
            floor = max(floor, float(np.partition(probe_scores, probe_scores.shape[0] - k)[-k]))
        threshold = floor - projection.slack(q)

        survivors = np.flatnonzero(bound >= threshold)
        if survivors.shape[0] > _BRUTE_FRACTION * count:
            self.last_search_mode, self.last_candidates = "brute", count
            return np.arange(count), self._matrix[:count] @ q
        partial = bound[survivors] - first[survivors, -1] * parts[0][-1]
        for j in range(1, len(parts)):
            partial, bound = self._refine(projection, j, survivors, partial, parts[j], count)
            keep = np.flatnonzero(bound >= threshold)
            survivors, partial = survivors[keep], partial[keep]
        self.last_search_mode, self.last_candidates = "pruned", int(survivors.shape[0])
        return survivors, self._matrix[survivors] @ q

    @staticmethod
    def _refine(
        projection: _Projection,
        stage: int,
        rows: Indices,
        partial: Matrix,
        part: Matrix,
        count: int,
    ) -> tuple[Matrix, Matrix]:
        """Add a stage's coordinates to ``rows``' partial scores; returns (partial, bound).

        Gathering rows costs ~20 times more per float than a sequential pass, so a stage
        that many rows reach is computed for every row and then indexed.
        """
        table = projection.stages[stage]
        scan = rows.shape[0] > _SCAN_FRACTION * count
        term = (table[:count] @ part)[rows] if scan else table[rows] @ part
        bound: Matrix = partial + term
        return bound - table[rows, -1] * part[-1], bound

    def _grow(self, capacity: int) -> None:
        grown = np.zeros((capacity, self.dimension), dtype=np.float32)
        grown[: self._matrix.shape[0]] = self._matrix
        self._matrix = grown
        if self._projection is not None:
            self._projection.grow(capacity)

    def _refit_if_due(self) -> None:
        """Fit the basis when the index crosses the crossover, again as it doubles (small only)."""
        count = len(self._keys)
        if count < BRUTE_FORCE_BELOW:
            return
        if self._projection is not None and (
            count < 2 * self._fitted_rows or self._fitted_rows >= _REFIT_LIMIT
        ):
            return
        self._projection = _Projection.fit(self._matrix[:count], self._matrix.shape[0])
        self._fitted_rows = count
