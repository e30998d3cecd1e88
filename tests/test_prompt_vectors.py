"""Prompt vectors for the lookup thread: batched with the queued prompts, remembered, bounded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from appliance.cache.prompt_vectors import PromptVectors
from appliance.models.embedder import PromptEmbedder


class CountingEncoder:
    """Records each batch; the vector of a text is a fixed function of the text."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


def test_expected_prompts_are_embedded_in_the_first_batch_that_misses() -> None:
    encoder = CountingEncoder()
    vectors = PromptVectors(encoder, max_batch=3)
    for prompt in ("rain", "wind", "rain", "snow", "hail"):
        vectors.expect(prompt)
    first = vectors.vector("rain")
    assert encoder.batches == [["rain", "wind", "snow"]], "one batch, no duplicate, capped at 3"
    vectors.vector("wind")
    vectors.vector("snow")
    assert len(encoder.batches) == 1, "the queued prompts were already embedded"
    vectors.vector("hail")
    assert encoder.batches[1] == ["hail"]
    assert first.tolist() == encoder([ "rain"])[0].tolist()


def test_vectors_are_remembered_read_only_and_bounded() -> None:
    encoder = CountingEncoder()
    vectors = PromptVectors(encoder, capacity=2)
    rain = vectors.vector("rain")
    assert vectors.vector("rain") is rain and len(encoder.batches) == 1
    with pytest.raises(ValueError):
        rain[0] = 0.0  # shared by every request with this prompt
    vectors.vector("wind")
    vectors.vector("snow")
    assert len(vectors) == 2
    vectors.vector("rain")
    assert len(encoder.batches) == 4, "the least recently used prompt was forgotten"


def test_a_batch_of_the_real_embedder_matches_single_embeddings() -> None:
    embedder = PromptEmbedder.from_dir(None)
    vectors = PromptVectors(embedder.embed)
    prompts = ["a dog barking in the distance", "rain on a tin roof", "church bells"]
    for prompt in prompts[1:]:
        vectors.expect(prompt)
    batched = [vectors.vector(prompt) for prompt in prompts]
    single = [embedder.embed([prompt])[0] for prompt in prompts]
    np.testing.assert_allclose(np.array(batched), np.array(single), atol=1e-5)
    assert vectors.batches == 1
