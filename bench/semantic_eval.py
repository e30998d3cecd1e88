"""Evaluate the reuse judge on labelled prompt pairs.

    .venv/bin/python bench/semantic_eval.py FILE [FILE...] [--sweep] [--cv]

Each FILE is a TSV of ``label<TAB>prompt_a<TAB>prompt_b`` lines (``match`` / ``differ``;
``#`` starts a comment). The script embeds every prompt with the shipped embedder, scores
every pair and prints, per file:

* precision / recall / F1 and counts at the shipped thresholds (``DEFAULT_THRESHOLDS``);
* the baseline: plain cosine at the threshold that keeps precision >= 0.97 with the most
  recall (chosen on that same file, so it is the baseline's best case);
* with ``--sweep``, precision / recall over a grid of thresholds, for plain cosine and for
  the combined score;
* with ``--cv``, held-out numbers: tau_reuse calibrated on one file and evaluated on the
  others, and stratified 5-fold cross-validation on the union of the files.

The last line holds the headline figures as ``name=value`` pairs (per-file prefixes when
there are several files).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.cache.match import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    ReuseJudge,
    ReuseThresholds,
)
from appliance.models.embedder import PromptEmbedder  # noqa: E402

TARGET_PRECISION = 0.97
GRID = [round(0.40 + 0.025 * i, 3) for i in range(23)]  # 0.400 .. 0.950


@dataclass(frozen=True)
class Pair:
    label: bool  # True: audio may be reused
    a: str
    b: str
    source: str


@dataclass(frozen=True)
class Scored:
    pair: Pair
    cosine: float
    score: float  # combined score; conflicts push it ~1 below the cosine
    accept: bool  # decision at the shipped thresholds


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def line(self) -> str:
        return (
            f"precision={self.precision:.3f} recall={self.recall:.3f} f1={self.f1:.3f} "
            f"(tp={self.tp} fp={self.fp} fn={self.fn} tn={self.tn})"
        )


def load_pairs(path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in ("match", "differ"):
            raise SystemExit(f"{path}:{lineno}: expected 'match|differ<TAB>a<TAB>b'")
        pairs.append(Pair(parts[0] == "match", parts[1], parts[2], path.name))
    return pairs


def count(items: list[tuple[bool, bool]]) -> Counts:
    """(label, predicted) pairs to confusion counts."""
    tp = sum(1 for y, p in items if y and p)
    fp = sum(1 for y, p in items if not y and p)
    fn = sum(1 for y, p in items if y and not p)
    tn = sum(1 for y, p in items if not y and not p)
    return Counts(tp, fp, fn, tn)


def at_threshold(rows: list[Scored], tau: float, *, use_score: bool) -> Counts:
    # tau_semantic never binds below tau_reuse - bonus; the combined curve uses the score.
    return count([(r.pair.label, (r.score if use_score else r.cosine) >= tau) for r in rows])


def best_threshold(rows: list[Scored], *, use_score: bool) -> tuple[float, Counts] | None:
    """Most recall with precision >= target; ties go to the higher (safer) threshold."""
    best: tuple[float, Counts] | None = None
    for tau in GRID + [round(0.95 + 0.005 * i, 3) for i in range(1, 10)]:
        c = at_threshold(rows, tau, use_score=use_score)
        if c.tp == 0 or c.precision < TARGET_PRECISION:
            continue
        if best is None or c.recall >= best[1].recall:
            best = (tau, c)
    return best


def score_all(pairs: list[Pair], embedder: PromptEmbedder) -> list[Scored]:
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = embedder.embed(texts)
    index = {t: i for i, t in enumerate(texts)}
    judge = ReuseJudge(DEFAULT_THRESHOLDS)
    scorer = ReuseJudge(ReuseThresholds(tau_semantic=-1.0, tau_reuse=-2.0))
    out: list[Scored] = []
    for p in pairs:
        cos = float(vectors[index[p.a]] @ vectors[index[p.b]])
        score, _ = scorer.score(p.a, p.b, cos)
        out.append(Scored(p, cos, score, judge.decide(p.a, p.b, cos).accept))
    return out


def prefix_for(path: Path, many: bool) -> str:
    if not many:
        return ""
    stem = path.stem.removeprefix("prompt_pairs_")
    return stem.replace("-", "_") + "_"


def print_sweep(name: str, rows: list[Scored]) -> None:
    print(f"\n  sweep ({name}): threshold | cosine P / R | combined P / R")
    for tau in GRID:
        c = at_threshold(rows, tau, use_score=False)
        s = at_threshold(rows, tau, use_score=True)
        print(
            f"    {tau:.3f} | {c.precision:.3f} / {c.recall:.3f} | "
            f"{s.precision:.3f} / {s.recall:.3f}"
        )


def cross_validate(per_file: dict[str, list[Scored]]) -> None:
    print("\n== held-out: tau_reuse calibrated on one set, evaluated on another ==")
    print(f"   (rule: most training recall with training precision >= {TARGET_PRECISION})")
    names = list(per_file)
    for train in names:
        fit = best_threshold(per_file[train], use_score=True)
        if fit is None:
            print(f"  train {train}: no threshold reaches the target")
            continue
        tau, c_train = fit
        for test in names:
            if test == train:
                continue
            c = at_threshold(per_file[test], tau, use_score=True)
            print(
                f"  train {train} (tau_reuse={tau:.3f}, in-sample {c_train.precision:.3f}/"
                f"{c_train.recall:.3f}) -> test {test}: {c.line()}"
            )
    union = [r for rows in per_file.values() for r in rows]
    rng = random.Random(0)
    pos = [r for r in union if r.pair.label]
    neg = [r for r in union if not r.pair.label]
    rng.shuffle(pos)
    rng.shuffle(neg)
    k = 5
    folds = [pos[i::k] + neg[i::k] for i in range(k)]
    preds: list[tuple[bool, bool]] = []
    taus: list[float] = []
    for i in range(k):
        training = [r for j, f in enumerate(folds) if j != i for r in f]
        fit = best_threshold(training, use_score=True)
        tau = fit[0] if fit else 1.0
        taus.append(tau)
        preds += [(r.pair.label, r.score >= tau) for r in folds[i]]
    c = count(preds)
    print(f"  stratified {k}-fold on the union ({len(union)} pairs), taus {taus}:")
    print(f"    pooled held-out {c.line()}")
    shipped = count([(r.pair.label, r.accept) for r in union])
    print(f"  union at the shipped thresholds (in-sample): {shipped.line()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--sweep", action="store_true", help="precision/recall curves")
    parser.add_argument("--cv", action="store_true", help="held-out calibration checks")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    embedder = PromptEmbedder.from_dir()
    load_s = time.perf_counter() - t0
    all_pairs = {path: load_pairs(path) for path in args.files}
    t1 = time.perf_counter()
    scored = score_all([p for ps in all_pairs.values() for p in ps], embedder)
    score_s = time.perf_counter() - t1
    by_file: dict[str, list[Scored]] = {}
    for r in scored:
        by_file.setdefault(r.pair.source, []).append(r)

    t = DEFAULT_THRESHOLDS
    latencies = []
    for r in scored[:30]:
        t2 = time.perf_counter()
        embedder.embed([r.pair.a])
        latencies.append(1000 * (time.perf_counter() - t2))
    embed_ms = statistics.median(latencies)
    print(f"embedder: {embedder.name} (dim {embedder.dimension}), loaded in {load_s:.1f} s")
    print(f"scored {len(scored)} pairs in {score_s:.2f} s; one prompt embeds in {embed_ms:.1f} ms")
    print(f"shipped thresholds: tau_semantic={t.tau_semantic} tau_reuse={t.tau_reuse}")
    headline: list[str] = []
    many = len(args.files) > 1
    for path in args.files:
        rows = by_file[path.name]
        pre = prefix_for(path, many)
        shipped = count([(r.pair.label, r.accept) for r in rows])
        print(f"\n== {path.name}: {len(rows)} pairs ==")
        print(f"  judge at shipped thresholds: {shipped.line()}")
        base = best_threshold(rows, use_score=False)
        if base is None:
            print(f"  baseline (plain cosine): no threshold reaches precision {TARGET_PRECISION}")
            base_p = base_r = 0.0
            base_tau = float("nan")
        else:
            base_tau, bc = base
            base_p, base_r = bc.precision, bc.recall
            print(f"  baseline (plain cosine >= {base_tau:.3f}, best on this file): {bc.line()}")
        wrong = [r for r in rows if r.accept != r.pair.label]
        for r in wrong:
            kind = "false reuse" if r.accept else "missed"
            print(f"    {kind}: cos={r.cosine:.3f} score={r.score:.3f}  {r.pair.a!r} / {r.pair.b!r}")
        if args.sweep:
            print_sweep(path.name, rows)
        headline += [
            f"{pre}precision={shipped.precision:.3f}",
            f"{pre}recall={shipped.recall:.3f}",
            f"{pre}f1={shipped.f1:.3f}",
            f"{pre}pairs={len(rows)}",
            f"{pre}false_reuses={shipped.fp}",
            f"{pre}baseline_tau={base_tau:.3f}",
            f"{pre}baseline_precision={base_p:.3f}",
            f"{pre}baseline_recall={base_r:.3f}",
        ]
    if args.cv:
        if len(by_file) > 1:
            cross_validate(by_file)
        else:
            cross_validate({"all": scored})
    headline.append(f"embed_ms={embed_ms:.1f}")
    print(" ".join(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
