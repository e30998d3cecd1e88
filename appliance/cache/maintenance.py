"""Cache maintenance: statistics, listings and the operations that remove items.

Every function here works on an open store (:class:`appliance.cache.contract.Store`) and
returns a report dataclass with ``to_dict()``; nothing prints and nothing knows whether the
caller is the CLI or an MQTT admin topic (:mod:`appliance.admin` dispatches both to these functions).

Removal always goes through :meth:`Store.delete` with every chosen key in one call, so
the items go in one LMDB transaction and the store's generation counter tells the running
service that the cache changed. Items are chosen from one snapshot (one read transaction);
an item the service adds after that snapshot is never removed by the operation that was
already running, which is what an operator expects from "remove what I saw".

Regular expressions typed by an operator are run with the ``regex`` package, which can stop
a match after a time limit: a pattern like ``(a|aa)+$`` backtracks exponentially, and on the
supervisor's admin thread it would stall the whole service. Patterns are also bounded in
length and in counted repetition (``(a{1000}){1000}`` takes seconds just to compile).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import regex

from appliance.cache.contract import Store
from appliance.cache.keys import normalise_prompt
from appliance.cache.store import CacheItem, write_file_durably
from appliance.errors import InvalidRequest

__all__ = [
    "AGE_BUCKETS",
    "DUPLICATE_DURATION_TOLERANCE_S",
    "PATTERN_MATCH_TIMEOUT_S",
    "PATTERN_MAX_CHARS",
    "PATTERN_TOTAL_TIMEOUT_S",
    "REMOVED_LIST_CAP",
    "SORT_FIELDS",
    "DuplicateGroup",
    "DuplicateMember",
    "DuplicatesReport",
    "ExportReport",
    "ItemFilter",
    "ItemSummary",
    "ListReport",
    "PromptMatcher",
    "RemovalReport",
    "ShowReport",
    "StatsReport",
    "clean",
    "clear",
    "compile_pattern",
    "duplicates",
    "export",
    "list_items",
    "remove_pattern",
    "show",
    "stats",
]

SortField = Literal["time", "hits", "size", "clap_similarity", "last_hit"]
SORT_FIELDS: tuple[str, ...] = ("time", "hits", "size", "clap_similarity", "last_hit")
CleanBasis = Literal["created", "last_used"]
DuplicateBasis = Literal["prompt", "audio", "both"]

#: Key lists in removal reports stop here (``removed_count`` is always the full number), so
#: that a reply to ``clear`` on a 10 000-item cache still fits one MQTT message.
REMOVED_LIST_CAP = 100
#: Longest regular expression accepted from an operator.
PATTERN_MAX_CHARS = 200
#: Time limit for one prompt; a pattern that needs longer is refused as a whole.
PATTERN_MATCH_TIMEOUT_S = 0.25
#: Time limit for matching one pattern against every prompt in the cache.
PATTERN_TOTAL_TIMEOUT_S = 5.0
#: Bounds on counted repetition ``{n,m}``: largest n or m, and largest product over the pattern.
PATTERN_MAX_REPEAT = 1000
PATTERN_MAX_REPEAT_PRODUCT = 10_000
#: Two clips are interchangeable only if their lengths differ by at most this much.
DUPLICATE_DURATION_TOLERANCE_S = 0.5
#: Age buckets of ``stats``: label and upper bound in seconds (by generation time).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1h", 3600.0),
    ("<1d", 86_400.0),
    ("<7d", 7 * 86_400.0),
    ("<30d", 30 * 86_400.0),
    ("older", math.inf),
)

_DAY_S = 86_400.0
_BLOCK_ROWS = 512  # rows of the similarity matrix computed at once in ``duplicates``


class _Report:
    """Reports are plain dataclasses; ``to_dict`` is what the CLI and MQTT replies print."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(cast(Any, self))
        return data


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


