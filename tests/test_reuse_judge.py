"""The semantic reuse decision, with the real MiniLM embedder and the shipped model.

The pairs here are written for these tests (none comes from the labelled dev files), so
that a change which only fits those files cannot pass them by construction.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from appliance.cache.keys import exact_key, normalise_prompt
from appliance.cache.reuse import ReuseDecision, ReuseJudge, ReuseThresholds
from appliance.cache.reuse.alignment import WordAlignment, WordVectorMemo, align_words, static_token_encoder
from appliance.cache.reuse.analysis import analyse_prompt, residual_words
from appliance.cache.reuse.conflicts import find_conflicts
from appliance.cache.reuse.features import EmbeddingMemo, PairFeatures
from appliance.cache.reuse.lexicon import DATA_DIR, default_lexicon
from appliance.cache.reuse.model import MODEL_PATH, default_model
from appliance.cache.semantic import Compatibility, SemanticCache
from appliance.cache.store import CacheItem, CacheStore
from appliance.models.embedder import PromptEmbedder, TokenVectors
from testkit.items import make_item


@pytest.fixture(scope="module")
def embedder() -> PromptEmbedder:
    return PromptEmbedder.from_dir()


@pytest.fixture(scope="module")
def judge(embedder: PromptEmbedder) -> ReuseJudge:
    return ReuseJudge(embedder.embed, token_vectors=embedder.token_vectors)


def decide(judge: ReuseJudge, embedder: PromptEmbedder, a: str, b: str) -> ReuseDecision:
    va, vb = embedder.embed([a, b])
    return judge.decide(a, b, float(va @ vb))


def test_normalise_prompt_is_the_exact_key_rule() -> None:
    assert normalise_prompt("  A Dog   Barking!! ") == "a dog barking"
    assert normalise_prompt("Rain\ton\na roof.") == "rain on a roof"
    assert normalise_prompt("ＲＡＩＮ") == "rain"  # NFKC folds full-width letters
    assert normalise_prompt("a café…") == "a café"
    once = normalise_prompt("  Some   PROMPT. ")
    assert normalise_prompt(once) == once
    assert exact_key("A dog barking.", model="m", duration_s=4, loop=False) == exact_key(
        "a dog barking", model="m", duration_s=4, loop=False)


def test_the_exact_key_does_not_depend_on_the_reuse_decision() -> None:
    """No lexicon or model change may ever change a cache key: keys.py must not import them."""
    code = ("import sys, appliance.cache.keys; "
            "bad = [m for m in sys.modules if m.startswith('appliance.cache.reuse')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("a", "b", "axis"), [
    ("a church bell ringing loudly in the square", "a church bell ringing softly in the square", "loudness"),
    ("a motorbike revving far away on a country road", "a motorbike revving close by on a country road",
     "distance"),
    ("a woodpecker tapping slowly on a tree trunk", "a woodpecker tapping rapidly on a tree trunk", "rate"),
    ("a kettle on the stove at dawn", "a kettle on the stove at midnight", "time_of_day"),
    ("a man coughing in a waiting room", "a woman coughing in a waiting room", "gender"),
])
def test_opposite_poles_of_one_scale_are_refused(judge: ReuseJudge, embedder: PromptEmbedder,
                                                 a: str, b: str, axis: str) -> None:
    decision = decide(judge, embedder, a, b)
    assert not decision.accept
    assert any(c.startswith(axis) for c in decision.conflicts), decision.reason
    assert decision.cosine > 0.75  # whole-prompt cosine alone would have reused it


def test_counts_negation_and_reversed_steps_are_refused(judge: ReuseJudge, embedder: PromptEmbedder) -> None:
    count = decide(judge, embedder, "a clock chiming twice in a hallway",
                   "a clock chiming five times in a hallway")
    assert not count.accept and any(c.startswith("count") for c in count.conflicts)
    negation = decide(judge, embedder, "a barn at night with owls hooting",
                      "a barn at night with no owls hooting")
    assert not negation.accept and "negation on one side only" in negation.conflicts
    order = decide(judge, embedder, "a car door slams, then an engine starts",
                   "an engine starts, then a car door slams")
    assert not order.accept and "the same steps in the reverse order" in order.conflicts


def test_words_both_prompts_share_never_conflict(judge: ReuseJudge, embedder: PromptEmbedder) -> None:
    """A scale word on both sides, or a particle such as "up", is no reason to refuse."""
    decision = decide(judge, embedder, "a quiet library with pages turning slowly",
                      "pages turning slowly in a quiet library")
    assert decision.conflicts == ()
    particles = decide(judge, embedder, "workers packing up a stall at a market",
                       "traders taking down their market stall")
    assert not [c for c in particles.conflicts if not c.startswith("substitution")], particles.conflicts


def test_same_prompt_after_normalisation_is_reused(judge: ReuseJudge) -> None:
    decision = judge.decide("Rain on a tin roof.", "rain on a  tin roof", 0.99)
    assert decision.accept and decision.reason == "same prompt after normalisation"


def test_a_reworded_prompt_is_reused_and_a_changed_sound_is_not(judge: ReuseJudge,
                                                                embedder: PromptEmbedder) -> None:
    reworded = decide(judge, embedder, "a dog barking in the distance", "a dog barks far away")
    assert reworded.accept, reworded.reason
    assert reworded.features is not None and "reuse probability" in reworded.reason
    other_source = decide(judge, embedder, "a goat bleating in a farmyard", "a sheep bleating in a farmyard")
    assert not other_source.accept, other_source.reason
    other_event = decide(judge, embedder, "a baby crying in a nursery", "a baby laughing in a nursery")
    assert not other_event.accept, other_event.reason
    assert conflicts_of(embedder, "a baby crying in a nursery", "a baby laughing in a nursery") == [
        "substitution: crying vs laughing"]
    synonym = decide(judge, embedder, "a refrigerator humming in a kitchen", "a fridge humming in a kitchen")
    assert synonym.accept, synonym.reason
    unrelated = decide(judge, embedder, "a dog barking in the distance", "a cat meowing")
    assert not unrelated.accept


def test_long_prompt_with_one_event_swapped_is_not_reused(judge: ReuseJudge,
                                                          embedder: PromptEmbedder) -> None:
    a = ("an old orchard at noon with bees humming close by and a tractor working in a far field")
    b = ("an old orchard at noon with bees humming close by and a chainsaw working in a far field")
    decision = decide(judge, embedder, a, b)
    assert decision.cosine > 0.85
    assert not decision.accept, decision.reason


def test_the_decision_is_symmetric(judge: ReuseJudge, embedder: PromptEmbedder) -> None:
    for a, b in [("a dog barking in the distance", "a dog barks far away"),
                 ("a train horn far away at night", "a train horn right next to you at night")]:
        assert decide(judge, embedder, a, b).accept == decide(judge, embedder, b, a).accept


def test_a_stricter_tau_reuse_refuses_what_the_default_accepts(embedder: PromptEmbedder) -> None:
    a, b = "a dog barking in the distance", "a dog barks far away"
    default = decide(ReuseJudge(embedder.embed, token_vectors=embedder.token_vectors), embedder, a, b)
    strict = decide(ReuseJudge(embedder.embed, ReuseThresholds(0.45, min(1.0, default.score + 1e-6)),
                               token_vectors=embedder.token_vectors), embedder, a, b)
    assert default.accept and not strict.accept


def test_residual_is_what_one_prompt_says_and_the_other_does_not() -> None:
    a = analyse_prompt("a cafe terrace on a sunny afternoon with cups clinking")
    b = analyse_prompt("a cafe terrace on a rainy afternoon with cups clinking")
    assert residual_words(a, b) == ["sunny"] and residual_words(b, a) == ["rainy"]
    assert analyse_prompt("Dogs barking, then a door slams").steps == ("dogs barking", "a door slams")


def test_lexicon_and_model_are_data_files_with_provenance() -> None:
    raw = (DATA_DIR / "scales.toml").read_text(encoding="utf-8")
    assert raw.startswith("# Scales of a sound scene") and "Provenance:" in raw
    for axis, poles in default_lexicon().axes.items():
        assert len(poles) >= 2, axis
        names = list(poles)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                assert not poles[first] & poles[second], (axis, first, second)
    tomllib.loads(raw)
    model = default_model()
    assert list(model.features) == PairFeatures.names()
    assert 0.0 < model.threshold < 1.0
    assert model.provenance["trained_by"] == "bench/reuse_train.py"
    assert "out_of_sample_worst" in model.provenance
    assert MODEL_PATH.stat().st_size < 64 * 1024  # a data file of weights, not a download


def _item(prompt: str, *, duration: float, model: str = "m") -> CacheItem:
    return make_item(prompt, model=model, duration_s=duration, generation_timestamp=1.8e9)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    s = CacheStore(tmp_path / "cache")
    yield s
    s.close()


def test_a_compatible_item_behind_many_incompatible_variants_is_found(
    store: CacheStore, embedder: PromptEmbedder
) -> None:
    """Compatibility is applied before the top-k is cut (variants at other durations)."""
    prompt = "rain falling on a tin roof"
    vector = embedder.embed([prompt])[0]
    for i in range(12):  # the same prompt at other lengths: the nearest vectors of all
        store.put(_item(prompt, duration=10.0 + i), b"x", max_items=100, max_bytes=10**9,
                  prompt_vector=vector)
    wanted = _item("the patter of rain falling on a tin roof", duration=4.0)
    store.put(wanted, b"x", max_items=100, max_bytes=10**9,
              prompt_vector=embedder.embed([wanted.prompt])[0])
    accept_all = ReuseJudge(embedder.embed, ReuseThresholds(0.45, 0.0))  # retrieval is under test
    semantic = SemanticCache(store, accept_all, dimension=embedder.dimension, top_k=8)
    hit = semantic.find(prompt, vector, Compatibility(model="m", loop=False, duration_s=4.0,
                                                      duration_tolerance_s=0.5))
    assert hit is not None and hit.item.key == wanted.key, hit
    assert hit.reason


def test_a_candidate_costs_a_model_pass_only_when_the_model_would_accept_it(
    embedder: PromptEmbedder,
) -> None:
    """prefetch() encodes every prompt at once; a candidate refused by a lexical conflict or
    by the model then costs no model pass; one the model would accept costs at most one
    (the phrases of its short swap)."""
    calls: list[str] = []

    def counting(texts: list[str]) -> np.ndarray:
        calls.append("embed")
        return embedder.embed(texts)

    def counting_tokens(texts: list[str]) -> list[TokenVectors]:
        calls.append("tokens")
        return embedder.token_vectors(texts)

    counted = ReuseJudge(counting, token_vectors=counting_tokens)
    new = "a kettle whistling on a gas stove"
    candidates = ["a kettle whistles on the hob", "a pan sizzling on a gas stove", "a kettle boiling",
                  "a kettle whistling on a gas cooker", "the whistle of a kettle on a gas stove"]
    vectors = embedder.embed([new, *candidates])
    cosines = dict(zip(candidates, (vectors[1:] @ vectors[0]).tolist(), strict=True))
    counted.prefetch(new, candidates)
    assert calls == ["tokens"]
    reached_the_last_step = 0
    for candidate in candidates:
        before = len(calls)
        decision = counted.decide(new, candidate, cosines[candidate])
        if decision.accept or (decision.conflicts and decision.score == 0.0 and decision.features):
            reached_the_last_step += 1
            assert len(calls) - before <= 1, decision
        else:
            assert len(calls) == before, decision
    assert "tokens" not in calls[1:]
    assert reached_the_last_step == 2, "the reworded one and the cooker swap reach the last step"
    assert reached_the_last_step < len(candidates), "the other sounds are refused before it"


def conflicts_of(embedder: PromptEmbedder, a: str, b: str) -> list[str]:
    """Every conflict rule on one pair, as training sees them (not stopped by the model)."""
    return find_conflicts(analyse_prompt(a), analyse_prompt(b), default_lexicon(),
                          EmbeddingMemo(embedder.embed).similarity)


def test_a_short_phrase_swapped_for_another_source_is_refused(judge: ReuseJudge,
                                                              embedder: PromptEmbedder) -> None:
    swapped = decide(judge, embedder, "a lawn mower droning in a back garden",
                     "a leaf blower droning in a back garden")
    assert not swapped.accept, swapped
    mower, blower = "a lawn mower droning in a back garden", "a leaf blower droning in a back garden"
    assert conflicts_of(embedder, mower, blower) == ["substitution: lawn mower vs leaf blower"]
    reworded = decide(judge, embedder, "a dog barking in the distance", "a dog barks far away")
    assert reworded.accept and not reworded.conflicts, "a phrase reworded (0.69) is left to the model"


def test_a_distance_named_on_one_side_only_is_refused(judge: ReuseJudge, embedder: PromptEmbedder) -> None:
    decision = decide(judge, embedder, "a wasp buzzing right next to the ear in a garden",
                      "a wasp buzzing in a garden")
    assert "distance set on one side only" in decision.conflicts, decision.reason
    both = decide(judge, embedder, "a foghorn sounding far away", "a distant foghorn sounding")
    assert not any("distance" in c for c in both.conflicts), both.reason


def test_word_alignment_finds_each_differing_words_counterpart() -> None:
    """With one-hot word vectors: a word is its own (and only its own) counterpart."""
    vocabulary = ["owl", "hooting", "shutter", "banging", "barn", "ditch", "night"]

    def one_hot(words: list[str]) -> np.ndarray:
        rows = np.zeros((len(words), len(vocabulary) + 1), dtype=np.float32)
        for i, word in enumerate(words):
            rows[i, vocabulary.index(word) if word in vocabulary else -1] = 1.0
        return rows

    memo = WordVectorMemo(static_token_encoder(one_hot))
    same = align_words(analyse_prompt("an owl hooting at night"),
                       analyse_prompt("at night an owl hooting"), memo)
    assert same == WordAlignment(1.0, 1.0)
    changed = align_words(analyse_prompt("an owl hooting in a barn at night"),
                          analyse_prompt("a shutter banging in a barn at night"), memo)
    assert changed.worst == 0.0 and changed.mean == 0.0
    added = align_words(analyse_prompt("an owl hooting in a barn"), analyse_prompt("an owl hooting"), memo)
    assert added.worst == 0.0, "barn finds no counterpart among the other side's words"


def test_token_vectors_of_a_prompt_just_embedded_cost_no_second_pass(embedder: PromptEmbedder) -> None:
    prompt = "Surf rolling onto a pebble beach at dusk"
    calls: list[object] = []
    encode = embedder._model.encode

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("output_value", "sentence_embedding"))
        return encode(*args, **kwargs)

    embedder._model.encode = counting
    try:
        embedder.embed([prompt])
        tokens = embedder.token_vectors([prompt])[0]
        fresh = embedder.token_vectors(["gulls crying overhead"])[0]
    finally:
        embedder._model.encode = encode
    assert calls == [None, "token_embeddings"], "one pass for the embedded prompt, one for the new one"
    words = [prompt[s:e].lower() for s, e in tokens.spans]
    assert words[:3] == ["surf", "rolling", "onto"] and tokens.vectors.shape == (len(words), 384)
    assert [("gulls crying overhead")[s:e] for s, e in fresh.spans][-1] == "overhead"


def test_the_same_words_with_near_and_far_swapped_are_refused(judge: ReuseJudge,
                                                              embedder: PromptEmbedder) -> None:
    a = "an old orchard at noon with bees humming close by and a tractor working in a far field"
    b = "an old orchard at noon with a tractor working close by and bees humming in a far field"
    swapped = decide(judge, embedder, a, b)
    assert swapped.cosine > 0.95 and not swapped.accept
    assert "'close' describes another sound" in swapped.conflicts
    reordered = decide(judge, embedder, "a loud dog barking and a cat meowing softly",
                       "a cat meowing softly and a loud dog barking")
    assert reordered.conflicts == (), "clauses moved whole keep their scale words"


def _training_script() -> ModuleType:
    """bench/reuse_train.py as a module (the benchmarks are scripts, not a package)."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        import reuse_train
    finally:
        sys.path.remove(str(bench))
    return reuse_train


