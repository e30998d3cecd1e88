"""Local model directories: what a directory holds and which model it is."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from appliance.errors import ModelError

TINY_MODEL_NAME = "tiny-tangoflux"
REAL_MODEL_NAME = "declare-lab/TangoFlux"


def generator_identity(model_dir: Path, *, tiny: bool) -> str:
    """The model name used in cache keys and metadata, read without loading weights.

    ``model_name`` in the directory's ``config.json`` wins (the tiny build writes it); a
    real checkpoint without it is the public TangoFlux.
    """
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    name = config.get("model_name") if isinstance(config, dict) else None
    if isinstance(name, str) and name:
        return name
    return TINY_MODEL_NAME if tiny else REAL_MODEL_NAME


def read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning every failure into a ModelError that names the file."""
    if not path.is_file():
        raise ModelError(f"{path}: file is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def offline_hub() -> None:
    """Make transformers and huggingface_hub fail fast instead of retrying a hub (~48 s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
