"""Cache maintenance: the operations, the admin dispatcher, and `appliance cache …`.

Everything runs against a real LMDB cache in a temp directory. The command-line tests run
the real ``python -m appliance cache …`` in a subprocess; the others drive the same handlers
through a parser built here.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.admin import COMMANDS, MQTT_COMMANDS, AdminDispatcher
from appliance.cache import maintenance as m
from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore, EmbedderInfo
from appliance.cli_cache import add_cache_commands
from appliance.config import load_settings
from appliance.errors import InvalidRequest, NotFound

NOW = time.time()  # the CLI handlers use the real clock
HOUR, DAY = 3600.0, 86_400.0
DIM = 16


# --------------------------------------------------------------------------------------
# Building a cache
# --------------------------------------------------------------------------------------


def unit(seed: int, noise_of: np.ndarray | None = None, scale: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=DIM).astype(np.float32)
    if noise_of is not None:
        vector = noise_of + scale * vector
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def add(
    store: CacheStore, prompt: str, *, age_s: float = 60.0, score: float | None = None, hits: int = 0,
    last_hit_age_s: float | None = None, model: str = "m", loop: bool = False, duration: float = 4.0,
    size: int = 100, vector: np.ndarray | None = None, clap: np.ndarray | None = None,
) -> CacheItem:
    item = CacheItem(
        key=new_item_key(), exact_key=exact_key(prompt, model=model, duration_s=duration, loop=loop),
        prompt=prompt, model=model, duration_s=duration, requested_duration_s=duration, is_loop=loop,
        steps=4, guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
        audio_format="wav", audio_bytes=0, generation_timestamp=NOW - age_s, generation_s=0.1,
        clap_similarity=score, hits=hits,
        last_hit_timestamp=None if last_hit_age_s is None else NOW - last_hit_age_s,
    )
    store.put(item, b"x" * size, max_items=10**6, max_bytes=10**12, prompt_vector=vector, clap_vector=clap)
    return item


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    s = CacheStore(tmp_path / "cache")
    yield s
    s.close()


@pytest.fixture
def aged(store: CacheStore) -> dict[str, CacheItem]:
    """Five items, one per age bucket, with scores and hits."""
    return {
        "fresh": add(store, "rain on a tin roof", age_s=10 * 60, score=0.6, hits=5, last_hit_age_s=30,
                     size=100),
        "hours": add(store, "Dog barking far away", age_s=2 * HOUR, score=0.2, hits=1, size=200, loop=True),
        "days": add(store, "ocean waves", age_s=3 * DAY, score=None, size=300, model="other"),
        "weeks": add(store, "wind in the trees", age_s=10 * DAY, score=0.4, hits=9,
                     last_hit_age_s=HOUR, size=400),
        "ancient": add(store, "old clock ticking", age_s=60 * DAY, score=0.8, size=500),
    }


# --------------------------------------------------------------------------------------
# stats, list, show, export
# --------------------------------------------------------------------------------------


def test_stats_reports_counts_ages_hits_quality_and_top_prompts(
    store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    store.set_embedder_info(EmbedderInfo("bge-small", DIM))
    report = m.stats(store, now=NOW, top=2)
    assert (report.items, report.bytes) == (5, 1500)
    assert report.age_buckets == {"<1h": 1, "<1d": 1, "<7d": 1, "<30d": 1, "older": 1}
    assert report.hits.total_hits == 15 and report.hits.items_hit == 3 and report.hits.items_never_hit == 2
    assert report.hits.hit_rate == round(15 / 20, 4)
    assert report.quality.scored == 4 and report.quality.unscored == 1
    assert report.quality.min == 0.2 and report.quality.max == 0.8 and report.quality.median == 0.5
    assert [p.key for p in report.top_prompts] == [aged["weeks"].key, aged["fresh"].key]
    assert report.embedder == {"name": "bge-small", "dimension": DIM}
    assert report.models == {"m": 4, "other": 1} and report.loops == 1
    assert report.oldest_timestamp == aged["ancient"].generation_timestamp
    assert report.generation == store.generation()
    body = report.to_dict()
    assert json.loads(json.dumps(body)) == body


def test_stats_of_an_empty_cache(store: CacheStore) -> None:
    report = m.stats(store, now=NOW)
    assert report.items == 0 and report.hits.hit_rate is None and report.quality.median is None
    assert report.oldest_timestamp is None and report.top_prompts == [] and report.embedder is None


def test_list_sorts_with_missing_values_last_filters_and_limits(
    store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    by_hits = m.list_items(store, sort="hits", now=NOW)
    assert [i.hits for i in by_hits.items] == [9, 5, 1, 0, 0]
    by_clap = m.list_items(store, sort="clap_similarity", descending=False, now=NOW)
    assert [i.clap_similarity for i in by_clap.items] == [0.2, 0.4, 0.6, 0.8, None]
    by_time = m.list_items(store, limit=2, now=NOW)
    assert [i.key for i in by_time.items] == [aged["fresh"].key, aged["hours"].key]
    assert (by_time.total_items, by_time.matched, by_time.returned) == (5, 5, 2)
    assert by_time.items[0].age_s == 600.0
    last_hit = m.list_items(store, sort="last_hit", now=NOW)
    assert [i.key for i in last_hit.items[:2]] == [aged["fresh"].key, aged["weeks"].key]

    def keys(**filters: Any) -> set[str]:
        return {i.key for i in m.list_items(store, filters=m.ItemFilter(**filters), now=NOW).items}

    assert keys(prompt="DOG") == {aged["hours"].key}
    assert keys(pattern=r"^(rain|wind)\b") == {aged["fresh"].key, aged["weeks"].key}
    assert keys(model="other") == {aged["days"].key}
    assert keys(loop=True) == {aged["hours"].key}
    assert keys(min_clap=0.5) == {aged["fresh"].key, aged["ancient"].key}
    assert keys(max_clap=0.3) == {aged["hours"].key}  # the unscored item is left out
    with pytest.raises(InvalidRequest, match="sort"):
        m.list_items(store, sort="colour")  # type: ignore[arg-type]


def test_show_tells_whether_audio_and_vectors_exist(store: CacheStore) -> None:
    item = add(store, "rain", vector=unit(1), size=123)
    report = m.show(store, item.key, now=NOW)
    assert report.item["prompt"] == "rain" and report.audio_exists and report.audio_file_bytes == 123
    assert report.audio_size_matches and report.exact_index_points_here
    assert report.prompt_vector.present and report.prompt_vector.dimension == DIM
    assert not report.clap_vector.present
    store.audio_path(item.key).unlink()
    gone = m.show(store, item.key, now=NOW)
    assert not gone.audio_exists and gone.audio_file_bytes is None and not gone.audio_size_matches
    with pytest.raises(NotFound):
        m.show(store, new_item_key())


def test_export_writes_audio_and_a_json_sidecar(store: CacheStore, tmp_path: Path) -> None:
    item = add(store, "rain", score=0.5, size=50)
    out = tmp_path / "out"
    out.mkdir()
    report = m.export(store, item.key, out)
    audio, sidecar = Path(report.audio_path), Path(report.metadata_path)
    assert audio == out / f"{item.key}.wav" and audio.read_bytes() == b"x" * 50
    meta = json.loads(sidecar.read_text())
    assert meta["key"] == item.key and meta["prompt"] == "rain" and meta["clap_similarity"] == 0.5
    with pytest.raises(InvalidRequest, match="exists"):
        m.export(store, item.key, out)
    named = m.export(store, item.key, out / "clip.wav")
    assert Path(named.metadata_path) == out / "clip.json"
    m.export(store, item.key, out, overwrite=True)
    store.audio_path(item.key).unlink()
    with pytest.raises(NotFound):
        m.export(store, item.key, out / "again.wav")
    assert not (out / "again.wav").exists()


# --------------------------------------------------------------------------------------
# clean, clear, remove-pattern
# --------------------------------------------------------------------------------------


def test_clean_dry_run_reports_and_removes_nothing(store: CacheStore, aged: dict[str, CacheItem]) -> None:
    generation = store.generation()
    report = m.clean(store, older_than_days=7, dry_run=True, now=NOW)
    assert report.dry_run and set(report.removed) == {aged["weeks"].key, aged["ancient"].key}
    assert (report.before_items, report.before_bytes) == (5, 1500)
    assert (report.after_items, report.after_bytes) == (3, 600)
    assert (report.removed_count, report.freed_bytes) == (2, 900)
    assert store.totals().items == 5 and store.generation() == generation


def test_clean_removes_old_items_in_one_visible_transaction(
    store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    generation = store.generation()
    report = m.clean(store, older_than_days=7, now=NOW)
    assert not report.dry_run and report.removed_count == 2 and report.freed_bytes == 900
    assert (report.after_items, report.after_bytes) == (3, 600)
    assert store.generation() == generation + 1  # one delete, one bump: the service notices
    assert not store.audio_path(aged["ancient"].key).exists()
    code = "import sys; from appliance.cache.store import CacheStore as S; print(len(S(sys.argv[1]).items()))"
    seen = subprocess.run([sys.executable, "-c", code, str(store.directory)], capture_output=True,
                          text=True, check=True)
    assert seen.stdout.strip() == "3"  # another process sees the delete at once
    again = m.clean(store, older_than_days=7, now=NOW)
    assert again.removed_count == 0 and store.generation() == generation + 1


def test_clean_by_last_use_keeps_old_items_that_are_still_hit(
    store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    report = m.clean(store, older_than_days=7, by="last_used", dry_run=True, now=NOW)
    assert report.removed == [aged["ancient"].key]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="older_than_days"):
            m.clean(store, older_than_days=bad, now=NOW)


def test_clear_dry_run_then_clear(store: CacheStore, aged: dict[str, CacheItem]) -> None:
    preview = m.clear(store, dry_run=True)
    assert preview.removed_count == 5 and preview.after_items == 0 and store.totals().items == 5
    report = m.clear(store)
    counts = (report.before_items, report.before_bytes, report.after_items, report.after_bytes)
    assert counts == (5, 1500, 0, 0)
    assert report.freed_bytes == 1500 and list(store.audio_dir.iterdir()) == []


def test_removed_key_list_is_capped_but_counts_are_whole(store: CacheStore) -> None:
    for index in range(m.REMOVED_LIST_CAP + 5):
        add(store, f"clip {index}", size=1)
    report = m.clear(store, dry_run=True)
    assert report.removed_count == m.REMOVED_LIST_CAP + 5 and report.freed_bytes == m.REMOVED_LIST_CAP + 5
    assert len(report.removed) == m.REMOVED_LIST_CAP and report.removed_truncated


def test_remove_pattern_matches_prompts_case_insensitively(
    store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    preview = m.remove_pattern(store, pattern=r"^dog|clock", dry_run=True)
    assert set(preview.removed) == {aged["hours"].key, aged["ancient"].key} and store.totals().items == 5
    assert m.remove_pattern(store, pattern=r"^dog", ignore_case=False, dry_run=True).removed_count == 0
    report = m.remove_pattern(store, pattern=r"^dog|clock")
    assert report.removed_count == 2 and report.freed_bytes == 700 and report.after_items == 3
    assert report.criteria == {"pattern": r"^dog|clock", "ignore_case": True}


@pytest.mark.parametrize(("pattern", "message"), [
    ("(unclosed", "not a valid regular expression"),
    ("", "must not be empty"),
    ("a" * (m.PATTERN_MAX_CHARS + 1), "at most"),
    ("(a{1000}){1000}", "multiply"),
    ("a{5000}", "above the limit"),
])
def test_remove_pattern_refuses_bad_patterns(store: CacheStore, pattern: str, message: str) -> None:
    add(store, "rain")
    start = time.monotonic()
    with pytest.raises(InvalidRequest, match=message):
        m.remove_pattern(store, pattern=pattern)
    assert time.monotonic() - start < 1.0 and store.totals().items == 1


def test_regex_bombs_finish_quickly_with_an_error_or_a_bounded_result(store: CacheStore) -> None:
    add(store, "a" * 5000 + "b")
    add(store, "a" * 60 + "!")
    add(store, "rain")
    start = time.monotonic()
    try:  # the regex engine may see through this one; either way it must not hang
        report = m.remove_pattern(store, pattern=r"(a+)+$", dry_run=True)
        assert report.removed_count == 0
    except InvalidRequest as exc:
        assert "too expensive" in exc.message
    assert time.monotonic() - start < 2.0
    start = time.monotonic()
    with pytest.raises(InvalidRequest, match="too expensive"):  # exponential backtracking
        m.remove_pattern(store, pattern=r"^(a|aa)+$")
    assert time.monotonic() - start < 2.0
    assert store.totals().items == 3


def test_prompt_matcher_has_an_overall_deadline() -> None:
    ticks = iter([0.0, 0.0, 0.5, 10.0])
    matcher = m.PromptMatcher("rain", total_timeout_s=1.0, clock=lambda: next(ticks))
    assert matcher.search("rain on a roof") and not matcher.search("wind")
    with pytest.raises(InvalidRequest, match="all prompts"):
        matcher.search("rain")


# --------------------------------------------------------------------------------------
# duplicates
# --------------------------------------------------------------------------------------


@pytest.fixture
def dupes(store: CacheStore) -> dict[str, CacheItem]:
    rain = unit(1)
    return {
        "best": add(store, "Rain on a tin roof.", score=0.7, vector=rain, age_s=3 * DAY),
        "same_text": add(store, "rain on a  tin roof", score=0.5, hits=9, vector=unit(2)),
        "near": add(store, "rain falling on a tin roof", score=None, hits=3, vector=unit(3, rain, 0.05)),
        "loop": add(store, "rain on a tin roof", score=0.1, loop=True, vector=rain),
        "long": add(store, "rain on a tin roof", score=0.1, duration=6.0, vector=rain),
        "other_model": add(store, "rain on a tin roof", score=0.1, model="big", vector=rain),
        "far": add(store, "dog barking", score=0.3, vector=unit(4)),
        "close_length": add(store, "rain on a tin roof", score=0.05, duration=4.4, vector=rain, size=7),
    }


def test_duplicates_groups_compatible_items_around_the_best(
    store: CacheStore, dupes: dict[str, CacheItem],
) -> None:
    report = m.duplicates(store, threshold=0.95, now=NOW)
    assert report.group_count == 1 and report.duplicate_count == 3 and report.removal is None
    group = report.groups[0]
    assert group.keep.key == dupes["best"].key
    members = {d.key: d for d in group.duplicates}
    assert set(members) == {dupes["same_text"].key, dupes["near"].key, dupes["close_length"].key}
    assert members[dupes["same_text"].key].reasons == ["same_prompt"]
    assert "prompt" in members[dupes["near"].key].reasons
    near = members[dupes["near"].key].prompt_similarity
    assert near is not None and 0.95 <= near <= 1.0
    assert report.duplicate_bytes == 207
    assert store.totals().items == 8


def test_duplicates_remove_keeps_the_best_and_supports_dry_run(
    store: CacheStore, dupes: dict[str, CacheItem],
) -> None:
    preview = m.duplicates(store, remove=True, dry_run=True, now=NOW)
    assert preview.removal is not None and preview.removal.dry_run
    assert (preview.removal.before_items, preview.removal.after_items) == (8, 5)
    assert store.totals().items == 8
    report = m.duplicates(store, remove=True, now=NOW)
    assert report.removal is not None and report.removal.removed_count == 3
    assert report.removal.freed_bytes == 207 and report.removal.after_items == 5
    left = {i.key for i in store.items()}
    assert dupes["best"].key in left and dupes["same_text"].key not in left
    assert m.duplicates(store, now=NOW).group_count == 0


def test_keep_rank_prefers_score_then_hits_then_newest(store: CacheStore) -> None:
    old_many = add(store, "hum", score=0.5, hits=7, age_s=DAY)
    new_few = add(store, "hum.", score=0.5, hits=1, age_s=HOUR)
    new_many = add(store, "HUM", score=0.5, hits=7, age_s=HOUR)
    unscored = add(store, "hum!", score=None, hits=100, age_s=60)
    group = m.duplicates(store, now=NOW).groups[0]
    assert group.keep.key == new_many.key
    ranked = sorted([old_many, new_few, new_many, unscored], key=m.keep_rank)
    assert [i.key for i in ranked] == [new_many.key, old_many.key, new_few.key, unscored.key]


def test_duplicates_by_audio_uses_clap_vectors_when_present(store: CacheStore) -> None:
    sound = unit(10)
    a = add(store, "thunder", score=0.9, vector=unit(11), clap=sound)
    b = add(store, "storm rumbling", score=0.2, vector=unit(12), clap=unit(13, sound, 0.02))
    add(store, "birdsong", vector=unit(14), clap=unit(15))
    add(store, "no clap vector", vector=unit(16))
    assert m.duplicates(store, by="prompt", now=NOW).group_count == 0
    report = m.duplicates(store, by="audio", now=NOW)
    assert report.group_count == 1 and report.groups[0].keep.key == a.key
    member = report.groups[0].duplicates[0]
    assert member.key == b.key and member.reasons == ["audio"] and member.prompt_similarity is None
    assert m.duplicates(store, by="both", audio_threshold=0.999999, now=NOW).group_count == 0
    with pytest.raises(InvalidRequest, match="threshold"):
        m.duplicates(store, threshold=0)


def test_duplicates_do_not_chain_through_a_middle_item(store: CacheStore) -> None:
    # b is within threshold of a and of c, but c is not of a: c stays, b goes with a
    base, side = unit(20), unit(21)
    side = side - float(side @ base) * base
    side /= np.linalg.norm(side)

    def at(angle: float) -> np.ndarray:
        return (np.cos(angle) * base + np.sin(angle) * side).astype(np.float32)

    a = add(store, "a", score=0.9, vector=at(0.0))
    b = add(store, "b", score=0.5, vector=at(0.25))
    c = add(store, "c", score=0.1, vector=at(0.5))
    report = m.duplicates(store, threshold=0.96, now=NOW)  # cos(0.25)=0.969, cos(0.5)=0.878
    assert report.group_count == 1 and report.groups[0].keep.key == a.key
    assert [d.key for d in report.groups[0].duplicates] == [b.key]
    assert c.key not in {d.key for g in report.groups for d in g.duplicates}


# --------------------------------------------------------------------------------------
# The admin dispatcher
# --------------------------------------------------------------------------------------


def test_mqtt_destructive_commands_are_dry_runs_without_confirm(
    store: CacheStore, aged: dict[str, CacheItem], caplog: pytest.LogCaptureFixture,
) -> None:
    admin = AdminDispatcher(store, now=lambda: NOW)
    caplog.set_level(logging.INFO, logger="appliance.admin")
    for command, args in [("clean", {"older_than_days": 7}), ("clear", {}),
                          ("remove-pattern", {"pattern": "rain"}),
                          ("clear", {"dry_run": False})]:
        result = admin.dispatch(command, args, source="mqtt", client_id="ops-1")
        assert result["command"] == command and result["dry_run"] is True
        assert result["confirm_required"] is True and "confirm" in result["hint"]
        assert result["removed_count"] > 0
    assert store.totals().items == 5
    record = caplog.records[-1]
    assert record.admin_source == "mqtt" and record.client_id == "ops-1"  # type: ignore[attr-defined]
    assert record.admin_command == "clear" and record.confirm_missing is True  # type: ignore[attr-defined]


def test_mqtt_destructive_commands_act_with_confirm(
    store: CacheStore, aged: dict[str, CacheItem], caplog: pytest.LogCaptureFixture,
) -> None:
    admin = AdminDispatcher(store, now=lambda: NOW)
    caplog.set_level(logging.INFO, logger="appliance.admin")
    explicit = admin.dispatch("clear", {"confirm": True, "dry_run": True}, source="mqtt")
    assert explicit["dry_run"] is True and "hint" not in explicit and store.totals().items == 5
    result = admin.dispatch("clean", {"older_than_days": 7, "confirm": True}, source="mqtt", client_id="ops")
    assert result["dry_run"] is False and result["removed_count"] == 2 and "hint" not in result
    assert store.totals().items == 3
    record = caplog.records[-1]
    assert record.levelno == logging.WARNING and record.removed_count == 2  # type: ignore[attr-defined]
    assert record.admin_args == {"dry_run": None, "older_than_days": 7.0, "by": "created"}  # type: ignore[attr-defined]


def test_duplicates_over_mqtt_need_confirm_only_to_remove(
    store: CacheStore, dupes: dict[str, CacheItem]
) -> None:
    admin = AdminDispatcher(store, now=lambda: NOW)
    found = admin.dispatch("duplicates", {}, source="mqtt")
    assert found["group_count"] == 1 and found["removal"] is None and "hint" not in found
    preview = admin.dispatch("duplicates", {"remove": True}, source="mqtt")
    assert preview["dry_run"] is True and preview["removal"]["dry_run"] is True and preview["hint"]
    assert store.totals().items == 8
    done = admin.dispatch("duplicates", {"remove": True, "confirm": True}, source="mqtt")
    assert done["dry_run"] is False and done["removal"]["removed_count"] == 3
    assert store.totals().items == 5


def test_cli_source_acts_without_confirm(store: CacheStore, aged: dict[str, CacheItem]) -> None:
    admin = AdminDispatcher(store, now=lambda: NOW)
    assert admin.dispatch("clear", {"dry_run": True}, source="cli")["dry_run"] is True
    result = admin.dispatch("clear", {}, source="cli")
    assert result["dry_run"] is False and result["after_items"] == 0


def test_reading_commands_through_the_dispatcher(store: CacheStore, aged: dict[str, CacheItem],
                                                 tmp_path: Path) -> None:
    admin = AdminDispatcher(store, now=lambda: NOW)
    assert admin.dispatch("stats", {}, source="mqtt")["items"] == 5
    listed = admin.dispatch("list", {"sort": "size", "limit": 1, "loop": False}, source="mqtt")
    assert [i["key"] for i in listed["items"]] == [aged["ancient"].key]
    shown = admin.dispatch("show", {"key": aged["fresh"].key}, source="mqtt")
    assert shown["item"]["prompt"] == "rain on a tin roof"
    with pytest.raises(InvalidRequest, match="only available from the CLI"):
        admin.dispatch("export", {"key": aged["fresh"].key, "out": str(tmp_path)}, source="mqtt")
    exported = admin.dispatch("export", {"key": aged["fresh"].key, "out": str(tmp_path)}, source="cli")
    assert Path(exported["audio_path"]).is_file()
    with pytest.raises(NotFound):
        admin.dispatch("show", {"key": new_item_key()}, source="cli")


@pytest.mark.parametrize(("command", "args", "message"), [
    ("vacuum", {}, "unknown admin command 'vacuum'; known: " + ", ".join(MQTT_COMMANDS)),
    ("clean", {}, "older_than_days: Field required"),
    ("clean", {"older_than_days": "7"}, "older_than_days: Input should be a valid number"),
    ("clean", {"older_than_days": -1}, "older_than_days: Input should be greater than 0"),
    ("clear", {"confirm": "yes"}, "confirm: Input should be a valid boolean"),
    ("clear", {"confim": True}, "confim: Extra inputs are not permitted (allowed: dry_run, confirm)"),
    ("list", {"sort": "colour"}, "sort: Input should be"),
    ("list", {"limit": 0}, "limit: Input should be greater than or equal to 1"),
    ("show", {"key": "../../etc/passwd"}, "key: Value error, must be a cache key"),
    ("duplicates", {"threshold": 1.5}, "threshold: Input should be less than or equal to 1"),
    ("remove-pattern", {"pattern": "(a"}, "not a valid regular expression"),
    ("stats", ["top"], "must be a JSON object"),
])
def test_bad_commands_and_arguments_are_invalid_requests(
    store: CacheStore, command: str, args: Any, message: str,
) -> None:
    add(store, "rain")
    with pytest.raises(InvalidRequest) as info:
        AdminDispatcher(store).dispatch(command, args, source="mqtt")
    assert message in info.value.message and info.value.code == "invalid_request"
    assert store.totals().items == 1


def test_every_command_has_a_cli_subcommand() -> None:
    parser, _ = _parser()
    cache = next(a for a in parser._subparsers._group_actions if a.dest == "command")  # type: ignore[union-attr]
    sub = next(a for a in cache.choices["cache"]._subparsers._group_actions)  # type: ignore[union-attr]
    # `resize` changes the LMDB map with the appliance stopped: a CLI command only, no admin topic
    assert set(sub.choices) - {"resize"} == set(COMMANDS)


# --------------------------------------------------------------------------------------
# CLI handlers through a parser built here (no dependency on appliance.cli's wiring)
# --------------------------------------------------------------------------------------


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="appliance")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path)
    common.add_argument("--json", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    add_cache_commands(commands, common)
    return parser, common


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def count(directory: Path) -> int:
    """Items in the cache, read by a store of its own (LMDB allows one per process)."""
    store = CacheStore(directory)
    try:
        return store.totals().items
    finally:
        store.close()


@pytest.fixture
def cli(tmp_path: Path, store: CacheStore, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    """Runs ``appliance cache ARGV`` in this process. The test's ``store`` is closed first:
    LMDB refuses to open one environment twice in a process, and the handler opens its own."""
    config = tmp_path / "appliance.toml"
    config.write_text(f'[cache]\ndir = "{store.directory}"\n')
    settings = load_settings(config, environ={})
    parser, _ = _parser()

    def run(*argv: str, stdin: io.StringIO | None = None) -> tuple[int, str, str]:
        store.close()
        monkeypatch.setattr(sys, "stdin", stdin if stdin is not None else io.StringIO(""))
        args = parser.parse_args(["cache", *argv])
        code = args.handler(settings, args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_json_output_of_reading_commands(cli: Any, aged: dict[str, CacheItem], tmp_path: Path) -> None:
    code, out, _ = cli("stats", "--json")
    assert code == 0 and json.loads(out)["items"] == 5
    code, out, _ = cli("list", "--json", "--sort", "hits", "--limit", "2", "--no-loop")
    body = json.loads(out)
    assert code == 0 and [i["hits"] for i in body["items"]] == [9, 5]
    code, out, _ = cli("show", aged["days"].key, "--json")
    assert code == 0 and json.loads(out)["item"]["model"] == "other"
    code, out, _ = cli("export", aged["days"].key, str(tmp_path / "ocean.wav"), "--json")
    assert code == 0 and (tmp_path / "ocean.json").is_file()
    code, out, err = cli("show", new_item_key())
    assert code == 1 and "not_found" in err


def test_cli_plain_text_when_piped(cli: Any, aged: dict[str, CacheItem]) -> None:
    code, out, _ = cli("list", "--prompt", "wind")
    assert code == 0 and aged["weeks"].key in out and "1 of 1 matching items (5 in the cache)" in out
    code, out, _ = cli("stats")
    assert code == 0 and "items: 5" in out and "hit rate: 0.75" in out
    code, out, _ = cli("clean", "--older-than", "7", "--dry-run")
    assert code == 0 and "would remove: 2 items, 900 bytes" in out and "old clock ticking" in out


def test_cli_rich_tables_on_a_terminal(cli: Any, aged: dict[str, CacheItem],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    for argv in (["stats"], ["list"], ["show", aged["fresh"].key], ["duplicates"],
                 ["clean", "--older-than", "7", "--dry-run"]):
        code, out, _ = cli(*argv)
        assert code == 0 and out.strip()


def test_cli_destructive_commands_with_and_without_dry_run(
    cli: Any, store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    code, out, _ = cli("remove-pattern", "TREES", "--case-sensitive", "--json")
    assert code == 0 and json.loads(out)["removed_count"] == 0
    code, out, _ = cli("remove-pattern", "trees", "--dry-run", "--json")
    assert json.loads(out)["removed"] == [aged["weeks"].key] and count(store.directory) == 5
    code, out, _ = cli("remove-pattern", "trees", "--json")
    body = json.loads(out)
    assert code == 0 and body["dry_run"] is False and body["after_items"] == 4
    code, out, _ = cli("clean", "--older-than", "30", "--by", "last-used", "--json")
    assert code == 0 and json.loads(out)["removed"] == [aged["ancient"].key]
    code, out, _ = cli("duplicates", "--remove", "--json")
    assert code == 0 and json.loads(out)["removal"]["removed_count"] == 0
    code, out, err = cli("remove-pattern", "(a")
    assert code == 2 and "invalid_request" in err and "pattern" in err
    assert count(store.directory) == 3


def test_cli_clear_refuses_without_yes_when_not_on_a_terminal(
    cli: Any, store: CacheStore, aged: dict[str, CacheItem],
) -> None:
    code, out, err = cli("clear")
    assert code == 2 and "--yes" in err and count(store.directory) == 5
    code, out, _ = cli("clear", "--json")
    assert code == 2 and json.loads(out)["code"] == "confirmation_required"
    code, out, _ = cli("clear", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["removed_count"] == 5 and count(store.directory) == 5
    code, out, _ = cli("clear", "--yes", "--json")
    assert code == 0 and json.loads(out)["after_items"] == 0 and count(store.directory) == 0


def test_cli_clear_asks_on_a_terminal(cli: Any, store: CacheStore, aged: dict[str, CacheItem]) -> None:
    code, _, err = cli("clear", stdin=_Terminal("n\n"))
    assert code == 1 and "Remove 5 items (1500 bytes)? [y/N]" in err and count(store.directory) == 5
    code, out, err = cli("clear", "--json", stdin=_Terminal("y\n"))
    assert code == 0 and "Remove 5 items" in err and json.loads(out)["removed_count"] == 5
    assert count(store.directory) == 0


# --------------------------------------------------------------------------------------
# The real command line (needs appliance.cli to call add_cache_commands)
# --------------------------------------------------------------------------------------


def _appliance(
    *argv: str, cwd: Path, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run([sys.executable, "-m", "appliance", *argv], cwd=cwd, env=env, stdin=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def cli_config(tmp_path: Path, store: CacheStore) -> Path:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[cache]\ndir = "{store.directory}"\n')
    return config


def test_command_line_json_end_to_end(
    cli_config: Path, store: CacheStore, aged: dict[str, CacheItem], tmp_path: Path,
) -> None:
    def run(*argv: str) -> dict[str, Any]:
        done = _appliance("cache", *argv, "--json", "--config", str(cli_config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    assert run("stats")["items"] == 5
    assert run("list", "--sort", "size", "--limit", "1")["items"][0]["key"] == aged["ancient"].key
    preview = run("remove-pattern", "clock", "--dry-run")
    assert preview["dry_run"] is True and preview["removed_count"] == 1 and store.totals().items == 5
    removed = run("remove-pattern", "clock")
    assert (removed["before_items"], removed["after_items"], removed["freed_bytes"]) == (5, 4, 500)
    assert store.totals().items == 4  # this process sees the other process's delete


def test_command_line_clear_needs_yes_when_piped(
    cli_config: Path, store: CacheStore, aged: dict[str, CacheItem], tmp_path: Path,
) -> None:
    refused = _appliance("cache", "clear", "--config", str(cli_config), cwd=tmp_path)
    assert refused.returncode == 2 and "--yes" in refused.stderr and store.totals().items == 5
    done = _appliance("cache", "clear", "--yes", "--json", "--config", str(cli_config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_count"] == 5 and store.totals().items == 0
