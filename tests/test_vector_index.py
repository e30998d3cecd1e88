"""The vector index answers exactly what brute force answers, through every kind of change.

The pruned search only runs past ``BRUTE_FORCE_BELOW`` rows; most tests lower that
crossover (a module attribute read at run time) so that small data exercise the bounds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.cache import index as index_module
from appliance.cache.index import Neighbour, VectorIndex

Matrix = npt.NDArray[np.float32]


def unit(rows: npt.NDArray[np.floating]) -> Matrix:
    rows = np.asarray(rows, dtype=np.float32)
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, count: int, dimension: int, clusters: int = 20) -> Matrix:
    """Vectors with a decaying spectrum, like sentence embeddings (not isotropic)."""
    spectrum = 1.0 / np.arange(1, dimension + 1, dtype=np.float32)
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32) * spectrum
    noise = rng.standard_normal((count, dimension)).astype(np.float32) * spectrum * 0.5
    return unit(centres[rng.integers(0, clusters, count)] + noise)


class Brute:
    """The reference answer, with every key's true score to judge ties by."""

    def __init__(self, keys: list[str], vectors: Matrix, query: Matrix, k: int, min_score: float) -> None:
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")
        self.scores = {key: float(score) for key, score in zip(keys, scores, strict=True)}
        self.top = [Neighbour(keys[i], float(scores[i])) for i in order[:k] if scores[i] >= min_score]
        self.runner_up = float(scores[order[1]]) if len(order) > 1 else -np.inf


def brute(keys: list[str], vectors: Matrix, query: Matrix, k: int, min_score: float) -> Brute:
    return Brute(keys, vectors, query, k, min_score)


def assert_same(got: list[Neighbour], expected: Brute) -> None:
    """Brute force's scores in its order, each key really having its score; the same top-1
    key unless the best score is tied."""
    assert [n.score for n in got] == pytest.approx([n.score for n in expected.top], abs=1e-5)
    assert len({n.key for n in got}) == len(got)
    for neighbour in got:
        assert expected.scores[neighbour.key] == pytest.approx(neighbour.score, abs=1e-5)
    if expected.top and expected.top[0].score - expected.runner_up > 1e-5:
        assert got[0].key == expected.top[0].key


