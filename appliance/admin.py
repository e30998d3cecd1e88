"""Cache maintenance commands, one dispatcher for the CLI and the MQTT admin topics.

As in Frigate, a command reaches the same handler whichever way it arrives: the CLI
(``appliance cache clean --older-than 30``) and the admin topic
(``<base>/<node>/admin/clean`` with ``{"older_than_days": 30, "confirm": true}``) both call
:meth:`AdminDispatcher.dispatch` with the same argument names. Arguments are validated by one
pydantic model per command (unknown fields are errors, and each error names its field).

The sources differ in one rule only: a message on a topic cannot be asked "are you sure?",
so over MQTT every destructive command is a dry run unless the body says
``"confirm": true``; the reply then says ``dry_run: true`` and carries a ``hint``. The CLI
asks its own questions (``clear`` without ``--yes``) before it dispatches. ``export`` writes
a file on the appliance's disk and is refused over MQTT.

Errors are raised, not returned: :class:`InvalidRequest` for a bad command or argument,
:class:`NotFound` for a missing item; the MQTT adapter turns them into an error reply with
the error's ``code``, the CLI into an exit code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.cache import maintenance
from appliance.cache.contract import Store
from appliance.cache.keys import is_item_key
from appliance.errors import InvalidRequest

log = logging.getLogger(__name__)

Source = Literal["cli", "mqtt"]

CONFIRM_HINT = 'dry run only: send the same command again with "confirm": true to remove these items'


class _Args(BaseModel):
    # strict: over MQTT, "confirm": "yes" or 1 must be an error, not a quiet True
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _DestructiveArgs(_Args):
    dry_run: bool | None = Field(default=None, description="report what would go, remove nothing")
    confirm: bool = Field(default=False, description="MQTT only: act instead of a dry run")


class StatsArgs(_Args):
    top: int = Field(default=10, ge=0, le=100, description="how many most-hit prompts to list")


class ListArgs(_Args):
    sort: maintenance.SortField = "time"
    descending: bool = True
    limit: int | None = Field(default=50, ge=1, le=10_000, description="null: all items")
    prompt: str | None = Field(default=None, min_length=1, max_length=500)
    pattern: str | None = Field(default=None, min_length=1, max_length=maintenance.PATTERN_MAX_CHARS)
    ignore_case: bool = True
    model: str | None = None
    loop: bool | None = None
    min_clap: float | None = Field(default=None, ge=-1, le=1)
    max_clap: float | None = Field(default=None, ge=-1, le=1)


class _KeyArgs(_Args):
    key: str

    @field_validator("key")
    @classmethod
    def _is_key(cls, value: str) -> str:
        if not is_item_key(value):
            raise ValueError("must be a cache key: 32 lowercase hexadecimal characters")
        return value


class ShowArgs(_KeyArgs):
    pass


class ExportArgs(_KeyArgs):
    out: str = Field(min_length=1, description="file or directory to write the audio to")
    overwrite: bool = False


class CleanArgs(_DestructiveArgs):
    older_than_days: float = Field(gt=0, le=36_500, allow_inf_nan=False)
    by: maintenance.CleanBasis = "created"


class ClearArgs(_DestructiveArgs):
    pass


class DuplicatesArgs(_DestructiveArgs):
    threshold: float = Field(default=0.95, gt=0, le=1)
    audio_threshold: float | None = Field(default=None, gt=0, le=1)
    by: maintenance.DuplicateBasis = "prompt"
    remove: bool = False
    limit: int = Field(default=100, ge=0, le=10_000, description="groups listed in the reply")


class RemovePatternArgs(_DestructiveArgs):
    pattern: str = Field(min_length=1, max_length=maintenance.PATTERN_MAX_CHARS)
    ignore_case: bool = True


ARG_MODELS: dict[str, type[_Args]] = {
    "stats": StatsArgs,
    "list": ListArgs,
    "show": ShowArgs,
    "export": ExportArgs,
    "clean": CleanArgs,
    "clear": ClearArgs,
    "duplicates": DuplicatesArgs,
    "remove-pattern": RemovePatternArgs,
}
COMMANDS: tuple[str, ...] = tuple(ARG_MODELS)
CLI_ONLY: frozenset[str] = frozenset({"export"})
MQTT_COMMANDS: tuple[str, ...] = tuple(c for c in COMMANDS if c not in CLI_ONLY)


class AdminDispatcher:
    """Validates a maintenance command, applies the confirmation rule, runs it, logs it."""

    def __init__(self, store: Store, *, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now

    def dispatch(
        self, command: str, args: Mapping[str, Any], *, source: Source,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """Run ``command`` with ``args``; the report as a JSON-ready dict with ``command``.

        Destructive commands (clean, clear, remove-pattern, duplicates with ``remove``) add
        ``confirm_required: true`` and ``hint`` when an MQTT request lacked ``confirm``.
        """
        known = MQTT_COMMANDS if source == "mqtt" else COMMANDS
        if command not in ARG_MODELS:
            raise InvalidRequest(f"unknown admin command {command!r}; known: {', '.join(known)}")
        if command not in known:
            raise InvalidRequest(
                f"{command!r} writes a file on the appliance and is only available from the CLI "
                f"(appliance cache {command}); over MQTT: {', '.join(known)}"
            )
        parsed = _parse(command, args)
        handler = getattr(self, "_" + command.replace("-", "_"))
        result: dict[str, Any] = handler(parsed, source, client_id)
        return {"command": command, **result}

    # -- reading ----------------------------------------------------------------------

    def _stats(self, args: StatsArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        return maintenance.stats(self._store, now=self._now(), top=args.top).to_dict()

    def _list(self, args: ListArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        filters = maintenance.ItemFilter(
            prompt=args.prompt, pattern=args.pattern, ignore_case=args.ignore_case, model=args.model,
            loop=args.loop, min_clap=args.min_clap, max_clap=args.max_clap,
        )
        report = maintenance.list_items(
            self._store, sort=args.sort, descending=args.descending, limit=args.limit,
            filters=filters, now=self._now(),
        )
        return report.to_dict()

    def _show(self, args: ShowArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        return maintenance.show(self._store, args.key, now=self._now()).to_dict()

    def _export(self, args: ExportArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        report = maintenance.export(self._store, args.key, Path(args.out), overwrite=args.overwrite)
        log.info("cache item exported", extra={
            "admin_command": "export", "admin_source": source, "client_id": client_id,
            "key": args.key, "path": report.audio_path,
        })
        return report.to_dict()

    # -- removing ---------------------------------------------------------------------

    def _clean(self, args: CleanArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        dry_run, missing = _dry_run(args, source)
        report = maintenance.clean(
            self._store, older_than_days=args.older_than_days, by=args.by, dry_run=dry_run,
            now=self._now(),
        )
        return {**report.to_dict(), **self._log_removal("clean", args, report, source, client_id, missing)}

    def _clear(self, args: ClearArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        dry_run, missing = _dry_run(args, source)
        report = maintenance.clear(self._store, dry_run=dry_run)
        return {**report.to_dict(), **self._log_removal("clear", args, report, source, client_id, missing)}

    def _remove_pattern(
        self, args: RemovePatternArgs, source: Source, client_id: str | None,
    ) -> dict[str, Any]:
        dry_run, missing = _dry_run(args, source)
        report = maintenance.remove_pattern(
            self._store, pattern=args.pattern, ignore_case=args.ignore_case, dry_run=dry_run,
        )
        extra = self._log_removal("remove-pattern", args, report, source, client_id, missing)
        return {**report.to_dict(), **extra}

    def _duplicates(self, args: DuplicatesArgs, source: Source, client_id: str | None) -> dict[str, Any]:
        dry_run, missing = _dry_run(args, source) if args.remove else (False, False)
        report = maintenance.duplicates(
            self._store, threshold=args.threshold, audio_threshold=args.audio_threshold, by=args.by,
            remove=args.remove, dry_run=dry_run, limit=args.limit, now=self._now(),
        )
        if report.removal is None:
            return report.to_dict()
        extra = self._log_removal("duplicates", args, report.removal, source, client_id, missing)
        return {**report.to_dict(), **extra}

    def _log_removal(
        self, command: str, args: _DestructiveArgs, report: maintenance.RemovalReport,
        source: Source, client_id: str | None, confirm_missing: bool,
    ) -> dict[str, Any]:
        """Log a destructive command; the fields it adds to the reply (``dry_run``, hint)."""
        amount = f"{report.removed_count} items ({report.freed_bytes} bytes)"
        if report.dry_run:
            message = f"cache maintenance: {command} dry run, would remove {amount}"
        elif report.removed_count:
            message = f"cache maintenance: {command} removed {amount}"
        else:
            message = f"cache maintenance: {command} removed nothing"
        # a warning only when something went: the line an audit looks for (and the one a CLI
        # user sees on stderr without any logging set up)
        log.log(
            logging.WARNING if report.removed_count and not report.dry_run else logging.INFO,
            message,
            extra={
                "admin_command": command, "admin_source": source, "client_id": client_id,
                "admin_args": args.model_dump(exclude={"confirm"}), "dry_run": report.dry_run,
                "confirm_missing": confirm_missing, "removed_count": report.removed_count,
                "freed_bytes": report.freed_bytes, "before_items": report.before_items,
                "after_items": report.after_items,
            },
        )
        body: dict[str, Any] = {"dry_run": report.dry_run}
        if confirm_missing:
            body["confirm_required"] = True
            body["hint"] = CONFIRM_HINT
        return body


def _parse(command: str, args: Mapping[str, Any]) -> _Args:
    model = ARG_MODELS[command]
    if not isinstance(args, Mapping):
        raise InvalidRequest(f"arguments of {command!r} must be a JSON object, not {type(args).__name__}")
    try:
        return model.model_validate(dict(args))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "arguments"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message += f" (allowed: {', '.join(model.model_fields) or 'none'})"
            problems.append(f"{name}: {message}")
        raise InvalidRequest(f"invalid arguments for {command!r}: " + "; ".join(problems)) from exc


def _dry_run(args: _DestructiveArgs, source: Source) -> tuple[bool, bool]:
    """``(dry_run, confirm_missing)``: over MQTT only ``confirm: true`` acts."""
    if args.dry_run:
        return True, False
    if source == "mqtt" and not args.confirm:
        return True, True
    return False, False
