"""Labelled prompt pairs for the reuse decision: the dev files, and pairs generated from prompts.

Generated pairs teach what the dev files cannot cover on their own: that a prompt with one
sound element changed (a source swapped, an event added or dropped, a clause from another
scene) asks for another sound however many words it shares, and that reordered clauses or
a filler phrase change nothing. Generation is deterministic (a seeded RNG) and uses only
prompts of the training split and the AudioCaps captions, never the held-out file.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
DEV_FILES = tuple(DATA / f"prompt_pairs_{n}.tsv" for n in ("dev", "dev_2", "dev_3", "dev_4"))
AUDIOCAPS = DATA / "audiocaps_val.csv"

_WORD = re.compile(r"[a-z][a-z'-]*")
_CLAUSE = re.compile(r",\s*|\s+(?:with|and|while|as)\s+")
_SEQUENCE_WORDS = re.compile(r"\b(?:then|followed by|before|after)\b")
_FUNCTION = frozenset(
    "a an the of on in at to by for from with and or as is are its it his her their this that "
    "then while into onto over under through across".split()
)
_FILLERS = ("the sound of ", "sound of ", "audio of ", "a recording of ", "")


@dataclass(frozen=True)
class Pair:
    label: bool  # True: the clip may be reused
    a: str
    b: str
    source: str  # file name, or "generated:<kind>"


@dataclass(frozen=True)
class Counts:
    """A confusion matrix of reuse decisions (positive: the clip may be reused)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, items: Iterable[tuple[bool, bool]]) -> Counts:
        """(label, accepted) pairs to confusion counts."""
        pairs = list(items)
        return cls(sum(y and p for y, p in pairs), sum(p and not y for y, p in pairs),
                   sum(y and not p for y, p in pairs), sum(not y and not p for y, p in pairs))

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    def line(self) -> str:
        return (f"precision={self.precision:.3f} recall={self.recall:.3f} "
                f"(tp={self.tp} fp={self.fp} fn={self.fn} tn={self.tn})")