@pytest.fixture
def low_crossover(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(index_module, "BRUTE_FORCE_BELOW", 200)
    return 200


def test_empty_index_finds_nothing() -> None:
    index = VectorIndex(8)
    assert len(index) == 0
    assert index.search(np.ones(8, dtype=np.float32), k=5) == []
    assert VectorIndex.build([], np.zeros((0, 8), dtype=np.float32)).search(np.ones(8), k=1) == []


def test_dimension_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        VectorIndex(0)
    index = VectorIndex(4)
    with pytest.raises(ValueError):
        index.add("a", np.ones(5, dtype=np.float32))
    with pytest.raises(ValueError):
        index.search(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError):
        VectorIndex.build(["a", "b"], np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        VectorIndex.build(["a"], np.ones(4, dtype=np.float32))


def test_k_larger_than_the_index_returns_everything_best_first() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((5, 16)))
    keys = [f"k{i}" for i in range(5)]
    index = VectorIndex.build(keys, vectors)
    query = vectors[2]
    result = index.search(query, k=50)
    assert len(result) == 5
    assert result[0].key == "k2" and result[0].score == pytest.approx(1.0, abs=1e-6)
    assert_same(result, brute(keys, vectors, query, 50, -1.0))
    assert index.search(query, k=0) == []


def test_min_score_drops_weak_neighbours(low_crossover: int) -> None:
    rng = np.random.default_rng(2)
    vectors = clustered(rng, 1_000, 32)
    keys = [f"k{i}" for i in range(len(vectors))]
    index = VectorIndex.build(keys, vectors)
    assert index.pruning
    for query in unit(rng.standard_normal((20, 32)) * 0.2 + vectors[:20]):
        for min_score in (0.0, 0.8, 0.95, 1.1):
            result = index.search(query, k=10, min_score=min_score)
            assert all(n.score >= min_score for n in result)
            assert_same(result, brute(keys, vectors, query, 10, min_score))


def test_add_replace_and_remove_keep_the_index_in_step() -> None:
    index = VectorIndex(3)
    index.add("a", np.array([1.0, 0.0, 0.0]))
    index.add("b", np.array([0.0, 1.0, 0.0]))
    assert len(index) == 2 and "a" in index and "c" not in index
    index.add("a", np.array([0.0, 0.0, 1.0]))  # replace
    assert len(index) == 2
    assert index.search(np.array([0.0, 0.0, 1.0]), k=1) == [Neighbour("a", 1.0)]
    assert index.remove("a") is True
    assert index.remove("a") is False
    assert "a" not in index and len(index) == 1
    assert [n.key for n in index.search(np.array([0.0, 0.0, 1.0]), k=3)] == ["b"]


def test_build_keeps_the_last_vector_of_a_duplicate_key() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    index = VectorIndex.build(["x", "y", "x"], vectors)
    assert len(index) == 2
    assert index.search(np.array([-1.0, 0.0]), k=1) == [Neighbour("x", 1.0)]


@pytest.mark.parametrize("kind", ["clustered", "isotropic"])
def test_pruned_search_equals_brute_force(low_crossover: int, kind: str) -> None:
    rng = np.random.default_rng(3)
    dimension = 64
    vectors = (clustered(rng, 3_000, dimension) if kind == "clustered"
               else unit(rng.standard_normal((3_000, dimension))))
    keys = [f"k{i}" for i in range(len(vectors))]
    index = VectorIndex.build(keys, vectors)
    assert index.pruning
    queries = np.vstack([vectors[:10], unit(vectors[10:40] + 0.3 * rng.standard_normal((30, dimension))),
                         unit(rng.standard_normal((10, dimension)))])
    modes = set()
    for query in queries:
        for k in (1, 3, 10):
            result = index.search(query, k=k)
            assert_same(result, brute(keys, vectors, query, k, -1.0))
            modes.add(index.last_search_mode)
    if kind == "clustered":
        assert "pruned" in modes  # the bounds did prune, so the exact path was exercised


def test_pruned_search_on_realistic_dimension_keeps_top1(low_crossover: int) -> None:
    rng = np.random.default_rng(4)
    vectors = clustered(rng, 2_000, 384, clusters=50)
    keys = [f"k{i}" for i in range(len(vectors))]
    index = VectorIndex.build(keys, vectors)
    for query in unit(vectors[:30] + 0.5 * rng.standard_normal((30, 384)) / np.sqrt(384)):
        result = index.search(query, k=8, min_score=0.3)
        assert_same(result, brute(keys, vectors, query, 8, 0.3))
        assert index.last_search_mode in {"pruned", "brute"}


def test_vectors_of_any_norm_are_scored_by_dot_product(low_crossover: int) -> None:
    rng = np.random.default_rng(5)
    vectors = clustered(rng, 800, 32) * rng.uniform(0.1, 10.0, (800, 1)).astype(np.float32)
    keys = [f"k{i}" for i in range(len(vectors))]
    index = VectorIndex.build(keys, vectors)
    for query in rng.standard_normal((15, 32)).astype(np.float32) * 3:
        assert_same(index.search(query, k=5), brute(keys, vectors, query, 5, -np.inf))


def test_one_change_at_a_time_across_the_crossover(low_crossover: int) -> None:
    """Items added singly past the crossover (the basis is fitted, then refitted), removed
    and replaced, with a search after every few changes."""
    rng = np.random.default_rng(6)
    dimension = 48
    pool = clustered(rng, 1_200, dimension)
    index = VectorIndex(dimension)
    live: dict[str, Matrix] = {}
    checks = 0
    for step in range(1_500):
        action = rng.random()
        if action < 0.7 or not live:
            key = f"k{step}"
            vector = pool[step % len(pool)]
        elif action < 0.85:
            key = list(live)[int(rng.integers(0, len(live)))]
            vector = pool[int(rng.integers(0, len(pool)))]  # replace
        else:
            key = list(live)[int(rng.integers(0, len(live)))]
            assert index.remove(key)
            del live[key]
            continue
        index.add(key, vector)
        live[key] = vector
        if step % 25 == 0:
            keys = list(live)
            matrix = np.vstack([live[k] for k in keys])
            query = unit(pool[int(rng.integers(0, len(pool)))] + 0.2 * rng.standard_normal(dimension))
            assert_same(index.search(query, k=5), brute(keys, matrix, query, 5, -1.0))
            checks += 1
    assert len(index) == len(live) and index.pruning and checks > 50
    for key in list(live)[: len(live) - 10]:  # shrink far below the crossover
        assert index.remove(key)
        del live[key]
    keys = list(live)
    matrix = np.vstack([live[k] for k in keys])
    assert_same(index.search(pool[0], k=20), brute(keys, matrix, pool[0], 20, -1.0))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 400),
    k=st.integers(1, 12),
    min_score=st.floats(-1.0, 1.0),
    spread=st.floats(0.01, 2.0),
)
def test_any_data_any_k_matches_brute_force(
    seed: int, count: int, k: int, min_score: float, spread: float
) -> None:
    old = index_module.BRUTE_FORCE_BELOW
    index_module.BRUTE_FORCE_BELOW = 50  # hypothesis forbids function-scoped fixtures
    try:
        rng = np.random.default_rng(seed)
        base = clustered(rng, count, 24, clusters=max(1, count // 40))
        vectors = unit(base + spread * rng.standard_normal(base.shape) / np.sqrt(24))
        keys = [f"k{i}" for i in range(count)]
        index = VectorIndex.build(keys, vectors)
        query = unit(vectors[int(rng.integers(0, count))] + spread * rng.standard_normal(24))
        assert_same(index.search(query, k=k, min_score=min_score),
                    brute(keys, vectors, query, k, min_score))
    finally:
        index_module.BRUTE_FORCE_BELOW = old
