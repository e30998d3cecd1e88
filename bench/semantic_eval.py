"""Evaluate the shipped reuse decision on labelled prompt pairs.

    .venv/bin/python bench/semantic_eval.py FILE [FILE...] [--show]
    .venv/bin/python bench/semantic_eval.py --cross      # every split of the dev files

Each FILE is a TSV of ``label<TAB>prompt_a<TAB>prompt_b`` lines (``match`` / ``differ``;
``#`` starts a comment). Every pair is judged exactly as the service judges a candidate
(same embedder, same judge, shipped defaults), beside plain whole-prompt cosine at its best
threshold on that file (the baseline's best case). ``--cross`` trains on some dev files and
reports on the others, for every split (bench/reuse_train.py; nothing is written).

The last line holds the headline figures as ``name=value`` pairs; with one file,
``precision=… recall=…`` at the shipped defaults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from reuse_pairs import Counts, Pair, read_pairs  # noqa: E402

from appliance.cache.reuse import ReuseDecision, ReuseJudge  # noqa: E402
from appliance.models.embedder import PromptEmbedder  # noqa: E402

TARGET_PRECISION = 0.97


def judge_pairs(pairs: list[Pair], embedder: PromptEmbedder) -> list[tuple[Pair, float, ReuseDecision]]:
    judge = ReuseJudge(embedder.embed, token_vectors=embedder.token_vectors)
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    out = []
    for p in pairs:
        cosine = float(vectors[p.a] @ vectors[p.b])
        out.append((p, cosine, judge.decide(p.a, p.b, cosine)))
    return out


def best_cosine(rows: list[tuple[Pair, float, ReuseDecision]]) -> tuple[float, Counts] | None:
    """Plain cosine: most recall with precision >= target on this very file."""
    best = None
    for step in range(0, 120):
        tau = 0.40 + 0.005 * step
        c = Counts.of([(p.label, cos >= tau) for p, cos, _ in rows])
        if c.tp and c.precision >= TARGET_PRECISION and (best is None or c.recall > best[1].recall):
            best = (tau, c)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--show", action="store_true", help="print every wrong decision with its reason")
    parser.add_argument("--cross", action="store_true", help="train/test on every split of the dev files")
    args = parser.parse_args(argv)
    if args.cross:
        import reuse_train

        return reuse_train.main(["--no-write"])
    if not args.files:
        parser.error("give at least one FILE, or --cross")
    embedder = PromptEmbedder.from_dir()
    headline: list[str] = []
    many = len(args.files) > 1
    for path in args.files:
        t0 = time.perf_counter()
        rows = judge_pairs(read_pairs(path), embedder)
        per_pair_ms = 1000 * (time.perf_counter() - t0) / max(1, len(rows))
        shipped = Counts.of([(p.label, d.accept) for p, _, d in rows])
        print(f"== {path.name}: {len(rows)} pairs ({per_pair_ms:.1f} ms a pair, embeddings included)")
        print(f"  shipped decision: {shipped.line()}")
        base = best_cosine(rows)
        if base is None:
            print(f"  plain cosine: no threshold reaches precision {TARGET_PRECISION} on this file")
        else:
            print(f"  plain cosine >= {base[0]:.3f} (best on this file): {base[1].line()}")
        if args.show:
            for p, cos, d in rows:
                if d.accept != p.label:
                    kind = "WRONG REUSE" if d.accept else "missed"
                    print(f"    {kind}: cos={cos:.3f} {d.reason}\n      {p.a!r}\n      {p.b!r}")
        prefix = path.stem.removeprefix("prompt_pairs_") + "_" if many else ""
        headline += [f"{prefix}precision={shipped.precision:.3f}", f"{prefix}recall={shipped.recall:.3f}",
                     f"{prefix}false_reuses={shipped.fp}", f"{prefix}pairs={len(rows)}"]
    latencies = []
    for text in ["a dog barking in the distance"] * 20:
        t = time.perf_counter()
        embedder.embed([text])
        latencies.append(1000 * (time.perf_counter() - t))
    print(" ".join(headline) + f" embed_ms={statistics.median(latencies):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
