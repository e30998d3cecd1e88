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
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from appliance.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from appliance.config import ModelSettings, Settings

Family = Literal["tangoflux", "sa3"]
FAMILIES: tuple[Family, ...] = ("tangoflux", "sa3")

SAMPLE_RATE = 44100
SA3_PIPELINE_CLASS = "StableAudio3Pipeline"
SA3_NAME_FILE = "appliance.json"  # {"model_name": ...}: written by build-tiny and fetch
# Files every snapshot needs (each entry: alternatives separated by " | "); models check
# reports the missing ones before anything is loaded.
SA3_FILES = (
    "model_index.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors"
    " | transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors | text_encoder/model.safetensors.index.json",
    "tokenizer/tokenizer.json | tokenizer/tokenizer.model",
    "duration_embedder/config.json",
    "duration_embedder/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
)
TINY_NAMES: dict[Family, str] = {"tangoflux": "tiny-tangoflux", "sa3": "tiny-sa3"}
FAMILY_LABELS: dict[Family, str] = {"tangoflux": "TangoFlux", "sa3": "Stable Audio 3"}
# the names our random-weight builds give themselves (tiny_*.py, random_full*.py)
RANDOM_NAME_PREFIXES = ("tiny-", "random-full-")

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


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator the configuration offers: its config key, its name, where it lives."""

    key: str  # "tangoflux", "sa3" or a key of models.generators
    name: str  # what requests put in ``model``, and what cache keys and metadata carry
    family: Family
    model_dir: Path
    tiny: bool  # the built-in random-weight build (made on first start when missing)


def generator_specs(models: ModelSettings) -> dict[str, GeneratorSpec]:
    """Every configured generator by key, named without loading a weight.

    The name comes from the directory (a tiny build names itself ``tiny-…``), so that a cache
    filled by tiny noise is never served once real weights are configured under the same key.
    """
    from appliance.models.files import generator_identity

    specs: dict[str, GeneratorSpec] = {}
    tf_dir = models.tangoflux_dir()
    specs["tangoflux"] = GeneratorSpec("tangoflux", generator_identity(tf_dir, tiny=models.uses_tiny),
                                       "tangoflux", tf_dir, models.uses_tiny)
    sa3_dir = Path(models.sa3) if models.sa3 else models.dir / TINY_NAMES["sa3"]
    specs["sa3"] = GeneratorSpec("sa3", sa3_identity(sa3_dir) if models.sa3 else TINY_NAMES["sa3"],
                                 "sa3", sa3_dir, not models.sa3)
    for key, directory in models.generators.items():
        path = Path(directory)
        family = detect_family(path) or ("sa3" if key.startswith("sa3") else "tangoflux")
        name = sa3_identity(path) if family == "sa3" else generator_identity(path, tiny=False)
        specs[key] = GeneratorSpec(key, name, family, path, False)
    return specs


def marks_random_weights(name: str, model_dir: Path) -> bool:
    """True for our random-weight builds (tiny or full-size), from the names and markers
    they write; real weights carry neither."""
    return (name.startswith(RANDOM_NAME_PREFIXES)
            or _read_json(Path(model_dir) / SA3_NAME_FILE).get("random_weights") is True)


def random_weight_notes(settings: Settings) -> list[str]:
    """One warning per generator the workers serve that holds random weights.

    Such a model generates noise: ``appliance status``, ``/readyz`` and the start-up log
    show these lines so that nobody ships a tiny model by accident.
    """
    specs = generator_specs(settings.models)
    notes = []
    for key in dict.fromkeys(entry.model for entry in settings.workers.entries()):
        spec = specs.get(key)
        if spec is None or not (spec.tiny or marks_random_weights(spec.name, spec.model_dir)):
            continue
        size = "TINY" if spec.tiny or spec.name.startswith("tiny-") else "full-size"
        setting = f"models.{key}" if key in FAMILIES else f"models.generators.{key}"
        notes.append(f"{size} random-weight {FAMILY_LABELS[spec.family]} {spec.name!r} (workers' "
                     f"model {key!r}): generated audio is noise, not for use (set {setting} to "
                     "a directory of real weights)")
    return notes


@dataclass(frozen=True)
class ModelCatalogue:
    """The generators the workers serve, how a request may name them, and the default."""

    families: dict[str, Family]  # name -> family
    aliases: dict[str, str]  # config key -> name
    default: str

    @classmethod
    def single(cls, name: str, family: Family = "tangoflux") -> ModelCatalogue:
        return cls({name: family}, {}, name)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalogue:
        """The models of the configured workers; raises ConfigError for an unknown one."""
        specs = generator_specs(settings.models)
        served: dict[str, GeneratorSpec] = {}
        for index, entry in enumerate(settings.workers.entries()):
            if entry.model not in specs:
                raise ConfigError(f"workers.pool[{index}].model: unknown model {entry.model!r}; "
                                  f"configured: {sorted(specs)}")
            served.setdefault(entry.model, specs[entry.model])
        catalogue = cls({s.name: s.family for s in served.values()},
                        {key: s.name for key, s in served.items()}, next(iter(served.values())).name)
        wanted = settings.models.default_model
        if wanted:
            default = catalogue.resolve(wanted)
            if default is None:
                raise ConfigError(f"models.default_model: {wanted!r} is served by no worker; "
                                  f"choose one of {catalogue.choices()}")
            catalogue = cls(catalogue.families, catalogue.aliases, default)
        return catalogue

    def resolve(self, requested: str | None) -> str | None:
        """The name a request means (a name, or a config key), the default for None."""
        if requested is None:
            return self.default
        if requested in self.families:
            return requested
        return self.aliases.get(requested)

    def choices(self) -> list[str]:
        return sorted({*self.families, *self.aliases})
