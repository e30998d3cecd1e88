"""A prompt cut into what the reuse decision compares: words, lemmas, clauses, steps.

English is handled by lemminflect (its lemma tables ship in the wheel), not by a
hand-written stemmer. Nothing here touches the exact cache key (:mod:`appliance.cache.keys`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lemminflect import getAllLemmas

__all__ = ["PromptAnalysis", "analyse_prompt", "lemma", "residual_words"]

WORD_PATTERN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

# Function words: they carry no sound. Numbers, negations and scale words are not here.
STOPWORDS = frozenset(
    """a an the of on in at to by for from with and or but as is are was were be been being
    its it it's his her their our your my this that these those there here into onto over
    under through across while whilst then than some any just each every other another can
    which who whom whose where when what sound sounds noise of audio recording""".split()
)

# Clause boundaries: a prompt's sound events and its setting are joined by these.
_CLAUSE = re.compile(
    r"\s*[,;:()]\s*|\s+(?:and then|with|and|while|whilst|as|then|followed by|before|after|until|"
    r"plus|amid|amidst|against|beside|behind|over|under)\s+"
)
# Sequence boundaries: what comes after one of these happens later.
_SEQUENCE = re.compile(r"\s*(?:,\s*)?\b(?:and then|then|followed by|after that|afterwards)\b\s*")


_NOUN_FIRST = ("NOUN", "VERB", "ADJ", "ADV")
_VERB_FIRST = ("VERB", "NOUN", "ADJ", "ADV")


def _lemma(word: str) -> str:
    if "-" in word or word.isdigit():
        return word
    lemmas = getAllLemmas(word)
    order = _VERB_FIRST if word.endswith(("ing", "ed")) else _NOUN_FIRST
    for pos in order:
        forms = lemmas.get(pos)
        if forms:
            return str(forms[0])
    return word


@lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    """The dictionary form of one lower-case word ("drums" -> "drum", "barking" -> "bark")."""
    return _lemma(word)


@dataclass(frozen=True)
class PromptAnalysis:
    """One prompt, read once."""

    text: str  # lower case, single spaces
    source: str  # the prompt as written (the embedder's input)
    words: tuple[str, ...]  # every word, in order
    lemmas: tuple[str, ...]  # lemma of each word
    content: frozenset[str]  # lemmas of the words that are not function words
    clauses: tuple[str, ...]  # the prompt cut at "with", "and", commas ...
    steps: tuple[str, ...]  # the prompt cut at "then", "followed by" ... (1 when no sequence)

    @property
    def content_words(self) -> list[tuple[str, str]]:
        """(word, lemma) of each content word, in order."""
        return [(w, m) for w, m in zip(self.words, self.lemmas, strict=True) if w not in STOPWORDS]


@lru_cache(maxsize=8192)
def analyse_prompt(prompt: str) -> PromptAnalysis:
    """Read a prompt (cached: the same cached prompts are judged again and again)."""
    text = " ".join(prompt.lower().split()).strip(" .!?")
    words = tuple(WORD_PATTERN.findall(text))
    lemmas = tuple(lemma(w) for w in words)
    content = frozenset(m for w, m in zip(words, lemmas, strict=True) if w not in STOPWORDS)
    clauses = tuple(c.strip() for c in _CLAUSE.split(text) if c and _has_content(c)) or (text,)
    steps = tuple(s.strip(" ,") for s in _SEQUENCE.split(text) if s and _has_content(s)) or (text,)
    return PromptAnalysis(text, prompt, words, lemmas, content, clauses, steps)


def _has_content(fragment: str) -> bool:
    return any(w not in STOPWORDS for w in WORD_PATTERN.findall(fragment))


def residual_words(prompt: PromptAnalysis, other: PromptAnalysis) -> list[str]:
    """The content words of ``prompt`` whose lemma ``other`` does not use, in order.

    For a paraphrase this is most of the prompt; for "the same scene with one thing
    changed" it is just that thing ("sunny" against "rainy").
    """
    return [w for w, m in prompt.content_words if m not in other.content]