def test_a_model_trained_on_short_prompts_only_declines_long_ones() -> None:
    """Labelled pairs of 3 content words say "residual 0.6 is enough"; the generated long
    pairs (12 words) say that at that length 0.6 is not. The model must carry the second
    lesson to long pairs instead of applying the short-prompt threshold to them."""
    train = _training_script()
    rng = np.random.default_rng(0)
    names = PairFeatures.names()

    def row(label: bool, residual: float, words: int) -> Any:
        values = dict.fromkeys(names, 0.0) | {"cosine": 0.7, "residual_cosine": residual,
                                              "prompt_length": float(np.log(words))}
        return train.Row(train.Pair(label, "a", "b", "test"), (), np.array([values[n] for n in names]))

    labelled = ([row(True, r, 3) for r in rng.uniform(0.55, 0.95, 60)]
                + [row(False, r, 3) for r in rng.uniform(0.05, 0.45, 60)])
    generated = ([row(True, r, 12) for r in rng.uniform(0.85, 1.0, 40)]
                 + [row(False, r, 12) for r in rng.uniform(0.4, 0.8, 120)])
    model = train.fit(labelled, generated)
    assert model.coef[names.index("prompt_length")] < 0.0
    short, long = train.decide(model, [row(True, 0.65, 3), row(True, 0.65, 12)])
    assert short and not long


