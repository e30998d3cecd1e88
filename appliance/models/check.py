"""``appliance models check``: what the configured model directories hold, and whether it loads.

One report per model the service will use (generator, scorer, embedder): its directory,
whether it is the tiny random-weight build, the files with their sizes (and sha256 of the
weight files on request: hashing 4 GB takes a while), missing required files, and, unless
asked not to, whether the directory loads through the same code the service runs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.models.generator import SA3_FILES, GeneratorSpec, generator_specs

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HASH_CHUNK = 8 * 1024 * 1024
_MAX_FILES = 200  # a wrong directory (a home dir) must not be listed file by file

# Each entry names one required file, or alternatives separated by " | ".
GENERATOR_FILES = ("config.json", "tangoflux.safetensors", "vae.safetensors",
                   "text_encoder/config.json",
                   "text_encoder/tokenizer.json | text_encoder/spiece.model")
SCORER_FILES = ("config.json", "model.safetensors | pytorch_model.bin",
                "preprocessor_config.json | processor_config.json",
                "tokenizer.json | vocab.json")
EMBEDDER_FILES = ("config.json", "model.safetensors | pytorch_model.bin",
                  "tokenizer.json | vocab.txt")


@dataclass
class FileReport:
    path: str  # relative to the model directory
    bytes: int
    sha256: str | None = None


@dataclass
class ModelReport:
    """One model as ``models check`` sees it."""

    role: str  # generator | scorer | embedder
    name: str  # for a generator: what a request puts in `model`
    path: str
    tiny: bool  # the built-in tiny default (empty config key), built on first start
    present: bool
    random_weights: bool | None = None  # what the directory says it holds; None: unknown
    loadable: bool | None = None  # None: not tried
    load_s: float | None = None
    error: str = ""
    note: str = ""
    missing: list[str] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)
    total_bytes: int = 0
    family: str = ""  # generators: tangoflux | sa3
    key: str = ""  # generators: the config key workers name (tangoflux, sa3, ...)

    @property
    def ok(self) -> bool:
        """Usable by the service: loads, or is a tiny build that the first start will make."""
        if not Path(self.path).is_dir():
            return self.tiny
        return not self.missing and self.loadable is not False

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(model_dir: Path, *, hash_weights: bool) -> list[FileReport]:
    """Regular files under ``model_dir`` (hidden ones skipped), sorted, at most _MAX_FILES."""
    reports: list[FileReport] = []
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        digest = sha256_file(path) if hash_weights and path.suffix in _WEIGHT_SUFFIXES else None
        reports.append(FileReport(relative.as_posix(), path.stat().st_size, digest))
        if len(reports) >= _MAX_FILES:
            break
    return reports


def missing_files(model_dir: Path, required: Sequence[str]) -> list[str]:
    return [entry for entry in required
            if not any((model_dir / name.strip()).is_file() for name in entry.split("|"))]


def inspect_dir(
    role: str, name: str, model_dir: Path, required: Sequence[str], *, tiny: bool,
    hash_weights: bool, load: Callable[[Path], object] | None,
) -> ModelReport:
    """Files, missing files and (with ``load``) a trial load of one model directory."""
    report = ModelReport(role=role, name=name, path=str(model_dir), tiny=tiny,
                         present=model_dir.is_dir())
    if not report.present:
        report.missing = list(required)
        report.note = ("not built yet: the first start builds it, or run "
                       "`appliance models build-tiny`" if tiny else "directory is missing")
        return report
    report.random_weights = _random_weights(role, name, model_dir)
    report.files = list_files(model_dir, hash_weights=hash_weights)
    report.total_bytes = sum(f.bytes for f in report.files)
    report.missing = missing_files(model_dir, required)
    if report.missing:
        report.present = False
        report.note = "required files are missing"
        return report
    if load is not None:
        started = time.perf_counter()
        try:
            load(model_dir)
        except (ApplianceError, OSError, ValueError, RuntimeError) as exc:
            report.loadable = False
            report.error = getattr(exc, "message", None) or str(exc)
        else:
            report.loadable = True
        report.load_s = round(time.perf_counter() - started, 3)
    return report


def _random_weights(role: str, name: str, model_dir: Path) -> bool | None:
    """True for our random-weight builds (tiny or full-size), from the names they write."""
    from appliance.models.files import read_json_object
    from appliance.models.generator import marks_random_weights

    if role == "generator":
        return marks_random_weights(name, model_dir)
    if role == "scorer":
        try:
            marker = read_json_object(model_dir / "appliance.json")
        except ApplianceError:
            return False
        return marker.get("random_weights") is True
    return False


def _load_generator(model_dir: Path) -> object:
    from appliance.models.generator import load_generator

    return load_generator(model_dir)


def _load_scorer(model_dir: Path) -> object:
    from appliance.models.clap import ClapScorer

    return ClapScorer.from_dir(model_dir)


def _load_embedder(model_dir: Path) -> object:
    from appliance.models.embedder import PromptEmbedder

    return PromptEmbedder.from_dir(model_dir)


def _scorer_name(model_dir: Path, *, tiny: bool) -> str:
    from appliance.models.clap import _model_name
    from appliance.models.files import read_json_object

    settings_path = model_dir / "appliance.json"
    try:
        settings = read_json_object(settings_path) if settings_path.is_file() else {}
    except ApplianceError:
        settings = {}
    if not model_dir.is_dir():
        return "tiny-clap" if tiny else model_dir.name
    return _model_name(model_dir, settings)


def check_models(settings: Settings, *, load: bool = True, hash_weights: bool = False) -> list[ModelReport]:
    """Reports for the generator, the scorer and the embedder the service would use now."""
    from appliance.models.embedder import default_embedder_dir

    models = settings.models
    clap_dir = models.clap_dir()
    embedder_dir = Path(models.embedder) if models.embedder else default_embedder_dir()
    generators = [_inspect_generator(spec, hash_weights=hash_weights, load=load)
                  for spec in _generators_in_use(settings)]
    reports = [
        generators[0],
        inspect_dir("scorer", _scorer_name(clap_dir, tiny=models.uses_tiny_clap), clap_dir,
                    SCORER_FILES, tiny=models.uses_tiny_clap, hash_weights=hash_weights,
                    load=_load_scorer if load else None),
        inspect_dir("embedder", embedder_dir.name if models.embedder else "all-MiniLM-L6-v2",
                    embedder_dir, EMBEDDER_FILES, tiny=False, hash_weights=hash_weights,
                    load=_load_embedder if load else None),
    ]
    if models.uses_tiny_clap:
        reports[1].note = reports[1].note or (
            "TINY random-weight scorer: scores mean nothing; the quality gate is off in 'auto'")
    return reports + generators[1:]  # the first three keep their places: generator, scorer, embedder


def _generators_in_use(settings: Settings) -> list[GeneratorSpec]:
    """The workers' generators, then any other configured directory, each once."""
    specs = generator_specs(settings.models)
    keys = [entry.model for entry in settings.workers.entries()]
    keys += [key for key in specs
             if key in settings.models.generators or (key == "sa3" and settings.models.sa3)]
    return [specs[key] for key in dict.fromkeys(keys) if key in specs]


def _inspect_generator(spec: GeneratorSpec, *, hash_weights: bool, load: bool) -> ModelReport:
    required = SA3_FILES if spec.family == "sa3" else GENERATOR_FILES
    report = inspect_dir("generator", spec.name, spec.model_dir, required, tiny=spec.tiny,
                         hash_weights=hash_weights, load=_load_generator if load else None)
    report.family, report.key = spec.family, spec.key
    if spec.tiny:
        report.note = report.note or "TINY random-weight generator: noise, for demos and tests"
    return report