@dataclass
class ItemSummary(_Report):
    """One line of a listing."""

    key: str
    prompt: str
    model: str
    duration_s: float
    is_loop: bool
    clap_similarity: float | None
    hits: int
    audio_bytes: int
    generation_timestamp: float
    last_hit_timestamp: float | None
    age_s: float

    @classmethod
    def of(cls, item: CacheItem, now: float) -> ItemSummary:
        return cls(
            key=item.key, prompt=item.prompt, model=item.model, duration_s=item.duration_s,
            is_loop=item.is_loop, clap_similarity=item.clap_similarity, hits=item.hits,
            audio_bytes=item.audio_bytes, generation_timestamp=item.generation_timestamp,
            last_hit_timestamp=item.last_hit_timestamp,
            age_s=round(max(0.0, now - item.generation_timestamp), 3),
        )


@dataclass
class HitStats(_Report):
    """Hit counts of the items now in the cache.

    ``hit_rate = total_hits / (total_hits + items)``: every item was one miss (the request
    that generated it) and each of its hits one request served from the cache, so this is
    the share of requests answered from the cache, counted over the items still stored
    (evicted items and generations below ``tau_accept_new`` are not in it; Prometheus has
    the service-wide rate).
    """

    total_hits: int
    items_hit: int
    items_never_hit: int
    hit_rate: float | None
    last_hit_timestamp: float | None


@dataclass
class QualityStats(_Report):
    """Distribution of the stored CLAP scores (``unscored``: items without one)."""

    scored: int
    unscored: int
    min: float | None = None
    p10: float | None = None
    p25: float | None = None
    median: float | None = None
    p75: float | None = None
    p90: float | None = None
    max: float | None = None
    mean: float | None = None


@dataclass
class TopPrompt(_Report):
    key: str
    prompt: str
    hits: int
    last_hit_timestamp: float | None


@dataclass
class StatsReport(_Report):
    items: int
    bytes: int
    generation: int
    age_buckets: dict[str, int]
    oldest_timestamp: float | None
    newest_timestamp: float | None
    hits: HitStats
    quality: QualityStats
    embedder: dict[str, Any] | None
    items_with_prompt_vector: int
    items_with_clap_vector: int
    models: dict[str, int]
    loops: int
    top_prompts: list[TopPrompt]


@dataclass
class ListReport(_Report):
    sort: str
    descending: bool
    limit: int | None
    total_items: int
    matched: int
    returned: int
    items: list[ItemSummary]


@dataclass
class RemovedItem(_Report):
    key: str
    prompt: str
    audio_bytes: int
    generation_timestamp: float


@dataclass
class RemovalReport(_Report):
    """Before/after numbers of a destructive operation (or of its dry run).

    ``removed`` and ``removed_items`` (the same keys with prompt and size, for people) stop
    at :data:`REMOVED_LIST_CAP` entries; ``removed_count`` and ``freed_bytes`` are the whole
    numbers. After a real run ``after_*`` are read back from the store, so they also show
    what the service added or evicted meanwhile; after a dry run they are the prediction.
    """

    operation: str
    dry_run: bool
    criteria: dict[str, Any]
    before_items: int
    before_bytes: int
    after_items: int
    after_bytes: int
    removed_count: int
    freed_bytes: int
    removed: list[str]
    removed_truncated: bool
    removed_items: list[RemovedItem]


@dataclass
class DuplicateMember(_Report):
    """An item that the group's kept item can stand in for, and why."""

    key: str
    prompt: str
    clap_similarity: float | None
    hits: int
    generation_timestamp: float
    duration_s: float
    audio_bytes: int
    prompt_similarity: float | None
    audio_similarity: float | None
    reasons: list[str]


@dataclass
class DuplicateGroup(_Report):
    keep: ItemSummary
    duplicates: list[DuplicateMember]


@dataclass
class DuplicatesReport(_Report):
    by: str
    threshold: float
    audio_threshold: float
    group_count: int
    duplicate_count: int
    duplicate_bytes: int
    groups: list[DuplicateGroup]
    groups_truncated: bool
    removal: RemovalReport | None


@dataclass
class VectorInfo(_Report):
    present: bool
    dimension: int | None = None
    norm: float | None = None


