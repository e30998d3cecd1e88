"""The scale lexicon: generic words that place a sound on an axis (loud/quiet, near/far ...).

Data, not code: the words live in ``data/scales.toml`` with their provenance; this module
only loads them and finds them in a prompt.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from appliance.cache.reuse.analysis import PromptAnalysis, lemma

__all__ = ["Lexicon", "default_lexicon"]

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Lexicon:
    """Axes with their poles, negation words and count words."""

    # axis -> pole -> words (single words as lemmas; phrases as lower-case text)
    axes: dict[str, dict[str, frozenset[str]]]
    negations: frozenset[str]
    counts: dict[str, int]
    one_sided_refusals: frozenset[str] = frozenset()  # axes one side alone may not set

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        axes = {
            axis: {pole: frozenset(_entry(w) for w in words) for pole, words in poles.items()}
            for axis, poles in raw["axes"].items()
        }
        return cls(
            axes=axes,
            negations=frozenset(_entry(w) for w in raw["negation"]["words"]),
            counts={_entry(w): int(n) for w, n in raw["counts"].items()},
            one_sided_refusals=frozenset(raw.get("one_sided", {}).get("refuse", [])),
        )

    def poles(self, prompt: PromptAnalysis, only: Iterable[str] | None = None) -> dict[str, set[str]]:
        """axis -> the poles ``prompt`` names; with ``only``, through those words/lemmas only."""
        keep = None if only is None else set(only)
        found: dict[str, set[str]] = {}
        for token in set(prompt.lemmas) | set(prompt.words):
            if keep is None or token in keep:
                for axis, pole in self._single_words.get(token, ()):
                    found.setdefault(axis, set()).add(pole)
        for phrase, axis, pole in self._phrases:
            if _mentions(prompt, phrase, keep):
                found.setdefault(axis, set()).add(pole)
        return found

    @cached_property
    def _single_words(self) -> dict[str, list[tuple[str, str]]]:
        """lemma -> the (axis, pole) pairs it names (an index, derived once)."""
        index: dict[str, list[tuple[str, str]]] = {}
        for axis, poles in self.axes.items():
            for pole, words in poles.items():
                for word in words:
                    if " " not in word:
                        index.setdefault(word, []).append((axis, pole))
        return index

    @cached_property
    def _phrases(self) -> list[tuple[str, str, str]]:
        """(phrase, axis, pole) for every multi-word entry (derived once)."""
        return [(w, axis, pole) for axis, poles in self.axes.items() for pole, words in poles.items()
                for w in sorted(words) if " " in w]

    @cached_property
    def scale_lemmas(self) -> frozenset[str]:
        """Every single-word entry of every pole of every axis (derived once)."""
        return frozenset(w for poles in self.axes.values() for words in poles.values()
                         for w in words if " " not in w)

    def negated(self, prompt: PromptAnalysis, only: Iterable[str] | None = None) -> bool:
        keep = None if only is None else set(only)
        return any(_mentions(prompt, w, keep) for w in self.negations)

    def counts_in(self, prompt: PromptAnalysis) -> set[int]:
        """Every count a prompt names ("three", "3", "once")."""
        found = {self.counts[w] for w in prompt.words if w in self.counts}
        found |= {int(w) for w in prompt.words if w.isdigit() and len(w) <= 4}
        return found


def _entry(word: str) -> str:
    word = word.strip().lower()
    return word if " " in word else lemma(word)


def _mentions(prompt: PromptAnalysis, entry: str, keep: set[str] | None) -> bool:
    if " " in entry:  # a phrase: in the text, and (with keep) one of its words differs
        if f" {entry} " not in f" {prompt.text} ":
            return False
        return keep is None or any(lemma(w) in keep for w in entry.split())
    if entry not in prompt.lemmas and entry not in prompt.words:
        return False
    return keep is None or entry in keep


@cache
def default_lexicon() -> Lexicon:
    """The shipped lexicon (loaded once per process; it is immutable)."""
    return Lexicon.load(DATA_DIR / "scales.toml")
