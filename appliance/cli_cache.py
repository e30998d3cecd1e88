"""``appliance cache …``: the maintenance commands on the command line.

Each subcommand turns its options into the argument names of the admin API and calls
:class:`~appliance.admin.AdminDispatcher` with ``source="cli"``, so the CLI and the MQTT
admin topics cannot drift apart. Output: a rich table on a terminal, plain ``key: value``
lines and space-aligned columns when piped, the dispatcher's dict as JSON with ``--json``.

Exit codes (as in :mod:`appliance.cli`): 0 done, 1 the command failed (missing item, cache
error, ``clear`` answered "no"), 2 bad usage (invalid argument or pattern, ``clear``
without ``--yes`` when not on a terminal).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.admin import AdminDispatcher
from appliance.cache.maintenance import SORT_FIELDS
from appliance.config import Settings
from appliance.errors import ApplianceError, InvalidRequest

Row = Sequence[Any]


def add_cache_commands(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add ``cache`` and its subcommands to the top-level subparsers of ``appliance``.

    ``subparsers`` is what ``parser.add_subparsers()`` returned; ``common_parent`` carries
    ``--config`` and ``--json``.
    """
    cache = subparsers.add_parser("cache", help="inspect and maintain the cache",
                                  description="Inspect and maintain the cache (docs/cache-management.md).")
    commands = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    parents = [common_parent]

    stats = commands.add_parser("stats", parents=parents, help="counts, bytes, ages, hits, quality")
    stats.add_argument("--top", type=int, default=None, help="most-hit prompts to show (default 10)")
    stats.set_defaults(handler=_stats)

    listing = commands.add_parser("list", parents=parents, help="list items, sorted and filtered")
    listing.add_argument("--sort", choices=SORT_FIELDS, default=None, help="default: time")
    listing.add_argument("--ascending", action="store_true", help="smallest/oldest first")
    listing.add_argument("--limit", type=int, default=None, help="at most N items (default 50)")
    listing.add_argument("--all", action="store_true", help="no limit")
    listing.add_argument("--prompt", help="prompt contains this text (case-insensitive)")
    listing.add_argument("--pattern", help="prompt matches this regular expression")
    listing.add_argument("--case-sensitive", action="store_true", help="for --pattern")
    listing.add_argument("--model", help="only items of this model")
    listing.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                         help="only loops (--loop) or only one-shots (--no-loop)")
    listing.add_argument("--min-clap", type=float, help="CLAP score at least this")
    listing.add_argument("--max-clap", type=float, help="CLAP score at most this")
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", parents=parents, help="everything about one item")
    show.add_argument("key")
    show.set_defaults(handler=_show)

    export = commands.add_parser("export", parents=parents,
                                 help="copy an item's audio and a JSON sidecar of its metadata")
    export.add_argument("key")
    export.add_argument("out", type=Path, help="audio file to write, or a directory")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(handler=_export)

    clean = commands.add_parser("clean", parents=parents, help="remove items older than N days")
    clean.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    clean.add_argument("--by", choices=("created", "last-used"), default=None,
                       help="age from generation (default) or from the last hit")
    _add_dry_run(clean)
    clean.set_defaults(handler=_clean)

    clear = commands.add_parser("clear", parents=parents, help="remove every item")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask")
    _add_dry_run(clear)
    clear.set_defaults(handler=_clear)

    dupes = commands.add_parser("duplicates", parents=parents,
                                help="find near-identical items; --remove keeps the best of each group")
    dupes.add_argument("--threshold", type=float, default=None, help="cosine, default 0.95")
    dupes.add_argument("--audio-threshold", type=float, default=None,
                       help="cosine of CLAP audio vectors (default: --threshold)")
    dupes.add_argument("--by", choices=("prompt", "audio", "both"), default=None,
                       help="compare prompts (default), audio, or both")
    dupes.add_argument("--remove", action="store_true", help="remove all but the best of each group")
    dupes.add_argument("--limit", type=int, default=None, help="groups to show (default 100)")
    _add_dry_run(dupes)
    dupes.set_defaults(handler=_duplicates)

    pattern = commands.add_parser("remove-pattern", parents=parents,
                                  help="remove items whose prompt matches a regular expression")
    pattern.add_argument("pattern")
    pattern.add_argument("--case-sensitive", action="store_true")
    _add_dry_run(pattern)
    pattern.set_defaults(handler=_remove_pattern)

    resize = commands.add_parser("resize", parents=parents,
                                 help="change the index's map size, with the appliance stopped")
    resize.add_argument("--map-size-bytes", type=int, required=True, metavar="BYTES",
                        help="new LMDB map size (address space; the file grows only as used)")
    resize.set_defaults(handler=_resize)


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="show what would be removed")