@dataclass
class ShowReport(_Report):
    item: dict[str, Any]
    age_s: float
    audio_path: str
    audio_exists: bool
    audio_file_bytes: int | None
    audio_size_matches: bool
    exact_index_points_here: bool
    prompt_vector: VectorInfo
    clap_vector: VectorInfo


@dataclass
class ExportReport(_Report):
    key: str
    audio_path: str
    metadata_path: str
    audio_bytes: int


# --------------------------------------------------------------------------------------
# Regular expressions from operators
# --------------------------------------------------------------------------------------

_COUNTED = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def compile_pattern(pattern: str, *, ignore_case: bool = True) -> Any:
    """Compile an operator's regex, refusing ones that are too long or too costly to build.

    Raises :class:`InvalidRequest` with the reason; matching is bounded separately
    (:class:`PromptMatcher`).
    """
    if not pattern:
        raise InvalidRequest("pattern: must not be empty (use 'clear' to remove everything)")
    if len(pattern) > PATTERN_MAX_CHARS:
        raise InvalidRequest(
            f"pattern: {len(pattern)} characters, at most {PATTERN_MAX_CHARS} are allowed"
        )
    product = 1
    for match in _COUNTED.finditer(pattern):
        bounds = [int(b) for b in match.groups() if b]
        if not bounds:
            continue
        largest = max(bounds)
        if largest > PATTERN_MAX_REPEAT:
            raise InvalidRequest(
                f"pattern: repetition {match.group(0)} is above the limit of {PATTERN_MAX_REPEAT}"
            )
        product *= max(largest, 1)
        if product > PATTERN_MAX_REPEAT_PRODUCT:
            raise InvalidRequest(
                "pattern: counted repetitions multiply to more than "
                f"{PATTERN_MAX_REPEAT_PRODUCT}; simplify the pattern"
            )
    flags = regex.VERSION0 | (regex.IGNORECASE if ignore_case else 0)
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidRequest(f"pattern: not a valid regular expression: {exc}") from exc


