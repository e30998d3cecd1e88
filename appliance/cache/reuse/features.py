"""The numbers the reuse model weighs, read off two prompts and their words' vectors.

Whole-prompt cosine alone cannot tell "the same scene reworded" (few shared words,
cosine ~0.6) from "the same scene with one sound changed" (most words shared, cosine
~0.9). What tells them apart is what differs: the residual words of each side. For a
paraphrase they carry the whole meaning and lie close together; for a changed scene they
are the change ("a shutter banging" / "an owl hooting") and lie far apart. Word alignment
asks the same of each differing word on its own. All of it comes from the contextual
token vectors of the two prompts' own forward passes (:mod:`.alignment`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np
import numpy.typing as npt

from appliance.cache.reuse.alignment import WordVectorMemo, align_words, residual_similarity
from appliance.cache.reuse.analysis import PromptAnalysis
from appliance.cache.reuse.conflicts import one_sided_scales
from appliance.cache.reuse.lexicon import Lexicon

__all__ = ["Embed", "EmbeddingMemo", "PairFeatures", "pair_features"]

Vector = npt.NDArray[np.float32]
Embed = Callable[[list[str]], npt.NDArray[np.float32]]  # texts -> L2-normalised rows


class EmbeddingMemo:
    """Phrase embeddings, remembered: cached prompts' clauses are embedded once."""

    def __init__(self, embed: Embed, capacity: int = 20_000) -> None:
        self._embed = embed
        self._capacity = capacity
        self._memo: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            fresh = self._embed(missing)
            with self._lock:
                for text, vector in zip(missing, fresh, strict=True):
                    self._memo[text] = vector
                while len(self._memo) > self._capacity:
                    self._memo.popitem(last=False)
        with self._lock:
            rows = []
            for text in texts:
                self._memo.move_to_end(text)
                rows.append(self._memo[text])
        return np.stack(rows).astype(np.float32, copy=False)

    def similarity(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors = self.vectors([*texts_a, *texts_b])
        return vectors[: len(texts_a)] @ vectors[len(texts_a) :].T


@dataclass(frozen=True)
class PairFeatures:
    """Symmetric signals of one prompt pair; the model's inputs, in this order."""

    cosine: float  # whole prompts
    residual_cosine: float  # what differs, against what differs (1: nothing differs)
    word_align_mean: float  # mean best counterpart of each differing word (contextual vectors)
    word_align_worst: float  # the differing word with the weakest counterpart
    one_sided_scales: float  # axes set by one side's own words only ("loud" added)
    prompt_length: float  # log of the longer prompt's content words: more words, more to differ

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def vector(self) -> npt.NDArray[np.float64]:
        return np.array(astuple(self), dtype=np.float64)


def pair_features(
    a: PromptAnalysis,
    b: PromptAnalysis,
    cosine: float,
    words: WordVectorMemo,
    lexicon: Lexicon,
) -> PairFeatures:
    """Everything the model weighs for one pair: no model pass beyond the two prompts' own."""
    alignment = align_words(a, b, words)
    return PairFeatures(
        cosine=float(cosine),
        residual_cosine=residual_similarity(a, b, words),
        word_align_mean=alignment.mean,
        word_align_worst=alignment.worst,
        one_sided_scales=float(one_sided_scales(a, b, lexicon)),
        prompt_length=math.log(max(1, len(a.content), len(b.content))),
    )
