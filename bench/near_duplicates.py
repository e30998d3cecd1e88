"""How often would AudioCaps captions be served from the cache?

The captions of ``audiocaps_val.csv`` arrive in file order into an empty cache. Each one is
served from the cache when its normalised text was seen before (exact hit), or when the
reuse judge accepts one of the nearest cached prompts at the shipped thresholds (semantic
hit); otherwise it is "generated" and cached. Prints the rates, optionally the accepted
semantic pairs (to eyeball their precision), and as its last line ``name=value`` pairs.

    .venv/bin/python bench/near_duplicates.py [CSV] [--top-k 5] [--show 40]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.cache.keys import normalise_prompt  # noqa: E402
from appliance.cache.reuse import DEFAULT_THRESHOLDS, ReuseJudge, ReuseThresholds  # noqa: E402
from appliance.models.embedder import PromptEmbedder  # noqa: E402

DEFAULT_CSV = REPO / "bench" / "data" / "audiocaps_val.csv"


def load_captions(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["caption"] for row in csv.DictReader(fh) if row.get("caption")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--top-k", type=int, default=5, help="candidates judged per prompt")
    parser.add_argument(
        "--show", type=int, default=0, help="print this many semantic hits (lowest score first)"
    )
    parser.add_argument(
        "--sample", type=int, default=0, help="print a random sample of this many semantic hits"
    )
    parser.add_argument("--tau-semantic", type=float, default=DEFAULT_THRESHOLDS.tau_semantic)
    parser.add_argument("--tau-reuse", type=float, default=None,
                        help="reuse probability threshold (default: the shipped model's)")
    args = parser.parse_args(argv)

    captions = load_captions(args.csv)
    thresholds = ReuseThresholds(tau_semantic=args.tau_semantic, tau_reuse=args.tau_reuse)
    embedder = PromptEmbedder.from_dir()
    judge = ReuseJudge(embedder.embed, thresholds, token_vectors=embedder.token_vectors)
    t0 = time.perf_counter()
    vectors = embedder.embed(captions)
    embed_s = time.perf_counter() - t0

    seen_keys: set[str] = set()  # every prompt that arrived: its audio is in the cache
    cached_rows: list[int] = []  # rows of `vectors` / `captions` stored in the cache
    exact = semantic = generated = candidates_seen = 0
    hits: list[tuple[float, float, str, str]] = []
    t1 = time.perf_counter()
    for i, caption in enumerate(captions):
        key = normalise_prompt(caption)
        if key in seen_keys:
            exact += 1
            continue
        seen_keys.add(key)
        accepted = None
        if cached_rows:
            sims = vectors[cached_rows] @ vectors[i]
            order = np.argsort(-sims)[: args.top_k]
            for j in order:
                cos = float(sims[j])
                if cos < thresholds.tau_semantic:
                    break
                candidates_seen += 1
                decision = judge.decide(caption, captions[cached_rows[j]], cos)
                if decision.accept:
                    accepted = (cos, decision.score, caption, captions[cached_rows[j]])
                    break
        if accepted is not None:
            semantic += 1
            hits.append(accepted)
            continue
        generated += 1
        cached_rows.append(i)
    judge_s = time.perf_counter() - t1

    n = len(captions)
    print(f"captions: {n}  (embedded in {embed_s:.1f} s, {1000 * embed_s / max(n, 1):.1f} ms each)")
    print(f"thresholds: tau_semantic={thresholds.tau_semantic} tau_reuse={judge.tau_reuse}")
    print(f"exact hits:    {exact:5d}  ({exact / n:.2%})")
    print(f"semantic hits: {semantic:5d}  ({semantic / n:.2%})")
    print(f"generated:     {generated:5d}  ({generated / n:.2%})")
    print(f"candidates judged: {candidates_seen} in {judge_s:.2f} s")
    shown = sorted(hits, key=lambda h: h[1])[: args.show]
    if args.sample:
        rng = random.Random(0)
        shown += rng.sample(hits, min(args.sample, len(hits)))
    for cos, score, new, old in shown:
        print(f"  cos={cos:.3f} score={score:.3f}  {new!r}  <=  {old!r}")
    print(
        f"prompts={n} exact_hits={exact} semantic_hits={semantic} "
        f"exact_rate={exact / n:.4f} semantic_rate={semantic / n:.4f} "
        f"served_rate={(exact + semantic) / n:.4f} generated={generated}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
