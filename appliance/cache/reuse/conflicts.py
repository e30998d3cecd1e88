"""Reasons to refuse outright: the two prompts ask for opposite things on one axis.

Each rule looks only at what differs between the prompts (their residual words), so a
scale word both prompts share never counts against them. A conflict is a refusal, never
a penalty: precision first (a missed reuse costs a generation, a wrong one the sound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from appliance.cache.reuse.analysis import PromptAnalysis, analyse_prompt, residual_words
from appliance.cache.reuse.lexicon import Lexicon

__all__ = [
    "SUBSTITUTION_MIN_COSINE", "SUBSTITUTION_PHRASE_MIN_COSINE", "Similarity", "embedding_conflicts",
    "find_conflicts", "lexical_conflicts", "one_sided_scales",
]

# One word swapped for one other word, everything else the same: reuse only when the two
# words are near-synonyms. MiniLM puts synonyms at 0.8-0.96 (fridge/refrigerator 0.96,
# couch/sofa 0.86, kid/child 0.81) and sounds of one family at 0.4-0.65 (goat/sheep 0.63,
# barking/howling 0.61, crying/laughing 0.50): between them it cannot tell, so it declines
# (truck/lorry, 0.54, is a missed reuse: a generation, not a wrong sound).
SUBSTITUTION_MIN_COSINE = 0.7
# The same holds for a swap of a short phrase, up to six content words a side ("a hair dryer
# running" / "a vacuum cleaner running" 0.50, "frogs croaking in a ditch" / "an owl hooting in
# a barn" 0.33), at a lower bar: a phrase and its rewording sit lower than two synonyms do
# ("in the distance" / "far away" 0.69, "a faucet dripping into a sink" / "a dripping tap" 0.56).
SUBSTITUTION_MAX_WORDS = 6
SUBSTITUTION_PHRASE_MIN_COSINE = 0.55

# texts_a, texts_b -> cosine matrix (len(texts_a), len(texts_b))
Similarity = Callable[[Sequence[str], Sequence[str]], npt.NDArray[np.float32]]


def find_conflicts(
    a: PromptAnalysis, b: PromptAnalysis, lexicon: Lexicon, similarity: Similarity
) -> list[str]:
    """Every reason the two prompts cannot share a clip (empty: no conflict)."""
    return lexical_conflicts(a, b, lexicon) + embedding_conflicts(a, b, similarity)


def lexical_conflicts(a: PromptAnalysis, b: PromptAnalysis, lexicon: Lexicon) -> list[str]:
    """The reasons read off the words alone: scales, counts, negation, moved scale words."""
    reasons: list[str] = []
    only_a = a.content - b.content
    only_b = b.content - a.content
    reasons += _scale_conflicts(a, b, only_a, lexicon)
    seen = {r.split(":")[0] for r in reasons}
    reasons += [r for r in _scale_conflicts(b, a, only_b, lexicon) if r.split(":")[0] not in seen]
    reasons += [f"{axis} set on one side only" for axis in _one_sided_axes(a, b, lexicon)
                if axis in lexicon.one_sided_refusals]
    if lexicon.negated(a, only_a) != lexicon.negated(b, only_b):
        reasons.append("negation on one side only")
    counts_a, counts_b = lexicon.counts_in(a), lexicon.counts_in(b)
    if counts_a and counts_b and counts_a != counts_b:
        reasons.append(f"count {sorted(counts_a)} vs {sorted(counts_b)}")
    reasons += [f"{word!r} describes another sound" for word in _reattached_scale_words(a, b, lexicon)]
    return reasons


def embedding_conflicts(a: PromptAnalysis, b: PromptAnalysis, similarity: Similarity) -> list[str]:
    """The reasons that need phrases embedded: reversed steps, a short phrase swapped for
    another sound. The judge asks these last, of a candidate it would otherwise accept."""
    reasons: list[str] = []
    if _reversed_order(a, b, similarity):
        reasons.append("the same steps in the reverse order")
    swapped = _short_swap(a, b)
    if swapped:
        single = " " not in swapped[0] and " " not in swapped[1]
        bar = SUBSTITUTION_MIN_COSINE if single else SUBSTITUTION_PHRASE_MIN_COSINE
        if float(similarity([swapped[0]], [swapped[1]])[0, 0]) < bar:
            reasons.append(f"substitution: {swapped[0]} vs {swapped[1]}")
    return reasons


def _short_swap(a: PromptAnalysis, b: PromptAnalysis) -> tuple[str, str] | None:
    """What each side says instead of the other, when the prompts share content and differ
    by a few content words on both sides (at most SUBSTITUTION_MAX_WORDS each)."""
    only_a, only_b = residual_words(a, b), residual_words(b, a)
    short = 1 <= len(only_a) <= SUBSTITUTION_MAX_WORDS and 1 <= len(only_b) <= SUBSTITUTION_MAX_WORDS
    if short and a.content & b.content:
        return " ".join(only_a), " ".join(only_b)
    return None


def _scale_conflicts(
    x: PromptAnalysis, y: PromptAnalysis, only_x: frozenset[str], lexicon: Lexicon
) -> list[str]:
    """Axes where x's own words name a pole and y names only other poles."""
    mine = lexicon.poles(x, only_x)
    theirs = lexicon.poles(y)
    return [
        f"{axis}: {'/'.join(sorted(poles))} vs {'/'.join(sorted(theirs[axis]))}"
        for axis, poles in sorted(mine.items())
        if axis in theirs and not poles & theirs[axis]
    ]


