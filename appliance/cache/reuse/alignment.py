"""Word alignment: does every word one prompt says instead of the other have a counterpart?

A paraphrase says the same things in other words ("surf" / "waves", "pebble beach" /
"shingle"): each word one side has and the other lacks finds a near word there. A changed
scene leaves a word without one ("an owl hooting" / "a shutter banging"). The vectors are
the embedder's own contextual token vectors (one pass per prompt, remembered), so "bank"
in "a river bank" and in "a bank lobby" are told apart, and no lexicon is needed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from appliance.cache.reuse.analysis import WORD_PATTERN, PromptAnalysis, residual_words

__all__ = [
    "TokenEncoder", "Tokens", "WordAlignment", "WordVectorMemo", "align_words", "residual_similarity",
    "static_token_encoder",
]

Vector = npt.NDArray[np.float32]


class Tokens(Protocol):
    """One text's tokens (as :class:`appliance.models.embedder.TokenVectors` gives them)."""

    @property
    def spans(self) -> list[tuple[int, int]]: ...  # character span of each row

    @property
    def vectors(self) -> npt.NDArray[np.float32]: ...


class _StaticTokens(NamedTuple):
    spans: list[tuple[int, int]]
    vectors: npt.NDArray[np.float32]


# texts -> per text: token character spans and their contextual vectors
TokenEncoder = Callable[[list[str]], Sequence[Tokens]]


def static_token_encoder(embed: Callable[[list[str]], npt.NDArray[np.float32]]) -> TokenEncoder:
    """Each word embedded on its own: for embedders without token vectors (test doubles).
    The shipped reuse model was trained on contextual vectors, not on these."""

    def encode(texts: list[str]) -> list[Tokens]:
        out: list[Tokens] = []
        for text in texts:
            matches = list(WORD_PATTERN.finditer(text))
            vectors = embed([m.group() for m in matches]) if matches else np.zeros((0, 1), np.float32)
            out.append(_StaticTokens([m.span() for m in matches], np.asarray(vectors, dtype=np.float32)))
        return out

    return encode


class WordAlignment(NamedTuple):
    mean: float  # mean best match of the words that differ (1.0: nothing differs)
    worst: float  # the least matched of them


class WordVectorMemo:
    """Each prompt's word vectors (mean of its tokens, unit length), remembered per text."""

    def __init__(self, encode: TokenEncoder, capacity: int = 20_000) -> None:
        self._encode = encode
        self._capacity = capacity
        self._memo: OrderedDict[str, dict[str, Vector]] = OrderedDict()
        self._lock = threading.Lock()

    def words(self, texts: Sequence[str]) -> list[dict[str, Vector]]:
        """word -> vector for each prompt, as written (one batched pass for new ones)."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            fresh = [_word_vectors(text, tokens) for text, tokens in
                     zip(missing, self._encode(missing), strict=True)]
            with self._lock:
                self._memo.update(zip(missing, fresh, strict=True))
                while len(self._memo) > self._capacity:
                    self._memo.popitem(last=False)
        with self._lock:
            for text in texts:
                self._memo.move_to_end(text)
            return [self._memo[text] for text in texts]


def _word_vectors(text: str, tokens: Tokens) -> dict[str, Vector]:
    """The first occurrence of each word: the mean of the tokens inside its span. Words are
    found in the lower-cased text (the spans of a text whose lower case changes length, a
    rare Unicode case, may then miss some words: those just find no counterpart)."""
    out: dict[str, Vector] = {}
    text = text.lower()
    starts = np.array([s for s, _ in tokens.spans], dtype=np.int64)
    ends = np.array([e for _, e in tokens.spans], dtype=np.int64)
    for match in WORD_PATTERN.finditer(text):
        if match.group() in out:
            continue
        inside = (starts >= match.start()) & (ends <= match.end())
        if inside.any():
            vector = tokens.vectors[inside].mean(axis=0)
            norm = float(np.linalg.norm(vector))
            if norm > 0.0:
                out[match.group()] = (vector / norm).astype(np.float32)
    return out


def align_words(a: PromptAnalysis, b: PromptAnalysis, memo: WordVectorMemo) -> WordAlignment:
    """How well the words each side says and the other does not find a counterpart there.

    A word's counterpart is sought among the other side's own different words, or among all
    its content words when it has none ("a bear growling" / "the low growl of a bear").
    """
    words_a, words_b = memo.words([a.source, b.source])
    best: list[float] = []
    for x, y, vx, vy in ((a, b, words_a, words_b), (b, a, words_b, words_a)):
        mine = _known(residual_words(x, y), vx)
        theirs = _known(residual_words(y, x), vy) or _known(_all_content(y), vy)
        if mine and theirs:
            sim = np.stack([vx[w] for w in mine]) @ np.stack([vy[w] for w in theirs]).T
            best += sim.max(axis=1).tolist()
    if not best:
        return WordAlignment(1.0, 1.0)
    return WordAlignment(float(np.mean(best)), float(np.min(best)))


def residual_similarity(a: PromptAnalysis, b: PromptAnalysis, memo: WordVectorMemo) -> float:
    """Cosine of what each side says and the other does not, each pooled from its words'
    contextual vectors (a side that adds nothing stands as all its content words); 1.0 when
    nothing differs. For a paraphrase the two carry the same meaning; for a changed scene
    they are the change ("a shutter banging" / "an owl hooting")."""
    words_a, words_b = memo.words([a.source, b.source])
    mine, theirs = _known(residual_words(a, b), words_a), _known(residual_words(b, a), words_b)
    if not mine and not theirs:
        return 1.0
    mine = mine or _known(_all_content(a), words_a)
    theirs = theirs or _known(_all_content(b), words_b)
    if not mine or not theirs:
        return 0.0
    pooled_a = np.mean([words_a[w] for w in mine], axis=0)
    pooled_b = np.mean([words_b[w] for w in theirs], axis=0)
    norm = float(np.linalg.norm(pooled_a) * np.linalg.norm(pooled_b))
    return float(pooled_a @ pooled_b) / norm if norm > 0.0 else 0.0


def _known(words: list[str], vectors: dict[str, Vector]) -> list[str]:
    """The words that have a vector (a word the tokenizer's spans did not cover has none)."""
    return [w for w in words if w in vectors]


def _all_content(prompt: PromptAnalysis) -> list[str]:
    return [w for w, _ in prompt.content_words]
