"""The appliance command line: serve, request, status, cache, models.

Every command takes --config PATH; every command that prints results takes --json.
Exit codes: 0 success, 1 the request or command failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.audio import AUDIO_FORMATS
from appliance.cli_cache import add_cache_commands
from appliance.cli_models import add_models_commands
from appliance.config import Settings, default_config_path, load_settings
from appliance.errors import ApplianceError, ConfigError
from appliance.logs import configure_logging
from appliance.topics import Topics


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config or default_config_path())
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        result: int = args.handler(settings, args)
        return result
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ApplianceError as exc:
        _print_error(args, exc.code, exc.message)
        return 1
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML configuration file")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the appliance")
    serve.set_defaults(handler=_serve)

    request = commands.add_parser("request", parents=[common], help="send one prompt, wait for the clip")
    request.add_argument("prompt", help="what the clip should sound like")
    request.add_argument("--duration", type=float, dest="duration_s", metavar="SECONDS",
                         help="clip length (default: generation.default_duration_s)")
    request.add_argument("--steps", type=int,
                         help="denoising steps: more is slower and cleaner (default: the model's)")
    request.add_argument("--guidance", type=float, dest="guidance_scale", metavar="SCALE",
                         help="how closely to follow the prompt (default: the model's)")
    request.add_argument("--candidates", type=int, metavar="N", help="generate N, keep the best scored")
    request.add_argument("--seed", type=int, help="fixed seed, for a repeatable clip")
    request.add_argument("--model", help="a generator the workers serve (appliance models check)")
    request.add_argument("--loop", action="store_true", help="make the clip loop seamlessly")
    request.add_argument("--force", action="store_true", help="bypass the cache")
    request.add_argument("--out", type=_output_file, metavar="FILE",
                         help="write the audio to this file (its directory must exist)")
    request.add_argument("--format", choices=AUDIO_FORMATS, dest="audio_format",
                         help="audio format (ogg is Opus); default: the --out file's extension "
                              "when it names one, else wav")
    request.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                         help="give up when no reply came within this long (default: 900)")
    request.set_defaults(handler=_request)

    status = commands.add_parser("status", parents=[common], help="health of the running appliance")
    status.set_defaults(handler=_status)

    add_cache_commands(commands, common)

    add_models_commands(commands, common)
    return parser


def _output_file(value: str) -> Path:
    """Checked when parsed, so that a typo costs no generation."""
    path = Path(value)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {path.parent} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory; name a file in it")
    return path


def _format_of(out: Path | None) -> str | None:
    """``--out rain.mp3`` asks for mp3: a file whose name says one format never holds another."""
    suffix = out.suffix.lower().lstrip(".") if out is not None else ""
    return suffix if suffix in AUDIO_FORMATS else None


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.app import Appliance

    configure_logging(settings.logging.level, settings.logging.format, component="supervisor")
    return Appliance(settings).run()


def _request(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.client import RequestClient

    body: dict[str, Any] = {"prompt": args.prompt}
    for name in ("duration_s", "steps", "guidance_scale", "candidates", "seed", "model"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.loop:
        body["loop"] = True
    if args.force:
        body["force"] = True
    audio_format = args.audio_format or _format_of(args.out)
    if audio_format is not None:
        body["format"] = audio_format
    body["deliver"] = "mqtt" if args.out else "url"
    topics = Topics.from_settings(settings.node)
    client = RequestClient(settings.broker, topics)
    client.connect(require_online=True)  # no status, or "offline": nobody would answer
    print(f"waiting for node {topics.node!r} ({topics.request} on {settings.broker.host}:"
          f"{settings.broker.port}), up to {args.timeout:.0f} s", file=sys.stderr)
    try:
        if sys.stderr.isatty():  # a progress bar of the denoising steps, on the terminal only
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=Console(stderr=True)) as bar:
                task = bar.add_task("waiting", total=None)
                reply = client.request(
                    body, timeout_s=args.timeout, want_audio=args.out is not None,
                    on_progress=lambda step, total: bar.update(task, **_progress(step, total)))
        else:
            reply = client.request(body, timeout_s=args.timeout, want_audio=args.out is not None)
    finally:
        client.close()
    if reply.body.get("status") != "ok":
        _print_error(args, str(reply.body.get("code")), str(reply.body.get("message")))
        return 1
    if args.out is not None:
        if reply.audio is None:
            _print_error(args, "no_audio", "the reply came without its audio")
            return 1
        try:
            args.out.write_bytes(reply.audio)
        except OSError as exc:
            _print_error(args, "write_failed", f"cannot write {args.out}: {exc.strerror}")
            return 1
    if args.json:
        print(json.dumps(reply.body, indent=2))
    else:
        _print_table("reply", reply.body)
        if args.out is not None:
            print(f"wrote {args.out} ({len(reply.audio or b'')} bytes)")
    return 0


def _progress(step: int, total: int) -> dict[str, Any]:
    """The bar's state after a denoising step. After the last one the worker still decodes the
    latents and scores the clip (seconds on a CPU): the bar says so and pulses, not full and still."""
    if step < total:
        return {"description": "generating", "completed": step, "total": total}
    return {"description": f"decoding and scoring ({total} steps done)", "completed": 0, "total": None}


def _status(settings: Settings, args: argparse.Namespace) -> int:
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host
    url = f"http://{host}:{settings.http.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body, ready = json.loads(response.read()), True
    except urllib.error.HTTPError as exc:
        body, ready = json.loads(exc.read() or b"{}"), False
    except OSError as exc:
        body, ready = {"status": "down", "reasons": [f"no answer at {url}: {exc}"]}, False
    if args.json:
        print(json.dumps(body, indent=2))
        return 0 if ready else 1
    workers = body.pop("workers", [])
    notes = body.pop("notes", [])
    _print_table("status", body)
    for worker in workers:  # one line per worker: its state, process and model
        line = (f"worker {worker.get('name')} (device {worker.get('gpu')}): {worker.get('state')}, "
                f"pid {worker.get('pid')}, model {worker.get('model') or '-'}, "
                f"load {worker.get('load_s', 0):.1f} s, restarts {worker.get('restarts', 0)}")
        if worker.get("failed_starts"):
            line += f", failed starts {worker['failed_starts']}"
        print(line + (f", last error: {worker['last_error']}" if worker.get("last_error") else ""))
    for note in notes:
        print(f"NOTE: {note}")
    return 0 if ready else 1


def _print_table(title: str, body: dict[str, Any]) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for key, value in body.items():
            table.add_row(str(key), json.dumps(value) if isinstance(value, dict | list) else str(value))
        Console().print(table)
    else:
        for key, value in body.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


def _print_error(args: argparse.Namespace, code: str, message: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"status": "error", "code": code, "message": message}))
    else:
        print(f"error [{code}]: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
