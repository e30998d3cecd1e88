"""``appliance models …``: check the model directories, fetch the real weights, build tiny ones.

- ``check``: for the generator, the scorer and the embedder the service would use, whether
  the files are there and load, their sizes, sha256 of the weight files (``--hash``), and
  whether it is a tiny random-weight build. Exit 1 when a model the service needs is unusable.
- ``fetch``: download TangoFlux and CLAP, and with ``--sa3 VARIANT`` Stable Audio 3 (gated:
  the licence is accepted on the hub first), with huggingface_hub (needs internet;
  docs/models.md). Exit 1 with ``model_download_failed`` when offline.
- ``build-tiny``: write the tiny random-weight TangoFlux, SA3 and CLAP used by tests and the demo.

Output: a rich table on a terminal, ``key: value`` lines when piped, JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.cli_cache import format_bytes
from appliance.config import Settings


def add_models_commands(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add ``models`` and its subcommands to the top-level subparsers of ``appliance``."""
    models = subparsers.add_parser("models", help="model files: check, fetch, build-tiny",
                                   description="Model files (docs/models.md).")
    commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    parents = [common_parent]

    check = commands.add_parser("check", parents=parents,
                                help="are the configured models present and loadable?")
    check.add_argument("--hash", action="store_true",
                       help="sha256 of the weight files (reads every byte: ~4 GB for TangoFlux)")
    check.add_argument("--no-load", action="store_true", help="list files only, do not load")
    check.set_defaults(handler=_check)

    fetch = commands.add_parser("fetch", parents=parents,
                                help="download TangoFlux and CLAP (needs internet)")
    fetch.add_argument("--dir", type=Path, help="target directory (default: models.dir)")
    fetch.add_argument("--clap", default="laion/clap-htsat-unfused",
                       help="CLAP repository, e.g. laion/larger_clap_general")
    fetch.add_argument("--revision", help="TangoFlux revision (branch, tag or commit)")
    fetch.add_argument("--sa3", action="append", default=[], metavar="VARIANT",
                       choices=["small-sfx", "small-music", "medium"],
                       help="also fetch stabilityai/stable-audio-3-VARIANT (gated: accept the "
                            "Stability AI Community Licence on the hub first); repeatable")
    fetch.add_argument("--no-tangoflux", action="store_true",
                       help="skip TangoFlux (non-commercial research licence), e.g. with --sa3")
    fetch.set_defaults(handler=_fetch)

    tiny = commands.add_parser("build-tiny", parents=parents,
                               help="write the tiny random-weight TangoFlux, SA3 and CLAP")
    tiny.add_argument("--out", type=Path,
                      help="TangoFlux directory (default: <models.dir>/tiny-tangoflux)")
    tiny.add_argument("--sa3-out", type=Path,
                      help="Stable Audio 3 directory (default: <models.dir>/tiny-sa3)")
    tiny.add_argument("--clap-out", type=Path,
                      help="CLAP directory (default: <models.dir>/tiny-clap)")
    tiny.set_defaults(handler=_build_tiny)


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.models.check import check_models

    reports = check_models(settings, load=not args.no_load, hash_weights=args.hash)
    ok = all(report.ok for report in reports)
    if args.json:
        print(json.dumps({"ok": ok, "models": [r.as_dict() for r in reports]}, indent=2))
        return 0 if ok else 1
    for report in reports:
        rows: list[tuple[str, str]] = [
            ("name", report.name),
            ("directory", report.path),
            ("built-in tiny default", "yes" if report.tiny else "no"),
            ("random weights", {True: "YES (output/scores mean nothing)", False: "no",
                                None: "unknown"}[report.random_weights]),
            ("present", "yes" if report.present else "no"),
            ("loadable", {True: "yes", False: "NO", None: "not tried"}[report.loadable]
             + (f" ({report.load_s} s)" if report.load_s is not None else "")),
            ("size", format_bytes(report.total_bytes)),
        ]
        if report.missing:
            rows.append(("missing", ", ".join(report.missing)))
        if report.error:
            rows.append(("error", report.error))
        if report.note:
            rows.append(("note", report.note))
        for entry in report.files:
            if entry.path.endswith((".safetensors", ".bin")):
                rows.append((entry.path, f"{format_bytes(entry.bytes)}  sha256 "
                             f"{entry.sha256 or '(use --hash)'}"))
        _print_rows(f"{report.role}: {'ok' if report.ok else 'NOT USABLE'}", rows)
    return 0 if ok else 1


def _fetch(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.models.fetch import SA3_REPOS, fetch_models, fetch_sa3

    target = args.dir or settings.models.dir
    body: dict[str, Any] = {"config": []}
    if not args.no_tangoflux:
        result = fetch_models(target, clap_repo=args.clap, revision=args.revision)
        body.update(tangoflux=str(result.tangoflux_dir), clap=str(result.clap_dir),
                    config=result.config_lines())
    for index, variant in enumerate(args.sa3):
        path = fetch_sa3(target, variant)
        body.setdefault("sa3", {})[SA3_REPOS[variant]] = str(path)
        key = "sa3" if index == 0 else f"generators.sa3-{variant}"
        body["config"].append(f'{key} = "{path}"')
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    for label in ("tangoflux", "clap"):
        if label in body:
            print(f"{label}: {body[label]}")
    for repo, path in body.get("sa3", {}).items():
        print(f"{repo}: {path}")
    print("To use them, set in [models] of the config file:")
    for line in body["config"]:
        print(f"  {line}")
    return 0


def _build_tiny(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.models.tiny import build_tiny_tangoflux
    from appliance.models.tiny_clap import build_tiny_clap
    from appliance.models.tiny_sa3 import build_tiny_sa3

    generator = build_tiny_tangoflux(args.out or settings.models.dir / "tiny-tangoflux")
    sa3 = build_tiny_sa3(args.sa3_out or settings.models.dir / "tiny-sa3")
    scorer = build_tiny_clap(args.clap_out or settings.models.dir / "tiny-clap")
    if args.json:
        print(json.dumps({"path": str(generator), "tangoflux": str(generator), "sa3": str(sa3),
                          "clap": str(scorer)}))
    else:
        print(f"tiny TangoFlux written to {generator}\ntiny SA3 written to {sa3}\n"
              f"tiny CLAP written to {scorer}")
    return 0


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for key, value in rows:
            table.add_row(key, value)
        Console().print(table)
        return
    print(f"[{title}]")
    for key, value in rows:
        print(f"{key}: {value}")
    print()
