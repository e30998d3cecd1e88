"""What the reuse decision costs per candidate, beside the embedding it follows.

    .venv/bin/python bench/reuse_cost.py [--cached 400] [--queries 200] [--top-k 8]

AudioCaps captions stand in for prompts: ``--cached`` of them play the cache (their word
vectors already remembered, as for a warm service), the next ``--queries`` arrive one by one;
each is embedded, its ``--top-k`` nearest cached captions are judged (prefetch, then decide
each: a miss judges them all). One torch thread, as the service runs the embedder. Last line:
``embed_p50_ms=… judge_p50_ms=… per_candidate_p50_ms=… per_candidate_p99_ms=…``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from reuse_pairs import audiocaps_captions  # noqa: E402

from appliance.cache.reuse import ReuseJudge  # noqa: E402
from appliance.models.embedder import PromptEmbedder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", type=int, default=400)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=8)
    args = parser.parse_args(argv)
    embedder = PromptEmbedder.from_dir(threads=1)
    captions = list(dict.fromkeys(audiocaps_captions()))
    cached, queries = captions[: args.cached], captions[args.cached : args.cached + args.queries]
    judge = ReuseJudge(embedder.embed, token_vectors=embedder.token_vectors)
    cached_vectors = embedder.embed(cached)
    judge.prefetch(cached[0], cached)  # warm: the cached prompts' word vectors are remembered
    embed_ms, judge_ms, per_candidate_ms = [], [], []
    for prompt in queries:
        t0 = time.perf_counter()
        vector = embedder.embed([prompt])[0]
        t1 = time.perf_counter()
        scores = cached_vectors @ vector
        top = np.argsort(-scores)[: args.top_k]
        judge.prefetch(prompt, [cached[i] for i in top])
        for i in top:
            judge.decide(prompt, cached[i], float(scores[i]))
        t2 = time.perf_counter()
        embed_ms.append((t1 - t0) * 1e3)
        judge_ms.append((t2 - t1) * 1e3)
        per_candidate_ms.append((t2 - t1) * 1e3 / len(top))
    print(f"{len(queries)} queries against {len(cached)} cached captions, top-{args.top_k} judged each")
    print(f"embed_p50_ms={np.percentile(embed_ms, 50):.2f} judge_p50_ms={np.percentile(judge_ms, 50):.2f} "
          f"per_candidate_p50_ms={np.percentile(per_candidate_ms, 50):.2f} "
          f"per_candidate_p99_ms={np.percentile(per_candidate_ms, 99):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
