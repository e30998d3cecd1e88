"""Local model directories: what a directory holds and which model it is."""

from __future__ import annotations

import json
from pathlib import Path

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