def read_pairs(path: Path) -> list[Pair]:
    """``label<TAB>prompt_a<TAB>prompt_b`` lines; ``#`` starts a comment."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, a, b = line.split("\t")[:3]
        if label not in ("match", "differ"):
            raise ValueError(f"{path}: unknown label {label!r}")
        pairs.append(Pair(label == "match", a.strip(), b.strip(), path.name))
    return pairs


def audiocaps_captions(path: Path = AUDIOCAPS) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [row["caption"].strip() for row in csv.DictReader(f) if row["caption"].strip()]


def _clauses(prompt: str) -> list[str]:
    return [c for c in _CLAUSE.split(prompt.rstrip(". ")) if c and any(
        w not in _FUNCTION for w in _WORD.findall(c.lower()))]


def _content_words(prompt: str) -> list[str]:
    return [w for w in _WORD.findall(prompt.lower()) if w not in _FUNCTION and len(w) > 2]


class PairGenerator:
    """Perturbs prompts into differ/match pairs (seeded)."""

    def __init__(
        self, prompts: Iterable[str], seed: int = 0, related: dict[str, list[str]] | None = None
    ) -> None:
        self.prompts = sorted(set(p.strip() for p in prompts if p.strip()))
        self.rng = random.Random(seed)
        # word -> words of the same field that are not synonyms (see related_words)
        self.related = related or {}
        words = sorted({w for p in self.prompts for w in _content_words(p)})
        self.verbs = [w for w in words if w.endswith("ing")]
        self.nouns = [w for w in words if not w.endswith(("ing", "ly", "ed"))]
        self.clause_pool = sorted({c for p in self.prompts for c in _clauses(p)})

    def swap_word(self, prompt: str) -> Pair | None:
        words = _content_words(prompt)
        if not words:
            return None
        old = self.rng.choice(words)
        pool = self.verbs if old.endswith("ing") else self.nouns
        new = self.rng.choice(pool)
        if new == old or new.startswith(old[:4]) or old.startswith(new[:4]):
            return None
        changed = re.sub(rf"\b{re.escape(old)}\b", new, prompt, count=1, flags=re.I)
        return Pair(False, prompt, changed, "generated:swap_word")

    def swap_related(self, prompt: str) -> Pair | None:
        """A source or event swapped for a neighbour of the same field (bear -> wolf)."""
        words = [w for w in _content_words(prompt) if self.related.get(w)]
        if not words:
            return None
        old = self.rng.choice(words)
        new = self.rng.choice(self.related[old])
        changed = re.sub(rf"\b{re.escape(old)}\b", new, prompt, count=1, flags=re.I)
        return Pair(False, prompt, changed, "generated:swap_related")

    def swap_clause(self, prompt: str) -> Pair | None:
        clauses = _clauses(prompt)
        if len(clauses) < 2:
            return None
        old = self.rng.choice(clauses[1:])
        new = self.rng.choice(self.clause_pool)
        if new.lower() == old.lower():
            return None
        return Pair(False, prompt, prompt.replace(old, new, 1), "generated:swap_clause")

    def add_clause(self, prompt: str) -> Pair | None:
        extra = self.rng.choice(self.clause_pool)
        if extra.lower() in prompt.lower():
            return None
        return Pair(False, prompt, f"{prompt.rstrip('. ')}, {extra}", "generated:add_event")

    def drop_clause(self, prompt: str) -> Pair | None:
        clauses = _clauses(prompt)
        if len(clauses) < 3:  # dropping the only setting of a short prompt is a judgement call
            return None
        gone = self.rng.choice(clauses[1:])
        shorter = re.sub(r"(,\s*|\s+(?:with|and|while|as)\s+)" + re.escape(gone), "", prompt, count=1)
        return None if shorter == prompt else Pair(False, prompt, shorter, "generated:drop_event")

    def reorder(self, prompt: str) -> Pair | None:
        if _SEQUENCE_WORDS.search(prompt.lower()):
            return None  # a sequence: its order is part of the sound
        parts = [p.strip() for p in prompt.rstrip(". ").split(",") if p.strip()]
        if len(parts) < 3:
            return None
        head, rest = parts[0], parts[1:]
        shuffled = rest[:]
        self.rng.shuffle(shuffled)
        if shuffled == rest:
            shuffled.reverse()
        return Pair(True, prompt, ", ".join([head, *shuffled]), "generated:reorder")

    def filler(self, prompt: str) -> Pair:
        prefix = self.rng.choice(_FILLERS[:-1])
        body = prompt[0].lower() + prompt[1:]
        return Pair(True, prompt, f"{prefix}{body}".rstrip(". "), "generated:filler")

    def pairs(self, per_prompt: int = 1) -> list[Pair]:
        makers = (self.swap_word, self.swap_related, self.swap_clause, self.add_clause,
                  self.drop_clause, self.reorder)
        out: list[Pair] = []
        for prompt in self.prompts:
            for _ in range(per_prompt):
                made = self.rng.choice(makers)(prompt)
                if made is not None:
                    out.append(made)
            if self.rng.random() < 0.3:
                out.append(self.filler(prompt))
        return out


def related_words(
    words: list[str], vectors: np.ndarray, low: float = 0.35, high: float = 0.65
) -> dict[str, list[str]]:
    """Words whose embeddings are close but not synonym-close: same field, other thing.

    Synonyms of MiniLM sit above ~0.7 (fridge/refrigerator); co-hyponyms such as bear/dog
    or harp/guitar between ~0.4 and 0.6. Swapping a word for one of these makes a pair
    that shares every other word and still asks for another sound.
    """
    sim = vectors @ vectors.T
    out: dict[str, list[str]] = {}
    for i, word in enumerate(words):
        near = [words[j] for j in np.flatnonzero((sim[i] >= low) & (sim[i] <= high))
                if not words[j].startswith(word[:4]) and not word.startswith(words[j][:4])]
        if near:
            out[word] = near
    return out


def vocabulary(prompts: Iterable[str]) -> list[str]:
    return sorted({w for p in prompts for w in _content_words(p) if not w.endswith("ly")})


def prompts_of(pairs: Iterable[Pair]) -> list[str]:
    return [p for pair in pairs for p in (pair.a, pair.b)]