def test_a_clip_this_service_generated_is_judged_without_a_model_pass(
    store: CacheStore, embedder: PromptEmbedder
) -> None:
    """SemanticCache.added(prompt=...) remembers the new item's word vectors while the
    embedder still holds them: the next lookup that meets it as a candidate runs no
    token pass for it (only for its own new prompt, which the embedder also holds)."""
    encoded: list[str] = []

    def counting_tokens(texts: list[str]) -> list[TokenVectors]:
        encoded.extend(texts)
        return embedder.token_vectors(texts)

    judge = ReuseJudge(embedder.embed, token_vectors=counting_tokens)
    semantic = SemanticCache(store, judge, dimension=embedder.dimension, top_k=8)
    semantic.sync()
    compat = Compatibility(model="m", loop=False, duration_s=4.0, duration_tolerance_s=0.5)
    generated = _item("a heavy door creaking open slowly in an old house", duration=4.0)
    vector = embedder.embed([generated.prompt])[0]  # the lookup that missed
    result = store.put(generated, b"x", max_items=100, max_bytes=10**9, prompt_vector=vector)
    semantic.added(generated.key, vector, result, generated.prompt)
    assert encoded == [generated.prompt]
    query = "an old house where a heavy door creaks slowly open"
    semantic.find(query, embedder.embed([query])[0], compat)
    assert generated.prompt not in encoded[1:], encoded