class PromptMatcher:
    """``regex.search`` with a time limit per prompt and one for the whole run.

    A pattern that hits either limit is refused as a whole (:class:`InvalidRequest`), never
    applied to the prompts it happened to finish: removing "whatever matched in time"
    would be a different operation every run.
    """

    def __init__(
        self, pattern: str, *, ignore_case: bool = True,
        match_timeout_s: float = PATTERN_MATCH_TIMEOUT_S,
        total_timeout_s: float = PATTERN_TOTAL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pattern = pattern
        self._compiled = compile_pattern(pattern, ignore_case=ignore_case)
        self._match_timeout_s = match_timeout_s
        self._clock = clock
        self._deadline = clock() + total_timeout_s
        self._total_timeout_s = total_timeout_s

    def search(self, text: str) -> bool:
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise self._too_slow(f"all prompts took longer than {self._total_timeout_s:g} s")
        limit = min(self._match_timeout_s, remaining)
        try:
            return self._compiled.search(text, timeout=limit) is not None
        except TimeoutError as exc:
            raise self._too_slow(
                f"one prompt took longer than {limit:.2g} s (catastrophic backtracking?)"
            ) from exc

    def _too_slow(self, why: str) -> InvalidRequest:
        return InvalidRequest(
            f"pattern {self.pattern!r} is too expensive to match: {why}; "
            "simplify it (avoid nested quantifiers like (a+)+ or (a|aa)+)"
        )


# --------------------------------------------------------------------------------------
# Reading: stats, list, show, export
# --------------------------------------------------------------------------------------


def stats(store: Store, *, now: float | None = None, top: int = 10) -> StatsReport:
    """Counts, bytes, ages, hits, quality and embedder of the cache, from one snapshot."""
    now = time.time() if now is None else now
    items = store.items()
    buckets = dict.fromkeys((label for label, _ in AGE_BUCKETS), 0)
    for item in items:
        age = max(0.0, now - item.generation_timestamp)
        for label, bound in AGE_BUCKETS:
            if age < bound:
                buckets[label] += 1
                break
    total_hits = sum(item.hits for item in items)
    items_hit = sum(1 for item in items if item.hits > 0)
    last_hits = [item.last_hit_timestamp for item in items if item.last_hit_timestamp is not None]
    hits = HitStats(
        total_hits=total_hits, items_hit=items_hit, items_never_hit=len(items) - items_hit,
        hit_rate=round(total_hits / (total_hits + len(items)), 4) if items else None,
        last_hit_timestamp=max(last_hits) if last_hits else None,
    )
    scores = np.array([i.clap_similarity for i in items if i.clap_similarity is not None], dtype=np.float64)
    quality = QualityStats(scored=int(scores.size), unscored=len(items) - int(scores.size))
    if scores.size:
        p10, p25, p50, p75, p90 = (float(v) for v in np.quantile(scores, [0.1, 0.25, 0.5, 0.75, 0.9]))
        quality = QualityStats(
            scored=quality.scored, unscored=quality.unscored, min=_r(float(scores.min())),
            p10=_r(p10), p25=_r(p25), median=_r(p50), p75=_r(p75), p90=_r(p90),
            max=_r(float(scores.max())), mean=_r(float(scores.mean())),
        )
    keys = {item.key for item in items}
    vector_keys, _ = store.prompt_vectors()
    info = store.embedder_info()
    models: dict[str, int] = {}
    for item in items:
        models[item.model] = models.get(item.model, 0) + 1
    ranked = sorted(
        (i for i in items if i.hits > 0),
        key=lambda i: (-i.hits, -(i.last_hit_timestamp or 0.0), i.key),
    )
    timestamps = [item.generation_timestamp for item in items]
    return StatsReport(
        items=len(items),
        bytes=sum(item.audio_bytes for item in items),
        generation=store.generation(),
        age_buckets=buckets,
        oldest_timestamp=min(timestamps) if timestamps else None,
        newest_timestamp=max(timestamps) if timestamps else None,
        hits=hits,
        quality=quality,
        embedder={"name": info.name, "dimension": info.dimension} if info else None,
        items_with_prompt_vector=sum(1 for key in vector_keys if key in keys),
        items_with_clap_vector=sum(1 for item in items if store.clap_vector(item.key) is not None),
        models=dict(sorted(models.items())),
        loops=sum(1 for item in items if item.is_loop),
        top_prompts=[TopPrompt(i.key, i.prompt, i.hits, i.last_hit_timestamp) for i in ranked[:top]],
    )


@dataclass(frozen=True)
class ItemFilter:
    """Which items a listing shows; every set field must hold.

    ``prompt`` is a case-insensitive substring, ``pattern`` a regular expression searched in
    the prompt (bounded like ``remove-pattern``); ``min_clap``/``max_clap`` leave out items
    without a CLAP score.
    """

    prompt: str | None = None
    pattern: str | None = None
    ignore_case: bool = True
    model: str | None = None
    loop: bool | None = None
    min_clap: float | None = None
    max_clap: float | None = None

    def selector(self) -> Callable[[CacheItem], bool]:
        matcher = PromptMatcher(self.pattern, ignore_case=self.ignore_case) if self.pattern else None
        needle = self.prompt.casefold() if self.prompt else None

        def keep(item: CacheItem) -> bool:
            if needle is not None and needle not in item.prompt.casefold():
                return False
            if self.model is not None and item.model != self.model:
                return False
            if self.loop is not None and item.is_loop != self.loop:
                return False
            score = item.clap_similarity
            if self.min_clap is not None and (score is None or score < self.min_clap):
                return False
            if self.max_clap is not None and (score is None or score > self.max_clap):
                return False
            return matcher is None or matcher.search(item.prompt)

        return keep


_SORT_VALUE: dict[str, Callable[[CacheItem], float | None]] = {
    "time": lambda i: i.generation_timestamp,
    "hits": lambda i: float(i.hits),
    "size": lambda i: float(i.audio_bytes),
    "clap_similarity": lambda i: i.clap_similarity,
    "last_hit": lambda i: i.last_hit_timestamp,
}


def list_items(
    store: Store, *, sort: SortField = "time", descending: bool = True,
    limit: int | None = 50, filters: ItemFilter | None = None, now: float | None = None,
) -> ListReport:
    """Items matching ``filters``, sorted; items without the sort value (no CLAP score,
    never hit) come last in either direction. ``limit=None`` lists all."""
    if sort not in _SORT_VALUE:
        raise InvalidRequest(f"sort: must be one of {', '.join(SORT_FIELDS)}, not {sort!r}")
    if limit is not None and limit < 1:
        raise InvalidRequest("limit: must be at least 1")
    now = time.time() if now is None else now
    items = store.items()
    keep = filters.selector() if filters is not None else None
    selected = [item for item in items if keep(item)] if keep is not None else items
    value = _SORT_VALUE[sort]

    def order(item: CacheItem) -> tuple[bool, float, str]:
        v = value(item)
        return (v is None, 0.0 if v is None else (-v if descending else v), item.key)

    ordered = sorted(selected, key=order)
    shown = ordered if limit is None else ordered[:limit]
    return ListReport(
        sort=sort, descending=descending, limit=limit, total_items=len(items), matched=len(selected),
        returned=len(shown), items=[ItemSummary.of(item, now) for item in shown],
    )


def show(store: Store, key: str, *, now: float | None = None) -> ShowReport:
    """Everything known about one item, including whether its file and vectors exist."""
    now = time.time() if now is None else now
    item = store.get(key)
    path = store.audio_path(item.key, item.audio_format)
    try:
        size: int | None = path.stat().st_size
    except FileNotFoundError:
        size = None
    target = store.lookup_exact(item.exact_key)
    return ShowReport(
        item=asdict(item),
        age_s=round(max(0.0, now - item.generation_timestamp), 3),
        audio_path=str(path),
        audio_exists=size is not None,
        audio_file_bytes=size,
        audio_size_matches=size == item.audio_bytes,
        exact_index_points_here=target is not None and target.key == item.key,
        prompt_vector=_vector_info(store.prompt_vector(item.key)),
        clap_vector=_vector_info(store.clap_vector(item.key)),
    )


def export(store: Store, key: str, out_path: Path, *, overwrite: bool = False) -> ExportReport:
    """Copy an item's audio to ``out_path`` and its metadata to a JSON file beside it.

    A directory as ``out_path`` gets ``<key>.<format>``; the sidecar is the audio path with
    the suffix ``.json``. Existing files are kept unless ``overwrite``. Both files are
    written to a temporary name and renamed, so a reader never sees half a file.
    """
    item = store.get(key)
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / f"{item.key}.{item.audio_format}"
    meta_path = out_path.with_suffix(".json")
    if meta_path == out_path:
        raise InvalidRequest(f"out: {out_path} ends in .json; name the audio file, e.g. {key}.wav")
    if not out_path.parent.is_dir():
        raise InvalidRequest(f"out: directory {out_path.parent} does not exist")
    if not overwrite:
        for path in (out_path, meta_path):
            if path.exists():
                raise InvalidRequest(f"out: {path} exists (pass overwrite to replace it)")
    audio = store.read_audio(item)
    metadata = {**asdict(item), "exported_from": str(store.directory), "audio_file": out_path.name}
    write_file_durably(out_path, audio)
    write_file_durably(meta_path, (json.dumps(metadata, indent=2, ensure_ascii=False) + "\n").encode())
    return ExportReport(key=item.key, audio_path=str(out_path), metadata_path=str(meta_path),
                        audio_bytes=len(audio))


# --------------------------------------------------------------------------------------
# Removing: clean, clear, remove-pattern, duplicates
# --------------------------------------------------------------------------------------


def clean(
    store: Store, *, older_than_days: float, dry_run: bool = False,
    by: CleanBasis = "created", now: float | None = None,
) -> RemovalReport:
    """Remove items older than ``older_than_days``.

    ``by="created"`` ages an item from its generation; ``by="last_used"`` from its last hit
    (its generation when it was never hit), which keeps old clips that are still in use.
    """
    if not (isinstance(older_than_days, int | float) and math.isfinite(older_than_days)) \
            or older_than_days <= 0:
        raise InvalidRequest("older_than_days: must be a number of days above 0 (use 'clear' for all)")
    if by not in ("created", "last_used"):
        raise InvalidRequest(f"by: must be 'created' or 'last_used', not {by!r}")
    now = time.time() if now is None else now
    cutoff = now - older_than_days * _DAY_S
    items = store.items()

    def reference(item: CacheItem) -> float:
        if by == "last_used":
            return max(item.generation_timestamp, item.last_hit_timestamp or 0.0)
        return item.generation_timestamp

    victims = [item for item in items if reference(item) < cutoff]
    criteria = {"older_than_days": older_than_days, "by": by, "cutoff_timestamp": round(cutoff, 3)}
    return _remove(store, "clean", items, victims, dry_run=dry_run, criteria=criteria)


def clear(store: Store, *, dry_run: bool = False) -> RemovalReport:
    """Remove every item present now (items added while it runs stay)."""
    items = store.items()
    return _remove(store, "clear", items, items, dry_run=dry_run, criteria={})


def remove_pattern(
    store: Store, *, pattern: str, dry_run: bool = False, ignore_case: bool = True,
) -> RemovalReport:
    """Remove items whose prompt contains a match of ``pattern`` (``regex.search``).

    The pattern is refused (:class:`InvalidRequest`, nothing removed) when it is invalid, too
    long, or too slow on any prompt: see :class:`PromptMatcher`.
    """
    matcher = PromptMatcher(pattern, ignore_case=ignore_case)
    items = store.items()
    victims = [item for item in items if matcher.search(item.prompt)]
    criteria = {"pattern": pattern, "ignore_case": ignore_case}
    return _remove(store, "remove-pattern", items, victims, dry_run=dry_run, criteria=criteria)


def keep_rank(item: CacheItem) -> tuple[float, int, float, str]:
    """Sort key, best first: highest CLAP score (unscored last), most hits, newest."""
    score = item.clap_similarity if item.clap_similarity is not None else -math.inf
    return (-score, -item.hits, -item.generation_timestamp, item.key)


def duplicates(
    store: Store, *, threshold: float = 0.95, audio_threshold: float | None = None,
    by: DuplicateBasis = "prompt", remove: bool = False, dry_run: bool = False, limit: int = 100,
    now: float | None = None,
) -> DuplicatesReport:
    """Find groups of interchangeable items and optionally keep only the best of each.

    Two items are compatible when they have the same model and loop flag and their lengths
    differ by at most :data:`DUPLICATE_DURATION_TOLERANCE_S`. Compatible items are
    duplicates when (``by="prompt"``) their normalised prompts are equal or their prompt
    embeddings have cosine ≥ ``threshold``, (``by="audio"``) their CLAP audio embeddings
    have cosine ≥ ``audio_threshold`` (default: ``threshold``), or (``by="both"``) either.
    Audio similarity means something only with real CLAP weights: the random-weight demo
    scorer can make unrelated clips look alike, which is why ``prompt`` is the default.

    Groups are built around their best item (:func:`keep_rank`): the best item not yet in
    a group takes every unassigned item that is a duplicate *of it*, so each removed item
    was compared with the item that replaces it (no chains of "similar to similar").
    ``limit`` caps the groups listed in the report, not the groups removed.
    """
    if not 0.0 < threshold <= 1.0:
        raise InvalidRequest("threshold: must be above 0 and at most 1")
    audio_t = threshold if audio_threshold is None else audio_threshold
    if not 0.0 < audio_t <= 1.0:
        raise InvalidRequest("audio_threshold: must be above 0 and at most 1")
    if by not in ("prompt", "audio", "both"):
        raise InvalidRequest(f"by: must be 'prompt', 'audio' or 'both', not {by!r}")
    if limit < 0:
        raise InvalidRequest("limit: must not be negative")

    now = time.time() if now is None else now
    items = store.items()
    use_prompt, use_audio = by in ("prompt", "both"), by in ("audio", "both")
    prompt_vecs = _prompt_vector_map(store) if use_prompt else {}
    clap_vecs: dict[str, npt.NDArray[np.float32]] = {}
    if use_audio:
        for item in items:
            vector = store.clap_vector(item.key)
            if vector is not None and vector.size:
                clap_vecs[item.key] = vector

    classes: dict[tuple[str, bool], list[CacheItem]] = {}
    for item in items:
        classes.setdefault((item.model, item.is_loop), []).append(item)

    groups: list[DuplicateGroup] = []
    for members in classes.values():
        members.sort(key=keep_rank)
        groups.extend(_group_class(
            members, prompt_vecs, clap_vecs, threshold=threshold, audio_threshold=audio_t,
            use_prompt=use_prompt, use_audio=use_audio, now=now,
        ))
    groups.sort(key=lambda g: (-len(g.duplicates), g.keep.key))
    doomed = [d for g in groups for d in g.duplicates]
    removal = None
    if remove:
        by_key = {item.key: item for item in items}
        victims = [by_key[d.key] for d in doomed]
        criteria = {"by": by, "threshold": threshold, "audio_threshold": audio_t}
        removal = _remove(store, "duplicates", items, victims, dry_run=dry_run, criteria=criteria)
    return DuplicatesReport(
        by=by, threshold=threshold, audio_threshold=audio_t, group_count=len(groups),
        duplicate_count=len(doomed), duplicate_bytes=sum(d.audio_bytes for d in doomed),
        groups=groups[:limit], groups_truncated=len(groups) > limit, removal=removal,
    )


def _group_class(
    members: Sequence[CacheItem], prompt_vecs: dict[str, npt.NDArray[np.float32]],
    clap_vecs: dict[str, npt.NDArray[np.float32]], *, threshold: float, audio_threshold: float,
    use_prompt: bool, use_audio: bool, now: float,
) -> list[DuplicateGroup]:
    """Leader grouping within one (model, loop) class; ``members`` sorted best first."""
    count = len(members)
    if count < 2:
        return []
    neighbours: list[set[int]] = [set() for _ in range(count)]
    prompt_matrix = _unit_rows([prompt_vecs.get(item.key) for item in members]) if use_prompt else None
    if use_prompt:
        by_text: dict[str, list[int]] = {}
        for index, item in enumerate(members):
            by_text.setdefault(normalise_prompt(item.prompt), []).append(index)
        for same in by_text.values():
            for index in same:
                neighbours[index].update(same)
        _add_similar(neighbours, prompt_matrix, threshold)
    clap_matrix = _unit_rows([clap_vecs.get(item.key) for item in members]) if use_audio else None
    if clap_matrix is not None:
        _add_similar(neighbours, clap_matrix, audio_threshold)

    assigned = [False] * count
    groups: list[DuplicateGroup] = []
    for leader in range(count):
        if assigned[leader]:
            continue
        assigned[leader] = True
        keep = members[leader]
        chosen = sorted(
            j for j in neighbours[leader]
            if not assigned[j]
            and abs(members[j].duration_s - keep.duration_s) <= DUPLICATE_DURATION_TOLERANCE_S
        )
        if not chosen:
            continue
        group_members = []
        for j in chosen:
            assigned[j] = True
            other = members[j]
            p_sim = _pair_similarity(prompt_matrix, leader, j)
            a_sim = _pair_similarity(clap_matrix, leader, j)
            reasons = []
            if use_prompt and normalise_prompt(other.prompt) == normalise_prompt(keep.prompt):
                reasons.append("same_prompt")
            if use_prompt and p_sim is not None and p_sim >= threshold:
                reasons.append("prompt")
            if use_audio and a_sim is not None and a_sim >= audio_threshold:
                reasons.append("audio")
            group_members.append(DuplicateMember(
                key=other.key, prompt=other.prompt, clap_similarity=other.clap_similarity,
                hits=other.hits, generation_timestamp=other.generation_timestamp,
                duration_s=other.duration_s, audio_bytes=other.audio_bytes,
                prompt_similarity=p_sim, audio_similarity=a_sim, reasons=reasons,
            ))
        groups.append(DuplicateGroup(keep=ItemSummary.of(keep, now),
                                     duplicates=group_members))
    return groups


def _prompt_vector_map(store: Store) -> dict[str, npt.NDArray[np.float32]]:
    keys, matrix = store.prompt_vectors()
    return {key: matrix[row] for row, key in enumerate(keys)}


def _unit_rows(
    vectors: Sequence[npt.NDArray[np.float32] | None],
) -> npt.NDArray[np.float32] | None:
    """Stack vectors as unit rows; a missing one (or one of another size) is a zero row,
    which matches nothing. ``None`` when no vector is present at all."""
    dims = [v.size for v in vectors if v is not None and v.size]
    if not dims:
        return None
    dim = max(set(dims), key=dims.count)
    matrix = np.zeros((len(vectors), dim), dtype=np.float32)
    for row, vector in enumerate(vectors):
        if vector is not None and vector.size == dim:
            norm = float(np.linalg.norm(vector))
            if norm > 0 and math.isfinite(norm):
                matrix[row] = vector / norm
    return matrix


def _add_similar(
    neighbours: list[set[int]], matrix: npt.NDArray[np.float32] | None, threshold: float,
) -> None:
    """Add an edge for every pair with cosine ≥ threshold, a block of rows at a time so
    that 10 000 items never need a 10 000 × 10 000 matrix at once."""
    if matrix is None:
        return
    # float32 rounding puts a vector's cosine with itself at 0.99999994: allow for it
    limit = threshold - 1e-5
    for start in range(0, matrix.shape[0], _BLOCK_ROWS):
        block = matrix[start:start + _BLOCK_ROWS] @ matrix.T
        rows, cols = np.nonzero(block >= limit)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + row != col:
                neighbours[start + row].add(col)


def _pair_similarity(matrix: npt.NDArray[np.float32] | None, a: int, b: int) -> float | None:
    if matrix is None or not matrix[a].any() or not matrix[b].any():
        return None
    return _r(min(1.0, float(matrix[a] @ matrix[b])))


def _remove(
    store: Store, operation: str, snapshot: Sequence[CacheItem], victims: Iterable[CacheItem],
    *, dry_run: bool, criteria: dict[str, Any],
) -> RemovalReport:
    """Delete ``victims`` in one store transaction (unless a dry run) and report."""
    chosen = list({item.key: item for item in victims}.values())
    before_items = len(snapshot)
    before_bytes = sum(item.audio_bytes for item in snapshot)
    planned_bytes = sum(item.audio_bytes for item in chosen)
    if dry_run:
        freed = planned_bytes
        after_items, after_bytes = before_items - len(chosen), before_bytes - planned_bytes
    else:
        freed = store.delete([item.key for item in chosen]) if chosen else 0
        totals = store.totals()
        after_items, after_bytes = totals.items, totals.bytes
    listed = chosen[:REMOVED_LIST_CAP]
    return RemovalReport(
        operation=operation, dry_run=dry_run, criteria=criteria,
        before_items=before_items, before_bytes=before_bytes,
        after_items=after_items, after_bytes=after_bytes,
        removed_count=len(chosen), freed_bytes=freed,
        removed=[item.key for item in listed],
        removed_truncated=len(chosen) > len(listed),
        removed_items=[
            RemovedItem(item.key, item.prompt, item.audio_bytes, item.generation_timestamp)
            for item in listed
        ],
    )


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _vector_info(vector: npt.NDArray[np.float32] | None) -> VectorInfo:
    if vector is None or not vector.size:
        return VectorInfo(present=False)
    return VectorInfo(present=True, dimension=int(vector.size), norm=_r(float(np.linalg.norm(vector))))


def _r(value: float) -> float:
    return round(value, 4)
