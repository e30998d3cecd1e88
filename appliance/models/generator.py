"""The generator interface, and which family a local model directory holds.

Two families sit behind one small surface (construct from a directory, ``generate``):
TangoFlux (``config.json`` + ``tangoflux.safetensors``, non-commercial research licence) and
Stable Audio 3 (a diffusers ``model_index.json`` snapshot, community licence). This module
imports neither torch nor diffusers, so the supervisor and the CLI can ask which family and
which name a directory has without loading anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from appliance.errors import ModelError

Family = Literal["tangoflux", "sa3"]
FAMILIES: tuple[Family, ...] = ("tangoflux", "sa3")

SAMPLE_RATE = 44100
SA3_PIPELINE_CLASS = "StableAudio3Pipeline"
SA3_NAME_FILE = "appliance.json"  # {"model_name": ...}: written by build-tiny and fetch
TINY_NAMES: dict[Family, str] = {"tangoflux": "tiny-tangoflux", "sa3": "tiny-sa3"}

ProgressCallback = Callable[[int, int], None]


class Generator(Protocol):
    """What the worker needs from a loaded text-to-audio model."""

    name: str
    device: str

    def generate(self, prompt: str, *, duration_s: float, steps: int, guidance_scale: float,
                 seed: int | None = None, candidates: int = 1,
                 progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """``candidates`` float32 (2, round(duration_s*44100)) waveforms at 44.1 kHz.

        ``seed`` seeds a generator of the model's own (never torch's global RNG); ``progress``
        is called with (step, total) after every denoising step.
        """
        ...


@dataclass(frozen=True)
class FamilyDefaults:
    """Request defaults that belong to a family, not to the appliance.

    SA3 is adversarially distilled: guidance is baked into its weights (``guidance_scale``
    1 switches classifier-free guidance off, which also halves the compute) and it samples
    in 8 steps; TangoFlux's reference is 25 steps with guidance 4.5 (the configured defaults).
    """

    steps: int | None  # None: generation.default_steps
    guidance_scale: float | None  # None: generation.default_guidance_scale


FAMILY_DEFAULTS: dict[Family, FamilyDefaults] = {
    "tangoflux": FamilyDefaults(None, None),
    "sa3": FamilyDefaults(8, 1.0),
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect_family(model_dir: Path) -> Family | None:
    """The family of a model directory from its index files; None when it is neither."""
    model_dir = Path(model_dir)
    if _read_json(model_dir / "model_index.json").get("_class_name") == SA3_PIPELINE_CLASS:
        return "sa3"
    if (model_dir / "config.json").is_file() and (model_dir / "tangoflux.safetensors").exists():
        return "tangoflux"
    if (model_dir / "config.json").is_file():
        return "tangoflux"  # a TangoFlux directory with its weights missing: check says so
    return None


def sa3_identity(model_dir: Path) -> str:
    """An SA3 directory's name: ``appliance.json``'s ``model_name``, else the hub repository
    its folder is named after (``stable-audio-3-small-sfx`` -> ``stabilityai/...``)."""
    name = _read_json(Path(model_dir) / SA3_NAME_FILE).get("model_name")
    if isinstance(name, str) and name:
        return name
    folder = Path(model_dir).resolve().name
    return f"stabilityai/{folder}" if folder.startswith("stable-audio-3") else folder


def check_generate_args(duration_s: float, steps: int, guidance_scale: float, candidates: int) -> None:
    """Refuse values no family can generate with (the request layer checks limits first)."""
    if steps < 1 or candidates < 1:
        raise ValueError(f"steps and candidates must be >= 1, got {steps}, {candidates}")
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration_s must be a positive number, got {duration_s}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")


def seeded_generator(seed: int | None) -> Any:
    """A CPU ``torch.Generator``: seeded when asked, else from fresh entropy; never global."""
    import torch

    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def load_generator(
    model_dir: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    latent_frames: Literal["needed", "reference"] = "needed",
) -> Generator:
    """Load whichever family ``model_dir`` holds, from local files only."""
    family = detect_family(model_dir)
    if family == "sa3":
        from appliance.models.stable_audio3 import StableAudio3Generator

        return StableAudio3Generator.from_dir(model_dir, device=device, dtype=dtype)
    if family == "tangoflux":
        from appliance.models.tangoflux import TangoFluxGenerator

        return TangoFluxGenerator.from_dir(
            model_dir, device=device, dtype=dtype, latent_frames=latent_frames
        )
    raise ModelError(
        f"{model_dir}: neither a TangoFlux directory (config.json, tangoflux.safetensors) nor a "
        f"Stable Audio 3 snapshot (model_index.json naming {SA3_PIPELINE_CLASS})"
    )
