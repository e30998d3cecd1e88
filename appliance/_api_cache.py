"""``appliance.Cache``: the cache maintenance commands as Python methods.

Every method goes through :class:`appliance.admin.AdminDispatcher`, the dispatcher behind
``appliance cache …`` and the MQTT admin topics, so the three cannot drift apart: the same
validation, the same rules, the same log lines. The dispatcher answers with the JSON-ready
dict that ``--json`` prints; it is read back into the report dataclass it was made from, so
``report.to_dict()`` is that JSON (without its ``command`` field).

Each call opens the configured store (:func:`appliance.cache.backend.open_store`, as the
CLI does), runs, and closes it, which is what makes a call safe while ``appliance serve``
runs: LMDB serialises the writers across processes, PostgreSQL is shared by a fleet by
design, and a removal bumps the store's generation counter so that every running service
drops the removed items from its index without a restart. LMDB must not be opened twice at
once in one process, so calls on one ``Cache`` are serialised by a lock; use one ``Cache``
per directory in a process.
"""

from __future__ import annotations

import builtins
import getpass
import os
import threading
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from pydantic import TypeAdapter

from appliance.admin import AdminDispatcher
from appliance.cache.backend import open_store
from appliance.cache.maintenance import (
    CleanBasis,
    DuplicateBasis,
    DuplicatesReport,
    ExportReport,
    ListReport,
    RemovalReport,
    ShowReport,
    SortField,
    StatsReport,
)
from appliance.config import CacheSettings, load_settings
from appliance.errors import NotFound

__all__ = ["Cache", "ItemFilters"]

_Report = TypeVar("_Report")
_DEFAULT_MAP_SIZE_BYTES = 16 * 1024**3  # cache.map_size_bytes' default: address space, not disk


class ItemFilters(TypedDict, total=False):
    """Filters of :meth:`Cache.list` (all must hold)."""

    prompt: str  # the prompt contains this text, ignoring case
    pattern: str  # the prompt matches this regular expression
    ignore_case: bool  # for ``pattern`` (default True)
    model: str
    loop: bool
    min_clap: float
    max_clap: float


class Cache:
    """The cache of an appliance: its ``cache.dir``, or with ``postgres_dsn`` a fleet's
    shared cache on PostgreSQL (``path`` then holds the clips this machine fetched from it).

    Destructive methods default to a dry run: they report what would go and remove nothing
    until asked (``dry_run=False``, ``confirm=True``). Errors are
    :class:`~appliance.errors.InvalidRequest` (a bad argument or pattern),
    :class:`~appliance.errors.NotFound` (no such item or directory) and
    :class:`~appliance.errors.CacheError` (the store cannot be read or written).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False,
                 map_size_bytes: int = _DEFAULT_MAP_SIZE_BYTES, postgres_dsn: str | None = None) -> None:
        self.path = Path(path)
        if postgres_dsn is None and not create and not (self.path / "index.lmdb").is_dir():
            raise NotFound(f"{self.path} is not a cache directory (no index.lmdb); "
                           "pass create=True to start an empty cache there")
        self._settings = CacheSettings(
            dir=self.path, map_size_bytes=map_size_bytes, backend="postgres" if postgres_dsn else "lmdb",
            postgres_dsn=postgres_dsn or "")
        self._lock = threading.Lock()
        self._client_id = _client_id()

    @classmethod
    def from_config(cls, config: str | os.PathLike[str]) -> Cache:
        """The cache that the appliance configured by this TOML file uses (its
        ``cache.backend``: LMDB, or the fleet's PostgreSQL)."""
        cache = load_settings(Path(config)).cache
        return cls(cache.dir, map_size_bytes=cache.map_size_bytes,
                   postgres_dsn=cache.postgres_dsn if cache.backend == "postgres" else None)

    # -- reading ----------------------------------------------------------------------

    def stats(self, *, top: int = 10) -> StatsReport:
        """Counts, bytes, ages, hits, CLAP quality, and the ``top`` most-hit prompts."""
        return self._call("stats", {"top": top}, StatsReport)

    def list(self, *, sort: SortField = "time", limit: int | None = 50, descending: bool = True,
             **filters: Unpack[ItemFilters]) -> ListReport:
        """Items sorted by ``sort`` (newest, most-hit, largest … first), at most ``limit``
        (None: all), that pass every filter."""
        return self._call("list", {"sort": sort, "limit": limit, "descending": descending, **filters},
                          ListReport)

    def show(self, key: str) -> ShowReport:
        """Everything about one item: metadata, audio file, vectors, exact-index entry."""
        return self._call("show", {"key": key}, ShowReport)

    def export(self, key: str, dest: str | os.PathLike[str], *, overwrite: bool = False) -> ExportReport:
        """Copy an item's audio to ``dest`` (a file, or a directory to put ``<key>.wav`` in)
        with a JSON sidecar of its metadata."""
        out = str(Path(dest).resolve())
        return self._call("export", {"key": key, "out": out, "overwrite": overwrite}, ExportReport)

    # -- removing ---------------------------------------------------------------------

    def clean(self, older_than_days: float, *, by: CleanBasis = "created",
              dry_run: bool = True) -> RemovalReport:
        """Remove items generated (``by="last_used"``: last hit) more than N days ago."""
        args = {"older_than_days": older_than_days, "by": by, "dry_run": dry_run}
        return self._call("clean", args, RemovalReport)

    def duplicates(self, *, remove: bool = False, dry_run: bool = False, threshold: float = 0.95,
                   audio_threshold: float | None = None, by: DuplicateBasis = "prompt",
                   limit: int = 100) -> DuplicatesReport:
        """Groups of near-identical items; ``remove=True`` keeps the best of each group."""
        args = {"remove": remove, "dry_run": dry_run, "threshold": threshold,
                "audio_threshold": audio_threshold, "by": by, "limit": limit}
        return self._call("duplicates", args, DuplicatesReport)

    def remove_pattern(self, pattern: str, *, ignore_case: bool = True,
                       dry_run: bool = True) -> RemovalReport:
        """Remove items whose prompt matches the regular expression ``pattern``."""
        args = {"pattern": pattern, "ignore_case": ignore_case, "dry_run": dry_run}
        return self._call("remove-pattern", args, RemovalReport)

    def clear(self, *, confirm: bool = False) -> RemovalReport:
        """Remove every item, only with ``confirm=True``; otherwise a dry run."""
        return self._call("clear", {"dry_run": not confirm}, RemovalReport)

    # -- the dispatcher ---------------------------------------------------------------

    def _call(self, command: str, args: dict[str, Any], report: builtins.type[_Report]) -> _Report:
        with self._lock:
            store = open_store(self._settings)
            try:
                body = AdminDispatcher(store).dispatch(command, args, source="cli",
                                                       client_id=self._client_id)
            finally:
                store.close()
        return TypeAdapter(report).validate_python(body)


def _client_id() -> str:
    """Who ran a command, for the dispatcher's log lines (``python:<user>``)."""
    try:
        return f"python:{getpass.getuser()}"
    except (KeyError, OSError):
        return "python"