def one_sided_scales(a: PromptAnalysis, b: PromptAnalysis, lexicon: Lexicon) -> int:
    """How many axes one prompt's own words set and the other leaves open ("loud" added)."""
    return len(_one_sided_axes(a, b, lexicon))


def _one_sided_axes(a: PromptAnalysis, b: PromptAnalysis, lexicon: Lexicon) -> list[str]:
    only_a = lexicon.poles(a, a.content - b.content)
    only_b = lexicon.poles(b, b.content - a.content)
    all_a, all_b = lexicon.poles(a), lexicon.poles(b)
    return [axis for axis in only_a if axis not in all_b] + [axis for axis in only_b if axis not in all_a]


def _reattached_scale_words(a: PromptAnalysis, b: PromptAnalysis, lexicon: Lexicon) -> list[str]:
    """The same words, but a scale word sits with other sounds: "bees humming close by and a
    tractor in a far field" / "a tractor close by and bees humming in a far field". Only for
    prompts with the same content words, where clause membership is comparable."""
    if a.content != b.content:
        return []
    scale_words = lexicon.scale_lemmas
    near_a, near_b = _clause_company(a, scale_words), _clause_company(b, scale_words)
    return [word for word in sorted(near_a.keys() & near_b.keys())
            if near_a[word] and near_b[word] and not near_a[word] & near_b[word]]


def _clause_company(prompt: PromptAnalysis, scale_words: frozenset[str]) -> dict[str, set[str]]:
    """scale word -> the other content lemmas of the clauses it appears in."""
    company: dict[str, set[str]] = {}
    for clause in prompt.clauses:
        lemmas = analyse_prompt(clause).content
        for word in lemmas & scale_words:
            company.setdefault(word, set()).update(lemmas - scale_words)
    return company


def _reversed_order(a: PromptAnalysis, b: PromptAnalysis, similarity: Similarity) -> bool:
    """Both prompts are sequences, and their steps line up in the opposite order."""
    if len(a.steps) < 2 or len(b.steps) < 2:
        return False
    sim = similarity(a.steps, b.steps)
    first, last = sim[0], sim[-1]
    # a's first step is most like b's last one, and a's last most like b's first
    return bool(int(np.argmax(first)) == len(b.steps) - 1 and int(np.argmax(last)) == 0)