# --------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, args, "stats", _given(top=args.top), _render_stats)


def _list(settings: Settings, args: argparse.Namespace) -> int:
    body = _given(
        sort=args.sort, limit=args.limit, prompt=args.prompt, pattern=args.pattern, model=args.model,
        loop=args.loop, min_clap=args.min_clap, max_clap=args.max_clap,
    )
    if args.ascending:
        body["descending"] = False
    if args.case_sensitive:
        body["ignore_case"] = False
    if args.all:
        body["limit"] = None
    return _run(settings, args, "list", body, _render_list)


def _show(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, args, "show", {"key": args.key}, _render_show)


def _export(settings: Settings, args: argparse.Namespace) -> int:
    body = {"key": args.key, "out": str(args.out.resolve()), "overwrite": args.overwrite}
    return _run(settings, args, "export", body, _render_export)


def _clean(settings: Settings, args: argparse.Namespace) -> int:
    body = _given(older_than_days=args.older_than, by=args.by and args.by.replace("-", "_"))
    return _run(settings, args, "clean", {**body, "dry_run": args.dry_run}, _render_removal)


def _clear(settings: Settings, args: argparse.Namespace) -> int:
    if args.dry_run or args.yes:
        return _run(settings, args, "clear", {"dry_run": args.dry_run}, _render_removal)

    def confirm_then_clear(dispatcher: AdminDispatcher) -> dict[str, Any] | int:
        preview = dispatcher.dispatch("clear", {"dry_run": True}, source="cli", client_id=_client_id())
        count, size = preview["removed_count"], preview["before_bytes"]
        if count == 0:
            return preview
        if not sys.stdin.isatty():
            _error(args, "confirmation_required",
                   f"refusing to remove {count} items ({size} bytes) without --yes: "
                   "not on a terminal, so nobody can confirm (preview with --dry-run)")
            return 2
        sys.stderr.write(f"Remove {count} items ({size} bytes)? [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("aborted: nothing removed", file=sys.stderr)
            return 1
        return dispatcher.dispatch("clear", {"dry_run": False}, source="cli", client_id=_client_id())

    return _with_dispatcher(settings, args, confirm_then_clear, _render_removal)


def _duplicates(settings: Settings, args: argparse.Namespace) -> int:
    body = _given(threshold=args.threshold, audio_threshold=args.audio_threshold, by=args.by,
                  limit=args.limit)
    body.update(remove=args.remove, dry_run=args.dry_run)
    return _run(settings, args, "duplicates", body, _render_duplicates)


def _remove_pattern(settings: Settings, args: argparse.Namespace) -> int:
    body = {"pattern": args.pattern, "ignore_case": not args.case_sensitive, "dry_run": args.dry_run}
    return _run(settings, args, "remove-pattern", body, _render_removal)


Renderer = Callable[[dict[str, Any], "_Out"], None]


def _run(settings: Settings, args: argparse.Namespace, command: str, body: dict[str, Any],
         render: Renderer) -> int:
    def call(dispatcher: AdminDispatcher) -> dict[str, Any] | int:
        return dispatcher.dispatch(command, body, source="cli", client_id=_client_id())

    return _with_dispatcher(settings, args, call, render)


def _with_dispatcher(
    settings: Settings, args: argparse.Namespace,
    call: Callable[[AdminDispatcher], dict[str, Any] | int], render: Renderer,
) -> int:
    """Open the store, run ``call``, close the store, print; errors become exit codes."""
    from appliance.cache.backend import open_store

    try:
        store = open_store(settings.cache)  # LMDB, or the fleet's PostgreSQL: every node's cache
        try:
            result = call(AdminDispatcher(store))
        finally:
            store.close()
    except InvalidRequest as exc:
        _error(args, exc.code, _in_flags(exc.message, args))
        return 2
    except ApplianceError as exc:
        _error(args, exc.code, exc.message)
        return 1
    if isinstance(result, int):
        return result
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        out = _Out(rich=sys.stdout.isatty())
        render(result, out)
        out.flush()
    return 0


def _resize(settings: Settings, args: argparse.Namespace) -> int:
    """Offline only: the map size may not change while any process has the cache open."""
    from appliance.cache.store import resize_map
    from appliance.instance import InstanceLock

    try:
        lock = InstanceLock.acquire(settings.cache.dir.parent)  # refused while the service runs
        try:
            old = resize_map(settings.cache.dir, args.map_size_bytes)
        finally:
            lock.release()
    except ApplianceError as exc:
        _error(args, exc.code, exc.message)
        return 1
    result = {"map_size_bytes_before": old, "map_size_bytes": args.map_size_bytes}
    print(json.dumps(result) if args.json else f"map size {old} -> {args.map_size_bytes} bytes")
    return 0


# the admin API's argument names (what its messages name) and the options that set them here;
# positionals (key, out, pattern of remove-pattern) keep their names, as `--help` shows them
_FLAGS = {"older_than_days": "--older-than", "overwrite": "--overwrite", "threshold": "--threshold",
          "audio_threshold": "--audio-threshold", "min_clap": "--min-clap", "max_clap": "--max-clap",
          "limit": "--limit", "top": "--top", "by": "--by", "sort": "--sort", "model": "--model",
          "prompt": "--prompt", "pattern": "pattern"}
_NAMED = re.compile(r"(?<![\w-])(" + "|".join(_FLAGS) + r")(?=: )|(?<=\bpass )(" + "|".join(_FLAGS) + r")\b")


def _in_flags(message: str, args: argparse.Namespace) -> str:
    """A message of the admin API with its argument names put as this command's options."""
    flags = _FLAGS | ({"pattern": "--pattern"} if args.cache_command == "list" else {})
    return _NAMED.sub(lambda match: flags[match.group(0)], message)


def _given(**values: Any) -> dict[str, Any]:
    """The options the user set: unset ones are left to the admin API's defaults."""
    return {name: value for name, value in values.items() if value is not None}


def _client_id() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _error(args: argparse.Namespace, code: str, message: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"status": "error", "code": code, "message": message}))
    else:
        print(f"error [{code}]: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Rendering: the same sections as rich tables (terminal) or plain text (pipe)
# --------------------------------------------------------------------------------------


# Below this terminal width, tables leave out the columns that `cache show KEY` also gives, so
# that a 32-character key, the figures and some of the prompt fit on one line (80 columns)
_WIDE = 110
_WIDE_ONLY = frozenset({"dur", "loop", "model", "similarity"})


class _Out:
    """Collects sections (key/value blocks and tables) and prints them one way or the other."""

    def __init__(self, *, rich: bool) -> None:
        self.rich = rich
        self._parts: list[tuple[str, str | None, Sequence[str] | None, list[Row]]] = []

    def pairs(self, title: str | None, rows: list[Row]) -> None:
        self._parts.append(("pairs", title, None, rows))

    def table(self, title: str | None, columns: Sequence[str], rows: list[Row]) -> None:
        self._parts.append(("table", title, columns, rows))

    def line(self, text: str) -> None:
        self._parts.append(("line", text, None, []))

    def flush(self) -> None:
        if self.rich:
            self._flush_rich()
        else:
            self._flush_plain()

    def _flush_plain(self) -> None:
        first = True
        for kind, title, columns, rows in self._parts:
            if kind == "line":
                print(title)
                continue
            if not first:
                print()
            first = False
            if title:
                print(f"{title}:")
            if kind == "pairs":
                for key, value in rows:
                    print(f"{'  ' if title else ''}{key}: {_text(value)}")
            else:
                cells = [list(columns or [])] + [[_text(v) for v in row] for row in rows]
                widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
                for row in cells:
                    print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def _flush_rich(self) -> None:
        from rich import box
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for kind, title, columns, rows in self._parts:
            if kind == "line":
                console.print(title, highlight=False, markup=False)
                continue
            if kind == "table" and console.width < _WIDE:  # the row must fit: keys never wrap
                keep = [i for i, name in enumerate(columns or []) if name not in _WIDE_ONLY]
                columns = [(columns or [])[i] for i in keep]
                rows = [[row[i] for i in keep] for row in rows]
            table = Table(title=title, show_header=kind == "table", title_justify="left",
                          box=box.SIMPLE_HEAD, pad_edge=False)
            if kind == "pairs":
                table.add_column(style="bold", no_wrap=True)
                table.add_column(overflow="fold")
            else:
                # a key is copied whole into the next command, and a figure is read at a glance:
                # neither wraps; the prompt takes what is left of the width and wraps
                for column in columns or []:
                    if column == "prompt":
                        table.add_column(column, overflow="fold")
                    else:
                        table.add_column(column, no_wrap=True,
                                         min_width=32 if column == "key" else None)
            for row in rows:
                table.add_row(*(_text(v) for v in row))
            console.print(table)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def format_bytes(n: int | None) -> str:
    """A byte count for people: ``705644`` → ``689.1 KiB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _render_stats(r: dict[str, Any], out: _Out) -> None:
    hits, quality, embedder = r["hits"], r["quality"], r["embedder"]
    out.pairs("cache", [
        ("items", r["items"]), ("bytes", f"{r['bytes']} ({format_bytes(r['bytes'])})"),
        ("generation", r["generation"]), ("oldest", _when(r["oldest_timestamp"])),
        ("newest", _when(r["newest_timestamp"])), ("loops", r["loops"]), ("models", r["models"]),
        ("embedder", f"{embedder['name']} ({embedder['dimension']} dims)" if embedder else None),
        ("prompt vectors", r["items_with_prompt_vector"]), ("CLAP vectors", r["items_with_clap_vector"]),
    ])
    out.table("age (since generation)", list(r["age_buckets"]), [list(r["age_buckets"].values())])
    out.pairs("hits", [
        ("total hits", hits["total_hits"]), ("items hit", hits["items_hit"]),
        ("items never hit", hits["items_never_hit"]),
        ("hit rate", hits["hit_rate"]), ("last hit", _when(hits["last_hit_timestamp"])),
    ])
    out.pairs("CLAP similarity", [
        (name, quality[name])
        for name in ("scored", "unscored", "min", "p10", "p25", "median", "p75", "p90", "max", "mean")
    ])
    if r["top_prompts"]:
        out.table("top prompts", ["hits", "last hit", "key", "prompt"], [
            [p["hits"], _when(p["last_hit_timestamp"]), p["key"], _clip(p["prompt"])]
            for p in r["top_prompts"]
        ])


def _render_list(r: dict[str, Any], out: _Out) -> None:
    out.table(None, ["key", "age", "hits", "clap", "dur", "loop", "size", "model", "prompt"], [
        [i["key"], _age(i["age_s"]), i["hits"], i["clap_similarity"], i["duration_s"], i["is_loop"],
         format_bytes(i["audio_bytes"]), i["model"], _clip(i["prompt"])]
        for i in r["items"]
    ])
    order = "descending" if r["descending"] else "ascending"
    out.line(f"{r['returned']} of {r['matched']} matching items ({r['total_items']} in the cache), "
             f"by {r['sort']} {order}")


def _render_show(r: dict[str, Any], out: _Out) -> None:
    out.pairs("item", [(k, _when(v) if k.endswith("_timestamp") else v) for k, v in r["item"].items()])
    out.pairs("storage", [
        ("age", _age(r["age_s"])), ("audio path", r["audio_path"]), ("audio exists", r["audio_exists"]),
        ("audio file bytes", r["audio_file_bytes"]), ("size matches", r["audio_size_matches"]),
        ("exact index points here", r["exact_index_points_here"]),
        ("prompt vector", _vector(r["prompt_vector"])), ("CLAP vector", _vector(r["clap_vector"])),
    ])


def _vector(v: dict[str, Any]) -> str:
    return f"{v['dimension']} dims, norm {v['norm']:.4g}" if v["present"] else "absent"


def _render_export(r: dict[str, Any], out: _Out) -> None:
    out.line(f"wrote {r['audio_path']} ({format_bytes(r['audio_bytes'])}) and {r['metadata_path']}")


def _render_removal(r: dict[str, Any], out: _Out) -> None:
    if r["removed_items"]:
        out.table("would remove" if r["dry_run"] else "removed", ["key", "size", "created", "prompt"], [
            [i["key"], format_bytes(i["audio_bytes"]), _when(i["generation_timestamp"]), _clip(i["prompt"])]
            for i in r["removed_items"]
        ])
        if r["removed_truncated"]:
            out.line(f"… and {r['removed_count'] - len(r['removed_items'])} more")
    _removal_summary(r, out)


def _removal_summary(r: dict[str, Any], out: _Out) -> None:
    verb = "would remove" if r["dry_run"] else "removed"
    def amount(items: int, size: int) -> str:
        return f"{items} items, {size} bytes ({format_bytes(size)})"

    out.pairs(None, [
        ("before", amount(r["before_items"], r["before_bytes"])),
        ("after", amount(r["after_items"], r["after_bytes"])),
        (verb, amount(r["removed_count"], r["freed_bytes"])),
        ("dry run", r["dry_run"]),
    ])


def _render_duplicates(r: dict[str, Any], out: _Out) -> None:
    rows: list[Row] = []
    for number, group in enumerate(r["groups"], start=1):
        keep = group["keep"]
        rows.append([number, "keep", keep["key"], keep["clap_similarity"], keep["hits"], "",
                     _clip(keep["prompt"], 50)])
        for d in group["duplicates"]:
            sims = "/".join(
                _text(v) for v in (d["prompt_similarity"], d["audio_similarity"]) if v is not None
            )
            rows.append(["", "remove" if r["removal"] else "dup", d["key"], d["clap_similarity"],
                         d["hits"], sims or ",".join(d["reasons"]), _clip(d["prompt"], 50)])
    if rows:
        out.table(f"duplicate groups (by {r['by']}, threshold {r['threshold']})",
                  ["group", "", "key", "clap", "hits", "similarity", "prompt"], rows)
    if r["groups_truncated"]:
        out.line(f"… {r['group_count'] - len(r['groups'])} more groups not shown (--limit)")
    out.line(f"{r['group_count']} groups, {r['duplicate_count']} duplicates "
             f"({format_bytes(r['duplicate_bytes'])}) that the best item of their group can replace")
    if r["removal"] is not None:
        _removal_summary(r["removal"], out)
    elif r["duplicate_count"]:
        out.line("nothing removed: add --remove (and --dry-run to preview)")
